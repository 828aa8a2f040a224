//! The node's memory on the admin endpoint (docs/MEMORY.md, docs/OPERATIONS.md): the `memory`
//! part of `/quark/load` (for the dashboard) and the `/metrics` families of the node's limit,
//! pressure, growth and levels and of the `[memory]` monitor's moves. Computed at request time
//! by [`crate::memory::report`] from the same shard snapshots as the rest of the scrape, so it
//! agrees with [`crate::Node::memory`].

use std::sync::{Arc, Mutex};

use prometheus::proto::{Metric, MetricFamily, MetricType};
use quark_shard::ShardStatsSnapshot;
use serde::{Deserialize, Serialize};

use super::load::{counter, gauge, label};
use crate::config::MemoryConfig;
use crate::memory::{Level, LimitSource, MemoryReport};

/// What the admin endpoint needs to compute the node's memory report: the `[memory]` table
/// (`None`: not configured; the cgroup limit is still read) and the monitor's state (`None`:
/// no monitor runs, so no growth rate, levels of refusal or moves).
pub(crate) struct MemorySource {
    pub(crate) config: Option<MemoryConfig>,
    pub(crate) monitor: Option<Arc<Mutex<crate::memory::MonitorState>>>,
}

impl MemorySource {
    /// The node's memory report from `snapshots` (what [`crate::Node::memory`] returns).
    pub(crate) fn report(&self, snapshots: &[ShardStatsSnapshot]) -> MemoryReport {
        let state = self
            .monitor
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone());
        crate::memory::report(self.config.as_ref(), snapshots, state.as_ref())
    }
}

/// The node's memory in [`super::LoadReport::memory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemoryLoad {
    /// A `quark::CountingAlloc` is the global allocator (without it the shard figures are 0).
    pub counting: bool,
    /// Resident set size of the process, bytes.
    pub rss_bytes: Option<u64>,
    /// The node's limit, bytes (`[memory] limit_bytes`, else the cgroup's `memory.max`).
    pub limit_bytes: Option<u64>,
    /// Where the limit came from: `config`, `cgroup` or `none`.
    pub limit_source: String,
    /// RSS over the limit (0..1, above 1 past it); `None` without a limit.
    pub pressure: Option<f64>,
    /// How fast the RSS grows, bytes per second (0 without the `[memory]` monitor).
    pub growth_bytes_per_sec: f64,
    /// The node's level: `normal`, `warning`, `critical` or `reject`.
    pub level: String,
    /// Per shard.
    pub shards: Vec<ShardMemoryLoad>,
    /// Moves the monitor made since start (to this node's shards and to other nodes).
    pub moves: u64,
    /// Of those, to other nodes.
    pub node_moves: u64,
    /// Activations reported by leak detection now.
    pub leaks: usize,
}

/// One shard in [`MemoryLoad::shards`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardMemoryLoad {
    /// The shard.
    pub shard: u16,
    /// Its figure as the thresholds see it (activations plus allocations outside turns).
    pub bytes: u64,
    /// Its limit, bytes.
    pub limit_bytes: Option<u64>,
    /// Its level (as [`MemoryLoad::level`]).
    pub level: String,
    /// New activations are refused on it now.
    pub refusing: bool,
}

fn source_name(s: LimitSource) -> &'static str {
    match s {
        LimitSource::Config => "config",
        LimitSource::Cgroup => "cgroup",
        LimitSource::None => "none",
    }
}

/// A level as a number for `/metrics`: 0 normal, 1 warning, 2 critical, 3 reject.
pub(crate) fn level_number(l: Level) -> f64 {
    match l {
        Level::Normal => 0.0,
        Level::Warning => 1.0,
        Level::Critical => 2.0,
        Level::Reject => 3.0,
    }
}

impl MemoryLoad {
    /// The dashboard's view of `r`.
    pub(crate) fn of(r: &MemoryReport) -> MemoryLoad {
        MemoryLoad {
            counting: r.counting,
            rss_bytes: r.node.rss_bytes,
            limit_bytes: r.node.limit_bytes,
            limit_source: source_name(r.node.limit_source).to_owned(),
            pressure: r.node.pressure,
            growth_bytes_per_sec: r.node.growth_bytes_per_sec,
            level: r.node.level.name().to_owned(),
            shards: r
                .shards
                .iter()
                .map(|s| ShardMemoryLoad {
                    shard: s.shard,
                    bytes: s.memory.shard_bytes,
                    limit_bytes: s.limit_bytes,
                    level: s.level.name().to_owned(),
                    refusing: s.refusing,
                })
                .collect(),
            moves: r.moves,
            node_moves: r.node_moves,
            leaks: r.leaks.len(),
        }
    }
}

/// The metrics of this module: `(name, type, help)`; documented in `docs/OPERATIONS.md`.
pub const MEMORY_METRICS: &[(&str, MetricType, &str)] = &[
    ("quark_node_memory_limit_bytes", MetricType::GAUGE, "The node's memory limit: [memory] limit_bytes, else the cgroup's memory.max (label source = config or cgroup); absent without a limit. Unit: bytes."),
    ("quark_node_memory_pressure_ratio", MetricType::GAUGE, "Resident set size over the node's limit (1 = at the limit); absent without a limit. Unit: ratio."),
    ("quark_node_memory_growth_bytes_per_second", MetricType::GAUGE, "How fast the resident set grows, smoothed over the [memory] monitor's samples (negative when it shrinks); absent without the monitor. Unit: bytes per second."),
    ("quark_node_memory_level", MetricType::GAUGE, "The node's memory level against its limit: 0 normal, 1 warning, 2 critical, 3 reject (0 without a limit). Unit: level."),
    ("quark_shard_memory_level", MetricType::GAUGE, "The shard's memory level against its limit (shard_limit_bytes, else the node's limit over the shards): 0 normal, 1 warning, 2 critical, 3 reject. Unit: level."),
    ("quark_shard_memory_refusing", MetricType::GAUGE, "1 while the [memory] monitor refuses new activations on the shard (its level is reject), else 0; absent without the monitor. Unit: boolean."),
    ("quark_memory_rebalance_moves_total", MetricType::COUNTER, "Activations the [memory] monitor moved since the node started (label to = shard for moves between this node's shards, node for moves to other nodes); absent without the monitor. Unit: activations."),
    ("quark_memory_rebalance_deactivations_total", MetricType::COUNTER, "Idle durable activations the [memory] monitor deactivated instead of moving them since the node started (deactivate_idle_durable); absent without the monitor. Unit: activations."),
];

fn family(name: &str, metrics: Vec<Metric>) -> Option<MetricFamily> {
    super::load::family_of(MEMORY_METRICS, name, metrics)
}

/// The `/metrics` families of `r`; `monitor`: a `[memory]` monitor runs (its growth,
/// refusals and moves are exported only then: without it they would read as a constant 0).
pub(crate) fn families(r: &MemoryReport, monitor: bool) -> Vec<MetricFamily> {
    let n = &r.node;
    let mut out = Vec::new();
    if let Some(limit) = n.limit_bytes {
        out.extend(family(
            "quark_node_memory_limit_bytes",
            vec![gauge(
                vec![label("source", source_name(n.limit_source))],
                limit as f64,
            )],
        ));
    }
    if let Some(p) = n.pressure {
        out.extend(family(
            "quark_node_memory_pressure_ratio",
            vec![gauge(vec![], p)],
        ));
    }
    out.extend(family(
        "quark_node_memory_level",
        vec![gauge(vec![], level_number(n.level))],
    ));
    out.extend(family(
        "quark_shard_memory_level",
        r.shards
            .iter()
            .map(|s| {
                gauge(
                    vec![label("shard", s.shard.to_string())],
                    level_number(s.level),
                )
            })
            .collect(),
    ));
    if monitor {
        out.extend(family(
            "quark_node_memory_growth_bytes_per_second",
            vec![gauge(vec![], n.growth_bytes_per_sec)],
        ));
        out.extend(family(
            "quark_shard_memory_refusing",
            r.shards
                .iter()
                .map(|s| {
                    gauge(
                        vec![label("shard", s.shard.to_string())],
                        f64::from(u8::from(s.refusing)),
                    )
                })
                .collect(),
        ));
        out.extend(family(
            "quark_memory_rebalance_moves_total",
            vec![
                counter(
                    vec![label("to", "shard")],
                    r.moves.saturating_sub(r.node_moves),
                ),
                counter(vec![label("to", "node")], r.node_moves),
            ],
        ));
        out.extend(family(
            "quark_memory_rebalance_deactivations_total",
            vec![counter(vec![], r.deactivations)],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{NodeMemory, ShardMemory};

    fn report(limit: Option<u64>, refusing: bool) -> MemoryReport {
        MemoryReport {
            counting: true,
            node: NodeMemory {
                rss_bytes: Some(600),
                limit_bytes: limit,
                limit_source: if limit.is_some() {
                    LimitSource::Config
                } else {
                    LimitSource::None
                },
                pressure: limit.map(|l| 600.0 / l as f64),
                growth_bytes_per_sec: 12.5,
                level: Level::Warning,
                counted_live_bytes: 0,
            },
            shards: vec![ShardMemory {
                shard: 0,
                limit_bytes: limit,
                level: Level::Reject,
                refusing,
                memory: Default::default(),
            }],
            top: vec![],
            per_type: vec![],
            leaks: vec![],
            deactivations: 4,
            moves: 5,
            node_moves: 2,
            move_failures: 0,
            moved_bytes: 0,
            recent_moves: vec![],
        }
    }

    fn text(f: &[MetricFamily]) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(f, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_limit_pressure_levels_and_moves_are_exported_with_a_monitor() {
        let t = text(&families(&report(Some(1000), true), true));
        for needle in [
            "quark_node_memory_limit_bytes{source=\"config\"} 1000",
            "quark_node_memory_pressure_ratio 0.6",
            "quark_node_memory_level 1",
            "quark_shard_memory_level{shard=\"0\"} 3",
            "quark_node_memory_growth_bytes_per_second 12.5",
            "quark_shard_memory_refusing{shard=\"0\"} 1",
            "quark_memory_rebalance_moves_total{to=\"shard\"} 3",
            "quark_memory_rebalance_moves_total{to=\"node\"} 2",
            "quark_memory_rebalance_deactivations_total 4",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn without_a_limit_or_a_monitor_only_the_levels_are_exported() {
        let t = text(&families(&report(None, false), false));
        assert!(t.contains("quark_node_memory_level 1"), "{t}");
        for absent in [
            "quark_node_memory_limit_bytes",
            "quark_node_memory_pressure_ratio",
            "quark_node_memory_growth_bytes_per_second",
            "quark_shard_memory_refusing",
            "quark_memory_rebalance_moves_total",
            "quark_memory_rebalance_deactivations_total",
        ] {
            assert!(!t.contains(absent), "{absent} exported in\n{t}");
        }
    }

    #[test]
    fn the_dashboard_view_names_levels_and_sources() {
        let m = MemoryLoad::of(&report(Some(1000), true));
        assert_eq!(m.limit_source, "config");
        assert_eq!(m.level, "warning");
        assert_eq!(m.shards[0].level, "reject");
        assert!(m.shards[0].refusing);
        assert_eq!((m.moves, m.node_moves), (5, 2));
    }
}
