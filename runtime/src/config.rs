//! The node's configuration file (`quark.toml`): parsing, validation and defaults.
//!
//! Every key is documented in `docs/CONFIG.md`; `docs/examples/quark.toml` is a commented
//! example. Unknown keys, wrong types and out-of-range values are errors that name the file,
//! the key and (for syntax and type errors) the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quark_shard::{EngineConfig, ShardSpec};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// A node's whole configuration: the engine settings and per-actor-type overrides.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The engine settings (`[node]`).
    pub engine: EngineConfig,
    /// Per actor type settings (`[actors.<type name>]`), by type name.
    pub actors: BTreeMap<String, ActorTypeConfig>,
    /// The node's cluster (`[cluster]`); `None`: a standalone node.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// Settings of one actor type (`[actors.<type name>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorTypeConfig {
    /// Overrides `node.idle_timeout_ms` for this type.
    pub idle_timeout: Option<Duration>,
    /// For a stateless worker type: activations per key and shard.
    pub max_local_workers: Option<usize>,
    /// For a journaled type: snapshot after this many events.
    pub snapshot_every_events: Option<u64>,
    /// For a journaled type: snapshot after this many event bytes.
    pub snapshot_every_bytes: Option<u64>,
    /// For a journaled type: drop events that precede a snapshot older than this.
    pub retention_age: Option<Duration>,
}

impl ActorTypeConfig {
    /// True if a journal-only key is set.
    pub(crate) fn has_journal_keys(&self) -> bool {
        self.snapshot_every_events.is_some()
            || self.snapshot_every_bytes.is_some()
            || self.retention_age.is_some()
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{}:{line}:{column}: {}{detail}", file.display(), key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key at fault, where the parser points at one.
        key: Option<String>,
        /// The parser's explanation (unknown field, expected type, syntax).
        detail: String,
    },
    /// A value is of the right type but out of range.
    #[error("{}: key `{key}` = {value}: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The dotted key.
        key: String,
        /// The value given.
        value: String,
        /// The accepted range.
        reason: &'static str,
    },
    /// The `[cluster]` membership is invalid (names the entry).
    #[error("{}: {source}", file.display())]
    Cluster {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        #[source]
        source: quark_net::MembershipError,
    },
    /// The cluster secret is unusable (too short, not UTF-8 in the environment).
    #[error("{}: {source}", file.display())]
    Secret {
        /// The file.
        file: PathBuf,
        /// What is wrong (never the secret itself).
        #[source]
        source: quark_net::SecretError,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    node: RawNode,
    log: Option<RawLog>,
    #[serde(default)]
    actors: BTreeMap<String, RawActorType>,
    cluster: Option<crate::cluster::RawCluster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    shards: Option<RawShards>,
    pin_threads: Option<bool>,
    idle_spin_us: Option<u64>,
    ring_capacity: Option<u64>,
    cross_shard_inflight_max: Option<u64>,
    external_queue_capacity: Option<u64>,
    external_inflight_max: Option<u64>,
    mailbox_capacity: Option<u64>,
    ask_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    uring_entries: Option<u64>,
    force_legacy_driver: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    data_dir: Option<PathBuf>,
    segment_bytes: Option<u64>,
    segment_bytes_initial: Option<u64>,
    accept_short_segments: Option<bool>,
    fsync: Option<RawFsync>,
    recovery: Option<String>,
    preallocate: Option<String>,
    write_through: Option<bool>,
    recycle_segments_max: Option<u64>,
    pending_bytes_max: Option<u64>,
    compact_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawFsync {
    Word(String),
    Interval { interval_ms: u64 },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActorType {
    idle_timeout_ms: Option<u64>,
    max_local_workers: Option<u64>,
    snapshot_every_events: Option<u64>,
    snapshot_every_bytes: Option<u64>,
    retention_age_ms: Option<u64>,
}

enum RawShards {
    Auto,
    Count(i64),
    Cores(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawShards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawShards;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\", a shard count, or a list of core ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawShards, E> {
                if v == "auto" {
                    Ok(RawShards::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawShards, E> {
                Ok(RawShards::Count(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawShards, A::Error> {
                let mut cores = Vec::new();
                while let Some(c) = seq.next_element::<i64>()? {
                    cores.push(c);
                }
                Ok(RawShards::Cores(cores))
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks `value` against `lo..=hi` for key `key`.
pub(crate) struct Check<'a> {
    pub(crate) file: &'a Path,
}

impl Check<'_> {
    pub(crate) fn range(
        &self,
        key: &str,
        value: u64,
        lo: u64,
        hi: u64,
        reason: &'static str,
    ) -> Result<u64, ConfigError> {
        if value < lo || value > hi {
            return Err(ConfigError::Invalid {
                file: self.file.to_path_buf(),
                key: key.to_owned(),
                value: value.to_string(),
                reason,
            });
        }
        Ok(value)
    }
}

impl NodeConfig {
    /// Reads and validates `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates TOML `text`; `file` names it in errors.
    pub fn from_toml(text: &str, file: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let file = file.as_ref();
        let raw: RawFile = toml::from_str(text).map_err(|e| parse_error(e, text, file))?;
        let check = Check { file };
        let mut engine = EngineConfig::default();
        let n = raw.node;
        if let Some(s) = n.shards {
            engine.shards = match s {
                RawShards::Auto => ShardSpec::Auto,
                RawShards::Count(c) => {
                    let c = u64::try_from(c).unwrap_or(0);
                    ShardSpec::Count(check.range(
                        "node.shards",
                        c,
                        1,
                        256,
                        "a shard count is 1 to 256",
                    )? as usize)
                }
                RawShards::Cores(list) => {
                    if list.is_empty() || list.len() > 256 {
                        return Err(ConfigError::Invalid {
                            file: file.to_path_buf(),
                            key: "node.shards".into(),
                            value: format!("{list:?}"),
                            reason: "a core list has 1 to 256 entries",
                        });
                    }
                    let mut cores = Vec::with_capacity(list.len());
                    for c in list {
                        let c = u64::try_from(c).map_err(|_| ConfigError::Invalid {
                            file: file.to_path_buf(),
                            key: "node.shards".into(),
                            value: c.to_string(),
                            reason: "a core id is a non-negative integer",
                        })?;
                        cores.push(c as usize);
                    }
                    ShardSpec::Cores(cores)
                }
            };
        }
        if let Some(v) = n.pin_threads {
            engine.pin_threads = v;
        }
        if let Some(v) = n.idle_spin_us {
            engine.idle_spin = Duration::from_micros(check.range(
                "node.idle_spin_us",
                v,
                0,
                1_000_000,
                "0 to 1000000 µs",
            )?);
        }
        if let Some(v) = n.ring_capacity {
            engine.ring_capacity =
                check.range("node.ring_capacity", v, 2, 1 << 20, "2 to 1048576 slots")? as usize;
        }
        if let Some(v) = n.cross_shard_inflight_max {
            engine.cross_shard_inflight_max = check.range(
                "node.cross_shard_inflight_max",
                v,
                1,
                1 << 20,
                "1 to 1048576",
            )? as u32;
        }
        if let Some(v) = n.external_queue_capacity {
            engine.external_queue_capacity = check.range(
                "node.external_queue_capacity",
                v,
                1,
                1 << 20,
                "1 to 1048576 slots",
            )? as usize;
        }
        if let Some(v) = n.external_inflight_max {
            engine.external_inflight_max =
                check.range("node.external_inflight_max", v, 1, 1 << 24, "1 to 16777216")? as usize;
        }
        if let Some(v) = n.mailbox_capacity {
            engine.mailbox_capacity =
                check.range("node.mailbox_capacity", v, 1, 1 << 24, "1 to 16777216")? as usize;
        }
        if let Some(v) = n.ask_timeout_ms {
            engine.ask_timeout = Duration::from_millis(check.range(
                "node.ask_timeout_ms",
                v,
                1,
                86_400_000,
                "1 ms to 1 day",
            )?);
        }
        if let Some(v) = n.shutdown_timeout_ms {
            engine.shutdown_timeout = Duration::from_millis(check.range(
                "node.shutdown_timeout_ms",
                v,
                0,
                86_400_000,
                "0 to 1 day",
            )?);
        }
        if let Some(v) = n.idle_timeout_ms {
            engine.idle_timeout = Duration::from_millis(check.range(
                "node.idle_timeout_ms",
                v,
                1,
                31_536_000_000,
                "1 ms to 1 year",
            )?);
        }
        if let Some(v) = n.force_legacy_driver {
            engine.force_legacy_driver = v;
        }
        if let Some(v) = n.uring_entries {
            engine.uring_entries =
                check.range("node.uring_entries", v, 8, 32_768, "8 to 32768")? as u32;
        }
        if let Some(l) = raw.log {
            if let Some(ms) = l.compact_interval_ms {
                let ms = check.range(
                    "log.compact_interval_ms",
                    ms,
                    0,
                    86_400_000,
                    "0 (never) to 1 day",
                )?;
                engine.log_compact_interval = (ms > 0).then(|| Duration::from_millis(ms));
            }
            engine.log = Some(log_config(l, &check)?);
        }
        let mut actors = BTreeMap::new();
        for (name, a) in raw.actors {
            let mut t = ActorTypeConfig::default();
            if let Some(v) = a.idle_timeout_ms {
                let key = format!("actors.{name}.idle_timeout_ms");
                t.idle_timeout = Some(Duration::from_millis(check.range(
                    &key,
                    v,
                    1,
                    31_536_000_000,
                    "1 ms to 1 year",
                )?));
            }
            if let Some(v) = a.max_local_workers {
                let key = format!("actors.{name}.max_local_workers");
                t.max_local_workers = Some(check.range(&key, v, 1, 4096, "1 to 4096")? as usize);
            }
            if let Some(v) = a.snapshot_every_events {
                let key = format!("actors.{name}.snapshot_every_events");
                t.snapshot_every_events =
                    Some(check.range(&key, v, 1, 1 << 40, "1 to 2^40 events")?);
            }
            if let Some(v) = a.snapshot_every_bytes {
                let key = format!("actors.{name}.snapshot_every_bytes");
                t.snapshot_every_bytes =
                    Some(check.range(&key, v, 1, 1 << 50, "1 byte to 2^50 bytes")?);
            }
            if let Some(v) = a.retention_age_ms {
                let key = format!("actors.{name}.retention_age_ms");
                t.retention_age = Some(Duration::from_millis(check.range(
                    &key,
                    v,
                    1,
                    3_153_600_000_000,
                    "1 ms to 100 years",
                )?));
            }
            actors.insert(name, t);
        }
        let cluster = raw
            .cluster
            .map(|c| crate::cluster::cluster_settings(c, &check))
            .transpose()?;
        Ok(NodeConfig {
            engine,
            actors,
            cluster,
        })
    }
}

fn log_config(l: RawLog, check: &Check<'_>) -> Result<quark_persist::LogConfig, ConfigError> {
    use quark_persist::{FsyncPolicy, Preallocate, RecoveryMode};
    let invalid = |key: &str, value: String, reason: &'static str| ConfigError::Invalid {
        file: check.file.to_path_buf(),
        key: key.to_owned(),
        value,
        reason,
    };
    let Some(dir) = l.data_dir else {
        return Err(invalid(
            "log.data_dir",
            "(missing)".into(),
            "a [log] section needs data_dir, the node's data directory",
        ));
    };
    let mut c = quark_persist::LogConfig::new(dir, 0);
    if let Some(v) = l.segment_bytes {
        let v = check.range(
            "log.segment_bytes",
            v,
            1 << 20,
            1 << 40,
            "1 MiB to 1 TiB, a multiple of 4096",
        )?;
        if v % 4096 != 0 {
            return Err(invalid(
                "log.segment_bytes",
                v.to_string(),
                "1 MiB to 1 TiB, a multiple of 4096",
            ));
        }
        c.segment_bytes = v;
    }
    if let Some(f) = l.fsync {
        c.fsync = match f {
            RawFsync::Word(w) if w == "always" => FsyncPolicy::Always,
            RawFsync::Word(w) if w == "never" => FsyncPolicy::Never,
            RawFsync::Word(w) => {
                return Err(invalid(
                    "log.fsync",
                    format!("{w:?}"),
                    "\"always\", \"never\" or { interval_ms = N }",
                ))
            }
            RawFsync::Interval { interval_ms } => FsyncPolicy::IntervalMs(check.range(
                "log.fsync.interval_ms",
                interval_ms,
                1,
                3_600_000,
                "1 ms to 1 hour",
            )?),
        };
    }
    if let Some(r) = l.recovery {
        c.recovery = match r.as_str() {
            "strict" => RecoveryMode::Strict,
            "truncate_tail" => RecoveryMode::TruncateTail,
            "quarantine" => RecoveryMode::Quarantine,
            _ => {
                return Err(invalid(
                    "log.recovery",
                    format!("{r:?}"),
                    "\"strict\", \"truncate_tail\" or \"quarantine\"",
                ))
            }
        };
    }
    if let Some(p) = l.preallocate {
        c.preallocate = match p.as_str() {
            "zero_fill" => Preallocate::ZeroFill,
            "fallocate" => Preallocate::Fallocate,
            _ => {
                return Err(invalid(
                    "log.preallocate",
                    format!("{p:?}"),
                    "\"zero_fill\" or \"fallocate\"",
                ))
            }
        };
    }
    if let Some(v) = l.segment_bytes_initial {
        let v = check.range(
            "log.segment_bytes_initial",
            v,
            4096,
            1 << 40,
            "4 KiB to 1 TiB, a multiple of 4096 (capped at segment_bytes)",
        )?;
        if v % 4096 != 0 {
            return Err(invalid(
                "log.segment_bytes_initial",
                v.to_string(),
                "4 KiB to 1 TiB, a multiple of 4096 (capped at segment_bytes)",
            ));
        }
        c.segment_bytes_initial = v;
    }
    if let Some(v) = l.accept_short_segments {
        c.accept_short_segments = v;
    }
    if let Some(v) = l.write_through {
        c.write_through = v;
    }
    if let Some(v) = l.recycle_segments_max {
        c.recycle_segments_max =
            check.range("log.recycle_segments_max", v, 0, 1024, "0 to 1024")? as usize;
    }
    if let Some(v) = l.pending_bytes_max {
        c.pending_bytes_max =
            check.range("log.pending_bytes_max", v, 4096, 1 << 34, "4 KiB to 16 GiB")? as usize;
    }
    Ok(c)
}

fn parse_error(e: toml::de::Error, text: &str, file: &Path) -> ConfigError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, str::len) + 1;
            let snippet = text.get(span.clone()).unwrap_or("").trim();
            // The parser's span covers the key for unknown-field errors and the value for type
            // errors; report the key name when the span is a bare key.
            let key = if !snippet.is_empty()
                && snippet
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                Some(snippet.to_owned())
            } else {
                // For a value, the key is what stands before `=` on that line.
                let line_text = text.lines().nth(line - 1).unwrap_or("");
                line_text
                    .split_once('=')
                    .map(|(k, _)| k.trim().to_owned())
                    .filter(|k| !k.is_empty() && !k.starts_with('['))
            };
            (line, column, key)
        }
        None => (0, 0, None),
    };
    ConfigError::Parse {
        file: file.to_path_buf(),
        line,
        column,
        key,
        detail: e.message().trim().to_owned(),
    }
}
