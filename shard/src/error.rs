//! Errors a caller of an actor can act on.

use std::time::Duration;

use quark_placement::ActorId;

/// Why an `ask` or a `tell` did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler panicked while handling this call; the activation was deactivated.
    #[error("actor {actor} panicked while handling this call; its activation was discarded")]
    ActorPanicked {
        /// The actor whose handler panicked.
        actor: ActorId,
    },
    /// The call was queued behind a call that panicked; the activation was discarded before this
    /// call ran, so it had no effect. Safe to retry.
    #[error("actor {actor} was discarded after a panic before this call ran; it had no effect")]
    ActivationAborted {
        /// The actor whose activation was discarded.
        actor: ActorId,
    },
    /// The actor's state could not be loaded (its type's loader failed or panicked, e.g. the
    /// journal could not be read); the call had no effect. `detail` is for humans.
    #[error("actor {actor} could not be activated: {detail}")]
    ActivationFailed {
        /// The actor that failed to activate.
        actor: ActorId,
        /// What the loader reported.
        detail: String,
    },
    /// No actor type of this name is registered on the node.
    #[error("actor type {type_name:?} is not registered on this node")]
    UnknownActorType {
        /// The unregistered type name.
        type_name: &'static str,
    },
    /// No reply arrived within the deadline. The call may still run (or have run).
    #[error("no reply from {actor} within {timeout:?}")]
    Timeout {
        /// The callee.
        actor: ActorId,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The node is shutting down and accepts no new calls (or dropped this one unprocessed).
    #[error("the node is shutting down; the call to {actor} was not accepted")]
    ShuttingDown {
        /// The callee.
        actor: ActorId,
    },
}

impl CallError {
    /// The actor the failed call was addressed to, where known.
    pub fn actor(&self) -> Option<&ActorId> {
        match self {
            CallError::ActorPanicked { actor }
            | CallError::ActivationAborted { actor }
            | CallError::Timeout { actor, .. }
            | CallError::ShuttingDown { actor }
            | CallError::ActivationFailed { actor, .. } => Some(actor),
            CallError::UnknownActorType { .. } => None,
        }
    }
}
