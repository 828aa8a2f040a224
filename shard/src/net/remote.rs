//! Messages across nodes: sending an ask or a tell to an actor owned by another node, handling
//! requests that arrive from the network, and matching replies to calls.

use std::any::TypeId;
use std::rc::Rc;
use std::time::Duration;

use quark_net::{
    ArchivedWireKey, EncodeError, Frame, FrameHead, FrameKind, RemoteError, RequestEnvelope,
    ResponseView, WireKey, WireMessage, WireOwned,
};
use quark_placement::{ActorId, ActorKey, NodeId};

use super::conn::Outbound;
use crate::actor::{Handler, Message};
use crate::actor_ref::ActorRef;
use crate::calls::{CallId, CallOutcome, RemoteReply, Waiter};
use crate::engine::shared::Phase;
use crate::envelope::{Origin, ReplyTo};
use crate::error::CallError;
use crate::shard::Shard;

pub(super) fn wire_key(key: &ActorKey) -> WireKey<'_> {
    match key {
        ActorKey::U64(k) => WireKey::U64(*k),
        ActorKey::Str(s) => WireKey::Str(std::borrow::Cow::Borrowed(s)),
        ActorKey::Bytes(b) => WireKey::Bytes(std::borrow::Cow::Borrowed(b)),
    }
}

fn actor_key(key: &ArchivedWireKey<'_>) -> ActorKey {
    match key {
        ArchivedWireKey::U64(k) => ActorKey::U64(k.to_native()),
        ArchivedWireKey::Str(s) => ActorKey::from(s.as_str()),
        ArchivedWireKey::Bytes(b) => ActorKey::from(b.as_slice()),
    }
}

pub(super) fn deadline_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The cause of `NodeUnavailable` for `node`: its link's last error.
/// A member that is out of the member view (it left, or its lease expired) is named as such,
/// with the link's error as the next cause.
fn link_cause(core: &Shard, node: NodeId) -> Option<crate::error::LinkDown> {
    let last = core.net.as_ref()?.links.get(&node).and_then(|l| l.cause());
    super::members::gone_cause(core, node, last.clone()).or(last)
}

fn unavailable(core: &Shard, node: NodeId, id: &ActorId) -> CallError {
    if let Some(net) = &core.net {
        let s = &net.stats.asks_unavailable;
        s.set(s.get() + 1);
    }
    CallError::NodeUnavailable {
        node,
        actor: Some(id.clone()),
        cause: link_cause(core, node),
    }
}

fn encode_error(id: &ActorId, message_type: &'static str, e: EncodeError) -> CallError {
    match e {
        EncodeError::TooLarge { len, max } => CallError::MessageTooLarge {
            actor: id.clone(),
            message_type,
            bytes: len,
            max,
        },
        _ => CallError::NotSerializable {
            actor: id.clone(),
            message_type,
        },
    }
}

/// What the caller knows of a remote call, to rebuild the callee's error as a [`CallError`].
pub(crate) struct CallSite<'a> {
    pub(crate) actor: &'a ActorId,
    pub(crate) node: NodeId,
    pub(crate) timeout: Duration,
    /// Wire name of the request's message type.
    pub(crate) message_type: &'static str,
    /// Rust type name of the request's message type.
    pub(crate) rust_type: &'static str,
}

/// The places a [`CallError::Full`] names, to turn a wire `place` back into a static name.
const FULL_PLACES: [&str; 4] = [
    "mailbox",
    "cross-shard credits",
    "injection queue",
    "connection buffer",
];

/// Maps the callee's error to the caller's: each wire code to its own [`CallError`] variant
/// (the inverse of [`call_error_to_remote`]); `Overloaded` (code 6, which no peer of this
/// protocol version sends for anything else) is a memory refusal; refusals that are not call
/// errors (`UnknownMessageType`, `BadPayload`) become [`CallError::Remote`].
pub(crate) fn remote_error(e: RemoteError, site: &CallSite<'_>) -> CallError {
    let actor = site.actor.clone();
    let node = site.node;
    match e {
        RemoteError::ActorPanicked => CallError::ActorPanicked {
            actor,
            panic: format!("on node {node}; its message was not sent"),
        },
        RemoteError::Panicked { message } => CallError::ActorPanicked {
            actor,
            panic: format!("{message}, on node {node}"),
        },
        RemoteError::ActivationAborted => CallError::ActivationAborted { actor },
        RemoteError::Overloaded => CallError::Overloaded {
            actor,
            cause: crate::OverloadCause::Memory,
        },
        RemoteError::ActivationFailed { detail } => CallError::ActivationFailed {
            actor,
            detail: format!("{detail} (on node {node})"),
        },
        RemoteError::UnknownActorType { actor_type } if actor_type == site.actor.type_name => {
            CallError::UnknownActorType {
                type_name: site.actor.type_name,
            }
        }
        RemoteError::Timeout => CallError::Timeout {
            actor,
            timeout: site.timeout,
        },
        RemoteError::ShuttingDown => CallError::ShuttingDown { actor },
        RemoteError::NodeUnavailable { node } => CallError::NodeUnavailable {
            node,
            actor: Some(actor),
            cause: None,
        },
        RemoteError::NotWireMessage { .. } => CallError::NotWireMessage {
            message_type: site.rust_type,
        },
        RemoteError::MessageTooLarge { bytes, max, .. } => CallError::MessageTooLarge {
            actor,
            message_type: site.message_type,
            bytes,
            max,
        },
        RemoteError::NotSerializable { .. } => CallError::NotSerializable {
            actor,
            message_type: site.message_type,
        },
        RemoteError::BadReply { node, .. } => CallError::BadReply {
            actor,
            node,
            message_type: site.message_type,
        },
        RemoteError::Full { place } => CallError::Full {
            actor,
            place: FULL_PLACES
                .iter()
                .find(|p| **p == place)
                .copied()
                .unwrap_or("callee queue"),
        },
        error => CallError::Remote { actor, node, error },
    }
}

/// An ask from shard `core` to actor `id` owned by node `node`: the message is archived into
/// this shard's connection to `node`, and the reply comes back on it, matched by the call id.
pub(crate) async fn ask_remote<A, M>(
    aref: &ActorRef<A>,
    core: Rc<Shard>,
    node: NodeId,
    msg: M,
    timeout: Duration,
) -> Result<M::Reply, CallError>
where
    A: Handler<M>,
    M: Message,
{
    let id = aref.id();
    let Some(codec) = core.node.registry.codec::<M>() else {
        return Err(CallError::NotWireMessage {
            message_type: std::any::type_name::<M>(),
        });
    };
    let Some(link) = core.net.as_ref().and_then(|n| n.links.get(&node)) else {
        return Err(unavailable(&core, node, id));
    };
    let deadline = core.now() + timeout;
    let started_us = core.clock.now_us();
    let Some(wire) = link.wire() else {
        return Err(unavailable(&core, node, id));
    };
    if wire.out.borrow().len() >= wire.out_bytes_max {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if crate::rt::tcp::timeout(left, wire.room()).await.is_none() {
            return Err(CallError::Timeout {
                actor: id.clone(),
                timeout,
            });
        }
        if wire.is_closed() {
            return Err(unavailable(&core, node, id));
        }
    }
    let call = core
        .calls
        .borrow_mut()
        .register(deadline, Waiter::Task(None));
    let corr = call.to_u64();
    let mut wait = RemoteCallGuard {
        core: &core,
        call,
        wire: &wire,
        corr,
        done: false,
    };
    let mut env = RequestEnvelope::new(
        A::TYPE_NAME,
        wire_key(&id.key),
        codec.wire_name,
        deadline_ms(timeout),
    );
    env.trace = crate::trace::current().map(crate::trace::to_wire);
    let head = FrameHead {
        source_shard: core.id,
        correlation: corr,
        ..FrameHead::new(FrameKind::Request)
    };
    let max = core.net.as_ref().map_or(0, |n| n.cfg.frame_bytes_max);
    let encoded = (codec.encode)(&msg, &mut wire.out.borrow_mut(), head, &env, max);
    if let Err(e) = encoded {
        return Err(encode_error(id, codec.wire_name, e));
    }
    drop(msg);
    wire.frames_queued.set(wire.frames_queued.get() + 1);
    wire.pending.borrow_mut().insert(corr);
    wire.wake_writer();
    crate::stats::add(&core.stats.asks[crate::stats::REMOTE], 1);
    core.stats.sent_to_node(node);
    crate::stats::note_send_by(
        || core.node.type_index.get(&TypeId::of::<A>()).copied(),
        &id.key,
    );
    let outcome = std::future::poll_fn(|cx| {
        let r = core.calls.borrow_mut().poll(wait.call, cx);
        if r.is_ready() {
            wait.done = true;
        }
        r
    })
    .await;
    drop(wait);
    core.stats.ask_latency[crate::stats::REMOTE].record_us(core.clock.now_us() - started_us);
    remote_outcome::<M>(&core, codec, id, node, timeout, outcome)
}

/// Turns what came back for a remote ask into the caller's result.
fn remote_outcome<M: Message>(
    core: &Shard,
    codec: &super::WireCodec,
    id: &ActorId,
    node: NodeId,
    timeout: Duration,
    outcome: CallOutcome,
) -> Result<M::Reply, CallError> {
    match outcome {
        CallOutcome::Remote(RemoteReply::Value(bytes)) => match (codec.decode_reply)(&bytes) {
            Ok(any) => match any.downcast::<M::Reply>() {
                Ok(v) => Ok(*v),
                Err(_) => unreachable!("a codec decodes the reply type of its message"),
            },
            Err(e) => {
                tracing::warn!(shard = core.id, peer = node, actor = %id, error = %crate::error::ErrorChain(&e),
                    "invalid reply from peer");
                Err(CallError::BadReply {
                    actor: id.clone(),
                    node,
                    message_type: codec.wire_name,
                })
            }
        },
        CallOutcome::Remote(RemoteReply::Error(e)) => {
            let site = CallSite {
                actor: id,
                node,
                timeout,
                message_type: codec.wire_name,
                rust_type: std::any::type_name::<M>(),
            };
            Err(remote_error(e, &site))
        }
        CallOutcome::Failed(CallError::NodeUnavailable { node, cause, .. }) => {
            Err(CallError::NodeUnavailable {
                node,
                actor: Some(id.clone()),
                cause,
            })
        }
        CallOutcome::Failed(e) => Err(e),
        CallOutcome::TimedOut => Err(CallError::Timeout {
            actor: id.clone(),
            timeout,
        }),
        CallOutcome::Reply(_) => unreachable!("a remote call is completed with a remote outcome"),
    }
}

/// Forgets a remote call if its future is dropped (or after it completed).
struct RemoteCallGuard<'a> {
    core: &'a Shard,
    call: CallId,
    wire: &'a Outbound,
    corr: u64,
    done: bool,
}

impl Drop for RemoteCallGuard<'_> {
    fn drop(&mut self) {
        self.wire.pending.borrow_mut().remove(&self.corr);
        if !self.done {
            self.core.calls.borrow_mut().cancel(self.call);
        }
    }
}

/// The connection a tell to `node` goes on, or `NodeUnavailable` (counted as a dropped tell,
/// logged at a bounded rate) if the node is unreachable.
fn tell_wire<A: crate::actor::Actor>(
    aref: &ActorRef<A>,
    core: &Shard,
    node: NodeId,
) -> Result<Rc<Outbound>, CallError> {
    let id = aref.id();
    let net = core.net.as_ref();
    let link = net.and_then(|n| n.links.get(&node));
    if let Some(wire) = link.as_ref().and_then(|l| l.wire()) {
        return Ok(wire);
    }
    if let (Some(net), Some(link)) = (net, link.as_ref()) {
        let s = &net.stats.tells_dropped;
        s.set(s.get() + 1);
        link.dropped_since_log.set(link.dropped_since_log.get() + 1);
        if super::log_due(
            &link.last_drop_log,
            std::time::Instant::now(),
            net.cfg.drop_log_interval,
        ) {
            tracing::warn!(shard = core.id, peer = node, addr = %link.addr(),
                dropped = link.dropped_since_log.replace(0),
                dropped_total = s.get(),
                "tells to an unreachable node dropped");
        }
    }
    Err(CallError::NodeUnavailable {
        node,
        actor: Some(id.clone()),
        cause: link.and_then(|l| l.cause()),
    })
}

/// Appends the tell's frame to `wire` (whatever its fill) and wakes the writer.
fn queue_tell<A, M>(
    aref: &ActorRef<A>,
    core: &Shard,
    wire: &Outbound,
    codec: &super::WireCodec,
    msg: M,
) -> Result<(), CallError>
where
    A: Handler<M>,
    M: Message,
{
    let id = aref.id();
    let mut env = RequestEnvelope::new(A::TYPE_NAME, wire_key(&id.key), codec.wire_name, 0);
    env.trace = crate::trace::current().map(crate::trace::to_wire);
    let head = FrameHead {
        source_shard: core.id,
        ..FrameHead::new(FrameKind::OneWay)
    };
    let max = core.net.as_ref().map_or(0, |n| n.cfg.frame_bytes_max);
    let encoded = (codec.encode)(&msg, &mut wire.out.borrow_mut(), head, &env, max);
    encoded.map_err(|e| encode_error(id, codec.wire_name, e))?;
    wire.frames_queued.set(wire.frames_queued.get() + 1);
    wire.tells_queued.set(wire.tells_queued.get() + 1);
    crate::stats::add(&core.stats.tells[crate::stats::REMOTE], 1);
    crate::stats::note_send_by(
        || core.node.type_index.get(&TypeId::of::<A>()).copied(),
        &id.key,
    );
    wire.wake_writer();
    Ok(())
}

/// A tell from shard `core` to actor `id` owned by node `node`. If the node is unreachable the
/// tell is counted as dropped, logged (at a bounded rate) and reported as `NodeUnavailable`.
pub(crate) async fn tell_remote<A, M>(
    aref: &ActorRef<A>,
    core: Rc<Shard>,
    node: NodeId,
    msg: M,
) -> Result<(), CallError>
where
    A: Handler<M>,
    M: Message,
{
    let id = aref.id();
    let Some(codec) = core.node.registry.codec::<M>() else {
        return Err(CallError::NotWireMessage {
            message_type: std::any::type_name::<M>(),
        });
    };
    let wire = tell_wire(aref, &core, node)?;
    if wire.out.borrow().len() >= wire.out_bytes_max {
        wire.room().await;
        if wire.is_closed() {
            // The connection ended while this tell waited for room: it was never queued.
            if let Some(net) = core.net.as_ref() {
                let s = &net.stats.tells_dropped;
                s.set(s.get() + 1);
            }
            return Err(CallError::NodeUnavailable {
                node,
                actor: Some(id.clone()),
                cause: link_cause(&core, node),
            });
        }
    }
    queue_tell(aref, &core, &wire, codec, msg).inspect(|()| core.stats.sent_to_node(node))
}

/// A tell from shard `core` to actor `id` owned by node `node`, at once: `Full` if the
/// connection's outgoing buffer is at `out_bytes_max`, `NodeUnavailable` (counted as dropped)
/// if the node is unreachable.
pub(crate) fn tell_remote_now<A, M>(
    aref: &ActorRef<A>,
    core: &Shard,
    node: NodeId,
    msg: M,
) -> Result<(), CallError>
where
    A: Handler<M>,
    M: Message,
{
    let Some(codec) = core.node.registry.codec::<M>() else {
        return Err(CallError::NotWireMessage {
            message_type: std::any::type_name::<M>(),
        });
    };
    let wire = tell_wire(aref, core, node)?;
    if wire.out.borrow().len() >= wire.out_bytes_max {
        return Err(CallError::Full {
            actor: aref.id().clone(),
            place: "connection buffer",
        });
    }
    queue_tell(aref, core, &wire, codec, msg).inspect(|()| core.stats.sent_to_node(node))
}

/// Where the reply to a request from the network goes: the connection it came on. Counts as
/// one request in progress on that connection until dropped (the reader stops reading while
/// `requests_inflight_max` are in progress).
pub(crate) struct ReplySink {
    wire: Rc<Outbound>,
    head: FrameHead,
    /// False for a tell: the sink only holds the request slot.
    reply: bool,
}

impl Drop for ReplySink {
    fn drop(&mut self) {
        self.wire.request_done();
    }
}

impl ReplySink {
    fn new(wire: &Rc<Outbound>, head: FrameHead) -> ReplySink {
        wire.request_started();
        ReplySink {
            wire: wire.clone(),
            head,
            reply: head.kind == FrameKind::Request,
        }
    }

    pub(super) fn send_value<R: WireOwned>(self, core: &Shard, value: &R) {
        if !self.reply {
            return;
        }
        if self.wire.is_closed() {
            return lost(core);
        }
        let max = core.net.as_ref().map_or(0, |n| n.cfg.frame_bytes_max);
        let r = quark_net::encode_response(&mut self.wire.out.borrow_mut(), &self.head, value, max);
        match r {
            Ok(bytes) => {
                self.wire.reply_queued(bytes as usize);
                self.queued()
            }
            Err(e) => {
                tracing::warn!(shard = core.id, error = %crate::error::ErrorChain(&e), "reply cannot be encoded");
                self.send_error(
                    core,
                    &RemoteError::BadPayload {
                        message_type: R::WIRE_NAME.to_owned(),
                    },
                );
            }
        }
    }

    pub(super) fn send_error(self, core: &Shard, e: &RemoteError) {
        if !self.reply {
            return;
        }
        if self.wire.is_closed() {
            return lost(core);
        }
        let max = core.net.as_ref().map_or(0, |n| n.cfg.frame_bytes_max);
        let r = quark_net::encode_error_reply(&mut self.wire.out.borrow_mut(), &self.head, e, max);
        if r.is_ok() {
            self.queued();
        }
    }

    fn queued(self) {
        self.wire
            .frames_queued
            .set(self.wire.frames_queued.get() + 1);
        self.wire.wake_writer();
    }
}

/// Completes a request from the network that was delivered straight into a local mailbox:
/// the call table hands it the outcome (reply, failure or deadline).
struct WireForward<A, M> {
    core: std::rc::Weak<Shard>,
    sink: ReplySink,
    _types: std::marker::PhantomData<fn() -> (A, M)>,
}

impl<A, M> crate::calls::Forward for WireForward<A, M>
where
    A: Handler<M>,
    M: Message,
    M::Reply: WireOwned,
{
    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let WireForward { core, sink, .. } = *self;
        let Some(core) = core.upgrade() else { return };
        match outcome {
            CallOutcome::Reply(any) => match any.downcast::<crate::envelope::Deliver<A, M>>() {
                Ok(mut d) => match d.take_value() {
                    Some(v) => sink.send_value(&core, &v),
                    None => sink.send_error(&core, &RemoteError::ActorPanicked),
                },
                Err(_) => unreachable!("a call's reply has the type its request carried"),
            },
            CallOutcome::Failed(e) => sink.send_error(&core, &call_error_to_remote(e)),
            CallOutcome::TimedOut => sink.send_error(&core, &RemoteError::Timeout),
            CallOutcome::Remote(_) => {
                unreachable!("a request from the network is served on this node")
            }
        }
    }
}

fn lost(core: &Shard) {
    if let Some(net) = &core.net {
        let s = &net.stats.replies_lost;
        s.set(s.get() + 1);
    }
}

/// The wire code of a [`CallError`] met while serving a request from the network: one code
/// per variant (the inverse of [`remote_error`]; the match is exhaustive, so a new variant
/// needs a code). A `Remote` error (from a third node) travels as the error it wraps.
pub(crate) fn call_error_to_remote(e: CallError) -> RemoteError {
    match e {
        CallError::ActorPanicked { panic, .. } => RemoteError::Panicked { message: panic },
        CallError::ActivationAborted { .. } => RemoteError::ActivationAborted,
        CallError::ActivationFailed { detail, .. } => RemoteError::ActivationFailed { detail },
        CallError::UnknownActorType { type_name } => RemoteError::UnknownActorType {
            actor_type: type_name.to_owned(),
        },
        CallError::Timeout { .. } => RemoteError::Timeout,
        CallError::NodeUnavailable { node, .. } => RemoteError::NodeUnavailable { node },
        CallError::NotWireMessage { message_type } => RemoteError::NotWireMessage {
            message_type: message_type.to_owned(),
        },
        CallError::MessageTooLarge {
            message_type,
            bytes,
            max,
            ..
        } => RemoteError::MessageTooLarge {
            message_type: message_type.to_owned(),
            bytes,
            max,
        },
        CallError::NotSerializable { message_type, .. } => RemoteError::NotSerializable {
            message_type: message_type.to_owned(),
        },
        CallError::BadReply {
            node, message_type, ..
        } => RemoteError::BadReply {
            node,
            message_type: message_type.to_owned(),
        },
        CallError::Remote { error, .. } => error,
        CallError::Full { place, .. } => RemoteError::Full {
            place: place.to_owned(),
        },
        CallError::ShuttingDown { .. } => RemoteError::ShuttingDown,
        // Code 6, which every build reads (an older one as `CallError::Remote`, "the callee
        // is overloaded"); memory is the only cause so far.
        CallError::Overloaded { .. } => RemoteError::Overloaded,
    }
}

/// The handler of (actor `A`, message `M`) for requests from the network: decodes the body,
/// then asks (or tells) the actor on this node, from a task on this shard; the ask takes the
/// local path to the owner shard (a ring hop if another shard owns it).
///
/// `from_home`: the actor's home node sent it on (the request's message type had the
/// [`FROM_HOME`] marker): it lives here, whatever its static node.
pub(crate) fn handle<A, M>(
    core: &Rc<Shard>,
    key: ActorKey,
    body: &[u8],
    timeout: Duration,
    sink: ReplySink,
    from_home: bool,
) -> Result<(), RemoteError>
where
    A: Handler<M>,
    M: Message + WireOwned,
    M::Reply: WireOwned,
{
    let msg = M::from_wire(body).map_err(|_| RemoteError::BadPayload {
        message_type: M::WIRE_NAME.to_owned(),
    })?;
    // A sender that follows the live member set (a client) may address an actor whose type
    // does not move (its journal is on its static node) to another node: sent on there;
    // unless its home sent it here (a durable actor moved here: sending it back would loop).
    if !from_home && misrouted::<A>(core, &key) {
        let aref = ActorRef::<A>::new(core.node.clone(), key);
        call_via(core, aref, msg, timeout, sink);
        return Ok(());
    }
    // Fast path: this shard owns the actor. The message goes straight into its mailbox, the
    // reply straight from the call table onto the connection (no task, no ring).
    let (key, msg, sink) = match deliver_here::<A, M>(core, key, msg, timeout, sink) {
        Ok(()) => return Ok(()),
        Err(back) => back,
    };
    let aref = ActorRef::<A>::new_local(core.node.clone(), key);
    call_via(core, aref, msg, timeout, sink);
    Ok(())
}

/// The prefix of a request's message type (before the message's wire name) when the actor's
/// home node sends it on to the node the actor lives on (docs/PROTOCOL.md, "Requests sent on
/// by an actor's home"): the receiver delivers it there and never sends it back.
pub(crate) const FROM_HOME: &str = "quark.home/";

/// True if `key`'s actor of type `A` does not move and its static node is another one (only
/// checked once the live member set changed).
fn misrouted<A: crate::actor::Actor>(core: &Shard, key: &ActorKey) -> bool {
    let node = &core.node;
    let Some(net) = node.net.as_ref() else {
        return false;
    };
    if !net.view.changed() {
        return false;
    }
    let type_idx = node.type_index.get(&std::any::TypeId::of::<A>()).copied();
    if crate::migrate::fixed_node(node, type_idx) == Some(net.node_id) {
        return false;
    }
    let movable = node
        .type_index
        .get(&std::any::TypeId::of::<A>())
        .is_none_or(|&i| node.types[usize::from(i)].bytes_mover());
    let id = ActorId {
        type_name: A::TYPE_NAME,
        key: key.clone(),
    };
    !movable && net.view.static_home(&id).is_some_and(|n| n != net.node_id)
}

/// Runs a request from the network through `aref`, from a task on this shard.
fn call_via<A, M>(core: &Rc<Shard>, aref: ActorRef<A>, msg: M, timeout: Duration, sink: ReplySink)
where
    A: Handler<M>,
    M: Message + WireOwned,
    M::Reply: WireOwned,
{
    let core2 = core.clone();
    let trace = crate::trace::current();
    match sink.reply {
        true => core.sched.spawn(crate::trace::carry(trace, async move {
            match aref.ask_timeout(msg, timeout).await {
                Ok(v) => sink.send_value(&core2, &v),
                Err(e) => sink.send_error(&core2, &call_error_to_remote(e)),
            }
        })),
        false => core.sched.spawn(crate::trace::carry(trace, async move {
            if let Err(e) = aref.tell(msg).await {
                tracing::debug!(shard = core2.id, error = %e, "tell from the network failed");
            }
            drop(sink);
        })),
    }
}

/// Delivers a request from the network to its actor if this shard owns it; otherwise gives
/// the request back (the caller forwards it through an `ActorRef`).
fn deliver_here<A, M>(
    core: &Rc<Shard>,
    key: ActorKey,
    msg: M,
    timeout: Duration,
    sink: ReplySink,
) -> Result<(), (ActorKey, M, ReplySink)>
where
    A: Handler<M>,
    M: Message + WireOwned,
    M::Reply: WireOwned,
{
    let node = &core.node;
    if let Some(&type_idx) = node.type_index.get(&std::any::TypeId::of::<A>()) {
        let ty = &node.types[usize::from(type_idx)];
        let owner = if ty.stateless() {
            core.id
        } else {
            quark_placement::shard_for(
                &ActorId {
                    type_name: A::TYPE_NAME,
                    key: key.clone(),
                },
                node.shard_count(),
            )
        };
        if owner == core.id {
            if !sink.reply {
                // A tell: into the mailbox if it has room; otherwise a task waits for room,
                // holding the connection's request slot (so the reader stops reading when
                // too many wait).
                let d = Box::new(crate::envelope::Deliver::<A, M>::new(
                    type_idx,
                    key,
                    msg,
                    ReplyTo::None,
                    Origin::Local,
                ));
                if let Err(d) = crate::activation::try_send_local::<A>(core, type_idx, d) {
                    let core2 = core.clone();
                    core.sched.spawn(async move {
                        crate::activation::send_local::<A>(&core2, type_idx, d).await;
                        drop(sink);
                    });
                }
                return Ok(());
            }
            let fwd = WireForward::<A, M> {
                core: Rc::downgrade(core),
                sink,
                _types: std::marker::PhantomData,
            };
            let deadline = core.now() + timeout;
            let call = core
                .calls
                .borrow_mut()
                .register(deadline, Waiter::Forward(Box::new(fwd)));
            let mut d = Box::new(crate::envelope::Deliver::<A, M>::new(
                type_idx,
                key,
                msg,
                ReplyTo::Local(call),
                Origin::Local,
            ));
            // The caller's deadline travels with the message: once it passed, the turn is
            // not run (the caller gets `Timeout` either way).
            d.deadline = Some(deadline);
            // Never waits: the connection's request bound (4096 in progress) bounds the
            // mailbox growth from the network.
            crate::activation::deliver::<A>(core, type_idx, d);
            return Ok(());
        }
    }
    Err((key, msg, sink))
}

/// Handles a Request or OneWay frame from the network. Never closes the connection: a frame
/// that passed the decoder is well formed; what is wrong with its payload gets an ErrorReply
/// (for a request) and is counted.
pub(crate) fn dispatch(core: &Rc<Shard>, wire: &Rc<Outbound>, frame: &Frame<'_>) {
    let net = core.net();
    net.stats.requests_in.set(net.stats.requests_in.get() + 1);
    let head = frame.header.head;
    let sink = ReplySink::new(wire, head);
    let refuse = |sink: ReplySink, e: RemoteError| {
        net.stats
            .requests_refused
            .set(net.stats.requests_refused.get() + 1);
        tracing::debug!(shard = core.id, error = %e, "request from the network refused");
        sink.send_error(core, &e);
    };
    let req = match quark_net::decode_request(frame) {
        Ok(r) => r,
        Err(_) => {
            return refuse(
                sink,
                RemoteError::BadPayload {
                    message_type: <RequestEnvelope<'_> as WireMessage>::WIRE_NAME.to_owned(),
                },
            )
        }
    };
    if core.node.phase() != Phase::Running {
        return refuse(sink, RemoteError::ShuttingDown);
    }
    let actor_type = req.envelope.actor_type.as_str();
    let message_type = req.envelope.message_type.as_str();
    if message_type.starts_with(super::members::PREFIX) {
        return super::members::serve(core, actor_key(&req.envelope.key), req.body, sink);
    }
    if message_type.starts_with(super::migrate::PREFIX) {
        let key = actor_key(&req.envelope.key);
        return super::migrate::serve(core, actor_type, message_type, key, req.body, sink);
    }
    // The marker of a message the actor's home node sent on to the node it lives on.
    let (message_type, from_home) = match message_type.strip_prefix(FROM_HOME) {
        Some(m) => (m, true),
        None => (message_type, false),
    };
    let Some(handler) = core.node.registry.handler(actor_type, message_type) else {
        let known_type = core.node.registry.handles_type(actor_type)
            || core.node.types.iter().any(|t| t.name() == actor_type);
        let e = if known_type {
            RemoteError::UnknownMessageType {
                actor_type: actor_type.to_owned(),
                message_type: message_type.to_owned(),
            }
        } else {
            RemoteError::UnknownActorType {
                actor_type: actor_type.to_owned(),
            }
        };
        return refuse(sink, e);
    };
    let timeout = match req.envelope.deadline_ms.to_native() {
        0 => core.node.config.ask_timeout,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let key = actor_key(&req.envelope.key);
    // The sink is moved into the handler; a refusal (bad payload) answers on a second one.
    let refusal_sink = ReplySink::new(wire, head);
    // The caller's trace context is current while the call starts, so the message (or the
    // task that forwards it to the owner shard) carries it.
    let trace = req
        .envelope
        .trace
        .as_ref()
        .and_then(crate::trace::from_wire);
    let started = crate::trace::scoped(trace, || {
        handler(core, key, req.body, timeout, sink, from_home)
    });
    if let Err(e) = started {
        refuse(refusal_sink, e);
    }
}

/// Handles a Response or ErrorReply frame: completes the call it answers, if it is still
/// waiting on this connection.
pub(crate) fn complete(core: &Rc<Shard>, wire: &Rc<Outbound>, frame: &Frame<'_>, peer: NodeId) {
    let corr = frame.header.head.correlation;
    if !wire.pending.borrow_mut().remove(&corr) {
        // Timed out or cancelled already (or never ours): dropped and counted.
        let c = &core.stats.replies_dropped;
        c.set(c.get() + 1);
        return;
    }
    let outcome = match quark_net::decode_response(frame) {
        Ok(ResponseView::Reply(bytes)) => {
            let mut v = quark_net::rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
            v.extend_from_slice(bytes);
            CallOutcome::Remote(RemoteReply::Value(v))
        }
        Ok(ResponseView::Error(e)) => CallOutcome::Remote(RemoteReply::Error(e)),
        Err(e) => {
            tracing::warn!(shard = core.id, peer, error = %crate::error::ErrorChain(&e), "invalid error reply from peer");
            CallOutcome::Remote(RemoteReply::Error(RemoteError::BadPayload {
                message_type: <RemoteError as WireMessage>::WIRE_NAME.to_owned(),
            }))
        }
    };
    core.complete_call(CallId::from_u64(corr), outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_net::{decode_response, encode_error_reply, FrameDecoder, OutBuf};

    /// One of each [`CallError`] variant. The match in `index` is exhaustive, so a new variant
    /// fails to compile here until it is added to this list (and so gets a wire code).
    fn every_call_error(actor: &ActorId) -> Vec<CallError> {
        let a = || actor.clone();
        vec![
            CallError::ActorPanicked {
                actor: a(),
                panic: "boom at src/x.rs:1:1".into(),
            },
            CallError::ActivationAborted { actor: a() },
            CallError::ActivationFailed {
                actor: a(),
                detail: "journal unreadable".into(),
            },
            CallError::UnknownActorType { type_name: "t" },
            CallError::Timeout {
                actor: a(),
                timeout: Duration::from_millis(250),
            },
            CallError::NodeUnavailable {
                node: 9,
                actor: Some(a()),
                cause: None,
            },
            CallError::NotWireMessage {
                message_type: "my_crate::Msg",
            },
            CallError::MessageTooLarge {
                actor: a(),
                message_type: "t.Msg",
                bytes: 5000,
                max: 4096,
            },
            CallError::NotSerializable {
                actor: a(),
                message_type: "t.Msg",
            },
            CallError::BadReply {
                actor: a(),
                node: 9,
                message_type: "t.Msg",
            },
            CallError::Remote {
                actor: a(),
                node: 2,
                error: RemoteError::UnknownMessageType {
                    actor_type: "t".into(),
                    message_type: "t.Other".into(),
                },
            },
            CallError::Full {
                actor: a(),
                place: "cross-shard credits",
            },
            CallError::ShuttingDown { actor: a() },
            CallError::Overloaded {
                actor: a(),
                cause: crate::OverloadCause::Memory,
            },
        ]
    }

    fn index(e: &CallError) -> usize {
        match e {
            CallError::ActorPanicked { .. } => 0,
            CallError::ActivationAborted { .. } => 1,
            CallError::ActivationFailed { .. } => 2,
            CallError::UnknownActorType { .. } => 3,
            CallError::Timeout { .. } => 4,
            CallError::NodeUnavailable { .. } => 5,
            CallError::NotWireMessage { .. } => 6,
            CallError::MessageTooLarge { .. } => 7,
            CallError::NotSerializable { .. } => 8,
            CallError::BadReply { .. } => 9,
            CallError::Remote { .. } => 10,
            CallError::Full { .. } => 11,
            CallError::ShuttingDown { .. } => 12,
            CallError::Overloaded { .. } => 13,
        }
    }

    #[test]
    fn every_call_error_round_trips_through_its_own_wire_code() {
        let actor = ActorId::new("t", 7u64);
        let all = every_call_error(&actor);
        let mut seen: Vec<usize> = all.iter().map(index).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (0..=13).collect::<Vec<_>>(), "one of each variant");

        let site = CallSite {
            actor: &actor,
            node: 2,
            timeout: Duration::from_millis(250),
            message_type: "t.Msg",
            rust_type: "my_crate::Msg",
        };
        let mut codes = Vec::new();
        for e in all {
            let code = call_error_to_remote(e.clone());
            // Through the bytes of an ErrorReply frame, as a peer receives it.
            let mut out = OutBuf::new();
            let req = FrameHead::new(FrameKind::Request);
            encode_error_reply(&mut out, &req, &code, 1 << 20).expect("encodes");
            let mut dec = FrameDecoder::new(1 << 20);
            dec.feed(out.pending()).expect("one frame");
            let frame = dec.next_frame().expect("a frame");
            let ResponseView::Error(got) = decode_response(&frame).expect("decodes") else {
                panic!("an error reply");
            };
            assert_eq!(got, code);
            let back = remote_error(got, &site);
            assert_eq!(index(&back), index(&e), "{e:?} came back as {back:?}");
            assert_eq!(back.actor(), e.actor(), "{e:?}");
            match (&e, &back) {
                // The node is added to the text.
                (
                    CallError::ActivationFailed { detail: a, .. },
                    CallError::ActivationFailed { detail: b, .. },
                )
                | (
                    CallError::ActorPanicked { panic: a, .. },
                    CallError::ActorPanicked { panic: b, .. },
                ) => {
                    assert!(b.starts_with(a.as_str()), "{b:?} keeps {a:?}")
                }
                _ => assert_eq!(back, e),
            }
            codes.push(code);
        }
        // Distinct codes: no two call errors share one.
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "{a:?} and {b:?} share a wire code"
                );
            }
        }
    }
}
