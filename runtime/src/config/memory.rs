//! The `[memory]` section: memory-aware rebalancing (docs/MEMORY.md, docs/CONFIG.md).

use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Int};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemory {
    enabled: Option<bool>,
    limit_bytes: Option<Int>,
    shard_limit_bytes: Option<Int>,
    warning: Option<f64>,
    critical: Option<f64>,
    reject: Option<f64>,
    sample_interval_ms: Option<Int>,
    strategy: Option<String>,
    moves_per_sec_max: Option<Int>,
    move_bytes_per_sec_max: Option<Int>,
    cooldown_ms: Option<Int>,
    leak_samples: Option<Int>,
    leak_growth_bytes: Option<Int>,
    move_between_nodes: Option<bool>,
    growth_lead_ms: Option<Int>,
    deactivate_idle_durable: Option<bool>,
    durable_idle_ms: Option<Int>,
}

/// How the rebalancer picks the activations it moves off a shard over its critical threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VictimStrategy {
    /// The largest movable activations first (fewest moves for the bytes freed).
    #[default]
    Largest,
    /// The least recently used (longest idle) movable activations first (moves disturb the
    /// busy actors least).
    Lru,
    /// The most bytes freed per unit of locality lost: each activation's figure divided by
    /// 1 + the sampled messages it exchanges with actors on its shard that it would no longer
    /// exchange locally at its destination (with actors on the destination shard counted as
    /// regained); an actor that talks mostly to the destination goes first, one that talks
    /// to its own shard last. It moves to the shard with room it talks to most. Uses the
    /// edges of locality repartitioning (`[locality]`, docs/LOCALITY.md); without them every
    /// actor's locality cost is 0 and it orders like `largest`.
    Locality,
}

/// The `[memory]` settings (docs/MEMORY.md). Thresholds are fractions of a limit: of
/// `limit_bytes` for the node's resident memory, of `shard_limit_bytes` for each shard's
/// memory (`MemorySnapshot::shard_bytes`, measured by `quark::CountingAlloc`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// The monitor runs (default true when the section is present).
    pub enabled: bool,
    /// The node's limit; `None`: the cgroup's `memory.max` when there is one, else no node
    /// thresholds.
    pub limit_bytes: Option<u64>,
    /// Each shard's limit; `None`: the node's limit divided by the shard count.
    pub shard_limit_bytes: Option<u64>,
    /// Warning threshold (a log line and the level in the report), default 0.80.
    pub warning: f64,
    /// Critical threshold (rebalance until under `warning`), default 0.90.
    pub critical: f64,
    /// Reject threshold (new activations on the shard, or the node, are refused with
    /// `CallError::Overloaded { cause: Memory }` until back under `critical`), default
    /// 0.97.
    pub reject: f64,
    /// How often the monitor samples, default 200 ms.
    pub sample_interval: Duration,
    /// Victims (default `largest`).
    pub strategy: VictimStrategy,
    /// Moves per second at most, default 100.
    pub moves_per_sec_max: u32,
    /// Bytes of state moved per second at most (by the activations' figures), default 1 GiB.
    pub move_bytes_per_sec_max: u64,
    /// An actor moved by the rebalancer is not moved again for this long, default 30 s.
    pub cooldown: Duration,
    /// Leak detection: consecutive growing samples (0 turns it off), default 10.
    pub leak_samples: u32,
    /// Leak detection: the growth over them at least, default 1 MiB.
    pub leak_growth_bytes: u64,
    /// Moves to other nodes of the cluster (`migratable` types) when the node's shards have
    /// no room or the node's RSS is over `critical`, default true.
    pub move_between_nodes: bool,
    /// The node acts on its RSS as it will be this far ahead at its current growth rate: when
    /// RSS + growth × lead reaches `critical`, it moves activations to other nodes as if it
    /// were there (a fast-growing node then starts before it crosses, not a sample after).
    /// Zero: on the RSS as measured. Default 1 s.
    pub growth_lead: Duration,
    /// Under pressure, idle *durable* activations (types built by a loader,
    /// `ActorType::loaded`: their state is rebuilt from the log) are deactivated instead of
    /// moved (`Engine::handle().deactivate`), before any move, default true.
    pub deactivate_idle_durable: bool,
    /// How long a durable activation has had no message before it counts as idle for
    /// `deactivate_idle_durable`, default 1 s.
    pub durable_idle: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            enabled: true,
            limit_bytes: None,
            shard_limit_bytes: None,
            warning: 0.80,
            critical: 0.90,
            reject: 0.97,
            sample_interval: Duration::from_millis(200),
            strategy: VictimStrategy::Largest,
            moves_per_sec_max: 100,
            move_bytes_per_sec_max: 1 << 30,
            cooldown: Duration::from_secs(30),
            leak_samples: 10,
            leak_growth_bytes: 1 << 20,
            move_between_nodes: true,
            growth_lead: Duration::from_millis(1000),
            deactivate_idle_durable: true,
            durable_idle: Duration::from_millis(1000),
        }
    }
}

pub(super) fn memory_section(r: RawMemory, check: &Check<'_>) -> Result<MemoryConfig, ConfigError> {
    let mut c = MemoryConfig::default();
    if let Some(v) = r.enabled {
        c.enabled = v;
    }
    const BYTES: &str = "1 MiB to 2^50 bytes";
    if let Some(v) = r.limit_bytes {
        c.limit_bytes = Some(check.int("memory.limit_bytes", v, 1 << 20, 1 << 50, BYTES)?);
    }
    if let Some(v) = r.shard_limit_bytes {
        c.shard_limit_bytes =
            Some(check.int("memory.shard_limit_bytes", v, 1 << 20, 1 << 50, BYTES)?);
    }
    let frac = |key: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if v > 0.0 && v <= 1.0 => Ok(v),
            Some(v) => Err(check.invalid(key, v, "a fraction of the limit, above 0.0 up to 1.0")),
        }
    };
    c.warning = frac("memory.warning", r.warning, c.warning)?;
    c.critical = frac("memory.critical", r.critical, c.critical)?;
    c.reject = frac("memory.reject", r.reject, c.reject)?;
    if !(c.warning < c.critical && c.critical < c.reject) {
        return Err(check.invalid(
            "memory.critical",
            c.critical,
            "thresholds must rise: warning < critical < reject",
        ));
    }
    if let Some(v) = r.sample_interval_ms {
        c.sample_interval = Duration::from_millis(check.int(
            "memory.sample_interval_ms",
            v,
            10,
            60_000,
            "10 ms to 60 s",
        )?);
    }
    if let Some(s) = r.strategy {
        c.strategy = match s.as_str() {
            "largest" => VictimStrategy::Largest,
            "lru" => VictimStrategy::Lru,
            "locality" => VictimStrategy::Locality,
            _ => {
                return Err(check.invalid(
                    "memory.strategy",
                    format!("{s:?}"),
                    "\"largest\", \"lru\" or \"locality\"",
                ))
            }
        };
    }
    if let Some(v) = r.moves_per_sec_max {
        c.moves_per_sec_max =
            check.int("memory.moves_per_sec_max", v, 1, 100_000, "1 to 100000")? as u32;
    }
    if let Some(v) = r.move_bytes_per_sec_max {
        c.move_bytes_per_sec_max = check.int(
            "memory.move_bytes_per_sec_max",
            v,
            1 << 10,
            1 << 50,
            "1 KiB to 2^50 bytes",
        )?;
    }
    if let Some(v) = r.cooldown_ms {
        c.cooldown = Duration::from_millis(check.int(
            "memory.cooldown_ms",
            v,
            0,
            86_400_000,
            "0 to 1 day",
        )?);
    }
    if let Some(v) = r.leak_samples {
        c.leak_samples = check.int("memory.leak_samples", v, 0, 10_000, "0 (off) to 10000")? as u32;
    }
    if let Some(v) = r.move_between_nodes {
        c.move_between_nodes = v;
    }
    if let Some(v) = r.growth_lead_ms {
        c.growth_lead = Duration::from_millis(check.int(
            "memory.growth_lead_ms",
            v,
            0,
            60_000,
            "0 (off) to 60 s",
        )?);
    }
    if let Some(v) = r.deactivate_idle_durable {
        c.deactivate_idle_durable = v;
    }
    if let Some(v) = r.durable_idle_ms {
        c.durable_idle = Duration::from_millis(check.int(
            "memory.durable_idle_ms",
            v,
            0,
            86_400_000,
            "0 to 1 day",
        )?);
    }
    if let Some(v) = r.leak_growth_bytes {
        c.leak_growth_bytes = check.int(
            "memory.leak_growth_bytes",
            v,
            1,
            1 << 50,
            "1 byte to 2^50 bytes",
        )?;
    }
    Ok(c)
}
