//! Memory-aware rebalancing (issue 18, docs/MEMORY.md): the node's memory figures, the
//! thresholds of `[memory]`, and the monitor that moves activations off a shard before it
//! runs out.
//!
//! The counting itself lives in the engine (`quark_shard::memory`): install
//! [`CountingAlloc`] as the global allocator to get per-shard and per-activation figures.

mod cooldown;
mod monitor;
mod sys;

use std::time::Duration;

pub use cooldown::MoveCooldown;
pub(crate) use monitor::{Monitor, MonitorState};
pub use quark_shard::memory::{
    counting, set_leak_policy, ActorMemory, CountingAlloc, LeakReport, MemorySnapshot, TypeMemory,
    CANDIDATES, TOP_MEMORY_PER_SHARD,
};
pub use sys::{cgroup_limit_bytes, resident_bytes, LimitSource};

use crate::config::MemoryConfig;
use quark_shard::{ActorId, ShardId, ShardStatsSnapshot};

/// Where a figure stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Level {
    /// Under the warning threshold, or no limit known.
    #[default]
    Normal,
    /// At or over `warning`: logged.
    Warning,
    /// At or over `critical`: the monitor moves activations off the shard.
    Critical,
    /// At or over `reject`: new activations there are refused.
    Reject,
}

impl Level {
    /// The level of `bytes` against `limit` under `c`'s thresholds.
    pub fn of(bytes: u64, limit: Option<u64>, c: &MemoryConfig) -> Level {
        let Some(limit) = limit.filter(|l| *l > 0) else {
            return Level::Normal;
        };
        let p = bytes as f64 / limit as f64;
        if p >= c.reject {
            Level::Reject
        } else if p >= c.critical {
            Level::Critical
        } else if p >= c.warning {
            Level::Warning
        } else {
            Level::Normal
        }
    }

    /// Its name as the report and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Reject => "reject",
        }
    }
}

/// The node's memory ([`MemoryReport::node`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMemory {
    /// Resident set size of the process, bytes (`None` where it cannot be read).
    pub rss_bytes: Option<u64>,
    /// The limit: `[memory] limit_bytes`, else the cgroup's `memory.max`.
    pub limit_bytes: Option<u64>,
    /// Where `limit_bytes` came from.
    pub limit_source: LimitSource,
    /// `rss_bytes / limit_bytes`, 0..1 (above 1 past the limit); `None` without a limit.
    pub pressure: Option<f64>,
    /// How fast the RSS grows, bytes per second (smoothed over the monitor's samples; 0
    /// before its second sample, or without a monitor).
    pub growth_bytes_per_sec: f64,
    /// The node's level (RSS against the limit).
    pub level: Level,
    /// Bytes counted by `CountingAlloc` and not freed, over all shards (their `live_bytes`).
    pub counted_live_bytes: u64,
}

/// One shard's memory and level ([`MemoryReport::shards`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMemory {
    /// The shard.
    pub shard: ShardId,
    /// Its limit (`shard_limit_bytes`, else the node's limit / shards).
    pub limit_bytes: Option<u64>,
    /// `memory.shard_bytes` against the limit.
    pub level: Level,
    /// New activations are refused on it now.
    pub refusing: bool,
    /// The engine's figures.
    pub memory: MemorySnapshot,
}

/// A move the monitor made ([`MemoryReport::recent_moves`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceMove {
    /// The actor.
    pub actor: ActorId,
    /// From shard.
    pub from: ShardId,
    /// To shard (of this node; meaningless when `to_node` is set).
    pub to: ShardId,
    /// To another node (`Node::migrate_to_node`), when it left the node.
    pub to_node: Option<quark_placement::NodeId>,
    /// Its figure when it was picked.
    pub bytes: u64,
    /// When, since the monitor started.
    pub at: Duration,
    /// Not a move: an idle durable activation was deactivated (`to == from`).
    pub deactivated: bool,
}

/// The node's memory report ([`crate::Node::memory`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// A `CountingAlloc` is the global allocator (without it, the shard and actor figures
    /// are 0 and only the RSS is known).
    pub counting: bool,
    /// The node.
    pub node: NodeMemory,
    /// Per shard, index = shard id.
    pub shards: Vec<ShardMemory>,
    /// The node's largest activations, largest first (at most [`TOP_MEMORY_PER_SHARD`]),
    /// with their shard.
    pub top: Vec<(ShardId, ActorMemory)>,
    /// Per actor type over the node.
    pub per_type: Vec<TypeMemory>,
    /// Activations reported by leak detection, with their shard.
    pub leaks: Vec<(ShardId, LeakReport)>,
    /// Moves made by the monitor since start (to shards of this node and to other nodes).
    pub moves: u64,
    /// Of those, moves to other nodes.
    pub node_moves: u64,
    /// Idle durable activations the monitor deactivated instead of moving them
    /// (`deactivate_idle_durable`; not counted in `moves`).
    pub deactivations: u64,
    /// Moves it tried that failed (the actor stayed).
    pub move_failures: u64,
    /// Bytes moved (by the moved activations' figures).
    pub moved_bytes: u64,
    /// The last moves and deactivations (at most 64), oldest first.
    pub recent_moves: Vec<RebalanceMove>,
}

/// The node's limit and where it came from.
pub(crate) fn node_limit(c: Option<&MemoryConfig>) -> (Option<u64>, LimitSource) {
    if let Some(l) = c.and_then(|c| c.limit_bytes) {
        return (Some(l), LimitSource::Config);
    }
    match cgroup_limit_bytes() {
        Some(l) => (Some(l), LimitSource::Cgroup),
        None => (None, LimitSource::None),
    }
}

/// A shard's limit.
pub(crate) fn shard_limit(c: &MemoryConfig, node_limit: Option<u64>, shards: usize) -> Option<u64> {
    c.shard_limit_bytes
        .or_else(|| node_limit.map(|l| l / shards.max(1) as u64))
}

/// Builds the report from the shards' snapshots and what the monitor knows.
pub(crate) fn report(
    config: Option<&MemoryConfig>,
    stats: &[ShardStatsSnapshot],
    monitor: Option<&monitor::MonitorState>,
) -> MemoryReport {
    let defaults = MemoryConfig::default();
    let c = config.unwrap_or(&defaults);
    let (limit, source) = node_limit(config);
    let rss = resident_bytes();
    let pressure = match (rss, limit) {
        (Some(r), Some(l)) if l > 0 => Some(r as f64 / l as f64),
        _ => None,
    };
    let shard_lim = shard_limit(c, limit, stats.len());
    let mut shards = Vec::with_capacity(stats.len());
    let mut top = Vec::new();
    let mut per_type: Vec<TypeMemory> = Vec::new();
    let mut leaks = Vec::new();
    for s in stats {
        let m = &s.load.memory;
        for a in &m.top {
            top.push((s.shard, a.clone()));
        }
        for t in &m.per_type {
            match per_type.iter_mut().find(|p| p.type_name == t.type_name) {
                Some(p) => {
                    p.activations += t.activations;
                    p.bytes += t.bytes;
                }
                None => per_type.push(t.clone()),
            }
        }
        for l in &m.leaks {
            leaks.push((s.shard, l.clone()));
        }
        shards.push(ShardMemory {
            shard: s.shard,
            limit_bytes: shard_lim,
            level: Level::of(m.shard_bytes, shard_lim, c),
            refusing: monitor
                .is_some_and(|st| st.refusing.get(usize::from(s.shard)) == Some(&true)),
            memory: m.clone(),
        });
    }
    top.sort_by_key(|a| std::cmp::Reverse(a.1.bytes));
    top.truncate(TOP_MEMORY_PER_SHARD);
    MemoryReport {
        counting: counting(),
        node: NodeMemory {
            rss_bytes: rss,
            limit_bytes: limit,
            limit_source: source,
            pressure,
            growth_bytes_per_sec: monitor.map_or(0.0, |m| m.growth_bytes_per_sec),
            level: Level::of(rss.unwrap_or(0), limit, c),
            counted_live_bytes: stats.iter().map(|s| s.load.memory.live_bytes).sum(),
        },
        shards,
        top,
        per_type,
        leaks,
        moves: monitor.map_or(0, |m| m.moves),
        node_moves: monitor.map_or(0, |m| m.node_moves),
        deactivations: monitor.map_or(0, |m| m.deactivations),
        move_failures: monitor.map_or(0, |m| m.move_failures),
        moved_bytes: monitor.map_or(0, |m| m.moved_bytes),
        recent_moves: monitor
            .map(|m| m.recent.iter().cloned().collect())
            .unwrap_or_default(),
    }
}
