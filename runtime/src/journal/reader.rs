//! Reading journals: rebuilding a state (activation, time travel, dry-run replay), reading
//! events by version or time, external appends with an expected version, and erasure.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use quark_persist::{Batch, Log, LogIo, Record};
use quark_shard::{current_shard_log, EngineHandle, Invoke, InvokeFuture, ShardLog};

use super::format::{self, Hash, SnapshotRecord, Stream, GENESIS};
use super::loader::{persist_events, reset_after_erase, stream_info};
use super::{
    EraseError, EventSourced, JournalError, JournalEvent, PersistError, Persisted, UpcastError,
};
use crate::{ActorId, ActorKey, Context};

/// Records read per `read_many` call while rebuilding (bounds the memory of a replay).
const READ_CHUNK_RECORDS: usize = 4096;

/// A point in an actor's history.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// After the latest event.
    Latest,
    /// After the event with this version (0 = the initial state).
    Version(u64),
    /// After the last event persisted at or before this wall-clock time (ms since the epoch).
    TimeMs(u64),
}

/// A wall-clock range of event timestamps, in ms since the Unix epoch, both ends inclusive.
pub type TimeRange = RangeInclusive<u64>;

/// One event read from a journal.
#[derive(Clone, Debug, PartialEq)]
pub struct EventEnvelope<E> {
    /// The actor's version after this event.
    pub version: u64,
    /// When it was persisted (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Its stored type name.
    pub event_type: String,
    /// Its stored schema version (the event itself is upcast to the current one).
    pub schema_version: u16,
    /// The LSN of its record in the owning shard's log.
    pub lsn: u64,
    /// The event.
    pub event: E,
}

/// Progress of a long rebuild or replay.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Events applied so far.
    pub events_applied: u64,
    /// Events to apply in all (an upper bound when replaying to a time).
    pub events_total: u64,
    /// The version reached.
    pub version: u64,
}

/// What a dry-run replay did.
#[derive(Clone, Debug)]
pub struct ReplayReport<S> {
    /// The state reached, in its snapshot form.
    pub state: S,
    /// The version reached.
    pub version: u64,
    /// Version of the snapshot the replay started from (0 = from the initial state).
    pub from_snapshot: u64,
    /// Events applied.
    pub events_applied: u64,
    /// Time taken on the shard.
    pub elapsed: Duration,
}

/// What to rebuild.
#[derive(Copy, Clone, Debug)]
pub(crate) enum RebuildTarget {
    /// Latest state, from the latest usable snapshot (activation).
    Latest,
    /// A past point, from the latest usable snapshot before it.
    At(At),
    /// A past point, from the oldest retained starting point (dry-run replay).
    FromScratch(At),
}

impl RebuildTarget {
    fn at(self) -> At {
        match self {
            RebuildTarget::Latest => At::Latest,
            RebuildTarget::At(a) | RebuildTarget::FromScratch(a) => a,
        }
    }
}

fn fits(at: At, version: u64, timestamp_ms: u64) -> bool {
    match at {
        At::Latest => true,
        At::Version(v) => version <= v,
        At::TimeMs(t) => timestamp_ms <= t,
    }
}

/// A rebuilt state and the bookkeeping an activation needs.
pub(crate) struct Rebuilt<A> {
    pub state: A,
    pub version: u64,
    pub hash: Hash,
    pub snapshot_version: u64,
    pub events_applied: u64,
    pub event_bytes: u64,
    /// (timestamp ms, origin LSN) of the retained snapshots, oldest first (when collected).
    pub snapshots: Vec<(u64, u64)>,
    /// Version of the newest event record in the log (only for [`RebuildTarget::Latest`];
    /// 0 otherwise or when there is none).
    pub last_logged_version: u64,
    /// Origin LSN of the first retained event.
    pub first_event_lsn: Option<u64>,
}

async fn read_record<IO: LogIo>(
    log: &Log<IO>,
    actor: &ActorId,
    lsn: u64,
) -> Result<Record, JournalError> {
    match log.read(lsn).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(JournalError::Missing {
            actor: actor.clone(),
            lsn,
        }),
        Err(source) => Err(JournalError::Read {
            actor: actor.clone(),
            source,
        }),
    }
}

async fn read_chunk<IO: LogIo>(
    log: &Log<IO>,
    actor: &ActorId,
    lsns: &[u64],
) -> Result<Vec<Record>, JournalError> {
    log.read_many(lsns)
        .await
        .map_err(|source| JournalError::Read {
            actor: actor.clone(),
            source,
        })
}

fn decode_event_at(actor: &ActorId, rec: &Record) -> Result<format::EventRecord, JournalError> {
    format::decode_event(&rec.payload).map_err(|source| JournalError::Format {
        actor: actor.clone(),
        lsn: rec.lsn,
        source,
    })
}

/// Decodes a stored event into the current type (upcasting older schema versions).
pub(crate) fn event_from<E: JournalEvent>(
    actor: &ActorId,
    rec: &format::EventRecord,
) -> Result<E, JournalError> {
    let upcast_err = |source| JournalError::Upcast {
        actor: actor.clone(),
        version: rec.version,
        source,
    };
    if rec.schema_version == E::SCHEMA_VERSION {
        postcard::from_bytes(&rec.data).map_err(|e| {
            upcast_err(UpcastError::Decode {
                what: rec.event_type.clone(),
                detail: e.to_string(),
            })
        })
    } else {
        E::upcast(&rec.event_type, rec.schema_version, &rec.data).map_err(upcast_err)
    }
}

fn snapshot_from<A: EventSourced>(snap: &SnapshotRecord) -> Result<A::Snapshot, UpcastError> {
    if snap.schema_version == A::SNAPSHOT_SCHEMA_VERSION {
        postcard::from_bytes(&snap.data).map_err(|e| UpcastError::Decode {
            what: "snapshot".to_owned(),
            detail: e.to_string(),
        })
    } else {
        A::upcast_snapshot(snap.schema_version, &snap.data)
    }
}

/// Rebuilds the state of one actor from its journal on the shard that owns `log`: the latest
/// usable snapshot that fits the target, then the events after it, checking versions and the
/// hash chain. `progress` is called every 10,000 events and at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn rebuild<A: EventSourced, IO: LogIo>(
    log: &Log<IO>,
    actor: &ActorId,
    key: &ActorKey,
    events_key: &[u8],
    snapshots_key: &[u8],
    target: RebuildTarget,
    collect_snapshots: bool,
    progress: &mut dyn FnMut(ReplayProgress),
) -> Result<Rebuilt<A>, JournalError> {
    let at = target.at();
    let event_lsns = log.key_lsns(events_key);
    let snapshot_lsns = log.key_lsns(snapshots_key);
    let first = match event_lsns.first() {
        Some(&lsn) => {
            let rec = read_record(log, actor, lsn).await?;
            Some((decode_event_at(actor, &rec)?.version, rec.origin_lsn))
        }
        None => None,
    };
    let first_version = first.map(|(v, _)| v);
    // Start from scratch only where the events from version 1 are still there.
    let from_scratch_possible = first_version.is_none_or(|v| v == 1);
    let use_snapshots = match target {
        RebuildTarget::FromScratch(_) => !from_scratch_possible,
        _ => true,
    };
    let mut start: Option<(SnapshotRecord, A)> = None;
    let mut snapshots = Vec::new();
    if use_snapshots || collect_snapshots {
        let order: Vec<u64> = match target {
            RebuildTarget::FromScratch(_) => snapshot_lsns.clone(),
            _ => snapshot_lsns.iter().rev().copied().collect(),
        };
        for lsn in order {
            let rec = read_record(log, actor, lsn).await?;
            let snap =
                format::decode_snapshot(&rec.payload).map_err(|source| JournalError::Format {
                    actor: actor.clone(),
                    lsn,
                    source,
                })?;
            if collect_snapshots {
                snapshots.push((snap.timestamp_ms, rec.origin_lsn));
            }
            let reachable = first_version.is_none_or(|v| snap.version + 1 >= v);
            if start.is_none()
                && use_snapshots
                && reachable
                && fits(at, snap.version, snap.timestamp_ms)
            {
                match snapshot_from::<A>(&snap) {
                    Ok(s) => {
                        let state = A::restore(key, s);
                        start = Some((snap, state));
                    }
                    Err(e) => {
                        tracing::warn!(%actor, version = snap.version, error = %e, "snapshot unusable; trying an older one");
                    }
                }
                if !collect_snapshots {
                    break;
                }
            }
        }
    }
    snapshots.sort_unstable_by_key(|&(_, lsn)| lsn);
    let (mut state, mut version, mut hash, snapshot_version) = match start {
        Some((snap, state)) => (state, snap.version, snap.chain_hash, snap.version),
        None => (A::initial(key), 0, GENESIS, 0),
    };
    let mut applied = 0u64;
    let mut bytes = 0u64;
    let mut last_logged_version = 0;
    let mut last_read: Option<(u64, u64)> = None;
    if let Some(v0) = first_version {
        // Events are applied by version, never by position: a quarantined or deleted segment
        // leaves holes in `event_lsns`, so the event after the start is looked up by its
        // version and every later one must follow it without a gap.
        let want = version + 1;
        if v0 > want {
            if matches!(target, RebuildTarget::Latest) {
                return Err(JournalError::VersionGap {
                    actor: actor.clone(),
                    first_missing: want,
                    last_missing: v0 - 1,
                    next_version: v0,
                    lsn: event_lsns[0],
                });
            }
            let last_lsn = *event_lsns
                .last()
                .expect("first_version was read from a non-empty list");
            let last = decode_event_at(actor, &read_record(log, actor, last_lsn).await?)?.version;
            return Err(JournalError::VersionUnavailable {
                actor: actor.clone(),
                version: want,
                first: v0,
                last,
            });
        }
        let start_at = first_at_or_after(log, actor, &event_lsns, v0, want).await?;
        let todo = &event_lsns[start_at..];
        // Versions advance at least as fast as positions, so the events up to version `v`
        // lie within the next `v - version` records.
        let total = match at {
            At::Version(v) => (v.saturating_sub(version) as usize).min(todo.len()),
            _ => todo.len(),
        };
        'chunks: for chunk in todo[..total].chunks(READ_CHUNK_RECORDS) {
            let records = read_chunk(log, actor, chunk).await?;
            for rec in records {
                let lsn = rec.lsn;
                let ev = decode_event_at(actor, &rec)?;
                // A gap is an error even where the target's time would stop here: the
                // missing events may precede it.
                if ev.version > version + 1 {
                    return Err(JournalError::VersionGap {
                        actor: actor.clone(),
                        first_missing: version + 1,
                        last_missing: ev.version - 1,
                        next_version: ev.version,
                        lsn,
                    });
                }
                if ev.version <= version {
                    return Err(JournalError::VersionRepeated {
                        actor: actor.clone(),
                        version: ev.version,
                        previous: version,
                        lsn,
                    });
                }
                if !fits(at, ev.version, ev.timestamp_ms) {
                    break 'chunks;
                }
                last_read = Some((lsn, ev.version));
                if ev.prev_hash != hash {
                    return Err(JournalError::BrokenChain {
                        actor: actor.clone(),
                        version: ev.version,
                        lsn,
                    });
                }
                hash = format::event_hash(events_key, &rec.payload);
                let event: A::Event = event_from(actor, &ev)?;
                state.apply(&event);
                version = ev.version;
                applied += 1;
                bytes += rec.payload.len() as u64;
                if applied.is_multiple_of(10_000) {
                    progress(ReplayProgress {
                        events_applied: applied,
                        events_total: total as u64,
                        version,
                    });
                }
            }
        }
        progress(ReplayProgress {
            events_applied: applied,
            events_total: total as u64,
            version,
        });
        if matches!(target, RebuildTarget::Latest) {
            // The version of the newest event record in the log's index (activation keeps it
            // so that a persist can never write a version already in the log): the last one
            // applied when that was the index's last record, else read.
            last_logged_version = match (last_read, event_lsns.last()) {
                (Some((lsn, v)), Some(&last)) if lsn == last => v,
                (_, Some(&last)) => {
                    decode_event_at(actor, &read_record(log, actor, last).await?)?.version
                }
                (_, None) => 0,
            };
        }
    }
    if let At::Version(v) = at {
        if v > version {
            return Err(JournalError::VersionUnavailable {
                actor: actor.clone(),
                version: v,
                first: first_version.unwrap_or(0),
                last: version,
            });
        }
    }
    Ok(Rebuilt {
        state,
        version,
        hash,
        snapshot_version,
        events_applied: applied,
        event_bytes: bytes,
        last_logged_version,
        snapshots,
        first_event_lsn: first.map(|(_, lsn)| lsn),
    })
}

/// The index in `lsns` (one actor's event records in log order, so in increasing version
/// order, the first of version `v0`) of the first event whose version is ≥ `want`, or
/// `lsns.len()` if there is none. One read when versions are dense (the usual case), else a
/// binary search (O(log n) reads).
async fn first_at_or_after<IO: LogIo>(
    log: &Log<IO>,
    actor: &ActorId,
    lsns: &[u64],
    v0: u64,
    want: u64,
) -> Result<usize, JournalError> {
    debug_assert!(
        v0 <= want,
        "the caller checked that version {want} is reachable"
    );
    // Versions only increase and never skip fewer than one per record, so the version at
    // index i is at least v0 + i: the answer is at most `want - v0`.
    let guess = (want - v0) as usize;
    let (mut lo, mut hi) = (0, lsns.len());
    if guess < lsns.len() {
        let v = decode_event_at(actor, &read_record(log, actor, lsns[guess]).await?)?.version;
        match v.cmp(&want) {
            std::cmp::Ordering::Equal => return Ok(guess),
            std::cmp::Ordering::Greater => hi = guess,
            // Only in a forked stream (a version written twice): look after it (best
            // effort; the rebuild refuses where it meets a repeated version).
            std::cmp::Ordering::Less => lo = guess + 1,
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let v = decode_event_at(actor, &read_record(log, actor, lsns[mid]).await?)?.version;
        if v < want {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Reads and acts on the journals of one node's actors, from any thread.
///
/// Every operation runs on the shard that owns the actor (where its log is), so it sees exactly
/// the durable, acknowledged events; reads never touch the live activation.
#[derive(Clone, Debug)]
pub struct Journal {
    engine: EngineHandle,
}

impl Journal {
    /// The journal of the node behind `engine`.
    pub fn new(engine: EngineHandle) -> Self {
        Journal { engine }
    }

    fn id<A: EventSourced>(key: &ActorKey) -> ActorId {
        ActorId {
            type_name: A::TYPE_NAME,
            key: key.clone(),
        }
    }

    /// The shard of this node whose log holds `id`'s journal: where it lives (it may have
    /// moved, docs/MIGRATION.md, "Journaled actors"), asked of its home shard; its hash shard
    /// if it is homed on another node (an actor moved here from its home node lives on its
    /// hash shard here). `OnOtherNode` if its home placed it on another node.
    async fn owner<A: EventSourced>(
        &self,
        id: &ActorId,
    ) -> Result<quark_shard::ShardId, JournalError> {
        let r = self.engine.actor_ref::<A>(id.key.clone());
        if r.remote_node().is_some() {
            return Ok(self.engine.shard_of(id));
        }
        match r.placement().await {
            Ok(p) if p.node == self.engine.node_id() => Ok(p.shard),
            Ok(p) => Err(JournalError::OnOtherNode {
                actor: id.clone(),
                node: p.node,
            }),
            // A type without a table here, or a node stopping: its hash shard, as before.
            Err(_) => Ok(self.engine.shard_of(id)),
        }
    }

    /// Runs `f(log, actor name, events key, snapshots key)` on the shard owning `(A, key)`.
    async fn on_owner<A, T, F, Fut>(&self, key: ActorKey, f: F) -> Result<T, JournalError>
    where
        A: EventSourced,
        T: Send + 'static,
        F: FnOnce(ShardLog, ActorId, ActorKey, Vec<u8>, Vec<u8>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, JournalError>> + 'static,
    {
        let id = Self::id::<A>(&key);
        let shard = self.owner::<A>(&id).await?;
        let actor = id.clone();
        self.engine
            .spawn_on(shard, move || async move {
                let Some(log) = current_shard_log() else {
                    return Err(JournalError::NoLog);
                };
                let ek = format::stream_key(Stream::Events, A::TYPE_NAME, &key);
                let sk = format::stream_key(Stream::Snapshots, A::TYPE_NAME, &key);
                f(log, actor, key, ek, sk).await
            })
            .await
            .unwrap_or(Err(JournalError::ShardStopped))
    }

    /// The events of `(A, key)` whose versions are in `versions` (retained ones only), in
    /// version order.
    pub async fn events_by_version<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<EventEnvelope<A::Event>>, JournalError> {
        self.read_events::<A>(key.into(), move |ev| versions.contains(&ev.version))
            .await
    }

    /// The events of `(A, key)` persisted within `time` (ms since the epoch, inclusive), in
    /// version order.
    pub async fn events_by_time<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
        time: TimeRange,
    ) -> Result<Vec<EventEnvelope<A::Event>>, JournalError> {
        self.read_events::<A>(key.into(), move |ev| time.contains(&ev.timestamp_ms))
            .await
    }

    async fn read_events<A: EventSourced>(
        &self,
        key: ActorKey,
        keep: impl Fn(&format::EventRecord) -> bool + Send + 'static,
    ) -> Result<Vec<EventEnvelope<A::Event>>, JournalError> {
        self.on_owner::<A, _, _, _>(key, move |log, actor, _key, ek, _sk| async move {
            let mut out = Vec::new();
            for chunk in log.key_lsns(&ek).chunks(READ_CHUNK_RECORDS) {
                let records = read_chunk(&log, &actor, chunk).await?;
                for rec in records {
                    let ev = decode_event_at(&actor, &rec)?;
                    if keep(&ev) {
                        out.push(EventEnvelope {
                            version: ev.version,
                            timestamp_ms: ev.timestamp_ms,
                            event: event_from(&actor, &ev)?,
                            event_type: ev.event_type,
                            schema_version: ev.schema_version,
                            lsn: rec.lsn,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The state of `(A, key)` at `at` (time travel), in its snapshot form, with its version.
    /// Computed from the journal on the owner shard (latest snapshot before `at`, then
    /// events); the live activation is not touched.
    pub async fn state_at<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
        at: At,
    ) -> Result<(A::Snapshot, u64), JournalError> {
        self.on_owner::<A, _, _, _>(key.into(), move |log, actor, key, ek, sk| async move {
            let r = rebuild::<A, _>(
                &log,
                &actor,
                &key,
                &ek,
                &sk,
                RebuildTarget::At(at),
                false,
                &mut |_| {},
            )
            .await?;
            Ok((r.state.snapshot(), r.version))
        })
        .await
    }

    /// Replays `(A, key)` dry: applies its events to a fresh state (from version 1 when those
    /// events are retained, else from the oldest usable snapshot) up to `to`, calling
    /// `on_progress` on the owner shard every 10,000 events. Nothing is written and the live
    /// activation is not touched.
    pub async fn replay<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
        to: At,
        mut on_progress: impl FnMut(ReplayProgress) + Send + 'static,
    ) -> Result<ReplayReport<A::Snapshot>, JournalError> {
        self.on_owner::<A, _, _, _>(key.into(), move |log, actor, key, ek, sk| async move {
            let started = Instant::now();
            let r = rebuild::<A, _>(
                &log,
                &actor,
                &key,
                &ek,
                &sk,
                RebuildTarget::FromScratch(to),
                false,
                &mut on_progress,
            )
            .await?;
            Ok(ReplayReport {
                state: r.state.snapshot(),
                version: r.version,
                from_snapshot: r.snapshot_version,
                events_applied: r.events_applied,
                elapsed: started.elapsed(),
            })
        })
        .await
    }

    /// Appends `events` to `(A, key)` from outside the actor, only if the actor is at
    /// `expected_version` (optimistic concurrency): otherwise fails with
    /// [`PersistError::VersionConflict`] naming both versions. Runs as a turn of the actor, so
    /// its live state applies the events too.
    pub async fn append<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
        expected_version: u64,
        events: Vec<A::Event>,
    ) -> Result<Persisted, PersistError> {
        let actor = self.engine.actor_ref::<A>(key);
        actor
            .ask(Invoke::new(
                move |state: &mut A, ctx: &Context<A>| -> InvokeFuture<'_, _> {
                    Box::pin(persist_events(ctx, state, events, Some(expected_version)))
                },
            ))
            .await?
    }

    /// The current version of `(A, key)` (activates it).
    pub async fn version<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
    ) -> Result<u64, PersistError> {
        let actor = self.engine.actor_ref::<A>(key);
        let info = actor
            .ask(Invoke::new(
                |_: &mut A, ctx: &Context<A>| -> InvokeFuture<'_, _> {
                    Box::pin(std::future::ready(stream_info(ctx).map(|(_, _, v)| v)))
                },
            ))
            .await?;
        Ok(info.unwrap_or(0))
    }

    /// Erases the whole stream of `(A, key)` (events and snapshots): appends truncation
    /// records that supersede every record of its two keys, resets the live activation to
    /// [`EventSourced::initial`] at version 0, then scrubs the owner shard's log so that no
    /// segment file holds the erased bytes any more (see `docs/JOURNALING.md`). The actor
    /// id itself stays in the truncation records.
    ///
    /// An actor whose journal cannot be loaded (its activation fails, e.g. on a
    /// [`JournalError::VersionGap`]) has no live activation: its stream is then truncated on
    /// the owner shard directly, and its next activation starts from version 0. This is how an
    /// operator gives up a stream whose missing events cannot be restored.
    ///
    /// Errors say how far it got ([`EraseError`]): nothing changed (`Call`, `NotRun`,
    /// `Append`), or erased but not scrubbed (`Scrub`, `ScrubNotRun`: call `erase` again).
    pub async fn erase<A: EventSourced>(
        &self,
        key: impl Into<ActorKey>,
    ) -> Result<EraseReport, EraseError> {
        let key = key.into();
        let id = Self::id::<A>(&key);
        let actor = self.engine.actor_ref::<A>(key.clone());
        let live = actor
            .ask(Invoke::new(
                |state: &mut A, ctx: &Context<A>| -> InvokeFuture<'_, _> {
                    Box::pin(async move {
                        let Some(log) = ctx.log() else {
                            return Err(JournalError::NoLog);
                        };
                        let Some((ek, sk, _)) = stream_info(ctx) else {
                            return Err(JournalError::NoLog);
                        };
                        let (records, floor) = truncate_stream(log, &ek, &sk).await?;
                        *state = A::initial(&ctx.id().key);
                        reset_after_erase(ctx, floor);
                        Ok(records)
                    })
                },
            ))
            .await;
        let erased = match live {
            Ok(r) => r,
            // Not loadable, so not live: nothing to reset, truncate where the log is. (A
            // message racing this activates either before the truncation, and fails as
            // before, or after it, from version 0.)
            Err(crate::CallError::ActivationFailed { .. }) => {
                self.on_owner::<A, _, _, _>(key.clone(), |log, _, _, ek, sk| async move {
                    Ok(truncate_stream(&log, &ek, &sk).await?.0)
                })
                .await
            }
            Err(source) => return Err(EraseError::Call { actor: id, source }),
        };
        let erased = erased.map_err(|e| EraseError::truncation(id.clone(), e))?;
        let scrub = self
            .on_owner::<A, _, _, _>(key, |log, _, _, _, _| async move { Ok(log.scrub().await) })
            .await
            .map_err(|source| EraseError::ScrubNotRun {
                actor: id.clone(),
                source,
            })?
            .map_err(|source| EraseError::Scrub {
                actor: id.clone(),
                source,
            })?;
        Ok(EraseReport {
            records_erased: erased,
            segments_rewritten: scrub.segments_rewritten as u64,
        })
    }
}

/// Appends truncation records superseding every record of an actor's two streams; returns
/// the number of live records they superseded and the truncation floor (LSN).
async fn truncate_stream(
    log: &ShardLog,
    events_key: &[u8],
    snapshots_key: &[u8],
) -> Result<(u64, u64), JournalError> {
    let records = (log.key_lsns(events_key).len() + log.key_lsns(snapshots_key).len()) as u64;
    let floor = log.stats().next_lsn;
    let mut batch = Batch::new();
    batch
        .truncate(events_key, floor)
        .truncate(snapshots_key, floor);
    log.append(&batch)
        .await
        .map_err(|source| JournalError::Append { source })?;
    Ok((records, floor))
}

/// What [`Journal::erase`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EraseReport {
    /// Live records (events and snapshots) the erasure superseded.
    pub records_erased: u64,
    /// Segment files the scrub rewrote.
    pub segments_rewritten: u64,
}
