#!/usr/bin/env bash
# Runs every benchmark docs/BENCHMARKS.md cites, with the doc's parameters, and writes each
# one's output to a directory (default: target/bench-all/<UTC time>), with the machine, the
# commit and `uptime` before and after every step in env.txt and the exact commands in
# commands.txt. Every binary also prints its own machine line and commit.
#
# Usage: scripts/bench_all.sh [OUT_DIR]
# Runtime: about 7 minutes on a quiet 2-vCPU machine (estimated from the parameters: the
# step comments give each one's share; up to ~12 minutes on a loaded or disk-throttled
# one), plus the release build. Each step's seconds are written to env.txt. Run it on a quiet machine: the figures
# compare same-run baselines, but other load still widens every spread. Needs root for the
# cold-cache figures (drop_caches); without it they say what they did instead.
set -u
cd "$(dirname "$0")/.."
out=${1:-target/bench-all/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
nice_build() { cargo build --release -p quark-bench --bins -p quark-cli; }
nice_build || { echo "release build failed" >&2; exit 1; }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cores: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(grep MemTotal /proc/meminfo)"
  echo "commit: $(git rev-parse --short HEAD)$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty)"
  echo "disk under target/: $(findmnt -n -o FSTYPE,SOURCE -T target 2>/dev/null)"
  echo "uptime: $(uptime)"
} > "$out/env.txt"
failed=0
# step NAME COMMAND...: runs COMMAND, stdout to NAME.txt, stderr to NAME.err.
step() {
  local name=$1
  shift
  echo "$name: $*" >> "$out/commands.txt"
  echo "== $name: $*" >&2
  local t0
  t0=$(date +%s)
  if ! "$@" > "$out/$name.txt" 2> "$out/$name.err"; then
    echo "   $name FAILED (see $out/$name.err)" >&2
    failed=1
  fi
  echo "$name: $(( $(date +%s) - t0 )) s; after: $(uptime)" >> "$out/env.txt"
}

# Shard engine: targets with same-run baselines, and the same-run tokio comparison (~1.5 min).
step enginebench target/release/enginebench --runs 5 --json
# loadgen in-process: default closed loop (x3), open loop at 600k req/s, tell (~1 min).
for i in 1 2 3; do
  step "loadgen-closed-$i" target/release/loadgen --json
done
step loadgen-open-600k target/release/loadgen --rate 600000 --duration-s 5 --json
step loadgen-tell target/release/loadgen --op tell --duration-s 3 --warmup-s 1 --json
# Durable log (~1 min; writes a 1 GiB log once under target/logbench).
step logbench target/release/logbench --runs 5 --bandwidth-mib 128
# Across nodes: plain TCP baseline (~0.5 min), then netbench and loadgen --target (~2 min).
step tcp_baseline target/release/tcp_baseline --runs 7
step net_targets scripts/net_targets.sh "$out/net" --no-build
# Journaling (~1 min): the latency groups apart from the ones that write hundreds of MB.
step journalbench-single target/release/journalbench --runs 5 --ops 10000 --baseline-ops 10000 --only baseline,single --json
step journalbench-activation target/release/journalbench --runs 3 --only activation,concurrent --json

# Durable jobs and the outbox (~1.5 min; fsync always, under target/).
step jobbench target/release/jobbench --dir target/jobbench --jobs 400000
step outboxbench target/release/outboxbench --secs 5

echo "uptime at the end: $(uptime)" >> "$out/env.txt"
echo "results in $out" >&2
exit $failed
