//! `/quark/actors` and `/quark/actors/counts`: live activations as JSON (see
//! `docs/OPERATIONS.md`, "Actor queries").
//!
//! - `GET /quark/actors?type=..&prefix=..&shard=..&idle_ms=..&min_bytes=..&limit=..&cursor=..`: one page of
//!   [`quark_shard::Engine::actors`] as an [`ActorsPage`]. An unknown parameter, a value that
//!   does not parse, a limit out of range, an unknown shard or actor type, or a bad cursor is
//!   answered `400` with a one-line message naming it; `503` while the engine is not running
//!   or a shard did not answer.
//! - `GET /quark/actors/counts`: live activations per type and shard ([`ActorCounts`]), from
//!   the shards' counters. [`fetch_actor_counts`] on several nodes and [`ActorCounts::merge`]
//!   give a cluster's counts (what `quark actors counts --addr A --addr B` prints).
//! - `GET /quark/actors/where?type=T&key=K[&kind=u64|str|hex]`: where an actor lives
//!   ([`PlacementEntry`]); `POST /quark/actors/move?type=T&key=K[&kind=..]&to=N`: moves it
//!   live to shard `N` ([`MoveEntry`]; docs/MIGRATION.md). `kind` says how `key` reads
//!   (default `str`; `hex`: pairs of hex digits for a bytes key). A bad parameter, an unknown
//!   type or shard, or a type that cannot migrate is `400`; a move under way, refused or
//!   aborted at its deadline is `409`; `503` while the engine is not running.

use std::net::SocketAddr;
use std::time::Duration;

use quark_shard::{
    ActorCursor, ActorId, ActorKey, ActorPage, ActorQuery, ActorQueryError, ActorRow, MigrateError,
    ShardStatsSnapshot,
};
use serde::{Deserialize, Serialize};

use super::{FetchError, Shared};

/// The query parameters `/quark/actors` accepts.
pub const ACTOR_QUERY_PARAMS: &[&str] = &[
    "type",
    "prefix",
    "shard",
    "idle_ms",
    "min_bytes",
    "limit",
    "cursor",
];

/// One page of live activations (the JSON of `/quark/actors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorsPage {
    /// The rows, in `(shard, type, key)` order.
    pub rows: Vec<ActorEntry>,
    /// The `cursor` parameter that gives the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One live activation (or a stateless-worker type's pool for one key); see
/// [`quark_shard::ActorRow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorEntry {
    /// The shard it lives on.
    pub shard: u16,
    /// Its actor type's name.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Its key in display form (`7`, `cart-3`, `0x00ff`).
    pub key: String,
    /// The key's kind: `u64`, `str` or `bytes` (a string key `"7"` and the number 7 display
    /// alike).
    pub key_kind: String,
    /// Milliseconds since its last message turn began, if idle now; `null` while busy or with
    /// mail queued.
    pub idle_ms: Option<u64>,
    /// Messages queued in its mailbox (a pool's: in all its workers').
    pub mailbox_len: usize,
    /// Whether the type is a stateless worker.
    pub stateless_worker: bool,
    /// Activations behind the row (1, or the pool's size).
    pub workers: usize,
    /// The shallow size of the state(s): `size_of` the actor type times `workers`; heap data
    /// the state owns is not counted.
    pub state_bytes_shallow: usize,
    /// The state's size: the deep size from the type's `ActorType::memory_size` hook when
    /// `state_bytes_deep`, else the shallow size (what `min_bytes` filters on).
    #[serde(default)]
    pub state_bytes: usize,
    /// Whether `state_bytes` is the hook's deep size (false: no hook, or busy when asked).
    #[serde(default)]
    pub state_bytes_deep: bool,
}

impl From<&ActorRow> for ActorEntry {
    fn from(r: &ActorRow) -> Self {
        ActorEntry {
            shard: r.shard,
            actor_type: r.actor_type.to_owned(),
            key: r.key.to_string(),
            key_kind: match r.key {
                ActorKey::U64(_) => "u64",
                ActorKey::Str(_) => "str",
                ActorKey::Bytes(_) => "bytes",
            }
            .to_owned(),
            idle_ms: r
                .idle
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            mailbox_len: r.mailbox_len,
            stateless_worker: r.stateless_worker,
            workers: r.workers,
            state_bytes_shallow: r.state_bytes_shallow,
            state_bytes: r.state_bytes,
            state_bytes_deep: r.state_bytes_deep,
        }
    }
}

impl From<&ActorPage> for ActorsPage {
    fn from(p: &ActorPage) -> Self {
        ActorsPage {
            rows: p.rows.iter().map(ActorEntry::from).collect(),
            next: p.next.as_ref().map(ActorCursor::to_string),
        }
    }
}

/// Live activations per actor type, per shard (the JSON of `/quark/actors/counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorCounts {
    /// One entry per registered type, in registration order (merged counts: in order of
    /// first appearance).
    pub types: Vec<TypeCount>,
}

/// One actor type's live activations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    /// The type's name.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// All of them.
    pub total: u64,
    /// Per shard, index = shard id (for merged counts: summed shard by shard across nodes).
    pub per_shard: Vec<u64>,
}

impl ActorCounts {
    /// The counts in one node's shard snapshots.
    pub fn from_snapshots(snaps: &[ShardStatsSnapshot]) -> ActorCounts {
        let mut out = ActorCounts::default();
        for s in snaps {
            for (name, n) in &s.live_per_type {
                out.add(name, usize::from(s.shard), *n);
            }
        }
        out
    }

    /// The counts of several nodes added up (a cluster's view).
    pub fn merge<'a>(all: impl IntoIterator<Item = &'a ActorCounts>) -> ActorCounts {
        let mut out = ActorCounts::default();
        for c in all {
            for t in &c.types {
                for (shard, n) in t.per_shard.iter().enumerate() {
                    out.add(&t.actor_type, shard, *n);
                }
            }
        }
        out
    }

    fn add(&mut self, name: &str, shard: usize, n: u64) {
        let i = match self.types.iter().position(|t| t.actor_type == name) {
            Some(i) => i,
            None => {
                self.types.push(TypeCount {
                    actor_type: name.to_owned(),
                    total: 0,
                    per_shard: Vec::new(),
                });
                self.types.len() - 1
            }
        };
        let t = &mut self.types[i];
        if t.per_shard.len() <= shard {
            t.per_shard.resize(shard + 1, 0);
        }
        t.per_shard[shard] += n;
        t.total += n;
    }
}

/// Why a query string was refused (answered `400` with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A parameter the endpoint does not know.
    #[error(
        "unknown parameter {name:?} (known: type, prefix, shard, idle_ms, min_bytes, limit, cursor)"
    )]
    Unknown {
        /// The parameter's name.
        name: String,
    },
    /// A parameter given twice.
    #[error("parameter {name:?} given twice")]
    Repeated {
        /// The parameter's name.
        name: String,
    },
    /// A value that does not parse.
    #[error("parameter {name}={value:?} is not {expected}")]
    Value {
        /// The parameter.
        name: &'static str,
        /// The value as given (decoded).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A bad `cursor`.
    #[error(transparent)]
    Cursor(#[from] quark_shard::CursorError),
    /// Bad percent-encoding.
    #[error("parameter {name:?}: bad percent-encoding")]
    Encoding {
        /// The parameter.
        name: String,
    },
}

/// Parses `/quark/actors`' query string (without the `?`) into a query.
pub fn parse_query(query: &str) -> Result<ActorQuery, ParamError> {
    let mut q = ActorQuery::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name).ok_or_else(|| ParamError::Encoding {
            name: raw_name.to_owned(),
        })?;
        let value = decode(raw_value).ok_or_else(|| ParamError::Encoding { name: name.clone() })?;
        let Some(&known) = ACTOR_QUERY_PARAMS.iter().find(|k| **k == name) else {
            return Err(ParamError::Unknown { name });
        };
        if seen.contains(&name) {
            return Err(ParamError::Repeated { name });
        }
        seen.push(name);
        let bad = |expected| ParamError::Value {
            name: known,
            value: value.clone(),
            expected,
        };
        match known {
            "type" => q.actor_type = Some(value.clone()).filter(|v| !v.is_empty()),
            "prefix" => q.key_prefix = Some(value.clone()).filter(|v| !v.is_empty()),
            "shard" => q.shard = Some(value.parse().map_err(|_| bad("a shard number"))?),
            "idle_ms" => {
                let ms: u64 = value.parse().map_err(|_| bad("a number of milliseconds"))?;
                q.idle_at_least = Some(Duration::from_millis(ms));
            }
            "min_bytes" => {
                q.state_bytes_at_least = Some(value.parse().map_err(|_| bad("a number of bytes"))?);
            }
            "limit" => q.limit = value.parse().map_err(|_| bad("a number of rows"))?,
            "cursor" => q.after = Some(value.parse()?),
            _ => unreachable!("every name in ACTOR_QUERY_PARAMS is handled"),
        }
    }
    Ok(q)
}

/// The query string (without `?`) that [`parse_query`] reads back as `q`.
pub fn query_string(q: &ActorQuery) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &q.actor_type {
        parts.push(format!("type={}", encode(t)));
    }
    if let Some(p) = &q.key_prefix {
        parts.push(format!("prefix={}", encode(p)));
    }
    if let Some(s) = q.shard {
        parts.push(format!("shard={s}"));
    }
    if let Some(d) = q.idle_at_least {
        parts.push(format!("idle_ms={}", d.as_millis()));
    }
    if let Some(b) = q.state_bytes_at_least {
        parts.push(format!("min_bytes={b}"));
    }
    parts.push(format!("limit={}", q.limit));
    if let Some(c) = &q.after {
        parts.push(format!("cursor={c}"));
    }
    parts.join("&")
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding (`+` is a space); `None` if a `%` is not followed by two hex digits or
/// the result is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Answers `/quark/actors`: `(status, content type, body)`.
pub(super) fn list(shared: &Shared, query: &str) -> (u16, &'static str, Vec<u8>) {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return text(400, &e.to_string()),
    };
    let answer = {
        let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(engine) => engine.actors(&q),
            None => return text(503, "the node is not running (starting or stopped)"),
        }
    };
    match answer {
        Ok(page) => json(&ActorsPage::from(&page)),
        Err(e @ ActorQueryError::NoAnswer { .. }) => text(503, &e.to_string()),
        Err(e) => text(400, &e.to_string()),
    }
}

/// Answers `/quark/actors/counts`.
pub(super) fn counts(shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    match shared.stats() {
        None => text(503, "the node is not running (starting or stopped)"),
        Some(Err(e)) => text(503, &e.to_string()),
        Some(Ok(snaps)) => json(&ActorCounts::from_snapshots(&snaps)),
    }
}

fn text(status: u16, message: &str) -> (u16, &'static str, Vec<u8>) {
    (status, "text/plain", format!("{message}\n").into_bytes())
}

fn json<T: Serialize>(value: &T) -> (u16, &'static str, Vec<u8>) {
    match serde_json::to_vec(value) {
        Ok(body) => (200, "application/json", body),
        Err(_) => text(500, "cannot encode the answer"),
    }
}

/// Why [`fetch_actors`] or [`fetch_actor_counts`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActorsFetchError {
    /// The request failed, or was answered with another status than 200 (a `400` carries the
    /// endpoint's message naming the bad parameter).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The answer is not the expected JSON document.
    #[error("admin endpoint {addr}{path}: not the expected JSON document")]
    Json {
        /// The endpoint.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn get_json<T: for<'de> Deserialize<'de>>(
    addr: SocketAddr,
    path: String,
    timeout: Duration,
) -> Result<T, ActorsFetchError> {
    let r = super::fetch(addr, &path, timeout)?;
    if r.status != 200 {
        return Err(FetchError::Status {
            addr,
            path,
            status: r.status,
            body: r.body.trim().to_owned(),
        }
        .into());
    }
    serde_json::from_str(&r.body).map_err(|source| ActorsFetchError::Json { addr, path, source })
}

/// One page of `/quark/actors` from the admin endpoint at `addr`.
pub fn fetch_actors(
    addr: SocketAddr,
    q: &ActorQuery,
    timeout: Duration,
) -> Result<ActorsPage, ActorsFetchError> {
    get_json(addr, format!("/quark/actors?{}", query_string(q)), timeout)
}

/// `/quark/actors/counts` from the admin endpoint at `addr`.
pub fn fetch_actor_counts(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ActorCounts, ActorsFetchError> {
    get_json(addr, "/quark/actors/counts".to_owned(), timeout)
}

/// Where an actor lives (the JSON of `GET /quark/actors/where`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementEntry {
    /// Its actor type's name.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Its key in display form.
    pub key: String,
    /// Its home shard (hash placement), which every sender addresses.
    pub home: u16,
    /// The shard it lives on (or is activated on at its next message).
    pub shard: u16,
    /// A move is under way.
    pub moving: bool,
    /// The node it lives on (its home node unless moved to another node; 0 without a
    /// cluster). `shard` is a shard of the home node only while `node` is the home node.
    #[serde(default)]
    pub node: u64,
}

/// A completed move (the JSON of `POST /quark/actors/move`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveEntry {
    /// Its actor type's name.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Its key in display form.
    pub key: String,
    /// The shard it lived on.
    pub from: u16,
    /// The shard it lives on now (equal to `from`: it was there already).
    pub to: u16,
    /// From the order at its home shard to the new shard's answer, µs.
    pub duration_us: u64,
    /// Bytes of dehydrated state (0 when the state moved as a box).
    pub bytes: u64,
    /// The node it lived on (0 without a cluster).
    #[serde(default)]
    pub from_node: u64,
    /// The node it lives on now.
    #[serde(default)]
    pub to_node: u64,
}

/// Where a move goes: a shard of the node, or another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveTarget {
    /// Shard `N` of the actor's home node (`to=N`).
    Shard(u16),
    /// Node `N` of the cluster (`to_node=N`).
    Node(u64),
}

/// The actor a `where`/`move` query names: `type`, `key` and `kind`; the target is returned
/// apart.
fn placement_params(query: &str) -> Result<(String, ActorKey, Option<MoveTarget>), String> {
    let (mut t, mut key, mut kind, mut to) = (None, None, None, None);
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let value =
            decode(value).ok_or_else(|| format!("parameter {name}: bad percent-encoding"))?;
        match name {
            "type" => t = Some(value),
            "key" => key = Some(value),
            "kind" => kind = Some(value),
            "to" => {
                to =
                    Some(MoveTarget::Shard(value.parse::<u16>().map_err(|_| {
                        format!("to={value:?} is not a shard number")
                    })?))
            }
            "to_node" => {
                to =
                    Some(MoveTarget::Node(value.parse::<u64>().map_err(|_| {
                        format!("to_node={value:?} is not a node id")
                    })?))
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (known: type, key, kind, to, to_node)"
                ))
            }
        }
    }
    let (Some(t), Some(key)) = (t, key) else {
        return Err("type and key are required (?type=T&key=K)".to_owned());
    };
    let key = match kind.as_deref().unwrap_or("str") {
        "str" => ActorKey::from(key.as_str()),
        "u64" => ActorKey::U64(
            key.parse::<u64>()
                .map_err(|e| format!("key {key:?} is not a u64: {e}"))?,
        ),
        "hex" => {
            let bytes: Option<Vec<u8>> = (key.len() % 2 == 0)
                .then(|| {
                    (0..key.len())
                        .step_by(2)
                        .map(|i| {
                            key.get(i..i + 2)
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                        })
                        .collect()
                })
                .flatten();
            ActorKey::from(
                &bytes.ok_or_else(|| format!("key {key:?} is not pairs of hex digits"))?[..],
            )
        }
        other => return Err(format!("bad kind {other:?} (u64, str or hex)")),
    };
    Ok((t, key, to))
}

/// The query string of a `where`/`move` for `(type_name, key)`.
fn placement_query(type_name: &str, key: &ActorKey) -> String {
    let (kind, value) = match key {
        ActorKey::U64(n) => ("u64", n.to_string()),
        ActorKey::Str(s) => ("str", encode(s)),
        ActorKey::Bytes(b) => ("hex", b.iter().map(|b| format!("{b:02x}")).collect()),
    };
    format!("type={}&key={value}&kind={kind}", encode(type_name))
}

/// The status a refused or failed move is answered with.
fn migrate_status(e: &MigrateError) -> u16 {
    match e {
        MigrateError::UnknownType { .. }
        | MigrateError::NotMigratable { .. }
        | MigrateError::NoSuchShard { .. }
        | MigrateError::NotSerializable { .. }
        | MigrateError::NoSuchNode { .. }
        | MigrateError::OtherNode { .. } => 400,
        MigrateError::ShuttingDown { .. } => 503,
        _ => 409,
    }
}

/// Answers `GET /quark/actors/where` and `POST /quark/actors/move`.
pub(super) fn placement_route(
    req: &super::http::Request,
    shared: &Shared,
) -> (u16, &'static str, Vec<u8>) {
    let moving = req.path.ends_with("/move");
    let method_ok = if moving {
        req.method == "POST"
    } else {
        req.method == "GET" || req.method == "HEAD"
    };
    if !method_ok {
        let need = if moving { "POST" } else { "GET" };
        return text(405, &format!("{} needs {need}", req.path));
    }
    let (type_name, key, to) = match placement_params(&req.query) {
        Ok(p) => p,
        Err(e) => return text(400, &e),
    };
    let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let Some(engine) = slot.as_ref() else {
        return text(503, "the node is not running (starting or stopped)");
    };
    let Some(type_name) = engine.registered_type(&type_name) else {
        let e = MigrateError::UnknownType { type_name };
        return text(migrate_status(&e), &e.to_string());
    };
    let id = ActorId { type_name, key };
    if moving {
        let moved = match to {
            None => {
                return text(
                    400,
                    "to=N (the target shard) or to_node=N (the target node) is required",
                )
            }
            Some(MoveTarget::Shard(to)) => engine.migrate(&id, to),
            Some(MoveTarget::Node(n)) => engine.migrate_to_node(&id, n),
        };
        if let (Ok(m), Some(moves)) = (&moved, shared.moves.get()) {
            // In the node's move table, as `Node::migrate` does: the automatic movers leave
            // the actor where the operator put it for their cooldown.
            moves.moved(&m.actor, std::time::Instant::now());
        }
        match moved {
            Ok(m) => json(&MoveEntry {
                actor_type: m.actor.type_name.to_owned(),
                key: m.actor.key.to_string(),
                from: m.from,
                to: m.to,
                duration_us: u64::try_from(m.duration.as_micros()).unwrap_or(u64::MAX),
                bytes: m.bytes,
                from_node: m.from_node,
                to_node: m.to_node,
            }),
            Err(e) => text(migrate_status(&e), &e.to_string()),
        }
    } else {
        match engine.placement(&id) {
            Ok(p) => json(&PlacementEntry {
                actor_type: p.actor.type_name.to_owned(),
                key: p.actor.key.to_string(),
                home: p.home,
                shard: p.shard,
                moving: p.moving,
                node: p.node,
            }),
            Err(e) => text(migrate_status(&e), &e.to_string()),
        }
    }
}

/// `GET /quark/actors/where` for `(type_name, key)` from the admin endpoint at `addr`.
pub fn fetch_placement(
    addr: SocketAddr,
    type_name: &str,
    key: &ActorKey,
    timeout: Duration,
) -> Result<PlacementEntry, ActorsFetchError> {
    get_json(
        addr,
        format!("/quark/actors/where?{}", placement_query(type_name, key)),
        timeout,
    )
}

/// `POST /quark/actors/move` of `(type_name, key)` to shard `to` at the admin endpoint at
/// `addr` (waits for the move: give a `timeout` above the node's `migration_timeout_ms`).
pub fn request_move(
    addr: SocketAddr,
    type_name: &str,
    key: &ActorKey,
    to: MoveTarget,
    timeout: Duration,
) -> Result<MoveEntry, ActorsFetchError> {
    let target = match to {
        MoveTarget::Shard(n) => format!("to={n}"),
        MoveTarget::Node(n) => format!("to_node={n}"),
    };
    let path = format!(
        "/quark/actors/move?{}&{target}",
        placement_query(type_name, key)
    );
    let r = super::request(addr, "POST", &path, timeout)?;
    if r.status != 200 {
        return Err(FetchError::Status {
            addr,
            path,
            status: r.status,
            body: r.body.trim().to_owned(),
        }
        .into());
    }
    serde_json::from_str(&r.body).map_err(|source| ActorsFetchError::Json { addr, path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip_and_bad_ones_name_the_parameter() {
        let q = ActorQuery {
            actor_type: Some("bank::Account".into()),
            key_prefix: Some("a b&c=%/é".into()),
            shard: Some(2),
            idle_at_least: Some(Duration::from_millis(1500)),
            state_bytes_at_least: Some(4096),
            limit: 7,
            after: Some("1.61.u5".parse().unwrap()),
        };
        assert_eq!(parse_query(&query_string(&q)), Ok(q));
        assert_eq!(parse_query(""), Ok(ActorQuery::default()));
        assert_eq!(
            parse_query("prefix=a+b%2B").unwrap().key_prefix.as_deref(),
            Some("a b+")
        );
        assert_eq!(
            parse_query("colour=red"),
            Err(ParamError::Unknown {
                name: "colour".into()
            })
        );
        assert_eq!(
            parse_query("shard=1&shard=2"),
            Err(ParamError::Repeated {
                name: "shard".into()
            })
        );
        let e = parse_query("idle_ms=soon").unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter idle_ms=\"soon\" is not a number of milliseconds"
        );
        assert!(matches!(
            parse_query("limit=-1"),
            Err(ParamError::Value { name: "limit", .. })
        ));
        assert!(matches!(
            parse_query("cursor=zz"),
            Err(ParamError::Cursor(_))
        ));
        assert!(matches!(
            parse_query("prefix=%zz"),
            Err(ParamError::Encoding { .. })
        ));
    }

    #[test]
    fn counts_add_up_per_shard_and_across_nodes() {
        let snap = |shard, live: Vec<(&'static str, u64)>| ShardStatsSnapshot {
            shard,
            live_per_type: live,
            ..ShardStatsSnapshot::default()
        };
        let a = ActorCounts::from_snapshots(&[
            snap(0, vec![("cart", 2), ("user", 0)]),
            snap(1, vec![("cart", 3), ("user", 1)]),
        ]);
        assert_eq!(a.types[0].per_shard, vec![2, 3]);
        assert_eq!(a.types[0].total, 5);
        assert_eq!(a.types[1].total, 1);
        let b = ActorCounts::from_snapshots(&[snap(0, vec![("cart", 10), ("job", 4)])]);
        let m = ActorCounts::merge([&a, &b]);
        let names: Vec<&str> = m.types.iter().map(|t| t.actor_type.as_str()).collect();
        assert_eq!(names, ["cart", "user", "job"]);
        assert_eq!(m.types[0].per_shard, vec![12, 3]);
        assert_eq!(m.types[0].total, 15);
        assert_eq!(m.types[2].per_shard, vec![4]);
    }
}
