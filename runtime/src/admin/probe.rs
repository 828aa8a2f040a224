//! What the admin endpoint reads on each shard at request time beyond the engine's stats
//! snapshot: the shard log's counters, the job queue's counts and the outbox's counters.
//!
//! Each of those lives on its shard as plain data (no shared atomics); a scrape (or a
//! dashboard poll) runs one small closure per shard through [`quark_shard::EngineHandle::spawn_on`]
//! and waits for the answers with a deadline. Nothing runs when nobody asks.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quark_persist::LogStats;
use quark_shard::{EngineHandle, ShardId};
use serde::{Deserialize, Serialize};

use crate::jobs::JobState;
use crate::outbox::OutboxStats;

/// Counters that features running on a shard keep for the probe, in the shard thread's own
/// storage (plain cells: only that thread touches them, so no atomics), read at scrape time.
struct ShardCounters {
    /// Successful journal persists (batches appended by event-sourced actors).
    journal_persists: Cell<u64>,
    /// Events in those batches.
    journal_events: Cell<u64>,
    /// Snapshots written with them.
    journal_snapshots: Cell<u64>,
    /// Per projection (by name): the position of this shard's log its feeder has delivered
    /// (the projection acknowledged everything below it).
    projection_fed: RefCell<Vec<(&'static str, u64)>>,
}

thread_local! {
    static COUNTERS: ShardCounters = const {
        ShardCounters {
            journal_persists: Cell::new(0),
            journal_events: Cell::new(0),
            journal_snapshots: Cell::new(0),
            projection_fed: RefCell::new(Vec::new()),
        }
    };
}

/// Notes a journal persist of `events` events (and a snapshot when `snapshot`) on this shard.
pub(crate) fn journal_persisted(events: u64, snapshot: bool) {
    COUNTERS.with(|c| {
        c.journal_persists.set(c.journal_persists.get() + 1);
        c.journal_events.set(c.journal_events.get() + events);
        c.journal_snapshots
            .set(c.journal_snapshots.get() + u64::from(snapshot));
    });
}

/// Notes that projection `name`'s feeder on this shard delivered the log below `lsn`.
pub(crate) fn projection_fed(name: &'static str, lsn: u64) {
    COUNTERS.with(|c| {
        let mut fed = c.projection_fed.borrow_mut();
        match fed.iter_mut().find(|(n, _)| *n == name) {
            Some((_, at)) => *at = (*at).max(lsn),
            None => fed.push((name, lsn)),
        }
    });
}

/// A shard's journal figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalFigures {
    /// Successful persists (batches) of event-sourced actors since the node started.
    pub persists: u64,
    /// Events persisted since the node started.
    pub events: u64,
    /// Snapshots written since the node started.
    pub snapshots: u64,
    /// Per projection: LSNs of this shard's log not yet delivered to it (acknowledged log
    /// tail minus the feeder's position).
    pub projection_lag: BTreeMap<String, u64>,
}

/// How long a request waits for all shards' probes together.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(1);

/// One shard's figures outside the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ShardProbe {
    pub(crate) shard: ShardId,
    /// The shard log's counters (`None`: the node has no log).
    pub(crate) log: Option<LogStats>,
    /// Jobs per state (`None`: the node does not run jobs).
    pub(crate) jobs: Option<BTreeMap<&'static str, u64>>,
    /// The outbox's counters (`None`: the node does not run the outbox).
    pub(crate) outbox: Option<OutboxStats>,
    /// The journal's counters and projection lags (`None`: the node has no log).
    pub(crate) journal: Option<JournalFigures>,
    /// Workflow instances by state and their history sizes (`None`: no workflows).
    pub(crate) workflows: Option<crate::workflow::WorkflowFigures>,
}

/// The lower-case name of a job state (as `JobState::parse` reads it).
pub(crate) fn job_state_name(s: JobState) -> &'static str {
    match s {
        JobState::Blocked => "blocked",
        JobState::Scheduled => "scheduled",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Cancelled => "cancelled",
        JobState::Dead => "dead",
    }
}

/// Every job state, in the order the dashboard and the exposition list them.
pub(crate) const JOB_STATES: [JobState; 7] = [
    JobState::Blocked,
    JobState::Scheduled,
    JobState::Queued,
    JobState::Running,
    JobState::Completed,
    JobState::Cancelled,
    JobState::Dead,
];

/// Runs on the shard: reads what is there.
fn probe_here(shard: ShardId) -> ShardProbe {
    let jobs = crate::jobs::local_counts().map(|counts| {
        JOB_STATES
            .iter()
            .map(|&s| (job_state_name(s), counts.get(&s).copied().unwrap_or(0)))
            .collect()
    });
    let log = quark_shard::current_shard_log().map(|l| l.stats());
    let journal = log.as_ref().map(|l| {
        COUNTERS.with(|c| JournalFigures {
            persists: c.journal_persists.get(),
            events: c.journal_events.get(),
            snapshots: c.journal_snapshots.get(),
            projection_lag: c
                .projection_fed
                .borrow()
                .iter()
                .map(|&(name, fed)| (name.to_owned(), l.acked_lsn.saturating_sub(fed)))
                .collect(),
        })
    });
    ShardProbe {
        shard,
        log,
        jobs,
        outbox: crate::outbox::local_stats(),
        journal,
        workflows: crate::workflow::local_figures(),
    }
}

/// Why the probes did not all answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeError {
    /// A shard did not answer within [`PROBE_WAIT`] (a handler blocks its thread, or the
    /// shard stopped).
    #[error("shard {shard} did not answer the admin probe within {waited:?}")]
    NoAnswer { shard: ShardId, waited: Duration },
}

/// Probes every shard of `engine` at once and waits up to [`PROBE_WAIT`] in all.
pub(crate) fn probe_all(engine: &EngineHandle) -> Result<Vec<ShardProbe>, ProbeError> {
    let deadline = Instant::now() + PROBE_WAIT;
    let answers: Vec<_> = (0..engine.shard_count())
        .map(|shard| {
            let (tx, rx) = mpsc::sync_channel(1);
            // The handle is dropped: the closure's answer comes through the channel, which a
            // late answer finds closed (try_send fails, nothing waits).
            drop(engine.spawn_on(shard, move || async move {
                let _ = tx.try_send(probe_here(shard));
            }));
            rx
        })
        .collect();
    answers
        .into_iter()
        .enumerate()
        .map(|(shard, rx)| {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left).map_err(|_| ProbeError::NoAnswer {
                shard: shard as ShardId,
                waited: PROBE_WAIT,
            })
        })
        .collect()
}

/// A shard's log figures as the dashboard's JSON shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFigures {
    /// Next LSN to be assigned.
    pub next_lsn: u64,
    /// Batches below this LSN are acknowledged.
    pub acked_lsn: u64,
    /// Batches below this LSN are covered by an fsync.
    pub synced_lsn: u64,
    /// Batches appended since the node started.
    pub appends: u64,
    /// Bytes appended since the node started.
    pub appended_bytes: u64,
    /// Flushes (writes) since the node started.
    pub flushes: u64,
    /// Flushes made durable (fdatasync or write-through) since the node started.
    pub fsyncs: u64,
    /// Batches written by those flushes (`/ flushes`: the mean group-commit size).
    pub flushed_batches: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes the segment files occupy.
    pub disk_bytes: u64,
    /// How long the log's recovery took at start-up, µs.
    pub recovery_us: u64,
}

impl From<&LogStats> for LogFigures {
    fn from(s: &LogStats) -> LogFigures {
        LogFigures {
            next_lsn: s.next_lsn,
            acked_lsn: s.acked_lsn,
            synced_lsn: s.synced_lsn,
            appends: s.append_count,
            appended_bytes: s.appended_bytes,
            flushes: s.flush_count,
            fsyncs: s.sync_count,
            flushed_batches: s.flushed_batches,
            segments: s.segment_count as u64,
            disk_bytes: s.disk_bytes,
            recovery_us: s.recovery_us,
        }
    }
}

/// A shard's outbox figures as the dashboard's JSON shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxFigures {
    /// Messages acknowledged as applied.
    pub delivered: u64,
    /// Acknowledged as duplicates.
    pub duplicates: u64,
    /// Failed attempts retried.
    pub retries: u64,
    /// Moved to the dead letters.
    pub dead_lettered: u64,
    /// Committed, not yet acknowledged.
    pub pending: u64,
    /// Bytes counted against `pending_bytes_max`.
    pub pending_bytes: u64,
    /// Dead letters on the list now.
    pub dead_letters: u64,
}

impl From<&OutboxStats> for OutboxFigures {
    fn from(s: &OutboxStats) -> OutboxFigures {
        OutboxFigures {
            delivered: s.delivered,
            duplicates: s.duplicates,
            retries: s.retries,
            dead_lettered: s.dead_lettered,
            pending: s.pending,
            pending_bytes: s.pending_bytes,
            dead_letters: s.dead_letters,
        }
    }
}
