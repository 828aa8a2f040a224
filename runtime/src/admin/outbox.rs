//! The admin endpoint's `/quark/outbox/dead-letters` routes: a running node's outbox dead
//! letters, listed, replayed and purged (`quark outbox dead-letters … --addr`, see
//! `docs/OUTBOX.md`). They call [`crate::outbox::Outbox`] on the node.
//!
//! | route | answer |
//! |---|---|
//! | `GET /quark/outbox/dead-letters` | [`DeadLettersPage`] (every shard's list, oldest first per shard) |
//! | `POST /quark/outbox/dead-letters/{shard}/{id}/replay` | [`DeadLetterDone`] with the replay id |
//! | `POST /quark/outbox/dead-letters/{shard}/{id}/purge` | [`DeadLetterDone`] |
//!
//! A failure is a JSON [`super::ApiError`]: `400` a bad shard or id, `404` no such dead letter,
//! no such shard, a node without an outbox or an unknown route, `405` a wrong method, `500` the
//! change could not be written, `503` the node is not ready.

use serde::{Deserialize, Serialize};

use super::http::Request;
use super::jobs::{fail, ok, Answer};
use super::{Phase, Shared};
use crate::outbox::{DeadLetter, MessageId, Outbox, OutboxError};

/// One dead letter as the endpoint shows it (the fields of [`DeadLetter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The shard whose log holds it.
    pub shard: u16,
    /// Its id (`<16 hex digits>-<sequence>`).
    pub id: String,
    /// The sender (`type/key`).
    pub sender: String,
    /// The receiver (`type/key`, or `sink:name`).
    pub target: String,
    /// The message's durable name.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// Wall-clock ms the sending turn staged it.
    pub created_ms: u64,
    /// Wall-clock ms it was dead-lettered.
    pub dead_ms: u64,
    /// Why it was given up.
    pub cause: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterView {
            shard: d.shard,
            id: d.id.to_string(),
            sender: d.sender.clone(),
            target: d.target.clone(),
            message: d.message.clone(),
            attempts: d.attempts,
            created_ms: d.created_ms,
            dead_ms: d.dead_ms,
            cause: d.cause.clone(),
        }
    }
}

/// `GET /quark/outbox/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersPage {
    /// Every shard's dead letters, by shard, oldest first per shard.
    pub dead_letters: Vec<DeadLetterView>,
}

/// What a replay or purge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterDone {
    /// The shard.
    pub shard: u16,
    /// The dead letter's id.
    pub id: String,
    /// `replayed` or `purged`.
    pub action: String,
    /// The id the replay is sent under (a replay only).
    pub replay_id: Option<String>,
}

const PREFIX: &str = "/quark/outbox/dead-letters";

/// Answers `/quark/outbox/...`.
pub(super) fn route(req: &Request, shared: &Shared) -> Answer {
    let Some(rest) = req
        .path
        .strip_prefix(PREFIX)
        .filter(|r| r.is_empty() || r.starts_with('/'))
    else {
        return fail(404, format!("no route {}", req.path));
    };
    if !req.query.is_empty() {
        return fail(400, format!("{} takes no parameters", req.path));
    }
    let is_read = req.method == "GET" || req.method == "HEAD";
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    match parts.as_slice() {
        [] => {
            if !is_read {
                return fail(405, format!("{} needs GET", req.path));
            }
            let outbox = match outbox(shared) {
                Ok(o) => o,
                Err(a) => return a,
            };
            match crate::block_on(outbox.dead_letters()) {
                Ok(list) => ok(&DeadLettersPage {
                    dead_letters: list.iter().map(DeadLetterView::from).collect(),
                }),
                Err(e) => failure(e),
            }
        }
        [shard, id, action @ ("replay" | "purge")] => {
            if req.method != "POST" {
                return fail(405, format!("{} needs POST", req.path));
            }
            let shard: u16 = match shard.parse() {
                Ok(s) => s,
                Err(_) => return fail(400, format!("bad shard {shard:?}")),
            };
            let id: MessageId = match id.parse() {
                Ok(id) => id,
                Err(e) => return fail(400, e),
            };
            let outbox = match outbox(shared) {
                Ok(o) => o,
                Err(a) => return a,
            };
            if shard >= outbox_shards(shared) {
                return fail(404, format!("the node has no shard {shard}"));
            }
            let replay = *action == "replay";
            let r = if replay {
                crate::block_on(outbox.replay(shard, id)).map(Some)
            } else {
                crate::block_on(outbox.purge(shard, id)).map(|()| None)
            };
            match r {
                Ok(rid) => ok(&DeadLetterDone {
                    shard,
                    id: id.to_string(),
                    action: if replay { "replayed" } else { "purged" }.to_owned(),
                    replay_id: rid.map(|r| r.to_string()),
                }),
                Err(e) => failure(e),
            }
        }
        _ => fail(404, format!("no route {}", req.path)),
    }
}

fn outbox_shards(shared: &Shared) -> u16 {
    shared
        .info
        .get()
        .map(|i| i.shards.len() as u16)
        .unwrap_or(0)
}

/// The node's outboxes if it is ready; else the answer to give.
fn outbox(shared: &Shared) -> Result<Outbox, Answer> {
    let phase = shared.phase();
    if phase != Phase::Ready {
        return Err(fail(503, format!("the node is {}", phase.name())));
    }
    let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref()
        .map(|e| Outbox::new(e.handle()))
        .ok_or_else(|| fail(503, "the node is not running"))
}

fn failure(e: OutboxError) -> Answer {
    let status = match &e {
        OutboxError::NoSuchDeadLetter { .. } => 404,
        OutboxError::NoDispatcher { .. } => {
            return fail(
                404,
                "this node runs no outbox (no [log], or no outbox configured)",
            )
        }
        OutboxError::ShardStopped { .. } => 503,
        _ => 500,
    };
    fail(status, crate::ErrorChain(&e).to_string())
}
