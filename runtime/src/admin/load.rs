//! `/quark/load`: the node's load by actor type, its busiest actors, its communication graph
//! (between actor types, shards and nodes), the round-trip time to its peers and the trace
//! exporter's counters, as JSON for the dashboard; and the `/metrics` families of the same
//! figures. Read from the shards' stats snapshots at request time (see
//! `quark_shard::LoadSnapshot` for what is exact and what is sampled).

use std::collections::BTreeMap;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use quark_shard::{ShardStatsSnapshot, TurnDurations, ASK_LATENCY_BUCKETS};
use serde::{Deserialize, Serialize};

use super::Shared;

/// The JSON document `/quark/load` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// Seconds since the admin endpoint started, when the figures were read (a client turns
    /// two polls' counters into rates).
    pub uptime_seconds: f64,
    /// Why the figures are missing (a shard did not answer within a second; the node starts
    /// or drains); `None` when they are there.
    pub error: Option<String>,
    /// One turn in this many (of each type, on each shard) is sampled.
    pub sample_every: u64,
    /// Per actor type, over the node's shards.
    pub types: Vec<TypeReport>,
    /// The node's busiest actors over the last 10 to 20 s, most messages first (at most 20).
    pub top_actors: Vec<TopActorReport>,
    /// The node's largest actors by deep size (types with an `ActorType::memory_size` hook
    /// only), measured at their sampled turns in the last 10 to 20 s, largest first (at most
    /// 20).
    pub top_actors_by_memory: Vec<TopMemoryReport>,
    /// Messages between actor types (estimated from sampled turns), most first.
    pub edges: Vec<EdgeReport>,
    /// Estimated messages left out of `edges` because a shard's graph reached its bound.
    pub edges_dropped: u64,
    /// Requests sent through the rings: `shard_matrix[from][to]` (exact), since start.
    pub shard_matrix: Vec<Vec<u64>>,
    /// Requests sent to each other node (exact, all shards), since start.
    pub to_nodes: Vec<NodeTraffic>,
    /// Round-trip time of each shard's connection to each peer, now.
    pub peer_rtt: Vec<PeerRttReport>,
    /// The OTLP trace exporter's counters (`None`: no exporter).
    pub otlp: Option<OtlpReport>,
    /// The node's memory: RSS, limit, pressure, growth, levels per shard, the `[memory]`
    /// monitor's moves (docs/MEMORY.md); `None` while the figures are missing.
    pub memory: Option<super::MemoryLoad>,
    /// The locality repartitioner's counters and its last round's heaviest actor pairs
    /// (docs/LOCALITY.md); `None` when `[locality]` is not enabled.
    pub locality: Option<super::LocalityLoad>,
}

/// One actor type in [`LoadReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TypeReport {
    /// The type name.
    pub actor_type: String,
    /// Turns run since start (exact).
    pub handled: u64,
    /// Turns timed (sampled) since start.
    pub sampled: u64,
    /// Median duration of the sampled turns, µs (the upper bound of its power-of-two
    /// bucket); `None` before the first sample.
    pub p50_us: Option<u64>,
    /// 99th percentile, µs, as `p50_us`.
    pub p99_us: Option<u64>,
    /// Mean duration of the sampled turns, µs.
    pub mean_us: Option<f64>,
}

/// One of the busiest actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopActorReport {
    /// `type/key`.
    pub actor: String,
    /// The shard that runs it.
    pub shard: u16,
    /// Estimated messages handled in the window.
    pub messages_est: u64,
    /// `messages_est` over the window's length.
    pub per_second_est: f64,
}

/// One of the largest actors (see [`LoadReport::top_actors_by_memory`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopMemoryReport {
    /// `type/key`.
    pub actor: String,
    /// The shard that runs it.
    pub shard: u16,
    /// Its state's deep size (the type's `memory_size` hook) at its last sampled turn, bytes.
    pub bytes: u64,
    /// How long ago that turn ended, ms.
    pub age_ms: u64,
}

/// An edge of the communication graph between actor types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EdgeReport {
    /// The sender's type.
    pub caller: String,
    /// The receiver's type.
    pub callee: String,
    /// Estimated messages since start.
    pub messages_est: u64,
}

/// Requests to one other node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeTraffic {
    /// The peer node.
    pub node: u64,
    /// Requests (asks and tells) sent to it since start.
    pub requests: u64,
}

/// The round-trip time of one shard's connection to a peer (the kernel's `TCP_INFO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerRttReport {
    /// The peer node.
    pub node: u64,
    /// The shard whose connection it is.
    pub shard: u16,
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// Its mean deviation, µs.
    pub rttvar_us: u32,
}

/// The OTLP exporter's counters (see `quark::otlp::OtlpStats`, `otlp` feature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OtlpReport {
    /// Spans queued for export.
    pub spans_queued: u64,
    /// Spans dropped because the queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans of failed requests.
    pub spans_failed: u64,
}

/// Most actors in [`LoadReport::top_actors`].
pub const TOP_ACTORS_NODE: usize = 20;

/// The upper bound, µs, of the bucket holding quantile `q` of `h` (`None`: no sample).
pub fn quantile_us(h: &TurnDurations, q: f64) -> Option<u64> {
    let count: u64 = h.buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = ((q * count as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(1u64 << i.min(ASK_LATENCY_BUCKETS - 1));
        }
    }
    Some(1u64 << (ASK_LATENCY_BUCKETS - 1))
}

/// The report for `snapshots` (`Err`: why there are none).
pub(crate) fn report(
    snapshots: Result<&[ShardStatsSnapshot], String>,
    otlp: Option<OtlpReport>,
    uptime_seconds: f64,
) -> LoadReport {
    let mut r = LoadReport {
        uptime_seconds,
        error: None,
        sample_every: quark_shard::TURN_SAMPLE_EVERY,
        types: Vec::new(),
        top_actors: Vec::new(),
        top_actors_by_memory: Vec::new(),
        edges: Vec::new(),
        edges_dropped: 0,
        shard_matrix: Vec::new(),
        to_nodes: Vec::new(),
        peer_rtt: Vec::new(),
        otlp,
        memory: None,
        locality: None,
    };
    let live = match snapshots {
        Ok(l) => l,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let mut types: BTreeMap<&str, (u64, TurnDurations)> = BTreeMap::new();
    let mut edges: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut nodes: BTreeMap<u64, u64> = BTreeMap::new();
    for s in live {
        let l = &s.load;
        for t in &l.types {
            let e = types.entry(t.type_name).or_default();
            e.0 += t.handled;
            for (a, b) in e.1.buckets.iter_mut().zip(t.turn_duration.buckets) {
                *a += b;
            }
            e.1.sum_us += t.turn_duration.sum_us;
        }
        let secs = (l.top_window_ms as f64 / 1000.0).max(1e-3);
        r.top_actors
            .extend(l.top_actors.iter().map(|a| TopActorReport {
                actor: a.actor.to_string(),
                shard: s.shard,
                messages_est: a.messages_est,
                per_second_est: a.messages_est as f64 / secs,
            }));
        r.top_actors_by_memory
            .extend(l.top_memory.iter().map(|a| TopMemoryReport {
                actor: a.actor.to_string(),
                shard: s.shard,
                bytes: a.bytes as u64,
                age_ms: a.age_ms,
            }));
        for e in &l.edges {
            *edges.entry((e.caller, e.callee)).or_default() += e.messages_est;
        }
        r.edges_dropped += l.edges_dropped;
        r.shard_matrix.push(l.to_shards.clone());
        for (n, c) in &l.to_nodes {
            *nodes.entry(*n).or_default() += c;
        }
        if let Some(net) = &s.net {
            r.peer_rtt
                .extend(net.peer_rtt.iter().map(|p| PeerRttReport {
                    node: p.node,
                    shard: s.shard,
                    rtt_us: p.rtt_us,
                    rttvar_us: p.rttvar_us,
                }));
        }
    }
    r.types = types
        .into_iter()
        .map(|(name, (handled, h))| {
            let sampled: u64 = h.buckets.iter().sum();
            TypeReport {
                actor_type: name.to_owned(),
                handled,
                sampled,
                p50_us: quantile_us(&h, 0.5),
                p99_us: quantile_us(&h, 0.99),
                mean_us: (sampled > 0).then(|| h.sum_us as f64 / sampled as f64),
            }
        })
        .collect();
    r.top_actors.sort_by(|a, b| {
        b.messages_est
            .cmp(&a.messages_est)
            .then(a.actor.cmp(&b.actor))
    });
    r.top_actors.truncate(TOP_ACTORS_NODE);
    r.top_actors_by_memory
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.actor.cmp(&b.actor)));
    r.top_actors_by_memory.truncate(TOP_ACTORS_NODE);
    r.edges = edges
        .into_iter()
        .map(|((caller, callee), messages_est)| EdgeReport {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            messages_est,
        })
        .collect();
    r.edges.sort_by_key(|e| std::cmp::Reverse(e.messages_est));
    r.to_nodes = nodes
        .into_iter()
        .map(|(node, requests)| NodeTraffic { node, requests })
        .collect();
    r
}

/// `GET /quark/load`.
pub(crate) fn serve(shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    let snapshots = match shared.stats() {
        Some(Ok(s)) => Ok(s),
        Some(Err(e)) => Err(quark_shard::ErrorChain(&e).to_string()),
        // Starting or stopped: no figures, and nothing wrong (as `/quark/shards`).
        None => Ok(Vec::new()),
    };
    let otlp = otlp_report(shared);
    let uptime = shared.started.elapsed().as_secs_f64();
    let mut r = report(snapshots.as_deref().map_err(Clone::clone), otlp, uptime);
    if let (Some(m), Ok(live)) = (shared.memory.get(), &snapshots) {
        if !live.is_empty() {
            r.memory = Some(super::MemoryLoad::of(&m.report(live)));
        }
    }
    r.locality = shared
        .locality
        .get()
        .map(|read| super::LocalityLoad::of(&read()));
    match serde_json::to_vec(&r) {
        Ok(body) => (200, "application/json", body),
        Err(_) => (
            500,
            "text/plain",
            b"cannot encode the load report\n".to_vec(),
        ),
    }
}

/// The metrics of this module: `(name, type, help)`; documented in `docs/OPERATIONS.md`.
pub const LOAD_METRICS: &[(&str, MetricType, &str)] = &[
    ("quark_messages_handled_total", MetricType::COUNTER, "Turns run (messages and timer ticks handled), by shard and actor type. Exact. Unit: messages."),
    ("quark_turn_duration_seconds", MetricType::HISTOGRAM, "Duration of sampled turns (one in 64 of each type and shard), from the message's hand-over to the handler's return, awaits included, by shard and actor type. Unit: seconds."),
    ("quark_top_actor_messages", MetricType::GAUGE, "Estimated messages handled in the last 10 to 20 s by each of the shard's busiest actors (at most 10 per shard; from sampled turns). Unit: messages."),
    ("quark_top_actor_memory_bytes", MetricType::GAUGE, "Deep size of each of the shard's largest actors (at most 10 per shard; types with an ActorType::memory_size hook only), measured at the end of its last sampled turn in the last 10 to 20 s. Unit: bytes."),
    ("quark_call_graph_messages_total", MetricType::COUNTER, "Estimated messages sent by actors of caller_type to actors of callee_type (from sampled turns), by shard. Unit: messages."),
    ("quark_shard_requests_sent_total", MetricType::COUNTER, "Requests (asks and tells) sent through the rings to another shard of the node, by sending shard and to_shard. Exact. Unit: requests."),
    ("quark_node_requests_sent_total", MetricType::COUNTER, "Requests sent to another node, by sending shard and to_node. Exact. Unit: requests."),
    ("quark_net_rtt_seconds", MetricType::GAUGE, "Smoothed round-trip time of the shard's connection to a peer (the kernel's TCP_INFO estimate), by shard and peer. Unit: seconds."),
    ("quark_net_rtt_deviation_seconds", MetricType::GAUGE, "Mean deviation of that round-trip time, by shard and peer. Unit: seconds."),
    ("quark_otlp_spans_queued_total", MetricType::COUNTER, "Spans taken into the OTLP exporter's queue. Unit: spans."),
    ("quark_otlp_spans_dropped_total", MetricType::COUNTER, "Spans dropped because the OTLP exporter's queue was full. Unit: spans."),
    ("quark_otlp_spans_exported_total", MetricType::COUNTER, "Spans the OTLP collector accepted. Unit: spans."),
    ("quark_otlp_spans_failed_total", MetricType::COUNTER, "Spans of OTLP requests that failed (no connection, an error status, a timeout). Unit: spans."),
];

pub(super) fn label(name: &str, value: impl Into<String>) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.into());
    l
}

fn family(name: &str, metrics: Vec<Metric>) -> Option<MetricFamily> {
    family_of(LOAD_METRICS, name, metrics)
}

/// The family `name` of `table` (its type and help) with `metrics`; `None` without metrics
/// (an empty family is left out of the exposition).
pub(super) fn family_of(
    table: &[(&str, MetricType, &str)],
    name: &str,
    metrics: Vec<Metric>,
) -> Option<MetricFamily> {
    if metrics.is_empty() {
        return None;
    }
    let (_, ty, help) = table
        .iter()
        .find(|m| m.0 == name)
        .expect("every exported metric is in its module's table");
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help((*help).to_owned());
    f.set_field_type(*ty);
    f.set_metric(metrics);
    Some(f)
}

pub(super) fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

pub(super) fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// The load families for `/metrics` (counters come from the shards' own monotonic counters).
pub(crate) fn families(live: &[ShardStatsSnapshot]) -> Vec<MetricFamily> {
    let (mut handled, mut durations, mut top, mut graph) = (vec![], vec![], vec![], vec![]);
    let mut top_memory = vec![];
    let (mut to_shard, mut to_node, mut rtt, mut rttvar) = (vec![], vec![], vec![], vec![]);
    for s in live {
        let shard = s.shard.to_string();
        let l = &s.load;
        for t in &l.types {
            let labels = || vec![label("actor_type", t.type_name), label("shard", &*shard)];
            handled.push(counter(labels(), t.handled));
            let mut cumulative = 0;
            let buckets = t.turn_duration.buckets[..ASK_LATENCY_BUCKETS - 1]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound((1u64 << i) as f64 / 1e6);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(t.turn_duration.buckets.iter().sum());
            h.set_sample_sum(t.turn_duration.sum_us as f64 / 1e6);
            let mut m = Metric::from_label(labels());
            m.set_histogram(h);
            durations.push(m);
        }
        for a in &l.top_actors {
            top.push(gauge(
                vec![label("actor", a.actor.to_string()), label("shard", &*shard)],
                a.messages_est as f64,
            ));
        }
        for a in &l.top_memory {
            top_memory.push(gauge(
                vec![label("actor", a.actor.to_string()), label("shard", &*shard)],
                a.bytes as f64,
            ));
        }
        for e in &l.edges {
            graph.push(counter(
                vec![
                    label("callee_type", e.callee),
                    label("caller_type", e.caller),
                    label("shard", &*shard),
                ],
                e.messages_est,
            ));
        }
        for (to, n) in l.to_shards.iter().enumerate() {
            if to != usize::from(s.shard) {
                to_shard.push(counter(
                    vec![label("shard", &*shard), label("to_shard", to.to_string())],
                    *n,
                ));
            }
        }
        for (node, n) in &l.to_nodes {
            to_node.push(counter(
                vec![label("shard", &*shard), label("to_node", node.to_string())],
                *n,
            ));
        }
        for p in s.net.iter().flat_map(|n| &n.peer_rtt) {
            let labels = || vec![label("peer", p.node.to_string()), label("shard", &*shard)];
            rtt.push(gauge(labels(), f64::from(p.rtt_us) / 1e6));
            rttvar.push(gauge(labels(), f64::from(p.rttvar_us) / 1e6));
        }
    }
    [
        ("quark_messages_handled_total", handled),
        ("quark_turn_duration_seconds", durations),
        ("quark_top_actor_messages", top),
        ("quark_top_actor_memory_bytes", top_memory),
        ("quark_call_graph_messages_total", graph),
        ("quark_shard_requests_sent_total", to_shard),
        ("quark_node_requests_sent_total", to_node),
        ("quark_net_rtt_seconds", rtt),
        ("quark_net_rtt_deviation_seconds", rttvar),
    ]
    .into_iter()
    .filter_map(|(name, m)| family(name, m))
    .collect()
}

/// The OTLP exporter's counters, if the node started one.
#[cfg(feature = "otlp")]
pub(crate) fn otlp_report(shared: &Shared) -> Option<OtlpReport> {
    let s = shared.otlp.get()?.get();
    Some(OtlpReport {
        spans_queued: s.spans_queued,
        spans_dropped_queue_full: s.spans_dropped_queue_full,
        spans_exported: s.spans_exported,
        spans_failed: s.spans_failed,
    })
}

/// Without the `otlp` feature there is never an exporter.
#[cfg(not(feature = "otlp"))]
pub(crate) fn otlp_report(_: &Shared) -> Option<OtlpReport> {
    None
}

/// The OTLP exporter's families (exported whatever the shards' state).
pub(crate) fn otlp_families(o: OtlpReport) -> Vec<MetricFamily> {
    [
        ("quark_otlp_spans_queued_total", o.spans_queued),
        ("quark_otlp_spans_dropped_total", o.spans_dropped_queue_full),
        ("quark_otlp_spans_exported_total", o.spans_exported),
        ("quark_otlp_spans_failed_total", o.spans_failed),
    ]
    .into_iter()
    .filter_map(|(name, v)| family(name, vec![counter(vec![], v)]))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = TurnDurations::default();
        assert_eq!(quantile_us(&h, 0.5), None);
        h.buckets[3] = 50; // <= 8 µs
        h.buckets[10] = 49; // <= 1024 µs
        h.buckets[20] = 1;
        assert_eq!(quantile_us(&h, 0.5), Some(8));
        assert_eq!(quantile_us(&h, 0.51), Some(1024));
        assert_eq!(quantile_us(&h, 0.99), Some(1024));
        assert_eq!(quantile_us(&h, 1.0), Some(1 << 20));
    }
}
