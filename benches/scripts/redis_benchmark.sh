#!/usr/bin/env bash
# redis-benchmark against ringcache's RESP port and redis-server, in the same run: both servers
# pinned to CPU 0, redis-benchmark on CPU 1, one test (SET or GET) per invocation, ringcache and
# Redis alternating, REPS repetitions. Prints one CSV line per run with the server CPU it used:
# utime+stime ticks from /proc/PID/stat and on-CPU nanoseconds summed over the threads'
# /proc/PID/task/*/schedstat (10 ms ticks are too coarse for a 0.2 s run).
#
# Usage: redis_benchmark.sh [REPS] [REQUESTS] [PIPELINES...]   (defaults: 3 200000 1 16)
# Needs target/release/ringcached (cargo build --release -p ringcache-server), redis-server,
# redis-benchmark, redis-cli and taskset. Binds 127.0.0.88 and 127.0.0.89 (ports 16479, 16380).
set -euo pipefail
reps=${1:-3}
requests=${2:-200000}
shift $(( $# > 2 ? 2 : $# ))
if [ $# -gt 0 ]; then pipelines=("$@"); else pipelines=(1 16); fi
root=$(cd "$(dirname "$0")/../.." && pwd)
ringcached=${RINGCACHED:-${CARGO_TARGET_DIR:-$root/target}/release/ringcached}
for tool in redis-server redis-benchmark redis-cli taskset; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install redis-server util-linux)" >&2; exit 1; }
done
[ -x "$ringcached" ] || { echo "no $ringcached: cargo build --release -p ringcache-server" >&2; exit 1; }
dir=$(mktemp -d)
rc_host=127.0.0.88 rc_port=16479 rd_host=127.0.0.89 rd_port=16380
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
env -u RUST_LOG taskset -c 0 "$ringcached" --bind "$rc_host" --resp-port "$rc_port" --workers 1 \
  --max-memory 1GiB --cluster-port 0 >"$dir/ringcached.log" 2>&1 &
rc_pid=$!; pids+=("$rc_pid")
taskset -c 0 redis-server --bind "$rd_host" --port "$rd_port" --save '' --appendonly no \
  --daemonize no --dir "$dir" --logfile '' >"$dir/redis.log" 2>&1 &
rd_pid=$!; pids+=("$rd_pid")
wait_ping() { # host port: until PONG, at most 15 s
  local deadline=$((SECONDS + 15))
  until [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]; do
    [ $SECONDS -lt $deadline ] || { echo "$1:$2 not answering; logs:" >&2; cat "$dir"/*.log >&2; exit 1; }
    sleep 0.05
  done
}
wait_ping "$rc_host" "$rc_port"
wait_ping "$rd_host" "$rd_port"
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
oncpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f", s }'; }
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $("$ringcached" --version); $(redis-server --version | cut -d' ' -f1-3)"
echo "server,pipeline,test,rep,rps,avg_ms,p50_ms,p99_ms,cpu_ticks,cpu_ns,cpu_us_per_req,loadavg1"
for p in "${pipelines[@]}"; do
  for rep in $(seq 1 "$reps"); do
    for test in set get; do
      for server in ringcache redis; do
        if [ "$server" = ringcache ]; then host=$rc_host port=$rc_port pid=$rc_pid; else host=$rd_host port=$rd_port pid=$rd_pid; fi
        t0=$(ticks "$pid"); n0=$(oncpu_ns "$pid")
        line=$(taskset -c 1 redis-benchmark -h "$host" -p "$port" -t "$test" -n "$requests" -c 50 -P "$p" --csv 2>"$dir/bench.err" | tail -1)
        t1=$(ticks "$pid"); n1=$(oncpu_ns "$pid")
        IFS=, read -r _ rps avg _ p50 _ p99 _ <<<"${line//\"/}"
        us=$(awk -v n=$((n1 - n0)) -v r="$requests" 'BEGIN { printf "%.3f", n / 1000 / r }')
        echo "$server,$p,$test,$rep,$rps,$avg,$p50,$p99,$((t1 - t0)),$((n1 - n0)),$us,$(cut -d' ' -f1 /proc/loadavg)"
      done
    done
  done
done
grep -v 'Could not fetch server CONFIG' "$dir/bench.err" >&2 || true
