#!/usr/bin/env bash
# Set-up and the everyday jobs, on a fresh machine or an existing checkout:
#   bash dev.sh demo [ARGS...]   set up, then run the main job on the default task
#   bash dev.sh test [ARGS...]   set up, then run the test suite
#   bash dev.sh lint [ARGS...]   set up, then run the linter (ruff, configured in pyproject.toml)
#   bash dev.sh setup            set up only
# The virtual environment (.venv) is reused; packages are installed again only when
# pyproject.toml changed. torch is installed first, pinned (BATCHSCOPE_TORCH, default 2.13.0, the
# CPU build on machines that carry its wheel), so that resolving the other packages finds torch
# already satisfied and never pulls CUDA wheels onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=${BATCHSCOPE_TORCH:-2.13.0}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.batchscope-installed" want
    want=$( (cat pyproject.toml; echo "$TORCH_VERSION") | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "installing batchscope and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[all,dev]"
    echo "$want" > "$stamp"
}

cmd=${1:-demo}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)  setup; exec "$VENV/bin/batchscope" find --task mnist1d "$@" ;;
    test)  setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    lint)  setup; exec "$VENV/bin/ruff" check src tests benchmarks "$@" ;;
    *) echo "usage: bash dev.sh [demo|test|lint|setup] [ARGS...]" >&2; exit 2 ;;
esac
