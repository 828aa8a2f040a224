#!/usr/bin/env bash
# The OOM-prevention run of issue 18 (docs/MEMORY.md, "OOM prevention"): node 1's actors grow
# to TOTAL_MIB (default 512) against a limit of LIMIT_MIB (default 256), once without the
# memory monitor and once with it, node 2 (a second process) taking what node 1 sends away.
# Writes the two memory curves to docs/memory_oom_off.csv and docs/memory_oom_on.csv and prints
# one summary line per run. `PROFILE=release` for a release build (default: debug).
# Under `systemd-run --scope -p MemoryMax=` (when systemd runs the machine) the run without the
# monitor is killed at the limit instead; set CGROUP=1 to try it.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=${LIMIT_MIB:-256}
TOTAL_MIB=${TOTAL_MIB:-512}
PROFILE=${PROFILE:-debug}
flag=""; [ "$PROFILE" = release ] && flag="--release"
cargo build $flag -p quark-bench --bin memhog
bin="target/$PROFILE/memhog"
port=$((20000 + RANDOM % 10000))
addrs="127.0.0.1:$port,127.0.0.1:$((port + 1))"

run() { # $1: off|on
    local mem=""; [ "$1" = on ] && mem="--memory"
    "$bin" --role peer --node-id 2 --addrs "$addrs" --run-secs 120 > /tmp/memhog-peer.out 2>&1 &
    local peer=$!
    local wrap=()
    if [ "${CGROUP:-0}" = 1 ] && [ "$1" = off ]; then
        wrap=(systemd-run --scope -q -p "MemoryMax=${LIMIT_MIB}M" --)
    fi
    set +e
    "${wrap[@]}" "$bin" --role driver --node-id 1 --addrs "$addrs" --limit-mib "$LIMIT_MIB" \
        --total-mib "$TOTAL_MIB" $mem --csv "docs/memory_oom_$1.csv"
    local rc=$?
    set -e
    kill "$peer" 2>/dev/null || true
    wait "$peer" 2>/dev/null || true
    echo "memhog ($1) exited $rc"
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
run off
port=$((port + 2)); addrs="127.0.0.1:$port,127.0.0.1:$((port + 1))"
run on
python3 scripts/memory_oom_plot.py
