#!/usr/bin/env bash
# Reproduces every number of the README's "Results on the shipped default", on this machine, from scratch
# (about 12.5 hours on 2 CPU cores with nothing else running; finished runs are kept under output/learning/ and
# not trained again, so an interrupted run continues):
#   1. sentiment, seeds 42 43 44, full budget: the default `bash train.sh` and full fine-tuning of the same base
#      (bench/results/learning-full.md), and the previous default on seed 42 (learning-previous.md);
#      later (after the 3,000-step check) the 2,000-step schedule with 100 warmup steps (warmup_100.md) and the default
#      measured under its own config name (warmup_100_3000.md), about an hour;
#   2. the fit test: 512 training reviews, 600 steps (learning-fit.md);
#   3. the factor screen: one change at a time, 300 steps, seeds 42 43 44 (learning-screen.md);
#   4. probes on the frozen base and its loss before training (probe.md);
#   5. the zero-shot base with the same prompts (BASE_ONLY=1 evaluate.sh on the seed-42 checkpoint);
#   6. TASK=idiom with STEPS=300 on the first 200 test examples, with and without the prefix, and the idiom and
#      multi-turn learning rates (bench/task_lr.py, task_lr.md; about 20 minutes), and idiom at 2,000 steps;
#   7. training step time before/after the answer-window loss and length grouping (step_time.md);
#   8. the P*-tuning family side by side (bench/methods.py: methods.md, methods.png; about 80 more minutes) and
#      the fixed-batch fit (fixed_batch.txt);
#   9. the default on length-balanced training data (length_balanced.md) and with prompts cut at 96 tokens, the
#      previous default (cut.md), the base pretrained twice as long (bench/base_strength.sh, about 45 minutes) and
#      the 8-layer base (bench/base_depth.sh, about 70 minutes), and last, over every finished run, how much of
#      each run's answers the prompt's length explains (length_shortcut.md);
#  10. the full-budget screen (screen-full-seed42.md, screen-full-cosine.md, screen-full-init.md), the answer-position experiments
#      (suffix_experiment.md, with the plain prefix also on output/base_2x), the classification head at the current
#      cut (output/head256.jsonl), the frozen base's answer position under other prompts (template_probe.md) and
#      the length analysis of the current default's checkpoints (length_shortcut-current.md);
#  11. the review-last template (question_last.md), the 8-head base (bench/base_heads.sh, about 45 minutes), shorter
#      prefixes (screen-short-prefix.md), batches of 32 (screen-batch.md), separate key/value learning rates and
#      a label-word-only loss (bench/kv_experiment.py; kv_experiment.md is written by hand from its JSON lines),
#      how much attention the trained prefixes take (prefix_attention.md) and probes on the base with the seed-42 and
#      seed-44 prefixes in place (probe-prefixed.md, probe-prefixed-seed44.md), also for the base pretrained twice as long
#      (probe-base_2x-256.md, probe-prefixed-base_2x.md, base_2x-current.md); about 1.5 hours more;
#  12. bench/base_4x.sh: a second build of the shipped base (output/base_4x, the same weights) with its probes and
#      train.sh at lr 3e-3 (the previous default), 1e-3 (the default) and 5e-4 (about 2.8 hours more).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source setup_env.sh
"$PY" bench/learning.py --configs default,full_finetune --seeds 42,43,44 --out bench/results/learning-full.md
"$PY" bench/learning.py --configs previous_default --seeds 42 --out bench/results/learning-previous.md
"$PY" bench/learning.py --configs fit_512,fit_512_pre_seq_len_128,fit_512_full_finetune --seeds 42 \
    --out bench/results/learning-fit.md
"$PY" bench/learning.py --steps 300 --seeds 42,43,44 \
    --configs default,lr_1e-2,lr_3e-3,cosine_warmup,no_projection,pre_seq_len_64,dropout_0.1,random_init \
    --out bench/results/learning-screen.md
"$PY" bench/probe.py --train 4096
BASE_ONLY=1 bash evaluate.sh output/learning/default/seed42
rm -rf output/idiom
/usr/bin/time -v -o output/idiom.time env TASK=idiom STEPS=300 bash train.sh > output/idiom.log 2>&1
bash evaluate.sh output/idiom --max_samples 200
BASE_ONLY=1 bash evaluate.sh output/idiom --max_samples 200
rm -rf output/idiom-2000   # idiom at its own default length, 2,000 steps (about 9 minutes)
TASK=idiom OUTPUT_DIR=output/idiom-2000 bash train.sh > output/idiom-2000.log 2>&1
bash evaluate.sh output/idiom-2000 --max_samples 200
"$PY" bench/task_lr.py
"$PY" bench/step_time.py
"$PY" bench/methods.py
"$PY" bench/fixed_batch.py prompt_tuning:3e-2 prompt_tuning:3e-1 ptuning_v1:1e-2 ptuning_v2:3e-3
"$PY" bench/length_shortcut.py --make_balanced
"$PY" bench/learning.py --configs default,length_balanced --seeds 42,43,44 --out bench/results/length_balanced.md
"$PY" bench/learning.py --configs default,cut_96,full_finetune --seeds 42,43,44 --out bench/results/cut.md
"$PY" bench/learning.py --configs default --steps 4000 --seeds 42 --out bench/results/steps-4000.md
"$PY" bench/learning.py --configs schedule_2000 --steps 3000 --seeds 42,43 --out bench/results/steps-3000.md
"$PY" bench/learning.py --configs warmup_100 --seeds 42,43,44 --out bench/results/warmup_100.md
"$PY" bench/learning.py --configs warmup_100_3000 --seeds 42,43,44 --out bench/results/warmup_100_3000.md
bash bench/base_strength.sh
bash bench/base_depth.sh
# after base_strength.sh: the full-budget screen has a row on its output/base_2x
"$PY" bench/learning.py --seeds 42 --out bench/results/screen-full-seed42.md \
    --configs default,lr_3e-3,lr_1e-2,cosine_warmup,no_projection,pre_seq_len_64,dropout_0.1,random_init,random_batches,base_2x,prefix_hidden_1024
"$PY" bench/learning.py --configs default,cosine_warmup --seeds 42,43,44 --out bench/results/screen-full-cosine.md
"$PY" bench/learning.py --configs default,random_init --seeds 42,43,44 --out bench/results/screen-full-init.md
"$PY" bench/suffix_experiment.py --variants prefix,prefix_suffix4,prefix_posfree --steps 2000 --eval_every 200
"$PY" bench/head_experiment.py --variants head_mean --steps 2000 --eval_every 200 --out output/head256.jsonl
"$PY" bench/suffix_experiment.py --variants prefix --steps 2000 --eval_every 200 --model output/base_2x
"$PY" bench/template_probe.py --train 4096
"$PY" bench/length_shortcut.py --checkpoint output/learning/default/seed42 --checkpoint output/learning/default/seed44 \
    --out bench/results/length_shortcut-current.md
"$PY" bench/length_shortcut.py --checkpoint output/learning/default/seed42 --checkpoint output/learning/cut_96/seed42 \
    --checkpoint output/learning/cut_96/seed44
"$PY" bench/learning.py --configs default,question_last --seeds 42 --out bench/results/question_last.md
bash bench/base_heads.sh
"$PY" bench/learning.py --configs pre_seq_len_4,pre_seq_len_8 --seeds 42 --out bench/results/screen-short-prefix.md
"$PY" bench/learning.py --configs batch_32 --seeds 42 --out bench/results/screen-batch.md
"$PY" bench/kv_experiment.py --variants mlp,kv_3e-2_3e-2,kv_0_1e-2
"$PY" bench/kv_experiment.py --variants mlp --loss cls
"$PY" bench/prefix_attention.py start:output/learning/default/seed42 output/learning/default/seed42 \
    output/learning/default/seed43 output/learning/default/seed44 output/learning/pre_seq_len_4/seed42
"$PY" bench/probe.py --train 4096 --checkpoint output/learning/default/seed42 --out bench/results/probe-prefixed.md
"$PY" bench/probe.py --train 4096 --checkpoint output/learning/default/seed44 --out bench/results/probe-prefixed-seed44.md
# after base_strength.sh (output/base_2x): its frozen probes at the current cut, and with its seed-42 prefix in place
"$PY" bench/learning.py --configs base_2x --seeds 42 --out bench/results/base_2x-current.md
"$PY" bench/probe.py --train 4096 --model output/base_2x --out bench/results/probe-base_2x-256.md
"$PY" bench/probe.py --train 4096 --checkpoint output/learning/base_2x/seed42 --out bench/results/probe-prefixed-base_2x.md
bash bench/base_4x.sh
cat bench/results/learning-full.md bench/results/learning-previous.md bench/results/learning-fit.md \
    bench/results/learning-screen.md bench/results/probe.md bench/results/step_time.md
echo "== sentiment, base only (the seed-42 checkpoint's prompts):"
cat output/learning/default/seed42/eval-base-only/metrics.json
echo "== idiom: $(grep -E 'Elapsed \(wall|Maximum resident' output/idiom.time | tr -s ' ' | paste -sd ';')"
cat output/idiom/eval/metrics.json output/idiom/eval-base-only/metrics.json
cat output/idiom-2000/eval/metrics.json
