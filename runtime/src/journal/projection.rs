//! Projections (CQRS read models) fed from every shard's journal.
//!
//! A [`Projection`] names the event-sourced actor types it consumes and folds their events
//! into a read model ([`Projection::State`]). It runs as one virtual actor per projection;
//! each shard runs a *feeder* task that tails its own log from the projection's checkpoint for
//! that shard and sends the matching events, in that shard's log order, in batches. The
//! projection applies a batch and then stores its whole state together with the per-shard
//! checkpoints in one log record, so the read model and its checkpoints advance atomically:
//! after a crash it resumes from the last stored batch and no event's effect is lost or
//! applied twice. (Delivery is at least once; the checkpoint makes the effect once.)

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use quark_persist::{Batch, NewRecord, RecordKind, FLAG_FORWARDED};
use quark_shard::{
    current_shard_log, ActorType, EngineHandle, Invoke, InvokeFuture, LoadError, ShardId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::format::{self, EventRecord, Stream};
use super::reader::event_from;
use super::{EventSourced, JournalError, LogPosition};
use crate::{Actor, ActorId, ActorKey, CallError, Context, Handler, Message};

/// A read model built from the events of one or more event-sourced actor types.
///
/// ```
/// use quark::journal::{EventMeta, Projection, Subscriptions};
/// # use quark::journal::{EventSourced, JournalEvent};
/// # use quark::{Actor, ActorKey};
/// # #[derive(Default)] struct Account { balance: i64 }
/// # impl Actor for Account { const TYPE_NAME: &'static str = "account"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Deposited(i64);
/// # impl JournalEvent for Deposited { fn type_name(&self) -> &'static str { "Deposited" } }
/// # impl EventSourced for Account {
/// #     type Event = Deposited; type Snapshot = i64;
/// #     fn initial(_: &ActorKey) -> Self { Account::default() }
/// #     fn apply(&mut self, e: &Deposited) { self.balance += e.0 }
/// #     fn snapshot(&self) -> i64 { self.balance }
/// #     fn restore(_: &ActorKey, b: i64) -> Self { Account { balance: b } }
/// # }
/// struct TotalDeposits;
/// impl Projection for TotalDeposits {
///     const NAME: &'static str = "total-deposits";
///     type State = i64;
///     fn subscriptions() -> Subscriptions<Self> {
///         Subscriptions::new().on::<Account>(|total: &mut i64, _meta: &EventMeta, e: &Deposited| *total += e.0)
///     }
/// }
/// ```
pub trait Projection: Sized + 'static {
    /// A stable name: the projection's actor type name and the key of its stored state.
    const NAME: &'static str;
    /// The read model; stored whole (postcard) with the checkpoints after every batch, so keep
    /// it compact.
    type State: Serialize + DeserializeOwned + Default + 'static;
    /// The actor types consumed and how each event changes the read model.
    fn subscriptions() -> Subscriptions<Self>;
}

/// Where an event came from, as a projection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// The actor type.
    pub type_name: &'static str,
    /// The actor's key.
    pub key: ActorKey,
    /// The actor's version after the event.
    pub version: u64,
    /// When it was persisted (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The shard whose log holds it.
    pub shard: ShardId,
    /// Its LSN in that log.
    pub lsn: u64,
}

type Decoded<S> = Box<dyn FnOnce(&mut S, &EventMeta)>;
type DecodeFn<S> =
    Box<dyn Fn(&ActorId, &EventRecord) -> Result<Decoded<S>, JournalError> + Send + Sync>;

/// The event handlers of a [`Projection`], one per consumed actor type.
pub struct Subscriptions<P: Projection> {
    handlers: Vec<(&'static str, DecodeFn<P::State>)>,
    _p: PhantomData<fn() -> P>,
}

impl<P: Projection> Default for Subscriptions<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Projection> Subscriptions<P> {
    /// No subscriptions yet.
    pub fn new() -> Self {
        Subscriptions {
            handlers: Vec::new(),
            _p: PhantomData,
        }
    }

    /// Consumes the events of actor type `A` with `f` (which must not fail: a stored event
    /// that does not decode stops the projection before it changes anything; see
    /// `docs/JOURNALING.md`).
    pub fn on<A: EventSourced>(
        mut self,
        f: impl Fn(&mut P::State, &EventMeta, &A::Event) + Send + Sync + 'static,
    ) -> Self {
        let f = std::sync::Arc::new(f);
        self.handlers.push((
            A::TYPE_NAME,
            Box::new(move |actor: &ActorId, rec: &EventRecord| {
                let event: A::Event = event_from(actor, rec)?;
                let f = f.clone();
                Ok(
                    Box::new(move |s: &mut P::State, m: &EventMeta| f(s, m, &event))
                        as Decoded<P::State>,
                )
            }),
        ));
        self
    }

    fn names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|(n, _)| *n).collect()
    }
}

/// How a projection is fed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProjectionConfig {
    /// How long a feeder that reached the end of its shard's log waits before looking again
    /// (the bound on how stale the read model is when the log is quiet). Default 2 ms.
    pub poll_interval: Duration,
    /// Events per batch sent to the projection (one stored state per batch). Default 1,024.
    pub batch_events_max: usize,
    /// Wait before a feeder retries a batch the projection refused. Default 200 ms.
    pub retry_interval: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            poll_interval: Duration::from_millis(2),
            batch_events_max: 1024,
            retry_interval: Duration::from_millis(200),
        }
    }
}

/// Why a projection call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The projection did not reach the position within the deadline.
    #[error("projection {name} did not reach {position:?} within {timeout:?} (it is at LSN {reached} on shard {})", position.shard)]
    Timeout {
        /// The projection.
        name: &'static str,
        /// The position waited for.
        position: LogPosition,
        /// The projection's position on that shard when the deadline passed.
        reached: u64,
        /// The deadline.
        timeout: Duration,
    },
    /// The call to the projection's actor failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The projection could not store its state.
    #[error("projection {name}: storing its state failed: {detail}")]
    Store {
        /// The projection.
        name: &'static str,
        /// The log's message.
        detail: String,
    },
    /// A stored event could not be decoded; the projection stops at it.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The node stopped first.
    #[error("the node stopped")]
    Stopped,
}

/// The stored state of a projection: its read model and per-shard checkpoints.
// Format (payload of the projection's record, key "qp" + name, kind Snapshot):
//   { format u8 = 1 | shard_count u16 | checkpoint u64 × shard_count | state (postcard) }
fn encode_state<S: Serialize>(checkpoints: &[u64], state: &S) -> Result<Vec<u8>, String> {
    let data = postcard::to_allocvec(state).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(3 + checkpoints.len() * 8 + data.len());
    out.push(1);
    out.extend_from_slice(&(checkpoints.len() as u16).to_le_bytes());
    for c in checkpoints {
        out.extend_from_slice(&c.to_le_bytes());
    }
    out.extend_from_slice(&data);
    Ok(out)
}

fn decode_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<(Vec<u64>, S), String> {
    if bytes.len() < 3 || bytes[0] != 1 {
        return Err("unknown projection state format".into());
    }
    let n = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
    let end = 3 + n * 8;
    if bytes.len() < end {
        return Err("projection state truncated".into());
    }
    let checkpoints = bytes[3..end]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    let state = postcard::from_bytes(&bytes[end..]).map_err(|e| e.to_string())?;
    Ok((checkpoints, state))
}

fn state_key(name: &str) -> Vec<u8> {
    let mut k = b"qp".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The actor that holds a projection's read model (one per projection, key 0).
pub struct ProjectionActor<P: Projection> {
    state: P::State,
    /// Durable per-shard checkpoints (next LSN to read), stored with `state`.
    checkpoints: Vec<u64>,
    /// Per-shard positions the projection has seen (≥ checkpoints: records after the
    /// checkpoint that matched nothing need not be stored).
    reached: Vec<u64>,
    waiters: Vec<(LogPosition, futures::channel::oneshot::Sender<()>)>,
    subscriptions: Subscriptions<P>,
    /// Set when storing failed: the in-memory state may be ahead of the stored one, so the
    /// activation refuses batches until it is reloaded.
    poisoned: bool,
}

impl<P: Projection> Actor for ProjectionActor<P> {
    const TYPE_NAME: &'static str = P::NAME;
}

impl<P: Projection> ProjectionActor<P> {
    fn complete_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            let (pos, _) = &self.waiters[i];
            if self
                .reached
                .get(usize::from(pos.shard))
                .is_some_and(|&r| r >= pos.lsn)
            {
                let (_, tx) = self.waiters.swap_remove(i);
                let _ = tx.send(());
            } else {
                i += 1;
            }
        }
    }
}

async fn load_projection<P: Projection>(
    ctx: &Context<ProjectionActor<P>>,
) -> Result<ProjectionActor<P>, LoadError> {
    let shards = usize::from(ctx.engine().shard_count());
    let Some(log) = ctx.log() else {
        return Err(format!(
            "projection {} needs a log (configure [log] data_dir)",
            P::NAME
        )
        .into());
    };
    let key = state_key(P::NAME);
    let (mut checkpoints, state) = match log.key_lsns(&key).last() {
        None => (Vec::new(), P::State::default()),
        Some(&lsn) => {
            let rec = log
                .read(lsn)
                .await?
                .ok_or_else(|| format!("projection {} state record {lsn} vanished", P::NAME))?;
            decode_state::<P::State>(&rec.payload)
                .map_err(|e| format!("projection {} state at LSN {lsn}: {e}", P::NAME))?
        }
    };
    checkpoints.resize(shards, 0);
    Ok(ProjectionActor {
        state,
        reached: checkpoints.clone(),
        checkpoints,
        waiters: Vec::new(),
        subscriptions: P::subscriptions(),
        poisoned: false,
    })
}

/// One matching event read by a feeder.
#[derive(Clone)]
struct FeedItem {
    lsn: u64,
    type_idx: u16,
    key: ActorKey,
    payload: Vec<u8>,
}

/// A feeder's batch: the events of one shard's log in `[from, end_lsn)` that match.
struct Feed {
    shard: ShardId,
    items: Vec<FeedItem>,
    end_lsn: u64,
}

impl Message for Feed {
    type Reply = Result<(), ProjectionError>;
}

impl<P: Projection> Handler<Feed> for ProjectionActor<P> {
    async fn handle(&mut self, feed: Feed, ctx: &Context<Self>) -> Result<(), ProjectionError> {
        let shard = usize::from(feed.shard);
        if self.poisoned {
            return Err(ProjectionError::Store {
                name: P::NAME,
                detail: "an earlier store failed; the projection reloads when idle".into(),
            });
        }
        if shard >= self.checkpoints.len() {
            return Ok(());
        }
        let checkpoint = self.checkpoints[shard];
        if !feed.items.is_empty() {
            // Decode everything first: a bad event changes nothing.
            let mut decoded = Vec::with_capacity(feed.items.len());
            for item in feed.items.iter().filter(|i| i.lsn >= checkpoint) {
                let (name, decode) = &self.subscriptions.handlers[usize::from(item.type_idx)];
                let actor = ActorId::new(name, item.key.clone());
                let rec =
                    format::decode_event(&item.payload).map_err(|source| JournalError::Format {
                        actor: actor.clone(),
                        lsn: item.lsn,
                        source,
                    })?;
                let meta = EventMeta {
                    type_name: name,
                    key: item.key.clone(),
                    version: rec.version,
                    timestamp_ms: rec.timestamp_ms,
                    shard: feed.shard,
                    lsn: item.lsn,
                };
                decoded.push((decode(&actor, &rec)?, meta));
            }
            for (apply, meta) in decoded {
                apply(&mut self.state, &meta);
            }
            let mut checkpoints = self.checkpoints.clone();
            checkpoints[shard] = checkpoints[shard].max(feed.end_lsn);
            let stored = match (ctx.log(), encode_state(&checkpoints, &self.state)) {
                (Some(log), Ok(payload)) => {
                    let mut batch = Batch::new();
                    batch.push(NewRecord {
                        kind: RecordKind::Snapshot,
                        key: state_key(P::NAME),
                        payload,
                        expires_at_ms: None,
                    });
                    log.append(&batch)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                (None, _) => Err("no log".to_owned()),
                (_, Err(e)) => Err(e),
            };
            if let Err(detail) = stored {
                self.poisoned = true;
                ctx.deactivate_when_idle();
                return Err(ProjectionError::Store {
                    name: P::NAME,
                    detail,
                });
            }
            self.checkpoints = checkpoints;
        }
        self.reached[shard] = self.reached[shard].max(feed.end_lsn);
        self.complete_waiters();
        Ok(())
    }
}

/// A feeder asks where to start on its shard.
struct CheckpointOf(ShardId);

impl Message for CheckpointOf {
    type Reply = u64;
}

impl<P: Projection> Handler<CheckpointOf> for ProjectionActor<P> {
    async fn handle(&mut self, m: CheckpointOf, _: &Context<Self>) -> u64 {
        self.checkpoints.get(usize::from(m.0)).copied().unwrap_or(0)
    }
}

/// Registers a waiter for a position; `None` when already reached.
struct WaitFor(LogPosition);

impl Message for WaitFor {
    type Reply = Result<Option<futures::channel::oneshot::Receiver<()>>, u64>;
}

impl<P: Projection> Handler<WaitFor> for ProjectionActor<P> {
    async fn handle(
        &mut self,
        m: WaitFor,
        _: &Context<Self>,
    ) -> Result<Option<futures::channel::oneshot::Receiver<()>>, u64> {
        let shard = usize::from(m.0.shard);
        let Some(&reached) = self.reached.get(shard) else {
            return Err(0);
        };
        if reached >= m.0.lsn {
            return Ok(None);
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        self.waiters.push((m.0, tx));
        Ok(Some(rx))
    }
}

/// The actor type of projection `P` (registered by `NodeBuilder::register_projection`).
pub(crate) fn projection_type<P: Projection>() -> ActorType<ProjectionActor<P>> {
    ActorType::loaded(|ctx| Box::pin(load_projection::<P>(ctx)))
        // The projection holds waiters and is fed continuously: never idle-deactivated.
        .idle_timeout(Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Starts the feeder of projection `P` on every shard.
pub(crate) fn start_feeders<P: Projection>(engine: &EngineHandle, config: ProjectionConfig) {
    for shard in 0..engine.shard_count() {
        let e = engine.clone();
        drop(engine.spawn_on(shard, move || feeder::<P>(e, shard, config)));
    }
}

/// Tails this shard's log and feeds projection `P` (runs on shard `shard` until the node
/// stops).
async fn feeder<P: Projection>(engine: EngineHandle, shard: ShardId, config: ProjectionConfig) {
    let Some(log) = current_shard_log() else {
        return;
    };
    let names = P::subscriptions().names();
    let projection = engine.actor_ref::<ProjectionActor<P>>(0u64);
    let mut pos = loop {
        if !engine.is_running() {
            return;
        }
        match projection.ask(CheckpointOf(shard)).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(shard, projection = P::NAME, error = %e, "feeder cannot reach its projection; retrying");
                quark_shard::sleep(config.retry_interval).await;
            }
        }
    };
    let mut sent = pos;
    crate::admin::projection_fed(P::NAME, sent);
    let mut scanner = log.scan(pos);
    // Inside a moved actor's copy (between the move markers, docs/LOG_FORMAT.md, "Moved
    // records"): its events were fed where they were first persisted; skipped here.
    let mut in_copy = false;
    while engine.is_running() {
        let mut items = Vec::new();
        let mut at_end = false;
        while items.len() < config.batch_events_max {
            match scanner.next().await {
                Ok(Some(rec)) => {
                    pos = pos.max(rec.lsn + 1);
                    if rec.flags & FLAG_FORWARDED != 0 {
                        // A compaction copy of a record seen at its origin LSN.
                        continue;
                    }
                    if rec.key == quark_shard::MOVE_BEGIN_KEY {
                        in_copy = true;
                        continue;
                    }
                    if rec.key == quark_shard::MOVE_END_KEY {
                        in_copy = false;
                        continue;
                    }
                    if in_copy {
                        continue;
                    }
                    let Ok(k) = format::parse_stream_key(&rec.key) else {
                        continue;
                    };
                    if k.stream != Stream::Events {
                        continue;
                    }
                    if let Some(i) = names.iter().position(|n| *n == k.type_name) {
                        items.push(FeedItem {
                            lsn: rec.lsn,
                            type_idx: i as u16,
                            key: k.key,
                            payload: rec.payload,
                        });
                    }
                }
                Ok(None) => {
                    // Positions advance only over records actually read: a write's position
                    // is one past its last record, which the scan has then seen.
                    at_end = true;
                    break;
                }
                Err(e) => {
                    tracing::error!(shard, projection = P::NAME, error = %e, "feeder cannot read the log; retrying");
                    quark_shard::sleep(config.retry_interval).await;
                    scanner = log.scan(sent);
                    pos = sent;
                    items.clear();
                    break;
                }
            }
        }
        if pos > sent || !items.is_empty() {
            let mut last_warn: Option<Instant> = None;
            loop {
                let feed = Feed {
                    shard,
                    items: items.clone(),
                    end_lsn: pos,
                };
                match projection.ask(feed).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::error!(shard, projection = P::NAME, error = %e, "projection refused a batch; retrying");
                            last_warn = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        if !engine.is_running() {
                            return;
                        }
                        tracing::warn!(shard, projection = P::NAME, error = %e, "feeding the projection failed; retrying");
                    }
                }
                if !engine.is_running() {
                    return;
                }
                quark_shard::sleep(config.retry_interval).await;
            }
            sent = pos;
            crate::admin::projection_fed(P::NAME, sent);
        }
        if at_end {
            quark_shard::sleep(config.poll_interval).await;
        }
    }
}

/// A handle on projection `P` of a node: query its read model, wait for a write to reach it.
pub struct ProjectionHandle<P: Projection> {
    engine: EngineHandle,
    _p: PhantomData<fn() -> P>,
}

impl<P: Projection> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            engine: self.engine.clone(),
            _p: PhantomData,
        }
    }
}

impl<P: Projection> ProjectionHandle<P> {
    /// The handle of projection `P` on the node behind `engine` (registered with
    /// `NodeBuilder::register_projection`).
    pub fn new(engine: EngineHandle) -> Self {
        ProjectionHandle {
            engine,
            _p: PhantomData,
        }
    }

    /// Runs `f` on the read model, in the projection's turn (consistent with the checkpoints).
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&P::State) -> R + Send + 'static,
    ) -> Result<R, ProjectionError> {
        let actor = self.engine.actor_ref::<ProjectionActor<P>>(0u64);
        Ok(actor
            .ask(Invoke::new(
                move |p: &mut ProjectionActor<P>,
                      _: &Context<ProjectionActor<P>>|
                      -> InvokeFuture<'_, R> {
                    let r = f(&p.state);
                    Box::pin(std::future::ready(r))
                },
            ))
            .await?)
    }

    /// The projection's position on each shard (the next LSN it will read).
    pub async fn positions(&self) -> Result<Vec<u64>, ProjectionError> {
        let actor = self.engine.actor_ref::<ProjectionActor<P>>(0u64);
        Ok(actor
            .ask(Invoke::new(
                |p: &mut ProjectionActor<P>,
                 _: &Context<ProjectionActor<P>>|
                 -> InvokeFuture<'_, Vec<u64>> {
                    let r = p.reached.clone();
                    Box::pin(std::future::ready(r))
                },
            ))
            .await?)
    }

    /// Waits until the projection has applied everything up to `position` (returned by the
    /// write, e.g. [`super::Persisted::position`]): read-your-writes. Fails with
    /// [`ProjectionError::Timeout`] after `timeout`.
    pub async fn wait_for(
        &self,
        position: LogPosition,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let engine = self.engine.clone();
        let id = crate::ActorId {
            type_name: P::NAME,
            key: ActorKey::U64(0),
        };
        let home = engine.shard_of(&id);
        let e2 = engine.clone();
        engine
            .spawn_on(home, move || async move {
                let projection = e2.actor_ref::<ProjectionActor<P>>(0u64);
                let started = Instant::now();
                let rx = match projection.ask_timeout(WaitFor(position), timeout).await? {
                    Ok(None) => return Ok(()),
                    Ok(Some(rx)) => rx,
                    Err(reached) => {
                        return Err(ProjectionError::Timeout {
                            name: P::NAME,
                            position,
                            reached,
                            timeout,
                        })
                    }
                };
                let left = timeout.saturating_sub(started.elapsed());
                let sleep = std::pin::pin!(quark_shard::sleep(left));
                match futures::future::select(rx, sleep).await {
                    futures::future::Either::Left((Ok(()), _)) => Ok(()),
                    futures::future::Either::Left((Err(_), _)) => Err(ProjectionError::Stopped),
                    futures::future::Either::Right(_) => {
                        let reached = projection
                            .ask(Invoke::new(
                                move |p: &mut ProjectionActor<P>,
                                      _: &Context<ProjectionActor<P>>|
                                      -> InvokeFuture<'_, u64> {
                                    let r = p
                                        .reached
                                        .get(usize::from(position.shard))
                                        .copied()
                                        .unwrap_or(0);
                                    Box::pin(std::future::ready(r))
                                },
                            ))
                            .await
                            .unwrap_or(0);
                        Err(ProjectionError::Timeout {
                            name: P::NAME,
                            position,
                            reached,
                            timeout,
                        })
                    }
                }
            })
            .await
            .unwrap_or(Err(ProjectionError::Stopped))
    }
}
