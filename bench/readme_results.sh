#!/usr/bin/env bash
# Reproduces the README's "Results on the shipped default" table, on this machine, from scratch:
#   1. the default `bash train.sh` (sentiment), timed, with its peak memory (GNU time's maximum resident set);
#   2. evaluate.sh on its checkpoint, with the prefix and BASE_ONLY=1 (the zero-shot base, same prompts);
#   3. the same for TASK=idiom (content -> summary generation).
# Prints the metrics.json files at the end. Takes about 40 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p output
for task in sentiment idiom; do
    rm -rf "output/$task"
    /usr/bin/time -v -o "output/$task.time" env TASK="$task" bash train.sh
    bash evaluate.sh "output/$task"
    BASE_ONLY=1 bash evaluate.sh "output/$task"
done
for task in sentiment idiom; do
    echo "== $task: $(grep -E 'Elapsed \(wall|Maximum resident' "output/$task.time" | tr -s ' ' | paste -sd ';')"
    cat "output/$task/eval/metrics.json" "output/$task/eval-base-only/metrics.json"
done
