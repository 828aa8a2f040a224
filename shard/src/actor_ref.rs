//! [`ActorRef`]: the handle callers use to send to an actor, from any shard or thread.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quark_placement::{shard_for, ActorId, ActorKey, NodeId, ShardId};

use crate::activation::{send_local, send_local_now, try_send_local};
use crate::actor::{Actor, Handler, Message};
use crate::admission::{block_on_until, DeadlineTimer};
use crate::calls::{CallId, CallOutcome, Waiter};
use crate::engine::shared::{current_core, with_current_core, NodeShared, Phase};
use crate::envelope::{outcome_into, CrossMsg, Deliver, ExtForward, External, Origin, ReplyTo};
use crate::error::CallError;
use crate::shard::Shard;

/// A reference to a virtual actor of type `A`: cheap to clone, `Send`, usable on any shard of
/// its node and from any thread outside it.
///
/// From a shard thread, a message to an actor of the same shard goes straight into its mailbox
/// (no atomic operation, no copy); to another shard it goes through that pair's ring. From
/// outside the node it goes through the owner shard's injection queue.
///
/// Ordering: messages from one sender to one actor are handled in the order sent, when the
/// sender awaits each `tell`/`ask` before sending the next.
pub struct ActorRef<A> {
    node: Arc<NodeShared>,
    id: ActorId,
    type_idx: Option<u16>,
    stateless: bool,
    owner: ShardId,
    /// The owner node when it is not this one (computed once, by the cluster's placement).
    remote: Option<NodeId>,
    _actor: PhantomData<fn() -> A>,
}

impl<A> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef {
            node: self.node.clone(),
            id: self.id.clone(),
            type_idx: self.type_idx,
            stateless: self.stateless,
            owner: self.owner,
            remote: self.remote,
            _actor: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorRef({})", self.id)
    }
}

impl<A: Actor> ActorRef<A> {
    pub(crate) fn new(node: Arc<NodeShared>, key: ActorKey) -> Self {
        let mut r = Self::new_local(node, key);
        if let Some(net) = &r.node.net {
            let movable = r
                .type_idx
                .is_none_or(|i| r.node.types[usize::from(i)].bytes_mover());
            // A type placed on a fixed node is addressed there (PlacementPolicy::Node).
            let home = crate::migrate::fixed_node(&r.node, r.type_idx)
                .or_else(|| net.view.home(&r.id, movable));
            match home {
                Some(n) if n != net.node_id => r.remote = Some(n),
                _ => {}
            }
        }
        r
    }

    /// A reference that always targets this node (for requests that arrived from the
    /// network: the sender already chose this node).
    pub(crate) fn new_local(node: Arc<NodeShared>, key: ActorKey) -> Self {
        let id = ActorId {
            type_name: A::TYPE_NAME,
            key,
        };
        let type_idx = node.type_index.get(&std::any::TypeId::of::<A>()).copied();
        let stateless = type_idx.is_some_and(|i| node.types[usize::from(i)].stateless());
        let owner = shard_for(&id, node.shard_count());
        ActorRef {
            node,
            id,
            type_idx,
            stateless,
            owner,
            remote: None,
            _actor: PhantomData,
        }
    }

    /// The node this reference was made on (for `migrate`).
    pub(crate) fn node(&self) -> &Arc<NodeShared> {
        &self.node
    }

    /// The node that owns this actor, if it is not the local one.
    pub fn remote_node(&self) -> Option<NodeId> {
        self.remote
    }

    /// The actor's id.
    pub fn id(&self) -> &ActorId {
        &self.id
    }

    /// The shard that owns this actor (for a stateless worker: the shard used by senders
    /// outside the node; shard threads use their own).
    pub fn owner_shard(&self) -> ShardId {
        self.owner
    }

    /// Sends `msg` and waits for the reply, for at most the node's `ask_timeout` (the deadline
    /// also covers waiting for room to send). Which path the call takes (same shard, another
    /// shard, outside the node) is decided when `ask` is called; nothing is sent before the
    /// future is first polled.
    ///
    /// Cancel safety: dropping the future before it resolves forgets the call; the message may
    /// still be (or have been) handled, and its reply is then dropped and counted.
    pub fn ask<M>(&self, msg: M) -> impl Future<Output = Result<M::Reply, CallError>> + '_
    where
        A: Handler<M>,
        M: Message,
    {
        // Not an `async fn`: one state machine less per call.
        self.ask_timeout(msg, self.node.config.ask_timeout)
    }

    /// The first poll of an [`Ask`]: a direct turn when the actor is on this shard and idle
    /// (the reply at once); otherwise what the ask goes on with ([`AskMiss`]). The common
    /// case returns the bare reply, so that no `Result<_, CallError>`-sized value is moved per
    /// ask (that copy cost more than the checks around it).
    #[inline(always)]
    fn ask_first<M>(&self, msg: M, timeout: Duration) -> Result<M::Reply, AskMiss<'_, M>>
    where
        A: Handler<M>,
        M: Message,
    {
        if self.remote.is_some() || self.stateless {
            return Err(AskMiss::Other(msg));
        }
        let Some(type_idx) = self.type_idx else {
            return Err(AskMiss::Other(msg));
        };
        with_current_core(&self.node, |core| {
            let Some(core) = core.filter(|c| c.id == self.owner) else {
                return Err(AskMiss::Other(msg));
            };
            self.ask_direct(core, type_idx, msg, timeout)
        })
    }

    /// [`Self::ask_first`] on the actor's own shard `core`.
    #[inline(always)]
    fn ask_direct<M>(
        &self,
        core: &Rc<Shard>,
        type_idx: u16,
        msg: M,
        timeout: Duration,
    ) -> Result<M::Reply, AskMiss<'_, M>>
    where
        A: Handler<M>,
        M: Message,
    {
        use crate::direct::DirectAsk;
        let started_us = core.clock.now_us();
        // The deadline is needed only if the turn awaits; shard time does not move within
        // this poll, so computing it then gives the deadline of now.
        let deadline = || core.now() + timeout;
        match crate::direct::try_ask::<A, M>(core, type_idx, &self.id.key, msg, deadline) {
            DirectAsk::Done(r) => {
                crate::stats::add(&core.stats.asks[0], 1);
                core.stats.ask_latency[0].record_us(core.clock.now_us() - started_us);
                r.map_err(|e| AskMiss::Failed(Box::new(e)))
            }
            DirectAsk::Pending(call) => {
                crate::stats::add(&core.stats.asks[0], 1);
                let core = core.clone();
                Err(AskMiss::Slow(Box::pin(async move {
                    let core = &core;
                    let outcome = LocalCallWait {
                        core,
                        call,
                        done: false,
                    }
                    .await;
                    core.stats.ask_latency[0].record_us(core.clock.now_us() - started_us);
                    outcome_into::<A, M>(outcome, || self.id.clone(), timeout)
                })))
            }
            // This task ran its direct turns for this poll: let the shard's other work run,
            // then ask again.
            DirectAsk::Yield(msg) => Err(AskMiss::Slow(Box::pin(async move {
                crate::rt::yield_now().await;
                self.ask_with(msg, timeout, None, true).await
            }))),
            DirectAsk::Refused(msg) => Err(AskMiss::Other(msg)),
        }
    }

    /// Like [`ActorRef::ask`] with an explicit deadline.
    ///
    /// The deadline runs from this call and covers everything: waiting for room to send (an
    /// admission slot, a credit, mailbox room), the queue at the actor, the turn, the reply.
    /// When it passes, the future resolves with [`CallError::Timeout`] whatever the actor's
    /// shard is doing (outside the node, a process-wide `quark-deadlines` thread wakes the
    /// waiting task; no executor timer is needed, so any executor can poll it). An ask whose
    /// deadline passed before its turn is not run.
    pub fn ask_timeout<M>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> impl Future<Output = Result<M::Reply, CallError>> + '_
    where
        A: Handler<M>,
        M: Message,
    {
        Ask {
            target: self,
            msg: Some(msg),
            timeout,
            slow: None,
        }
    }

    /// Like [`ActorRef::ask`], for a plain thread that may block: parks the calling thread
    /// (no spinning, no executor) until the reply or the deadline (`ask_timeout`).
    ///
    /// # Panics
    /// On a shard thread (inside a handler or a task spawned on a shard): blocking there would
    /// stop the shard, and with it possibly the very actor it waits for. Use `ask(..).await`.
    pub fn ask_blocking<M>(&self, msg: M) -> Result<M::Reply, CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        self.ask_timeout_blocking(msg, self.node.config.ask_timeout)
    }

    /// Like [`ActorRef::ask_timeout`], blocking the calling thread (see
    /// [`ActorRef::ask_blocking`]; panics on a shard thread).
    pub fn ask_timeout_blocking<M>(&self, msg: M, timeout: Duration) -> Result<M::Reply, CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        assert_not_on_shard("ask_blocking");
        let deadline = Instant::now() + timeout;
        block_on_until(
            self.ask_with(msg, timeout, Some(deadline), false),
            Some(deadline),
        )
    }

    /// Like [`ActorRef::tell`], blocking the calling thread (parked, not spinning) while there
    /// is no room to send. Panics on a shard thread (see [`ActorRef::ask_blocking`]).
    pub fn tell_blocking<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        assert_not_on_shard("tell_blocking");
        block_on_until(self.tell(msg), None)
    }

    /// `ask_timeout`. `parked_until`: outside the node, `None` wakes the caller at its
    /// deadline through the deadline thread; `Some(deadline)` is the deadline of a blocking
    /// caller that parks until it by itself. `direct`: try a direct turn first (false when
    /// the caller just tried one).
    fn ask_with<M>(
        &self,
        msg: M,
        timeout: Duration,
        parked_until: Option<Instant>,
        direct: bool,
    ) -> impl Future<Output = Result<M::Reply, CallError>> + '_
    where
        A: Handler<M>,
        M: Message,
    {
        use futures::future::Either;
        if let Some(node) = self.remote {
            // Boxed: the remote path's state machine is large; inline, it would grow every
            // local ask's future. A box is small next to a network round trip.
            return Either::Right(Either::Right(Either::Right(Box::pin(self.ask_remote_any(
                node,
                msg,
                timeout,
                parked_until,
            )))));
        }
        let type_idx = match self.type_index() {
            Ok(t) => t,
            Err(e) => return Either::Left(std::future::ready(Err(e))),
        };
        Either::Right(match current_core(&self.node) {
            Some(core) => Either::Left(self.ask_on_shard(core, type_idx, msg, timeout, direct)),
            // Boxed: the outside path (admission wait, deadline timer) would grow every
            // on-shard ask's future; it allocates a channel and an envelope anyway.
            None => Either::Right(Either::Left(Box::pin(self.ask_external(
                type_idx,
                msg,
                timeout,
                parked_until,
            )))),
        })
    }

    /// An ask to another node: from a shard, straight onto that shard's connection; from
    /// outside the node, through a task on a local shard (which owns the connections).
    async fn ask_remote_any<M>(
        &self,
        node: NodeId,
        msg: M,
        timeout: Duration,
        parked_until: Option<Instant>,
    ) -> Result<M::Reply, CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        if let Some(core) = current_core(&self.node) {
            return crate::net::ask_remote(self, core, node, msg, timeout).await;
        }
        let mut timer = DeadlineTimer::new(timeout, parked_until);
        self.external_admit(Some(&mut timer)).await?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let me = self.clone();
        let shard = self.owner;
        let trace = crate::trace::current();
        self.node.inject(
            shard,
            crate::envelope::CrossMsg::run_on(move |core| {
                let core2 = core.clone();
                core.sched.spawn(crate::trace::carry(trace, async move {
                    let r = crate::net::ask_remote(&me, core2.clone(), node, msg, timeout).await;
                    core2.injector().release();
                    let _ = tx.send(r);
                }));
            }),
        );
        self.reply_by_deadline(rx, &mut timer).await
    }

    /// Waits for an external caller's reply channel until the deadline.
    async fn reply_by_deadline<T>(
        &self,
        mut rx: futures::channel::oneshot::Receiver<Result<T, CallError>>,
        timer: &mut DeadlineTimer,
    ) -> Result<T, CallError> {
        let got = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut rx).poll(cx) {
                return Poll::Ready(Some(r));
            }
            timer.poll_expired(cx).map(|()| None)
        })
        .await;
        match got {
            Some(Ok(r)) => r,
            // The owner shard dropped the message unhandled: it is stopping.
            Some(Err(_canceled)) => Err(CallError::ShuttingDown {
                actor: self.id.clone(),
            }),
            None => Err(CallError::Timeout {
                actor: self.id.clone(),
                timeout: timer.timeout(),
            }),
        }
    }

    /// A tell to another node (see [`ActorRef::tell`]).
    async fn tell_remote_any<M>(&self, node: NodeId, msg: M) -> Result<(), CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        if let Some(core) = current_core(&self.node) {
            return crate::net::tell_remote(self, core, node, msg).await;
        }
        self.external_admit(None).await?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let me = self.clone();
        let trace = crate::trace::current();
        self.node.inject(
            self.owner,
            crate::envelope::CrossMsg::run_on(move |core| {
                let core2 = core.clone();
                core.sched.spawn(crate::trace::carry(trace, async move {
                    let r = crate::net::tell_remote(&me, core2.clone(), node, msg).await;
                    core2.injector().release();
                    let _ = tx.send(r);
                }));
            }),
        );
        rx.await.unwrap_or_else(|_| {
            Err(CallError::ShuttingDown {
                actor: self.id.clone(),
            })
        })
    }

    /// Sends `msg` without waiting for its handling. Waits only for room (mailbox, cross-shard
    /// credit, or from outside the node an admission slot; the wait is asynchronous and never
    /// spins, and has no deadline): a `tell` is never dropped silently. Errors only if the type
    /// is unknown or the node is shutting down. Nothing is sent before the future is polled; in
    /// the common case (room available) the first poll sends and resolves. For a plain thread
    /// without an executor, [`ActorRef::tell_blocking`].
    ///
    /// **The returned [`Tell`] must be awaited** (or polled): `r.tell(msg);` alone sends
    /// nothing (the compiler warns). To send without awaiting, use [`ActorRef::tell_now`].
    pub fn tell<M>(&self, msg: M) -> Tell<'_, A, M>
    where
        A: Handler<M>,
        M: Message,
    {
        Tell {
            target: self,
            msg: Some(msg),
            slow: None,
        }
    }

    /// Sends `msg` at once, without a future: for synchronous code, and for a loop of tells
    /// that must not wait. Never waits and never drops a message silently:
    ///
    /// - `Ok(())`: the message is on its way (in the actor's mailbox, in the cross-shard ring,
    ///   in the owner shard's injection queue, or in the connection's buffer to the owner
    ///   node), in order with this sender's earlier `tell_now`s and awaited `tell`s.
    /// - `Err(CallError::Full { .. })`: no room at once (the mailbox is at
    ///   `mailbox_capacity`, no cross-shard credit, `external_inflight_max` injections in
    ///   flight, or the connection buffer at `out_bytes_max`); the message was not sent.
    ///   Retry later or `tell(msg).await`.
    /// - `Err(CallError::NodeUnavailable { .. })`: the owner node is unreachable (counted in
    ///   `tells_dropped`).
    /// - Other errors as [`ActorRef::tell`] (unknown type, not a wire message, shutting down).
    ///
    /// From outside the node (any thread that is not one of its shards) to an actor of another
    /// node, the message is handed to a shard of this node, which appends it to its connection
    /// to the owner: if that connection is then down or full, the tell is counted in
    /// `NetStatsSnapshot::tells_dropped` and logged (this call has already returned `Ok`).
    ///
    /// ```no_run
    /// # use quark_shard::{Actor, ActorRef, Context, Handler, Message};
    /// # struct Counter(u64);
    /// # impl Actor for Counter { const TYPE_NAME: &'static str = "counter"; }
    /// # struct Inc;
    /// # impl Message for Inc { type Reply = (); }
    /// # impl Handler<Inc> for Counter {
    /// #     async fn handle(&mut self, _: Inc, _: &Context<Self>) { self.0 += 1; }
    /// # }
    /// # fn demo(c: &ActorRef<Counter>) -> Result<(), quark_shard::CallError> {
    /// for _ in 0..3 {
    ///     c.tell_now(Inc)?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn tell_now<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        let full = |place| CallError::Full {
            actor: self.id.clone(),
            place,
        };
        if let Some(node) = self.remote {
            if let Some(core) = current_core(&self.node) {
                return crate::net::tell_remote_now(self, &core, node, msg);
            }
            if self.node.registry.codec::<M>().is_none() {
                return Err(CallError::NotWireMessage {
                    message_type: std::any::type_name::<M>(),
                });
            }
            self.external_admit_now()?;
            let me = self.clone();
            let trace = crate::trace::current();
            self.node.inject(
                self.owner,
                crate::envelope::CrossMsg::run_on(move |core| {
                    // Errors are counted (tells_dropped) and logged by the transport.
                    let r = crate::trace::scoped(trace, || {
                        crate::net::tell_remote_now(&me, core, node, msg)
                    });
                    if let Err(e) = r {
                        if let (CallError::Full { .. }, Some(net)) = (&e, &core.net) {
                            let s = &net.stats.tells_dropped;
                            s.set(s.get() + 1);
                        }
                        tracing::warn!(shard = core.id, actor = %me.id, error = %e,
                            "tell_now from outside the node could not be sent");
                    }
                    core.injector().release();
                }),
            );
            return Ok(());
        }
        let type_idx = self.type_index()?;
        let Some(core) = current_core(&self.node) else {
            self.external_admit_now()?;
            let d = Deliver::<A, M>::new(
                type_idx,
                self.id.key.clone(),
                msg,
                ReplyTo::None,
                Origin::External,
            );
            self.node.inject(self.owner, CrossMsg::Request(Box::new(d)));
            return Ok(());
        };
        let target = self.target_on(&core);
        crate::stats::add(&core.stats.tells[usize::from(target != core.id)], 1);
        let msg = if target == core.id {
            use crate::direct::DirectTell;
            match crate::direct::try_tell::<A, M>(&core, type_idx, &self.id.key, msg) {
                DirectTell::Sent => return Ok(()),
                // No future to yield with: queue it (in order: nothing runs before it).
                DirectTell::Yield(msg) | DirectTell::Refused(msg) => msg,
            }
        } else {
            msg
        };
        let item = self.envelope::<M>(&core, type_idx, target, msg, ReplyTo::None);
        if target == core.id {
            send_local_now::<A>(&core, type_idx, item).map_err(|_| full("mailbox"))
        } else if core.try_acquire_credit(target) {
            core.send_to(target, CrossMsg::Request(item));
            Ok(())
        } else {
            Err(full("cross-shard credits"))
        }
    }

    /// The common case of a [`Tell`]'s first poll: a direct turn on this shard. Returns the
    /// message when it did not run it ([`Self::tell_first`] then sends it the ordinary way,
    /// without trying a direct turn again). Apart from the rest so that the common case's
    /// result is small (a `Result<(), CallError>` moved through the general path cost a copy
    /// of the error's bytes per tell).
    #[inline(always)]
    fn tell_direct<M>(&self, msg: M) -> Result<(), DirectMiss<M>>
    where
        A: Handler<M>,
        M: Message,
    {
        use crate::direct::DirectTell;
        let Some(type_idx) = self.type_idx else {
            return Err(DirectMiss::Other(msg));
        };
        if self.remote.is_some() || self.stateless {
            return Err(DirectMiss::Other(msg));
        }
        // No `Rc` clone of the core per tell. (Inlining decides much here: one build of this
        // same code kept the handler's future out of line, +33 instructions per tell; count
        // with callgrind after changing this path, docs/BENCHMARKS.md.)
        with_current_core(&self.node, |core| {
            let Some(core) = core.filter(|c| c.id == self.owner) else {
                return Err(DirectMiss::Other(msg));
            };
            match crate::direct::try_tell::<A, M>(core, type_idx, &self.id.key, msg) {
                DirectTell::Sent => {
                    crate::stats::add(&core.stats.tells[0], 1);
                    Ok(())
                }
                DirectTell::Yield(msg) => Err(DirectMiss::Yield(msg)),
                DirectTell::Refused(msg) => Err(DirectMiss::Other(msg)),
            }
        })
    }

    /// The first poll of a [`Tell`] that [`Self::tell_direct`] did not send: sends at once when
    /// there is room; otherwise returns the waiting path. `direct`: whether to try a direct
    /// turn.
    #[inline]
    fn tell_first<M>(&self, msg: M, direct: bool) -> Result<Result<(), CallError>, SlowTell<'_>>
    where
        A: Handler<M>,
        M: Message,
    {
        if let Some(node) = self.remote {
            return Err(Box::pin(self.tell_remote_any(node, msg)));
        }
        let type_idx = match self.type_index() {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let Some(core) = current_core(&self.node) else {
            return match self.external_admit_now() {
                Ok(()) => {
                    self.inject_tell(type_idx, msg);
                    Ok(Ok(()))
                }
                Err(CallError::Full { .. }) => Err(Box::pin(async move {
                    self.external_admit(None).await?;
                    self.inject_tell(type_idx, msg);
                    Ok(())
                })),
                Err(e) => Ok(Err(e)),
            };
        };
        let target = self.target_on(&core);
        crate::stats::add(&core.stats.tells[usize::from(target != core.id)], 1);
        let msg = if direct && target == core.id {
            use crate::direct::DirectTell;
            match crate::direct::try_tell::<A, M>(&core, type_idx, &self.id.key, msg) {
                DirectTell::Sent => return Ok(Ok(())),
                DirectTell::Yield(msg) => {
                    // This task ran its direct turns for this poll: let the shard's other
                    // work run, then send (rare: once per `DIRECT_PER_POLL` tells).
                    return Err(Box::pin(async move {
                        crate::rt::yield_now().await;
                        self.tell(msg).await
                    }));
                }
                DirectTell::Refused(msg) => msg,
            }
        } else {
            msg
        };
        let item = self.envelope::<M>(&core, type_idx, target, msg, ReplyTo::None);
        if target == core.id {
            match try_send_local::<A>(&core, type_idx, item) {
                Ok(()) => Ok(Ok(())),
                Err(item) => Err(Box::pin(async move {
                    send_local::<A>(&core, type_idx, item).await;
                    Ok(())
                })),
            }
        } else if core.try_acquire_credit(target) {
            core.send_to(target, CrossMsg::Request(item));
            Ok(Ok(()))
        } else {
            Err(Box::pin(async move {
                core.acquire_credit(target).await;
                core.send_to(target, CrossMsg::Request(item));
                Ok(())
            }))
        }
    }

    /// Queues a tell from outside the node (the caller holds an admission slot).
    fn inject_tell<M>(&self, type_idx: u16, msg: M)
    where
        A: Handler<M>,
        M: Message,
    {
        let d = Deliver::<A, M>::new(
            type_idx,
            self.id.key.clone(),
            msg,
            ReplyTo::None,
            Origin::External,
        );
        self.node.inject(self.owner, CrossMsg::Request(Box::new(d)));
    }

    /// The one box a message travels in from shard `core` to shard `target`.
    #[inline]
    fn envelope<M>(
        &self,
        core: &Shard,
        type_idx: u16,
        target: ShardId,
        msg: M,
        reply: ReplyTo,
    ) -> Box<Deliver<A, M>>
    where
        A: Handler<M>,
        M: Message,
    {
        let origin = if target == core.id {
            Origin::Local
        } else {
            Origin::Shard(core.id)
        };
        Box::new(Deliver::<A, M>::new(
            type_idx,
            self.id.key.clone(),
            msg,
            reply,
            origin,
        ))
    }

    #[inline]
    fn type_index(&self) -> Result<u16, CallError> {
        // `ok_or_else`, not `ok_or`: the error is built (and dropped, an out-of-line call of
        // ~19 instructions) only when the type is unknown, not on every message.
        self.type_idx.ok_or_else(|| CallError::UnknownActorType {
            type_name: A::TYPE_NAME,
        })
    }

    #[inline]
    fn target_on(&self, core: &Shard) -> ShardId {
        if self.stateless {
            core.id
        } else {
            self.owner
        }
    }

    async fn ask_on_shard<M>(
        &self,
        core: Rc<Shard>,
        type_idx: u16,
        msg: M,
        timeout: Duration,
        direct: bool,
    ) -> Result<M::Reply, CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        let core = &core;
        let target = self.target_on(core);
        crate::stats::add(&core.stats.asks[usize::from(target != core.id)], 1);
        // The deadline starts now and covers waiting for a credit or for mailbox room; it
        // travels with the message, so the callee does not run the ask once it passed.
        let deadline = core.now() + timeout;
        let started_us = core.clock.now_us();
        let mut msg = msg;
        if direct && target == core.id {
            use crate::direct::DirectAsk;
            loop {
                match crate::direct::try_ask::<A, M>(core, type_idx, &self.id.key, msg, || deadline)
                {
                    DirectAsk::Done(r) => {
                        core.stats.ask_latency[0].record_us(core.clock.now_us() - started_us);
                        return r;
                    }
                    DirectAsk::Pending(call) => {
                        let outcome = LocalCallWait {
                            core,
                            call,
                            done: false,
                        }
                        .await;
                        core.stats.ask_latency[0].record_us(core.clock.now_us() - started_us);
                        return outcome_into::<A, M>(outcome, || self.id.clone(), timeout);
                    }
                    DirectAsk::Yield(m) => {
                        // This task ran its direct turns for this poll: let the shard's other
                        // work run first.
                        msg = m;
                        crate::rt::yield_now().await;
                    }
                    DirectAsk::Refused(m) => {
                        msg = m;
                        break;
                    }
                }
            }
        }
        let call = core
            .calls
            .borrow_mut()
            .register(deadline, Waiter::Task(None));
        let mut wait = LocalCallWait {
            core,
            call,
            done: false,
        };
        let reply = if target == core.id {
            ReplyTo::Local(call)
        } else {
            ReplyTo::Shard(core.id, call)
        };
        let send = async {
            if target != core.id {
                core.acquire_credit(target).await;
            }
            self.dispatch::<M>(core, type_idx, target, msg, reply, deadline)
                .await;
        };
        let mut send = std::pin::pin!(send);
        let early = std::future::poll_fn(|cx| {
            if send.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            // Before the message is sent, the call can only end by its deadline.
            Pin::new(&mut wait).poll(cx).map(Some)
        })
        .await;
        let outcome = match early {
            Some(timed_out) => timed_out,
            None => wait.await,
        };
        core.stats.ask_latency[usize::from(target != core.id)]
            .record_us(core.clock.now_us() - started_us);
        outcome_into::<A, M>(outcome, || self.id.clone(), timeout)
    }

    /// Hands `msg` to `target` from `core`'s shard: straight into the mailbox when the target
    /// is this shard, else into the ring (the caller holds a credit for `target`).
    #[inline]
    async fn dispatch<M>(
        &self,
        core: &Rc<Shard>,
        type_idx: u16,
        target: ShardId,
        msg: M,
        reply: ReplyTo,
        deadline: Instant,
    ) where
        A: Handler<M>,
        M: Message,
    {
        let mut item = self.envelope::<M>(core, type_idx, target, msg, reply);
        item.deadline = Some(deadline);
        if target != core.id {
            core.send_to(target, CrossMsg::Request(item));
        } else if let Err(item) = try_send_local::<A>(core, type_idx, item) {
            send_local::<A>(core, type_idx, item).await;
        }
    }

    /// Like `external_admit`, without waiting: `Full` if `external_inflight_max` messages
    /// from outside the node are in flight to the owner shard (or callers wait for a slot).
    fn external_admit_now(&self) -> Result<(), CallError> {
        self.check_running()?;
        if self.node.shards[usize::from(self.owner)].inject.try_admit() {
            Ok(())
        } else {
            Err(CallError::Full {
                actor: self.id.clone(),
                place: "injection queue",
            })
        }
    }

    fn check_running(&self) -> Result<(), CallError> {
        if self.node.phase() == Phase::Running {
            Ok(())
        } else {
            Err(CallError::ShuttingDown {
                actor: self.id.clone(),
            })
        }
    }

    /// Takes one of the owner shard's `external_inflight_max` slots for a message from outside
    /// the node, waiting (asynchronously, FIFO, woken when a slot frees up) while none is free;
    /// until `timer`'s deadline, if given (then `Timeout`). `ShuttingDown` once the node
    /// stops taking calls.
    async fn external_admit(&self, mut timer: Option<&mut DeadlineTimer>) -> Result<(), CallError> {
        self.check_running()?;
        let inj = &self.node.shards[usize::from(self.owner)].inject;
        if inj.try_admit() {
            return Ok(());
        }
        let mut admit = std::pin::pin!(inj.admit());
        let admitted = std::future::poll_fn(|cx| {
            if admit.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            // Looked at after registering: a phase change wakes every waiter.
            self.check_running()?;
            match timer.as_deref_mut() {
                Some(t) => t.poll_expired(cx).map(|()| {
                    Err(CallError::Timeout {
                        actor: self.id.clone(),
                        timeout: t.timeout(),
                    })
                }),
                None => Poll::Pending,
            }
        })
        .await;
        admitted?;
        if let Err(e) = self.check_running() {
            inj.release();
            return Err(e);
        }
        Ok(())
    }

    async fn ask_external<M>(
        &self,
        type_idx: u16,
        msg: M,
        timeout: Duration,
        parked_until: Option<Instant>,
    ) -> Result<M::Reply, CallError>
    where
        A: Handler<M>,
        M: Message,
    {
        let mut timer = DeadlineTimer::new(timeout, parked_until);
        let deadline = timer.at();
        self.external_admit(Some(&mut timer)).await?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let mut d = Deliver::<A, M>::new(
            type_idx,
            self.id.key.clone(),
            msg,
            ReplyTo::None,
            Origin::External,
        );
        d.external = Some(Box::new(External {
            forward: Box::new(ExtForward::<A, M> {
                tx,
                actor: self.id.clone(),
                timeout,
                deadline,
                _types: std::marker::PhantomData,
            }),
            deadline,
        }));
        d.deadline = Some(deadline);
        self.node.inject(self.owner, CrossMsg::Request(Box::new(d)));
        self.reply_by_deadline(rx, &mut timer).await
    }
}

/// The waiting part of a `tell` that found no room at once (boxed: the rare path).
type SlowTell<'a> = Pin<Box<dyn Future<Output = Result<(), CallError>> + 'a>>;

/// Every path of an ask other than a direct turn that ends in its first poll (boxed).
type SlowAsk<'a, R> = Pin<Box<dyn Future<Output = Result<R, CallError>> + 'a>>;

/// The future of [`ActorRef::ask`]: small, so that moving it costs little; its first poll
/// runs a direct turn when it can (see `ActorRef::ask_first`), else boxes the ordinary path.
struct Ask<'a, A, M: Message> {
    target: &'a ActorRef<A>,
    msg: Option<M>,
    timeout: Duration,
    slow: Option<SlowAsk<'a, M::Reply>>,
}

// The message is never pinned (it is moved out on the first poll).
impl<A, M: Message> Unpin for Ask<'_, A, M> {}

impl<A, M> Future for Ask<'_, A, M>
where
    A: Handler<M>,
    M: Message,
{
    type Output = Result<M::Reply, CallError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slow.is_none() {
            let msg = self
                .msg
                .take()
                .expect("an Ask is not polled after it completed");
            let (target, timeout) = (self.target, self.timeout);
            let slow = match target.ask_first(msg, timeout) {
                Ok(reply) => return Poll::Ready(Ok(reply)),
                Err(AskMiss::Other(msg)) => Box::pin(target.ask_with(msg, timeout, None, false)),
                Err(AskMiss::Slow(slow)) => slow,
                Err(AskMiss::Failed(e)) => return Poll::Ready(Err(*e)),
            };
            self.slow = Some(slow);
        }
        self.slow
            .as_mut()
            .expect("the slow path was set just above")
            .as_mut()
            .poll(cx)
    }
}

/// The future of [`ActorRef::tell`]. It sends nothing until it is awaited (or polled):
/// `r.tell(msg);` on its own is a bug the compiler warns about. Use
/// [`ActorRef::tell_now`] to send without a future.
///
/// Cancel safety: dropped before its first poll, nothing is sent; dropped while waiting for
/// room, the message is not sent.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # use quark_shard::{Actor, ActorRef, Context, Handler, Message};
/// # struct Counter(u64);
/// # impl Actor for Counter { const TYPE_NAME: &'static str = "counter"; }
/// # struct Inc;
/// # impl Message for Inc { type Reply = (); }
/// # impl Handler<Inc> for Counter {
/// #     async fn handle(&mut self, _: Inc, _: &Context<Self>) { self.0 += 1; }
/// # }
/// fn forgot_to_await(c: &ActorRef<Counter>) {
///     c.tell(Inc); // error: unused `Tell` that must be used
/// }
/// ```
///
/// The same code awaiting the tell compiles:
///
/// ```
/// #![deny(unused_must_use)]
/// # use quark_shard::{Actor, ActorRef, Context, Handler, Message};
/// # struct Counter(u64);
/// # impl Actor for Counter { const TYPE_NAME: &'static str = "counter"; }
/// # struct Inc;
/// # impl Message for Inc { type Reply = (); }
/// # impl Handler<Inc> for Counter {
/// #     async fn handle(&mut self, _: Inc, _: &Context<Self>) { self.0 += 1; }
/// # }
/// async fn awaited(c: &ActorRef<Counter>) {
///     c.tell(Inc).await.unwrap();
/// }
/// ```
#[must_use = "a Tell sends nothing unless it is awaited; `.await` it, or use `tell_now` to send \
              at once"]
pub struct Tell<'a, A, M> {
    target: &'a ActorRef<A>,
    msg: Option<M>,
    slow: Option<SlowTell<'a>>,
}

// The message is never pinned (it is moved out on the first poll), so `Tell` can move freely.
impl<A, M> Unpin for Tell<'_, A, M> {}

impl<A, M> Future for Tell<'_, A, M>
where
    A: Handler<M>,
    M: Message,
{
    type Output = Result<(), CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slow.is_none() {
            let msg = self
                .msg
                .take()
                .expect("a Tell is not polled after it completed");
            let slow = match self.target.tell_direct(msg) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(DirectMiss::Yield(msg)) => {
                    // This task ran its direct turns for this poll: let the shard's other
                    // work run, then send (rare: once per `DIRECT_PER_POLL` tells).
                    let target = self.target;
                    Box::pin(async move {
                        crate::rt::yield_now().await;
                        target.tell(msg).await
                    })
                }
                Err(DirectMiss::Other(msg)) => match self.target.tell_first(msg, false) {
                    Ok(done) => return Poll::Ready(done),
                    Err(slow) => slow,
                },
            };
            self.slow = Some(slow);
        }
        self.slow
            .as_mut()
            .expect("the waiting path was set just above")
            .as_mut()
            .poll(cx)
    }
}

/// How an [`Ask`] goes on when its first poll did not end in a direct turn's reply.
enum AskMiss<'a, M: Message> {
    /// Not a direct turn: the ordinary path (boxed by the caller).
    Other(M),
    /// A direct turn that awaits, or a yield first: the rest of the ask.
    Slow(SlowAsk<'a, M::Reply>),
    /// The direct turn failed (it panicked): boxed, so that the common case stays small.
    Failed(Box<CallError>),
}

/// Why [`ActorRef::tell_direct`] did not send: the message back.
enum DirectMiss<M> {
    /// The task used up its direct turns for this poll: yield, then send.
    Yield(M),
    /// Not a direct turn (another shard or node, no live idle activation, ...): the ordinary
    /// path.
    Other(M),
}

/// Waits for call `call` of `core`'s call table; forgets it if dropped first.
struct LocalCallWait<'a> {
    core: &'a Shard,
    call: CallId,
    done: bool,
}

impl Future for LocalCallWait<'_> {
    type Output = CallOutcome;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallOutcome> {
        let call = self.call;
        let r = self.core.calls.borrow_mut().poll(call, cx);
        if r.is_ready() {
            self.done = true;
        }
        r
    }
}

impl Drop for LocalCallWait<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.core.calls.borrow_mut().cancel(self.call);
        }
    }
}

/// Panics if the calling thread is a shard thread (of any node): a blocking call there would
/// stop the shard.
fn assert_not_on_shard(what: &str) {
    assert!(
        !crate::pump::on_shard_thread(),
        "{what} called on a shard thread: it would block the shard (and perhaps the actor it \
         waits for); use the async call with .await"
    );
}
