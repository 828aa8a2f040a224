//! The blocking and async entry points of moves and placement queries.

use super::*;

/// `OtherNode` if `actor` belongs to another node of the cluster (by the cluster's placement).
pub(super) fn check_local(node: &NodeShared, actor: &ActorId) -> Result<(), MigrateError> {
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

pub(super) fn type_by_name(node: &NodeShared, type_name: &str) -> Result<u16, MigrateError> {
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
