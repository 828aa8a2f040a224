#!/usr/bin/env bash
# The across-nodes benchmark set (issues 5 and 22), as cited in docs/BENCHMARKS.md:
# 1. netbench (5 runs): sequential remote asks on parked and spinning shards against a blocking
#    64 B ping-pong, pipelined asks (1,000 in flight) against the raw pipelined baseline
#    (length-prefixed 64 B, batched writes), all between the same two processes and cores;
# 2. system calls and CPU time per round trip / per ask (`perf stat`, software events only:
#    load-independent evidence) for 20,000 sequential round trips and 2 s pipelined, each of
#    raw, parked and spinning;
# 3. loadgen --target against a one-shard node (`loadgen --serve`, shard on core 1, spinning
#    50 µs, the built-in actors as `quark serve` registers them; client on core 0): 3
#    closed-loop runs for the maximum rate, 3 open-loop runs at half the median maximum.
# Writes everything to the directory given (default: target/net-targets/<UTC time>), with
# `uptime` between the steps.
# Usage: scripts/net_targets.sh [OUT_DIR] [--no-build]   (~3 minutes)
set -u
cd "$(dirname "$0")/.."
out=${1:-target/net-targets/$(date -u +%Y%m%dT%H%M)}
mkdir -p "$out"
if [ "${2:-}" != "--no-build" ]; then
  cargo build --release -p quark-bench --bin netbench --bin loadgen || exit 1
fi
{ date -u; nproc; uname -r; git rev-parse --short HEAD; uptime; } > "$out/env.txt"
target/release/netbench --runs 5 --json > "$out/netbench.txt" 2>&1
uptime >> "$out/env.txt"
if command -v perf > /dev/null; then
  ev=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_io_uring_enter,task-clock,context-switches
  for m in raw parked spinning; do
    perf stat -e "$ev" target/release/netbench --only-sequential "$m" --round-trips 20000 \
      >> "$out/syscalls.txt" 2>&1
    perf stat -e "$ev" target/release/netbench --only-pipelined "$m" --pipelined-s 2 \
      >> "$out/syscalls.txt" 2>&1
  done
  uptime >> "$out/env.txt"
fi
addr=127.0.0.1:7100
# The server runs until its stdin closes: a fifo this script holds open.
rm -f "$out/serve.stdin"; mkfifo "$out/serve.stdin"
target/release/loadgen --serve "$addr" --serve-cpu 1 < "$out/serve.stdin" > "$out/serve.out" \
  2> "$out/serve.err" &
sp=$!
exec 3> "$out/serve.stdin"
for _ in $(seq 100); do grep -q 'listening on' "$out/serve.out" 2>/dev/null && break; sleep 0.05; done
for _ in 1 2 3; do
  taskset -c 0 target/release/loadgen --target "$addr" --duration-s 5 --warmup-s 1 --json \
    2>/dev/null >> "$out/max.jsonl"
done
max=$(python3 -c "import json,statistics,sys;print(int(statistics.median(json.loads(l)['throughput_rps'] for l in open(sys.argv[1]))))" "$out/max.jsonl")
half=$((max / 2))
echo "max median $max, half $half" >> "$out/env.txt"
for _ in 1 2 3; do
  taskset -c 0 target/release/loadgen --target "$addr" --duration-s 5 --warmup-s 1 \
    --rate "$half" --json 2>/dev/null >> "$out/half.jsonl"
done
exec 3>&-
wait "$sp"
uptime >> "$out/env.txt"
grep -h -A30 '^median' "$out"/netbench.txt
python3 - "$out" <<'P'
import json, sys
for name in ("max", "half"):
    for l in open(f"{sys.argv[1]}/{name}.jsonl"):
        r = json.loads(l)
        print(name, f"{r['throughput_rps']:.0f} req/s p50 {r['p50_ns']/1e3:.0f} us p99 {r['p99_ns']/1e3:.0f} us "
              f"p99.9 {r['p999_ns']/1e3:.0f} us slip p99 {r.get('send_slip_p99_ns', 0)/1e3:.0f} us")
P
echo "results in $out"
