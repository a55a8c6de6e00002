#!/usr/bin/env bash
# Create .venv with lmforge (editable) and its test tools. Safe to run again: it only adds what is missing.
#
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0): on machines that
# carry a local CPU wheel of that version pip takes it instead of downloading a multi-GB CUDA
# build; elsewhere pip fetches the normal build for the platform. pyproject.toml itself only
# asks for torch>=2.9, so an existing torch of at least that version is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet "$TORCH_SPEC"
fi
# fla (fla-core) is only located, not imported: its package __init__ needs Triton; the tests load one file by path.
if ! .venv/bin/python -c "import lmforge, pytest, hypothesis, tensorboard, datasets, h5py, pypdf, transformers, lm_eval, matplotlib, einops, peft, torchao, bitsandbytes, importlib.util, sys; sys.exit(importlib.util.find_spec('fla') is None)" 2>/dev/null; then
  .venv/bin/pip install --quiet -e ".[dev]"
fi
