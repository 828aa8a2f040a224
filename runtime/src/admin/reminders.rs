//! The admin endpoint's `GET /quark/reminders?type=T&key=K[&kind=u64|str|hex]`: one actor's
//! durable reminders (`quark reminders list --actor TYPE/KEY`, see `docs/JOBS.md`).
//!
//! `kind` says how `key` is read: `u64` (decimal), `str` (the default: the text as given) or
//! `hex` (bytes). The answer is a [`ActorReminders`]; a failure is a JSON
//! [`super::ApiError`]: `400` bad input, `404` an actor type not registered for reminders or a
//! node without reminders, `503` the node is not running.

use serde::{Deserialize, Serialize};

use super::http::Request;
use super::jobs::{fail, ok, parse_query, Answer};
use super::{Phase, Shared};
use crate::reminders::ReminderError;
use quark_shard::ActorKey;

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

/// Answers `/quark/reminders`.
pub(super) fn route(req: &Request, shared: &Shared) -> Answer {
    if req.path != "/quark/reminders" {
        return fail(404, format!("no route {}", req.path));
    }
    if req.method != "GET" && req.method != "HEAD" {
        return fail(405, format!("{} needs GET", req.path));
    }
    let query = match parse_query(&req.query) {
        Ok(q) => q,
        Err(e) => return fail(400, e),
    };
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    if let Some((k, _)) = query
        .iter()
        .find(|(k, _)| !["type", "key", "kind"].contains(&k.as_str()))
    {
        return fail(
            400,
            format!("unknown parameter {k:?} (known: type, key, kind)"),
        );
    }
    let (Some(type_name), Some(key)) = (get("type"), get("key")) else {
        return fail(400, "type and key are required (?type=T&key=K)");
    };
    let key = match get("kind").unwrap_or("str") {
        "str" => ActorKey::from(key),
        "u64" => match key.parse::<u64>() {
            Ok(k) => ActorKey::U64(k),
            Err(e) => return fail(400, format!("key {key:?} is not a u64: {e}")),
        },
        "hex" => match decode_hex(key) {
            Some(b) => ActorKey::from(&b[..]),
            None => return fail(400, format!("key {key:?} is not pairs of hex digits")),
        },
        other => return fail(400, format!("bad kind {other:?} (u64, str or hex)")),
    };
    let phase = shared.phase();
    if phase != Phase::Ready {
        return fail(503, format!("the node is {}", phase.name()));
    }
    let handle = {
        let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|e| e.handle())
    };
    let Some(handle) = handle else {
        return fail(503, "the node is not running");
    };
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
