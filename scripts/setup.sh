#!/usr/bin/env bash
# Install gitpack (editable) with its test extras into the current Python environment.
# torch is pinned to the CPU build where one is available (2.13.0 lies on disk on the project's
# machines); pyproject.toml itself accepts any torch >= 2.2, so elsewhere pick your own build first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0" \
        || "$PY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -e '.[test,dev]'
"$PY" -c 'import gitpack, torch, sentencepiece, dill; print("gitpack", gitpack.__version__, "ready with torch", torch.__version__)'
