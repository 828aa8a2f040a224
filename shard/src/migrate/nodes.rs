//! Moves between nodes, coordinated by the actor's home shard on its home node
//! (docs/MIGRATION.md, "Moves between nodes"; the wire side is `net::migrate`).

use super::*;

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
pub(super) fn admissible_node(
    core: &Shard,
    slot: &Slot,
    to_node: NodeId,
) -> Result<(), MigrateError> {
    let actor = actor_id(&core.node, slot);
    let node = &core.node;
    let ty = &node.types[usize::from(slot.0)];
    if !ty.migratable() {
        return Err(MigrateError::NotMigratable { actor });
    }
    // State as bytes, or records of this node's log (durable state: they move with it).
    if !ty.bytes_mover() && !log_move::is_log_type(core, slot.0) {
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
pub(super) fn start_node(
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
        release: false,
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
pub(super) fn order_nodes(
    core: &Shard,
    slot: &Slot,
    ticket: u64,
) -> Option<(NodeId, NodeId, Duration)> {
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
pub(super) fn ship(
    core: &Rc<Shard>,
    slot: Slot,
    ticket: u64,
    state: Collected,
    ran_on: Option<String>,
) {
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
    if log_move::is_log_type(core, slot.0) {
        return ship_log(
            core,
            slot,
            ticket,
            state,
            (from_node, to_node),
            ran_on,
            timeout,
        );
    }
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
        (&ran_on, crate::net::view_epoch(core)),
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

/// [`ship`] for an actor whose state is in the log (durable state): its records were read on
/// its place `from_node`, which keeps them. They are written durably on the target first
/// (this home shard, or the target node's hash shard for the actor); then this home appends
/// its place record naming the target and waits until it is durable; only then does the
/// actor's place change. A target that refuses, fails or does not answer leaves the actor on
/// `from_node`, whose records are still the latest (nothing ran meanwhile): nothing is sent
/// back. docs/MIGRATION.md, "Durable actors between nodes".
fn ship_log(
    core: &Rc<Shard>,
    slot: Slot,
    ticket: u64,
    state: Option<Vec<u8>>,
    (from_node, to_node): (NodeId, NodeId),
    ran_on: String,
    timeout: Duration,
) {
    let here = this_node(&core.node);
    let mine = core.node.config.app_version.clone();
    let actor = actor_id(&core.node, &slot);
    let state = state.unwrap_or_else(|| log_move::encode_records(&[], &[]));
    if to_node == here {
        if older(&mine, &ran_on) {
            let e = MigrateError::OlderVersion {
                actor,
                node: here,
                version: mine,
                ran_on,
                runs_on: from_node,
            };
            return finish_node(core, &slot, ticket, Err(e), None);
        }
        let c = core.clone();
        core.sched.spawn(async move {
            let written = match log_move::write_in(&c, &state).await {
                Ok(bytes) => log_move::record(&c, &slot, log_move::RecordedPlace::Shard(c.id))
                    .await
                    .map(|()| bytes),
                Err(e) => Err(e),
            };
            match written {
                Ok(bytes) => finish_node(&c, &slot, ticket, Ok(bytes), Some(None)),
                Err(detail) => {
                    let e = MigrateError::LogCopy {
                        actor: actor_id(&c.node, &slot),
                        shard: c.id,
                        detail,
                    };
                    finish_node(&c, &slot, ticket, Err(e), None)
                }
            }
        });
        return;
    }
    let s = slot.clone();
    let bytes = state.len() as u64;
    let sent = crate::net::send_arrive(
        core,
        to_node,
        &actor,
        &Some(state),
        (&ran_on, 0),
        timeout,
        Box::new(move |c: &Rc<Shard>, r: Arrival| arrived_log(c, s, ticket, r, bytes)),
    );
    if let Err(detail) = sent {
        arrived_log(core, slot, ticket, Arrival::Refused(detail), bytes);
    }
}

/// On the home shard: the target node's answer to a log actor's records sent to it.
fn arrived_log(core: &Rc<Shard>, slot: Slot, ticket: u64, r: Arrival, bytes: u64) {
    let Some((from_node, to_node, _)) = order_nodes(core, &slot, ticket) else {
        return;
    };
    let actor = actor_id(&core.node, &slot);
    let e = match r {
        Arrival::Installed(_) => {
            // Durable there: the place record makes it the actor's place.
            let c = core.clone();
            core.sched.spawn(async move {
                match log_move::record(&c, &slot, log_move::RecordedPlace::Node(to_node)).await {
                    Ok(()) => finish_node(&c, &slot, ticket, Ok(bytes), Some(Some(to_node))),
                    Err(detail) => {
                        let e = MigrateError::LogCopy {
                            actor: actor_id(&c.node, &slot),
                            shard: c.id,
                            detail,
                        };
                        finish_node(&c, &slot, ticket, Err(e), None)
                    }
                }
            });
            return;
        }
        Arrival::Refused(detail) => refusal(core, &slot, to_node, from_node, detail),
        // The target may have written the records, but no place record names it: they are
        // never loaded there (a later move to it supersedes them).
        Arrival::Unknown(detail) => MigrateError::NodeMoveAborted {
            actor,
            to_node,
            runs_on: from_node,
            detail: format!("{detail}; the records stay the actor's on node {from_node}"),
        },
    };
    finish_node(core, &slot, ticket, Err(e), None)
}

/// The error of a refused move: `OlderVersion` if the target refused for its version.
pub(super) fn refusal(
    core: &Shard,
    slot: &Slot,
    to_node: NodeId,
    runs_on: NodeId,
    detail: String,
) -> MigrateError {
    let actor = actor_id(&core.node, slot);
    if let Some(rest) = detail.split(NEWER_VIEW).nth(1) {
        let mut w = rest.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(epoch)), Some(Ok(home))) = (w.next(), w.next()) {
            return MigrateError::NewerView {
                actor,
                node: to_node,
                epoch,
                home,
                runs_on,
            };
        }
    }
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
pub(super) fn send_back(
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
        // Back to where it ran: never refused for a view.
        (&ran_on, 0),
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
pub(super) fn arrived(
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
pub(super) fn finish_node(
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
    // The timers it carried go to where it lives now (the move's target, or back where it was).
    let (lives_on, lives_at) = (e.node, e.place);
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
    timers::dispatch(core, slot, ticket, lives_on, lives_at);
    if let Some(tx) = order.reply.take() {
        let _ = tx.send(result);
    }
    flush(core, slot);
}

/// On the home shard: the actor of `slot` deactivated on node `from` (its notice,
/// `net::migrate`, "quark.migrate.gone"). As for a shard ([`release`]): if the entry still
/// names that node and nothing waits, the home holds later messages and asks the node to
/// release it; the node answers that it is not active there (the entry goes: the actor is
/// home again, what waited is delivered as first messages), or refuses (a message sent on
/// before the order activated it again: the entry stays). A durable actor's entry just goes
/// (its node place record names the node; the next message makes the entry again).
pub(crate) fn release_node(core: &Rc<Shard>, slot: Slot, from: NodeId) {
    release_node_try(core, slot, from, 0);
}

/// Notices that come while a move or messages are under way are tried again this often, at
/// most [`RELEASE_TRIES`] times (a move's answer can come after the actor already idled out
/// on its new node; the notice must not be lost then, or the entry would stay).
const RELEASE_RETRY: Duration = Duration::from_millis(5);
const RELEASE_TRIES: u32 = 2000;

fn release_node_try(core: &Rc<Shard>, slot: Slot, from: NodeId, tries: u32) {
    let m = &core.migration;
    let mut dir = m.directory.borrow_mut();
    let Some(e) = dir.get_mut(&slot) else { return };
    if !e.is_quiet() && tries < RELEASE_TRIES {
        // Busy (a move, a release, messages waiting): once it settled, the entry may name
        // `from` (a move there just ended) and be quiet.
        drop(dir);
        let c = core.clone();
        core.sched.spawn(async move {
            crate::sleep::sleep(RELEASE_RETRY).await;
            release_node_try(&c, slot, from, tries + 1);
        });
        return;
    }
    if e.node != Some(from) || !e.is_quiet() {
        return;
    }
    if log_move::is_log_type(core, slot.0) {
        dir.remove(&slot);
        return;
    }
    let ticket = m.ticket();
    let here = this_node(&core.node);
    let timeout = core.node.config.migration_timeout;
    e.moving = Some(Order {
        ticket,
        from: core.id,
        to: core.id,
        timeout,
        started: Instant::now(),
        reply: None,
        sent: true,
        nodes: Some((from, here)),
        release: true,
    });
    drop(dir);
    let actor = actor_id(&core.node, &slot);
    let s = slot.clone();
    let on = Box::new(move |c: &Rc<Shard>, released: bool| released_node(c, &s, ticket, released));
    if crate::net::send_release(core, from, &actor, timeout, on).is_err() {
        released_node(core, &slot, ticket, false);
    }
}

/// On the home shard: node `from`'s answer to a release order (`released`: the actor is not
/// active there; else it stays, or the answer did not come: the entry stays, never two
/// activations).
fn released_node(core: &Rc<Shard>, slot: &Slot, ticket: u64, released: bool) {
    let mut dir = core.migration.directory.borrow_mut();
    let Some(e) = dir.get_mut(slot) else { return };
    if e.moving
        .as_ref()
        .is_none_or(|o| o.ticket != ticket || !o.release)
    {
        return;
    }
    e.moving = None;
    if released {
        e.node = None;
        e.place = core.id;
    }
    tracing::debug!(shard = core.id, actor = %actor_id(&core.node, slot), released,
        "directory entry of an actor deactivated on another node");
    drop(dir);
    flush(core, slot);
}
