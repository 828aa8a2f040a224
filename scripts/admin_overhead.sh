#!/usr/bin/env bash
# The engine's throughput with and without the admin endpoint, in the same run: `loadgen`
# (in-process, closed loop, asks) on a node without [admin], with [admin] and nobody scraping,
# and with [admin] scraped once a second (/metrics, /quark/shards, /quark/load: what a
# Prometheus server and an open dashboard do), alternated PAIRS times. Prints each run and the
# medians, and the ratios to the run without the endpoint. Not in CI (a benchmark).
#
# Usage: scripts/admin_overhead.sh [PAIRS=3] [DURATION_S=5]
# LOADGEN=path picks the binary (default: target/release/loadgen, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-3}
dur=${2:-5}
bin=${LOADGEN:-target/release/loadgen}
if [ ! -x "$bin" ]; then
    cargo build --release -p quark-bench --bin loadgen
fi
work=$(mktemp -d)
scraper=""
cleanup() {
    if [ -n "$scraper" ]; then kill "$scraper" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
# A free loopback port for the endpoint (the scraper needs to know it).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[node]\npin_threads = true\n' > "$work/off.toml"
printf '[node]\npin_threads = true\n[admin]\nlisten = "127.0.0.1:%s"\n' "$port" > "$work/on.toml"

run() { # config -> "throughput_rps p99_ns"
    "$bin" --config "$1" --duration-s "$dur" --warmup-s 1 --json 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["throughput_rps"]), r["p99_ns"])'
}

scrape_loop() {
    # Waits for the endpoint, then scrapes it once a second until killed.
    until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
    while true; do
        curl -sf "http://127.0.0.1:$port/metrics" >/dev/null || true
        curl -sf "http://127.0.0.1:$port/quark/shards" >/dev/null || true
        curl -sf "http://127.0.0.1:$port/quark/load" >/dev/null || true
        sleep 1
    done
}

: > "$work/results"
for i in $(seq 1 "$pairs"); do
    echo "off $(run "$work/off.toml")" | tee -a "$work/results"
    echo "on $(run "$work/on.toml")" | tee -a "$work/results"
    scrape_loop &
    scraper=$!
    echo "scraped $(run "$work/on.toml")" | tee -a "$work/results"
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
    scraper=""
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for kind, rps, p99 in rows:
    by.setdefault(kind, []).append((int(rps), int(p99)))
base = statistics.median(r for r, _ in by["off"])
for kind in ("off", "on", "scraped"):
    rps = [r for r, _ in by[kind]]
    p99 = [p for _, p in by[kind]]
    m = statistics.median(rps)
    print(f"{kind:8} throughput median {m:>10.0f} req/s [{min(rps)} .. {max(rps)}]  ratio {m / base:.3f}"
          f"  p99 median {statistics.median(p99) / 1000:.0f} us")
PY
