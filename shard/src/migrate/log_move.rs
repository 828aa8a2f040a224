//! Moves of actors whose state is in the shard log ([`ActorType::moves_with_log`]: durable
//! state, docs/MIGRATION.md, "Durable actors"), between the shards of one node.
//!
//! The rule: **the shard an actor lives on holds its latest records, and its home shard's log
//! says which shard that is.** A move of such an actor from shard X to shard Y, ordered by
//! its home H:
//!
//! 1. X pauses the activation at a turn boundary as for any move; its in-memory state is
//!    dropped (what counts is what it saved), its timers are cancelled.
//! 2. X reads the actor's records (every live record of each of its log keys) and sends them
//!    to Y.
//! 3. Y appends them in one batch, after a truncation of each key (an older copy left on Y
//!    by an interrupted move is superseded), and waits until the batch is durable.
//! 4. H appends the *place record* (`place_key(Y, actor)`) and waits until it is durable;
//!    only then does it record Y in memory and send on what waited. The actor activates on Y
//!    at its next message, loading from Y's log.
//!
//! A crash before 4 leaves the place record naming X (or none: home): after a restart the
//! actor activates on X from X's records, which are as new as Y's copy (nothing ran in
//! between). A crash after 4: on Y, from Y's records. Never two places, never stale: a
//! restarted home reads the place records on a first message ([`recorded_place`]).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use quark_persist::{Batch, NewRecord, RecordKind};
use quark_placement::{ActorId, ActorKey, ShardId};

use super::{actor_id, settle, Cmd, MigrateError, Mover, Outcome};
use crate::activation::ActorType;
use crate::actor::Actor;
use crate::directory::Slot;
use crate::envelope::CrossMsg;
use crate::shard::Shard;

/// The log keys of one actor (`ActorType::moves_with_log`).
pub(crate) type LogKeys = Box<dyn Fn(&ActorId) -> Vec<Vec<u8>> + Send + Sync>;

impl<A: Actor> ActorType<A> {
    /// Lets activations of this type migrate between the shards of a node, for a type whose
    /// whole state is in the shard log under the keys `keys(id)` (every live record of
    /// each key, in LSN order; the loader reads them on the shard the actor lives on). A move
    /// copies those records to the new shard's log durably, then records the new place in
    /// the home shard's log, so that a restart activates the actor on its last shard with
    /// its last records (docs/MIGRATION.md, "Durable actors"). The in-memory state is not
    /// carried (the next message loads it), nor are the activation's timers (cancelled).
    /// Such actors do not move between nodes ([`MigrateError::NotSerializable`]).
    pub fn moves_with_log(
        mut self,
        keys: impl Fn(&ActorId) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        self.migration = Some(Mover::Log {
            keys: Box::new(keys),
        });
        self
    }
}

/// Test seam: a move of a log actor of this type stops after the new shard's write (step 3)
/// and never reaches the home's place record, as if the process died there. Only for tests
/// of the crash window; never set by the engine.
static STOP_AFTER_COPY: Mutex<Option<&'static str>> = Mutex::new(None);
/// Moves stopped by the seam so far.
static STOPPED: AtomicU64 = AtomicU64::new(0);

/// Sets the crash seam (see [`STOP_AFTER_COPY`]) for actors of type `type_name` (`None`: off);
/// returns how many moves it stopped so far.
#[doc(hidden)]
pub fn stop_log_moves_after_copy(type_name: Option<&'static str>) -> u64 {
    *STOP_AFTER_COPY.lock().unwrap_or_else(|p| p.into_inner()) = type_name;
    STOPPED.load(Ordering::SeqCst)
}

fn stops_after_copy(type_name: &str) -> bool {
    let on = *STOP_AFTER_COPY.lock().unwrap_or_else(|p| p.into_inner()) == Some(type_name);
    if on {
        STOPPED.fetch_add(1, Ordering::SeqCst);
    }
    on
}

// Format of a place record's key: { "quark.place/" | shard u16 BE | type name len u8 |
// type name | key tag u8 ('u' | 's' | 'b') | key (u64 BE, UTF-8 or raw bytes) }; kind
// Snapshot, empty payload. docs/LOG_FORMAT.md, "Place records".
/// The key of the record saying that the actor of `slot` lives on `shard`.
pub(crate) fn place_key(type_name: &str, key: &ActorKey, shard: ShardId) -> Vec<u8> {
    const PREFIX: &[u8] = b"quark.place/";
    let mut out = Vec::with_capacity(PREFIX.len() + 3 + type_name.len() + 16);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(&shard.to_be_bytes());
    debug_assert!(
        type_name.len() <= usize::from(u8::MAX),
        "type names are short"
    );
    out.push(type_name.len().min(255) as u8);
    out.extend_from_slice(&type_name.as_bytes()[..type_name.len().min(255)]);
    match key {
        ActorKey::U64(k) => {
            out.push(b'u');
            out.extend_from_slice(&k.to_be_bytes());
        }
        ActorKey::Str(s) => {
            out.push(b's');
            out.extend_from_slice(s.as_bytes());
        }
        ActorKey::Bytes(b) => {
            out.push(b'b');
            out.extend_from_slice(b);
        }
    }
    out
}

/// True if `type_idx`'s state moves with the log and this shard has a log: its home must
/// consult the place records on a first message ([`recorded_place`]).
pub(crate) fn is_log_type(core: &Shard, type_idx: u16) -> bool {
    core.log.is_some() && core.node.types[usize::from(type_idx)].log_mover()
}

/// On the home shard: the shard the place records of its log name for `slot`, the one
/// written last (`None`: none, the actor has never moved).
pub(crate) fn recorded_place(core: &Shard, slot: &Slot) -> Option<ShardId> {
    let log = core.log.as_ref()?;
    let name = core.node.types[usize::from(slot.0)].name();
    (0..core.node.shard_count())
        .filter_map(|s| {
            let lsn = *log.key_lsns(&place_key(name, &slot.1, s)).last()?;
            Some((lsn, s))
        })
        .max()
        .map(|(_, s)| s)
}

/// Appends the place record `slot` → `to` to this (home) shard's log; resolves once durable.
pub(crate) async fn record_place(core: &Shard, slot: &Slot, to: ShardId) -> Result<(), String> {
    let Some(log) = core.log.as_ref() else {
        return Ok(());
    };
    let name = core.node.types[usize::from(slot.0)].name();
    let mut batch = Batch::new();
    batch.push(NewRecord {
        kind: RecordKind::Snapshot,
        key: place_key(name, &slot.1, to),
        payload: Vec::new(),
        expires_at_ms: None,
    });
    log.append(&batch)
        .await
        .map(|_| ())
        .map_err(|e| crate::ErrorChain(&e).to_string())
}

/// On the actor's place X (its activation ended, or it was not active): reads its records and
/// sends them to the new shard (steps 2 and 3 of the module doc).
pub(crate) fn copy_out(core: &Rc<Shard>, slot: Slot, cmd: Cmd, keys: Vec<Vec<u8>>) {
    let c = core.clone();
    core.sched.spawn(async move {
        let records = match read_records(&c, &keys).await {
            Ok(r) => r,
            Err(detail) => {
                let err = MigrateError::LogCopy {
                    actor: actor_id(&c.node, &slot),
                    shard: c.id,
                    detail,
                };
                return settle(&c, slot, cmd, Outcome::Refused(err));
            }
        };
        c.send_to(
            cmd.to,
            CrossMsg::run_on(move |y| copy_in(y, slot, cmd, keys, records)),
        );
    });
}

/// Every live record of each of `keys` in this shard's log, in order.
async fn read_records(core: &Shard, keys: &[Vec<u8>]) -> Result<Vec<NewRecord>, String> {
    let Some(log) = core.log.as_ref() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for key in keys {
        let lsns = log.key_lsns(key);
        let records = log
            .read_many(&lsns)
            .await
            .map_err(|e| crate::ErrorChain(&e).to_string())?;
        out.extend(records.into_iter().map(|r| NewRecord {
            kind: r.kind,
            key: r.key,
            payload: r.payload,
            expires_at_ms: r.expires_at_ms,
        }));
    }
    Ok(out)
}

/// On the new shard Y: writes the records durably, then tells the home (which records the
/// place, step 4).
fn copy_in(core: &Rc<Shard>, slot: Slot, cmd: Cmd, keys: Vec<Vec<u8>>, records: Vec<NewRecord>) {
    let c = core.clone();
    core.sched.spawn(async move {
        let bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
        let written = match c.log.as_ref() {
            None => Ok(()),
            Some(log) => {
                let mut batch = Batch::new();
                for k in &keys {
                    // Supersedes whatever an interrupted earlier move left of this actor here.
                    batch.truncate(k, u64::MAX);
                }
                for r in records {
                    batch.push(r);
                }
                log.append(&batch)
                    .await
                    .map(|_| ())
                    .map_err(|e| crate::ErrorChain(&e).to_string())
            }
        };
        let outcome = match written {
            Ok(()) if stops_after_copy(c.node.types[usize::from(slot.0)].name()) => return,
            Ok(()) => Outcome::Moved { bytes },
            Err(detail) => Outcome::Refused(MigrateError::LogCopy {
                actor: actor_id(&c.node, &slot),
                shard: c.id,
                detail,
            }),
        };
        settle(&c, slot, cmd, outcome);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_keys_differ_by_shard_type_and_key_kind() {
        let a = place_key("t", &ActorKey::U64(7), 1);
        assert_eq!(&a[..12], b"quark.place/");
        assert_eq!(&a[12..14], &[0, 1]);
        assert_eq!(a[14], 1);
        assert_eq!(&a[15..17], b"tu");
        assert_eq!(&a[17..], &7u64.to_be_bytes());
        assert_ne!(a, place_key("t", &ActorKey::U64(7), 2));
        assert_ne!(a, place_key("u", &ActorKey::U64(7), 1));
        assert_ne!(
            place_key("t", &ActorKey::from("7"), 1),
            place_key("t", &ActorKey::Bytes(b"7".to_vec().into()), 1)
        );
    }
}
