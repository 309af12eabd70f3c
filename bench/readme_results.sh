#!/usr/bin/env bash
# Reproduces the README's "Results on the shipped default" table, on this machine, from scratch:
#   1. the default `bash train.sh` (sentiment), timed, with its peak memory (GNU time's maximum resident set);
#   2. evaluate.sh on its checkpoint, with the prefix and BASE_ONLY=1 (the zero-shot base, same prompts);
#   3. the same for TASK=idiom (content -> summary generation) with STEPS=300, on the first 200 test examples.
# Prints the metrics.json files at the end. Takes about 25 minutes on 2 CPU cores with nothing else running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p output
rm -rf output/sentiment output/idiom
/usr/bin/time -v -o output/sentiment.time bash train.sh
bash evaluate.sh output/sentiment
BASE_ONLY=1 bash evaluate.sh output/sentiment
/usr/bin/time -v -o output/idiom.time env TASK=idiom STEPS=300 bash train.sh
bash evaluate.sh output/idiom --max_samples 200
BASE_ONLY=1 bash evaluate.sh output/idiom --max_samples 200
for task in sentiment idiom; do
    echo "== $task: $(grep -E 'Elapsed \(wall|Maximum resident' "output/$task.time" | tr -s ' ' | paste -sd ';')"
    cat "output/$task/eval/metrics.json" "output/$task/eval-base-only/metrics.json"
done
