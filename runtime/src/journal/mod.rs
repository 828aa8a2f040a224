//! Journaling: event-sourced actors on the shard's durable log.
//!
//! An [`EventSourced`] actor changes its state only by applying events. In a handler,
//! [`Persist::persist`] appends the turn's events to the owning shard's log as one atomic batch
//! and applies them to the state only once they are durable; when the actor is activated, its
//! state is rebuilt from its latest snapshot plus the events after it. Every actor's events
//! carry a hash chain (tamper evidence), a version, a timestamp, their type name and schema
//! version (upcasting). [`Journal`] reads streams by version or time, computes past states
//! (time travel), replays dry, appends with an expected version (optimistic concurrency) and
//! erases a stream. The guide is `docs/JOURNALING.md`.
//!
//! ```
//! use quark::journal::{EventSourced, JournalEvent, JournalPolicy, Persist, PersistError};
//! use quark::{Actor, ActorKey, Context, Handler, Message};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Account { balance: i64 }
//! impl Actor for Account { const TYPE_NAME: &'static str = "account"; }
//!
//! #[derive(Serialize, Deserialize)]
//! enum AccountEvent { Deposited(i64), Withdrew(i64) }
//! impl JournalEvent for AccountEvent {
//!     fn type_name(&self) -> &'static str {
//!         match self { Self::Deposited(_) => "Deposited", Self::Withdrew(_) => "Withdrew" }
//!     }
//! }
//!
//! impl EventSourced for Account {
//!     type Event = AccountEvent;
//!     type Snapshot = i64;
//!     fn initial(_key: &ActorKey) -> Self { Account::default() }
//!     fn apply(&mut self, e: &AccountEvent) {
//!         match e { AccountEvent::Deposited(n) => self.balance += n, AccountEvent::Withdrew(n) => self.balance -= n }
//!     }
//!     fn snapshot(&self) -> i64 { self.balance }
//!     fn restore(_key: &ActorKey, balance: i64) -> Self { Account { balance } }
//! }
//!
//! struct Deposit(i64);
//! impl Message for Deposit { type Reply = Result<i64, PersistError>; }
//! impl Handler<Deposit> for Account {
//!     async fn handle(&mut self, m: Deposit, ctx: &Context<Self>) -> Result<i64, PersistError> {
//!         ctx.persist(self, [AccountEvent::Deposited(m.0)]).await?;
//!         Ok(self.balance)
//!     }
//! }
//! # let _ = JournalPolicy::default();
//! ```

pub mod format;
mod loader;
mod projection;
mod reader;
mod retention;

use std::time::Duration;

use quark_persist::{AppendError, ReadError, ScrubError};
use quark_placement::{ActorId, ActorKey, ShardId};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use loader::{journaled, Persist};
#[doc(hidden)]
pub use loader::{StreamBatch, StreamJournal};
pub(crate) use projection::{projection_type, start_feeders};
pub use projection::{
    EventMeta, Projection, ProjectionActor, ProjectionConfig, ProjectionError, ProjectionHandle,
    Subscriptions,
};
pub use reader::{
    At, EraseReport, EventEnvelope, Journal, ReplayProgress, ReplayReport, TimeRange,
};
pub(crate) use retention::start_retention_sweeps;

use crate::Actor;

/// An event type of an event-sourced actor: serialisable, with a stable type name and a schema
/// version, and an upcaster for older versions.
///
/// Events are stored with [postcard](https://docs.rs/postcard) (serde), tagged with
/// [`JournalEvent::type_name`] and [`JournalEvent::SCHEMA_VERSION`]. When a stored event's
/// schema version differs from the current one, [`JournalEvent::upcast`] converts it.
pub trait JournalEvent: Serialize + DeserializeOwned + Send + 'static {
    /// The schema version written with new events. Bump it when the encoding of any event
    /// changes, and teach [`JournalEvent::upcast`] to read the old one.
    const SCHEMA_VERSION: u16 = 1;

    /// A stable name for this event (for an enum: the variant), stored with it; tools filter
    /// on it and [`JournalEvent::upcast`] receives it.
    fn type_name(&self) -> &'static str;

    /// Converts an event stored with an older (or unknown) `schema_version`. The default
    /// refuses, naming the versions.
    fn upcast(event_type: &str, schema_version: u16, data: &[u8]) -> Result<Self, UpcastError> {
        let _ = data;
        Err(UpcastError::Unsupported {
            what: event_type.to_owned(),
            found: schema_version,
            current: Self::SCHEMA_VERSION,
        })
    }
}

/// An actor whose state is the fold of its events.
///
/// Register it with [`journaled`] (or `NodeBuilder::register_journaled`): activations are then
/// loaded from the journal. Handlers change state only through [`Persist::persist`].
pub trait EventSourced: Actor {
    /// The events this actor persists.
    type Event: JournalEvent;
    /// The form of the state stored in snapshots and returned by time travel.
    type Snapshot: Serialize + DeserializeOwned + Send + 'static;
    /// Schema version written with new snapshots.
    const SNAPSHOT_SCHEMA_VERSION: u16 = 1;

    /// The state of an actor with no events.
    fn initial(key: &ActorKey) -> Self;

    /// Applies one durable event. Must be deterministic and must not fail: it runs again on
    /// every activation and in time travel.
    fn apply(&mut self, event: &Self::Event);

    /// The state to store in a snapshot.
    fn snapshot(&self) -> Self::Snapshot;

    /// Rebuilds the state from a snapshot.
    fn restore(key: &ActorKey, snapshot: Self::Snapshot) -> Self;

    /// Converts a snapshot stored with another schema version. The default refuses; the loader
    /// then falls back to replaying events (if they were retained).
    fn upcast_snapshot(schema_version: u16, data: &[u8]) -> Result<Self::Snapshot, UpcastError> {
        let _ = data;
        Err(UpcastError::Unsupported {
            what: "snapshot".to_owned(),
            found: schema_version,
            current: Self::SNAPSHOT_SCHEMA_VERSION,
        })
    }
}

/// How a journaled actor type snapshots and retains its events (per type; `[actors.<name>]`
/// in the config overrides it).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct JournalPolicy {
    /// Write a snapshot once this many events were persisted since the last one.
    pub snapshot_every_events: Option<u64>,
    /// Write a snapshot once this many event bytes were persisted since the last one.
    pub snapshot_every_bytes: Option<u64>,
    /// Drop the events (and older snapshots) that precede a snapshot older than this. `None`
    /// keeps every event.
    pub retention_age: Option<Duration>,
}

impl JournalPolicy {
    /// A policy that snapshots every `n` events.
    pub fn snapshot_every(n: u64) -> Self {
        JournalPolicy {
            snapshot_every_events: Some(n),
            ..Self::default()
        }
    }
}

/// A position in one shard's log: where a write ended. Wait for a projection to reach it for
/// read-your-writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The shard whose log holds the write.
    pub shard: ShardId,
    /// One past the LSN of the write's last record.
    pub lsn: u64,
}

/// What a successful [`Persist::persist`] wrote.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    /// The actor's version after the first persisted event.
    pub first_version: u64,
    /// The actor's version now (after the last persisted event).
    pub version: u64,
    /// Where the batch ended in the shard's log.
    pub position: LogPosition,
}

/// Why an event or snapshot stored with another schema version could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// No conversion from this version.
    #[error("{what} schema version {found} cannot be read (current version {current})")]
    Unsupported {
        /// What was being read (event type name, or "snapshot").
        what: String,
        /// Stored version.
        found: u16,
        /// Current version.
        current: u16,
    },
    /// The bytes did not decode.
    #[error("{what} did not decode: {detail}")]
    Decode {
        /// What was being read.
        what: String,
        /// The decoder's message.
        detail: String,
    },
}

/// Why [`Persist::persist`] did not persist. The events were not applied and the state is
/// unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// The node has no data directory (`[log]` section), so nothing can be durable.
    #[error("actor {actor}: the node has no log (configure [log] data_dir) so events cannot be persisted")]
    NoLog {
        /// The actor.
        actor: ActorId,
    },
    /// The actor type was registered without [`journaled`], so its journal was never loaded.
    #[error("actor {actor} is not registered as journaled (use journaled() / register_journaled)")]
    NotJournaled {
        /// The actor.
        actor: ActorId,
    },
    /// An event did not serialise.
    #[error("actor {actor}: event {event_type} did not serialise: {detail}")]
    Encode {
        /// The actor.
        actor: ActorId,
        /// The event's type name.
        event_type: &'static str,
        /// The serialiser's message.
        detail: String,
    },
    /// The append failed: the batch is not durable (if the log reports an I/O error, the log
    /// refuses further appends until the node restarts; recovery then decides whether the
    /// batch is in the log).
    #[error("actor {actor}: appending events failed")]
    Append {
        /// The actor.
        actor: ActorId,
        /// The log's error.
        #[source]
        source: AppendError,
    },
    /// An earlier persist of this activation was abandoned (its future dropped) after its batch
    /// was submitted, so the live state may be behind the log; the activation is being
    /// deactivated and will be rebuilt from the log on its next message. Retry the call.
    #[error("actor {actor}: an earlier persist was abandoned mid-flight; the activation reloads from the journal, retry")]
    Interrupted {
        /// The actor.
        actor: ActorId,
    },
    /// An external append named an expected version that is not the actor's version.
    #[error("actor {actor}: expected version {expected}, but the actor is at version {actual}")]
    VersionConflict {
        /// The actor.
        actor: ActorId,
        /// The version the writer expected.
        expected: u64,
        /// The actor's version.
        actual: u64,
    },
    /// The call to the actor failed (shutdown, activation failure, timeout).
    #[error(transparent)]
    Call(#[from] crate::CallError),
}

/// Why reading a journal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The node has no log.
    #[error("the node has no log (configure [log] data_dir)")]
    NoLog,
    /// The actor lives on another node now (it was moved there): its journal is in that
    /// node's log; read it through that node (docs/MIGRATION.md, "Journaled actors").
    #[error("journal of {actor}: the actor lives on node {node}; read its journal there")]
    OnOtherNode {
        /// The actor.
        actor: ActorId,
        /// The node it lives on.
        node: u64,
    },
    /// The log could not be read.
    #[error("reading the journal of {actor} failed")]
    Read {
        /// The actor.
        actor: ActorId,
        /// The log's error.
        #[source]
        source: ReadError,
    },
    /// A record the log's index listed was gone when read (compaction moved it meanwhile;
    /// retrying reads its new place).
    #[error("journal of {actor}: the record at LSN {lsn} is no longer in the log")]
    Missing {
        /// The actor.
        actor: ActorId,
        /// The LSN.
        lsn: u64,
    },
    /// A stored record did not decode.
    #[error("journal of {actor}: the record at LSN {lsn} did not decode")]
    Format {
        /// The actor.
        actor: ActorId,
        /// The record's LSN.
        lsn: u64,
        /// What was wrong.
        #[source]
        source: format::FormatError,
    },
    /// A stored event or snapshot could not be converted to the current type.
    #[error("journal of {actor}: version {version} could not be converted to the current type")]
    Upcast {
        /// The actor.
        actor: ActorId,
        /// The version being read.
        version: u64,
        /// What was wrong.
        #[source]
        source: UpcastError,
    },
    /// The hash chain is broken: an event does not link to the one before it.
    #[error("journal of {actor}: the hash chain is broken at version {version} (LSN {lsn})")]
    BrokenChain {
        /// The actor.
        actor: ActorId,
        /// The first event whose link is wrong.
        version: u64,
        /// Its LSN.
        lsn: u64,
    },
    /// Events the rebuild needs are missing from the log: versions
    /// `first_missing..=last_missing` are not there although a later event (or nothing usable
    /// before them) is, e.g. because recovery quarantined the segment holding them, or a
    /// segment file was deleted. The actor is not activated (a rebuild never skips an event),
    /// so nothing is written to its stream until the operator restores the events or
    /// decides to give them up; see `docs/JOURNALING.md`.
    #[error("journal of {actor}: versions {first_missing}..={last_missing} are missing (the next retained event, version {next_version}, is at LSN {lsn}); was a log segment quarantined or deleted?")]
    VersionGap {
        /// The actor.
        actor: ActorId,
        /// The first missing version.
        first_missing: u64,
        /// The last missing version.
        last_missing: u64,
        /// The version of the retained event after the gap.
        next_version: u64,
        /// That event's LSN.
        lsn: u64,
    },
    /// A version appears twice in the stream (the later event does not follow the one
    /// before it): the stream forked, e.g. written by a build that skipped a gap on
    /// activation. The actor is not activated.
    #[error("journal of {actor}: version {version} at LSN {lsn} repeats or precedes version {previous} read before it; the stream forked")]
    VersionRepeated {
        /// The actor.
        actor: ActorId,
        /// The version found.
        version: u64,
        /// The version of the event read before it.
        previous: u64,
        /// The record's LSN.
        lsn: u64,
    },
    /// The requested version is not in the journal (dropped by retention, erased, or not yet
    /// written).
    #[error("journal of {actor}: version {version} is not available (retained versions {first}..={last})")]
    VersionUnavailable {
        /// The actor.
        actor: ActorId,
        /// The version asked for.
        version: u64,
        /// First retained version (0 = none).
        first: u64,
        /// Last version.
        last: u64,
    },
    /// The shard stopped before answering.
    #[error("the shard stopped before answering")]
    ShardStopped,
    /// Appending truncation records (erasure, retention) failed.
    #[error("appending truncation records failed")]
    Append {
        /// The log's error.
        #[source]
        source: AppendError,
    },
}

/// Why [`Journal::erase`] failed, and how far it got: nothing changed (`Call`, `NotRun`,
/// `Append`), or the erasure is durable but the erased bytes may still be in segment files
/// (`Scrub`, `ScrubNotRun`: erase again, which truncates nothing new and scrubs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EraseError {
    /// The activation never ran the erasure (timeout, shutdown, ...): nothing changed.
    #[error("erasing {actor}: the activation did not run it")]
    Call {
        /// The actor.
        actor: ActorId,
        /// Why the call failed.
        #[source]
        source: crate::CallError,
    },
    /// The erasure did not run for another reason (the node has no log, the owner shard
    /// stopped): nothing changed.
    #[error("erasing {actor}: nothing was erased")]
    NotRun {
        /// The actor.
        actor: ActorId,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// Appending the truncation records failed: nothing was erased.
    #[error("erasing {actor}: appending the truncation records failed; nothing was erased")]
    Append {
        /// The actor.
        actor: ActorId,
        /// The log's error.
        #[source]
        source: AppendError,
    },
    /// The erasure is durable (the stream reads as empty) but rewriting the segments failed:
    /// the erased bytes may still be on disk. Erase again to scrub.
    #[error("erasing {actor}: erased, but scrubbing the log failed")]
    Scrub {
        /// The actor.
        actor: ActorId,
        /// The scrub's error.
        #[source]
        source: ScrubError,
    },
    /// The erasure is durable but the scrub could not be started (the owner shard stopped):
    /// the erased bytes may still be on disk. Erase again to scrub.
    #[error("erasing {actor}: erased, but the scrub did not run")]
    ScrubNotRun {
        /// The actor.
        actor: ActorId,
        /// Why.
        #[source]
        source: JournalError,
    },
}

impl EraseError {
    /// The actor whose erasure failed.
    pub fn actor(&self) -> &ActorId {
        match self {
            EraseError::Call { actor, .. }
            | EraseError::NotRun { actor, .. }
            | EraseError::Append { actor, .. }
            | EraseError::Scrub { actor, .. }
            | EraseError::ScrubNotRun { actor, .. } => actor,
        }
    }

    /// True if the stream is erased (durably) and only the scrub failed.
    pub fn is_erased(&self) -> bool {
        matches!(
            self,
            EraseError::Scrub { .. } | EraseError::ScrubNotRun { .. }
        )
    }

    /// Classifies a failure before or during the truncation: nothing was erased.
    fn truncation(actor: ActorId, e: JournalError) -> EraseError {
        match e {
            JournalError::Append { source } => EraseError::Append { actor, source },
            source => EraseError::NotRun { actor, source },
        }
    }
}

/// Decodes stored event or snapshot data written with the journal's encoding (postcard) into
/// `T`: for upcasters, which decode the old type and convert it.
pub fn decode<T: DeserializeOwned>(what: &str, data: &[u8]) -> Result<T, UpcastError> {
    postcard::from_bytes(data).map_err(|e| UpcastError::Decode {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Milliseconds since the Unix epoch (the journal's timestamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error's message names the thing; its source says why, and the chain says it once.
    #[test]
    fn messages_do_not_repeat_their_source() {
        let source = UpcastError::Decode {
            what: "Deposited".to_owned(),
            detail: "unexpected end of input".to_owned(),
        };
        let e = JournalError::Upcast {
            actor: ActorId::new("account", 7u64),
            version: 3,
            source,
        };
        assert!(!e.to_string().contains("end of input"), "{e}");
        let chain = crate::ErrorChain(&e).to_string();
        assert_eq!(
            chain.matches("unexpected end of input").count(),
            1,
            "{chain}"
        );
        assert!(
            chain.starts_with("journal of account/7: version 3"),
            "{chain}"
        );

        let e = JournalError::Format {
            actor: ActorId::new("account", 7u64),
            lsn: 9,
            source: format::FormatError::NotJournalKey,
        };
        let chain = crate::ErrorChain(&e).to_string();
        assert_eq!(chain.matches("not a journal key").count(), 1, "{chain}");
    }
}
