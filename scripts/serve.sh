#!/usr/bin/env bash
# Set up (first run only) and start the server on its defaults: http://127.0.0.1:8080,
# SQLite + KV data under ./.data, SmolLM2-135M-Instruct. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m chatserver serve "$@"
