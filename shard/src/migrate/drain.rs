//! Draining a node: its movable actors move to the peers (docs/MIGRATION.md, "Drain").

use super::*;

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
pub(super) const DRAIN_INFLIGHT: usize = 256;

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

pub(super) type DrainItem = (u16, ActorId, NodeId);
pub(super) type MoveRx = oneshot::Receiver<Result<Moved, MigrateError>>;

/// Waits for the oldest move of a drain; one refused for a passing reason goes to `retry`.
pub(super) fn settle_drained(
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
