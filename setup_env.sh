# Sourced by train.sh, evaluate.sh and test.sh: creates .venv on first use and installs the project into it.
# torch==2.13.0 goes first: asking for any other torch pulls several GB of CUDA wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
STAMP="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing torch==2.13.0 and the project into $VENV (about a minute)"
    "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[data,test]"
    touch "$STAMP"
fi
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
