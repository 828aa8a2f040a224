//! The admin endpoint's reminder routes (`quark reminders`, see `docs/JOBS.md`):
//!
//! - `GET /quark/reminders?type=T&key=K[&kind=u64|str|hex]`: one actor's durable reminders
//!   (`quark reminders list --actor TYPE/KEY`), from the node asked;
//! - `GET /quark/reminders[?type=T][&limit=N][&cursor=C]`: every actor's reminders on every
//!   node of the cluster, one page ([`RemindersPage`]), through each node's
//!   [`crate::reminders::remote::ReminderGateway`];
//! - `POST /quark/reminders/cancel?type=T&key=K&name=N[&kind=…]`: cancels the actor's reminder
//!   wherever it is stored (every node is asked; [`CancelledReminder`]); `404` if none was.
//!
//! `kind` says how `key` is read: `u64` (decimal), `str` (the default: the text as given) or
//! `hex` (bytes). The answer is a [`ActorReminders`]; a failure is a JSON
//! [`super::ApiError`]: `400` bad input, `404` an actor type not registered for reminders or a
//! node without reminders, `503` the node is not running.

use serde::{Deserialize, Serialize};

use super::http::Request;
use super::jobs::{fail, ok, parse_query, Answer};
use super::{Phase, Shared};
use crate::jobs::cluster::MemberGateways;
use crate::reminders::remote::{
    ListedRemote, ReminderGateway, ReminderPos, RemoteReminderCancel, RemoteReminderError,
    RemoteReminderList, REMINDER_PAGE_MAX,
};
use crate::reminders::ReminderError;
use quark_shard::{ActorKey, CallError};

/// One reminder as `/quark/reminders` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderView {
    /// Its name.
    pub name: String,
    /// The first occurrence (ms since the Unix epoch).
    pub first_due_ms: u64,
    /// The period in ms; 0 for a one-shot reminder.
    pub period_ms: u64,
    /// The next occurrence at or after now.
    pub next_due_ms: u64,
}

/// `GET /quark/reminders`: the actor (`type/key`, the key in its unambiguous form) and its
/// reminders, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorReminders {
    /// `type/key`.
    pub actor: String,
    /// Its reminders.
    pub reminders: Vec<ReminderView>,
}

/// One reminder of a cluster-wide listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedReminderView {
    /// The node whose log holds it.
    pub node: u64,
    /// `type/key` (the key in its unambiguous form).
    pub actor: String,
    /// Its name.
    pub name: String,
    /// The first occurrence (ms since the Unix epoch).
    pub first_due_ms: u64,
    /// The period in ms; 0 for a one-shot reminder.
    pub period_ms: u64,
    /// The next occurrence at or after now.
    pub next_due_ms: u64,
}

/// `GET /quark/reminders` without a key: one page of every actor's reminders, ordered by node,
/// shard and then the actor's table; `next_cursor` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemindersPage {
    /// The reminders.
    pub reminders: Vec<ListedReminderView>,
    /// The `cursor` of the next page.
    pub next_cursor: Option<String>,
}

/// `POST /quark/reminders/cancel`: the reminder cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelledReminder {
    /// `type/key`.
    pub actor: String,
    /// The reminder's name.
    pub name: String,
}

/// Answers `/quark/reminders` and `/quark/reminders/cancel`.
pub(super) fn route(req: &Request, shared: &Shared) -> Answer {
    let (cancel, known): (bool, &[&str]) = match req.path.as_str() {
        "/quark/reminders" => (false, &["type", "key", "kind", "limit", "cursor"]),
        "/quark/reminders/cancel" => (true, &["type", "key", "kind", "name"]),
        _ => return fail(404, format!("no route {}", req.path)),
    };
    let is_read = req.method == "GET" || req.method == "HEAD";
    if cancel && req.method != "POST" {
        return fail(405, format!("{} needs POST", req.path));
    }
    if !cancel && !is_read {
        return fail(405, format!("{} needs GET", req.path));
    }
    let query = match parse_query(&req.query) {
        Ok(q) => q,
        Err(e) => return fail(400, e),
    };
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    if let Some((k, _)) = query.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return fail(
            400,
            format!("unknown parameter {k:?} (known: {})", known.join(", ")),
        );
    }
    if !cancel && get("key").is_none() {
        return list_all(shared, get("type"), get("limit"), get("cursor"));
    }
    let (Some(type_name), Some(key)) = (get("type"), get("key")) else {
        return fail(400, "type and key are required (?type=T&key=K)");
    };
    let key = match parse_key(key, get("kind")) {
        Ok(k) => k,
        Err(e) => return fail(400, e),
    };
    let handle = match ready_handle(shared) {
        Ok(h) => h,
        Err(a) => return a,
    };
    if cancel {
        let Some(name) = get("name").filter(|n| !n.is_empty()) else {
            return fail(400, "name is required (&name=N)");
        };
        return cancel_everywhere(shared, handle, type_name, &key, name);
    }
    match crate::block_on(crate::reminders::list_by_name(&handle, type_name, &key)) {
        Ok(v) => ok(&ActorReminders {
            actor: format!("{type_name}/{key:?}"),
            reminders: v
                .into_iter()
                .map(|r| ReminderView {
                    name: r.name,
                    first_due_ms: r.first_due_ms,
                    period_ms: r.period_ms,
                    next_due_ms: r.next_due_ms,
                })
                .collect(),
        }),
        Err(e) => {
            let status = match &e {
                ReminderError::NotRunning | ReminderError::NotRegistered { .. } => 404,
                ReminderError::Stopped => 503,
                _ => 500,
            };
            fail(status, crate::ErrorChain(&e).to_string())
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Reads `key` as `kind` says (`str` by default, `u64`, `hex`).
fn parse_key(key: &str, kind: Option<&str>) -> Result<ActorKey, String> {
    match kind.unwrap_or("str") {
        "str" => Ok(ActorKey::from(key)),
        "u64" => key
            .parse::<u64>()
            .map(ActorKey::U64)
            .map_err(|e| format!("key {key:?} is not a u64: {e}")),
        "hex" => decode_hex(key)
            .map(|b| ActorKey::from(&b[..]))
            .ok_or_else(|| format!("key {key:?} is not pairs of hex digits")),
        other => Err(format!("bad kind {other:?} (u64, str or hex)")),
    }
}

/// The engine's handle if the node is ready; else the answer to give.
fn ready_handle(shared: &Shared) -> Result<quark_shard::EngineHandle, Answer> {
    let phase = shared.phase();
    if phase != Phase::Ready {
        return Err(fail(503, format!("the node is {}", phase.name())));
    }
    let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref()
        .map(|e| e.handle())
        .ok_or_else(|| fail(503, "the node is not running"))
}

/// The cluster's members, addressed through their gateways.
fn members(shared: &Shared, handle: quark_shard::EngineHandle) -> MemberGateways {
    let (local, peers) = shared
        .info
        .get()
        .map(|i| (i.node_id, i.peers.iter().map(|(id, _)| *id).collect()))
        .unwrap_or((None, Vec::new()));
    let mut all: Vec<u64> = peers;
    all.extend(local);
    MemberGateways::new(handle, local, all)
}

/// The answer for a node's failure to answer or its refusal.
fn node_failure(node: u64, e: Result<CallError, RemoteReminderError>) -> Answer {
    match e {
        Err(e @ (RemoteReminderError::NotRunning | RemoteReminderError::NotRegistered(_))) => {
            fail(404, format!("node {node}: {e}"))
        }
        Err(e) => fail(500, format!("node {node}: {e}")),
        Ok(e) => fail(
            502,
            format!("node {node} did not answer: {}", crate::ErrorChain(&e)),
        ),
    }
}

/// Cursor: `node.shard.group.<actor hex>.<name hex>` (the position the page starts at).
fn encode_cursor(node: u64, p: &ReminderPos) -> String {
    format!(
        "{node}.{}.{}.{}.{}",
        p.shard,
        p.group,
        encode_hex(&p.actor),
        encode_hex(p.name.as_bytes())
    )
}

fn decode_cursor(c: &str) -> Option<(u64, ReminderPos)> {
    let mut it = c.split('.');
    let node = it.next()?.parse().ok()?;
    let shard = it.next()?.parse().ok()?;
    let group = it.next()?.parse().ok()?;
    let actor = decode_hex(it.next()?)?;
    let name = String::from_utf8(decode_hex(it.next()?)?).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((
        node,
        ReminderPos {
            shard,
            group,
            actor,
            name,
        },
    ))
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Page size when `limit` is not given, and its bounds.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = REMINDER_PAGE_MAX - 1;

fn list_all(
    shared: &Shared,
    type_name: Option<&str>,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Answer {
    let limit = match limit.map(str::parse::<u32>) {
        None => PAGE_DEFAULT,
        Some(Ok(n)) if (1..=PAGE_MAX).contains(&n) => n,
        Some(_) => return fail(400, format!("limit must be 1 to {PAGE_MAX}")),
    } as usize;
    let cursor = match cursor.map(|c| (c, decode_cursor(c))) {
        None => None,
        Some((_, Some(c))) => Some(c),
        Some((c, None)) => return fail(400, format!("bad cursor {c:?}")),
    };
    let handle = match ready_handle(shared) {
        Ok(h) => h,
        Err(a) => return a,
    };
    let nodes = members(shared, handle);
    let mut items: Vec<(u64, ListedRemote)> = Vec::new();
    for node in nodes.members() {
        let from = match &cursor {
            Some((n, _)) if node < *n => continue,
            Some((n, p)) if node == *n => Some(p.clone()),
            _ => None,
        };
        let Some(gw) = nodes.on::<ReminderGateway>(node) else {
            continue;
        };
        let msg = RemoteReminderList {
            type_name: type_name.map(str::to_owned),
            from,
            limit: (limit + 1 - items.len()) as u32,
        };
        let page = match crate::block_on(gw.ask(msg)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return node_failure(node, Err(e)),
            Err(e) => return node_failure(node, Ok(e)),
        };
        items.extend(page.items.into_iter().map(|r| (node, r)));
        if items.len() > limit {
            break;
        }
    }
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|(node, r)| encode_cursor(*node, &r.pos.successor()))
    } else {
        None
    };
    ok(&RemindersPage {
        reminders: items
            .into_iter()
            .map(|(node, r)| ListedReminderView {
                node,
                actor: match crate::outbox::format::decode_actor(&r.pos.actor) {
                    Ok((t, k)) => format!("{t}/{k:?}"),
                    Err(_) => format!("0x{}", encode_hex(&r.pos.actor)),
                },
                name: r.pos.name,
                first_due_ms: r.first_due_ms,
                period_ms: r.period_ms,
                next_due_ms: r.next_due_ms,
            })
            .collect(),
        next_cursor,
    })
}

fn cancel_everywhere(
    shared: &Shared,
    handle: quark_shard::EngineHandle,
    type_name: &str,
    key: &ActorKey,
    name: &str,
) -> Answer {
    let nodes = members(shared, handle);
    let mut actor = Vec::new();
    crate::outbox::format::encode_actor(&mut actor, type_name, key);
    let mut existed = false;
    for node in nodes.members() {
        let Some(gw) = nodes.on::<ReminderGateway>(node) else {
            continue;
        };
        let msg = RemoteReminderCancel {
            type_name: type_name.to_owned(),
            actor: actor.clone(),
            name: name.to_owned(),
        };
        match crate::block_on(gw.ask(msg)) {
            Ok(Ok(e)) => existed |= e,
            Ok(Err(e)) => return node_failure(node, Err(e)),
            Err(e) => return node_failure(node, Ok(e)),
        }
    }
    let actor = format!("{type_name}/{key:?}");
    if !existed {
        return fail(404, format!("actor {actor} has no reminder named {name:?}"));
    }
    ok(&CancelledReminder {
        actor,
        name: name.to_owned(),
    })
}
