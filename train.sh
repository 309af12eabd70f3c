#!/usr/bin/env bash
# P-tune a prefix on a frozen base. With no settings: the shipped tiny ChatGLM-style base on Chinese sentiment.
#
# Environment variables (defaults in brackets):
#   MODEL        base model directory                       [data/base_model]
#   TASK         sentiment | idiom | multiturn               [sentiment; none when TRAIN_FILE is given]
#   TRAIN_FILE / VALIDATION_FILE / TEST_FILE                 [the TASK's files under data/generated/]
#                with TRAIN_FILE and no TASK, no task preset applies: pass the column/template flags yourself
#   METHOD       ptuning_v2 (a prefix at every layer) | prompt_tuning (a soft prompt at the input only) |
#                ptuning_v1 (pseudo tokens through an LSTM+MLP prompt encoder, at the input)       [ptuning_v2]
#   PRE_SEQ_LEN  virtual tokens (per layer for ptuning_v2)   [16]
#   PROJECTION   ptuning_v2: 1 reparameterizes the prefix with an MLP (--prefix_projection, prefix-tuning);
#                0: plain embedding                          [1]
#   LR           learning rate        [sentiment: 1e-3 (bench/learning.py); idiom, multiturn: 3e-3 (bench/task_lr.py); custom: 3e-3]
#   DROPOUT      ptuning_v2: dropout on the prefix keys/values while training (--prefix_dropout)  [0]
#   STEPS        optimizer steps           [sentiment: 3000, 10.5 minutes on 2 cores (bench/results/learning-full.md);
#                                           other tasks: 2000]
#   WARMUP       steps of linear learning-rate warmup before the linear decay to 0
#                                           [sentiment: 100 (bench/results/warmup_100.md); other tasks: 0]
#   EVAL_EVERY   steps between evaluations on the validation split (each one a checkpoint; the best is kept)
#                                           [sentiment: 200; other tasks: 100]
#   BATCH        examples per step                           [16]
#   INIT_TEXT    ptuning_v2: start the prefix from the base's own keys/values of this text (--prefix_init_text);
#                prompt_tuning: from the text's token embeddings (--prompt_init text); empty: random
#                [sentiment: the task's instruction; other tasks: empty]
#   PROMPT_INIT  prompt_tuning: random | vocab | text                [text when INIT_TEXT is set, else random]
#   PROMPT_ENCODER  ptuning_v1: lstm | mlp                           [lstm]
#   SEED         random seed (prefix init, data order, dropout)                                       [42]
#   QUANT        4 or 8 to load the frozen base in int4/int8 [unset: full precision]
#   OUTPUT_DIR   where checkpoints go                        [output/$TASK]
#   NUM_GPUS     processes to train with (torchrun on 127.0.0.1, a free port; on a machine without GPUs
#                they are CPU processes over gloo and --use_cpu is added)    [1: one plain process]
#   DS_CONFIG    DeepSpeed config, e.g. ds_configs/zero3.json [ds_configs/zero2.json when NUM_GPUS > 1]
# Extra arguments are passed to `python -m ptuning_v2.train` (any HF Seq2SeqTrainingArguments flag works).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"

MODEL=${MODEL:-data/base_model}
if [ -n "${TRAIN_FILE:-}" ] && [ -z "${TASK:-}" ]; then TASK=custom; fi
TASK=${TASK:-sentiment}
PRE_SEQ_LEN=${PRE_SEQ_LEN:-16}
PROJECTION=${PROJECTION:-1}
DROPOUT=${DROPOUT:-0}
BATCH=${BATCH:-16}
SEED=${SEED:-42}
QUANT=${QUANT:-}
OUTPUT_DIR=${OUTPUT_DIR:-output/$TASK}
DATA=data/generated

SENTIMENT_INSTRUCTION="判断这条评论的情感是积极还是消极："   # "Is this review positive (积极) or negative (消极)?"
case "$TASK" in
  sentiment)
    INIT_TEXT=${INIT_TEXT-$SENTIMENT_INSTRUCTION}
    # shipped base, 2,000 steps, seeds 42/43/44: lr 1e-3 80.8 / 77.1 / 79.8, 5e-4 78.3 / 79.2 / 77.3, 3e-3 58.4 (42)
    LR=${LR:-1e-3}
    # 2,000 steps: 100 warmup steps 79.3 / 80.1 / 80.1; every seed still gaining at its last step. 3,000 steps with
    # that warmup (the evaluations halved to pay for it): bench/results/learning-full.md
    STEPS=${STEPS:-3000}; WARMUP=${WARMUP:-100}; EVAL_EVERY=${EVAL_EVERY:-200}
    TASK_ARGS=(--prompt_column text --response_column label --prompt_template instruction
               --source_prefix "$SENTIMENT_INSTRUCTION" --max_source_length 256 --max_target_length 4) ;;
    # 256 tokens hold 99% of the reviews whole; at 96 a fifth were cut and the prefix learned to answer by
    # length (bench/results/no_cut.md, bench/results/length_shortcut.md)
  idiom)
    LR=${LR:-3e-3}   # shipped base, 300 steps: validation loss 4.60 (3e-2: 6.60, the previous base's lr)
    TASK_ARGS=(--prompt_column content --response_column summary --prompt_template chatglm
               --max_source_length 96 --max_target_length 64) ;;
  multiturn)
    LR=${LR:-3e-3}   # shipped base, 300 steps: validation loss 2.89 (3e-2: 3.24)
    TASK_ARGS=(--prompt_column prompt --response_column response --history_column history
               --prompt_template chatglm --max_source_length 192 --max_target_length 64) ;;
  custom) LR=${LR:-3e-3}; TASK_ARGS=() ;;
  *) echo "TASK must be sentiment, idiom or multiturn (or set TRAIN_FILE and pass column flags)" >&2; exit 2 ;;
esac
STEPS=${STEPS:-2000}
WARMUP=${WARMUP:-0}
EVAL_EVERY=${EVAL_EVERY:-100}
TRAIN_FILE=${TRAIN_FILE:-$DATA/$TASK/train.jsonl}
if [ "$TASK" != custom ]; then
    VALIDATION_FILE=${VALIDATION_FILE:-$DATA/$TASK/dev.jsonl}
    TEST_FILE=${TEST_FILE:-$DATA/$TASK/test.jsonl}
fi

if [ ! -f "$DATA/$TASK/train.jsonl" ] && [[ "$TRAIN_FILE" == "$DATA/"* ]]; then
    echo "[train.sh] preparing the Chinese data sets under $DATA"
    "$PY" data/prepare_data.py --out "$DATA"
fi
[ -f "${TEST_FILE:-}" ] || TEST_FILE=${VALIDATION_FILE:-}   # multiturn has no test split
DATA_ARGS=(--train_file "$TRAIN_FILE")
[ -n "${VALIDATION_FILE:-}" ] && DATA_ARGS+=(--validation_file "$VALIDATION_FILE")
[ -n "${TEST_FILE:-}" ] && DATA_ARGS+=(--test_file "$TEST_FILE")

METHOD=${METHOD:-ptuning_v2}
PREFIX_ARGS=(--method "$METHOD" --pre_seq_len "$PRE_SEQ_LEN")
case "$METHOD" in
  ptuning_v2)
    PREFIX_ARGS+=(--prefix_dropout "$DROPOUT")
    if [ "$PROJECTION" = 1 ]; then PREFIX_ARGS+=(--prefix_projection); fi
    if [ -n "${INIT_TEXT:-}" ]; then PREFIX_ARGS+=(--prefix_init_text "$INIT_TEXT"); fi ;;
  prompt_tuning)
    if [ -n "${INIT_TEXT:-}" ]; then PROMPT_INIT=${PROMPT_INIT:-text}; else PROMPT_INIT=${PROMPT_INIT:-random}; fi
    PREFIX_ARGS+=(--prompt_init "$PROMPT_INIT")
    if [ "$PROMPT_INIT" = text ]; then PREFIX_ARGS+=(--prompt_init_text "$INIT_TEXT"); fi ;;
  ptuning_v1) PREFIX_ARGS+=(--prompt_encoder_type "${PROMPT_ENCODER:-lstm}") ;;
  *) echo "METHOD must be ptuning_v2, prompt_tuning or ptuning_v1" >&2; exit 2 ;;
esac
QUANT_ARGS=()
if [ -n "$QUANT" ]; then QUANT_ARGS=(--quantization_bit "$QUANT" --gradient_checkpointing); fi

NUM_GPUS=${NUM_GPUS:-1}
LAUNCH=("$PY")
DS_ARGS=()
if [ "$NUM_GPUS" -gt 1 ]; then DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}; fi
if [ -n "${DS_CONFIG:-}" ]; then
    # DeepSpeed wants a launcher's environment even for one process.
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    LAUNCH=("$PY" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" --master_addr 127.0.0.1 --master_port "$PORT")
    DS_ARGS=(--deepspeed "$DS_CONFIG")
    if [ "$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')" = 0 ]; then DS_ARGS+=(--use_cpu); fi
    echo "[train.sh] $NUM_GPUS process(es) with DeepSpeed config $DS_CONFIG"
fi

exec "${LAUNCH[@]}" -m ptuning_v2.train \
    --model_name_or_path "$MODEL" \
    "${DATA_ARGS[@]}" \
    "${TASK_ARGS[@]}" \
    "${PREFIX_ARGS[@]}" \
    --learning_rate "$LR" --max_steps "$STEPS" --warmup_steps "$WARMUP" --train_sampling_strategy group_by_length \
    --per_device_train_batch_size "$BATCH" --per_device_eval_batch_size 64 --max_eval_samples 500 \
    --logging_steps 10 --save_steps "$EVAL_EVERY" --save_total_limit 3 --report_to none --seed "$SEED" \
    --output_dir "$OUTPUT_DIR" "${QUANT_ARGS[@]}" "${DS_ARGS[@]}" "$@"
