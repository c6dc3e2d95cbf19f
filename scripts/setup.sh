#!/usr/bin/env bash
# Create .venv and install metalic with its test tools. Idempotent: re-installs only when
# pyproject.toml changed. torch is installed first, pinned, so pip takes the CPU build that
# lies on these machines instead of pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.metalic-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  # The rest through uv (about half pip's time from a cold cache): it keeps the torch above,
  # which satisfies the project's pin. Where uv cannot be installed, pip does it all.
  if .venv/bin/python -m pip install --quiet uv >/dev/null 2>&1; then
    .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[service,dev]"
  else
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -m pip install --quiet -e ".[service,dev]" 2>&1 | grep -v "is ignored" || true
  fi
  .venv/bin/python -c "import torch, metalic" >/dev/null
  touch "$stamp"
fi
