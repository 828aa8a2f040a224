//! Errors a caller of an actor can act on.

use std::sync::Arc;
use std::time::Duration;

use quark_placement::ActorId;

/// Why a shard's link to a node is down: its last connection or handshake error (cheap to
/// clone; shared by every call that fails on it). Read it through
/// [`std::error::Error::source`] of a [`CallError::NodeUnavailable`].
#[derive(Clone)]
pub struct LinkDown(Arc<dyn std::error::Error + Send + Sync>);

impl LinkDown {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> LinkDown {
        LinkDown(Arc::new(e))
    }

    /// The error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for LinkDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for LinkDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for LinkDown {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two causes are equal when they are the same shared error.
impl PartialEq for LinkDown {
    fn eq(&self, other: &LinkDown) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LinkDown {}

/// Why an `ask` or a `tell` did not produce a reply. Each variant crosses nodes as its own
/// wire code, so a remote caller gets the variant a local caller would; what a caller should
/// do about each is tabled in `docs/ARCHITECTURE.md` ("Call errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The handler panicked while handling this call; the activation was deactivated.
    #[error(
        "actor {actor} panicked while handling this call ({panic}); its activation was discarded"
    )]
    ActorPanicked {
        /// The actor whose handler panicked.
        actor: ActorId,
        /// The panic's message and, where known, its location (`"boom at src/lib.rs:7:9"`).
        /// Locations are recorded by a panic hook the engine installs at start (chained to the
        /// hook in place then); a hook set later by the application replaces it.
        panic: String,
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
    /// The node that owns the actor is unreachable (not connected, or the connection dropped
    /// before the reply came). The call may have run if the connection dropped after sending.
    /// `cause` (also [`std::error::Error::source`]) is the last connection or handshake error
    /// of this shard's link to the node, where known (e.g. the secrets differ).
    #[error("node {node} is unavailable{}", actor.as_ref().map(|a| format!(" (call to {a})")).unwrap_or_default())]
    NodeUnavailable {
        /// The owner node.
        node: u64,
        /// The callee, where known.
        actor: Option<ActorId>,
        /// Why the link to the node is down, where known.
        #[source]
        cause: Option<LinkDown>,
    },
    /// The message type is not registered for the wire on this engine
    /// (`EngineBuilder::remote` / `wire_message`), so it cannot go to another node.
    #[error("message type {message_type} is not registered as a wire message; it cannot be sent to another node")]
    NotWireMessage {
        /// The Rust type name.
        message_type: &'static str,
    },
    /// The encoded message exceeds the connection's `frame_bytes_max`.
    #[error(
        "message {message_type} to {actor} is {bytes} bytes encoded, over frame_bytes_max {max}"
    )]
    MessageTooLarge {
        /// The callee.
        actor: ActorId,
        /// Wire name of the message.
        message_type: &'static str,
        /// Encoded frame size.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// rkyv could not archive the message.
    #[error("message {message_type} to {actor} could not be serialized")]
    NotSerializable {
        /// The callee.
        actor: ActorId,
        /// Wire name of the message.
        message_type: &'static str,
    },
    /// The reply from the remote node failed validation as the expected type.
    #[error("invalid {message_type} reply from node {node} for {actor}")]
    BadReply {
        /// The callee.
        actor: ActorId,
        /// The node that sent it.
        node: u64,
        /// Wire name of the request's message type.
        message_type: &'static str,
    },
    /// The remote node refused the request for a reason that is not one of the variants above
    /// (its actor type has no handler for the message type, the payload failed validation, or
    /// an older peer reported itself overloaded).
    #[error("node {node} refused the call to {actor}: {error}")]
    Remote {
        /// The callee.
        actor: ActorId,
        /// The node that refused.
        node: u64,
        /// Its reason.
        error: quark_net::RemoteError,
    },
    /// [`ActorRef::tell_now`](crate::ActorRef::tell_now) found no room on the way to the
    /// actor (its mailbox, the cross-shard ring's credits, the node's injection bound or the
    /// connection's outgoing buffer): the message was not sent. Retry later, or `tell(..).await`
    /// to wait for room.
    #[error("no room to send to {actor} at once ({place} full); the message was not sent")]
    Full {
        /// The callee.
        actor: ActorId,
        /// What was full: `"mailbox"`, `"cross-shard credits"`, `"injection queue"` or
        /// `"connection buffer"`.
        place: &'static str,
    },
    /// The actor was not active and its shard refused to activate it: the shard (or the
    /// node) is at its memory `reject` threshold (docs/MEMORY.md, "Refused activations").
    /// The call had no effect: neither the actor's factory (or loader) nor the handler ran,
    /// and calls queued for the activation fail the same way. Actors already active there
    /// keep running. The refusal is per shard: the actor is not placed on another shard or
    /// node, whatever its placement policy. Retry after a back-off (the memory monitor
    /// brings the shard back under `critical` by moving or deactivating actors, and admits
    /// activations again then), or shed the work. From another node it arrives as itself
    /// (wire code `Overloaded`, docs/PROTOCOL.md).
    #[error("the shard of {actor} refused to activate it ({cause} at its reject threshold); the call had no effect")]
    Overloaded {
        /// The callee.
        actor: ActorId,
        /// What is exhausted.
        cause: OverloadCause,
    },
    /// The node is shutting down and accepts no new calls (or dropped this one unprocessed).
    #[error("the node is shutting down; the call to {actor} was not accepted")]
    ShuttingDown {
        /// The callee.
        actor: ActorId,
    },
}

/// What a callee ran out of when it refused a call ([`CallError::Overloaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverloadCause {
    /// Memory: the shard or node is at its memory reject threshold.
    Memory,
}

impl std::fmt::Display for OverloadCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverloadCause::Memory => "memory",
        })
    }
}

impl CallError {
    /// The actor the failed call was addressed to, where known.
    pub fn actor(&self) -> Option<&ActorId> {
        match self {
            CallError::ActorPanicked { actor, .. }
            | CallError::ActivationAborted { actor }
            | CallError::Timeout { actor, .. }
            | CallError::ShuttingDown { actor }
            | CallError::ActivationFailed { actor, .. }
            | CallError::MessageTooLarge { actor, .. }
            | CallError::NotSerializable { actor, .. }
            | CallError::BadReply { actor, .. }
            | CallError::Remote { actor, .. }
            | CallError::Full { actor, .. }
            | CallError::Overloaded { actor, .. } => Some(actor),
            CallError::NodeUnavailable { actor, .. } => actor.as_ref(),
            CallError::UnknownActorType { .. } | CallError::NotWireMessage { .. } => None,
        }
    }
}

/// Displays an error with its chain of causes (defined in `quark-net`, below the engine).
pub use quark_net::ErrorChain;
