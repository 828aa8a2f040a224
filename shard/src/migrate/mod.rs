//! Live migration of an activation between shards of one node (docs/MIGRATION.md).
//!
//! Roles, for an actor whose home (hash placement) is shard H, living on shard X, moved to Y:
//!
//! 1. **H orders the move** ([`start`]): it is the one place every sender addresses, so it
//!    orders every message to the actor. From the order on, messages that miss H's table
//!    wait in the actor's directory entry, in arrival order. H sends the pause command to X
//!    through the H→X ring *after* every message it forwarded to X before (if some still
//!    wait there for a credit, the command waits behind them in the entry), so X has them
//!    all when the command arrives.
//! 2. **X pauses at a turn boundary** ([`pause_typed`], [`hand_over`]): it takes the
//!    activation out of its table (nothing new can reach it: X's senders address H), asks it
//!    to stop, and lets it handle what is already in its mailbox. When the mailbox is empty
//!    between turns, the activation's task hands its state over instead of deactivating: the
//!    state moves as a box (same process: no serialization) or as bytes
//!    ([`ActorType::migratable`]), and the task ends. No turn can run on X after that point,
//!    and none runs on Y before it: at no moment do two activations of one id run turns.
//!    A deadline timer on X aborts the pause if the hand-over did not happen in time: the
//!    activation goes back into X's table and keeps running there.
//! 3. **Y installs** ([`arrive`]) the state as a live activation (no `on_activate`: a move is
//!    not a deactivation) and tells H.
//! 4. **H records** the new place ([`done`]) and sends what waited on to Y, in order
//!    ([`flush`]), with cross-shard credits like any sender.
//!
//! Messages queued at X are handled at X before the hand-over (X's credits and reply paths
//! stay exact); messages that arrive later are forwarded by H ([`Relay`]). Per-sender FIFO
//! holds because every message passes H in order and H forwards in order over one FIFO ring.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use quark_placement::{shard_for, ActorId, ActorKey, NodeId, ShardId};
use rustc_hash::FxHashMap;

use crate::activation::{Activation, ActorType, LoadError, MailItemKeyed, TypeInfo, TypeTable};
use crate::actor::{Actor, CarriedTimers, Handler, Message};
use crate::actor_ref::ActorRef;
use crate::calls::{CallId, CallOutcome, Forward, Waiter};
use crate::directory::{Directory, PlacementPolicy, Slot};
use crate::engine::shared::{current_core, NodeShared, Phase};
use crate::envelope::{CrossMsg, Deliver, Origin, ReplyTo};
use crate::shard::Shard;
use crate::timers::TimerId;

mod api;
mod drain;
mod home;
mod log_move;
mod nodes;
mod place;
mod policy;
pub(crate) mod timers;
pub(crate) use api::*;
pub use drain::DrainReport;
pub(crate) use drain::*;
pub(crate) use home::*;
pub(crate) use log_move::{seam as log_move_seam, write_in as write_log_in};
pub use log_move::{stop_log_moves_after_copy, MOVE_BEGIN_KEY, MOVE_END_KEY};
pub(crate) use nodes::*;
pub(crate) use place::*;
pub(crate) use policy::*;
pub(crate) use timers::{
    arm_here as arm_timers_here, dropped as timer_dropped, keep as keep_timers,
    taken as timers_taken, TimerRegistry, WireTimer,
};
pub(crate) mod timers_wire {
    pub(crate) use super::timers::OnWire;
}

/// How an actor type's state moves (set with [`ActorType::movable`] or
/// [`ActorType::migratable`]; a type without one cannot migrate).
pub(crate) enum Mover<A> {
    /// The state is `Send`: it moves between shard threads as a box, without serialization.
    Boxed {
        out: fn(A) -> Box<dyn Any + Send>,
        back: fn(Box<dyn Any + Send>) -> A,
    },
    /// The state is dehydrated to bytes on the old shard and rehydrated on the new one.
    Bytes {
        dehydrate: Dehydrate<A>,
        rehydrate: Rehydrate<A>,
    },
    /// The state is in the shard log under these keys: the records move, not the memory
    /// ([`ActorType::moves_with_log`], `log_move`).
    Log { keys: log_move::LogKeys },
}

type Dehydrate<A> = Box<dyn Fn(&A) -> Vec<u8> + Send + Sync>;
type Rehydrate<A> = Box<dyn Fn(&ActorId, &[u8]) -> Result<A, LoadError> + Send + Sync>;

/// True if `spec`'s state moves as bytes (it may cross nodes).
pub(crate) fn moves_as_bytes<A: Actor>(spec: &ActorType<A>) -> bool {
    matches!(spec.migration, Some(Mover::Bytes { .. }))
}

/// True if `spec`'s state moves as log records ([`ActorType::moves_with_log`]).
pub(crate) fn moves_with_log<A: Actor>(spec: &ActorType<A>) -> bool {
    matches!(spec.migration, Some(Mover::Log { .. }))
}

fn box_out<A: Send + 'static>(a: A) -> Box<dyn Any + Send> {
    Box::new(a)
}

fn box_back<A: 'static>(b: Box<dyn Any + Send>) -> A {
    *b.downcast::<A>()
        .expect("a boxed state arrives at a table of its own type")
}

impl<A: Actor> ActorType<A> {
    /// Lets activations of this type migrate between shards ([`crate::Engine::migrate`]),
    /// their state moving as it is, without serialization (the state must be `Send`: it
    /// changes threads at a turn boundary, never during a turn).
    pub fn movable(mut self) -> Self
    where
        A: Send,
    {
        self.migration = Some(Mover::Boxed {
            out: box_out::<A>,
            back: box_back::<A>,
        });
        self
    }

    /// Lets activations of this type migrate between shards, their state dehydrated to bytes
    /// (`dehydrate`, on the old shard, between turns) and rehydrated (`rehydrate`, on the new
    /// shard). For states that are not `Send`. If `rehydrate` fails, the move is done but the
    /// state is lost: the actor starts afresh (its factory) at its next message, and the
    /// caller of the move gets [`MigrateError::RehydrateFailed`].
    pub fn migratable(
        mut self,
        dehydrate: impl Fn(&A) -> Vec<u8> + Send + Sync + 'static,
        rehydrate: impl Fn(&ActorId, &[u8]) -> Result<A, LoadError> + Send + Sync + 'static,
    ) -> Self {
        self.migration = Some(Mover::Bytes {
            dehydrate: Box::new(dehydrate),
            rehydrate: Box::new(rehydrate),
        });
        self
    }
}

/// A completed move ([`crate::Engine::migrate`], [`ActorRef::migrate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The actor.
    pub actor: ActorId,
    /// The shard it lived on.
    pub from: ShardId,
    /// The shard it lives on now (`from == to`: it was there already, nothing moved).
    pub to: ShardId,
    /// From the order at the actor's home shard to the new shard's answer: messages that
    /// reached the home meanwhile waited this long at most.
    pub duration: Duration,
    /// Bytes of dehydrated state (0 when the state moved as a box, [`ActorType::movable`]).
    pub bytes: u64,
    /// The node it lived on (this node's id; 0 on a node without a cluster).
    pub from_node: NodeId,
    /// The node it lives on now.
    pub to_node: NodeId,
}

/// Where an actor lives ([`crate::Engine::placement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The actor.
    pub actor: ActorId,
    /// Its home shard (hash placement): the shard every sender addresses.
    pub home: ShardId,
    /// The shard it lives on (or is activated on at its next message).
    pub shard: ShardId,
    /// A move is under way.
    pub moving: bool,
    /// The node it lives on (its home node's id unless moved to another node; 0 on a node
    /// without a cluster). `shard` is a shard of this node only when `node` is the home node.
    pub node: NodeId,
}

/// Why a move did not happen (or did not keep the state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// No actor type of this name is registered on the node.
    #[error("no actor type {type_name:?} is registered on this node")]
    UnknownType {
        /// The name asked for.
        type_name: String,
    },
    /// The type was not registered with [`ActorType::movable`] or [`ActorType::migratable`]
    /// (stateless worker types never migrate).
    #[error(
        "actor {actor} cannot migrate: its type is not registered with ActorType::movable or \
         ActorType::migratable"
    )]
    NotMigratable {
        /// The actor.
        actor: ActorId,
    },
    /// The target shard does not exist.
    #[error("actor {actor}: there is no shard {shard} (the node has {shards})")]
    NoSuchShard {
        /// The actor.
        actor: ActorId,
        /// The shard asked for.
        shard: ShardId,
        /// The node's shard count.
        shards: u16,
    },
    /// The actor is homed on another node (ask that node), or lives on another node now (a
    /// move between shards needs it back on its home node first: `migrate_to_node`).
    #[error(
        "actor {actor} is homed on or lives on another node: order its moves on its home node \
         (migrate_to_node brings it back there)"
    )]
    OtherNode {
        /// The actor.
        actor: ActorId,
    },
    /// The type's state cannot cross nodes: it was registered with [`ActorType::movable`]
    /// (a box, same process only), not [`ActorType::migratable`] (bytes).
    #[error(
        "actor {actor} cannot move to another node: its type is registered with \
         ActorType::movable (state moved as a box, between shards of one node only); register it \
         with ActorType::migratable(dehydrate, rehydrate) to move it across nodes"
    )]
    NotSerializable {
        /// The actor.
        actor: ActorId,
    },
    /// The target node is not a member of the cluster (or this node has no cluster).
    #[error("actor {actor}: node {node} is not a member of this cluster")]
    NoSuchNode {
        /// The actor.
        actor: ActorId,
        /// The node asked for.
        node: NodeId,
    },
    /// The target node could not be reached; the actor stays (and runs) where it was.
    #[error("actor {actor}: node {node} is unreachable ({detail}); the actor stays where it was")]
    NodeUnavailable {
        /// The actor.
        actor: ActorId,
        /// The target node.
        node: NodeId,
        /// Why.
        detail: String,
    },
    /// The target node's member view is newer than this node's (a membership change this
    /// node has not seen yet) and places the actor on another node, `home` (docs/CLUSTER.md,
    /// "Concurrent joins"): the target did not take it; the actor runs on `runs_on`. A
    /// hand-over tries again once this node's view reached `epoch`.
    #[error("actor {actor}: node {node} did not take it: its member view (epoch {epoch}) is newer and places the actor on node {home}; the actor runs on node {runs_on}")]
    NewerView {
        /// The actor.
        actor: ActorId,
        /// The target that refused.
        node: NodeId,
        /// The target's view epoch.
        epoch: u64,
        /// The actor's home in the target's view.
        home: NodeId,
        /// Where it runs now.
        runs_on: NodeId,
    },
    /// A move to or from another node was aborted; the actor runs on `runs_on`.
    #[error("actor {actor}: the move to node {to_node} was aborted ({detail}); the actor runs on node {runs_on}")]
    NodeMoveAborted {
        /// The actor.
        actor: ActorId,
        /// Where it was to go.
        to_node: NodeId,
        /// Where it runs now.
        runs_on: NodeId,
        /// Why.
        detail: String,
    },
    /// The state was sent to `node` but its answer did not come back (deadline, or the
    /// connection dropped): the home now places the actor on `node` (it runs there if the
    /// state arrived; else it starts afresh there at its next message). Never two activations.
    #[error(
        "actor {actor}: the state was sent to node {node} but the node did not confirm ({detail}); \
         the actor is placed on node {node} (it starts afresh there if the state was lost)"
    )]
    Unconfirmed {
        /// The actor.
        actor: ActorId,
        /// The target node.
        node: NodeId,
        /// Why.
        detail: String,
    },
    /// The target node runs an older application version than the actor ran on (`[node]
    /// app_version`): refused; the actor runs on `runs_on`.
    #[error(
        "actor {actor}: node {node} runs app_version {version}, older than {ran_on} the actor \
         ran on; a move never goes to an older version (the actor runs on node {runs_on})"
    )]
    OlderVersion {
        /// The actor.
        actor: ActorId,
        /// The target node.
        node: NodeId,
        /// Its version.
        version: String,
        /// The version the actor ran on.
        ran_on: String,
        /// Where the actor runs now.
        runs_on: NodeId,
    },
    /// A move of this actor is under way: retry once it ended.
    #[error("actor {actor}: a move of this actor is under way; retry once it ended")]
    Busy {
        /// The actor.
        actor: ActorId,
    },
    /// The home shard started `migrations_per_sec_max` moves in the current second.
    #[error(
        "actor {actor}: home shard {shard} already started {limit} migrations this second \
         (migrations_per_sec_max); retry later"
    )]
    RateLimited {
        /// The actor.
        actor: ActorId,
        /// Its home shard.
        shard: ShardId,
        /// The limit.
        limit: u32,
    },
    /// The activation did not reach a turn boundary with an empty mailbox within the
    /// deadline: the move was aborted and the actor keeps running on `from`.
    #[error(
        "actor {actor}: the move from shard {from} to shard {to} did not reach its hand-over \
         within {timeout:?}; aborted, the actor runs on shard {from}"
    )]
    DeadlineExceeded {
        /// The actor.
        actor: ActorId,
        /// Where it stays.
        from: ShardId,
        /// Where it was to go.
        to: ShardId,
        /// The deadline (`migration_timeout`).
        timeout: Duration,
    },
    /// The activation was deactivating when the pause came: retry.
    #[error("actor {actor}: the activation was deactivating on shard {shard}; retry")]
    Deactivating {
        /// The actor.
        actor: ActorId,
        /// Where.
        shard: ShardId,
    },
    /// The move happened, but `rehydrate` failed on the new shard: the state is lost and the
    /// actor starts afresh there at its next message.
    #[error(
        "actor {actor}: moved to shard {to}, but its state could not be rehydrated there: {detail}"
    )]
    RehydrateFailed {
        /// The actor.
        actor: ActorId,
        /// Where it lives now.
        to: ShardId,
        /// The rehydrate error's chain.
        detail: String,
    },
    /// The records of an actor whose state is in the log ([`ActorType::moves_with_log`])
    /// could not be read, copied or recorded on `shard`: the move did not happen, the actor
    /// stays where it was (it reloads there from its records at its next message).
    #[error("actor {actor}: its log records could not be moved (on shard {shard}: {detail}); the actor stays where it was")]
    LogCopy {
        /// The actor.
        actor: ActorId,
        /// The shard whose log failed.
        shard: ShardId,
        /// The log error's chain.
        detail: String,
    },
    /// The node is shutting down.
    #[error("actor {actor}: the node is shutting down")]
    ShuttingDown {
        /// The actor.
        actor: ActorId,
    },
}

impl MigrateError {
    /// True for the refusals that pass (the target node unreachable for now, a move of the
    /// actor already under way, the rate limit, a deactivation in progress): the same move may
    /// succeed if tried again a little later. Drains and hand-overs retry these.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MigrateError::NodeUnavailable { .. }
                | MigrateError::Busy { .. }
                | MigrateError::RateLimited { .. }
                | MigrateError::Deactivating { .. }
        )
    }
}

/// A message waiting in (or passing through) a home shard's directory entry: an envelope
/// whose actor lives on another shard.
pub(crate) trait Relay {
    fn key(&self) -> &ActorKey;
    /// Sends the message on to shard `to` (the caller holds a credit for `to`). The hop that
    /// brought it to this shard is settled here (a tell's credit owed to its sender, an
    /// external slot released), and an ask's reply is relayed back through this shard, so
    /// that every sender's credits come back from the shard it sent to.
    fn forward(self: Box<Self>, core: &Rc<Shard>, to: ShardId);
    /// Delivers the message on this shard (the actor is back at home).
    fn deliver_here(self: Box<Self>, core: &Rc<Shard>);
    /// Sends the message on to the actor on another node (`net::migrate::forward_node`).
    fn forward_node(self: Box<Self>, core: &Rc<Shard>, node: NodeId);
    /// Where the message was sent from.
    fn origin(&self) -> Origin;
    /// Activates the actor on this shard (its home decided it lives here) and delivers the
    /// message to it, without asking the directory again.
    fn activate_here(self: Box<Self>, core: &Rc<Shard>);
}

impl<A, M> Relay for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn key(&self) -> &ActorKey {
        &self.key
    }

    fn forward(mut self: Box<Self>, core: &Rc<Shard>, to: ShardId) {
        let here = core.id;
        match self.reply {
            ReplyTo::Shard(from, call) => {
                let deadline = self
                    .deadline
                    .unwrap_or_else(|| core.now() + core.node.config.ask_timeout);
                let relay = core.calls.borrow_mut().register(
                    deadline,
                    Waiter::Forward(Box::new(RelayReply::<A, M> {
                        node: core.node.clone(),
                        to: from,
                        call,
                        _types: PhantomData,
                    })),
                );
                self.reply = ReplyTo::Shard(here, relay);
            }
            ReplyTo::Local(call) => {
                if self.origin == Origin::External {
                    core.turn_done(Origin::External, self.reply);
                }
                self.reply = ReplyTo::Shard(here, call);
            }
            ReplyTo::None => core.turn_done(self.origin, ReplyTo::None),
        }
        self.origin = Origin::Shard(here);
        let s = &core.stats.migrate_forwarded;
        s.set(s.get() + 1);
        core.send_to(to, CrossMsg::Request(self));
    }

    fn deliver_here(self: Box<Self>, core: &Rc<Shard>) {
        let type_idx = self.type_idx;
        crate::activation::deliver::<A>(core, type_idx, self);
    }

    fn forward_node(self: Box<Self>, core: &Rc<Shard>, node: NodeId) {
        let s = &core.stats.migrate_forwarded;
        s.set(s.get() + 1);
        crate::net::forward_node::<A, M>(core, self, node);
    }

    fn origin(&self) -> Origin {
        self.origin
    }

    fn activate_here(self: Box<Self>, core: &Rc<Shard>) {
        let act = core
            .table::<A>(self.type_idx)
            .activate_here(core, &self.key);
        act.push(self);
    }
}

/// The reply of an ask this home shard forwarded, on its way back to the shard that asked.
struct RelayReply<A, M> {
    node: Arc<NodeShared>,
    to: ShardId,
    call: CallId,
    _types: PhantomData<fn() -> (A, M)>,
}

impl<A, M> Forward for RelayReply<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let core =
            current_core(&self.node).expect("a relayed reply completes on its home shard's thread");
        let (to, call, from) = (self.to, self.call, core.id);
        match outcome {
            CallOutcome::Reply(any) => {
                let Ok(mut d) = any.downcast::<Deliver<A, M>>() else {
                    unreachable!("a relayed reply has the type of the ask it answers")
                };
                d.reply = ReplyTo::Shard(to, call);
                d.from = from;
                core.send_to(to, CrossMsg::Reply(d));
            }
            CallOutcome::Failed(err) => core.send_to(
                to,
                CrossMsg::Fail {
                    call,
                    from,
                    err: Some(Box::new(err)),
                },
            ),
            CallOutcome::TimedOut => core.send_to(
                to,
                CrossMsg::Fail {
                    call,
                    from,
                    err: None,
                },
            ),
            CallOutcome::Remote(_) => {
                unreachable!("a relayed ask goes to a shard of this node")
            }
        }
    }
}

/// What waits in a home shard's directory entry, in arrival order.
pub(crate) enum Pending {
    /// A message for the actor.
    Msg(Box<dyn Relay>),
    /// The pause command of the entry's move, sent to the actor's place once every message
    /// before it has been sent there (only while the place is another shard).
    Move,
}

/// A move ordered by a home shard, until the place's answer.
pub(crate) struct Order {
    ticket: u64,
    from: ShardId,
    to: ShardId,
    timeout: Duration,
    started: Instant,
    reply: Option<oneshot::Sender<Result<Moved, MigrateError>>>,
    /// The pause command went to the place (else it waits in the queue as `Pending::Move`).
    sent: bool,
    /// A move between nodes: `(from_node, to_node)`; the place hands its state back to this
    /// home as bytes (`Cmd::collect`).
    nodes: Option<(NodeId, NodeId)>,
    /// Not a move: the release of the entry of an actor that deactivated on its place
    /// ([`release`]); the place refuses it if the actor is active there again.
    release: bool,
}

impl Order {
    fn cmd(&self, home: ShardId) -> Cmd {
        Cmd {
            ticket: self.ticket,
            home,
            to: self.to,
            timeout: self.timeout,
            collect: self.nodes.is_some(),
            release: self.release,
        }
    }
}

/// What the home sends to the actor's place.
#[derive(Clone, Copy)]
pub(crate) struct Cmd {
    pub(crate) ticket: u64,
    /// The shard the outcome goes to (the home, or the shard serving a pause request from
    /// another node).
    pub(crate) home: ShardId,
    pub(crate) to: ShardId,
    pub(crate) timeout: Duration,
    /// The state goes back to `home` as bytes ([`collected`]) instead of to shard `to`: a
    /// move between nodes.
    pub(crate) collect: bool,
    /// Only if the actor is not active on the place ([`release`]): an active one stays.
    pub(crate) release: bool,
}

/// An activation paused for a move on its place (until hand-over or abort).
struct Pause {
    cmd: Cmd,
    timer: TimerId,
    /// Puts the activation back in its table (abort).
    undo: Undo,
}

type Undo = Box<dyn FnOnce(&Rc<Shard>)>;

/// How a move ended, sent back to the home.
enum Outcome {
    Moved { bytes: u64 },
    Lost { bytes: u64, detail: String },
    Aborted,
    Refused(MigrateError),
}

/// A shard's migration service: its directory (as a home) and its paused activations (as a
/// place).
pub(crate) struct Migrations {
    pub(crate) directory: RefCell<Directory<Pending, Order>>,
    pauses: RefCell<FxHashMap<Slot, Pause>>,
    /// Moves started in the current one-second window: (window start, count); no window
    /// before the first move (the start is the shard clock's reading, not `Instant::now`).
    window: Cell<(Option<Instant>, u32)>,
    next_ticket: Cell<u64>,
    /// Who waits, on this shard, for a state handed back as bytes ([`collected`]), by ticket.
    collects: RefCell<FxHashMap<u64, OnCollected>>,
    /// The node drains ([`drain_blocking`]): new activations of movable actors homed here
    /// are placed on a peer.
    draining: Cell<bool>,
    drain: RefCell<Option<Drain>>,
    /// First messages for movable actors that arrived before this node joined the cluster
    /// (`net::members::join`), in arrival order.
    held: RefCell<std::collections::VecDeque<(u16, Box<dyn Relay>)>>,
    /// Timers of moves between nodes this shard coordinates (or serves), by ticket, each with
    /// its due time (`timers`).
    carried: RefCell<FxHashMap<u64, Vec<(Instant, timers::WireTimer)>>>,
}

/// Where a draining node places new activations.
struct Drain {
    me: NodeId,
    /// The live member set as the drain started (this node `Draining`: still the home of its
    /// ids) and as it will be once this node has left (where its ids go).
    now: quark_placement::LiveMembers,
    after: quark_placement::LiveMembers,
    /// By type index: the type's name if its state moves as bytes (it may be placed on a peer).
    types: Vec<Option<&'static str>>,
}

/// A state handed back as bytes by its place for a move between nodes: `Ok(None)` if the
/// actor was not active there (nothing to move), or why the place did not hand it over.
pub(crate) type Collected = Result<Option<Vec<u8>>, MigrateError>;

/// Gets a state handed back, and the `app_version` of the node it ran on (`None`: this node).
pub(crate) type OnCollected = Box<dyn FnOnce(&Rc<Shard>, Collected, Option<String>)>;

impl Migrations {
    pub(crate) fn new(home: ShardId) -> Self {
        Migrations {
            directory: RefCell::new(Directory::new(home)),
            pauses: RefCell::new(FxHashMap::default()),
            window: Cell::new((None, 0)),
            next_ticket: Cell::new(1),
            collects: RefCell::new(FxHashMap::default()),
            draining: Cell::new(false),
            drain: RefCell::new(None),
            held: RefCell::new(std::collections::VecDeque::new()),
            carried: RefCell::new(FxHashMap::default()),
        }
    }

    /// While the node drains: the peer a new activation of `(type_idx, key)` goes to, if its
    /// type may cross nodes and this node is its home node.
    fn drain_peer(&self, type_idx: u16, key: &ActorKey) -> Option<NodeId> {
        if !self.draining.get() {
            return None;
        }
        let d = self.drain.borrow();
        let d = d.as_ref()?;
        let id = ActorId {
            type_name: (*d.types.get(usize::from(type_idx))?)?,
            key: key.clone(),
        };
        if d.now.home(&id) != Some(d.me) {
            return None;
        }
        d.after.home(&id)
    }

    /// A fresh ticket of this shard.
    pub(crate) fn ticket(&self) -> u64 {
        let t = self.next_ticket.get();
        self.next_ticket.set(t + 1);
        t
    }

    /// Registers who waits for the state of move `ticket` (see [`collected`]).
    pub(crate) fn on_collected(&self, ticket: u64, f: OnCollected) {
        self.collects.borrow_mut().insert(ticket, f);
    }

    /// True if a message for `(type_idx, key)` that missed this shard's table must not
    /// activate the actor here (it lives elsewhere, or is moving): see [`divert`]. Called on
    /// table misses only; with no entry at all, one length test.
    #[inline]
    pub(crate) fn diverts(&self, core: &Shard, type_idx: u16, key: &ActorKey) -> bool {
        let dir = self.directory.borrow();
        (dir.len() != 0 && dir.has(&(type_idx, key.clone())))
            || policy_places(core, type_idx, key)
            || (self.draining.get() && {
                drop(dir);
                self.drain_peer(type_idx, key).is_some()
            })
            || (core.node.net.as_ref().is_some_and(|n| n.view.attention())
                && !matches!(
                    crate::net::place_new(core, type_idx, key),
                    crate::net::NewPlace::Here
                ))
    }

    /// Directory entries (actors of this home that are away or moving).
    pub(crate) fn entries(&self) -> usize {
        self.directory.borrow().len()
    }

    /// Takes one of `limit` starts of the current second (0 = no limit).
    fn admit(&self, now: Instant, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let (start, n) = match self.window.get() {
            (Some(start), n) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                (start, n)
            }
            _ => (now, 0),
        };
        if n >= limit {
            self.window.set((Some(start), n));
            return false;
        }
        self.window.set((Some(start), n + 1));
        true
    }
}

fn actor_id(node: &NodeShared, slot: &Slot) -> ActorId {
    ActorId {
        type_name: node.types[usize::from(slot.0)].name(),
        key: slot.1.clone(),
    }
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// True if application version `a` is older than `b` (docs/MIGRATION.md, "Versions"):
/// dot-separated parts compared in order, as numbers where both are numbers, else as text; a
/// missing part is older (`1.2` < `1.2.1`). An empty version (not configured) is never older
/// or newer than any other.
pub(crate) fn older(a: &str, b: &str) -> bool {
    quark_placement::version_older(a, b)
}

/// The marker of a target's refusal for its older version (`net::migrate`).
pub(crate) const OLDER_VERSION: &str = "quark.migrate.older-version";

/// The marker of a target's refusal for its newer member view (`net::migrate`):
/// `"{NEWER_VIEW} {epoch} {home}"`.
pub(crate) const NEWER_VIEW: &str = "quark.member.newer-view";

/// The id of this node (0 without a cluster).
pub(crate) fn this_node(node: &NodeShared) -> NodeId {
    node.net.as_ref().map_or(0, |n| n.node_id)
}
