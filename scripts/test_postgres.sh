#!/usr/bin/env bash
# The tests that go through the database, on PostgreSQL: starts a throwaway server (scripts/postgres.sh,
# in a temporary directory, no fsync), runs pytest with TEST_DATABASE_URL (each test gets a database of
# its own) and TEST_POSTGRES_DIR (the server's directory, for tests that restart it), then stops and
# removes the server. Fails if PostgreSQL cannot start. Arguments go to pytest;
# with a test path among them they choose the tests, else the files below run (about 2 minutes on 2 cores).
# Usage: scripts/test_postgres.sh [pytest arguments]   (after scripts/setup.sh --test)
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_TESTS=(
  tests/storage
  tests/chatserver/chat/test_protocol.py tests/chatserver/chat/test_branches.py tests/chatserver/chat/test_drafts.py
  tests/chatserver/chat/test_owner_controls.py tests/chatserver/chat/test_turn_resume.py
  tests/chatserver/chat/test_concurrency.py tests/chatserver/admin/test_admin.py tests/chatserver/ops/test_kv_tiers.py
  tests/chatserver/cluster
  tests/chatserver/test_cli.py::test_db_upgrade_migrates_the_database_url_and_prints_it_without_its_password
)

selected=()
for arg in "$@"; do
  [ -e "${arg%%::*}" ] && selected+=("$arg")
done
[ ${#selected[@]} -gt 0 ] || set -- "$@" "${DATABASE_TESTS[@]}"

dir=$(mktemp -d "${TMPDIR:-/tmp}/chatserver-pg.XXXXXX")
cleanup() { scripts/postgres.sh stop "$dir" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
if ! url=$(scripts/postgres.sh start "$dir" --no-fsync); then
  echo "test_postgres.sh: PostgreSQL did not start (scripts/setup.sh --test installs it); the database tests" \
       "did not run on PostgreSQL" >&2
  exit 1
fi
echo "test_postgres.sh: the database tests on PostgreSQL at $url" >&2
TEST_DATABASE_URL=$url TEST_POSTGRES_DIR=$dir .venv/bin/python -m pytest "$@"
