//! The old place's part of a move (pausing at a turn boundary, handing the state over) and
//! the new place's (installing it).

use super::*;

/// On the actor's place: pauses its activation for the move `cmd` (see the module doc).
pub(super) fn pause(core: &Rc<Shard>, slot: Slot, cmd: Cmd) {
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
        if let Some(Mover::Log { keys }) = &table.info.spec.migration {
            let keys = keys(&actor_id(&core.node, &slot));
            if cmd.collect {
                // To another node: the records go back to the home as bytes.
                return log_move::collect_out(core, slot, cmd, keys);
            }
            return log_move::copy_out(core, slot, cmd, keys, None);
        }
        return settle(core, slot, cmd, Outcome::Moved { bytes: 0 });
    };
    if cmd.release {
        // Active again (a message the home sent before the release reached it): it stays.
        let err = MigrateError::Busy {
            actor: act.ctx.id.clone(),
        };
        return settle(core, slot, cmd, Outcome::Refused(err));
    }
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
pub(super) fn abort(core: &Rc<Shard>, slot: &Slot, ticket: u64) {
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
    // between nodes in their wire form, given to the move's home ahead of the state
    // (`timers`: one without a wire codec is dropped, logged).
    let log_keys = match &info.spec.migration {
        Some(Mover::Log { keys }) => Some(keys(&act.ctx.id)),
        _ => None,
    };
    let timers = if p.cmd.collect {
        let wire = timers::take(act);
        timers::carry(core, p.cmd, wire);
        Vec::new()
    } else {
        act.ctx.take_timers()
    };
    debug_assert_eq!(act.queue_len(), 0, "a turn loop ends with an empty mailbox");
    act.wake_all_space_waiters();
    if let (true, Some(keys)) = (p.cmd.collect, &log_keys) {
        // A log actor to another node: its records go back to the home as bytes.
        drop(actor);
        let slot = (act.ctx.type_idx, act.ctx.id.key.clone());
        log_move::collect_out(core, slot, p.cmd, keys.clone());
        return None;
    }
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
        // The records move, not the memory (what counts is what the actor saved); its timers
        // are re-armed on the new shard once the records are there.
        drop(actor);
        let slot = (act.ctx.type_idx, act.ctx.id.key.clone());
        let rearm = rearm_after_log_move::<A>(core, act.ctx.id.key.clone(), timers);
        log_move::copy_out(core, slot, p.cmd, keys, rearm);
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

/// The timers of a log actor moving between shards (`log_move`): the records reach the new
/// shard, the actor does not (it loads at its next message), so the timers travel as a
/// function the new shard runs once the move is recorded: it sends the actor (through its
/// home, after what waited there) one turn that arms them again, each due when it was due
/// before the move (`None`: no timers, nothing to run). Same ids, periods, messages and traces
/// as for a move of an in-memory actor.
pub(super) fn rearm_after_log_move<A: Actor>(
    core: &Shard,
    key: ActorKey,
    timers: CarriedTimers<A>,
) -> Option<log_move::AfterMove> {
    if timers.is_empty() {
        return None;
    }
    let now = core.now();
    let due: Vec<_> = timers
        .into_iter()
        .map(|(left, r)| (now + left, r))
        .collect();
    Some(Box::new(move |y: &Rc<Shard>| {
        let r = ActorRef::<A>::new_local(y.node.clone(), key);
        let arm = crate::actor::Invoke::<A, ()>::new(move |_, ctx| {
            let now = ctx.now();
            let left = due
                .into_iter()
                .map(|(at, r)| (at.saturating_duration_since(now), r))
                .collect();
            ctx.rearm_timers(left);
            Box::pin(async {})
        });
        y.sched.spawn(async move {
            if let Err(e) = r.tell(arm).await {
                tracing::warn!(error = %e, "a moved actor's timers were not re-armed");
            }
        });
    }))
}

// ---- the new place: installing

/// On the new shard: installs the state that arrived as a live activation, and tells home.
pub(super) fn arrive<A: Actor>(
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
pub(super) fn settle(core: &Rc<Shard>, slot: Slot, cmd: Cmd, outcome: Outcome) {
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
pub(super) fn send_collected(core: &Rc<Shard>, cmd: Cmd, state: Collected) {
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

/// Delivers, in arrival order, the first messages held until the node joined; one for an
/// actor whose home is another node now goes on to it (`net::released_to`).
pub(crate) fn release_held(core: &Rc<Shard>) {
    let held = std::mem::take(&mut *core.migration.held.borrow_mut());
    for (t, r) in held {
        match crate::net::released_to(core, t, r.key()) {
            Some(n) => {
                let slot = (t, r.key().clone());
                core.migration.directory.borrow_mut().entry(slot).node = Some(n);
                r.forward_node(core, n);
            }
            None => r.deliver_here(core),
        }
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

/// Called by an activation's task when the activation ended for good (it left its table; not
/// for a move): if this shard is not the actor's home shard, tells the home, which releases
/// the actor's directory entry ([`release`]).
pub(crate) fn deactivated<A: Actor>(act: &Activation<A>) {
    let core = &act.ctx.core;
    let node = &core.node;
    if node.phase() != Phase::Running || node.types[usize::from(act.ctx.type_idx)].stateless() {
        return;
    }
    // Homed on another node (it was moved or placed here): its home node releases its entry.
    if let Some(home_node) = crate::net::home_node_of(core, act.ctx.type_idx, &act.ctx.id) {
        crate::net::send_gone(core, home_node, &act.ctx.id);
        return;
    }
    let home = shard_for(&act.ctx.id, node.shard_count());
    if home == core.id {
        return;
    }
    let slot = (act.ctx.type_idx, act.ctx.id.key.clone());
    let from = core.id;
    core.send_to(home, CrossMsg::run_on(move |h| release(h, slot, from)));
}
