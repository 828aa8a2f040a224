//! `/quark/shards`: every shard's load figures as JSON (the engine's counters, the log's,
//! the job queue's and the outbox's), for the dashboard. Counters are totals since the node
//! started; a client turns two polls into rates.

use std::collections::BTreeMap;

use quark_shard::ShardStatsSnapshot;
use serde::{Deserialize, Serialize};

use super::probe::{JournalFigures, LogFigures, OutboxFigures, ShardProbe};
use super::Shared;

/// The JSON document `/quark/shards` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardsReport {
    /// Seconds since the node's admin endpoint started, when the figures were read (a client
    /// divides counter deltas by deltas of this).
    pub uptime_seconds: f64,
    /// Why some figures are missing (a shard did not answer within a second); `None` when
    /// all are there.
    pub error: Option<String>,
    /// One entry per shard that answered (empty while the node starts or drains).
    pub shards: Vec<ShardLoad>,
}

/// One shard's figures in [`ShardsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardLoad {
    /// The shard id.
    pub shard: u16,
    /// Activations alive now.
    pub live_activations: u64,
    /// Activations created since start.
    pub activations: u64,
    /// Deactivations since start.
    pub deactivations: u64,
    /// Messages received from cross-shard rings and the injection queue since start.
    pub ring_messages_in: u64,
    /// Task polls since start (each turn is at least one).
    pub task_polls: u64,
    /// Times the shard thread parked since start.
    pub parks: u64,
    /// Pump iterations since start.
    pub iterations: u64,
    /// Times a local sender waited for mailbox room.
    pub mailbox_waits: u64,
    /// Times a sender waited for a cross-shard credit.
    pub credit_waits: u64,
    /// Calls made from the shard awaiting a reply now.
    pub calls_in_flight: u64,
    /// Tasks alive now.
    pub tasks: u64,
    /// Handler panics since start.
    pub panics: u64,
    /// Cluster frames received / sent since start (`None`: standalone).
    pub net_frames_in: Option<u64>,
    /// Cluster frames sent since start (`None`: standalone).
    pub net_frames_out: Option<u64>,
    /// The shard log (`None`: no log, or the probe did not answer).
    pub log: Option<LogFigures>,
    /// Jobs per state (`None`: the node does not run jobs).
    pub jobs: Option<BTreeMap<String, u64>>,
    /// The outbox (`None`: the node does not run the outbox).
    pub outbox: Option<OutboxFigures>,
    /// The journal's persists and snapshots, and each projection's lag on this shard
    /// (`None`: no log).
    pub journal: Option<JournalFigures>,
    /// Tells and asks by kind since start: `local`, `cross_shard`, `remote` (sent from this
    /// shard) and `external` (from outside the node, handled here).
    pub messages: BTreeMap<String, CallCounts>,
    /// Latency of the asks made from this shard (all kinds together) since start:
    /// `buckets[i]` counts asks that took at most `2^i` µs (not cumulative; the last bucket,
    /// any longer ask).
    pub ask_latency_buckets: Vec<u64>,
    /// Live activations per actor type.
    pub live_per_type: BTreeMap<String, u64>,
    /// Messages queued in the shard's mailboxes now.
    pub mailbox_depth: u64,
    /// The longest mailbox now.
    pub mailbox_depth_max: u64,
    /// Messages waiting because the ring to their target shard was full.
    pub ring_overflow: u64,
}

/// Tells and asks of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    /// Tells.
    pub tells: u64,
    /// Asks.
    pub asks: u64,
}

fn load(s: &ShardStatsSnapshot, p: Option<&ShardProbe>) -> ShardLoad {
    ShardLoad {
        shard: s.shard,
        live_activations: s.live_activations,
        activations: s.activations,
        deactivations: s.deactivations,
        ring_messages_in: s.ring_msgs_in,
        task_polls: s.task_polls,
        parks: s.parks,
        iterations: s.iterations,
        mailbox_waits: s.mailbox_waits,
        credit_waits: s.credit_waits,
        calls_in_flight: s.calls_in_flight,
        tasks: s.tasks,
        panics: s.panics,
        net_frames_in: s.net.as_ref().map(|n| n.peers.frames_in),
        net_frames_out: s.net.as_ref().map(|n| n.peers.frames_out),
        log: p.and_then(|p| p.log.as_ref()).map(LogFigures::from),
        jobs: p.and_then(|p| p.jobs.as_ref()).map(|j| {
            j.iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        }),
        outbox: p.and_then(|p| p.outbox.as_ref()).map(OutboxFigures::from),
        journal: p.and_then(|p| p.journal.clone()),
        messages: [
            ("local", s.messages_local),
            ("cross_shard", s.messages_cross_shard),
            ("remote", s.messages_remote),
            ("external", s.messages_external),
        ]
        .into_iter()
        .map(|(k, c)| {
            let counts = CallCounts {
                tells: c.tells,
                asks: c.asks,
            };
            (k.to_owned(), counts)
        })
        .collect(),
        ask_latency_buckets: (0..quark_shard::ASK_LATENCY_BUCKETS)
            .map(|i| {
                s.ask_latency_local.buckets[i]
                    + s.ask_latency_cross_shard.buckets[i]
                    + s.ask_latency_remote.buckets[i]
            })
            .collect(),
        live_per_type: s
            .live_per_type
            .iter()
            .map(|(t, n)| ((*t).to_owned(), *n))
            .collect(),
        mailbox_depth: s.mailbox_depth,
        mailbox_depth_max: s.mailbox_depth_max,
        ring_overflow: s.ring_overflow,
    }
}

/// The report now.
pub(crate) fn build(shared: &Shared) -> ShardsReport {
    let uptime_seconds = shared.started.elapsed().as_secs_f64();
    let (snaps, mut error) = match shared.stats() {
        None => (Vec::new(), None),
        Some(Ok(v)) => (v, None),
        Some(Err(e)) => (Vec::new(), Some(e.to_string())),
    };
    let probes = match shared.probe() {
        None => Vec::new(),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            error.get_or_insert_with(|| e.to_string());
            Vec::new()
        }
    };
    let shards = snaps
        .iter()
        .map(|s| load(s, probes.iter().find(|p| p.shard == s.shard)))
        .collect();
    ShardsReport {
        uptime_seconds,
        error,
        shards,
    }
}
