//! Timers moving with an actor between nodes (docs/MIGRATION.md, "Timers"): their wire form,
//! and arming them again on the node the actor lives on now.
//!
//! A timer crosses nodes as `(time left, period, wire name of its message, the message's
//! rkyv bytes)`. Only a message type with a wire codec (`EngineBuilder::remote::<A, M>()` or
//! `wire_message::<M>()` on the old node) can be written, and only one the receiving node
//! handles for the actor's type (`remote::<A, M>()` there) can be armed again: any other
//! timer is dropped, never silently: a `warn` line ("a timer did not move with its actor to
//! another node: dropped") names the actor, the message type and why.
//!
//! The route: the old place takes the timers off the activation at its hand-over and gives
//! them, with its state, to the move's home shard (`carry`; from another node in the pause
//! reply, `quark.migrate.pause.t`). When the move ended the home sends them to wherever the
//! actor lives now (`dispatch`): to another node in a `quark.migrate.timers` request, or to
//! a shard of this node. There one turn of the actor arms them again (`arm_wire`), each due
//! when it was due before the move, under a new `TimerId` (ids are numbered per node).
//! On the receiving node a timer's message is kept as its bytes ([`WireTick`]) and decoded
//! at each firing, so an interval's message need not be `Clone` there, and the timer can
//! move on again as it came.

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use quark_net::rkyv::util::AlignedVec;
use quark_net::{decode_frame, encode_message, FrameHead, FrameKind, OutBuf, WireOwned};

use super::*;
use crate::actor::{Carry, Context, Invoke};

/// A timer on its way to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireTimer {
    /// Time left until it is next due (at the home: converted to `due`).
    pub(crate) left: Duration,
    /// Its period (an interval), or none (a one-shot).
    pub(crate) period: Option<Duration>,
    /// Its message's `WIRE_NAME`.
    pub(crate) name: String,
    /// Its message, archived.
    pub(crate) bytes: Vec<u8>,
}

/// A timer's form in a request: `(µs left, period in µs (0: one-shot), wire name, bytes)`.
pub(crate) type OnWire = (u64, u64, String, Vec<u8>);

impl WireTimer {
    pub(crate) fn to_wire(&self) -> OnWire {
        (
            self.left.as_micros() as u64,
            self.period.map_or(0, |p| (p.as_micros() as u64).max(1)),
            self.name.clone(),
            self.bytes.clone(),
        )
    }

    pub(crate) fn from_wire((left, period, name, bytes): OnWire) -> WireTimer {
        WireTimer {
            left: Duration::from_micros(left),
            period: (period != 0).then(|| Duration::from_micros(period)),
            name,
            bytes,
        }
    }
}

type ToBytes = fn(&dyn Any) -> Result<Vec<u8>, String>;
type Decode = fn(AlignedVec, Option<Duration>) -> Result<Box<dyn Any + Send>, String>;
type ArmFn = fn(&Rc<Shard>, u16, ActorKey, Vec<WireTimer>);

/// The node's table of what timers can cross nodes (part of `net::Registry`).
#[derive(Default)]
pub(crate) struct TimerRegistry {
    /// By message type: its wire name and how to write it.
    bytes: FxHashMap<TypeId, (&'static str, ToBytes)>,
    /// By actor type, by wire name: how to read a timer's message back.
    decoders: FxHashMap<&'static str, FxHashMap<&'static str, Decode>>,
    /// By actor type: how to arm its timers again.
    armers: FxHashMap<&'static str, ArmFn>,
}

impl TimerRegistry {
    /// `M` has a wire codec: a timer of it can leave this node.
    pub(crate) fn add_codec<M: WireOwned + 'static>(&mut self) {
        self.bytes
            .entry(TypeId::of::<M>())
            .or_insert((M::WIRE_NAME, to_bytes::<M>));
    }

    /// Actors of type `A` here handle `M` from the network: a timer of it can arrive here,
    /// and leave again.
    pub(crate) fn add_handler<A, M>(&mut self)
    where
        A: Handler<M>,
        M: Message + WireOwned,
    {
        self.bytes
            .entry(TypeId::of::<WireTick<M>>())
            .or_insert((M::WIRE_NAME, tick_bytes::<M>));
        self.decoders
            .entry(A::TYPE_NAME)
            .or_default()
            .insert(M::WIRE_NAME, decode::<A, M>);
        self.armers.entry(A::TYPE_NAME).or_insert(arm_wire::<A>);
    }

    /// A timer message's wire name and bytes, or its Rust type name if it cannot be written.
    pub(crate) fn bytes<M: 'static>(&self, m: &M) -> Result<(&'static str, Vec<u8>), &'static str> {
        let Some((name, f)) = self.bytes.get(&TypeId::of::<M>()) else {
            return Err(std::any::type_name::<M>());
        };
        f(m).map(|b| (*name, b)).map_err(|e| {
            tracing::warn!(message_type = *name, error = %e, "a timer's message could not be archived");
            std::any::type_name::<M>()
        })
    }
}

fn to_bytes<M: WireOwned + 'static>(m: &dyn Any) -> Result<Vec<u8>, String> {
    let m = m
        .downcast_ref::<M>()
        .expect("a timer codec is looked up by the TypeId of its message");
    let mut out = OutBuf::new();
    encode_message(&mut out, FrameHead::new(FrameKind::OneWay), m, u32::MAX)
        .map_err(|e| crate::ErrorChain(&e).to_string())?;
    let (frame, _) =
        decode_frame(out.pending(), u32::MAX).map_err(|e| crate::ErrorChain(&e).to_string())?;
    Ok(frame.meta().to_vec())
}

fn tick_bytes<M: 'static>(m: &dyn Any) -> Result<Vec<u8>, String> {
    let t = m
        .downcast_ref::<WireTick<M>>()
        .expect("a timer codec is looked up by the TypeId of its message");
    Ok(t.bytes.to_vec())
}

fn decode<A, M>(bytes: AlignedVec, period: Option<Duration>) -> Result<Box<dyn Any + Send>, String>
where
    A: Handler<M>,
    M: Message + WireOwned,
{
    M::from_wire(&bytes).map_err(|e| crate::ErrorChain(&e).to_string())?;
    let tick = WireTick::<M> {
        bytes: Arc::new(bytes),
        _m: PhantomData,
    };
    let rearm: crate::actor::Rearm<A> = Box::new(move |ctx: &Context<A>, first: Duration| {
        ctx.arm_carried::<WireTick<M>>(first, period, tick);
    });
    Ok(Box::new(rearm))
}

/// A timer's message that arrived from another node, kept as its bytes and decoded at each
/// firing (checked once on arrival).
pub(crate) struct WireTick<M> {
    bytes: Arc<AlignedVec>,
    _m: PhantomData<fn() -> M>,
}

impl<M> Clone for WireTick<M> {
    fn clone(&self) -> Self {
        WireTick {
            bytes: Arc::clone(&self.bytes),
            _m: PhantomData,
        }
    }
}

impl<M: Message> Message for WireTick<M> {
    type Reply = ();
}

impl<A, M> Handler<WireTick<M>> for A
where
    A: Handler<M>,
    M: Message + WireOwned,
{
    async fn handle(&mut self, t: WireTick<M>, ctx: &Context<Self>) {
        match M::from_wire(&t.bytes) {
            Ok(m) => {
                let _ = <A as Handler<M>>::handle(self, m, ctx).await;
            }
            // Checked on arrival: only a bug gets here.
            Err(e) => tracing::error!(actor = %ctx.id(), error = %e,
                "a timer's message from another node no longer decodes"),
        }
    }
}

/// On the shard the actor lives on: arms `timers` again, in one turn of the actor (which
/// activates it if needed), each due when it was due (its `left` counted from now).
pub(crate) fn arm_wire<A: Actor>(
    core: &Rc<Shard>,
    type_idx: u16,
    key: ActorKey,
    timers: Vec<WireTimer>,
) {
    let reg = &core.node.registry.timers;
    let now = core.now();
    let id = ActorId {
        type_name: A::TYPE_NAME,
        key: key.clone(),
    };
    let mut armed: Vec<(Instant, crate::actor::Rearm<A>)> = Vec::new();
    for t in timers {
        let dec = reg
            .decoders
            .get(A::TYPE_NAME)
            .and_then(|d| d.get(t.name.as_str()));
        let r = match dec {
            None => Err(format!(
                "this node does not handle {} for {} (EngineBuilder::remote)",
                t.name,
                A::TYPE_NAME
            )),
            Some(dec) => {
                let mut b = AlignedVec::<16>::with_capacity(t.bytes.len());
                b.extend_from_slice(&t.bytes);
                dec(b, t.period).map(|any| {
                    *any.downcast::<crate::actor::Rearm<A>>()
                        .expect("a timer decoder of A returns a Rearm<A>")
                })
            }
        };
        match r {
            Ok(rearm) => armed.push((now + t.left, rearm)),
            Err(detail) => dropped(core, &id, &t.name, &detail),
        }
    }
    if armed.is_empty() {
        return;
    }
    let arm = Invoke::<A, ()>::new(move |_, ctx| {
        let now = ctx.now();
        let left = armed
            .into_iter()
            .map(|(at, r)| (at.saturating_duration_since(now), r))
            .collect();
        ctx.rearm_timers(left);
        Box::pin(async {})
    });
    let d =
        Deliver::<A, Invoke<A, ()>>::new(type_idx, key.clone(), arm, ReplyTo::None, Origin::Timer);
    let act = core.table::<A>(type_idx).activate_here(core, &key);
    act.push(Box::new(d));
}

/// A timer that could not move: logged and counted, never silent.
pub(crate) fn dropped(core: &Shard, actor: &ActorId, message_type: &str, detail: &str) {
    tracing::warn!(shard = core.id, actor = %actor, message_type, detail,
        "a timer did not move with its actor to another node: dropped");
}

/// On the old place, at the hand-over of a move between nodes: the activation's timers in
/// their wire form (those whose message has no codec are dropped here, logged).
pub(super) fn take<A: Actor>(act: &Activation<A>) -> Vec<WireTimer> {
    let core = &act.ctx.core;
    act.ctx
        .take_wire_timers()
        .into_iter()
        .filter_map(|(left, carry)| match carry {
            Carry::Wire(period, Ok((name, bytes))) => Some(WireTimer {
                left,
                period,
                name: name.to_owned(),
                bytes,
            }),
            Carry::Wire(_, Err(type_name)) => {
                dropped(
                    core,
                    &act.ctx.id,
                    type_name,
                    "its message type has no wire codec (register it with \
                     EngineBuilder::remote::<A, M>() on both nodes)",
                );
                None
            }
            Carry::Rearm(_) => unreachable!("timers taken with the registry are in wire form"),
        })
        .collect()
}

/// Gives `timers` of the move `cmd` to the shard waiting for its state (`cmd.home`), ahead of
/// the state (same ring: they arrive first).
pub(super) fn carry(core: &Rc<Shard>, cmd: Cmd, timers: Vec<WireTimer>) {
    if timers.is_empty() {
        return;
    }
    let ticket = cmd.ticket;
    if cmd.home == core.id {
        return keep(core, ticket, timers);
    }
    core.send_to(cmd.home, CrossMsg::run_on(move |h| keep(h, ticket, timers)));
}

/// Keeps the timers of move `ticket` on this shard until the move ends, each as its due time.
pub(crate) fn keep(core: &Shard, ticket: u64, timers: Vec<WireTimer>) {
    if timers.is_empty() {
        return;
    }
    let now = core.now();
    let due = timers.into_iter().map(|t| (now + t.left, t)).collect();
    core.migration.carried.borrow_mut().insert(ticket, due);
}

/// Takes the timers kept for move `ticket`, each with the time it has left now.
pub(crate) fn taken(core: &Shard, ticket: u64) -> Vec<WireTimer> {
    let Some(due) = core.migration.carried.borrow_mut().remove(&ticket) else {
        return Vec::new();
    };
    let now = core.now();
    due.into_iter()
        .map(|(at, mut t)| {
            t.left = at.saturating_duration_since(now);
            t
        })
        .collect()
}

/// On the home shard, when a move between nodes of `slot` ended: sends the timers it carried
/// to where the actor lives now (`node`: another node; `None`: `shard` of this node).
pub(super) fn dispatch(
    core: &Rc<Shard>,
    slot: &Slot,
    ticket: u64,
    node: Option<NodeId>,
    shard: ShardId,
) {
    let timers = taken(core, ticket);
    if timers.is_empty() {
        return;
    }
    let actor = actor_id(&core.node, slot);
    match node {
        Some(n) if n != this_node(&core.node) => {
            if let Err(detail) = crate::net::send_timers(core, n, &actor, &timers) {
                for t in &timers {
                    dropped(core, &actor, &t.name, &format!("node {n}: {detail}"));
                }
            }
        }
        _ => {
            let slot = slot.clone();
            let arm = move |x: &Rc<Shard>| arm_here(x, slot.0, slot.1, timers);
            if shard == core.id {
                arm(core);
            } else {
                core.send_to(shard, CrossMsg::run_on(arm));
            }
        }
    }
}

/// Arms timers that arrived for `(type_idx, key)` on this shard (through its type's armer).
pub(crate) fn arm_here(core: &Rc<Shard>, type_idx: u16, key: ActorKey, timers: Vec<WireTimer>) {
    let name = core.node.types[usize::from(type_idx)].name();
    match core.node.registry.timers.armers.get(name) {
        Some(arm) => arm(core, type_idx, key, timers),
        None => {
            let actor = ActorId {
                type_name: name,
                key,
            };
            for t in &timers {
                dropped(
                    core,
                    &actor,
                    &t.name,
                    "this node handles no wire message for the actor's type (EngineBuilder::remote)",
                );
            }
        }
    }
}
