#!/usr/bin/env bash
# "The shipped base" below is the 1,916-step build that data/base_model held until commit 01a3db2 (its results files say
# so); the shipped base is now the 7,664-step build, so a rerun compares these variants with the new one.
# Does the prefix need a deeper base? The shipped base's recipe with 8 layers instead of 4.
#   1. builds output/base_deep: data/build_base_model.py with the shipped base's settings, --layers 8 and the
#      1,916 steps the shipped base reached (a step count, so the build is reproducible; about 20 minutes);
#   2. the fit test on it (512 training reviews, 600 steps), beside the shipped base and output/base_2x (built by
#      bench/base_strength.sh, which runs first in readme_results.sh; bench/results/base_depth-fit.md), and on the
#      shipped base at lr 3e-2 and for 2,000 steps (fit-lr3e-2.md, fit-2000steps.md);
#   3. train.sh's default over seeds 42 43 44 and full fine-tuning on seed 42 on it (bench/results/base_depth.md;
#      the shipped base's rows are in learning-full.md).
# About 70 minutes on 2 CPU cores with nothing else running; finished steps are kept and not run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source setup_env.sh
if [ ! -f output/base_deep/model.safetensors ]; then
    "$PY" data/build_base_model.py --out output/base_deep --layers 8 --steps 1916 --threads 2
fi
"$PY" bench/learning.py --configs fit_512,fit_512_base_2x,fit_512_base_deep --seeds 42 --out bench/results/base_depth-fit.md
# the same fit test at a 10x learning rate, and for 2,000 steps instead of 600
"$PY" bench/learning.py --configs fit_512 --seeds 42 --lr 3e-2 --out bench/results/fit-lr3e-2.md
"$PY" bench/learning.py --configs fit_512 --seeds 42 --steps 2000 --out bench/results/fit-2000steps.md
"$PY" bench/learning.py --configs default,base_deep,full_finetune --seeds 42,43,44 --out bench/results/base_depth.md
"$PY" bench/learning.py --configs base_deep_full_finetune --seeds 42 --out bench/results/base_depth-ft.md
