#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite on the CPU with no downloads.
# Extra arguments go to pytest, e.g. `bash test.sh -m "not slow" -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"
