#!/usr/bin/env bash
# "The shipped base" below is the 1,916-step build that data/base_model held until commit 01a3db2 (its results files say
# so); the shipped base is now the 7,664-step build, so a rerun compares these variants with the new one.
# Is the base the limit of the prefix on the sentiment task? The same recipe on a base pretrained twice as long.
#   1. builds output/base_2x: data/build_base_model.py with the shipped base's settings but 3,832 steps instead of
#      the 1,916 the shipped base reached in its 35 minutes (a step count, so the build is reproducible);
#   2. linear probes on it (bench/results/probe-base_2x.md) and on the shipped base with every training review
#      (bench/results/probe-all-train.md), the best a readout of the frozen features can do;
#   3. train.sh's default over seeds 42 43 44 and full fine-tuning on seed 42 on it (bench/results/base_strength.md;
#      the shipped base's rows are in learning-full.md).
# About 50 minutes on 2 CPU cores with nothing else running; finished steps are kept and not run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source setup_env.sh
if [ ! -f output/base_2x/model.safetensors ]; then
    "$PY" data/build_base_model.py --out output/base_2x --steps 3832 --threads 2
fi
"$PY" bench/probe.py --train 15363 --out bench/results/probe-all-train.md
"$PY" bench/probe.py --train 15363 --model output/base_2x --out bench/results/probe-base_2x.md
"$PY" bench/learning.py --configs base_2x --seeds 42,43,44 --out bench/results/base_strength.md
"$PY" bench/learning.py --configs base_2x,base_2x_full_finetune --seeds 42 --out bench/results/base_strength-ft.md
