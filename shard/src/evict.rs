//! Deactivating one named actor from outside its turns (issue 18, docs/MEMORY.md: the memory
//! monitor drops idle durable actors instead of moving them; an operator may do the same).
//!
//! A normal deactivation: the activation finishes the turn in progress and the messages
//! already in its mailbox, runs `on_deactivate`, drops its state and leaves its table; a
//! message that arrives meanwhile reactivates it in place, and the next message after it left
//! activates it again (a loaded type rebuilds its state from the log then).

use std::future::Future;
use std::sync::Arc;

use quark_placement::{ActorId, ShardId};

use crate::engine::shared::NodeShared;
use crate::envelope::CrossMsg;

/// What [`EngineHandle::deactivate`](crate::EngineHandle::deactivate) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deactivation {
    /// The actor's activation on `shard` was asked to deactivate: it does so once its
    /// mailbox is empty (the turn in progress and the queued messages run first).
    Requested {
        /// The shard it was active on.
        shard: ShardId,
    },
    /// The actor has no activation on this node (not active, or it lives on another node):
    /// nothing to do.
    NotActive,
}

/// Why [`EngineHandle::deactivate`](crate::EngineHandle::deactivate) could not ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeactivateError {
    /// No actor type of this name is registered on the node.
    #[error(
        "actor type {type_name:?} is not registered on this node; {actor} was not deactivated"
    )]
    UnknownType {
        /// The actor.
        actor: ActorId,
        /// Its type name.
        type_name: &'static str,
    },
    /// The node stopped before every shard answered.
    #[error("the node is shutting down; {actor} was not deactivated")]
    ShuttingDown {
        /// The actor.
        actor: ActorId,
    },
}

/// Asks every shard of the node whether it holds an activation of `actor` (a moved actor
/// lives away from its home shard), and the one that does to deactivate it.
pub(crate) fn deactivate(
    node: &Arc<NodeShared>,
    actor: &ActorId,
) -> impl Future<Output = Result<Deactivation, DeactivateError>> + Send + 'static {
    let found = node
        .types
        .iter()
        .position(|t| t.name() == actor.type_name)
        .map(|i| i as u16);
    let mut answers = Vec::new();
    if let Some(type_idx) = found {
        for shard in 0..node.shard_count() {
            let (tx, rx) = futures::channel::oneshot::channel::<bool>();
            let key = actor.key.clone();
            node.inject(
                shard,
                CrossMsg::run_on(move |core| {
                    let asked = core.tables.erased(type_idx).request_deactivation(&key);
                    let _ = tx.send(asked); // the caller may have stopped waiting
                }),
            );
            answers.push((shard, rx));
        }
    }
    let actor = actor.clone();
    async move {
        if found.is_none() {
            return Err(DeactivateError::UnknownType {
                type_name: actor.type_name,
                actor,
            });
        }
        let mut outcome = Deactivation::NotActive;
        for (shard, rx) in answers {
            match rx.await {
                Ok(true) => outcome = Deactivation::Requested { shard },
                Ok(false) => {}
                Err(_) => return Err(DeactivateError::ShuttingDown { actor }),
            }
        }
        Ok(outcome)
    }
}
