#!/usr/bin/env bash
# The issue-5 ("across nodes") benchmark set, as cited in docs/BENCHMARKS.md: netbench (5 runs;
# parked and spinning shards against the same baselines), then loadgen --target against a
# `quark serve` node on core 1 (client on core 0): 3 closed-loop runs for the maximum rate,
# 3 open-loop runs at half the median maximum. Writes everything to the directory given
# (default: target/net-targets/<UTC time>), with `uptime` between the steps.
# Usage: scripts/net_targets.sh [OUT_DIR] [--no-build]   (~2 minutes)
set -u
cd "$(dirname "$0")/.."
out=${1:-target/net-targets/$(date -u +%Y%m%dT%H%M)}
mkdir -p "$out"
if [ "${2:-}" != "--no-build" ]; then
  cargo build --release -p quark-bench --bins -p quark-cli || exit 1
fi
{ date -u; nproc; uname -r; git rev-parse --short HEAD; uptime; } > "$out/env.txt"
target/release/netbench --runs 5 --json > "$out/netbench.txt" 2>&1
uptime >> "$out/env.txt"
cat > "$out/serve.toml" <<'T'
[node]
shards = [1]
idle_spin_us = 50
[cluster]
cluster_id = "local"
node_id = 1
[[cluster.nodes]]
id = 1
addr = "127.0.0.1:7100"
T
target/release/quark serve --config "$out/serve.toml" > "$out/serve.out" 2> "$out/serve.err" &
qp=$!
for _ in $(seq 100); do grep -q 'listening on' "$out/serve.out" 2>/dev/null && break; sleep 0.05; done
for _ in 1 2 3; do
  taskset -c 0 target/release/loadgen --target 127.0.0.1:7100 --duration-s 5 --warmup-s 1 --json \
    2>/dev/null >> "$out/max.jsonl"
done
max=$(python3 -c "import json,statistics,sys;print(int(statistics.median(json.loads(l)['throughput_rps'] for l in open(sys.argv[1]))))" "$out/max.jsonl")
half=$((max / 2))
echo "max median $max, half $half" >> "$out/env.txt"
for _ in 1 2 3; do
  taskset -c 0 target/release/loadgen --target 127.0.0.1:7100 --duration-s 5 --warmup-s 1 \
    --rate "$half" --json 2>/dev/null >> "$out/half.jsonl"
done
kill -TERM "$qp"; wait "$qp"
uptime >> "$out/env.txt"
grep -h -A20 '^median' "$out"/netbench.txt
echo "results in $out"
