//! Transactional messaging on the log: durable actor state, an outbox with exactly-once
//! effects at the receiver (inbox), dead letters, external sinks and sagas.
//!
//! **The guarantee:** a turn's state change and the durable messages it sends commit in one
//! log batch or not at all; every committed message is delivered (retried with exponential
//! backoff, also after restarts) until the receiver acknowledges it or it is moved to the
//! dead-letter list; and the receiver applies each message's effect at most once, recording
//! the message id in the same batch as the effect, so that an acknowledged message was
//! applied exactly once.
//!
//! - [`DurableState`] actors ([`durable_state`]) load their state at activation and write it
//!   with [`Save::save`] (one atomic batch); [`DurableStates`] reads and writes them from
//!   outside with an expected version.
//! - [`Durable::send_durable`] stages a message in the turn; the next commit of the turn
//!   ([`Save::save`], the journal's `persist`, or [`Durable::commit`]) writes it with the
//!   state. The shard's dispatcher delivers it to a [`DurableHandler`].
//! - [`Outbox`] inspects, replays and purges dead letters.
//!
//! The guide is `docs/OUTBOX.md`.

mod config;
mod dispatcher;
pub mod format;
mod inbox;
pub mod offline;
mod postgres;
mod remote;
pub mod saga;
mod sink;
mod state;
mod turn;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use quark_shard::{Actor, Context, EngineBuilder, EngineHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use config::{FullPolicy, OutboxConfig, OutboxConfigError};
pub(crate) use dispatcher::local_stats;
pub use dispatcher::{DeadLetter, Outbox, OutboxError, OutboxStats};
pub use inbox::BYTES_PER_ENTRY as INBOX_BYTES_PER_ENTRY;
pub use postgres::PostgresSink;
pub use remote::{DurableWire, DurableWireBatch, InboundProxy, WireItem, WireOutcome};
pub use sink::{Sink, SinkError, SinkMessage};
pub use state::{
    durable_state, DurableState, DurableStates, Save, SaveError, StateError, Versioned,
};
pub(crate) use turn::{aborted, committed, stage_into};
pub use turn::{CommitError, Durable, SendError};

pub(crate) use dispatcher::Delivery;

/// A message sent through the outbox: serialisable (postcard) with a stable name, stored in
/// the log and sent over the wire under that name. Never reuse a name for another layout.
pub trait DurableMessage: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name (e.g. `"bank.Credit.v1"`).
    const NAME: &'static str;
}

/// Handling of durable message `M` by actor `Self`, at most once per message id.
///
/// The handler runs in a turn of the receiver. Its effects and the message's inbox receipt
/// commit in one batch: the first [`Save::save`] / journal `persist` / [`Durable::commit`]
/// of the turn carries the receipt; if the handler commits nothing, the runtime commits the
/// receipt (with any messages the handler staged) after it returns `Ok`. Return `Err` to have
/// the message redelivered later (only if nothing was committed yet; otherwise the message
/// counts as applied).
pub trait DurableHandler<M: DurableMessage>: Actor {
    /// Handles one durable message.
    fn handle_durable(
        &mut self,
        msg: M,
        ctx: &Context<Self>,
    ) -> impl Future<Output = Result<(), Retry>>;
}

/// A durable handler's request to be called again later with the same message (nothing of
/// the turn was committed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler asked for a retry: {reason}")]
pub struct Retry {
    /// Why, for logs and dead letters.
    pub reason: String,
}

impl std::str::FromStr for MessageId {
    type Err = String;

    /// Parses the display form `<stream as 16 hex digits>-<seq>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a message id (<16 hex digits>-<sequence>)");
        let (stream, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(MessageId {
            stream: u64::from_str_radix(stream, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The stable id of a durable message: the sender's id stream (a 64-bit fingerprint of sender
/// actor, node and shard) and a sequence number (the LSN of the outbox record in the
/// sender's shard log), increasing per stream in send order.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MessageId {
    /// The sender's stream.
    pub stream: u64,
    /// Sequence within the stream.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.stream, self.seq)
    }
}

/// What a delivery attempt reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler ran and its receipt is durable.
    Applied,
    /// The id was in the receiver's inbox: acknowledged without running the handler.
    Duplicate,
    /// Cannot ever succeed (unknown receiver or message, payload does not decode): dead-letter.
    Rejected(String),
    /// Try again later (timeout, node down, handler retry, commit failure).
    Failed(String),
}

type DeliverFut = std::pin::Pin<Box<dyn Future<Output = Vec<Outcome>>>>;
/// Delivers messages (one receiver, one message type) to an actor of a concrete type (local or
/// remote); one outcome per message, in order.
pub(crate) type DeliverFn =
    fn(EngineHandle, quark_placement::ActorKey, Vec<Delivery>) -> DeliverFut;

/// The node's durable-message routes and sinks (shared by its shards).
#[derive(Default)]
pub(crate) struct Registry {
    handlers: HashMap<(String, String), DeliverFn>,
    sinks: HashMap<String, sink::SinkHandle>,
}

impl Registry {
    pub(crate) fn handler(&self, target_type: &str, message: &str) -> Option<DeliverFn> {
        self.handlers
            .get(&(target_type.to_owned(), message.to_owned()))
            .copied()
    }
}

/// The outbox part of a node builder (see `NodeBuilder::outbox`, `durable`, `sink`).
#[derive(Default)]
pub struct Setup {
    used: bool,
    config: OutboxConfig,
    registry: Registry,
}

impl Setup {
    pub(crate) fn set_config(&mut self, config: OutboxConfig) {
        self.used = true;
        self.config = config;
    }

    /// Sets the keys of the file's `[outbox]` section over the code's config (key by key).
    pub(crate) fn apply_file(&mut self, section: &crate::config::OutboxSection) {
        section.apply(&mut self.config);
    }

    pub(crate) fn add_handler<A, M>(&mut self)
    where
        A: DurableHandler<M>,
        M: DurableMessage,
    {
        self.used = true;
        self.registry.handlers.insert(
            (A::TYPE_NAME.to_owned(), M::NAME.to_owned()),
            dispatcher::deliver_to::<A, M>,
        );
    }

    pub(crate) fn add_sink(&mut self, name: &str, sink: impl Sink) {
        self.used = true;
        self.registry
            .sinks
            .insert(name.to_owned(), sink::SinkHandle::start(name, sink));
    }

    /// Checks the config and registers the inbound proxy type; `None` when the outbox is not
    /// used by this node.
    pub(crate) fn register(
        self,
        builder: EngineBuilder,
    ) -> Result<(EngineBuilder, Option<Started>), OutboxConfigError> {
        if !self.used {
            return Ok((builder, None));
        }
        self.config.validate()?;
        let builder = remote::register(builder);
        Ok((
            builder,
            Some(Started {
                config: self.config,
                registry: Arc::new(self.registry),
            }),
        ))
    }
}

/// What starts the dispatchers once the engine runs.
pub(crate) struct Started {
    config: OutboxConfig,
    registry: Arc<Registry>,
}

impl Started {
    pub(crate) fn start(self, engine: &EngineHandle, node_id: u64) {
        dispatcher::start(engine, self.config, self.registry, node_id);
    }
}

/// Stops every shard's dispatcher and waits until each wrote its last acknowledgements
/// (called by `Node::shutdown` before the engine stops).
pub(crate) fn stop(engine: &EngineHandle) {
    dispatcher::stop_all(engine);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::MessageId;

    #[test]
    fn message_ids_parse_from_their_display_form() {
        let id = MessageId {
            stream: 0xd3df_9ea9_0f47_c051,
            seq: 17,
        };
        assert_eq!(id.to_string(), "d3df9ea90f47c051-17");
        assert_eq!("d3df9ea90f47c051-17".parse::<MessageId>(), Ok(id));
        assert!("d3df9ea90f47c051".parse::<MessageId>().is_err());
        assert!("xyz-1".parse::<MessageId>().is_err());
        assert!("12-".parse::<MessageId>().is_err());
    }
}
