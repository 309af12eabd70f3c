#!/usr/bin/env bash
# "The shipped base" below is the 1,916-step build that data/base_model held until commit 01a3db2 (its results files say
# so); the shipped base is now the 7,664-step build, so a rerun compares these variants with the new one.
# Does the prefix need more attention heads to steer the base? The shipped base's recipe with multi-head attention,
# 8 query and 8 key/value heads of 32 dimensions (as ChatGLM-6B: one key/value head per query head), instead of
# 4 query heads sharing 2 key/value heads of 64 (GQA, as ChatGLM2/3).
#   1. builds output/base_mha8: data/build_base_model.py with the shipped base's settings, --heads 8 --kv-heads 8
#      and the 1,916 steps the shipped base reached (a step count, so the build is reproducible; about 16 minutes);
#   2. train.sh's default over seeds 42 43 44 on it, and full fine-tuning on seed 42 (bench/results/base_heads.md;
#      the shipped base's rows are in learning-full.md).
# About 45 minutes on 2 CPU cores with nothing else running; finished steps are kept and not run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source setup_env.sh
if [ ! -f output/base_mha8/model.safetensors ]; then
    "$PY" data/build_base_model.py --out output/base_mha8 --heads 8 --kv-heads 8 --steps 1916 --threads 2
fi
"$PY" bench/learning.py --configs default,base_mha8 --seeds 42,43,44 --out bench/results/base_heads.md
"$PY" bench/learning.py --configs base_mha8_full_finetune --seeds 42 --out bench/results/base_heads-ft.md
