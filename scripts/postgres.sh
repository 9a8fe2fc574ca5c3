#!/usr/bin/env bash
# A throwaway local PostgreSQL in a directory of its own, from the Debian package's binaries
# (/usr/lib/postgresql/<newest>/bin, or $PG_BIN): loopback only, trust auth, one database.
#
#   scripts/postgres.sh start DIR [--no-fsync]   initdb (first time), start, print the server's URL
#   scripts/postgres.sh url DIR                  print the URL of the server started in DIR
#   scripts/postgres.sh stop DIR                 stop it (the data stays in DIR)
#
# URL: postgresql+asyncpg://chatserver@127.0.0.1:PORT/chatserver (a superuser named chatserver; the port
# is a free one picked at the first start and kept in DIR/port). The server listens on 127.0.0.1 and on
# a unix socket in DIR/data; every local connection is trusted, so DIR is for tests and one-machine
# clusters, not for a shared host. --no-fsync: no fsync, no synchronous commit (tests; a crash of the
# machine may lose the data). Run as root (CI), the server runs as the `postgres` user of the Debian
# package (postgres refuses root), which then owns DIR; DIR's parents must let that user through.
set -euo pipefail

usage() { echo "usage: $0 start|url|stop DIR [--no-fsync]" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(realpath -m "$2")
cd /  # the postgres user may not enter the caller's directory (a root-only temporary one): its tools would say so
no_fsync=0
[ "${3:-}" = "--no-fsync" ] && no_fsync=1
user=chatserver

bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
  echo "postgres.sh: no PostgreSQL binaries (install the Debian package postgresql, or set PG_BIN)" >&2
  exit 1
fi

# as root: every server command runs as the package's unprivileged user
if [ "$(id -u)" = 0 ]; then
  run_as=(runuser -u postgres --)
  id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root needs the user postgres (Debian package)" >&2; exit 1; }
else
  run_as=()
fi

url() { echo "postgresql+asyncpg://$user@127.0.0.1:$(cat "$dir/port")/$user"; }

case $action in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown postgres: "$dir"
      if ! "${run_as[@]}" test -w "$dir"; then
        echo "postgres.sh: ${run_as[*]:+the user postgres }cannot write $dir (are its parents traversable?)" >&2
        exit 1
      fi
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
      "${run_as[@]}" sh -c "cat >> '$dir/data/postgresql.conf'" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/data'
max_connections = 200
EOF
      if [ "$no_fsync" = 1 ]; then
        "${run_as[@]}" sh -c "printf '%s\n' 'fsync = off' 'synchronous_commit = off' 'full_page_writes = off' >> '$dir/data/postgresql.conf'"
      fi
      echo "$port" > "$dir/port.tmp" && mv "$dir/port.tmp" "$dir/port"
      fresh=1
    fi
    if ! "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/data/server.log" >&2; exit 1; }
    fi
    if [ "${fresh:-0}" = 1 ]; then
      "${run_as[@]}" "$bin/createdb" -h "$dir/data" -p "$(cat "$dir/port")" -U "$user" "$user"
    fi
    url
    ;;
  url)
    [ -f "$dir/port" ] || { echo "postgres.sh: no server in $dir" >&2; exit 1; }
    url
    ;;
  stop)
    if [ -f "$dir/data/PG_VERSION" ] && "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
  *) usage ;;
esac
