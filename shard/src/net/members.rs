//! The live member set of a node (docs/MIGRATION.md, "Rolling upgrades"): which members rank
//! for the home of a movable actor, learned from the members' own announcements, and the
//! hand-over of actors when a member joins.
//!
//! One reserved request, `quark.member.state`, body `(kind u16, node u64, app_version String)`,
//! reply `String` (the answering node's `app_version`). The envelope's key is the announcement's
//! sequence number, `U64(seq)`: per sending node, increasing across its announcements and its
//! restarts (it starts at the node's start time in µs since the Unix epoch). A receiver ignores
//! the state of an announcement whose sequence number is not above the last one it applied
//! from that node (announcements travel on two connections, the dialed link and the accepted
//! one, so a `JOINED` in flight could overtake a later `DRAINING`); `0` (a sender before this
//! rule) is applied unordered. Kinds:
//! - `JOIN` (a request, from a starting node to each peer): the peer ranks the node again
//!   (`Up`, with its version), moves to it the active movable actors it coordinated whose home
//!   that changes, and answers once they moved. The starting node holds first messages for
//!   its movable actors (`Migrations::held`) until every reachable peer answered.
//! - `JOINED` (one-way, to every accepted connection once joined, and to each one accepted
//!   later): clients rank the node again; a peer that missed the `JOIN` does its hand-over.
//! - `DRAINING` (a request to each peer, one-way to clients, at the start of a drain): the node
//!   still ranks (it coordinates the moves away), but peers do not send it new activations.
//! - `LEFT` (the same, once the drain moved what it could): the node no longer ranks; its ids
//!   go to the next node of their rendezvous order, where its drain put their actors.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use quark_net::{FrameHead, FrameKind, RequestEnvelope, WireOwned};
use quark_placement::{node_for, ActorId, ActorKey, LiveMembers, MemberState, NodeId};
use rustc_hash::FxHashMap;

use super::migrate::{send_request, SysOutcome, SysReply};
use super::remote::{wire_key, ReplySink};
use crate::engine::shared::NodeShared;
use crate::envelope::CrossMsg;
use crate::migrate::MigrateError;
use crate::shard::Shard;

/// Prefix of the member system requests (never a user message's wire name).
pub(crate) const PREFIX: &str = "quark.member.";
const STATE: &str = "quark.member.state";

/// `quark.member.state` kinds (on the wire).
pub(crate) const JOIN: u16 = 0;
pub(crate) const JOINED: u16 = 1;
pub(crate) const DRAINING: u16 = 2;
pub(crate) const LEFT: u16 = 3;

/// Moves of a hand-over in flight at once.
const HANDOFF_INFLIGHT: usize = 256;

/// The node's view of the members (shared by its shards and handles; written on
/// announcements only, read when a reference is made and on activation misses).
pub(crate) struct MemberView {
    pub(crate) me: NodeId,
    /// The view now, and before its last change (the hand-over rule: an id whose home moved
    /// away from this node is sent on to its new home rather than activated here).
    views: RwLock<Views>,
    joined: AtomicBool,
    changed: AtomicBool,
    /// The node lost its membership provider for longer than its lease (split-brain rule,
    /// docs/CLUSTER.md, "Membership on etcd"): first messages of movable actors are held.
    fenced: AtomicBool,
    /// The sequence number of this node's next announcement.
    seq: AtomicU64,
    /// A provider sets the member set (`set_members` was called): announcements of members
    /// not in the view add them.
    dynamic: AtomicBool,
    /// The view's epoch (docs/CLUSTER.md, "Concurrent joins"): the provider's revision of the
    /// member set applied last (etcd's `mod_revision`), the same number for the same member
    /// set on every node; 0 while the provider gives none (static membership).
    epoch: AtomicU64,
    /// One hand-over at a time on this node: a second join's hand-over starts once the first
    /// one's moves ended, so it sees an actor that the first sent away and got back.
    handoffs: futures::lock::Mutex<()>,
}

/// The view now and before its last change, with their ranked members (computed once per
/// change, so that a reference costs no allocation).
struct Views {
    /// The placement of actors that are not movable: every configured member (static
    /// membership), or every member that ever registered (etcd's seats).
    statics: Vec<NodeId>,
    now: LiveMembers,
    before: LiveMembers,
    now_ranked: Vec<NodeId>,
    before_ranked: Vec<NodeId>,
    /// The last announcement sequence number applied, per node.
    seqs: FxHashMap<NodeId, u64>,
}

impl Views {
    fn new(statics: Vec<NodeId>, live: LiveMembers) -> Views {
        let ranked = live.ranked();
        Views {
            statics,
            now: live.clone(),
            before: live,
            now_ranked: ranked.clone(),
            before_ranked: ranked,
            seqs: FxHashMap::default(),
        }
    }
}

/// One member as a dynamic membership provider sees it (`EngineHandle::set_members`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUpdate {
    /// The node id.
    pub id: NodeId,
    /// The address it accepts cluster connections on.
    pub addr: std::net::SocketAddr,
    /// Its state (`Up` or `Draining`; a member absent from the set is out of placement).
    pub state: MemberState,
    /// Its application version (empty: not set).
    pub app_version: String,
    /// Its zone label (empty: none).
    pub zone: String,
}

/// Where a first message for a movable actor goes (`migrate::divert`).
pub(crate) enum NewPlace {
    Here,
    /// Wait until the node has joined.
    Hold,
    /// Its home is that node now: send it on.
    Node(NodeId),
}

impl MemberView {
    /// Every configured member `Up`; this node's version known. A member with peers holds
    /// first messages until it joined ([`join`]); a client or a lone node never does.
    pub(crate) fn new(me: NodeId, statics: Vec<NodeId>, version: &str, member: bool) -> Self {
        let mut live = LiveMembers::new(statics.iter().copied());
        live.set(me, MemberState::Up, Some(version));
        let alone = statics.iter().all(|n| *n == me);
        let start_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        MemberView {
            me,
            views: RwLock::new(Views::new(statics, live)),
            joined: AtomicBool::new(!member || alone),
            changed: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            seq: AtomicU64::new(start_us.max(1)),
            dynamic: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            handoffs: futures::lock::Mutex::new(()),
        }
    }

    /// The sequence number of this node's next announcement.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// True if an announcement of `node` numbered `seq` is older than one applied.
    pub(crate) fn stale(&self, node: NodeId, seq: u64) -> bool {
        self.read().seqs.get(&node).is_some_and(|&last| seq <= last)
    }

    /// Applies an announcement of `node` (`kind`, its version, its sequence number): false if
    /// it is stale (a later one from that node was applied) or changed nothing.
    pub(crate) fn announced(&self, node: NodeId, kind: u16, version: &str, seq: u64) -> bool {
        if seq != 0 {
            let mut w = self.views.write().unwrap_or_else(|p| p.into_inner());
            let last = w.seqs.entry(node).or_insert(0);
            if seq <= *last {
                tracing::debug!(
                    node,
                    kind,
                    seq,
                    last = *last,
                    "stale member announcement ignored"
                );
                return false;
            }
            *last = seq;
        }
        match kind {
            JOIN | JOINED => self.update(node, MemberState::Up, Some(version)),
            DRAINING => self.update(node, MemberState::Draining, None),
            LEFT => self.update(node, MemberState::Left, None),
            _ => false,
        }
    }

    /// Replaces the member set (a dynamic membership provider): `seats` place the actors that
    /// are not movable; `live` members rank as their state says; every other known member is
    /// `Left`. `epoch` is the provider's revision of this set (0: none); the view's epoch
    /// never goes back. True if the view changed.
    pub(crate) fn set_members(&self, epoch: u64, seats: &[NodeId], live: &[MemberUpdate]) -> bool {
        self.dynamic.store(true, Ordering::Release);
        let mut w = self.views.write().unwrap_or_else(|p| p.into_inner());
        // Under the write lock: a reader that sees the new epoch sees this set (or a later).
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
        let mut next = w.now.clone();
        let mut changed = false;
        for m in live {
            let version = (m.id != self.me).then_some(m.app_version.as_str());
            changed |= next.insert(m.id, m.state, version);
            changed |= next.set_place(m.id, m.addr, &m.zone);
        }
        let known: Vec<NodeId> = next.members().iter().map(|m| m.id).collect();
        for id in known {
            if !live.iter().any(|m| m.id == id) {
                changed |= next.set(id, MemberState::Left, None);
            }
        }
        let mut seats = seats.to_vec();
        seats.sort_unstable();
        seats.dedup();
        let seats_changed = seats != w.statics;
        w.statics = seats;
        if !changed {
            return seats_changed;
        }
        let ranked = next.ranked();
        w.before = std::mem::replace(&mut w.now, next);
        w.before_ranked = std::mem::replace(&mut w.now_ranked, ranked);
        self.changed.store(true, Ordering::Release);
        tracing::info!(ranked = ?w.now_ranked, seats = ?w.statics, "member set changed");
        true
    }

    /// The view's epoch (0: the provider gives none).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// True while the node holds first messages of movable actors because it lost its
    /// membership provider (split-brain rule).
    pub(crate) fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Views> {
        // The lock guards plain data with no invariant a panicking writer could break.
        self.views.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The node a sender addresses for `id`: the live home for a movable type (and for a
    /// type this engine does not know, e.g. on a client), else the static placement.
    pub(crate) fn home(&self, id: &ActorId, movable: bool) -> Option<NodeId> {
        if !movable {
            return node_for(id, &self.read().statics);
        }
        node_for(id, &self.read().now_ranked)
    }

    /// The static placement (every configured member).
    pub(crate) fn static_home(&self, id: &ActorId) -> Option<NodeId> {
        node_for(id, &self.read().statics)
    }

    /// The view now.
    pub(crate) fn now(&self) -> LiveMembers {
        self.read().now.clone()
    }

    /// Sets `node`'s state (and version); true if the view changed.
    pub(crate) fn update(&self, node: NodeId, state: MemberState, version: Option<&str>) -> bool {
        let mut w = self.views.write().unwrap_or_else(|p| p.into_inner());
        let mut next = w.now.clone();
        let changed = if self.dynamic.load(Ordering::Acquire) && state == MemberState::Up {
            next.insert(node, state, version)
        } else {
            next.set(node, state, version)
        };
        if !changed {
            return false;
        }
        let ranked = next.ranked();
        w.before = std::mem::replace(&mut w.now, next);
        w.before_ranked = std::mem::replace(&mut w.now_ranked, ranked);
        self.changed.store(true, Ordering::Release);
        tracing::info!(node, ?state, version, ranked = ?w.now_ranked, "member view changed");
        true
    }

    /// True if this node announced it drains or left.
    pub(crate) fn leaving(&self) -> bool {
        self.read()
            .now
            .get(self.me)
            .is_some_and(|m| m.state != MemberState::Up)
    }

    /// True once the view changed since the node started.
    pub(crate) fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    pub(crate) fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// True if a first message for a movable actor must consult the view
    /// ([`place_new`]): before the node joined, or once the view changed.
    #[inline]
    pub(crate) fn attention(&self) -> bool {
        !self.joined.load(Ordering::Relaxed)
            || self.changed.load(Ordering::Relaxed)
            || self.fenced.load(Ordering::Relaxed)
    }
}

/// Where a first message for `(type_idx, key)` goes, on a miss at its home shard here.
pub(crate) fn place_new(core: &Shard, type_idx: u16, key: &ActorKey) -> NewPlace {
    let Some(net) = core.node.net.as_ref() else {
        return NewPlace::Here;
    };
    let ty = &core.node.types[usize::from(type_idx)];
    if !ty.bytes_mover() {
        return NewPlace::Here;
    }
    let v = &net.view;
    if !v.joined() || v.fenced() {
        return NewPlace::Hold;
    }
    let id = ActorId {
        type_name: ty.name(),
        key: key.clone(),
    };
    let g = v.read();
    match node_for(&id, &g.now_ranked) {
        Some(home)
            if home != v.me
                && g.now.get(home).is_some_and(|m| m.state == MemberState::Up)
                && node_for(&id, &g.before_ranked) == Some(v.me) =>
        {
            NewPlace::Node(home)
        }
        _ => NewPlace::Here,
    }
}

/// Where a first message held until this node joined goes when released: `Some(home)` if the
/// actor moves and its home in the view now is another node that is up (a sender whose view
/// was older or newer than this node's at the time sent it here: never activated here, it goes
/// on to the node every view agrees on now); `None`: here.
pub(crate) fn released_to(core: &Shard, type_idx: u16, key: &ActorKey) -> Option<NodeId> {
    let net = core.node.net.as_ref()?;
    let ty = &core.node.types[usize::from(type_idx)];
    if !ty.bytes_mover() {
        return None;
    }
    let id = ActorId {
        type_name: ty.name(),
        key: key.clone(),
    };
    let v = &net.view;
    let g = v.read();
    let home = node_for(&id, &g.now_ranked)?;
    (home != v.me && g.now.get(home).is_some_and(|m| m.state == MemberState::Up)).then_some(home)
}

/// Serves `quark.member.state` from another node or (one-way) from a node this client dialed.
pub(crate) fn serve(core: &Rc<Shard>, key: ActorKey, body: &[u8], sink: ReplySink) {
    let Some(net) = core.node.net.as_ref() else {
        return;
    };
    let mine = core.node.config.app_version.clone();
    let Ok((kind, node, version, epoch)) = <(u16, u64, String, u64)>::from_wire(body) else {
        return sink.send_error(
            core,
            &quark_net::RemoteError::BadPayload {
                message_type: STATE.to_owned(),
            },
        );
    };
    let view = &net.view;
    let member = core.net().cfg.role == quark_net::PeerRole::Member;
    let seq = match key {
        ActorKey::U64(s) => s,
        _ => 0,
    };
    match kind {
        JOIN | JOINED if member && node != view.me => {
            let c = core.clone();
            let deadline = Instant::now() + core.node.config.shutdown_timeout;
            core.sched.spawn(async move {
                // Ranked only once every shard here can reach it (else this node's senders
                // would fail with NodeUnavailable instead of waiting for its hand-over).
                links_up(&c, node, deadline).await;
                let Some(net) = c.node.net.as_ref() else {
                    return;
                };
                // The joiner's view epoch: this node hands over against a view at least as new
                // (one that has the joiner, by the provider, and every change before it).
                if kind == JOIN {
                    wait_epoch(&net.view, epoch, deadline).await;
                }
                // With a dynamic membership the provider may have ranked the node before its
                // JOIN came (the view then has not changed here): hand over all the same.
                let stale = seq != 0 && net.view.stale(node, seq);
                let changed = net.view.announced(node, kind, &version, seq);
                let dynamic = net.view.dynamic.load(Ordering::Acquire);
                if changed || (dynamic && kind == JOIN && !stale) {
                    let moved = hand_off(&c, node, deadline).await;
                    tracing::info!(node, moved, "actors handed over to a joining node");
                }
                sink.send_value(&c, &(mine, net.view.epoch()));
            });
            return;
        }
        JOIN | JOINED | DRAINING | LEFT => {
            view.announced(node, kind, &version, seq);
        }
        other => tracing::warn!(shard = core.id, kind = other, "unknown member announcement"),
    }
    sink.send_value(core, &(mine, view.epoch()));
}

/// Waits until every shard's link to `peer` is up (or `deadline`).
async fn links_up(core: &Rc<Shard>, peer: NodeId, deadline: Instant) {
    let node = core.node.clone();
    loop {
        let mut all = true;
        for s in 0..node.shard_count() {
            let (tx, rx) = oneshot::channel();
            node.inject(
                s,
                CrossMsg::run_on(move |c| {
                    // With a dynamic membership the link may not exist yet (the provider's
                    // event comes after the node's JOIN): not up.
                    let up = c.net.as_ref().is_none_or(|n| match n.links.get(&peer) {
                        Some(l) => l.is_up(),
                        None => !n.cfg.dynamic_members,
                    });
                    let _ = tx.send(up);
                }),
            );
            all &= rx.await.unwrap_or(true);
        }
        if all || Instant::now() >= deadline {
            if !all {
                tracing::warn!(
                    node = peer,
                    "a joining node: links not up before the deadline"
                );
            }
            return;
        }
        crate::rt::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the view's epoch is at least `epoch` (or `deadline`; a provider that gives no
/// epochs, or a sender without one, `0`, never waits).
async fn wait_epoch(view: &MemberView, epoch: u64, deadline: Instant) {
    if epoch == 0 || !view.dynamic.load(Ordering::Acquire) {
        return;
    }
    while view.epoch() < epoch {
        if Instant::now() >= deadline {
            tracing::warn!(
                epoch,
                have = view.epoch(),
                "member view: epoch not reached before the deadline"
            );
            return;
        }
        crate::rt::sleep(Duration::from_millis(2)).await;
    }
}

/// The active actors of this node whose type moves as bytes and is not pinned to a node.
async fn active_movable(core: &Rc<Shard>) -> Vec<Item> {
    let node = core.node.clone();
    let mut rows = Vec::new();
    for s in 0..node.shard_count() {
        let mut q = crate::engine::ActorQuery {
            shard: Some(s),
            limit: crate::engine::ACTOR_QUERY_LIMIT_MAX,
            ..crate::engine::ActorQuery::default()
        };
        loop {
            let (tx, rx) = oneshot::channel();
            let page_q = q.clone();
            node.inject(
                s,
                CrossMsg::run_on(move |c| {
                    let _ = tx.send(c.actor_rows(&page_q, page_q.limit));
                }),
            );
            let Ok(page) = rx.await else { break };
            let last = page.last().map(crate::engine::ActorRow::cursor);
            let full = page.len() == q.limit;
            rows.extend(page);
            match last {
                Some(c) if full => q.after = Some(c),
                _ => break,
            }
        }
    }
    rows.into_iter()
        .filter_map(|r| {
            let t = node.types.iter().position(|t| t.name() == r.actor_type)? as u16;
            let movable = node.types[usize::from(t)].bytes_mover()
                && crate::migrate::fixed_node(&node, Some(t)).is_none();
            movable.then_some((t, r.key))
        })
        .collect()
}

/// The home of `item` in this node's view now.
fn home_now(core: &Shard, item: &Item) -> Option<NodeId> {
    let net = core.node.net.as_ref()?;
    let id = ActorId {
        type_name: core.node.types[usize::from(item.0)].name(),
        key: item.1.clone(),
    };
    net.view.home(&id, true)
}

/// Moves to `to` the active movable actors of this node whose home is `to` in the view now
/// (the view, not its last change: a node that saw several changes at once hands over
/// against all of them). One hand-over at a time per node (a second join's waits for the
/// first's moves to end). A move that the target refuses because its view is newer and
/// places the actor elsewhere (`MigrateError::NewerView`) is tried again once this node's
/// view reached the target's epoch, to the actor's home then; moves refused for a passing
/// reason are tried again to the home then too; both until `deadline`. Returns how many
/// moved.
async fn hand_off(core: &Rc<Shard>, to: NodeId, deadline: Instant) -> u64 {
    let node = core.node.clone();
    let Some(net) = node.net.as_ref() else {
        return 0;
    };
    let _one = net.view.handoffs.lock().await;
    let me = net.view.me;
    let mut todo: Vec<(Item, NodeId)> = active_movable(core)
        .await
        .into_iter()
        .filter(|item| home_now(core, item) == Some(to))
        .map(|item| (item, to))
        .collect();
    let mut moved = 0;
    loop {
        let mut retry = Retry::default();
        let mut inflight: VecDeque<(Item, oneshot::Receiver<_>)> = VecDeque::new();
        for (item, target) in todo {
            let rx = crate::migrate::request_node(&node, item.0, item.1.clone(), target);
            inflight.push_back((item, rx));
            if inflight.len() >= HANDOFF_INFLIGHT {
                settle(&mut inflight, &mut moved, &mut retry).await;
            }
        }
        while !inflight.is_empty() {
            settle(&mut inflight, &mut moved, &mut retry).await;
        }
        if retry.items.is_empty() || Instant::now() >= deadline {
            if !retry.items.is_empty() {
                tracing::warn!(
                    node = to,
                    left = retry.items.len(),
                    "hand-over: deadline passed"
                );
            }
            return moved;
        }
        if retry.epoch > 0 {
            wait_epoch(&net.view, retry.epoch, deadline).await;
        } else {
            crate::rt::sleep(Duration::from_millis(5)).await;
        }
        todo = retry
            .items
            .into_iter()
            .filter_map(|item| {
                let home = home_now(core, &item)?;
                (home != me).then_some((item, home))
            })
            .collect();
    }
}

type Item = (u16, ActorKey);

/// The moves of a hand-over round to try again, and the newest epoch a target refused with.
#[derive(Default)]
struct Retry {
    items: Vec<Item>,
    epoch: u64,
}

async fn settle(
    inflight: &mut VecDeque<(Item, oneshot::Receiver<Result<crate::Moved, MigrateError>>)>,
    moved: &mut u64,
    retry: &mut Retry,
) {
    let Some((item, rx)) = inflight.pop_front() else {
        return;
    };
    match rx.await {
        Ok(Ok(_)) => *moved += 1,
        Ok(Err(e @ MigrateError::NewerView { .. })) => {
            tracing::info!(error = %e, "hand-over: the target's view is newer; trying again");
            if let MigrateError::NewerView { epoch, .. } = e {
                retry.epoch = retry.epoch.max(epoch);
            }
            retry.items.push(item);
        }
        Ok(Err(e)) if e.is_transient() => retry.items.push(item),
        Ok(Err(e)) => tracing::warn!(error = %e, "hand-over: actor not moved"),
        Err(_) => {}
    }
}

/// Whether this node takes a movable actor whose state a peer sends it (`quark.migrate.arrive`
/// of a state as bytes), the peer's view being at `epoch`: refused when this node's view is
/// newer and places the actor on another node (it learned of a join the sender has not seen
/// yet; the sender tries again against the newer view). `Err((epoch, home))`: this node's
/// epoch and the actor's home in its view. Checked on the actor's shard just before the
/// state is installed, so a hand-over that lists this shard's actors after the view changed
/// sees every state taken under the older view.
pub(crate) fn admit_arrival(core: &Shard, id: &ActorId, epoch: u64) -> Result<(), (u64, NodeId)> {
    match core.node.net.as_ref() {
        Some(net) => net.view.admit_arrival(id, epoch),
        None => Ok(()),
    }
}

impl MemberView {
    /// [`admit_arrival`]'s rule on this view.
    fn admit_arrival(&self, id: &ActorId, epoch: u64) -> Result<(), (u64, NodeId)> {
        if epoch == 0 || !self.dynamic.load(Ordering::Acquire) {
            return Ok(());
        }
        // The epoch read under the lock matches the set read with it (`set_members`).
        let g = self.read();
        let mine = self.epoch();
        if mine <= epoch {
            return Ok(());
        }
        match node_for(id, &g.now_ranked) {
            Some(home) if home != self.me => Err((mine, home)),
            _ => Ok(()),
        }
    }
}

/// This node's view epoch (0 without a cluster or without epochs): what its hand-overs carry.
pub(crate) fn view_epoch(core: &Shard) -> u64 {
    core.node.net.as_ref().map_or(0, |n| n.view.epoch())
}

/// Writes a one-way `quark.member.state` on every connection this shard accepted.
pub(crate) fn tell_accepted(core: &Shard, kind: u16) {
    let Some(net) = core.net.as_ref() else { return };
    let wires: Vec<_> = net
        .accepted
        .borrow()
        .iter()
        .filter_map(std::rc::Weak::upgrade)
        .collect();
    for w in wires {
        tell_wire(core, &w, kind);
    }
}

/// Writes a one-way `quark.member.state` of this node on `wire`.
pub(crate) fn tell_wire(core: &Shard, wire: &super::conn::Outbound, kind: u16) {
    let Some(net) = core.net.as_ref() else { return };
    if wire.is_closed() {
        return;
    }
    let (seq, epoch) = core
        .node
        .net
        .as_ref()
        .map_or((0, 0), |n| (n.view.next_seq(), n.view.epoch()));
    let body = (
        kind,
        net.cfg.node_id,
        core.node.config.app_version.clone(),
        epoch,
    );
    let key = ActorKey::U64(seq);
    let env = RequestEnvelope::new("", wire_key(&key), STATE, 0);
    let head = FrameHead {
        source_shard: core.id,
        ..FrameHead::new(FrameKind::OneWay)
    };
    let max = net.cfg.frame_bytes_max;
    if quark_net::encode_request(&mut wire.out.borrow_mut(), head, &env, &body, max).is_ok() {
        wire.frames_queued.set(wire.frames_queued.get() + 1);
        wire.wake_writer();
    }
}

/// On an accepted connection, once established: a node that has joined (and does not drain)
/// tells the peer (a client, or a member that dialed it) that it is up, with its version.
pub(crate) fn greet(core: &Shard, wire: &super::conn::Outbound) {
    let Some(net) = core.node.net.as_ref() else {
        return;
    };
    // Not while it drains or left: a peer would rank it again.
    if core.net().cfg.role == quark_net::PeerRole::Member
        && net.view.joined()
        && !net.view.leaving()
    {
        tell_wire(core, wire, JOINED);
    }
}

/// A peer's answer to `quark.member.state`: its `app_version` and view epoch.
type Answer = (String, u64);

/// Sends `quark.member.state` of `kind` to every peer on this shard's links but `skip`; the
/// receiver gets the answers (`(peer, Some((its version, its view epoch)))`, or `None` for a
/// peer that could not be reached or did not answer within `timeout`).
fn ask_peers(
    core: &Rc<Shard>,
    kind: u16,
    timeout: Duration,
    skip: &[NodeId],
) -> Vec<(NodeId, oneshot::Receiver<Option<Answer>>)> {
    let Some(net) = core.net.as_ref() else {
        return Vec::new();
    };
    let epoch = core.node.net.as_ref().map_or(0, |n| n.view.epoch());
    let body = (
        kind,
        net.cfg.node_id,
        core.node.config.app_version.clone(),
        epoch,
    );
    let mut peers: Vec<NodeId> = net.links.keys();
    peers.retain(|p| !skip.contains(p));
    peers.sort_unstable();
    let mut out = Vec::new();
    for p in peers {
        let (tx, rx) = oneshot::channel();
        let on = move |_: &Rc<Shard>, o: SysOutcome| {
            let v = match o {
                SysOutcome::Value(b) => <(String, u64)>::from_wire(&b).ok(),
                SysOutcome::Refused(_) | SysOutcome::Unknown(_) => None,
            };
            let _ = tx.send(v);
        };
        let waiter = Box::new(SysReply {
            node: core.node.clone(),
            on,
        });
        let key = ActorKey::U64(core.node.net.as_ref().map_or(0, |n| n.view.next_seq()));
        // Not sent (no connection): its receiver answers `Canceled` at once.
        let _ = send_request(core, p, "", &key, STATE, &body, timeout, Some(waiter));
        out.push((p, rx));
    }
    out
}

/// Joins the cluster (on shard 0, at start): asks every peer to rank this node again and hand
/// over its actors, learns their versions, then releases the first messages held meanwhile
/// and tells the accepted connections.
pub(crate) async fn join(core: Rc<Shard>) {
    let Some(net) = core.node.net.as_ref() else {
        return;
    };
    if !net.view.joined() {
        let timeout = core.node.config.shutdown_timeout;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut reached = Vec::new();
        let mut asked = Vec::new();
        // Until every member of this node's view was asked: a peer answers with its view
        // epoch, and this node's view then waits to be at least as new (it may name members
        // this node had not seen, asked in the next round), so that it places nothing on
        // this node that a peer's view placed elsewhere when it answered.
        loop {
            let mut epoch = 0;
            for (peer, rx) in ask_peers(&core, JOIN, timeout, &asked) {
                asked.push(peer);
                if let Ok(Some((version, e))) = rx.await {
                    net.view.update(peer, MemberState::Up, Some(&version));
                    reached.push(peer);
                    epoch = epoch.max(e);
                }
            }
            wait_epoch(&net.view, epoch, deadline).await;
            let unasked: Vec<NodeId> = net
                .view
                .now()
                .members()
                .iter()
                .filter(|m| m.id != net.view.me && m.state != MemberState::Left)
                .map(|m| m.id)
                .filter(|id| !asked.contains(id))
                .collect();
            if unasked.is_empty() || Instant::now() >= deadline {
                break;
            }
            // Its links are added before the view changes (`set_members`): on this shard's
            // ring, behind this task's wake-up at the latest.
            crate::rt::sleep(Duration::from_millis(2)).await;
        }
        tracing::info!(
            shard = core.id,
            ?reached,
            duration_ms = started.elapsed().as_millis() as u64,
            "joined the cluster"
        );
        net.view.joined.store(true, Ordering::Release);
    }
    for s in 0..core.node.shard_count() {
        core.node.inject(
            s,
            CrossMsg::run_on(|c| {
                crate::migrate::release_held(c);
                tell_accepted(c, JOINED);
            }),
        );
    }
}

/// `Engine::drain`'s announcements (`DRAINING`, `LEFT`): this node's own view first, then every
/// peer (waits for their answers, at most `timeout`) and the accepted connections. Blocks; not
/// on a shard thread.
pub(crate) fn announce_blocking(node: &Arc<NodeShared>, kind: u16, timeout: Duration) {
    let Some(net) = node.net.as_ref() else { return };
    let state = if kind == LEFT {
        MemberState::Left
    } else {
        MemberState::Draining
    };
    net.view.update(net.view.me, state, None);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    node.inject(
        0,
        CrossMsg::run_on(move |c| {
            let asks = ask_peers(c, kind, timeout, &[]);
            c.sched.spawn(async move {
                for (_, rx) in asks {
                    let _ = rx.await;
                }
                let _ = tx.send(());
            });
        }),
    );
    for s in 0..node.shard_count() {
        node.inject(s, CrossMsg::run_on(move |c| tell_accepted(c, kind)));
    }
    let _ = rx.recv_timeout(timeout);
}

/// The cause of `NodeUnavailable` for a member that is out of the view.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {node} is not in the member set (it left, or its membership lease expired): \
     actors whose state is on its disk are unavailable until it rejoins"
)]
pub(crate) struct MemberGone {
    node: NodeId,
    #[source]
    last: Option<crate::error::LinkDown>,
}

/// `Some(MemberGone)` if `node` is `Left` in this engine's view.
pub(crate) fn gone_cause(
    core: &Shard,
    node: NodeId,
    last: Option<crate::error::LinkDown>,
) -> Option<crate::error::LinkDown> {
    let net = core.node.net.as_ref()?;
    let left = net
        .view
        .read()
        .now
        .get(node)
        .is_some_and(|m| m.state == MemberState::Left);
    left.then(|| crate::error::LinkDown::new(MemberGone { node, last }))
}

/// Applies a dynamic membership's member set on this node (`EngineHandle::set_members`): the
/// view (placement), then every shard's links (a new member is dialed; a changed address is
/// used at the next dial). A member that joined asks for its hand-over itself (`JOIN`).
pub(crate) fn set_members(
    node: &Arc<NodeShared>,
    epoch: u64,
    seats: Vec<NodeId>,
    live: Vec<MemberUpdate>,
) {
    let Some(net) = node.net.as_ref() else { return };
    let addrs: Vec<(NodeId, std::net::SocketAddr)> = live.iter().map(|m| (m.id, m.addr)).collect();
    for s in 0..node.shard_count() {
        let addrs = addrs.clone();
        node.inject(
            s,
            CrossMsg::run_on(move |c| {
                for (id, addr) in addrs {
                    super::conn::add_peer(c, id, addr);
                }
            }),
        );
    }
    net.view.set_members(epoch, &seats, &live);
}

/// Sets the split-brain fence (`EngineHandle::set_fenced`): while set, first messages of
/// movable actors are held (not activated); when cleared, the held ones are released.
pub(crate) fn set_fenced(node: &Arc<NodeShared>, fenced: bool) {
    let Some(net) = node.net.as_ref() else { return };
    if net.view.fenced.swap(fenced, Ordering::AcqRel) == fenced {
        return;
    }
    if fenced {
        tracing::warn!("membership provider lost past the lease: new activations held");
        return;
    }
    // Peers may have taken it out of placement meanwhile (its lease expired) and activated
    // its movable actors elsewhere: join again (`JOIN`: they hand those over), then release
    // the first messages held.
    tracing::info!("membership provider back: joining again, then releasing held activations");
    net.view.joined.store(false, Ordering::Release);
    node.inject(
        0,
        CrossMsg::run_on(|c| {
            let c2 = c.clone();
            c.sched.spawn(join(c2));
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_announcement_does_not_undo_a_later_one() {
        let v = MemberView::new(1, vec![1, 2, 3], "1", true);
        // Node 2's DRAINING (seq 11) arrives before its JOINED (seq 10), which was in flight
        // on the other connection.
        assert!(v.announced(2, DRAINING, "", 11));
        assert!(!v.announced(2, JOINED, "1", 10));
        assert_eq!(v.now().get(2).map(|m| m.state), Some(MemberState::Draining));
        // Later ones apply; a sender without sequence numbers (0) applies unordered.
        assert!(v.announced(2, LEFT, "", 12));
        assert_eq!(v.now().get(2).map(|m| m.state), Some(MemberState::Left));
        assert!(v.announced(3, DRAINING, "", 0));
        assert!(v.announced(3, JOINED, "", 0));
        assert_eq!(v.now().get(3).map(|m| m.state), Some(MemberState::Up));
    }

    #[test]
    fn announcement_numbers_increase_across_restarts() {
        let a = MemberView::new(1, vec![1, 2], "", true);
        let (x, y) = (a.next_seq(), a.next_seq());
        assert!(y > x);
        let b = MemberView::new(1, vec![1, 2], "", true);
        assert!(
            b.next_seq() > x,
            "a restarted node starts above its earlier numbers"
        );
    }

    #[test]
    fn a_newer_view_refuses_a_hand_over_it_places_elsewhere() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("a literal address");
        let up = |id| MemberUpdate {
            id,
            addr,
            state: MemberState::Up,
            app_version: String::new(),
            zone: String::new(),
        };
        // Node 3's view: nodes 1..3 at epoch 10, then node 4 joined at epoch 12.
        let v = MemberView::new(3, vec![3], "", true);
        assert!(v.set_members(10, &[1, 2, 3], &[up(1), up(2), up(3)]));
        let id = |k| ActorId::new("t", ActorKey::U64(k));
        // An actor homed on 3 with nodes 1..3 and on 4 once 4 joined.
        let k = (0..1000)
            .find(|&k| {
                node_for(&id(k), &[1, 2, 3]) == Some(3)
                    && node_for(&id(k), &[1, 2, 3, 4]) == Some(4)
            })
            .expect("such an id");
        assert_eq!(v.admit_arrival(&id(k), 10), Ok(()), "same view: taken");
        assert!(v.set_members(12, &[1, 2, 3, 4], &[up(1), up(2), up(3), up(4)]));
        assert_eq!(v.epoch(), 12);
        // A sender at epoch 10 (it has not seen node 4): refused, naming the home.
        assert_eq!(v.admit_arrival(&id(k), 10), Err((12, 4)));
        // A sender that saw node 4 (its view places the actor here), or without epochs: taken.
        assert_eq!(v.admit_arrival(&id(k), 12), Ok(()));
        assert_eq!(v.admit_arrival(&id(k), 0), Ok(()));
        // An actor whose home is this node in the newer view: taken from an older sender.
        let mine = (0..1000)
            .find(|&k| node_for(&id(k), &[1, 2, 3, 4]) == Some(3))
            .expect("such an id");
        assert_eq!(v.admit_arrival(&id(mine), 10), Ok(()));
        // The epoch never goes back.
        v.set_members(11, &[1, 2, 3, 4], &[up(1), up(2), up(3), up(4)]);
        assert_eq!(v.epoch(), 12);
    }

    #[test]
    fn a_dynamic_member_set_places_and_removes() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("a literal address");
        let up = |id| MemberUpdate {
            id,
            addr,
            state: MemberState::Up,
            app_version: String::new(),
            zone: format!("z{id}"),
        };
        let v = MemberView::new(1, vec![1], "", true);
        assert!(v.set_members(0, &[1, 2], &[up(1), up(2)]));
        assert_eq!(v.now().zone(2), Some("z2"), "the zone label is in the view");
        assert_eq!(v.now().get(2).and_then(|m| m.addr), Some(addr));
        let id = |k| ActorId::new("t", ActorKey::U64(k));
        assert!((0..200).any(|k| v.home(&id(k), true) == Some(2)));
        // Node 2's lease expired: out of the movable placement, still the seat of its actors
        // that are not movable (their state is on its disk).
        assert!(v.set_members(0, &[1, 2], &[up(1)]));
        assert_eq!(v.now().get(2).map(|m| m.state), Some(MemberState::Left));
        assert!((0..200).all(|k| v.home(&id(k), true) == Some(1)));
        assert!((0..200).any(|k| v.home(&id(k), false) == Some(2)));
    }
}
