//! Where a first activation goes: the per-type placement policies (docs/MIGRATION.md,
//! "Placement policies"), decided by the actor's home shard.

use super::*;

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
pub(super) fn policy_places(core: &Shard, type_idx: u16, key: &ActorKey) -> bool {
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
pub(super) fn off_node(core: &Shard, n: NodeId) -> bool {
    core.node.net.is_some() && n != this_node(&core.node)
}

pub(super) fn is_home(core: &Shard, type_idx: u16, key: &ActorKey) -> bool {
    let id = ActorId {
        type_name: core.node.types[usize::from(type_idx)].name(),
        key: key.clone(),
    };
    shard_for(&id, core.node.shard_count()) == core.id
}

/// A first message for `slot` (no entry) that its home shard `core` would activate here: the
/// type's placement policy decides ([`PlacementPolicy`]). Placed away, the actor gets its
/// entry *before* the message is sent on, so every later message for it finds the entry
/// and follows (one activation per id, whatever the races between first senders).
pub(super) fn first_here(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>) {
    if !policy_places(core, slot.0, &slot.1) {
        return r.deliver_here(core);
    }
    let log = log_move::is_log_type(core, slot.0);
    if log {
        // Placed before (moved, or by its policy): its records are there.
        if let Some(p) = log_move::recorded_place(core, &slot) {
            if p == log_move::RecordedPlace::Shard(core.id) {
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
pub(super) fn restore_place(core: &Shard, slot: &Slot) {
    if !log_move::is_log_type(core, slot.0) || core.migration.directory.borrow().has(slot) {
        return;
    }
    match log_move::recorded_place(core, slot) {
        Some(log_move::RecordedPlace::Shard(p)) if p != core.id => {
            core.migration
                .directory
                .borrow_mut()
                .entry(slot.clone())
                .place = p;
        }
        // On another node: its messages are sent on there (`divert`).
        Some(log_move::RecordedPlace::Node(n)) => {
            core.migration
                .directory
                .borrow_mut()
                .entry(slot.clone())
                .node = Some(n);
        }
        _ => {}
    }
}

/// A first message for a log actor (no place record) whose policy places it on shard `to`:
/// the place record is made durable before anything is sent there (a restart must find the
/// actor where its records are). Messages wait in the entry meanwhile.
pub(super) fn place_durably(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>, to: ShardId) {
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
