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
use quark_placement::{ActorId, ActorKey, NodeId, ShardId};

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
    /// Such actors also move between nodes (`Engine::migrate_to_node`): the records go to
    /// the target node's log durably before the home records the move there
    /// (docs/MIGRATION.md, "Durable actors between nodes").
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
    push_actor(&mut out, type_name, key);
    out
}

/// True if `type_idx`'s state moves with the log and this shard has a log: its home must
/// consult the place records on a first message ([`recorded_place`]).
pub(crate) fn is_log_type(core: &Shard, type_idx: u16) -> bool {
    core.log.is_some() && core.node.types[usize::from(type_idx)].log_mover()
}

/// Where a home shard's place records put an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordedPlace {
    /// A shard of this node.
    Shard(ShardId),
    /// Another node of the cluster (the actor's records are in that node's log, on the
    /// actor's hash shard there).
    Node(NodeId),
}

// Format of a node place record's key: { "quark.placen/" | node u64 BE | type name len u8 |
// type name | key tag u8 ('u' | 's' | 'b') | key }; kind Snapshot, empty payload.
// docs/LOG_FORMAT.md, "Place records".
/// The key of the record saying that the actor of `slot` lives on node `node`.
pub(crate) fn node_place_key(type_name: &str, key: &ActorKey, node: NodeId) -> Vec<u8> {
    const PREFIX: &[u8] = b"quark.placen/";
    let mut out = Vec::with_capacity(PREFIX.len() + 9 + type_name.len() + 16);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(&node.to_be_bytes());
    push_actor(&mut out, type_name, key);
    out
}

fn push_actor(out: &mut Vec<u8>, type_name: &str, key: &ActorKey) {
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
}

/// The other nodes a place record may name: the configured members and those the live view
/// knows.
fn other_nodes(core: &Shard) -> Vec<NodeId> {
    let Some(net) = core.node.net.as_ref() else {
        return Vec::new();
    };
    let mut m = net.members.clone();
    m.extend(net.view.now().members().iter().map(|l| l.id));
    m.sort_unstable();
    m.dedup();
    m.retain(|n| *n != net.node_id);
    m
}

/// On the home shard: the place the place records of its log name for `slot`, the one
/// written last (`None`: none, the actor has never moved). One index lookup per shard of the
/// node and per other member, no I/O.
pub(crate) fn recorded_place(core: &Shard, slot: &Slot) -> Option<RecordedPlace> {
    let log = core.log.as_ref()?;
    let name = core.node.types[usize::from(slot.0)].name();
    let shards = (0..core.node.shard_count()).filter_map(|s| {
        let lsn = *log.key_lsns(&place_key(name, &slot.1, s)).last()?;
        Some((lsn, RecordedPlace::Shard(s)))
    });
    let nodes = other_nodes(core).into_iter().filter_map(|n| {
        let lsn = *log.key_lsns(&node_place_key(name, &slot.1, n)).last()?;
        Some((lsn, RecordedPlace::Node(n)))
    });
    shards
        .chain(nodes)
        .max_by_key(|(lsn, _)| *lsn)
        .map(|(_, p)| p)
}

/// Appends the place record `slot` → `to` to this (home) shard's log; resolves once durable.
pub(crate) async fn record_place(core: &Shard, slot: &Slot, to: ShardId) -> Result<(), String> {
    record(core, slot, RecordedPlace::Shard(to)).await
}

/// Appends the place record `slot` → `to` (a shard of this node or another node) to this
/// (home) shard's log; resolves once durable.
pub(crate) async fn record(core: &Shard, slot: &Slot, to: RecordedPlace) -> Result<(), String> {
    let Some(log) = core.log.as_ref() else {
        return Ok(());
    };
    let name = core.node.types[usize::from(slot.0)].name();
    let key = match to {
        RecordedPlace::Shard(s) => place_key(name, &slot.1, s),
        RecordedPlace::Node(n) => node_place_key(name, &slot.1, n),
    };
    let mut batch = Batch::new();
    batch.push(NewRecord {
        kind: RecordKind::Snapshot,
        key,
        payload: Vec::new(),
        expires_at_ms: None,
    });
    log.append(&batch)
        .await
        .map(|_| ())
        .map_err(|e| crate::ErrorChain(&e).to_string())
}

/// Run on the new shard once a move's records are durable there (`place::rearm_after_log_move`:
/// the actor's timers).
pub(crate) type AfterMove = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// On the actor's place X (its activation ended, or it was not active): reads its records and
/// sends them to the new shard (steps 2 and 3 of the module doc); `after` runs there once
/// they are durable and the home was told.
pub(crate) fn copy_out(
    core: &Rc<Shard>,
    slot: Slot,
    cmd: Cmd,
    keys: Vec<Vec<u8>>,
    after: Option<AfterMove>,
) {
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
                settle(&c, slot, cmd, Outcome::Refused(err));
                // The actor stays here: its timers too (through its home, as on a move).
                if let Some(after) = after {
                    after(&c);
                }
                return;
            }
        };
        c.send_to(
            cmd.to,
            CrossMsg::run_on(move |y| copy_in(y, slot, cmd, keys, records, after)),
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
fn copy_in(
    core: &Rc<Shard>,
    slot: Slot,
    cmd: Cmd,
    keys: Vec<Vec<u8>>,
    records: Vec<NewRecord>,
    after: Option<AfterMove>,
) {
    let c = core.clone();
    core.sched.spawn(async move {
        let bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
        let written = match c.log.as_ref() {
            None => Ok(()),
            Some(log) => {
                let batch = copy_batch(&keys, records);
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
        // After the outcome went to the home: what `after` sends reaches the home behind it,
        // and the home sends it on to wherever the move left the actor.
        if let Some(after) = after {
            after(&c);
        }
    });
}

// ---- moves between nodes: the records travel as bytes

// Format of a log actor's state between nodes: { magic "QLM1" | key count u32 LE | per key:
// { len u32 LE | key } | record count u32 LE | per record: { kind u8 (1 event, 2 snapshot) |
// key len u32 LE | key | payload len u32 LE | payload | has expiry u8 | expires_at_ms u64 LE
// if 1 } }. docs/PROTOCOL.md, "Moves between nodes".
/// Encodes the keys of an actor and their live records for a move to another node.
pub(crate) fn encode_records(keys: &[Vec<u8>], records: &[NewRecord]) -> Vec<u8> {
    let len: usize = keys.iter().map(|k| 4 + k.len()).sum::<usize>()
        + records
            .iter()
            .map(|r| 18 + r.key.len() + r.payload.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(12 + len);
    out.extend_from_slice(RECORDS_MAGIC);
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        put(&mut out, k);
    }
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.push(match r.kind {
            RecordKind::Event => 1,
            RecordKind::Snapshot => 2,
            RecordKind::Truncate => 3,
        });
        put(&mut out, &r.key);
        put(&mut out, &r.payload);
        match r.expires_at_ms {
            None => out.push(0),
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
    }
    out
}

const RECORDS_MAGIC: &[u8] = b"QLM1";

/// Why bytes that came from another node are not a log actor's records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordsError {
    /// The bytes end inside a field.
    #[error("moved log records: truncated at byte {at} (of {len})")]
    Truncated { at: usize, len: usize },
    /// The bytes do not start with the format's magic.
    #[error("moved log records: bad magic (expected \"QLM1\")")]
    Magic,
    /// A record kind that does not move (a truncation) or is unknown.
    #[error("moved log records: record kind {kind} at byte {at} is not 1 or 2")]
    Kind { kind: u8, at: usize },
}

/// Decodes [`encode_records`]' bytes: (keys, records).
pub(crate) fn decode_records(b: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<NewRecord>), RecordsError> {
    struct Rd<'a> {
        b: &'a [u8],
        at: usize,
    }
    impl Rd<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], RecordsError> {
            let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
            let end = end.ok_or(RecordsError::Truncated {
                at: self.at,
                len: self.b.len(),
            })?;
            let s = &self.b[self.at..end];
            self.at = end;
            Ok(s)
        }
        fn u32(&mut self) -> Result<u32, RecordsError> {
            let s = self.take(4)?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        fn bytes(&mut self) -> Result<Vec<u8>, RecordsError> {
            let n = self.u32()? as usize;
            Ok(self.take(n)?.to_vec())
        }
    }
    let mut r = Rd { b, at: 0 };
    if r.take(4).map_err(|_| RecordsError::Magic)? != RECORDS_MAGIC {
        return Err(RecordsError::Magic);
    }
    let nkeys = r.u32()?;
    // Counts are bounded by the bytes there are (each entry takes at least 4 of them).
    let mut keys = Vec::with_capacity((nkeys as usize).min(b.len() / 4));
    for _ in 0..nkeys {
        keys.push(r.bytes()?);
    }
    let nrec = r.u32()?;
    let mut records = Vec::with_capacity((nrec as usize).min(b.len() / 10));
    for _ in 0..nrec {
        let at = r.at;
        let kind = match r.take(1)?[0] {
            1 => RecordKind::Event,
            2 => RecordKind::Snapshot,
            k => return Err(RecordsError::Kind { kind: k, at }),
        };
        let key = r.bytes()?;
        let payload = r.bytes()?;
        let expires_at_ms = match r.take(1)?[0] {
            0 => None,
            _ => {
                let s = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                Some(u64::from_le_bytes(a))
            }
        };
        records.push(NewRecord {
            kind,
            key,
            payload,
            expires_at_ms,
        });
    }
    Ok((keys, records))
}

/// On the actor's place, for a move between nodes (its activation ended, or it was not
/// active): reads its records and hands them back to `cmd.home` as bytes
/// ([`encode_records`]). The place keeps them: the home's place record says whether they
/// are still the actor's.
pub(crate) fn collect_out(core: &Rc<Shard>, slot: Slot, cmd: Cmd, keys: Vec<Vec<u8>>) {
    let c = core.clone();
    core.sched.spawn(async move {
        let state = match read_records(&c, &keys).await {
            Ok(records) => Ok(Some(encode_records(&keys, &records))),
            Err(detail) => Err(MigrateError::LogCopy {
                actor: actor_id(&c.node, &slot),
                shard: c.id,
                detail,
            }),
        };
        super::send_collected(&c, cmd, state);
    });
}

/// On the shard a log actor arrives on from another node (its hash shard here): writes its
/// records (after a truncation of each of its keys: a copy an earlier stay left here is
/// superseded) and resolves once they are durable. Returns the payload bytes written.
pub(crate) async fn write_in(core: &Shard, state: &[u8]) -> Result<u64, String> {
    let (keys, records) = decode_records(state).map_err(|e| e.to_string())?;
    let bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
    let Some(log) = core.log.as_ref() else {
        return Err("this node has no log (`[log] data_dir`)".to_owned());
    };
    let batch = copy_batch(&keys, records);
    log.append(&batch)
        .await
        .map(|_| bytes)
        .map_err(|e| crate::ErrorChain(&e).to_string())
}

/// The key of the record that opens a moved actor's copy in its new place's log.
pub const MOVE_BEGIN_KEY: &[u8] = b"quark.move/begin";
/// The key of the record that closes it.
pub const MOVE_END_KEY: &[u8] = b"quark.move/end";

// Format of a move's copy in the new place's log (one atomic batch, docs/LOG_FORMAT.md,
// "Moved records"): { Snapshot MOVE_BEGIN_KEY (empty) | Truncate of each key (up to u64::MAX)
// | the records, in their old LSN order | Snapshot MOVE_END_KEY (empty) }. A reader of the log
// that must not see the copied events a second time (a projection's feeder: they were fed
// at their first LSN) skips the records between the two markers.
/// The batch that writes a moved actor's records into its new place's log: each key
/// truncated (it supersedes what an interrupted earlier move left here), the records, all
/// between the two move markers.
fn copy_batch(keys: &[Vec<u8>], records: Vec<NewRecord>) -> Batch {
    let marker = |key: &[u8]| NewRecord {
        kind: RecordKind::Snapshot,
        key: key.to_vec(),
        payload: Vec::new(),
        expires_at_ms: None,
    };
    let mut batch = Batch::new();
    batch.push(marker(MOVE_BEGIN_KEY));
    for k in keys {
        batch.truncate(k, u64::MAX);
    }
    for r in records {
        batch.push(r);
    }
    batch.push(marker(MOVE_END_KEY));
    batch
}

/// True if a move between nodes of an actor of this type must stop after the target's write
/// (the crash seam, [`stop_log_moves_after_copy`]).
pub(crate) fn seam(type_name: &str) -> bool {
    stops_after_copy(type_name)
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
        assert_ne!(
            place_key("t", &ActorKey::U64(7), 1),
            node_place_key("t", &ActorKey::U64(7), 1)
        );
    }

    #[test]
    fn moved_records_round_trip_and_bad_bytes_are_refused() {
        let keys = vec![b"qs/a".to_vec(), b"qi/a".to_vec()];
        let recs = vec![
            NewRecord {
                kind: RecordKind::Snapshot,
                key: b"qs/a".to_vec(),
                payload: b"state".to_vec(),
                expires_at_ms: None,
            },
            NewRecord {
                kind: RecordKind::Event,
                key: b"qi/a".to_vec(),
                payload: vec![],
                expires_at_ms: Some(77),
            },
        ];
        let b = encode_records(&keys, &recs);
        let (k2, r2) = decode_records(&b).expect("decodes");
        assert_eq!(k2, keys);
        assert_eq!(r2.len(), 2);
        assert_eq!(r2[0].payload, b"state");
        assert_eq!(r2[0].kind, RecordKind::Snapshot);
        assert_eq!(r2[1].expires_at_ms, Some(77));
        for cut in 0..b.len() {
            assert!(decode_records(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(decode_records(&bad).unwrap_err(), RecordsError::Magic);
    }
}
