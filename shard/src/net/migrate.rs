//! Moves between nodes on the wire (docs/MIGRATION.md, "Moves between nodes"): the home node's
//! requests to the actor's place (`quark.migrate.pause`: hand the state back as bytes) and to
//! the target (`quark.migrate.arrive`: install these bytes), served by the receiving node; and
//! the home forwarding messages to an actor that lives on another node.
//!
//! Both are ordinary Request frames (no new frame kind, no archived type changed): the actor
//! type and key travel in the request envelope, the message type names one of the two
//! requests, and the pause body is a `u64` (the deadline in ms). The replies are
//! `(Option<Vec<u8>>, String)` (pause: the state and the place's `app_version`) and
//! `Option<String>` (arrive: `Some` = rehydrate failed there). The arrive body is
//! `(Option<Vec<u8>>, String, u64)` (protocol 5): the state, the version it ran on and the
//! sender's member view epoch (0: none); a target of an older version refuses it, and so does
//! a target whose view is newer and places the actor elsewhere (`members::admit_arrival`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use quark_net::{FrameHead, FrameKind, RemoteError, RequestEnvelope, WireOwned};
use quark_placement::{shard_for, ActorId, ActorKey, NodeId};

use super::remote::{deadline_ms, remote_error, wire_key, CallSite, ReplySink};
use crate::actor::{Handler, Message};
use crate::calls::{CallOutcome, Forward, RemoteReply, Waiter};
use crate::engine::shared::{current_core, NodeShared};
use crate::envelope::{CrossMsg, Deliver, ReplyTo};
use crate::error::CallError;
use crate::migrate::{Arrival, Cmd, Collected, MigrateError};
use crate::shard::Shard;

/// Prefix of the system requests of moves (never a user message's wire name).
pub(crate) const PREFIX: &str = "quark.migrate.";
const PAUSE: &str = "quark.migrate.pause";
/// A pause whose reply also carries the actor's timers (`(state, version, timers)`).
const PAUSE_T: &str = "quark.migrate.pause.t";
const ARRIVE: &str = "quark.migrate.arrive";
/// One-way: arm these timers of the actor, which lives here now (`migrate::timers`).
const TIMERS: &str = "quark.migrate.timers";
/// One-way, to the actor's home node: it deactivated here (body: this node's id).
const GONE: &str = "quark.migrate.gone";
/// From the home: release the actor if it is not active here (a pause that refuses an active
/// actor; reply as `PAUSE_T`).
const RELEASE: &str = "quark.migrate.release";

/// The reply to `PAUSE_T`: the state, the place's `app_version`, the actor's timers.
type PausedT = (
    Option<Vec<u8>>,
    String,
    Vec<crate::migrate::timers_wire::OnWire>,
);

/// Encodes a request to `node` on this shard's link; `waiter` gets its outcome.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_request<B: WireOwned>(
    core: &Rc<Shard>,
    node: NodeId,
    actor_type: &str,
    key: &ActorKey,
    wire_name: &str,
    body: &B,
    timeout: Duration,
    waiter: Option<Box<dyn Forward>>,
) -> Result<(), String> {
    let Some(net) = core.net.as_ref() else {
        return Err("this node has no cluster".to_owned());
    };
    let Some(link) = net.links.get(&node) else {
        return Err(format!("node {node} is not a member"));
    };
    let Some(wire) = link.wire() else {
        return Err(link.cause().map_or_else(
            || "no connection".to_owned(),
            |c| crate::ErrorChain(&c).to_string(),
        ));
    };
    let (kind, call) = match waiter {
        Some(w) => {
            let call = core
                .calls
                .borrow_mut()
                .register(core.now() + timeout, Waiter::Forward(w));
            (FrameKind::Request, Some(call))
        }
        None => (FrameKind::OneWay, None),
    };
    let corr = call.map_or(0, |c| c.to_u64());
    let env = RequestEnvelope::new(
        actor_type,
        wire_key(key),
        wire_name,
        if call.is_some() {
            deadline_ms(timeout)
        } else {
            0
        },
    );
    let head = FrameHead {
        source_shard: core.id,
        correlation: corr,
        ..FrameHead::new(kind)
    };
    let max = net.cfg.frame_bytes_max;
    let r = quark_net::encode_request(&mut wire.out.borrow_mut(), head, &env, body, max);
    if let Err(e) = r {
        if let Some(call) = call {
            core.calls.borrow_mut().cancel(call);
        }
        return Err(crate::ErrorChain(&e).to_string());
    }
    wire.frames_queued.set(wire.frames_queued.get() + 1);
    if call.is_some() {
        wire.pending.borrow_mut().insert(corr);
    }
    wire.wake_writer();
    Ok(())
}

/// A system request's outcome, on the shard that sent it.
pub(super) struct SysReply<F> {
    pub(super) node: Arc<NodeShared>,
    pub(super) on: F,
}

/// What came back for a system request: the reply's bytes, the peer's refusal, or nothing
/// (deadline passed, or the connection dropped: the peer may have acted on it).
pub(super) enum SysOutcome {
    Value(Vec<u8>),
    Refused(String),
    Unknown(String),
}

impl<F: FnOnce(&Rc<Shard>, SysOutcome) + 'static> Forward for SysReply<F> {
    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let Some(core) = current_core(&self.node) else {
            return;
        };
        let o = match outcome {
            CallOutcome::Remote(RemoteReply::Value(b)) => SysOutcome::Value(b.to_vec()),
            CallOutcome::Remote(RemoteReply::Error(e)) => SysOutcome::Refused(e.to_string()),
            CallOutcome::TimedOut => SysOutcome::Unknown("no answer before the deadline".into()),
            CallOutcome::Failed(e) => SysOutcome::Unknown(crate::ErrorChain(&e).to_string()),
            CallOutcome::Reply(_) => unreachable!("a request to another node gets a remote reply"),
        };
        // Runs outside the call table (which completes this with its borrow held).
        let on = self.on;
        let c = core.clone();
        core.sched.spawn(async move { on(&c, o) });
    }
}

/// Gets the target node's answer to a state sent to it.
pub(crate) type OnArrival = Box<dyn FnOnce(&Rc<Shard>, Arrival)>;

/// Asks `node` to pause `actor` and hand its state back, with its timers (the outcome reaches
/// `migrate::collected` with `ticket` on this shard, the timers `migrate::keep_timers` first).
/// A node built before timers moved refuses `PAUSE_T`: asked again with `PAUSE` (its timers
/// are then cancelled there, as that build does).
pub(crate) fn send_pause(
    core: &Rc<Shard>,
    node: NodeId,
    actor: &ActorId,
    ticket: u64,
    timeout: Duration,
) -> Result<(), String> {
    send_pause_as(core, node, actor, ticket, timeout, PAUSE_T)
}

fn send_pause_as(
    core: &Rc<Shard>,
    node: NodeId,
    actor: &ActorId,
    ticket: u64,
    timeout: Duration,
    name: &'static str,
) -> Result<(), String> {
    let id = actor.clone();
    let on = move |c: &Rc<Shard>, o: SysOutcome| {
        let mut ran_on = None;
        let value = |b: &[u8]| {
            if name == PAUSE {
                return <(Option<Vec<u8>>, String)>::from_wire(b).map(|(s, v)| (s, v, Vec::new()));
            }
            PausedT::from_wire(b)
        };
        if let SysOutcome::Refused(d) = &o {
            if name == PAUSE_T && d.contains(UNKNOWN_REQUEST) {
                if let Err(detail) = send_pause_as(c, node, &id, ticket, timeout, PAUSE) {
                    let e = MigrateError::NodeUnavailable {
                        actor: id.clone(),
                        node,
                        detail,
                    };
                    crate::migrate::collected(c, ticket, Err(e), None);
                }
                return;
            }
        }
        let state: Collected = match o {
            SysOutcome::Value(b) => match value(&b) {
                Ok((s, version, timers)) => {
                    ran_on = Some(version);
                    let timers = timers
                        .into_iter()
                        .map(crate::migrate::WireTimer::from_wire)
                        .collect();
                    crate::migrate::keep_timers(c, ticket, timers);
                    Ok(s)
                }
                Err(e) => Err(MigrateError::NodeMoveAborted {
                    actor: id.clone(),
                    to_node: node,
                    runs_on: node,
                    detail: format!("bad reply: {e}"),
                }),
            },
            SysOutcome::Refused(detail) => Err(MigrateError::NodeMoveAborted {
                actor: id.clone(),
                to_node: node,
                runs_on: node,
                detail,
            }),
            // The state may be lost with the reply; never two activations: nothing runs it.
            SysOutcome::Unknown(detail) => Err(MigrateError::Unconfirmed {
                actor: id.clone(),
                node,
                detail,
            }),
        };
        crate::migrate::collected(c, ticket, state, ran_on);
    };
    // The place's own deadline aborts the pause; this one covers the round trip too.
    send_request(
        core,
        node,
        actor.type_name,
        &actor.key,
        name,
        &(timeout.as_millis() as u64),
        timeout * 2,
        Some(Box::new(SysReply {
            node: core.node.clone(),
            on,
        })),
    )
}

/// Sends `actor`'s state to `node` to install, with the version it ran on and this node's
/// member view epoch (`(ran_on, epoch)`; 0: never refused for a view); `on` gets the answer.
pub(crate) fn send_arrive(
    core: &Rc<Shard>,
    node: NodeId,
    actor: &ActorId,
    state: &Option<Vec<u8>>,
    (ran_on, epoch): (&str, u64),
    timeout: Duration,
    on: OnArrival,
) -> Result<(), String> {
    let on = move |c: &Rc<Shard>, o: SysOutcome| {
        let a = match o {
            SysOutcome::Value(b) => match Option::<String>::from_wire(&b) {
                Ok(r) => Arrival::Installed(r),
                Err(e) => Arrival::Unknown(format!("bad reply: {e}")),
            },
            SysOutcome::Refused(d) => Arrival::Refused(d),
            SysOutcome::Unknown(d) => Arrival::Unknown(d),
        };
        on(c, a);
    };
    send_request(
        core,
        node,
        actor.type_name,
        &actor.key,
        ARRIVE,
        &(state.clone(), ran_on.to_owned(), epoch),
        timeout,
        Some(Box::new(SysReply {
            node: core.node.clone(),
            on,
        })),
    )
}

/// Sends `actor`'s timers to `node`, where it lives now (one-way: `migrate::timers`).
pub(crate) fn send_timers(
    core: &Rc<Shard>,
    node: NodeId,
    actor: &ActorId,
    timers: &[crate::migrate::WireTimer],
) -> Result<(), String> {
    let body: Vec<_> = timers.iter().map(|t| t.to_wire()).collect();
    send_request(
        core,
        node,
        actor.type_name,
        &actor.key,
        TIMERS,
        &body,
        Duration::ZERO,
        None,
    )
}

/// The node an actor of this node's type `type_idx` is homed on, if not this one (it lives
/// here because its home moved or placed it here).
pub(crate) fn home_node_of(core: &Shard, type_idx: u16, id: &ActorId) -> Option<NodeId> {
    let links = &core.net.as_ref()?.links;
    let net = core.node.net.as_ref()?;
    let movable = core.node.types[usize::from(type_idx)].bytes_mover();
    net.view
        .home(id, movable)
        .filter(|n| *n != net.node_id && links.get(n).is_some())
}

/// Tells `home` that `actor` deactivated on this node (its directory entry may go,
/// `migrate::release_node`). One-way: a lost notice leaves the entry (as before).
pub(crate) fn send_gone(core: &Rc<Shard>, home: NodeId, actor: &ActorId) {
    let me = crate::migrate::this_node(&core.node);
    if let Err(e) = send_request(
        core,
        home,
        actor.type_name,
        &actor.key,
        GONE,
        &me,
        Duration::ZERO,
        None,
    ) {
        tracing::debug!(shard = core.id, actor = %actor, home, error = %e,
            "deactivation not reported to the actor's home node");
    }
}

/// Gets whether the node released an actor (it was not active there).
pub(crate) type OnReleased = Box<dyn FnOnce(&Rc<Shard>, bool)>;

/// Asks `node` to release `actor` (`on(true)`: it was not active there).
pub(crate) fn send_release(
    core: &Rc<Shard>,
    node: NodeId,
    actor: &ActorId,
    timeout: Duration,
    on: OnReleased,
) -> Result<(), String> {
    let on = move |c: &Rc<Shard>, o: SysOutcome| on(c, matches!(o, SysOutcome::Value(_)));
    send_request(
        core,
        node,
        actor.type_name,
        &actor.key,
        RELEASE,
        &(timeout.as_millis() as u64),
        timeout * 2,
        Some(Box::new(SysReply {
            node: core.node.clone(),
            on,
        })),
    )
}

/// How a node refuses a move request it does not know (a node built before it).
const UNKNOWN_REQUEST: &str = "unknown move request";

/// Serves a system request of a move from another node (on the shard serving the
/// connection).
pub(crate) fn serve(
    core: &Rc<Shard>,
    actor_type: &str,
    message_type: &str,
    key: ActorKey,
    body: &[u8],
    sink: ReplySink,
) {
    let node = &core.node;
    let Some(type_idx) = node.types.iter().position(|t| t.name() == actor_type) else {
        return sink.send_error(
            core,
            &RemoteError::UnknownActorType {
                actor_type: actor_type.to_owned(),
            },
        );
    };
    let type_idx = type_idx as u16;
    let ty = &node.types[usize::from(type_idx)];
    let id = ActorId {
        type_name: ty.name(),
        key: key.clone(),
    };
    let refuse = |sink: ReplySink, detail: String| {
        sink.send_error(core, &RemoteError::ActivationFailed { detail })
    };
    // A log actor (durable state) moves as its records, into this node's log.
    let log = ty.log_mover() && core.log.is_some();
    if !ty.bytes_mover() && !log {
        return refuse(
            sink,
            MigrateError::NotSerializable { actor: id }.to_string(),
        );
    }
    // The actor's shard on this node: where messages from the network for it are delivered.
    let place = shard_for(&id, node.shard_count());
    let ticket = core.migration.ticket();
    let key_back = key.clone();
    let slot = (type_idx, key);
    match message_type {
        PAUSE | PAUSE_T | RELEASE => {
            let Ok(ms) = u64::from_wire(body) else {
                return refuse(sink, "bad pause request".into());
            };
            let with_timers = message_type != PAUSE;
            core.migration.on_collected(
                ticket,
                Box::new(move |c, state: Collected, _| match state {
                    Ok(s) => {
                        let version = c.node.config.app_version.clone();
                        let timers = crate::migrate::timers_taken(c, ticket);
                        if with_timers {
                            let t: Vec<_> = timers.iter().map(|t| t.to_wire()).collect();
                            return sink.send_value(c, &(s, version, t));
                        }
                        // The home was built before timers moved between nodes.
                        let actor = ActorId {
                            type_name: c.node.types[usize::from(type_idx)].name(),
                            key: key_back.clone(),
                        };
                        for t in &timers {
                            crate::migrate::timer_dropped(
                                c,
                                &actor,
                                &t.name,
                                "the actor's home node is of a build that does not move timers",
                            );
                        }
                        sink.send_value(c, &(s, version))
                    }
                    Err(e) => sink.send_error(
                        c,
                        &RemoteError::ActivationFailed {
                            detail: e.to_string(),
                        },
                    ),
                }),
            );
            let cmd = Cmd {
                ticket,
                home: core.id,
                to: place,
                timeout: Duration::from_millis(ms),
                collect: true,
                release: message_type == RELEASE,
            };
            if place == core.id {
                core.tables
                    .erased(type_idx)
                    .pause_for_move(core, slot.1, cmd);
            } else {
                // Behind the requests this connection sent on to `place` before (they wait
                // for credits in order): the pause reaches the actor after them.
                let c = core.clone();
                core.sched.spawn(async move {
                    c.acquire_credit(place).await;
                    c.cross.return_credits(place, 1);
                    c.send_to(
                        place,
                        CrossMsg::run_on(move |x| {
                            x.tables.erased(slot.0).pause_for_move(x, slot.1, cmd)
                        }),
                    );
                });
            }
        }
        ARRIVE => {
            let Ok((state, ran_on, epoch)) = <(Option<Vec<u8>>, String, u64)>::from_wire(body)
            else {
                return refuse(sink, "bad arrive request".into());
            };
            let mine = &node.config.app_version;
            if crate::migrate::older(mine, &ran_on) {
                let marker = crate::migrate::OLDER_VERSION;
                return refuse(sink, format!("{marker} {mine} {ran_on}"));
            }
            core.migration.on_collected(
                ticket,
                Box::new(move |c, r: Collected, _| match r {
                    Ok(_) => sink.send_value(c, &Option::<String>::None),
                    Err(MigrateError::RehydrateFailed { detail, .. }) => {
                        sink.send_value(c, &Some(detail))
                    }
                    Err(MigrateError::NewerView { epoch, home, .. }) => {
                        let marker = crate::migrate::NEWER_VIEW;
                        sink.send_error(
                            c,
                            &RemoteError::ActivationFailed {
                                detail: format!("{marker} {epoch} {home}"),
                            },
                        )
                    }
                    Err(e) => sink.send_error(
                        c,
                        &RemoteError::ActivationFailed {
                            detail: e.to_string(),
                        },
                    ),
                }),
            );
            let home = core.id;
            let install = move |x: &Rc<Shard>| {
                if !log {
                    // On the actor's shard, just before it is installed (see `admit_arrival`).
                    if let Err((mine, at)) = super::members::admit_arrival(x, &id, epoch) {
                        let here = crate::migrate::this_node(&x.node);
                        let e = MigrateError::NewerView {
                            actor: id,
                            node: here,
                            epoch: mine,
                            home: at,
                            runs_on: here,
                        };
                        return installed(x, slot, home, ticket, Err(e));
                    }
                    let r = x
                        .tables
                        .erased(slot.0)
                        .install_bytes(x, slot.1.clone(), state)
                        .map(|()| None);
                    return installed(x, slot, home, ticket, r);
                }
                // Its records, durably in this shard's log, before the answer (the home then
                // records this node as the actor's place).
                let c = x.clone();
                x.sched.spawn(async move {
                    let written = match &state {
                        Some(b) => crate::migrate::write_log_in(&c, b).await,
                        None => Ok(0),
                    };
                    let r = match written {
                        Ok(_) if crate::migrate::log_move_seam(id.type_name) => return,
                        Ok(_) => Ok(None),
                        Err(detail) => Err(MigrateError::LogCopy {
                            actor: id,
                            shard: c.id,
                            detail,
                        }),
                    };
                    installed(&c, slot, home, ticket, r);
                });
            };
            if place == core.id {
                install(core);
            } else {
                core.send_to(place, CrossMsg::run_on(install));
            }
        }
        GONE => {
            let Ok(from) = u64::from_wire(body) else {
                return refuse(sink, "bad gone notice".into());
            };
            // On the actor's home shard here.
            let home = shard_for(&id, node.shard_count());
            let go = move |h: &Rc<Shard>| crate::migrate::release_node(h, slot, from);
            if home == core.id {
                go(core);
            } else {
                core.send_to(home, CrossMsg::run_on(go));
            }
        }
        TIMERS => {
            let Ok(timers) = Vec::<crate::migrate::timers_wire::OnWire>::from_wire(body) else {
                return refuse(sink, "bad timers request".into());
            };
            let timers: Vec<_> = timers
                .into_iter()
                .map(crate::migrate::WireTimer::from_wire)
                .collect();
            let arm =
                move |x: &Rc<Shard>| crate::migrate::arm_timers_here(x, slot.0, slot.1, timers);
            if place == core.id {
                arm(core);
            } else {
                core.send_to(place, CrossMsg::run_on(arm));
            }
        }
        other => refuse(sink, format!("{UNKNOWN_REQUEST} {other:?}")),
    }
}

/// On the shard an actor arrived on from another node: `r` is how its install ended; tells the
/// shard serving the request (`home`), which answers the peer.
fn installed(x: &Rc<Shard>, slot: crate::directory::Slot, home: u16, ticket: u64, r: Collected) {
    // `x` is also the actor's home shard on this node: an entry there that names another
    // node (this node sent it there once) is stale now that it lives here again
    // (docs/MIGRATION.md, "Rolling upgrades").
    if r.is_ok() {
        let mut dir = x.migration.directory.borrow_mut();
        if dir
            .get(&slot)
            .is_some_and(|e| e.node.is_some() && e.is_quiet())
        {
            dir.remove(&slot);
        }
        drop(dir);
        // First messages held while this node joins, now that the actor is here.
        crate::migrate::release_held_for(x, &slot);
    }
    if x.id == home {
        crate::migrate::collected(x, ticket, r, None);
    } else {
        x.send_to(
            home,
            CrossMsg::run_on(move |h| crate::migrate::collected(h, ticket, r, None)),
        );
    }
}

/// On the home shard: sends a message on to its actor, which lives on node `node`; an ask's
/// reply (or failure) comes back here and goes on to its sender.
pub(crate) fn forward_node<A, M>(core: &Rc<Shard>, mut d: Box<Deliver<A, M>>, node: NodeId)
where
    A: Handler<M>,
    M: Message,
{
    let id = ActorId {
        type_name: A::TYPE_NAME,
        key: d.key.clone(),
    };
    let Some(codec) = core.node.registry.codec::<M>() else {
        tracing::warn!(shard = core.id, actor = %id, node,
            message = std::any::type_name::<M>(),
            "a message for an actor living on another node is not registered for the wire");
        return fail(
            core,
            d,
            CallError::NotWireMessage {
                message_type: std::any::type_name::<M>(),
            },
        );
    };
    let is_ask = d.reply != ReplyTo::None;
    let timeout = match d.deadline {
        Some(t) => t.saturating_duration_since(core.now()),
        None => core.node.config.ask_timeout,
    };
    let Some(wire) = core
        .net
        .as_ref()
        .and_then(|n| n.links.get(&node))
        .and_then(|l| l.wire())
    else {
        let e = CallError::NodeUnavailable {
            node,
            actor: Some(id),
            cause: None,
        };
        return fail(core, d, e);
    };
    let Some(msg) = d.take_msg() else {
        unreachable!("a message on its way to its actor has not been handled")
    };
    // Marked as sent on by the home: the place delivers it, never sends it back.
    let message_type = format!("{}{}", super::remote::FROM_HOME, codec.wire_name);
    let env = RequestEnvelope::new(
        A::TYPE_NAME,
        wire_key(&id.key),
        &message_type,
        if is_ask {
            deadline_ms(timeout.max(Duration::from_millis(1)))
        } else {
            0
        },
    );
    let (kind, call, d) = if is_ask {
        let call = core.calls.borrow_mut().register(
            core.now() + timeout,
            Waiter::Forward(Box::new(NodeRelay::<A, M> {
                node: core.node.clone(),
                peer: node,
                decode: codec.decode_reply,
                wire_name: codec.wire_name,
                d,
            })),
        );
        (FrameKind::Request, Some(call), None)
    } else {
        (FrameKind::OneWay, None, Some(d))
    };
    let corr = call.map_or(0, |c| c.to_u64());
    let head = FrameHead {
        source_shard: core.id,
        correlation: corr,
        ..FrameHead::new(kind)
    };
    let max = core.net.as_ref().map_or(0, |n| n.cfg.frame_bytes_max);
    let r = (codec.encode)(&msg, &mut wire.out.borrow_mut(), head, &env, max);
    if let Err(e) = r {
        tracing::warn!(shard = core.id, actor = %id, node, error = %crate::ErrorChain(&e),
            "a message for an actor on another node cannot be encoded");
        let err = CallError::NotSerializable {
            actor: id,
            message_type: codec.wire_name,
        };
        match (call, d) {
            (Some(call), _) => core.complete_call(call, CallOutcome::Failed(err)),
            (None, Some(d)) => fail(core, d, err),
            (None, None) => unreachable!("a tell keeps its envelope"),
        }
        return;
    }
    wire.frames_queued.set(wire.frames_queued.get() + 1);
    if call.is_some() {
        wire.pending.borrow_mut().insert(corr);
    }
    wire.wake_writer();
    if let Some(d) = d {
        core.turn_done(d.origin, ReplyTo::None);
    }
}

/// Fails a message that could not be sent on to its actor's node.
#[allow(clippy::boxed_local)] // the envelope's own box, sent on as it is
fn fail<A, M: Message>(core: &Rc<Shard>, d: Box<Deliver<A, M>>, err: CallError) {
    core.turn_done(d.origin, d.reply);
    match d.reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Failed(err)),
        ReplyTo::Shard(to, call) => core.send_to(
            to,
            CrossMsg::Fail {
                call,
                from: core.id,
                err: Some(Box::new(err)),
            },
        ),
    }
}

/// The reply of an ask the home forwarded to another node, on its way back to the sender.
struct NodeRelay<A, M: Message> {
    node: Arc<NodeShared>,
    peer: NodeId,
    decode: super::DecodeFn,
    wire_name: &'static str,
    d: Box<Deliver<A, M>>,
}

impl<A, M> Forward for NodeRelay<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let NodeRelay {
            node,
            peer,
            decode,
            wire_name,
            d,
        } = *self;
        let Some(core) = current_core(&node) else {
            return;
        };
        // Runs outside the call table (which completes this with its borrow held).
        let c = core.clone();
        core.sched
            .spawn(async move { relay_back(&c, peer, decode, wire_name, d, outcome) });
    }
}

/// Sends what came back for a forwarded ask on to its sender.
fn relay_back<A, M>(
    core: &Rc<Shard>,
    peer: NodeId,
    decode: super::DecodeFn,
    wire_name: &'static str,
    mut d: Box<Deliver<A, M>>,
    outcome: CallOutcome,
) where
    A: Handler<M>,
    M: Message,
{
    {
        let core = core.clone();
        let id = ActorId {
            type_name: A::TYPE_NAME,
            key: d.key.clone(),
        };
        let timeout = core.node.config.ask_timeout;
        let err = match outcome {
            CallOutcome::Remote(RemoteReply::Value(bytes)) => match decode(&bytes) {
                Ok(any) => match any.downcast::<M::Reply>() {
                    Ok(v) => {
                        d.set_value(*v);
                        core.turn_done(d.origin, d.reply);
                        match d.reply {
                            ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Reply(d)),
                            ReplyTo::Shard(to, call) => {
                                d.reply = ReplyTo::Shard(to, call);
                                d.from = core.id;
                                core.send_to(to, CrossMsg::Reply(d));
                            }
                            ReplyTo::None => {}
                        }
                        return;
                    }
                    Err(_) => unreachable!("a codec decodes the reply type of its message"),
                },
                Err(_) => CallError::BadReply {
                    actor: id,
                    node: peer,
                    message_type: wire_name,
                },
            },
            CallOutcome::Remote(RemoteReply::Error(e)) => {
                let site = CallSite {
                    actor: &id,
                    node: peer,
                    timeout,
                    message_type: wire_name,
                    rust_type: std::any::type_name::<M>(),
                };
                remote_error(e, &site)
            }
            CallOutcome::Failed(e) => e,
            CallOutcome::TimedOut => CallError::Timeout { actor: id, timeout },
            CallOutcome::Reply(_) => unreachable!("a request to another node gets a remote reply"),
        };
        fail(&core, d, err);
    }
}
