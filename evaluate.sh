#!/usr/bin/env bash
# Evaluate a prefix checkpoint: batched generation on the test set, metrics.json + generated_predictions.jsonl.
#   bash evaluate.sh CHECKPOINT [TEST_FILE] [extra flags for python -m ptuning_v2.evaluate]
# The base model, its quantization, the prompt format and (if no TEST_FILE is given) the test file come from
# the checkpoint. BASE_ONLY=1 evaluates the base without the prefix, with the same prompts.
# DO_SAMPLE=1 samples instead of greedy decoding.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
if [ $# -lt 1 ]; then
    echo "usage: bash evaluate.sh CHECKPOINT [TEST_FILE] [flags]" >&2
    exit 2
fi
CHECKPOINT=$1; shift
ARGS=(--checkpoint "$CHECKPOINT")
if [ $# -ge 1 ] && [[ "$1" != --* ]]; then ARGS+=(--test_file "$1"); shift; fi
[ "${BASE_ONLY:-0}" = 1 ] && ARGS+=(--base_only)
[ "${DO_SAMPLE:-0}" = 1 ] && ARGS+=(--do_sample)
exec "$PY" -m ptuning_v2.evaluate "${ARGS[@]}" "$@"
