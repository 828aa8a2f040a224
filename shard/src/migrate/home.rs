//! The home shard's part of a move between shards: ordering the move, holding the messages
//! that arrive meanwhile, recording the new place and forwarding to it.

use super::*;

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
pub(super) fn order(
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
pub(super) type MoveTx = oneshot::Sender<Result<Moved, MigrateError>>;

/// Asks the home shard of `(type_idx, key)` where the actor lives.
pub(super) fn request_placement(
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
pub(super) fn admissible(
    core: &Shard,
    slot: &Slot,
    actor: ActorId,
    to: ShardId,
) -> Result<(), MigrateError> {
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
pub(super) fn start(
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
        release: false,
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
pub(super) fn command(core: &Rc<Shard>, slot: Slot, cmd: Cmd, place: ShardId) {
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

pub(super) fn divert_relay(core: &Rc<Shard>, slot: Slot, r: Box<dyn Relay>) {
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

/// On the home shard: a move ended. Records the new place, answers the caller, logs, and
/// sends on what waited.
pub(super) fn done(core: &Rc<Shard>, slot: Slot, ticket: u64, outcome: Outcome) {
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
pub(super) fn finish(core: &Rc<Shard>, slot: Slot, ticket: u64, outcome: Outcome) {
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
    if order.release {
        // Not a move: the entry goes (back home, `flush` drops it) unless the actor is active
        // on its place again (then it stays, and what waited goes there).
        let released = matches!(outcome, Outcome::Moved { .. });
        if released {
            e.place = to;
        }
        tracing::debug!(shard = core.id, actor = %actor, from, released,
            "directory entry of a deactivated actor");
        drop(dir);
        return flush(core, &slot);
    }
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
    if log_move::is_log_type(core, slot.0) {
        // A log actor is not active on its new shard until a message comes: its entry goes
        // now if nothing waits (its place records make it again at the next message, as
        // after its deactivation, `release`).
        let mut dir = core.migration.directory.borrow_mut();
        if dir
            .get(&slot)
            .is_some_and(|e| e.is_quiet() && e.node.is_none())
        {
            dir.remove(&slot);
        }
    }
}

/// On the home shard: sends what waits in `slot`'s entry on to the actor's place, in order,
/// up to a pending move's command (sent then); delivers it here, and drops the entry, if the
/// place is home.
pub(super) fn flush(core: &Rc<Shard>, slot: &Slot) {
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
pub(super) fn send_order(e: &mut crate::directory::Entry<Pending, Order>, home: ShardId) -> Cmd {
    let o = e
        .moving
        .as_mut()
        .expect("a queued move command has its order");
    o.sent = true;
    o.cmd(home)
}

/// A task of the home shard that sends `slot`'s waiting messages to `to` as credits come
/// back, up to a pending move's command (which it sends, then stops).
pub(super) fn spawn_flusher(core: &Rc<Shard>, slot: Slot, to: ShardId) {
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

/// On the home shard: the actor of `slot` deactivated on shard `from` (its place). Its entry
/// is released, so that the directory holds only actors that live away now. For a log actor
/// (durable state) the entry just goes: its place records name its place, and the next
/// message makes the entry again from them. For others a release order
/// goes to `from` like a move's pause command, after every message this home sent there; if
/// the actor is still not active there when it arrives, the entry's place becomes home and
/// the entry goes; if a message sent before it activated the actor
/// again, the release is refused and the entry stays. Nothing is released while messages wait
/// in the entry or a move is under way, nor for an actor on another node.
pub(crate) fn release(core: &Rc<Shard>, slot: Slot, from: ShardId) {
    let m = &core.migration;
    let mut dir = m.directory.borrow_mut();
    let Some(e) = dir.get_mut(&slot) else { return };
    if e.place != from || from == core.id || e.node.is_some() || !e.is_quiet() {
        return;
    }
    if log_move::is_log_type(core, slot.0) {
        // Its place is in the log (place records): the entry is made again from them at the
        // next message, naming the same place, so it goes at once (nothing moves).
        dir.remove(&slot);
        return;
    }
    let ticket = m.ticket();
    let order = Order {
        ticket,
        from,
        to: core.id,
        timeout: core.node.config.migration_timeout,
        started: Instant::now(),
        reply: None,
        sent: true,
        nodes: None,
        release: true,
    };
    let cmd = order.cmd(core.id);
    e.moving = Some(order);
    drop(dir);
    command(core, slot, cmd, from);
}
