#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite on SQLite, then the tests that go through the
# database once more on a throwaway PostgreSQL (scripts/test_postgres.sh; setup installs the Debian
# package). Extra arguments go to pytest in both runs. Fails if either run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
status=0
env -u TEST_DATABASE_URL .venv/bin/python -m pytest "$@" || status=$?
scripts/test_postgres.sh "$@" || status=$?
exit "$status"
