//! The live side of journaling: loading an activation from the journal, and persisting a
//! turn's events.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;

use quark_persist::{Batch, Log, LogIo, NewRecord, RecordKind};
use quark_placement::{ActorId, ActorKey};
use quark_shard::ActorType;

use super::format::{self, Hash, Stream, GENESIS};
use super::reader::{rebuild, RebuildTarget};
use super::{
    now_ms, EventSourced, JournalEvent, JournalPolicy, LogPosition, PersistError, Persisted,
};
use crate::Context;

/// Per-activation journal bookkeeping, kept in the activation's [`Context::extension`] slot.
#[derive(Default)]
pub(crate) struct JournalState {
    /// Set by the loader; `persist` refuses otherwise.
    pub loaded: bool,
    pub policy: JournalPolicy,
    pub events_key: Vec<u8>,
    pub snapshots_key: Vec<u8>,
    /// Events applied (the actor's version).
    pub version: u64,
    /// The highest version of this actor's events in the log (read at load, raised by each
    /// persist). A persist writes only versions above it: no version is ever written twice.
    pub logged_version: u64,
    /// Chain hash of the event at `version` ([`GENESIS`] at 0).
    pub last_hash: Hash,
    /// Version of the latest snapshot (0 = none).
    pub snapshot_version: u64,
    pub since_snapshot_events: u64,
    pub since_snapshot_bytes: u64,
    /// Retained snapshots newer than the retention floor: (timestamp ms, LSN), oldest first.
    pub snapshots: VecDeque<(u64, u64)>,
    /// Records of this actor below this LSN are already truncated (or being truncated).
    pub floor_lsn: u64,
    /// A persist was submitted and has not completed (set while the append is in flight; still
    /// set if its future was dropped, in which case the live state may be behind the log).
    pub in_flight: bool,
}

impl JournalState {
    /// The retention floor to append with the next batch, if a snapshot aged past the policy.
    fn due_truncation(&mut self, now_ms: u64) -> Option<u64> {
        let age = self.policy.retention_age?.as_millis() as u64;
        let cutoff = now_ms.saturating_sub(age);
        let mut floor = None;
        while let Some(&(ts, lsn)) = self.snapshots.front() {
            if ts > cutoff {
                break;
            }
            floor = Some(lsn);
            self.snapshots.pop_front();
        }
        floor.filter(|&f| f > self.floor_lsn)
    }

    fn snapshot_due(&self) -> bool {
        self.version > self.snapshot_version
            && (self
                .policy
                .snapshot_every_events
                .is_some_and(|n| self.since_snapshot_events >= n)
                || self
                    .policy
                    .snapshot_every_bytes
                    .is_some_and(|n| self.since_snapshot_bytes >= n))
    }
}

/// The [`ActorType`] of an event-sourced actor: activations are built from the journal (latest
/// snapshot, then the events after it, checking their hash chain) under `policy`.
///
/// Without a log (no `[log]` section) activations start from [`EventSourced::initial`] and
/// every `persist` fails with [`PersistError::NoLog`].
///
/// Its activations may move (`Node::migrate` between shards, `Node::migrate_to_node` between
/// nodes): the journal's records (events and snapshots, hash chain and all) move as log
/// records (`ActorType::moves_with_log`), durably at the new place before the home records
/// it, as a durable-state actor's do (docs/MIGRATION.md, "Journaled actors").
pub fn journaled<A: EventSourced>(policy: JournalPolicy) -> ActorType<A> {
    ActorType::loaded(move |ctx| Box::pin(load::<A>(ctx, policy))).moves_with_log(journal_keys::<A>)
}

/// The log keys of an event-sourced actor that move with it: its events and its snapshots.
fn journal_keys<A: EventSourced>(id: &ActorId) -> Vec<Vec<u8>> {
    vec![
        format::stream_key(Stream::Events, A::TYPE_NAME, &id.key),
        format::stream_key(Stream::Snapshots, A::TYPE_NAME, &id.key),
    ]
}

async fn load<A: EventSourced>(
    ctx: &Context<A>,
    policy: JournalPolicy,
) -> Result<A, quark_shard::LoadError> {
    let Some(log) = ctx.log() else {
        let key = &ctx.id().key;
        ctx.extension(|s: &mut JournalState| {
            *s = JournalState {
                loaded: true,
                policy,
                events_key: format::stream_key(Stream::Events, A::TYPE_NAME, key),
                snapshots_key: format::stream_key(Stream::Snapshots, A::TYPE_NAME, key),
                ..JournalState::default()
            }
        });
        return Ok(A::initial(key));
    };
    let (state, journal) = load_from::<A, _>(log, ctx.id(), policy).await?;
    ctx.extension(|s: &mut JournalState| *s = journal);
    Ok(state)
}

/// Rebuilds the actor `actor` from its journal in `log` (the latest snapshot, then the events
/// after it) and returns its state with the bookkeeping its persists continue from.
async fn load_from<A: EventSourced, IO: LogIo>(
    log: &Log<IO>,
    actor: &ActorId,
    policy: JournalPolicy,
) -> Result<(A, JournalState), quark_shard::LoadError> {
    let key = &actor.key;
    let events_key = format::stream_key(Stream::Events, A::TYPE_NAME, key);
    let snapshots_key = format::stream_key(Stream::Snapshots, A::TYPE_NAME, key);
    let rebuilt = rebuild::<A, IO>(
        log,
        actor,
        key,
        &events_key,
        &snapshots_key,
        RebuildTarget::Latest,
        policy.retention_age.is_some(),
        &mut |_| {},
    )
    .await?;
    // The rebuild applies every event after its snapshot by version and refuses a gap, so it
    // ends at the newest event in the log.
    if rebuilt.last_logged_version > rebuilt.version {
        return Err(format!(
            "actor {actor}: rebuilt to version {} but the log holds version {}; refusing to load \
             (a persist would write a version twice)",
            rebuilt.version, rebuilt.last_logged_version
        )
        .into());
    }
    let floor_lsn = rebuilt.first_event_lsn.unwrap_or(0);
    let journal = JournalState {
        loaded: true,
        policy,
        events_key,
        snapshots_key,
        version: rebuilt.version,
        logged_version: rebuilt.last_logged_version,
        last_hash: rebuilt.hash,
        snapshot_version: rebuilt.snapshot_version,
        since_snapshot_events: rebuilt.events_applied,
        since_snapshot_bytes: rebuilt.event_bytes,
        snapshots: rebuilt.snapshots.into(),
        floor_lsn,
        in_flight: false,
    };
    Ok((rebuilt.state, journal))
}

/// One actor's journal on any [`Log`], outside a node: the loader and the batch builder that
/// activations use, without the shard. For tests that run the journal on another log than the
/// shard's io_uring one, such as the simulated disk of `quark_persist::sim` (the power-loss
/// test, `runtime/tests/journal_power_loss.rs`). Not a way to write to a node's journal: use
/// [`Persist::persist`] or `Journal::append`.
#[doc(hidden)]
pub struct StreamJournal<A: EventSourced> {
    actor: ActorId,
    state: JournalState,
    _actor: PhantomData<fn() -> A>,
}

/// A batch built by [`StreamJournal::build`], to append to the log.
#[doc(hidden)]
pub struct StreamBatch(BuiltBatch);

impl StreamBatch {
    /// The records and truncations to append, as one atomic batch.
    pub fn batch(&self) -> &Batch {
        &self.0.batch
    }

    /// The batch starts with a snapshot (of the state before its events).
    pub fn has_snapshot(&self) -> bool {
        self.0.snapshot
    }

    /// The number of events in the batch.
    pub fn events(&self) -> u64 {
        self.0.events
    }
}

impl<A: EventSourced> StreamJournal<A> {
    /// Loads the actor with `key` from `log` exactly as an activation does.
    pub async fn load<IO: LogIo>(
        log: &Log<IO>,
        key: ActorKey,
        policy: JournalPolicy,
    ) -> Result<(A, Self), quark_shard::LoadError> {
        let actor = ActorId::new(A::TYPE_NAME, key);
        let (state, journal) = load_from::<A, IO>(log, &actor, policy).await?;
        Ok((
            state,
            Self {
                actor,
                state: journal,
                _actor: PhantomData,
            },
        ))
    }

    /// The batch a persist of `events` after `state` (the actor at [`StreamJournal::version`])
    /// appends, stamped `now_ms`. Once it is durable, call [`StreamJournal::acknowledge`] and
    /// apply the events to `state`.
    pub fn build(
        &mut self,
        state: &A,
        events: &[A::Event],
        now_ms: u64,
    ) -> Result<StreamBatch, PersistError> {
        self.state
            .build_batch(&self.actor, state, events, now_ms)
            .map(StreamBatch)
    }

    /// Records that `batch` is durable, starting at LSN `first_lsn`.
    pub fn acknowledge(&mut self, batch: &StreamBatch, first_lsn: u64) {
        self.state.acknowledge(&batch.0, first_lsn);
    }

    /// The actor's version (events applied).
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The version of the latest snapshot (0 = none).
    pub fn snapshot_version(&self) -> u64 {
        self.state.snapshot_version
    }
}

/// Persisting events from an event-sourced actor's handler.
pub trait Persist<A: EventSourced> {
    /// Appends `events` to the shard's log as one atomic batch, waits until it is durable under
    /// the log's fsync policy, then applies them to `state` in order and returns the new
    /// version. Pass the handler's `self` as `state` (the context cannot hold it: the handler
    /// borrows it).
    ///
    /// On error nothing is applied and the actor's version is unchanged. If a snapshot is due
    /// under the type's [`JournalPolicy`], the state *before* these events is stored in the
    /// same batch (no extra write).
    ///
    /// Cancel safety: if the future is dropped after the batch was submitted, the events may
    /// become durable without being applied to this activation. The next `persist` of the
    /// activation then fails with [`PersistError::Interrupted`] and the activation is
    /// deactivated, so it is rebuilt from the log on its next message. Do not race it in a
    /// `select`.
    fn persist<I>(
        &self,
        state: &mut A,
        events: I,
    ) -> impl Future<Output = Result<Persisted, PersistError>>
    where
        I: IntoIterator<Item = A::Event>;
}

impl<A: EventSourced> Persist<A> for Context<A> {
    async fn persist<I>(&self, state: &mut A, events: I) -> Result<Persisted, PersistError>
    where
        I: IntoIterator<Item = A::Event>,
    {
        persist_events(self, state, events.into_iter().collect(), None).await
    }
}

/// Persists `events` for the activation of `ctx`; with `expected`, only if the actor is at
/// that version.
pub(crate) async fn persist_events<A: EventSourced>(
    ctx: &Context<A>,
    state: &mut A,
    events: Vec<A::Event>,
    expected: Option<u64>,
) -> Result<Persisted, PersistError> {
    let actor = || ctx.id().clone();
    let Some(log) = ctx.log() else {
        return Err(PersistError::NoLog { actor: actor() });
    };
    let now = now_ms();
    // Build the batch from the bookkeeping without holding the extension across the await.
    let built = ctx.extension(|s: &mut JournalState| {
        if !s.loaded {
            return Err(PersistError::NotJournaled { actor: actor() });
        }
        if s.in_flight {
            return Err(PersistError::Interrupted { actor: actor() });
        }
        if let Some(expected) = expected {
            if expected != s.version {
                return Err(PersistError::VersionConflict {
                    actor: actor(),
                    expected,
                    actual: s.version,
                });
            }
        }
        let built = s.build_batch(ctx.id(), &*state, &events, now)?;
        s.in_flight = true;
        Ok(built)
    });
    let built = match built {
        Err(PersistError::Interrupted { actor }) => {
            // The abandoned batch is queued in the log: have it written (and acknowledged) now,
            // so the reloaded activation sees it and no version is ever written twice.
            if let Err(e) = log.sync().await {
                tracing::error!(%actor, error = %e, "flushing an abandoned persist failed");
            }
            ctx.deactivate_when_idle();
            return Err(PersistError::Interrupted { actor });
        }
        other => other?,
    };
    let mut built = built;
    let version = built.version;
    let n = built.events;
    // The turn's durable messages and inbox receipt ride in the same batch (docs/OUTBOX.md).
    let staged = crate::outbox::stage_into(ctx, &mut built.batch);
    if built.batch.is_empty() {
        ctx.extension(|s: &mut JournalState| s.in_flight = false);
        return Ok(Persisted {
            first_version: version,
            version,
            position: LogPosition {
                shard: ctx.shard(),
                lsn: log.stats().acked_lsn,
            },
        });
    }
    let appended = log.append(&built.batch).await;
    ctx.extension(|s: &mut JournalState| s.in_flight = false);
    match &appended {
        Ok(range) => crate::outbox::committed(ctx, staged, range),
        Err(_) => crate::outbox::aborted(ctx, staged),
    }
    let range = appended.map_err(|source| PersistError::Append {
        actor: actor(),
        source,
    })?;
    for e in &events {
        state.apply(e);
    }
    ctx.extension(|s: &mut JournalState| s.acknowledge(&built, range.first));
    crate::admin::journal_persisted(n, built.snapshot);
    Ok(Persisted {
        first_version: version + n.min(1),
        version: version + n,
        position: LogPosition {
            shard: ctx.shard(),
            lsn: range.end,
        },
    })
}

/// A journal batch built from an activation's bookkeeping, not yet appended.
pub(crate) struct BuiltBatch {
    pub batch: Batch,
    /// The batch starts with a snapshot of the state at `version`.
    pub snapshot: bool,
    /// The retention floor the batch truncates the actor's streams to.
    pub truncate: Option<u64>,
    /// Chain hash of the batch's last event (the bookkeeping's hash if it has none).
    pub hash: Hash,
    pub event_bytes: u64,
    /// The actor's version before the batch.
    pub version: u64,
    /// Number of events in the batch.
    pub events: u64,
    /// The timestamp written into the batch's records.
    pub now_ms: u64,
}

impl JournalState {
    /// Builds the batch that persists `events` after `state` (the actor at `self.version`):
    /// a snapshot of `state` first if one is due under the policy, the retention floor if a
    /// snapshot aged past it, then the events with versions `version + 1 ..` chained to
    /// `last_hash`. The whole turn is one batch, so it is durable all or nothing. Only the
    /// retention queue (`snapshots`) changes here; [`JournalState::acknowledge`] applies the
    /// rest once the batch is durable.
    pub(crate) fn build_batch<A: EventSourced>(
        &mut self,
        actor: &ActorId,
        state: &A,
        events: &[A::Event],
        now: u64,
    ) -> Result<BuiltBatch, PersistError> {
        // Never write a version the log already holds (that would fork the stream).
        assert!(
            self.version >= self.logged_version,
            "actor {actor}: persisting after version {} but the log already holds version {}",
            self.version,
            self.logged_version
        );
        let mut batch = Batch::new();
        let snapshot = self.snapshot_due();
        if snapshot {
            let data =
                postcard::to_allocvec(&state.snapshot()).map_err(|e| PersistError::Encode {
                    actor: actor.clone(),
                    event_type: "snapshot",
                    detail: e.to_string(),
                })?;
            let mut payload = Vec::new();
            format::encode_snapshot(
                &mut payload,
                A::SNAPSHOT_SCHEMA_VERSION,
                self.version,
                now,
                &self.last_hash,
                &data,
            );
            batch.push(NewRecord {
                kind: RecordKind::Event,
                key: self.snapshots_key.clone(),
                payload,
                expires_at_ms: None,
            });
        }
        let truncate = self.due_truncation(now);
        if let Some(floor) = truncate {
            batch.truncate(&self.events_key, floor);
            batch.truncate(&self.snapshots_key, floor);
        }
        let mut hash = self.last_hash;
        let mut event_bytes = 0u64;
        for (i, e) in events.iter().enumerate() {
            let data = postcard::to_allocvec(e).map_err(|err| PersistError::Encode {
                actor: actor.clone(),
                event_type: e.type_name(),
                detail: err.to_string(),
            })?;
            let mut payload = Vec::with_capacity(64 + data.len());
            format::encode_event(
                &mut payload,
                A::Event::SCHEMA_VERSION,
                self.version + 1 + i as u64,
                now,
                e.type_name(),
                &data,
                &hash,
            );
            hash = format::event_hash(&self.events_key, &payload);
            event_bytes += payload.len() as u64;
            batch.push(NewRecord {
                kind: RecordKind::Event,
                key: self.events_key.clone(),
                payload,
                expires_at_ms: None,
            });
        }
        Ok(BuiltBatch {
            batch,
            snapshot,
            truncate,
            hash,
            event_bytes,
            version: self.version,
            events: events.len() as u64,
            now_ms: now,
        })
    }

    /// Applies a durable batch to the bookkeeping; `first_lsn` is where the batch starts in
    /// the log.
    pub(crate) fn acknowledge(&mut self, built: &BuiltBatch, first_lsn: u64) {
        let n = built.events;
        debug_assert_eq!(
            self.version, built.version,
            "one persist at a time per activation"
        );
        self.version += n;
        self.logged_version = self.logged_version.max(self.version);
        self.last_hash = built.hash;
        if built.snapshot {
            self.snapshot_version = built.version;
            self.since_snapshot_events = n;
            self.since_snapshot_bytes = built.event_bytes;
            self.snapshots.push_back((built.now_ms, first_lsn));
        } else {
            self.since_snapshot_events += n;
            self.since_snapshot_bytes += built.event_bytes;
        }
        if let Some(floor) = built.truncate {
            self.floor_lsn = floor;
        }
    }
}

/// Resets the activation's journal bookkeeping after its stream was erased.
pub(crate) fn reset_after_erase<A: EventSourced>(ctx: &Context<A>, floor: u64) {
    ctx.extension(|s: &mut JournalState| {
        s.version = 0;
        s.logged_version = 0;
        s.last_hash = GENESIS;
        s.snapshot_version = 0;
        s.since_snapshot_events = 0;
        s.since_snapshot_bytes = 0;
        s.snapshots.clear();
        s.floor_lsn = floor;
    });
}

/// The journal keys and version of a loaded activation.
pub(crate) fn stream_info<A: EventSourced>(ctx: &Context<A>) -> Option<(Vec<u8>, Vec<u8>, u64)> {
    ctx.extension(|s: &mut JournalState| {
        s.loaded
            .then(|| (s.events_key.clone(), s.snapshots_key.clone(), s.version))
    })
}
