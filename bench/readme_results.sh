#!/usr/bin/env bash
# Reproduces the README's "Results on the shipped default" table, on this machine, from scratch:
#   1. sentiment, seeds 42 43 44: the default `bash train.sh`, full fine-tuning of the same base and the previous
#      default, each trained and tested by bench/learning.py (writes bench/results/learning-full.md);
#   2. the zero-shot base with the same prompts (BASE_ONLY=1 evaluate.sh on the seed-42 checkpoint);
#   3. TASK=idiom (content -> summary generation) with STEPS=300, on the first 200 test examples, with and without
#      the prefix.
# Prints the tables and metrics at the end. About 75 minutes on 2 CPU cores with nothing else running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source setup_env.sh
"$PY" bench/learning.py --configs default,full_finetune,previous_default --seeds 42,43,44 \
    --out bench/results/learning-full.md
BASE_ONLY=1 bash evaluate.sh output/learning/default/seed42
rm -rf output/idiom
/usr/bin/time -v -o output/idiom.time env TASK=idiom STEPS=300 bash train.sh
bash evaluate.sh output/idiom --max_samples 200
BASE_ONLY=1 bash evaluate.sh output/idiom --max_samples 200
cat bench/results/learning-full.md
echo "== sentiment, base only (seed-42 checkpoint's prompts):"
cat output/learning/default/seed42/eval-base-only/metrics.json
echo "== idiom: $(grep -E 'Elapsed \(wall|Maximum resident' output/idiom.time | tr -s ' ' | paste -sd ';')"
cat output/idiom/eval/metrics.json output/idiom/eval-base-only/metrics.json
