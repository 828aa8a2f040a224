#!/usr/bin/env bash
# A real Prometheus server scraping a two-node Quark cluster (docs/OPERATIONS.md, "Prometheus").
#
# Installs Debian's `prometheus` package when the server is missing (through
# scripts/promtool.sh: the same package), builds `quark`, starts two `quark serve` processes
# (a cluster of two, each with [admin] on loopback) and a throwaway Prometheus server that
# scrapes both every second, then queries Prometheus's HTTP API and checks that each of
# `up == 1`, `quark_node_ready == 1`, `quark_shards` and `quark_net_frames_sent_total` has a
# series from both nodes. Stops what it started and removes its temporary directory.
#
# Not part of CI (it starts three servers on free ports); run it after changing the
# exposition. Takes ~10 s after the build. Exit 0 when every check passed.
#
# Usage: scripts/prom_scrape.sh            # QUARK_KEEP=1 keeps the temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/promtool.sh >/dev/null
prometheus_bin=$(command -v prometheus || echo /usr/bin/prometheus)
if [ ! -x "$prometheus_bin" ]; then
    echo "prom_scrape.sh: the prometheus server is not installed (Debian's prometheus package)" >&2
    exit 1
fi

export CARGO_INCREMENTAL=0
cargo build -q -p quark-cli
quark=target/debug/quark

tmp=$(mktemp -d -t quark-prom.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${QUARK_KEEP:-0}" = 1 ]; then
        echo "prom_scrape.sh: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# A loopback port nothing listens on now (a random pick, checked by connecting to it).
taken=" "
free_port() {
    local p
    while true; do
        p=$((20000 + RANDOM % 40000))
        case "$taken" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            taken="$taken$p "
            echo "$p"
            return
        fi
    done
}

c1=$(free_port); c2=$(free_port); a1=$(free_port); a2=$(free_port); pp=$(free_port)
for id in 1 2; do
    admin_port=$([ "$id" = 1 ] && echo "$a1" || echo "$a2")
    cat > "$tmp/n$id.toml" <<TOML
[node]
shards = 2
pin_threads = false
idle_spin_us = 0

[log]
data_dir = "$tmp/data$id"
fsync = "never"

[admin]
listen = "127.0.0.1:$admin_port"

[cluster]
cluster_id = "prom-scrape"
node_id = $id

[[cluster.nodes]]
id = 1
addr = "127.0.0.1:$c1"

[[cluster.nodes]]
id = 2
addr = "127.0.0.1:$c2"
TOML
    "$quark" serve --config "$tmp/n$id.toml" >"$tmp/n$id.out" 2>"$tmp/n$id.err" &
    pids+=($!)
done

# Waits up to $2 seconds for command $1 to succeed.
wait_for() {
    local what=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if eval "$what"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

for id in 1 2; do
    if ! wait_for "grep -q 'listening on' '$tmp/n$id.out'" 20; then
        echo "prom_scrape.sh: node $id did not start; its log:" >&2
        cat "$tmp/n$id.err" >&2
        exit 1
    fi
done
echo "== two nodes: admin on 127.0.0.1:$a1 and 127.0.0.1:$a2"

cat > "$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: quark
    static_configs:
      - targets: ["127.0.0.1:$a1", "127.0.0.1:$a2"]
YAML
"$prometheus_bin" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:$pp" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
if ! wait_for "curl -sf 'http://127.0.0.1:$pp/-/ready' >/dev/null" 30; then
    echo "prom_scrape.sh: prometheus did not become ready; its log:" >&2
    cat "$tmp/prometheus.log" >&2
    exit 1
fi
echo "== prometheus on 127.0.0.1:$pp scraping both"

# True when the answer to PromQL $1 has a series from both nodes' admin addresses.
both_nodes() {
    local answer
    answer=$(curl -sf -G "http://127.0.0.1:$pp/api/v1/query" --data-urlencode "query=$1") || return 1
    case "$answer" in *'"status":"success"'*) ;; *) return 1 ;; esac
    case "$answer" in *"\"instance\":\"127.0.0.1:$a1\""*) ;; *) return 1 ;; esac
    case "$answer" in *"\"instance\":\"127.0.0.1:$a2\""*) ;; *) return 1 ;; esac
}

status=0
for q in 'up{job="quark"} == 1' 'quark_node_ready == 1' 'quark_shards == 2' \
    'quark_net_frames_sent_total{shard="0"}' 'quark_log_recovery_seconds{shard="1"}' \
    'quark_ask_latency_seconds_bucket{kind="remote",le="+Inf"}' \
    'quark_messages_total{kind="local",call="ask"}'; do
    if wait_for "both_nodes '$q'" 20; then
        echo "ok    $q: a series from each node"
    else
        echo "FAIL  $q: not from both nodes; last answer:" >&2
        curl -s -G "http://127.0.0.1:$pp/api/v1/query" --data-urlencode "query=$q" >&2 || true
        echo >&2
        status=1
    fi
done
series=$(curl -sf -G "http://127.0.0.1:$pp/api/v1/label/__name__/values" | grep -o '"quark_[a-z_]*"' | wc -l)
echo "== prometheus holds $series quark_* metric names"
exit "$status"
