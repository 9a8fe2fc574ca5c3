#!/usr/bin/env bash
# A Redis server for the shared KV tier, from the Debian package, on loopback only.
#
#   scripts/redis.sh start DIR [MAX_MB]   start one in DIR (pid, log), bounded to MAX_MB (default 512) with
#                                         LRU eviction, no persistence; prints its URL (redis://127.0.0.1:PORT/0)
#   scripts/redis.sh url DIR              print the URL of the one running in DIR
#   scripts/redis.sh stop DIR             stop it
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi

case "$cmd" in
  start)
    max_mb=${3:-512}
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "redis.sh: redis-server is missing: run scripts/setup.sh --test (it installs Debian's redis-server)" >&2
      exit 1
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --daemonize yes \
      --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      --save "" --appendonly no --maxmemory "${max_mb}mb" --maxmemory-policy allkeys-lru
    for _ in $(seq 100); do
      if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        echo "redis://127.0.0.1:$port/0" | tee "$dir/url"
        exit 0
      fi
      sleep 0.05
    done
    echo "redis.sh: redis-server did not answer on port $port; see $dir/redis.log" >&2
    exit 1
    ;;
  url)
    cat "$dir/url"
    ;;
  stop)
    if [ -f "$dir/redis.pid" ]; then
      pid=$(cat "$dir/redis.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      rm -f "$dir/redis.pid" "$dir/url"
    fi
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
