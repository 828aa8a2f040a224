#!/usr/bin/env bash
# The OOM-prevention run of issue 18 (docs/MEMORY.md, "OOM prevention"): node 1's actors grow
# to TOTAL_MIB (default 512) against a limit of LIMIT_MIB (default 256), once without the
# memory monitor and once with it, node 2 (a second process) taking what node 1 sends away.
# Writes the two memory curves to docs/memory_oom_off.csv and docs/memory_oom_on.csv and prints
# one summary line per run. `PROFILE=release` for a release build (default: debug).
# CGROUP=1: node 1 runs in a memory cgroup limited to LIMIT_MIB instead (cgroup v2 through
# `systemd-run --scope -p MemoryMax=` when systemd runs the machine, else a cgroup v1 directory
# under /sys/fs/cgroup/memory made for the run, as root), with no `limit_bytes` in its config:
# the node takes its limit from the cgroup. Without the monitor the kernel kills it at the
# limit; with it, it stays under. The curves then go to docs/memory_oom_cgroup_{off,on}.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=${LIMIT_MIB:-256}
TOTAL_MIB=${TOTAL_MIB:-512}
PROFILE=${PROFILE:-debug}
flag=""; [ "$PROFILE" = release ] && flag="--release"
cargo build $flag -p quark-bench --bin memhog
bin="${CARGO_TARGET_DIR:-target}/$PROFILE/memhog"
port=$((20000 + RANDOM % 10000))
addrs="127.0.0.1:$port,127.0.0.1:$((port + 1))"

# A cgroup v1 memory directory for this run, limited to LIMIT_MIB (no swap beyond it).
v1_cgroup() {
    local cg=/sys/fs/cgroup/memory/quark-oom-$$
    mkdir -p "$cg"
    echo $((LIMIT_MIB << 20)) > "$cg/memory.limit_in_bytes"
    # The combined memory+swap limit as well, where the kernel has it.
    [ -w "$cg/memory.memsw.limit_in_bytes" ] && echo $((LIMIT_MIB << 20)) > "$cg/memory.memsw.limit_in_bytes"
    echo "$cg"
}

run() { # $1: off|on
    local mem="" csv="docs/memory_oom_$1.csv" wrap=() limit=(--limit-mib "$LIMIT_MIB")
    [ "$1" = on ] && mem="--memory"
    "$bin" --role peer --node-id 2 --addrs "$addrs" --run-secs 120 > /tmp/memhog-peer.out 2>&1 &
    local peer=$!
    if [ "${CGROUP:-0}" = 1 ]; then
        csv="docs/memory_oom_cgroup_$1.csv"
        limit+=(--limit-from-cgroup)
        if command -v systemd-run >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
            wrap=(systemd-run --scope -q -p "MemoryMax=${LIMIT_MIB}M" --)
        else
            local cg
            cg=$(v1_cgroup)
            # The shell joins the cgroup, then becomes memhog (which inherits it).
            wrap=(sh -c 'echo $$ > "$0/cgroup.procs" && shift && exec "$@"' "$cg" _)
            echo "cgroup v1 $cg: memory.limit_in_bytes $(cat "$cg/memory.limit_in_bytes")"
        fi
    fi
    set +e
    "${wrap[@]}" "$bin" --role driver --node-id 1 --addrs "$addrs" "${limit[@]}" \
        --total-mib "$TOTAL_MIB" --growth-lead-ms "${LEAD_MS:-1000}" $mem --csv "$csv"
    local rc=$?
    set -e
    kill "$peer" 2>/dev/null || true
    wait "$peer" 2>/dev/null || true
    if [ "$rc" -eq 137 ]; then
        echo "memhog ($1) exited $rc: killed (SIGKILL: the kernel's OOM killer at the cgroup limit)"
    else
        echo "memhog ($1) exited $rc"
    fi
    if [ -n "${cg:-}" ] && [ -d "${cg:-}" ]; then
        echo "cgroup: max usage $(( $(cat "$cg/memory.max_usage_in_bytes") >> 20 )) MiB (page cache included), OOM kills $(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control")"
        rmdir "$cg" 2>/dev/null || true
    fi
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
run off
port=$((port + 2)); addrs="127.0.0.1:$port,127.0.0.1:$((port + 1))"
run on
[ "${CGROUP:-0}" = 1 ] || python3 scripts/memory_oom_plot.py
