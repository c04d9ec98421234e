#!/usr/bin/env bash
# Cluster CPU per request by consistency level: starts NODES ringcached processes (R = 3, or
# fewer when there are fewer nodes) on 127.0.0.71… with the default ports, fills the key space,
# then runs ringbench once per (mode, operation, level), REPS times, and prints one CSV line per
# run: throughput, latency and the CPU the node processes used over the run (utime + stime from
# /proc/PID/stat, summed over every node) divided by the requests done.
#
# Modes: `open` offers RATE req/s on schedule (open loop; what got through is `rps`), `closed`
# keeps 10 connections × 5 requests in flight (ringbench's defaults). Operations: get (reads
# only) and set (writes only), each at every level of LEVELS. The figures compare levels within
# one run (same machine load); run NODES=1 for the single-node write cost a QUORUM write's
# three copies are measured against.
#
# Usage: cluster_cpu.sh [REPS]                     (default 3)
# Environment: NODES (3), LEVELS ("one quorum all"), OPS ("get set"), MODES ("open closed"),
#   RATE (15000), DURATION (5s), KEYS (100000), VALUE (100), WORKERS (ringcached --workers,
#   default: its own), HARNESS_CPU (pin ringbench to this CPU; default unpinned),
#   RINGCACHED / RINGBENCH (binaries; default target/release/…), BASE_IP (127.0.0.7: nodes on
#   ${BASE_IP}1 … ${BASE_IP}N).
# Needs target/release/ringcached and ringbench (cargo build --release -p ringcache-server
# -p ringcache-bench) and jq (apt-get install jq).
set -euo pipefail
reps=${1:-3}
nodes=${NODES:-3}
levels=${LEVELS:-one quorum all}
ops=${OPS:-get set}
modes=${MODES:-open closed}
rate=${RATE:-15000}
duration=${DURATION:-5s}
keys=${KEYS:-100000}
value=${VALUE:-100}
base_ip=${BASE_IP:-127.0.0.7}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
ringcached=${RINGCACHED:-$bin/ringcached}
ringbench=${RINGBENCH:-$bin/ringbench}
command -v jq >/dev/null || { echo "jq not found (apt-get install jq)" >&2; exit 1; }
for b in "$ringcached" "$ringbench"; do
  [ -x "$b" ] || { echo "no $b: cargo build --release -p ringcache-server -p ringcache-bench" >&2; exit 1; }
done
[ "$nodes" -ge 1 ] && [ "$nodes" -le 9 ] || { echo "NODES must be 1..9" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
workers=()
[ -n "${WORKERS:-}" ] && workers=(--workers "$WORKERS")
targets=()
for i in $(seq 1 "$nodes"); do
  ip="$base_ip$i"
  targets+=("$ip:7379")
  env -u RUST_LOG "$ringcached" --bind "$ip" --node-id "bench-$i" --seeds "${base_ip}1:7380" \
    --replication-factor 3 --max-memory 1GiB "${workers[@]}" >"$dir/node-$i.log" 2>&1 &
  pids+=("$!")
done
url="ringcache://$(IFS=,; echo "${targets[*]}")"
# Ready = /health/ready answers 200 on every node (joined, in the ring, topology agreed).
deadline=$((SECONDS + 30))
for i in $(seq 1 "$nodes"); do
  until curl -sf "http://$base_ip$i:7381/health/ready" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "node $i not ready; logs:" >&2; cat "$dir"/*.log >&2; exit 1; }
    kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { echo "node $i exited; logs:" >&2; cat "$dir"/*.log >&2; exit 1; }
    sleep 0.1
  done
done
pin=()
[ -n "${HARNESS_CPU:-}" ] && pin=(--cpu "$HARNESS_CPU")
bench() { "$ringbench" run "$url" --keys "$keys" --value-size "$value" --distribution uniform \
  --no-progress "${pin[@]}" "$@"; }
# Fill the key space once (not measured), then a short unmeasured run at every level.
bench --load --mix get=100 -d 1s >/dev/null 2>&1
for level in $levels; do bench --mix get=50,set=50 --consistency "$level" -d 1s --warmup 0s >/dev/null 2>&1; done
ticks() { local sum=0 pid; for pid in "${pids[@]}"; do
  sum=$((sum + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"))); done; echo "$sum"; }
hz=$(getconf CLK_TCK)
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $("$ringcached" --version); $nodes nodes; $duration per run"
echo "nodes,mode,op,level,rep,offered,rps,ok,errors,p50_ms,p99_ms,cpu_ms,cpu_us_per_req,loadavg1"
for rep in $(seq 1 "$reps"); do
  for mode in $modes; do
    for op in $ops; do
      for level in $levels; do
        load=(); offered=closed
        if [ "$mode" = open ]; then load=(--rate "$rate"); offered=$rate; fi
        t0=$(ticks)
        bench --mix "$op=100" --consistency "$level" -d "$duration" --warmup 0s "${load[@]}" \
          --json "$dir/run.json" >/dev/null 2>"$dir/bench.err" || { cat "$dir/bench.err" >&2; exit 1; }
        t1=$(ticks)
        read -r rps ok errors p50 p99 < <(jq -r '[.throughput, .ok, .errors, .latency.p50_us / 1000, .latency.p99_us / 1000] | @tsv' "$dir/run.json")
        cpu_ms=$(( (t1 - t0) * 1000 / hz ))
        us=$(awk -v ms="$cpu_ms" -v n="$((ok + errors))" 'BEGIN { printf "%.1f", n ? ms * 1000 / n : 0 }')
        printf '%s,%s,%s,%s,%s,%s,%.0f,%s,%s,%.3f,%.3f,%s,%s,%s\n' "$nodes" "$mode" "$op" "$level" \
          "$rep" "$offered" "$rps" "$ok" "$errors" "$p50" "$p99" "$cpu_ms" "$us" "$(cut -d' ' -f1 /proc/loadavg)"
      done
    done
  done
done | tee "$dir/runs.csv"
# Medians over the reps, per (mode, op, level).
echo "# medians: nodes,mode,op,level,rps,cpu_us_per_req,p50_ms,p99_ms,errors"
tail -n +1 "$dir/runs.csv" | awk -F, '$1 ~ /^[0-9]+$/ { k = $1 "," $2 "," $3 "," $4; n[k]++;
    rps[k, n[k]] = $7; us[k, n[k]] = $13; p50[k, n[k]] = $10; p99[k, n[k]] = $11; err[k] += $9
    if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
  function median(a, k, c,   i, j, t, v) { for (i = 1; i <= c; i++) v[i] = a[k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2 }
  END { for (i = 1; i <= m; i++) { k = order[i]; c = n[k]
    printf "%s,%.0f,%.1f,%.3f,%.3f,%d\n", k, median(rps, k, c), median(us, k, c), median(p50, k, c), median(p99, k, c), err[k] } }'
