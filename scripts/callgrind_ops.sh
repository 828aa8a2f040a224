#!/usr/bin/env bash
# Instructions per same-shard tell and per same-shard sequential ask, counted by callgrind:
# the slope (I(200,000) - I(2,000)) / 198,000 on the thread that ran the most instructions
# (shard 0's, which runs both the sender and the actor). Counts repeat to a few instructions
# whatever the machine's load, which wall-clock figures on a shared machine do not; both
# include the benchmark's own loop (about 30 per tell, 150 per ask). docs/BENCHMARKS.md quotes
# the figures ("Instructions per operation"). Not in CI (a benchmark; about a minute).
#
# Usage: scripts/callgrind_ops.sh [ENGINEBENCH=target/release/enginebench]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/enginebench}
if [ ! -x "$bin" ]; then
    cargo build --release -p quark-bench --bin enginebench
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Per-thread instruction counts of one run, "thread count" lines: `count NAME ARGS...`.
count() {
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/$1.%p" \
        "$bin" "${@:2}" >/dev/null 2>&1
    for f in "$work/$1".*-*; do
        echo "${f##*-} $(grep -m1 '^summary:' "$f" | awk '{print $2}')"
    done
}

# The slope on the thread whose count grew the most between the two sizes (shard 0's).
slope() { # label ops-flag args...
    local label=$1 flag=$2
    shift 2
    count "$label-small" "$@" "$flag" 2000 > "$work/small"
    count "$label-large" "$@" "$flag" 200000 > "$work/large"
    join "$work/small" "$work/large" | awk -v label="$label" '
        { d = $3 - $2; if (d > best) { best = d; t = $1; a = $2; b = $3 } }
        END { printf "%s: %d instructions per operation (thread %s: I(2,000) = %d, I(200,000) = %d)\n",
              label, best / 198000, t, a, b }'
}

echo "enginebench: $bin ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
slope "same-shard tell" --tells --runs 1 --only tell
slope "same-shard sequential ask" --asks --runs 1 --only "sequential ask"
