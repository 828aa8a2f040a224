//! A turn's staged durable effects: outgoing messages and the inbox receipt of the message
//! being handled, written into the turn's one batch by whichever commit comes first.

use std::future::Future;

use quark_persist::{AppendError, Batch, LsnRange, NewRecord, RecordKind};
use quark_placement::{ActorId, ActorKey};
use quark_shard::{Actor, Context};

use super::dispatcher::{self, Delivery};
use super::format::{self, OutboxRecord, Target, OUTBOX_PREFIX};
use super::inbox::{self, StagedReceipt};
use super::{now_ms, DurableHandler, DurableMessage, MessageId, Outcome};

/// Why [`Durable::send_durable`] did not stage a message. Nothing was staged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The node has no log (`[log]`), so nothing can be durable.
    #[error(
        "actor {actor}: the node has no log (configure [log] data_dir), durable messages need one"
    )]
    NoLog {
        /// The sender.
        actor: ActorId,
    },
    /// The node was built without the outbox (`NodeBuilder::outbox` / `durable` / `sink`).
    #[error("actor {actor}: the node has no outbox (register a durable handler or call NodeBuilder::outbox)")]
    NoOutbox {
        /// The sender.
        actor: ActorId,
    },
    /// The message did not serialise.
    #[error("actor {actor}: durable message {message} did not serialise: {detail}")]
    Encode {
        /// The sender.
        actor: ActorId,
        /// The message's durable name.
        message: &'static str,
        /// The serialiser's message.
        detail: String,
    },
    /// The shard's pending outbox bytes are at `pending_bytes_max` and the policy is
    /// [`super::FullPolicy::Fail`].
    #[error("actor {actor}: the shard's outbox holds {pending_bytes} pending bytes (bound {max}); try later")]
    Full {
        /// The sender.
        actor: ActorId,
        /// Bytes pending on the shard.
        pending_bytes: u64,
        /// The bound.
        max: u64,
    },
}

/// Why a commit of a turn's durable effects failed. Nothing of the batch was applied or sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The node has no log.
    #[error("actor {actor}: the node has no log (configure [log] data_dir)")]
    NoLog {
        /// The actor.
        actor: ActorId,
    },
    /// The append failed; the batch is not durable.
    #[error("actor {actor}: appending the turn's batch failed: {source}")]
    Append {
        /// The actor.
        actor: ActorId,
        /// The log's error.
        #[source]
        source: AppendError,
    },
}

/// One staged outgoing message and the pending-bytes reservation it holds.
pub(crate) struct StagedMsg {
    pub record: OutboxRecord,
    pub reserved: u64,
}

/// Per-activation staging (a [`Context::extension`] slot).
#[derive(Default)]
pub(crate) struct Staged {
    msgs: Vec<StagedMsg>,
    /// Ids of the durable messages this turn applied, until a commit carried their receipts.
    receipts: Vec<MessageId>,
    /// The id of the durable message this turn handles (for [`Durable::message_id`]).
    current: Option<MessageId>,
    /// A delivery's turn is running: commits (`save`, `commit`) stage their records in
    /// `deferred`, and the delivery writes everything in one batch after its last handler.
    deferring: bool,
    /// Records of the commits made while `deferring`, in order.
    deferred: Vec<NewRecord>,
    /// Commits made while `deferring` (to tell whether a failing handler committed).
    deferred_commits: u32,
    /// [`Durable::after_commit`] callbacks, run once the batch carrying this turn's staged
    /// effects is durable.
    after: Vec<Box<dyn FnOnce()>>,
    /// A durable turn failed after its handler ran: the memory may be ahead of the log. No
    /// durable message is handled and no state saved until the activation is reloaded.
    stale: bool,
}

/// Marks the activation stale and asks for its deactivation (it reloads from the log).
pub(crate) fn mark_stale<A: Actor>(ctx: &Context<A>) {
    ctx.extension(|s: &mut Staged| s.stale = true);
    ctx.deactivate_when_idle();
}

/// True once [`mark_stale`] was called for this activation.
pub(crate) fn is_stale<A: Actor>(ctx: &Context<A>) -> bool {
    ctx.extension(|s: &mut Staged| s.stale)
}

impl Drop for Staged {
    fn drop(&mut self) {
        let bytes: u64 = self.msgs.iter().map(|m| m.reserved).sum();
        if bytes > 0 {
            dispatcher::release(bytes);
        }
    }
}

/// What a commit took from the staging area.
pub(crate) struct Taken {
    msgs: Vec<StagedMsg>,
    after: Vec<Box<dyn FnOnce()>>,
    receipts: Option<StagedReceipt>,
    first_index: usize,
    outbox_key: Vec<u8>,
}

/// Moves the turn's deferred records, staged messages and receipts into `batch` (for commits
/// built elsewhere, e.g. the journal's `persist`). Call [`committed`] or [`aborted`] with the
/// result.
pub(crate) fn stage_into<A: Actor>(ctx: &Context<A>, batch: &mut Batch) -> Taken {
    let (msgs, receipts, deferred, after) = ctx.extension(|s: &mut Staged| {
        (
            std::mem::take(&mut s.msgs),
            std::mem::take(&mut s.receipts),
            std::mem::take(&mut s.deferred),
            std::mem::take(&mut s.after),
        )
    });
    if !deferred.is_empty() {
        // The deferred commits came first: their records go before this commit's own.
        let mut all = Batch::new();
        for r in deferred {
            push_replacing(&mut all, r);
        }
        for r in batch.records() {
            push_replacing(&mut all, r.clone());
        }
        *batch = all;
    }
    let outbox_key = if msgs.is_empty() {
        Vec::new()
    } else {
        format::actor_key(OUTBOX_PREFIX, ctx.id())
    };
    let first_index = batch.len();
    for m in &msgs {
        let mut payload = Vec::with_capacity(64 + m.record.data.len());
        format::encode_outbox(&mut payload, &m.record);
        batch.push(NewRecord {
            kind: RecordKind::Event,
            key: outbox_key.clone(),
            payload,
            expires_at_ms: None,
        });
    }
    let receipts = (!receipts.is_empty()).then(|| inbox::stage_receipts(ctx, receipts, batch));
    Taken {
        msgs,
        after,
        receipts,
        first_index,
        outbox_key,
    }
}

/// Adds `r` to `batch`; a snapshot replaces an earlier snapshot of the same key in the batch
/// (two saves of one state in a delivery write the last one only).
fn push_replacing(batch: &mut Batch, r: NewRecord) {
    if r.kind == RecordKind::Snapshot {
        if let Some(i) = batch
            .records()
            .iter()
            .position(|x| x.kind == RecordKind::Snapshot && x.key == r.key)
        {
            let mut rebuilt = Batch::new();
            for (j, x) in batch.records().iter().enumerate() {
                if j != i {
                    rebuilt.push(x.clone());
                }
            }
            rebuilt.push(r);
            *batch = rebuilt;
            return;
        }
    }
    batch.push(r);
}

/// The batch holding `taken` is durable at `range`: hand the messages to the dispatcher and
/// record the receipts.
pub(crate) fn committed<A: Actor>(ctx: &Context<A>, taken: Taken, range: &LsnRange) {
    if !taken.msgs.is_empty() {
        let key: std::rc::Rc<[u8]> = taken.outbox_key.into();
        for (i, m) in taken.msgs.into_iter().enumerate() {
            let lsn = range.first + (taken.first_index + i) as u64;
            debug_assert!(lsn < range.end, "the outbox records are inside the batch");
            dispatcher::enqueue(key.clone(), lsn, m.record, m.reserved);
        }
    }
    if let Some(r) = taken.receipts {
        inbox::committed(ctx, r);
    }
    for f in taken.after {
        f();
    }
}

/// The batch holding `taken` failed: the messages are dropped (never sent) and the receipts
/// are staged again (the deliveries then report a failure and are retried).
pub(crate) fn aborted<A: Actor>(ctx: &Context<A>, taken: Taken) {
    let bytes: u64 = taken.msgs.iter().map(|m| m.reserved).sum();
    dispatcher::release(bytes);
    if let Some(r) = taken.receipts {
        ctx.extension(|s: &mut Staged| s.receipts = r.ids);
    }
}

/// Appends `batch` plus the turn's staged effects; `Ok(None)` when there was nothing to write,
/// or when a delivery's turn is running: the records are then deferred to the delivery's one
/// batch, written after its last handler returned.
pub(crate) async fn commit_with<A: Actor>(
    ctx: &Context<A>,
    mut batch: Batch,
) -> Result<Option<LsnRange>, CommitError> {
    let Some(log) = ctx.log() else {
        return Err(CommitError::NoLog {
            actor: ctx.id().clone(),
        });
    };
    let deferred = ctx.extension(|s: &mut Staged| {
        if !s.deferring {
            return false;
        }
        s.deferred_commits += 1;
        for r in batch.records() {
            if r.kind == RecordKind::Snapshot {
                s.deferred
                    .retain(|x| !(x.kind == RecordKind::Snapshot && x.key == r.key));
            }
            s.deferred.push(r.clone());
        }
        true
    });
    if deferred {
        return Ok(None);
    }
    let taken = stage_into(ctx, &mut batch);
    if batch.is_empty() {
        // Nothing to wait for.
        for f in taken.after {
            f();
        }
        return Ok(None);
    }
    match log.append(&batch).await {
        Ok(range) => {
            committed(ctx, taken, &range);
            Ok(Some(range))
        }
        Err(source) => {
            aborted(ctx, taken);
            Err(CommitError::Append {
                actor: ctx.id().clone(),
                source,
            })
        }
    }
}

/// Durable messaging from a handler (implemented for every [`Context`]).
pub trait Durable {
    /// Stages durable message `msg` to actor `(B, key)` (any shard, any node). It is written
    /// with this turn's next commit ([`super::Save::save`], the journal's `persist`, or
    /// [`Durable::commit`]) and sent only once that batch is durable; if the batch fails, the
    /// message is dropped with it. Waits while the shard's pending outbox bytes are at the
    /// bound (or fails, by [`super::FullPolicy`]).
    ///
    /// Staged messages that no commit carries are dropped with the activation.
    fn send_durable<B, M>(
        &self,
        key: impl Into<ActorKey>,
        msg: M,
    ) -> impl Future<Output = Result<(), SendError>>
    where
        B: DurableHandler<M>,
        M: DurableMessage;

    /// Stages durable message `msg` to the external sink registered as `sink`
    /// (`NodeBuilder::sink`); delivered exactly once into it by message id.
    fn send_to_sink<M: DurableMessage>(
        &self,
        sink: &str,
        msg: M,
    ) -> impl Future<Output = Result<(), SendError>>;

    /// Commits the staged messages (and the inbox receipt of the message being handled) as one
    /// batch, for turns that change no durable state. Cancel safety: do not drop it midway (a
    /// batch that became durable anyway is delivered after the next restart).
    fn commit(&self) -> impl Future<Output = Result<(), CommitError>>;

    /// The id of the durable message this turn is handling (`None` in other turns).
    fn message_id(&self) -> Option<MessageId>;

    /// Runs `f` once the batch that carries this turn's staged effects (the next commit; in a
    /// durable handler, the delivery's batch) is durable; drops it if that batch fails. The
    /// place to start an effect outside the actor that must not happen unless the state is
    /// durable (it runs at most once per call; a retried delivery registers it again).
    fn after_commit(&self, f: impl FnOnce() + 'static);
}

impl<A: Actor> Durable for Context<A> {
    async fn send_durable<B, M>(&self, key: impl Into<ActorKey>, msg: M) -> Result<(), SendError>
    where
        B: DurableHandler<M>,
        M: DurableMessage,
    {
        self.stage(
            Target::Actor(B::TYPE_NAME.to_owned(), key.into()),
            M::NAME,
            &msg,
        )
        .await
    }

    async fn send_to_sink<M: DurableMessage>(&self, sink: &str, msg: M) -> Result<(), SendError> {
        self.stage(Target::Sink(sink.to_owned()), M::NAME, &msg)
            .await
    }

    async fn commit(&self) -> Result<(), CommitError> {
        commit_with(self, Batch::new()).await.map(|_| ())
    }

    fn message_id(&self) -> Option<MessageId> {
        self.extension(|s: &mut Staged| s.current)
    }

    fn after_commit(&self, f: impl FnOnce() + 'static) {
        self.extension(|s: &mut Staged| s.after.push(Box::new(f)));
    }
}

trait Stage {
    fn stage<M: serde::Serialize>(
        &self,
        target: Target,
        name: &'static str,
        msg: &M,
    ) -> impl Future<Output = Result<(), SendError>>;
}

impl<A: Actor> Stage for Context<A> {
    async fn stage<M: serde::Serialize>(
        &self,
        target: Target,
        name: &'static str,
        msg: &M,
    ) -> Result<(), SendError> {
        let actor = || self.id().clone();
        if self.log().is_none() {
            return Err(SendError::NoLog { actor: actor() });
        }
        let Some(d) = dispatcher::current() else {
            return Err(SendError::NoOutbox { actor: actor() });
        };
        let data = postcard::to_allocvec(msg).map_err(|e| SendError::Encode {
            actor: actor(),
            message: name,
            detail: e.to_string(),
        })?;
        let record = OutboxRecord {
            created_ms: now_ms(),
            stream: d.stream_of(self.id()),
            id_override: None,
            target,
            message: name.to_owned(),
            data,
        };
        let reserved = dispatcher::record_bytes(&record);
        d.reserve(reserved)
            .await
            .map_err(|(pending_bytes, max)| SendError::Full {
                actor: actor(),
                pending_bytes,
                max,
            })?;
        self.extension(|s: &mut Staged| s.msgs.push(StagedMsg { record, reserved }));
        Ok(())
    }
}

/// Ends a delivery's deferring of commits when dropped.
struct EndDeferring<'a, A: Actor>(&'a Context<A>);

impl<A: Actor> Drop for EndDeferring<'_, A> {
    fn drop(&mut self) {
        self.0.extension(|s: &mut Staged| s.deferring = false);
    }
}

/// Runs durable messages `ds` (one receiver, one message type, distinct sender streams) as
/// one turn of `a`: per message the inbox check and the handler; then one commit carrying the
/// handlers' state and sent messages and every applied message's receipt. Returns one outcome
/// per message, in order.
pub(crate) async fn apply<A, M>(a: &mut A, ctx: &Context<A>, ds: Vec<Delivery>) -> Vec<Outcome>
where
    A: DurableHandler<M>,
    M: DurableMessage,
{
    let n = ds.len();
    let all_failed = |cause: String| vec![Outcome::Failed(cause); n];
    if dispatcher::current().is_none() {
        // The receiving shard's dispatcher is still being installed (the node is starting).
        return all_failed(format!("the outbox of {}'s shard is starting", ctx.id()));
    }
    if is_stale(ctx) {
        return all_failed(format!(
            "{} is reloading after a failed durable turn",
            ctx.id()
        ));
    }
    if let Err(e) = inbox::ensure_loaded(ctx).await {
        return all_failed(e);
    }
    ctx.extension(|s: &mut Staged| {
        s.deferring = true;
        s.deferred_commits = 0;
    });
    // Commits defer only inside this turn, also if a handler panics or the turn is dropped.
    let deferring = EndDeferring(ctx);
    let mut out: Vec<Outcome> = Vec::with_capacity(n);
    // Indices in `out` of the messages whose receipts the final commit carries.
    let mut applied: Vec<usize> = Vec::with_capacity(n);
    let mut stop: Option<String> = None;
    for d in ds {
        if let Some(cause) = &stop {
            out.push(Outcome::Failed(cause.clone()));
            continue;
        }
        let in_batch = ctx.extension(|s: &mut Staged| s.receipts.contains(&d.id));
        if in_batch || inbox::seen(ctx, d.id) {
            out.push(Outcome::Duplicate);
            continue;
        }
        let msg: M = match postcard::from_bytes(&d.data) {
            Ok(m) => m,
            Err(e) => {
                out.push(Outcome::Rejected(format!(
                    "message {} to {} did not decode: {e}",
                    d.message,
                    ctx.id()
                )));
                continue;
            }
        };
        let (commits_before, msgs_before, after_before) = ctx.extension(|s: &mut Staged| {
            s.receipts.push(d.id);
            s.current = Some(d.id);
            (s.deferred_commits, s.msgs.len(), s.after.len())
        });
        let result = a.handle_durable(msg, ctx).await;
        // Committed: a (deferred) save or commit ran, or a journal persist took the receipt.
        let committed = ctx.extension(|s: &mut Staged| {
            s.current = None;
            s.deferred_commits > commits_before || !s.receipts.contains(&d.id)
        });
        let failed = match result {
            Ok(()) => None,
            // A handler that committed and then failed: its commit carries its receipt, so it
            // counts as applied (as it would have in a turn of its own).
            Err(_) if committed => None,
            Err(retry) => Some(retry),
        };
        match failed {
            None => {
                applied.push(out.len());
                out.push(Outcome::Applied);
            }
            Some(retry) => {
                // Nothing of this message was committed: drop what its handler staged and its
                // receipt. The handler may have changed the state in memory, so the rest of
                // the delivery is not handled and the activation reloads afterwards.
                let dropped = ctx.extension(|s: &mut Staged| {
                    s.receipts.retain(|id| *id != d.id);
                    s.after.truncate(after_before.min(s.after.len()));
                    s.msgs.split_off(msgs_before.min(s.msgs.len()))
                });
                dispatcher::release(dropped.iter().map(|m| m.reserved).sum());
                let cause = retry.to_string();
                out.push(Outcome::Failed(cause.clone()));
                stop = Some(format!(
                    "not handled: an earlier message of the delivery failed ({cause})"
                ));
            }
        }
    }
    drop(deferring);
    if let Err(e) = commit_with(ctx, Batch::new()).await {
        ctx.extension(|s: &mut Staged| s.receipts.clear());
        mark_stale(ctx);
        for i in applied {
            out[i] = Outcome::Failed(e.to_string());
        }
    } else if stop.is_some() {
        mark_stale(ctx);
    }
    out
}
