//! The node's configuration file (`quark.toml`): parsing, validation and defaults.
//!
//! Every key is documented in `docs/CONFIG.md`; `docs/examples/quark.toml` is a commented
//! example. Syntax errors, unknown keys (in every table), wrong types and out-of-range values
//! are errors that name the file, the full key path (`log.fsync.interval_ms`) and what is wrong
//! with the value as written; syntax and type errors also give the line and column.
//!
//! Parsing runs in three passes over the (small) text: the TOML parser (syntax), a key tree
//! with the span of every key and value (`spans`), then the typed structs below; an error of
//! the last pass is mapped back to its key through the tree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quark_shard::{EngineConfig, ShardSpec};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

mod locality;
mod memory;
mod observability;
mod outbox;
mod spans;
mod workflows;
pub use memory::{MemoryConfig, VictimStrategy};
pub(crate) mod tls;
pub use observability::ObservabilityConfig;
pub use outbox::OutboxSection;
use spans::Doc;

/// A node's whole configuration: the engine settings and per-actor-type overrides.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The engine settings (`[node]`).
    pub engine: EngineConfig,
    /// Per actor type settings (`[actors.<type name>]`), by type name.
    pub actors: BTreeMap<String, ActorTypeConfig>,
    /// The node's cluster (`[cluster]`); `None`: a standalone node.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// The admin endpoint (`[admin]`); `None` (the default): no endpoint.
    pub admin: Option<crate::admin::AdminConfig>,
    /// The outbox's knobs (`[outbox]`); `None`: the code's config (or the defaults).
    pub outbox: Option<OutboxSection>,
    /// Trace export (`[observability]`); the default: none.
    pub observability: ObservabilityConfig,
    /// Memory-aware rebalancing (`[memory]`, docs/MEMORY.md); `None` (the default): off.
    pub memory: Option<MemoryConfig>,
    /// Locality-aware repartitioning (`[locality]`); the default: off.
    pub locality: crate::locality::LocalityConfig,
    /// Workflow history bounds (`[workflows]`, docs/WORKFLOWS.md); the default: 51 200
    /// records and 50 MiB per run, a warning at 0.8 of either.
    pub workflows: crate::workflow::WorkflowsConfig,
    /// The file it was read from (named in start-up errors about it).
    file: Option<PathBuf>,
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

/// Why a configuration was refused. Every message names the file and, where one key is at
/// fault, its full path (`log.fsync`, `actors.account.retention_age_ms`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML (a syntax error, or a key given twice).
    #[error("{}", located(file, *line, *column, key.as_deref(), detail))]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text (0: unknown).
        line: usize,
        /// 1-based column (0: unknown).
        column: usize,
        /// The full path of the key on that line, when the line has one.
        key: Option<String>,
        /// The parser's explanation.
        detail: String,
    },
    /// A key is unknown (the message lists the valid keys of its table), a value has the wrong
    /// type, or a required key is missing.
    #[error("{}", located(file, *line, *column, key.as_deref(), detail))]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text (0: unknown).
        line: usize,
        /// 1-based column (0: unknown).
        column: usize,
        /// The full path of the key at fault (`log.fsync.interval_ms`, `cluster.nodes[1].id`).
        key: Option<String>,
        /// What is wrong: the unknown key and the valid ones, or the type given and expected.
        detail: String,
    },
    /// A value is of the right type but out of range.
    #[error("{}: key `{key}` = {value}: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The full dotted key.
        key: String,
        /// The value as written in the file.
        value: String,
        /// The accepted range.
        reason: &'static str,
    },
    /// The `[cluster]` membership is invalid (the source names the entry).
    #[error("{}: invalid [cluster] membership", file.display())]
    Cluster {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        #[source]
        source: quark_net::MembershipError,
    },
    /// A file of `[cluster.tls]` is missing, unreadable or invalid (the source names it).
    #[error("{}: [cluster.tls]", file.display())]
    Tls {
        /// The configuration file.
        file: PathBuf,
        /// What is wrong, naming the TLS file.
        #[source]
        source: Box<quark_net::tls::TlsError>,
    },
    /// The cluster secret is unusable (too short, not UTF-8 in the environment).
    #[error("{}: unusable cluster secret", file.display())]
    Secret {
        /// The file.
        file: PathBuf,
        /// What is wrong (never the secret itself).
        #[source]
        source: quark_net::SecretError,
    },
}

/// `file:line:column: key `k`: detail`, leaving out what is unknown.
fn located(file: &Path, line: usize, column: usize, key: Option<&str>, detail: &str) -> String {
    let mut s = file.display().to_string();
    if line > 0 {
        s.push_str(&format!(":{line}:{column}"));
    }
    s.push_str(": ");
    if let Some(k) = key {
        s.push_str(&format!("key `{k}`: "));
    }
    s.push_str(detail);
    s
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
    admin: Option<RawAdmin>,
    outbox: Option<outbox::RawOutbox>,
    observability: Option<observability::RawObservability>,
    memory: Option<memory::RawMemory>,
    locality: Option<locality::RawLocality>,
    workflows: Option<workflows::RawWorkflows>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    allow_remote: Option<bool>,
    tls: Option<bool>,
    client_cert_required: Option<bool>,
}

// Integers are read as i64 (TOML's integer type) and range-checked here, so that a negative
// value is refused with its key, the value as written and the accepted range.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    shards: Option<RawShards>,
    pin_threads: Option<bool>,
    idle_spin_us: Option<Int>,
    ring_capacity: Option<Int>,
    cross_shard_inflight_max: Option<Int>,
    external_queue_capacity: Option<Int>,
    external_inflight_max: Option<Int>,
    mailbox_capacity: Option<Int>,
    ask_timeout_ms: Option<Int>,
    shutdown_timeout_ms: Option<Int>,
    idle_timeout_ms: Option<Int>,
    uring_entries: Option<Int>,
    force_legacy_driver: Option<bool>,
    migration_timeout_ms: Option<Int>,
    migrations_per_sec_max: Option<Int>,
    app_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    data_dir: Option<PathBuf>,
    segment_bytes: Option<Int>,
    segment_bytes_initial: Option<Int>,
    accept_short_segments: Option<bool>,
    fsync: Option<RawFsync>,
    recovery: Option<String>,
    preallocate: Option<String>,
    write_through: Option<bool>,
    direct_io: Option<String>,
    recycle_segments_max: Option<Int>,
    pending_bytes_max: Option<Int>,
    compact_interval_ms: Option<Int>,
}

/// `fsync = "always" | "never" | { interval_ms = N }`.
enum RawFsync {
    Word(String),
    Interval(RawInterval),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterval {
    interval_ms: Int,
}

impl<'de> Deserialize<'de> for RawFsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFsync;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"always\", \"never\" or { interval_ms = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawFsync, E> {
                Ok(RawFsync::Word(v.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawFsync, A::Error> {
                // The derived struct refuses unknown keys at the key (`log.fsync.bogus`).
                RawInterval::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawFsync::Interval)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActorType {
    idle_timeout_ms: Option<Int>,
    max_local_workers: Option<Int>,
    snapshot_every_events: Option<Int>,
    snapshot_every_bytes: Option<Int>,
    retention_age_ms: Option<Int>,
}

enum RawShards {
    Auto,
    Count(i64),
    Cores(Vec<Int>),
}

/// A TOML integer (refused with "expected an integer", whatever its range).
#[derive(Clone, Copy, Debug)]
struct Int(i64);

impl From<Int> for i64 {
    fn from(v: Int) -> i64 {
        v.0
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_i64(V)
    }
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
                while let Some(c) = seq.next_element::<Int>()? {
                    cores.push(c);
                }
                Ok(RawShards::Cores(cores))
            }
        }
        d.deserialize_any(V)
    }
}

/// Range checks that report the key and the value as written in the file.
pub(crate) struct Check<'a> {
    pub(crate) file: &'a Path,
    text: &'a str,
    doc: &'a Doc,
}

impl Check<'_> {
    /// Checks `value` (the value of `key`) against `lo..=hi`.
    pub(crate) fn range(
        &self,
        key: &str,
        value: u64,
        lo: u64,
        hi: u64,
        reason: &'static str,
    ) -> Result<u64, ConfigError> {
        if value < lo || value > hi {
            return Err(self.invalid(key, value, reason));
        }
        Ok(value)
    }

    /// Checks a TOML integer (possibly negative) against `lo..=hi`.
    fn int(
        &self,
        key: &str,
        value: impl Into<i64>,
        lo: u64,
        hi: u64,
        reason: &'static str,
    ) -> Result<u64, ConfigError> {
        let value: i64 = value.into();
        match u64::try_from(value) {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(self.invalid(key, value, reason)),
        }
    }

    /// An [`ConfigError::Invalid`] for `key`, quoting its value as written in the file
    /// (`fallback` when the file does not have it).
    pub(crate) fn invalid(
        &self,
        key: &str,
        fallback: impl fmt::Display,
        reason: &'static str,
    ) -> ConfigError {
        let value = self
            .doc
            .value_span(key)
            .and_then(|s| self.text.get(s))
            .map(|t| t.trim().to_owned())
            .unwrap_or_else(|| fallback.to_string());
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value,
            reason,
        }
    }
}

/// The largest segment the log opens: at most `u32::MAX` bytes (record offsets are u32) and a
/// multiple of 4096, as `quark_persist::Log::open` checks.
const SEGMENT_BYTES_MAX: u64 = (u32::MAX as u64) & !4095;

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

    /// The file this configuration was read from (the name given to [`NodeConfig::from_toml`]);
    /// `None` for a configuration built in code.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Parses and validates TOML `text`; `file` names it in errors.
    pub fn from_toml(text: &str, file: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let file = file.as_ref();
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(syntax_error(e.span(), e.message(), text, file));
        }
        let doc = Doc::parse(text).map_err(|e| syntax_error(e.span(), e.message(), text, file))?;
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
            ConfigError::Parse {
                file: file.to_path_buf(),
                line,
                column,
                key: e.span().and_then(|s| doc.path_at(&s)),
                detail: e.message().trim().to_owned(),
            }
        })?;
        let check = Check {
            file,
            text,
            doc: &doc,
        };
        let mut engine = EngineConfig::default();
        let n = raw.node;
        if let Some(s) = n.shards {
            engine.shards = match s {
                RawShards::Auto => ShardSpec::Auto,
                RawShards::Count(c) => ShardSpec::Count(check.int(
                    "node.shards",
                    c,
                    1,
                    256,
                    "a shard count is 1 to 256",
                )? as usize),
                RawShards::Cores(list) => {
                    if list.is_empty() || list.len() > 256 {
                        return Err(check.invalid(
                            "node.shards",
                            format!("{list:?}"),
                            "a core list has 1 to 256 entries",
                        ));
                    }
                    let mut cores = Vec::with_capacity(list.len());
                    for (i, c) in list.into_iter().enumerate() {
                        let key = format!("node.shards[{i}]");
                        let c = check.int(
                            &key,
                            c,
                            0,
                            u64::from(u32::MAX),
                            "a core id is a non-negative integer",
                        )?;
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
            engine.idle_spin = Duration::from_micros(check.int(
                "node.idle_spin_us",
                v,
                0,
                1_000_000,
                "0 to 1000000 µs",
            )?);
        }
        if let Some(v) = n.ring_capacity {
            engine.ring_capacity =
                check.int("node.ring_capacity", v, 2, 1 << 20, "2 to 1048576 slots")? as usize;
        }
        if let Some(v) = n.cross_shard_inflight_max {
            engine.cross_shard_inflight_max = check.int(
                "node.cross_shard_inflight_max",
                v,
                1,
                1 << 20,
                "1 to 1048576",
            )? as u32;
        }
        if let Some(v) = n.external_queue_capacity {
            engine.external_queue_capacity = check.int(
                "node.external_queue_capacity",
                v,
                1,
                1 << 20,
                "1 to 1048576 slots",
            )? as usize;
        }
        if let Some(v) = n.external_inflight_max {
            engine.external_inflight_max =
                check.int("node.external_inflight_max", v, 1, 1 << 24, "1 to 16777216")? as usize;
        }
        if let Some(v) = n.mailbox_capacity {
            engine.mailbox_capacity =
                check.int("node.mailbox_capacity", v, 1, 1 << 24, "1 to 16777216")? as usize;
        }
        if let Some(v) = n.ask_timeout_ms {
            engine.ask_timeout = Duration::from_millis(check.int(
                "node.ask_timeout_ms",
                v,
                1,
                86_400_000,
                "1 ms to 1 day",
            )?);
        }
        if let Some(v) = n.shutdown_timeout_ms {
            engine.shutdown_timeout = Duration::from_millis(check.int(
                "node.shutdown_timeout_ms",
                v,
                0,
                86_400_000,
                "0 to 1 day",
            )?);
        }
        if let Some(v) = n.idle_timeout_ms {
            engine.idle_timeout = Duration::from_millis(check.int(
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
        if let Some(v) = n.migration_timeout_ms {
            engine.migration_timeout = Duration::from_millis(check.int(
                "node.migration_timeout_ms",
                v,
                1,
                3_600_000,
                "1 ms to 1 hour",
            )?);
        }
        if let Some(v) = n.app_version {
            let ok = v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
            if !ok {
                return Err(check.invalid(
                    "node.app_version",
                    format!("{v:?}"),
                    "at most 64 characters of A-Z a-z 0-9 . - + _ (e.g. \"1.4.2\")",
                ));
            }
            engine.app_version = v;
        }
        if let Some(v) = n.migrations_per_sec_max {
            engine.migrations_per_sec_max = check.int(
                "node.migrations_per_sec_max",
                v,
                0,
                u32::MAX.into(),
                "0 (no limit) to 4294967295",
            )? as u32;
        }
        if let Some(v) = n.uring_entries {
            engine.uring_entries =
                check.int("node.uring_entries", v, 8, 32_768, "8 to 32768")? as u32;
        }
        if let Some(l) = raw.log {
            if let Some(ms) = l.compact_interval_ms {
                let ms = check.int(
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
            let key = |k: &str| format!("actors.{name}.{k}");
            let mut t = ActorTypeConfig::default();
            if let Some(v) = a.idle_timeout_ms {
                t.idle_timeout = Some(Duration::from_millis(check.int(
                    &key("idle_timeout_ms"),
                    v,
                    1,
                    31_536_000_000,
                    "1 ms to 1 year",
                )?));
            }
            if let Some(v) = a.max_local_workers {
                t.max_local_workers =
                    Some(check.int(&key("max_local_workers"), v, 1, 4096, "1 to 4096")? as usize);
            }
            if let Some(v) = a.snapshot_every_events {
                t.snapshot_every_events = Some(check.int(
                    &key("snapshot_every_events"),
                    v,
                    1,
                    1 << 40,
                    "1 to 2^40 events",
                )?);
            }
            if let Some(v) = a.snapshot_every_bytes {
                t.snapshot_every_bytes = Some(check.int(
                    &key("snapshot_every_bytes"),
                    v,
                    1,
                    1 << 50,
                    "1 byte to 2^50 bytes",
                )?);
            }
            if let Some(v) = a.retention_age_ms {
                t.retention_age = Some(Duration::from_millis(check.int(
                    &key("retention_age_ms"),
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
        let cluster_tls = cluster.as_ref().and_then(|c| c.net.tls.clone());
        let admin = raw
            .admin
            .map(|a| admin_config(a, cluster_tls, &check))
            .transpose()?;
        let outbox = raw
            .outbox
            .map(|o| outbox::outbox_section(o, &check))
            .transpose()?;
        let observability = raw
            .observability
            .map(|o| observability::observability_section(o, &check))
            .transpose()?
            .unwrap_or_default();
        let memory = raw
            .memory
            .map(|m| memory::memory_section(m, &check))
            .transpose()?;
        let locality = raw
            .locality
            .map(|l| locality::locality_section(l, &check))
            .transpose()?
            .unwrap_or_default();
        let workflows = raw
            .workflows
            .map(|w| workflows::workflows_section(w, &check))
            .transpose()?
            .unwrap_or_default();
        Ok(NodeConfig {
            engine,
            actors,
            cluster,
            admin,
            outbox,
            observability,
            memory,
            locality,
            workflows,
            file: Some(file.to_path_buf()),
        })
    }
}

fn admin_config(
    a: RawAdmin,
    cluster_tls: Option<std::sync::Arc<quark_net::tls::TlsContext>>,
    check: &Check<'_>,
) -> Result<crate::admin::AdminConfig, ConfigError> {
    let listen: std::net::SocketAddr = a.listen.parse().map_err(|_| {
        check.invalid(
            "admin.listen",
            format!("{:?}", a.listen),
            "an ip:port address",
        )
    })?;
    let required = a.client_cert_required.unwrap_or(false);
    let tls = match (a.tls.unwrap_or(false), cluster_tls) {
        (false, _) if required => {
            return Err(check.invalid(
                "admin.client_cert_required",
                true,
                "client certificates need HTTPS: set admin.tls = true",
            ))
        }
        (false, _) => None,
        (true, None) => {
            return Err(check.invalid(
                "admin.tls",
                true,
                "HTTPS serves the node's certificate: configure [cluster.tls] (ca, cert, key)",
            ))
        }
        (true, Some(context)) => Some(crate::admin::AdminTls {
            context,
            client_cert_required: required,
        }),
    };
    let config = crate::admin::AdminConfig {
        listen,
        allow_remote: a.allow_remote.unwrap_or(false),
        tls,
    };
    if crate::admin::check_listen(&config).is_err() {
        return Err(check.invalid(
            "admin.listen",
            listen,
            "not a loopback address: set admin.allow_remote = true to expose the admin endpoint (it has no authentication and shows the node's internals)",
        ));
    }
    Ok(config)
}

fn log_config(l: RawLog, check: &Check<'_>) -> Result<quark_persist::LogConfig, ConfigError> {
    use quark_persist::{FsyncPolicy, Preallocate, RecoveryMode};
    let Some(dir) = l.data_dir else {
        return Err(check.invalid(
            "log.data_dir",
            "(missing)",
            "a [log] section needs data_dir, the node's data directory",
        ));
    };
    if dir.as_os_str().is_empty() {
        return Err(check.invalid(
            "log.data_dir",
            "\"\"",
            "must name a directory (an empty path would put the log in the current directory)",
        ));
    }
    let mut c = quark_persist::LogConfig::new(dir, 0);
    if let Some(v) = l.segment_bytes {
        const REASON: &str = "1 MiB to 4294963200 (4 GiB - 4 KiB), a multiple of 4096";
        let v = check.int("log.segment_bytes", v, 1 << 20, SEGMENT_BYTES_MAX, REASON)?;
        if v % 4096 != 0 {
            return Err(check.invalid("log.segment_bytes", v, REASON));
        }
        c.segment_bytes = v;
    }
    if let Some(f) = l.fsync {
        c.fsync = match f {
            RawFsync::Word(w) if w == "always" => FsyncPolicy::Always,
            RawFsync::Word(w) if w == "never" => FsyncPolicy::Never,
            RawFsync::Word(w) => {
                return Err(check.invalid(
                    "log.fsync",
                    format!("{w:?}"),
                    "\"always\", \"never\" or { interval_ms = N }",
                ))
            }
            RawFsync::Interval(i) => FsyncPolicy::IntervalMs(check.int(
                "log.fsync.interval_ms",
                i.interval_ms,
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
                return Err(check.invalid(
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
                return Err(check.invalid(
                    "log.preallocate",
                    format!("{p:?}"),
                    "\"zero_fill\" or \"fallocate\"",
                ))
            }
        };
    }
    if let Some(v) = l.segment_bytes_initial {
        const REASON: &str =
            "4 KiB to 4294963200 (4 GiB - 4 KiB), a multiple of 4096 (capped at segment_bytes)";
        let v = check.int(
            "log.segment_bytes_initial",
            v,
            4096,
            SEGMENT_BYTES_MAX,
            REASON,
        )?;
        if v % 4096 != 0 {
            return Err(check.invalid("log.segment_bytes_initial", v, REASON));
        }
        c.segment_bytes_initial = v;
    }
    if let Some(v) = l.accept_short_segments {
        c.accept_short_segments = v;
    }
    if let Some(v) = l.write_through {
        c.write_through = v;
    }
    if let Some(v) = l.direct_io {
        c.direct_io = match v.as_str() {
            "auto" => quark_persist::DirectIo::Auto,
            "on" => quark_persist::DirectIo::On,
            "off" => quark_persist::DirectIo::Off,
            _ => {
                return Err(check.invalid(
                    "log.direct_io",
                    format!("{v:?}"),
                    "\"auto\", \"on\" or \"off\"",
                ))
            }
        };
    }
    if let Some(v) = l.recycle_segments_max {
        c.recycle_segments_max =
            check.int("log.recycle_segments_max", v, 0, 1024, "0 to 1024")? as usize;
    }
    if let Some(v) = l.pending_bytes_max {
        c.pending_bytes_max =
            check.int("log.pending_bytes_max", v, 4096, 1 << 34, "4 KiB to 16 GiB")? as usize;
    }
    Ok(c)
}

/// 1-based line and column of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A TOML syntax error, with the full path of the key on the offending line when the line is
/// `key = value` or a table header (the document did not parse, so there is no key tree: the
/// path is the last table header above the line followed by the line's key).
fn syntax_error(
    span: Option<std::ops::Range<usize>>,
    message: &str,
    text: &str,
    file: &Path,
) -> ConfigError {
    let (line, column, key) = match span {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (line, column, key_on_line(text, line))
        }
        None => (0, 0, None),
    };
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line,
        column,
        key,
        detail: message.trim().to_owned(),
    }
}

/// `[a.b]` or `[[a.b]]` on its own line: `a.b`.
fn header_path(line: &str) -> Option<String> {
    let l = line.split('#').next().unwrap_or("").trim();
    let inner = l
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    key_path(inner)
}

/// A dotted key as written (`a . "b"`) as a path `a.b`, if it looks like a key at all.
fn key_path(written: &str) -> Option<String> {
    let parts: Vec<String> = written
        .split('.')
        .map(|p| p.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect();
    let bare = |p: &String| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ')
    };
    parts.iter().all(bare).then(|| parts.join("."))
}

fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = *lines.get(line.checked_sub(1)?)?;
    if let Some(h) = header_path(this) {
        return Some(h);
    }
    let key = key_path(this.split_once('=')?.0)?;
    let table = lines[..line - 1].iter().rev().find_map(|l| header_path(l));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}
