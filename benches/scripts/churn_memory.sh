#!/usr/bin/env bash
# Memory under churn, ringcache beside Redis: both servers get the same memory budget (ringcached
# --max-memory, redis-server --maxmemory with allkeys-lru) and the same load from ringbench:
#   1. set-only, uniform over KEYS keys of VALUE bytes, for DURATION;
#   2. set/delete 50/50 over the same keys, for DURATION.
# After each phase it prints, per server: keys held (DBSIZE), RSS, RSS / budget, keys per MiB of
# RSS, and the ratio ringcache / Redis of keys per MiB.
# Usage: churn_memory.sh [BUDGET_MIB=64] [KEYS=2000000] [VALUE=200] [DURATION=30s]
# Needs release builds (cargo build --release -p ringcache-server -p ringcache-bench),
# redis-server and redis-cli (apt-get install redis-server).
set -euo pipefail
budget=${1:-64}
keys=${2:-2000000}
value=${3:-200}
duration=${4:-30s}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release
for tool in redis-server redis-cli; do
  command -v $tool >/dev/null || { echo "$tool not found: apt-get install redis-server" >&2; exit 1; }
done
for tool in ringcached ringbench; do
  [ -x "$bin/$tool" ] || { echo "$bin/$tool missing: cargo build --release -p ringcache-server -p ringcache-bench" >&2; exit 1; }
done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); resp=$(port); http=$(port); gossip=$(port); redis_port=$(port)
dir=$(mktemp -d)
"$bin/ringcached" --bind 127.0.0.1 --node-id churn --grpc-port "$grpc" --resp-port "$resp" \
  --http-port "$http" --gossip-port "$gossip" --cluster-port 0 --workers 1 \
  --max-memory "${budget}MiB" >"$dir/ringcached.log" 2>&1 &
rc=$!
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --maxmemory "${budget}mb" --maxmemory-policy allkeys-lru >"$dir/redis.log" 2>&1 &
rd=$!
trap 'kill $rc $rd 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$resp" ping >/dev/null 2>&1 && redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
report() {
  local phase=$1 rc_keys rd_keys rc_rss rd_rss
  rc_keys=$(redis-cli -p "$resp" dbsize); rd_keys=$(redis-cli -p "$redis_port" dbsize)
  rc_rss=$(rss_mib $rc); rd_rss=$(rss_mib $rd)
  python3 - "$phase" "$budget" "$rc_keys" "$rc_rss" "$rd_keys" "$rd_rss" <<'PY'
import sys
phase, budget = sys.argv[1], float(sys.argv[2])
rck, rcr, rdk, rdr = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
per = lambda k, r: k / r if r else 0.0
print(f"| {phase} | ringcache | {rck:,} | {rcr:.1f} MiB | {rcr / budget:.2f}x | {per(rck, rcr):,.0f} | |")
print(f"| {phase} | Redis | {rdk:,} | {rdr:.1f} MiB | {rdr / budget:.2f}x | {per(rdk, rdr):,.0f} | {per(rck, rcr) / max(per(rdk, rdr), 1e-9):.2f}x |")
PY
}
load() {
  local mix=$1 pids=""
  for target in "ringcache://127.0.0.1:$grpc" "redis://127.0.0.1:$redis_port"; do
    "$bin/ringbench" "$target" --mix "$mix" --keys "$keys" --distribution uniform \
      --value-size "$value" --duration "$duration" --warmup 0s -c 4 -k 16 --no-progress \
      >"$dir/$(echo "$target" | cut -d: -f1)-$mix.txt" 2>&1 &
    pids="$pids $!"
  done
  wait $pids
}
echo "budget ${budget} MiB, ${keys} keys of ${value} B, uniform, ${duration} per phase"
echo
echo "| phase | server | keys held | RSS | RSS / budget | keys per MiB of RSS | ringcache / Redis |"
echo "|---|---|--:|--:|--:|--:|--:|"
report start
load set=1
report set-only
load set=50,del=50
report "set/del 50/50"
