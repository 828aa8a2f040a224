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

mod log_move;
pub use log_move::stop_log_moves_after_copy;

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

impl<A: Actor> ActorType<A> {
    /// Sets where a first activation of this type goes ([`PlacementPolicy`]; default
    /// [`PlacementPolicy::Hash`], the home shard). Ignored for stateless worker types. A
    /// policy needs no mover: it places, it does not move (docs/MIGRATION.md, "Placement
    /// policies").
    ///
    /// ```
    /// use quark_shard::{Actor, ActorType, PlacementPolicy};
    /// struct Session;
    /// impl Actor for Session { const TYPE_NAME: &'static str = "session"; }
    /// let t = ActorType::new(|_| Session).placement(PlacementPolicy::PreferCaller);
    /// ```
    pub fn placement(mut self, policy: PlacementPolicy) -> Self {
        self.placement = policy;
        self
    }
}

/// The node a type's [`PlacementPolicy::Node`] names, if it has one and this node is in a
/// cluster (stateless worker types: never).
pub(crate) fn fixed_node(node: &NodeShared, type_idx: Option<u16>) -> Option<NodeId> {
    node.net.as_ref()?;
    let ty = &node.types[usize::from(type_idx?)];
    match ty.placement() {
        PlacementPolicy::Node(n) if !ty.stateless() => Some(n),
        _ => None,
    }
}

/// True if a first message for `(type_idx, key)` on its home shard `core` may be placed away
/// from here by its type's policy (a table miss then goes to [`divert`], which decides).
#[inline]
fn policy_places(core: &Shard, type_idx: u16, key: &ActorKey) -> bool {
    let ty = &core.node.types[usize::from(type_idx)];
    let p = ty.placement();
    let log = ty.log_mover() && core.log.is_some();
    if (p == PlacementPolicy::Hash && !log) || ty.stateless() {
        return false;
    }
    // A type whose state is in the log: its home reads the place records (`log_move`).
    let away = log
        || match p {
            PlacementPolicy::Node(n) => off_node(core, n),
            p => p.places_on_shards(),
        };
    away && is_home(core, type_idx, key)
}

/// True if `n` is another node of this node's cluster.
fn off_node(core: &Shard, n: NodeId) -> bool {
    core.node.net.is_some() && n != this_node(&core.node)
}

fn is_home(core: &Shard, type_idx: u16, key: &ActorKey) -> bool {
    let id = ActorId {
        type_name: core.node.types[usize::from(type_idx)].name(),
        key: key.clone(),
    };
    shard_for(&id, core.node.shard_count()) == core.id
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
}

impl Order {
    fn cmd(&self, home: ShardId) -> Cmd {
        Cmd {
            ticket: self.ticket,
            home,
            to: self.to,
            timeout: self.timeout,
            collect: self.nodes.is_some(),
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

// ---- the home shard: ordering moves, holding and forwarding messages

/// Sends a move order for `(type_idx, key)` to its home shard; the receiver gets the outcome.
pub(crate) fn request(
    node: &Arc<NodeShared>,
    type_idx: u16,
    key: ActorKey,
    to: ShardId,
) -> oneshot::Receiver<Result<Moved, MigrateError>> {
    order(node, type_idx, key, move |core, key, timeout, tx| {
        start(core, type_idx, key, to, timeout, tx)
    })
}

/// Runs `run` (a move's start) on the home shard of `(type_idx, key)`, with the node's move
/// deadline and the sender of the outcome; returns the outcome's receiver.
fn order(
    node: &Arc<NodeShared>,
    type_idx: u16,
    key: ActorKey,
    run: impl FnOnce(&Rc<Shard>, ActorKey, Duration, MoveTx) + Send + 'static,
) -> oneshot::Receiver<Result<Moved, MigrateError>> {
    let (tx, rx) = oneshot::channel();
    let id = ActorId {
        type_name: node.types[usize::from(type_idx)].name(),
        key,
    };
    let home = shard_for(&id, node.shard_count());
    let timeout = node.config.migration_timeout;
    node.inject(
        home,
        CrossMsg::run_on(move |core| run(core, id.key, timeout, tx)),
    );
    rx
}

/// Where a move's outcome goes.
type MoveTx = oneshot::Sender<Result<Moved, MigrateError>>;

/// Asks the home shard of `(type_idx, key)` where the actor lives.
fn request_placement(
    node: &Arc<NodeShared>,
    type_idx: u16,
    key: ActorKey,
) -> oneshot::Receiver<Placement> {
    let (tx, rx) = oneshot::channel();
    let id = ActorId {
        type_name: node.types[usize::from(type_idx)].name(),
        key,
    };
    let home = shard_for(&id, node.shard_count());
    node.inject(
        home,
        CrossMsg::run_on(move |core| {
            let slot = (type_idx, id.key.clone());
            restore_place(core, &slot);
            let dir = core.migration.directory.borrow();
            let moving = dir.get(&slot).is_some_and(|e| e.moving.is_some());
            let node = dir
                .get(&slot)
                .and_then(|e| e.node)
                .unwrap_or_else(|| this_node(&core.node));
            let _ = tx.send(Placement {
                home: core.id,
                shard: dir.place_of(&slot),
                moving,
                node,
                actor: id,
            });
        }),
    );
    rx
}

/// Whether a move of `slot` to `to` may start now (on its home shard).
fn admissible(core: &Shard, slot: &Slot, actor: ActorId, to: ShardId) -> Result<(), MigrateError> {
    let node = &core.node;
    if !node.types[usize::from(slot.0)].migratable() {
        return Err(MigrateError::NotMigratable { actor });
    }
    if to >= node.shard_count() {
        return Err(MigrateError::NoSuchShard {
            actor,
            shard: to,
            shards: node.shard_count(),
        });
    }
    if node.phase() != Phase::Running {
        return Err(MigrateError::ShuttingDown { actor });
    }
    let dir = core.migration.directory.borrow();
    if dir.get(slot).is_some_and(|e| e.moving.is_some()) {
        return Err(MigrateError::Busy { actor });
    }
    if dir.get(slot).is_some_and(|e| e.node.is_some()) {
        // Living on another node: bring it back with a move to this node first.
        return Err(MigrateError::OtherNode { actor });
    }
    Ok(())
}

/// On the home shard: orders the move of `(type_idx, key)` to shard `to`.
fn start(
    core: &Rc<Shard>,
    type_idx: u16,
    key: ActorKey,
    to: ShardId,
    timeout: Duration,
    reply: oneshot::Sender<Result<Moved, MigrateError>>,
) {
    let slot = (type_idx, key);
    let actor = actor_id(&core.node, &slot);
    let m = &core.migration;
    restore_place(core, &slot);
    let from = m.directory.borrow().place_of(&slot);
    match admissible(core, &slot, actor.clone(), to) {
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
        Ok(()) if from == to => {
            let n = this_node(&core.node);
            let _ = reply.send(Ok(Moved {
                actor,
                from,
                to,
                duration: Duration::ZERO,
                bytes: 0,
                from_node: n,
                to_node: n,
            }));
            return;
        }
        Ok(()) => {}
    }
    let limit = core.node.config.migrations_per_sec_max;
    // A fresh reading: the shard's reading is from before the batch of inbound messages
    // this order came in (one batch can hold many orders).
    if !m.admit(core.node.config.clock.now(), limit) {
        let _ = reply.send(Err(MigrateError::RateLimited {
            actor,
            shard: core.id,
            limit,
        }));
        return;
    }
    let mut dir = m.directory.borrow_mut();
    let ticket = m.next_ticket.get();
    m.next_ticket.set(ticket + 1);
    let e = dir.entry(slot.clone());
    // Messages waiting for a credit to the place go there first: the command waits behind
    // them (they wait only while the place is another shard).
    let now = e.queue.is_empty() && !e.flushing;
    debug_assert!(now || from != core.id, "nothing waits for a credit to home");
    let order = Order {
        ticket,
        from,
        to,
        timeout,
        started: Instant::now(),
        reply: Some(reply),
        sent: now,
        nodes: None,
    };
    let cmd = order.cmd(core.id);
    e.moving = Some(order);
    if !now {
        e.queue.push_back(Pending::Move);
    }
    drop(dir);
    bump(&core.stats.migrations_started, 1);
    if now {
        command(core, slot, cmd, from);
    }
}

/// Sends a move's pause command to the actor's place `place` (after every message this home
/// forwarded there: they are all in the activation's mailbox when the command arrives).
fn command(core: &Rc<Shard>, slot: Slot, cmd: Cmd, place: ShardId) {
    if place == core.id {
        pause(core, slot, cmd);
    } else {
        core.send_to(place, CrossMsg::run_on(move |x| pause(x, slot, cmd)));
    }
}

/// A message for `(type_idx, key)` missed this (home) shard's table and the directory has an
/// entry for it: it waits in the entry (a move is under way, or earlier messages wait for a
/// credit), or goes on to the actor's place.
pub(crate) fn divert<A: Actor>(core: &Rc<Shard>, type_idx: u16, item: Box<dyn MailItemKeyed<A>>) {
    let r = item.into_relay();
    let slot = (type_idx, r.key().clone());
    divert_relay(core, slot, r);
}

fn divert_relay(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>) {
    let mut dir = core.migration.directory.borrow_mut();
    let Some(e) = dir.get_mut(&slot) else {
        // The node drains: a new activation goes to a peer, which the entry names from now.
        if let Some(peer) = core.migration.drain_peer(slot.0, &slot.1) {
            dir.entry(slot).node = Some(peer);
            drop(dir);
            return r.forward_node(core, peer);
        }
        drop(dir);
        // The live member set (docs/MIGRATION.md, "Rolling upgrades"): held until this node
        // joined, or sent on to the node that is the actor's home now.
        return match crate::net::place_new(core, slot.0, &slot.1) {
            crate::net::NewPlace::Here => first_here(core, slot, r),
            crate::net::NewPlace::Hold => core.migration.held.borrow_mut().push_back((slot.0, r)),
            crate::net::NewPlace::Node(n) => {
                core.migration.directory.borrow_mut().entry(slot).node = Some(n);
                r.forward_node(core, n)
            }
        };
    };
    if !e.is_quiet() {
        e.queue.push_back(Pending::Msg(r));
        return;
    }
    if let Some(node) = e.node {
        drop(dir);
        return r.forward_node(core, node);
    }
    let to = e.place;
    if to == core.id {
        // An entry at home with nothing waiting is removed by `flush`; deliver here.
        dir.remove(&slot);
        drop(dir);
        return r.deliver_here(core);
    }
    if core.try_acquire_credit(to) {
        drop(dir);
        r.forward(core, to);
    } else {
        e.queue.push_back(Pending::Msg(r));
        e.flushing = true;
        drop(dir);
        spawn_flusher(core, slot, to);
    }
}

/// A first message for `slot` (no entry) that its home shard `core` would activate here: the
/// type's placement policy decides ([`PlacementPolicy`]). Placed away, the actor gets its
/// entry *before* the message is sent on, so every later message for it finds the entry
/// and follows (one activation per id, whatever the races between first senders).
fn first_here(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>) {
    if !policy_places(core, slot.0, &slot.1) {
        return r.deliver_here(core);
    }
    let log = log_move::is_log_type(core, slot.0);
    if log {
        // Placed before (moved, or by its policy): its records are there.
        if let Some(p) = log_move::recorded_place(core, &slot) {
            if p == core.id {
                return r.activate_here(core);
            }
            restore_place(core, &slot);
            return divert_relay(core, slot, r);
        }
    }
    let policy = core.node.types[usize::from(slot.0)].placement();
    if let PlacementPolicy::Node(n) = policy {
        if off_node(core, n) {
            core.migration.directory.borrow_mut().entry(slot).node = Some(n);
            return r.forward_node(core, n);
        }
    }
    let sender = match r.origin() {
        Origin::Local => Some(core.id),
        Origin::Shard(s) => Some(s),
        Origin::External | Origin::Timer => None,
    };
    let to = policy.first_shard(core.id, sender, core.node.shard_count());
    if to == core.id {
        // Not through `deliver`: the table miss would bring it back here.
        return r.activate_here(core);
    }
    if log {
        return place_durably(core, slot, r, to);
    }
    core.migration
        .directory
        .borrow_mut()
        .entry(slot.clone())
        .place = to;
    divert_relay(core, slot, r);
}

/// On the home shard: for a log actor without an entry (after a restart), makes the entry its
/// place records name, if they name another shard (`log_move`). Nothing for other actors.
fn restore_place(core: &Shard, slot: &Slot) {
    if !log_move::is_log_type(core, slot.0) || core.migration.directory.borrow().has(slot) {
        return;
    }
    if let Some(p) = log_move::recorded_place(core, slot) {
        if p != core.id {
            core.migration
                .directory
                .borrow_mut()
                .entry(slot.clone())
                .place = p;
        }
    }
}

/// A first message for a log actor (no place record) whose policy places it on shard `to`:
/// the place record is made durable before anything is sent there (a restart must find the
/// actor where its records are). Messages wait in the entry meanwhile.
fn place_durably(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>, to: ShardId) {
    {
        let mut dir = core.migration.directory.borrow_mut();
        let e = dir.entry(slot.clone());
        e.place = to;
        e.flushing = true;
        e.queue.push_back(Pending::Msg(r));
    }
    let c = core.clone();
    core.sched.spawn(async move {
        let recorded = log_move::record_place(&c, &slot, to).await;
        let mut dir = c.migration.directory.borrow_mut();
        let e = dir
            .get_mut(&slot)
            .expect("an entry stays while its flusher runs (its place cannot change)");
        e.flushing = false;
        if let Err(detail) = recorded {
            // Not recorded: the actor starts at home instead, where a restart looks first.
            tracing::error!(shard = c.id, actor = %actor_id(&c.node, &slot), to, %detail,
                "placement: the place record was not written; the actor starts at home");
            let e = dir.remove(&slot).expect("looked up above");
            drop(dir);
            for p in e.queue {
                if let Pending::Msg(r) = p {
                    r.activate_here(&c);
                }
            }
            return;
        }
        drop(dir);
        flush(&c, &slot);
    });
}

/// On the home shard: a move ended. Records the new place, answers the caller, logs, and
/// sends on what waited.
fn done(core: &Rc<Shard>, slot: Slot, ticket: u64, outcome: Outcome) {
    if matches!(outcome, Outcome::Moved { .. }) && log_move::is_log_type(core, slot.0) {
        let to = core.migration.directory.borrow().get(&slot).and_then(|e| {
            e.moving
                .as_ref()
                .filter(|o| o.ticket == ticket && o.nodes.is_none())
                .map(|o| o.to)
        });
        if let Some(to) = to {
            // The records are on `to` now; the home's place record makes it so after a
            // restart too. Until it is durable, messages keep waiting in the entry.
            let c = core.clone();
            core.sched.spawn(async move {
                let outcome = match log_move::record_place(&c, &slot, to).await {
                    Ok(()) => outcome,
                    Err(detail) => Outcome::Refused(MigrateError::LogCopy {
                        actor: actor_id(&c.node, &slot),
                        shard: c.id,
                        detail,
                    }),
                };
                finish(&c, slot, ticket, outcome);
            });
            return;
        }
    }
    finish(core, slot, ticket, outcome);
}

/// [`done`], once the outcome is final.
fn finish(core: &Rc<Shard>, slot: Slot, ticket: u64, outcome: Outcome) {
    let mut dir = core.migration.directory.borrow_mut();
    let Some(e) = dir.get_mut(&slot) else {
        return;
    };
    if e.moving.as_ref().is_none_or(|o| o.ticket != ticket) {
        return;
    }
    let mut order = e.moving.take().expect("checked just above");
    let actor = actor_id(&core.node, &slot);
    let duration = order.started.elapsed();
    let (from, to) = (order.from, order.to);
    let st = &core.stats;
    let result = match outcome {
        Outcome::Moved { bytes } => {
            e.place = to;
            bump(&st.migrations_done, 1);
            bump(&st.migration_bytes, bytes);
            tracing::info!(shard = core.id, actor = %actor, from, to,
                duration_us = duration.as_micros() as u64, bytes, "actor migrated");
            let n = this_node(&core.node);
            Ok(Moved {
                actor,
                from,
                to,
                duration,
                bytes,
                from_node: n,
                to_node: n,
            })
        }
        Outcome::Lost { bytes, detail } => {
            e.place = to;
            bump(&st.migrations_done, 1);
            bump(&st.migration_bytes, bytes);
            tracing::error!(shard = core.id, actor = %actor, from, to,
                duration_us = duration.as_micros() as u64, bytes, %detail,
                "actor migrated, but its state could not be rehydrated: it starts afresh");
            Err(MigrateError::RehydrateFailed { actor, to, detail })
        }
        Outcome::Aborted => {
            bump(&st.migrations_aborted, 1);
            tracing::warn!(shard = core.id, actor = %actor, from, to,
                duration_us = duration.as_micros() as u64,
                "actor migration aborted at its deadline; the actor stays");
            Err(MigrateError::DeadlineExceeded {
                actor,
                from,
                to,
                timeout: order.timeout,
            })
        }
        Outcome::Refused(err) => {
            bump(&st.migrations_aborted, 1);
            tracing::warn!(shard = core.id, actor = %actor, from, to, error = %err,
                "actor migration refused by its place; the actor stays");
            Err(err)
        }
    };
    drop(dir);
    if let Some(tx) = order.reply.take() {
        let _ = tx.send(result);
    }
    flush(core, &slot);
}

/// On the home shard: sends what waits in `slot`'s entry on to the actor's place, in order,
/// up to a pending move's command (sent then); delivers it here, and drops the entry, if the
/// place is home.
fn flush(core: &Rc<Shard>, slot: &Slot) {
    let mut dir = core.migration.directory.borrow_mut();
    let Some(e) = dir.get_mut(slot) else {
        return;
    };
    if e.flushing || e.moving.as_ref().is_some_and(|o| o.sent) {
        return;
    }
    if let Some(node) = e.node {
        // On another node: forwarded at once, in order (no credits: the connection's
        // buffer holds them; a move command waits only for another shard of this node).
        let queued: Vec<Pending> = e.queue.drain(..).collect();
        drop(dir);
        for p in queued {
            if let Pending::Msg(r) = p {
                r.forward_node(core, node);
            }
        }
        return;
    }
    let to = e.place;
    if to == core.id {
        // Back at home: no entry any more (the common case costs nothing again). What waited
        // is delivered now, in order, before any later message can reach the table. (No
        // move command waits here: one waits only behind messages for another shard.)
        let e = dir.remove(slot).expect("looked up above");
        drop(dir);
        for p in e.queue {
            match p {
                Pending::Msg(r) => r.deliver_here(core),
                Pending::Move => unreachable!("a move command waits only for another shard"),
            }
        }
        return;
    }
    loop {
        match e.queue.front() {
            None => return,
            Some(Pending::Move) => {
                e.queue.pop_front();
                let cmd = send_order(e, core.id);
                drop(dir);
                return command(core, slot.clone(), cmd, to);
            }
            Some(Pending::Msg(_)) => {
                if !core.try_acquire_credit(to) {
                    e.flushing = true;
                    drop(dir);
                    return spawn_flusher(core, slot.clone(), to);
                }
                let Some(Pending::Msg(r)) = e.queue.pop_front() else {
                    unreachable!("the front was a message")
                };
                r.forward(core, to);
            }
        }
    }
}

/// Marks the entry's pending move as sent and returns its command.
fn send_order(e: &mut crate::directory::Entry<Pending, Order>, home: ShardId) -> Cmd {
    let o = e
        .moving
        .as_mut()
        .expect("a queued move command has its order");
    o.sent = true;
    o.cmd(home)
}

/// A task of the home shard that sends `slot`'s waiting messages to `to` as credits come
/// back, up to a pending move's command (which it sends, then stops).
fn spawn_flusher(core: &Rc<Shard>, slot: Slot, to: ShardId) {
    let c = core.clone();
    core.sched.spawn(async move {
        loop {
            let move_cmd = {
                let mut dir = c.migration.directory.borrow_mut();
                let e = dir
                    .get_mut(&slot)
                    .expect("an entry stays while its flusher runs (its place cannot change)");
                match e.queue.front() {
                    None => {
                        e.flushing = false;
                        return;
                    }
                    Some(Pending::Move) => {
                        e.queue.pop_front();
                        e.flushing = false;
                        Some(send_order(e, c.id))
                    }
                    Some(Pending::Msg(_)) => None,
                }
            };
            if let Some(cmd) = move_cmd {
                return command(&c, slot, cmd, to);
            }
            c.acquire_credit(to).await;
            let mut dir = c.migration.directory.borrow_mut();
            let e = dir.get_mut(&slot).expect("as above");
            // Only this task takes from the queue while `flushing`: the front is the message
            // looked at before the wait.
            let Some(Pending::Msg(r)) = e.queue.pop_front() else {
                unreachable!("the front was a message")
            };
            drop(dir);
            r.forward(&c, to);
        }
    });
}

// ---- the old place: pausing and handing over

/// On the actor's place: pauses its activation for the move `cmd` (see the module doc).
fn pause(core: &Rc<Shard>, slot: Slot, cmd: Cmd) {
    core.tables.erased(slot.0).pause_for_move(core, slot.1, cmd);
}

/// [`pause`] for a table of type `A` (called through `ErasedTable::pause_for_move`).
pub(crate) fn pause_typed<A: Actor>(
    core: &Rc<Shard>,
    table: &TypeTable<A>,
    type_idx: u16,
    key: ActorKey,
    cmd: Cmd,
) {
    let slot = (type_idx, key);
    let act = table.actors.borrow().get(&slot.1).cloned();
    let Some(act) = act else {
        // Not active here: nothing to hand over; it starts at its new place (a log actor's
        // records go there first).
        if let (Some(Mover::Log { keys }), false) = (&table.info.spec.migration, cmd.collect) {
            let keys = keys(&actor_id(&core.node, &slot));
            return log_move::copy_out(core, slot, cmd, keys);
        }
        return settle(core, slot, cmd, Outcome::Moved { bytes: 0 });
    };
    if act.is_deactivating() {
        let err = MigrateError::Deactivating {
            actor: act.ctx.id.clone(),
            shard: core.id,
        };
        return settle(core, slot, cmd, Outcome::Refused(err));
    }
    // Out of the table: nothing new reaches it (this shard's senders address the home, and
    // the home holds what comes now); it handles what its mailbox has, then hands over.
    table.remove(&act);
    let prev_stop = act.stop_requested.get();
    let back = act.clone();
    let key = slot.1.clone();
    let undo = Box::new(move |core: &Rc<Shard>| {
        if back.is_gone() {
            return;
        }
        back.stop_requested.set(prev_stop);
        let old = core
            .table::<A>(type_idx)
            .actors
            .borrow_mut()
            .insert(key, back);
        assert!(
            old.is_none(),
            "single activation: an aborted move found another activation in its table"
        );
    });
    let weak = Rc::downgrade(core);
    let mut on_timer = Some(slot.clone());
    let ticket = cmd.ticket;
    let timer = core.timers.borrow_mut().add(
        core.node.config.clock.now() + cmd.timeout,
        None,
        Box::new(move || {
            if let (Some(core), Some(slot)) = (weak.upgrade(), on_timer.take()) {
                abort(&core, &slot, ticket);
            }
            false
        }),
    );
    core.migration
        .pauses
        .borrow_mut()
        .insert(slot, Pause { cmd, timer, undo });
    act.request_deactivation();
    core.poke();
}

/// The deadline of a pause passed before its hand-over: the activation goes back into its
/// table and keeps running here.
fn abort(core: &Rc<Shard>, slot: &Slot, ticket: u64) {
    let p = {
        let mut pauses = core.migration.pauses.borrow_mut();
        match pauses.get(slot) {
            Some(p) if p.cmd.ticket == ticket => pauses.remove(slot),
            _ => None,
        }
    };
    let Some(p) = p else { return };
    (p.undo)(core);
    settle(core, slot.clone(), p.cmd, Outcome::Aborted);
}

/// Aborts every pause of this shard (it is stopping): the activations go back into their
/// tables, to be discarded with them.
pub(crate) fn abort_all(core: &Rc<Shard>) {
    let pauses: Vec<(Slot, u64)> = core
        .migration
        .pauses
        .borrow()
        .iter()
        .map(|(s, p)| (s.clone(), p.cmd.ticket))
        .collect();
    for (slot, ticket) in pauses {
        abort(core, &slot, ticket);
    }
}

/// Called by an activation's task when it leaves its turn loop (mailbox empty, stop asked):
/// if the activation is paused for a move, hands its state over to the new shard and returns
/// `None` (the task ends); otherwise gives the state back (the task deactivates).
pub(crate) fn hand_over<A: Actor>(
    act: &Rc<Activation<A>>,
    info: &TypeInfo<A>,
    actor: A,
) -> Option<A> {
    let core = &act.ctx.core;
    let m = &core.migration;
    if m.pauses.borrow().is_empty() {
        return Some(actor);
    }
    let slot = (act.ctx.type_idx, act.ctx.id.key.clone());
    let Some(p) = m.pauses.borrow_mut().remove(&slot) else {
        return Some(actor);
    };
    core.timers.borrow_mut().cancel(p.timer);
    drop(p.undo);
    act.moved_out();
    // Between shards the activation's timers move with it (their messages are `Send`);
    // between nodes they are cancelled (a timer's message need not be serializable).
    let log_keys = match &info.spec.migration {
        Some(Mover::Log { keys }) => Some(keys(&act.ctx.id)),
        _ => None,
    };
    let timers = if p.cmd.collect || log_keys.is_some() {
        act.ctx.cancel_all_timers();
        Vec::new()
    } else {
        act.ctx.take_timers()
    };
    debug_assert_eq!(act.queue_len(), 0, "a turn loop ends with an empty mailbox");
    act.wake_all_space_waiters();
    if p.cmd.collect {
        // A move between nodes: the state goes back to the home (or the shard serving the
        // other node's request) as bytes.
        let state = match &info.spec.migration {
            Some(Mover::Bytes { dehydrate, .. }) => Ok(Some(dehydrate(&actor))),
            _ => Err(MigrateError::NotSerializable {
                actor: act.ctx.id.clone(),
            }),
        };
        drop(actor);
        send_collected(core, p.cmd, state);
        return None;
    }
    if let Some(keys) = log_keys {
        // The records move, not the memory (what counts is what the actor saved).
        drop(actor);
        let slot = (act.ctx.type_idx, act.ctx.id.key.clone());
        log_move::copy_out(core, slot, p.cmd, keys);
        return None;
    }
    let (payload, bytes): (Box<dyn Any + Send>, u64) = match &info.spec.migration {
        Some(Mover::Boxed { out, .. }) => (out(actor), 0),
        Some(Mover::Bytes { dehydrate, .. }) => {
            let b = dehydrate(&actor);
            drop(actor);
            let n = b.len() as u64;
            (Box::new(b), n)
        }
        Some(Mover::Log { .. }) => unreachable!("log actors are handed over above"),
        None => unreachable!("only types with a mover are paused"),
    };
    let cmd = p.cmd;
    let id = act.ctx.id.clone();
    core.send_to(
        cmd.to,
        CrossMsg::run_on(move |y| arrive::<A>(y, slot, id, cmd, (payload, timers), bytes)),
    );
    None
}

// ---- the new place: installing

/// On the new shard: installs the state that arrived as a live activation, and tells home.
fn arrive<A: Actor>(
    core: &Rc<Shard>,
    slot: Slot,
    id: ActorId,
    cmd: Cmd,
    (payload, timers): (Box<dyn Any + Send>, CarriedTimers<A>),
    bytes: u64,
) {
    let table = core.table::<A>(slot.0);
    let info = table.info.clone();
    let actor = match &info.spec.migration {
        Some(Mover::Boxed { back, .. }) => Ok(back(payload)),
        Some(Mover::Bytes { rehydrate, .. }) => {
            let b = payload
                .downcast::<Vec<u8>>()
                .expect("dehydrated state travels as bytes");
            rehydrate(&id, &b).map_err(|e| crate::ErrorChain(&*e).to_string())
        }
        Some(Mover::Log { .. }) => unreachable!("log actors arrive as records (log_move)"),
        None => unreachable!("only types with a mover are moved"),
    };
    let outcome = match actor {
        Ok(actor) => {
            let act = Activation::start_with(core, id, slot.0, info, actor);
            act.ctx.rearm_timers(timers);
            let old = table.actors.borrow_mut().insert(slot.1.clone(), act);
            assert!(
                old.is_none(),
                "single activation: a moved actor arrived on shard {} which has an activation of it",
                core.id
            );
            Outcome::Moved { bytes }
        }
        Err(detail) => Outcome::Lost { bytes, detail },
    };
    settle(core, slot, cmd, outcome);
}

/// Sends a move's outcome to its home shard.
fn settle(core: &Rc<Shard>, slot: Slot, cmd: Cmd, outcome: Outcome) {
    if cmd.collect {
        let actor = actor_id(&core.node, &slot);
        let state = match outcome {
            Outcome::Moved { .. } | Outcome::Lost { .. } => Ok(None),
            Outcome::Aborted => Err(MigrateError::DeadlineExceeded {
                actor,
                from: core.id,
                to: core.id,
                timeout: cmd.timeout,
            }),
            Outcome::Refused(e) => Err(e),
        };
        return send_collected(core, cmd, state);
    }
    if cmd.home == core.id {
        done(core, slot, cmd.ticket, outcome);
    } else {
        let ticket = cmd.ticket;
        core.send_to(
            cmd.home,
            CrossMsg::run_on(move |h| done(h, slot, ticket, outcome)),
        );
    }
}

/// Sends a state handed back as bytes to the shard that waits for it.
fn send_collected(core: &Rc<Shard>, cmd: Cmd, state: Collected) {
    let ticket = cmd.ticket;
    if cmd.home == core.id {
        collected(core, ticket, state, None);
    } else {
        core.send_to(
            cmd.home,
            CrossMsg::run_on(move |h| collected(h, ticket, state, None)),
        );
    }
}

/// On the shard that waits for it: a state handed back as bytes (or why not).
pub(crate) fn collected(core: &Rc<Shard>, ticket: u64, state: Collected, ran_on: Option<String>) {
    let f = core.migration.collects.borrow_mut().remove(&ticket);
    if let Some(f) = f {
        f(core, state, ran_on);
    }
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

/// On a shard of the node the actor moves to: installs a state that arrived as bytes from
/// another node as a live activation (`None`: the actor was not active, nothing to install).
pub(crate) fn install_typed<A: Actor>(
    core: &Rc<Shard>,
    table: &TypeTable<A>,
    type_idx: u16,
    key: ActorKey,
    state: Option<Vec<u8>>,
) -> Result<(), MigrateError> {
    let id = ActorId {
        type_name: A::TYPE_NAME,
        key: key.clone(),
    };
    let Some(bytes) = state else { return Ok(()) };
    let Some(Mover::Bytes { rehydrate, .. }) = &table.info.spec.migration else {
        return Err(MigrateError::NotSerializable { actor: id });
    };
    match rehydrate(&id, &bytes) {
        Ok(actor) => {
            let act = Activation::start_with(core, id, type_idx, table.info.clone(), actor);
            let old = table.actors.borrow_mut().insert(key, act);
            assert!(
                old.is_none(),
                "single activation: a moved actor arrived on shard {} which has an activation of it",
                core.id
            );
            Ok(())
        }
        Err(e) => Err(MigrateError::RehydrateFailed {
            actor: id,
            to: core.id,
            detail: crate::ErrorChain(&*e).to_string(),
        }),
    }
}

/// Delivers, in arrival order, the first messages held until the node joined.
pub(crate) fn release_held(core: &Rc<Shard>) {
    let held = std::mem::take(&mut *core.migration.held.borrow_mut());
    for (_, r) in held {
        r.deliver_here(core);
    }
}

/// Delivers, in arrival order, the held first messages for `slot`, whose state has just been
/// installed here by a hand-over: before any message that comes after (per-sender FIFO).
pub(crate) fn release_held_for(core: &Rc<Shard>, slot: &Slot) {
    let mine: Vec<Box<dyn Relay>> = {
        let mut held = core.migration.held.borrow_mut();
        if held.is_empty() {
            return;
        }
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *held)
            .into_iter()
            .partition(|(t, r)| *t == slot.0 && r.key() == &slot.1);
        *held = rest.into_iter().collect();
        mine.into_iter().map(|(_, r)| r).collect()
    };
    for r in mine {
        r.deliver_here(core);
    }
}

pub(crate) fn this_node(node: &NodeShared) -> NodeId {
    node.net.as_ref().map_or(0, |n| n.node_id)
}

// ---- the API

/// `OtherNode` if `actor` belongs to another node of the cluster (by the cluster's placement).
fn check_local(node: &NodeShared, actor: &ActorId) -> Result<(), MigrateError> {
    let movable = node
        .types
        .iter()
        .find(|t| t.name() == actor.type_name)
        .is_some_and(|t| t.bytes_mover());
    match &node.net {
        // The live home for a movable type (docs/MIGRATION.md, "Rolling upgrades"); a node
        // that drains or left still coordinates the ids it was the static home of.
        Some(net) => match net.view.home(actor, movable) {
            Some(n)
                if n != net.node_id
                    && !(net.view.leaving()
                        && net.view.static_home(actor) == Some(net.node_id)) =>
            {
                Err(MigrateError::OtherNode {
                    actor: actor.clone(),
                })
            }
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

fn type_by_name(node: &NodeShared, type_name: &str) -> Result<u16, MigrateError> {
    node.types
        .iter()
        .position(|t| t.name() == type_name)
        .map(|i| i as u16)
        .ok_or_else(|| MigrateError::UnknownType {
            type_name: type_name.to_owned(),
        })
}

/// `Engine::migrate`: blocks until the move ended (at most about `migration_timeout`).
pub(crate) fn migrate_blocking(
    node: &Arc<NodeShared>,
    actor: &ActorId,
    to: ShardId,
) -> Result<Moved, MigrateError> {
    let type_idx = type_by_name(node, actor.type_name)?;
    check_local(node, actor)?;
    let rx = request(node, type_idx, actor.key.clone(), to);
    crate::block_on(rx).unwrap_or_else(|_| {
        Err(MigrateError::ShuttingDown {
            actor: actor.clone(),
        })
    })
}

/// `Engine::placement`: asks the actor's home shard.
pub(crate) fn placement_blocking(
    node: &Arc<NodeShared>,
    actor: &ActorId,
) -> Result<Placement, MigrateError> {
    let type_idx = type_by_name(node, actor.type_name)?;
    check_local(node, actor)?;
    let rx = request_placement(node, type_idx, actor.key.clone());
    crate::block_on(rx).map_err(|_| MigrateError::ShuttingDown {
        actor: actor.clone(),
    })
}

impl<A: Actor> ActorRef<A> {
    /// Moves this actor's activation to shard `to` of its node, live: it finishes the turn it
    /// is in and the messages already in its mailbox, hands its state over between turns,
    /// and runs on `to` from then on; messages sent meanwhile wait at its home shard and are
    /// delivered in order after the move (per-sender FIFO holds across it). If the
    /// hand-over does not happen within `migration_timeout`, the move is aborted and the
    /// actor keeps running where it was ([`MigrateError::DeadlineExceeded`]). If it is not
    /// active, only its place changes (it activates on `to` at its next message).
    ///
    /// Usable from any thread, and from a shard (await it; never block a shard on it). The
    /// type must be registered with [`ActorType::movable`] or [`ActorType::migratable`].
    /// See docs/MIGRATION.md.
    ///
    /// Cancel safety: dropping the future does not cancel the move.
    pub fn migrate(
        &self,
        to: ShardId,
    ) -> impl Future<Output = Result<Moved, MigrateError>> + Send + 'static {
        let id = self.id().clone();
        let sent = if self.remote_node().is_some() {
            Err(MigrateError::OtherNode { actor: id.clone() })
        } else {
            type_by_name(self.node(), A::TYPE_NAME)
                .map(|t| request(self.node(), t, id.key.clone(), to))
        };
        async move {
            sent?
                .await
                .unwrap_or(Err(MigrateError::ShuttingDown { actor: id }))
        }
    }

    /// Where this actor lives now (asks its home shard). Usable from any thread and from a
    /// shard (await it).
    pub fn placement(
        &self,
    ) -> impl Future<Output = Result<Placement, MigrateError>> + Send + 'static {
        let id = self.id().clone();
        let sent = if self.remote_node().is_some() {
            Err(MigrateError::OtherNode { actor: id.clone() })
        } else {
            type_by_name(self.node(), A::TYPE_NAME)
                .map(|t| request_placement(self.node(), t, id.key.clone()))
        };
        async move {
            sent?
                .await
                .map_err(|_| MigrateError::ShuttingDown { actor: id })
        }
    }
}

// ---- moves between nodes (coordinated by the actor's home shard on its home node)

/// Sends an order to move `(type_idx, key)` to node `to_node` to its home shard.
pub(crate) fn request_node(
    node: &Arc<NodeShared>,
    type_idx: u16,
    key: ActorKey,
    to_node: NodeId,
) -> oneshot::Receiver<Result<Moved, MigrateError>> {
    order(node, type_idx, key, move |core, key, timeout, tx| {
        start_node(core, type_idx, key, to_node, timeout, tx)
    })
}

/// `Engine::migrate_to_node`: blocks until the move ended.
pub(crate) fn migrate_node_blocking(
    node: &Arc<NodeShared>,
    actor: &ActorId,
    to_node: NodeId,
) -> Result<Moved, MigrateError> {
    let type_idx = type_by_name(node, actor.type_name)?;
    check_local(node, actor)?;
    let rx = request_node(node, type_idx, actor.key.clone(), to_node);
    crate::block_on(rx).unwrap_or_else(|_| {
        Err(MigrateError::ShuttingDown {
            actor: actor.clone(),
        })
    })
}

/// Whether a move of `slot` to node `to_node` may start now (on its home shard).
fn admissible_node(core: &Shard, slot: &Slot, to_node: NodeId) -> Result<(), MigrateError> {
    let actor = actor_id(&core.node, slot);
    let node = &core.node;
    let ty = &node.types[usize::from(slot.0)];
    if !ty.migratable() {
        return Err(MigrateError::NotMigratable { actor });
    }
    if !ty.bytes_mover() {
        return Err(MigrateError::NotSerializable { actor });
    }
    if node.phase() != Phase::Running {
        return Err(MigrateError::ShuttingDown { actor });
    }
    let here = this_node(node);
    if to_node != here {
        let Some(net) = core.net.as_ref() else {
            return Err(MigrateError::NoSuchNode {
                actor,
                node: to_node,
            });
        };
        let Some(link) = net.links.get(&to_node) else {
            return Err(MigrateError::NoSuchNode {
                actor,
                node: to_node,
            });
        };
        // The version the target told in its handshake: a move never goes to an older one
        // (checked again by the target on arrival).
        let mine = &node.config.app_version;
        let theirs = link.peer_version();
        let here_now = core
            .migration
            .directory
            .borrow()
            .get(slot)
            .is_none_or(|e| e.node.is_none());
        if here_now && older(&theirs, mine) {
            return Err(MigrateError::OlderVersion {
                actor,
                node: to_node,
                version: theirs,
                ran_on: mine.clone(),
                runs_on: here,
            });
        }
        if link.wire().is_none() {
            let detail = link.cause().map_or_else(
                || "no connection".to_owned(),
                |c| crate::ErrorChain(&c).to_string(),
            );
            return Err(MigrateError::NodeUnavailable {
                actor,
                node: to_node,
                detail,
            });
        }
    }
    if core
        .migration
        .directory
        .borrow()
        .get(slot)
        .is_some_and(|e| e.moving.is_some())
    {
        return Err(MigrateError::Busy { actor });
    }
    Ok(())
}

/// On the home shard: orders the move of `(type_idx, key)` to node `to_node`. The place
/// (a shard of this node, or another node) hands the state back here as bytes; this shard
/// then installs it (`to_node` is this node) or sends it to `to_node`.
fn start_node(
    core: &Rc<Shard>,
    type_idx: u16,
    key: ActorKey,
    to_node: NodeId,
    timeout: Duration,
    reply: oneshot::Sender<Result<Moved, MigrateError>>,
) {
    let slot = (type_idx, key);
    let actor = actor_id(&core.node, &slot);
    let here = this_node(&core.node);
    if let Err(e) = admissible_node(core, &slot, to_node) {
        let _ = reply.send(Err(e));
        return;
    }
    let m = &core.migration;
    let (from_node, from) = {
        let dir = m.directory.borrow();
        (
            dir.get(&slot).and_then(|e| e.node).unwrap_or(here),
            dir.place_of(&slot),
        )
    };
    if from_node == to_node {
        let _ = reply.send(Ok(Moved {
            actor,
            from,
            to: from,
            duration: Duration::ZERO,
            bytes: 0,
            from_node,
            to_node,
        }));
        return;
    }
    let limit = core.node.config.migrations_per_sec_max;
    if !m.admit(core.node.config.clock.now(), limit) {
        let _ = reply.send(Err(MigrateError::RateLimited {
            actor,
            shard: core.id,
            limit,
        }));
        return;
    }
    let ticket = m.ticket();
    let mut dir = m.directory.borrow_mut();
    let e = dir.entry(slot.clone());
    let now = e.queue.is_empty() && !e.flushing;
    let order = Order {
        ticket,
        from,
        to: core.id,
        timeout,
        started: Instant::now(),
        reply: Some(reply),
        sent: now,
        nodes: Some((from_node, to_node)),
    };
    let cmd = order.cmd(core.id);
    e.moving = Some(order);
    if !now {
        e.queue.push_back(Pending::Move);
    }
    drop(dir);
    bump(&core.stats.migrations_started, 1);
    let s = slot.clone();
    m.on_collected(
        ticket,
        Box::new(move |c, state, ran_on| ship(c, s, ticket, state, ran_on)),
    );
    if !now {
        return;
    }
    if from_node == here {
        command(core, slot, cmd, from);
    } else if let Err(detail) = crate::net::send_pause(core, from_node, &actor, ticket, timeout) {
        collected(
            core,
            ticket,
            Err(MigrateError::NodeUnavailable {
                actor,
                node: from_node,
                detail,
            }),
            None,
        );
    }
}

/// The move order of `slot` with this ticket, if it is still the entry's move.
fn order_nodes(core: &Shard, slot: &Slot, ticket: u64) -> Option<(NodeId, NodeId, Duration)> {
    let dir = core.migration.directory.borrow();
    let o = dir.get(slot)?.moving.as_ref()?;
    if o.ticket != ticket {
        return None;
    }
    let (f, t) = o.nodes?;
    Some((f, t, o.timeout))
}

/// On the home shard: the place handed the state back (or did not): installs it here, or
/// sends it to the target node. `ran_on`: the version of the node it ran on (`None`: here).
fn ship(core: &Rc<Shard>, slot: Slot, ticket: u64, state: Collected, ran_on: Option<String>) {
    let Some((from_node, to_node, timeout)) = order_nodes(core, &slot, ticket) else {
        return;
    };
    let state = match state {
        Ok(s) => s,
        // The place did not hand over: the actor stays where it was.
        Err(e) => return finish_node(core, &slot, ticket, Err(e), None),
    };
    let here = this_node(&core.node);
    let mine = core.node.config.app_version.clone();
    let ran_on = ran_on.unwrap_or_else(|| mine.clone());
    let bytes = state.as_ref().map_or(0, |b| b.len() as u64);
    let actor = actor_id(&core.node, &slot);
    if to_node == here {
        if older(&mine, &ran_on) {
            // Never onto an older version: back to where it ran.
            let detail = format!("{OLDER_VERSION} {mine} {ran_on}");
            return send_back(core, slot, ticket, state, from_node, ran_on, detail, bytes);
        }
        let r = core
            .tables
            .erased(slot.0)
            .install_bytes(core, slot.1.clone(), state);
        return finish_node(core, &slot, ticket, r.map(|()| bytes), Some(None));
    }
    let back = state.clone();
    let s = slot.clone();
    let v = ran_on.clone();
    let sent = crate::net::send_arrive(
        core,
        to_node,
        &actor,
        &state,
        &ran_on,
        timeout,
        Box::new(move |c: &Rc<Shard>, r: Arrival| arrived(c, s, ticket, r, back, v, bytes)),
    );
    if let Err(detail) = sent {
        // Never sent: the state goes back to where it ran.
        arrived(
            core,
            slot,
            ticket,
            Arrival::Refused(detail),
            state,
            ran_on,
            bytes,
        );
    }
}

/// The error of a refused move: `OlderVersion` if the target refused for its version.
fn refusal(
    core: &Shard,
    slot: &Slot,
    to_node: NodeId,
    runs_on: NodeId,
    detail: String,
) -> MigrateError {
    let actor = actor_id(&core.node, slot);
    if let Some(rest) = detail.split(OLDER_VERSION).nth(1) {
        let mut w = rest.split_whitespace();
        if let (Some(version), Some(ran_on)) = (w.next(), w.next()) {
            return MigrateError::OlderVersion {
                actor,
                node: to_node,
                version: version.to_owned(),
                ran_on: ran_on.to_owned(),
                runs_on,
            };
        }
    }
    MigrateError::NodeMoveAborted {
        actor,
        to_node,
        runs_on,
        detail,
    }
}

/// On the home shard: a state the target did not take goes back to the node it ran on
/// (`from_node`): installed here if that is this node, else sent there again; if that fails
/// too, installed here unless this node is older than it ran on (else it is lost: the actor
/// starts afresh on `from_node` at its next message).
#[allow(clippy::too_many_arguments)]
fn send_back(
    core: &Rc<Shard>,
    slot: Slot,
    ticket: u64,
    state: Option<Vec<u8>>,
    from_node: NodeId,
    ran_on: String,
    detail: String,
    _bytes: u64,
) {
    let Some((_, to_node, timeout)) = order_nodes(core, &slot, ticket) else {
        return;
    };
    let here = this_node(&core.node);
    let rv = ran_on.clone();
    let install_here =
        move |core: &Rc<Shard>, slot: &Slot, state: Option<Vec<u8>>, detail: String| {
            let mine = &core.node.config.app_version;
            let ran_on = &rv;
            if older(mine, ran_on) {
                let e = MigrateError::NodeMoveAborted {
                    actor: actor_id(&core.node, slot),
                    to_node,
                    runs_on: from_node,
                    detail: format!(
                    "{detail}; the state could not go back to node {from_node} and this node's \
                     app_version {mine} is older than {ran_on}: it is lost, the actor starts \
                     afresh on node {from_node}"
                ),
                };
                return finish_node(
                    core,
                    slot,
                    ticket,
                    Err(e),
                    Some(Some(from_node).filter(|n| *n != here)),
                );
            }
            let installed = core
                .tables
                .erased(slot.0)
                .install_bytes(core, slot.1.clone(), state);
            let detail = match installed {
                Ok(()) => detail,
                Err(e) => format!("{detail}; and back here: {e}"),
            };
            let e = refusal(core, slot, to_node, here, detail);
            finish_node(core, slot, ticket, Err(e), Some(None))
        };
    if from_node == here {
        return install_here(core, &slot, state, detail);
    }
    let actor = actor_id(&core.node, &slot);
    let back = state.clone();
    let s = slot.clone();
    let d = detail.clone();
    let sent = crate::net::send_arrive(
        core,
        from_node,
        &actor,
        &state,
        &ran_on,
        timeout,
        Box::new(move |c: &Rc<Shard>, r: Arrival| match r {
            Arrival::Installed(_) => {
                let e = refusal(c, &s, to_node, from_node, d);
                finish_node(c, &s, ticket, Err(e), Some(Some(from_node)))
            }
            Arrival::Refused(why) | Arrival::Unknown(why) => {
                install_here(c, &s, back, format!("{d}; back to node {from_node}: {why}"))
            }
        }),
    );
    if let Err(why) = sent {
        // `install_here` moved into the callback, which was dropped: redo it inline.
        let mine = core.node.config.app_version.clone();
        let e = if older(&mine, &ran_on) {
            MigrateError::NodeMoveAborted {
                actor,
                to_node,
                runs_on: from_node,
                detail: format!("{detail}; back to node {from_node}: {why}; the state is lost"),
            }
        } else {
            let r = core
                .tables
                .erased(slot.0)
                .install_bytes(core, slot.1.clone(), state);
            let detail = match r {
                Ok(()) => format!("{detail}; back to node {from_node}: {why}"),
                Err(e) => format!("{detail}; back here: {e}"),
            };
            let e = refusal(core, &slot, to_node, here, detail);
            return finish_node(core, &slot, ticket, Err(e), Some(None));
        };
        finish_node(core, &slot, ticket, Err(e), Some(Some(from_node)))
    }
}

/// What the target node answered to a state sent to it.
pub(crate) enum Arrival {
    /// Installed (or nothing to install); `Some(detail)`: rehydrate failed there.
    Installed(Option<String>),
    /// Refused (or never sent): the state was not installed there.
    Refused(String),
    /// No answer (deadline, or the connection dropped): it may have been installed.
    Unknown(String),
}

/// On the home shard: the target node's answer to the state sent to it.
#[allow(clippy::too_many_arguments)]
fn arrived(
    core: &Rc<Shard>,
    slot: Slot,
    ticket: u64,
    r: Arrival,
    back: Option<Vec<u8>>,
    ran_on: String,
    bytes: u64,
) {
    let Some((from_node, to_node, _)) = order_nodes(core, &slot, ticket) else {
        return;
    };
    let actor = actor_id(&core.node, &slot);
    match r {
        Arrival::Installed(None) => {
            finish_node(core, &slot, ticket, Ok(bytes), Some(Some(to_node)))
        }
        Arrival::Installed(Some(detail)) => {
            let e = MigrateError::RehydrateFailed {
                actor,
                to: 0,
                detail,
            };
            finish_node(core, &slot, ticket, Err(e), Some(Some(to_node)))
        }
        // Not installed there: back to where it ran.
        Arrival::Refused(detail) => {
            send_back(core, slot, ticket, back, from_node, ran_on, detail, bytes)
        }
        Arrival::Unknown(detail) => {
            let e = MigrateError::Unconfirmed {
                actor,
                node: to_node,
                detail,
            };
            finish_node(core, &slot, ticket, Err(e), Some(Some(to_node)))
        }
    }
}

/// On the home shard: a move between nodes ended. `place`: the actor's new place (`Some(None)`:
/// this home shard; `Some(Some(n))`: node `n`; `None`: unchanged). Answers the caller, logs,
/// and sends on what waited.
fn finish_node(
    core: &Rc<Shard>,
    slot: &Slot,
    ticket: u64,
    result: Result<u64, MigrateError>,
    place: Option<Option<NodeId>>,
) {
    let mut dir = core.migration.directory.borrow_mut();
    let Some(e) = dir.get_mut(slot) else { return };
    if e.moving.as_ref().is_none_or(|o| o.ticket != ticket) {
        return;
    }
    let mut order = e.moving.take().expect("checked just above");
    if let Some(p) = place {
        e.node = p;
        e.place = core.id;
    }
    let (from_node, to_node) = order.nodes.expect("a move between nodes");
    let actor = actor_id(&core.node, slot);
    let duration = order.started.elapsed();
    let st = &core.stats;
    let result = match result {
        Ok(bytes) => {
            bump(&st.migrations_done, 1);
            bump(&st.migration_bytes, bytes);
            tracing::info!(shard = core.id, actor = %actor, from_node, to_node,
                duration_us = duration.as_micros() as u64, bytes, "actor migrated to another node");
            Ok(Moved {
                actor,
                from: order.from,
                to: core.id,
                duration,
                bytes,
                from_node,
                to_node,
            })
        }
        Err(err) => {
            bump(&st.migrations_aborted, 1);
            tracing::warn!(shard = core.id, actor = %actor, from_node, to_node,
                duration_us = duration.as_micros() as u64, error = %err,
                "actor migration between nodes did not complete");
            Err(err)
        }
    };
    drop(dir);
    if let Some(tx) = order.reply.take() {
        let _ = tx.send(result);
    }
    flush(core, slot);
}

// ---- drain

/// What [`crate::Engine::drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Activations moved to another node.
    pub moved: u64,
    /// Moves that failed (the actor stays here and is deactivated at the stop).
    pub failed: u64,
    /// Activations whose type cannot cross nodes (not `migratable`, or a stateless worker):
    /// deactivated at the stop.
    pub not_movable: u64,
    /// Activations homed on another node (moved here earlier): their home coordinates moves,
    /// so they stay and are deactivated at the stop.
    pub guests: u64,
    /// Moves not started because the deadline passed.
    pub left: u64,
    /// The actors moved (`moved` of them), in the order their moves ended.
    pub moved_actors: Vec<ActorId>,
    /// How long the drain took.
    pub duration: Duration,
}

/// Moves at once (each one is a few messages; the rate limit still applies).
const DRAIN_INFLIGHT: usize = 256;

/// `Engine::drain`: from now on new activations of movable actors homed here are placed on
/// the peers (each id on its rendezvous choice among them), and the active ones in `rows`
/// (the busiest and most recently active first) move there, until `timeout`.
pub(crate) fn drain_blocking(
    node: &Arc<NodeShared>,
    mut rows: Vec<crate::engine::ActorRow>,
    timeout: Duration,
) -> DrainReport {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut report = DrainReport::default();
    let me = this_node(node);
    // The members configured at start and those the live view knows now (with dynamic
    // membership a node that started alone has its peers only in the view).
    let mut members: Vec<NodeId> = node
        .net
        .as_ref()
        .map(|n| {
            let mut m = n.members.clone();
            m.extend(n.view.now().members().iter().map(|l| l.id));
            m
        })
        .unwrap_or_default();
    members.sort_unstable();
    members.dedup();
    let peers: Vec<NodeId> = members.iter().copied().filter(|m| *m != me).collect();
    // Peers stop sending this node new activations (docs/MIGRATION.md, "Rolling upgrades").
    let announce = node.config.migration_timeout;
    if !peers.is_empty() {
        crate::net::announce_blocking(node, crate::net::DRAINING, announce);
    }
    let now = node.net.as_ref().map(|n| n.view.now()).unwrap_or_default();
    let mut after = now.clone();
    after.set(me, quark_placement::MemberState::Left, None);
    if peers.is_empty() || after.ranked().is_empty() {
        report.not_movable = rows.len() as u64;
        report.duration = started.elapsed();
        return report;
    }
    let types: Vec<Option<&'static str>> = node
        .types
        .iter()
        .map(|t| t.bytes_mover().then(|| t.name()))
        .collect();
    // Every shard places new activations on the peers before the listing is moved.
    let acks: Vec<_> = (0..node.shard_count())
        .map(|s| {
            let (tx, rx) = oneshot::channel::<()>();
            let d = Drain {
                me,
                now: now.clone(),
                after: after.clone(),
                types: types.clone(),
            };
            let d = std::sync::Mutex::new(Some(d));
            node.inject(
                s,
                CrossMsg::run_on(move |c| {
                    let d = d.lock().unwrap_or_else(|p| p.into_inner()).take();
                    *c.migration.drain.borrow_mut() = d;
                    c.migration.draining.set(true);
                    let _ = tx.send(());
                }),
            );
            rx
        })
        .collect();
    for a in acks {
        let _ = crate::block_on(a);
    }
    // Hot first: busy ones (no idle time), then by idle time, shortest first.
    rows.sort_by_key(|r| r.idle.map_or((0, Duration::ZERO), |i| (1, i)));
    let mut todo: Vec<(u16, ActorId, NodeId)> = Vec::new();
    for row in rows {
        let Some(type_idx) = node.types.iter().position(|t| t.name() == row.actor_type) else {
            continue;
        };
        let type_idx = type_idx as u16;
        if !node.types[usize::from(type_idx)].bytes_mover() {
            report.not_movable += 1;
            continue;
        }
        let id = ActorId {
            type_name: row.actor_type,
            key: row.key,
        };
        if now.home(&id) != Some(me) {
            report.guests += 1;
            continue;
        }
        if let Some(peer) = after.home(&id) {
            todo.push((type_idx, id, peer));
        }
    }
    // Passes until everything moved or the deadline: a move refused for a reason that can
    // pass (a shard's link to the peer not up yet, a move under way, the rate limit) is
    // retried in the next pass.
    loop {
        let mut retry = Vec::new();
        let mut inflight: std::collections::VecDeque<(DrainItem, MoveRx)> =
            std::collections::VecDeque::new();
        for item in todo {
            if Instant::now() >= deadline {
                report.left += 1;
                continue;
            }
            let rx = request_node(node, item.0, item.1.key.clone(), item.2);
            inflight.push_back((item, rx));
            if inflight.len() >= DRAIN_INFLIGHT {
                settle_drained(&mut inflight, &mut report, &mut retry);
            }
        }
        while !inflight.is_empty() {
            settle_drained(&mut inflight, &mut report, &mut retry);
        }
        if retry.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            report.failed += retry.len() as u64;
            break;
        }
        // Back-off before the next pass (links reconnect within milliseconds).
        std::thread::sleep(Duration::from_millis(5));
        todo = retry;
    }
    // This node's ids go to the next node of their rendezvous order from now on (where the
    // moves put their actors); what still reaches this node is sent on by its directory.
    crate::net::announce_blocking(node, crate::net::LEFT, announce);
    report.duration = started.elapsed();
    tracing::info!(
        moved = report.moved,
        failed = report.failed,
        not_movable = report.not_movable,
        guests = report.guests,
        left = report.left,
        duration_ms = report.duration.as_millis() as u64,
        "node drained"
    );
    report
}

type DrainItem = (u16, ActorId, NodeId);
type MoveRx = oneshot::Receiver<Result<Moved, MigrateError>>;

/// Waits for the oldest move of a drain; one refused for a passing reason goes to `retry`.
fn settle_drained(
    inflight: &mut std::collections::VecDeque<(DrainItem, MoveRx)>,
    report: &mut DrainReport,
    retry: &mut Vec<DrainItem>,
) {
    let Some((item, rx)) = inflight.pop_front() else {
        return;
    };
    match crate::block_on(rx) {
        Ok(Ok(m)) => {
            report.moved += 1;
            report.moved_actors.push(m.actor);
        }
        Ok(Err(e)) if e.is_transient() => retry.push(item),
        Ok(Err(e)) => {
            tracing::warn!(actor = %item.1, error = %e, "drain: actor not moved");
            report.failed += 1;
        }
        Err(_) => report.failed += 1,
    }
}
