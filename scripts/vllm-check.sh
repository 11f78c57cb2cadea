#!/usr/bin/env bash
# Checks the vLLM backend against the real vllm package in its own virtual environment
# (issue 19, item 9), pinned to the version the compose inference image uses
# (docker/requirements-inference.txt). vLLM's pins (transformers, fastapi, torch) differ
# from the API's, so this environment is separate from .venv and not part of scripts/test.sh.
#
# What it does: imports the backend and builds every object the backend hands vLLM
# (AsyncEngineArgs, SamplingParams with logprobs/penalties/logit_bias, LoRARequest, the
# TokensPrompt of a request) against the installed vllm; it skips only the engine's
# construction when there is no GPU (scripts/vllm_check.py).
#
#   scripts/vllm-check.sh            # creates .venv-vllm on first use (a few GB), then runs the check
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=$(sed -n 's/^vllm==\(.*\)$/\1/p' docker/requirements-inference.txt)
VENV=${VLLM_CHECK_VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, sys; sys.exit(vllm.__version__ != '$VLLM_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # vllm's wheel without its dependencies, then its requirements except flashinfer-python
  # (not on PyPI) and torchvision/torchaudio (unused here); torch as vllm pins it.
  "$VENV/bin/pip" install -q --no-deps "vllm==$VLLM_VERSION"
  REQS=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import requires
skip = ("flashinfer", "torchvision", "torchaudio")
reqs = [r.split(";")[0].strip() for r in requires("vllm") or [] if "extra ==" not in r]
print("\n".join(r for r in reqs if not r.lower().startswith(skip)))
PY
)
  echo "$REQS" | "$VENV/bin/pip" install -q -r /dev/stdin
  # What the backend imports from the project, within vllm's pins (pip resolves them).
  "$VENV/bin/pip" install -q safetensors gguf math-verify celery redis pydantic-settings SQLAlchemy alembic httpx peft
fi
PYTHONPATH="$PWD" exec "$VENV/bin/python" scripts/vllm_check.py
