#!/usr/bin/env bash
# Memory per key of Redis for the same data as `memprobe`: N keys `key:%010d` (14 B) with V-byte
# values, loaded with `redis-cli --pipe` into a fresh redis-server (no persistence) on 127.0.0.1.
# Prints RSS per key and the overhead beyond key + value. Usage: redis_memory.sh [N] [V] [PORT]
# Needs redis-server and redis-cli (`apt-get install redis-server`).
set -euo pipefail
n=${1:-1000000}
v=${2:-100}
port=${3:-16399}
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --maxmemory 0 \
  --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
pid=$(cat "$dir/redis.pid")
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status"; }
before=$(rss)
python3 - "$n" "$v" > "$dir/load.resp" <<'PY'
import sys
n, v = int(sys.argv[1]), int(sys.argv[2])
value = "x" * v
out = sys.stdout
for i in range(n):
    key = "key:%010d" % i
    out.write("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, v, value))
PY
redis-cli -p "$port" --pipe < "$dir/load.resp" >/dev/null
after=$(rss)
keys=$(redis-cli -p "$port" dbsize)
python3 - "$before" "$after" "$keys" "$v" <<'PY'
import sys
before, after, keys, v = map(int, sys.argv[1:])
per_key = (after - before) / keys
print(f"redis keys           {keys}")
print(f"redis rss per key    {per_key:.1f} B")
print(f"redis overhead       {per_key - (14 + v):.1f} B (beyond {14 + v} B of key + value)")
PY
