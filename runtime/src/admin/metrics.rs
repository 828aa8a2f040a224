//! `/metrics`: the Prometheus text exposition, built at scrape time from every shard's stats
//! snapshot. Nothing here runs unless someone scrapes: the shards keep their plain counters,
//! and this module merges their snapshots into a fresh registry per scrape.
//!
//! Every metric is in [`SHARD_METRICS`] or [`NODE_METRICS`] (name, kind, unit, help) and
//! documented in `docs/OPERATIONS.md` (a test checks both lists match).

use std::collections::HashMap;

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use quark_net::CloseReason;
use quark_shard::{MessageCounts, ShardStatsSnapshot, ASK_LATENCY_BUCKETS};

use super::probe::{job_state_name, ShardProbe, JOB_STATES};
use super::{Phase, Shared};

/// Counter (monotonic since the node started) or gauge (a level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up while the node runs (restarts from zero with the process).
    Counter,
    /// A level: may go up and down.
    Gauge,
}

/// A metric exported per shard (label `shard`).
pub struct ShardMetric {
    /// The metric name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The unit of the value.
    pub unit: &'static str,
    /// The help text (without the unit, which is appended).
    pub help: &'static str,
    /// The value in a snapshot (`None`: the shard does not have it, e.g. no log).
    get: fn(&ShardStatsSnapshot) -> Option<u64>,
}

macro_rules! m {
    ($name:literal, $kind:ident, $unit:literal, $help:literal, $get:expr) => {
        ShardMetric {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            help: $help,
            get: $get,
        }
    };
}

/// The per-shard metrics, with label `shard` (and `reason` for closed connections).
pub const SHARD_METRICS: &[ShardMetric] = &[
    m!("quark_activations_live", Gauge, "activations", "Activations alive on the shard now.", |s| Some(s.live_activations)),
    m!("quark_activations_created_total", Counter, "activations", "Activations created since the node started.", |s| Some(s.activations)),
    m!("quark_activations_deactivated_total", Counter, "activations", "Deactivations completed since the node started.", |s| Some(s.deactivations)),
    m!("quark_handler_panics_total", Counter, "panics", "Handler panics caught on the shard.", |s| Some(s.panics)),
    m!("quark_replies_dropped_total", Counter, "replies", "Replies that arrived after their caller stopped waiting (deadline or cancellation).", |s| Some(s.replies_dropped)),
    m!("quark_mailbox_waits_total", Counter, "waits", "Times a sender on the same shard waited for mailbox room.", |s| Some(s.mailbox_waits)),
    m!("quark_credit_waits_total", Counter, "waits", "Times a sender waited for a cross-shard credit (cross_shard_inflight_max reached).", |s| Some(s.credit_waits)),
    m!("quark_migrations_started_total", Counter, "moves", "Live moves ordered by the shard as the actors' home shard (docs/MIGRATION.md).", |s| Some(s.migrations_started)),
    m!("quark_migrations_done_total", Counter, "moves", "Live moves that ended with the actor on its new shard.", |s| Some(s.migrations_done)),
    m!("quark_migrations_aborted_total", Counter, "moves", "Live moves aborted at their deadline or refused by the actor's shard; the actor stayed.", |s| Some(s.migrations_aborted)),
    m!("quark_migration_bytes_total", Counter, "bytes", "Bytes of dehydrated state moved (states moved as a box count 0).", |s| Some(s.migration_bytes)),
    m!("quark_migrate_forwarded_total", Counter, "messages", "Messages the shard, as their home, forwarded to actors living on another shard.", |s| Some(s.migrate_forwarded)),
    m!("quark_directory_entries", Gauge, "actors", "Actors of this home shard living on another shard or moving now.", |s| Some(s.directory_entries)),
    m!("quark_shard_memory_bytes", Gauge, "bytes", "The shard's memory as the [memory] thresholds see it: its activations' figures plus what its thread allocated outside turns (quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.shard_bytes)),
    m!("quark_shard_memory_live_bytes", Gauge, "bytes", "Bytes the shard's thread allocated that are not freed yet, wherever they were freed: the allocator's own count (quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.live_bytes)),
    m!("quark_shard_memory_actor_bytes", Gauge, "bytes", "The sum of the figures of the shard's activations: memory_size hook, else live bytes allocated in their turns (quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.actor_bytes)),
    m!("quark_shard_memory_other_bytes", Gauge, "bytes", "Live bytes the shard's thread allocated outside any actor's turn (quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.other_bytes)),
    m!("quark_shard_allocated_bytes_total", Counter, "bytes", "Bytes the shard's thread allocated since it started (quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.allocated_bytes)),
    m!("quark_memory_leak_suspects", Gauge, "actors", "Activations of the shard reported by leak detection now ([memory] leak_samples; quark::CountingAlloc; absent without it).", |s| s.load.memory.counting.then_some(s.load.memory.leaks.len() as u64)),
    m!("quark_shard_parks_total", Counter, "parks", "Times the shard thread parked (slept waiting for work).", |s| Some(s.parks)),
    m!("quark_shard_wakeups_doorbell_total", Counter, "wakeups", "Parks ended by another thread ringing the shard's doorbell (a message or waker from another shard, network completions, an outside caller).", |s| Some(s.wakeups_doorbell)),
    m!("quark_shard_wakeups_timer_total", Counter, "wakeups", "Parks ended by the shard's own next deadline (a timer, an idle sweep, a heartbeat).", |s| Some(s.wakeups_timer)),
    m!("quark_shard_wakeups_local_total", Counter, "wakeups", "Parks ended by a waker on the shard's own thread.", |s| Some(s.wakeups_local)),
    m!("quark_shard_iterations_total", Counter, "iterations", "Iterations of the shard's pump loop.", |s| Some(s.iterations)),
    m!("quark_shard_reaps_total", Counter, "reaps", "Trips through the executor's wait to reap I/O completions.", |s| Some(s.reaps)),
    m!("quark_task_polls_total", Counter, "polls", "Polls of tasks on the shard's scheduler.", |s| Some(s.task_polls)),
    m!("quark_ring_messages_received_total", Counter, "messages", "Messages received from cross-shard rings and the external injection queue.", |s| Some(s.ring_msgs_in)),
    m!("quark_calls_in_flight", Gauge, "calls", "Calls made from the shard that await a reply.", |s| Some(s.calls_in_flight)),
    m!("quark_timers", Gauge, "timers", "Live actor timers.", |s| Some(s.timers)),
    m!("quark_tasks", Gauge, "tasks", "Tasks alive on the shard's scheduler (activations and spawned tasks).", |s| Some(s.tasks)),
    m!("quark_log_next_lsn", Gauge, "lsn", "The shard log's next log sequence number (absent without a log).", |s| s.log_next_lsn),
    m!("quark_log_disk_bytes", Gauge, "bytes", "Bytes the shard log's segment files occupy (absent without a log).", |s| s.log_disk_bytes),
    m!("quark_net_frames_received_total", Counter, "frames", "Frames received on the shard's cluster connections.", |s| s.net.as_ref().map(|n| n.peers.frames_in)),
    m!("quark_net_frames_sent_total", Counter, "frames", "Frames sent on the shard's cluster connections.", |s| s.net.as_ref().map(|n| n.peers.frames_out)),
    m!("quark_net_received_bytes_total", Counter, "bytes", "Frame bytes received (padding included).", |s| s.net.as_ref().map(|n| n.peers.bytes_in)),
    m!("quark_net_sent_bytes_total", Counter, "bytes", "Frame bytes sent (padding included).", |s| s.net.as_ref().map(|n| n.peers.bytes_out)),
    m!("quark_net_handshakes_total", Counter, "handshakes", "Cluster handshakes completed.", |s| s.net.as_ref().map(|n| n.peers.handshakes_ok)),
    m!("quark_net_connections_opened_total", Counter, "connections", "Cluster connections opened (dialed or accepted).", |s| s.net.as_ref().map(|n| n.peers.connects)),
    m!("quark_net_requests_received_total", Counter, "requests", "Requests (asks and tells) received from the network.", |s| s.net.as_ref().map(|n| n.requests_in)),
    m!("quark_net_requests_refused_total", Counter, "requests", "Requests answered with an error without running (unknown actor or message type, bad payload, shutting down).", |s| s.net.as_ref().map(|n| n.requests_refused)),
    m!("quark_net_asks_unavailable_total", Counter, "asks", "Asks failed with NodeUnavailable (owner unreachable, or its connection dropped before the reply).", |s| s.net.as_ref().map(|n| n.asks_unavailable)),
    m!("quark_net_tells_dropped_total", Counter, "tells", "Tells not sent because their owner node was unreachable.", |s| s.net.as_ref().map(|n| n.tells_dropped)),
    m!("quark_net_replies_lost_total", Counter, "replies", "Replies not sent because the requester's connection had closed.", |s| s.net.as_ref().map(|n| n.replies_lost)),
    m!("quark_net_links_up", Gauge, "links", "Peer nodes whose link dialed by this shard is up now.", |s| s.net.as_ref().map(|n| n.links_up)),
    m!(
        "quark_mailbox_depth",
        Gauge,
        "messages",
        "Messages queued in the mailboxes of the shard's activations now.",
        |s| Some(s.mailbox_depth)
    ),
    m!(
        "quark_mailbox_depth_max",
        Gauge,
        "messages",
        "The longest mailbox of the shard now.",
        |s| Some(s.mailbox_depth_max)
    ),
    m!(
        "quark_ring_overflow",
        Gauge,
        "messages",
        "Messages waiting in the shard's overflow queues because the ring to their target shard was full.",
        |s| Some(s.ring_overflow)
    ),
    m!(
        "quark_ring_occupancy",
        Gauge,
        "messages",
        "Messages waiting in the shard's inbound cross-shard rings: published by the sending shards, not yet consumed by this one.",
        |s| Some(s.ring_occupancy)
    ),
];

/// A metric read from a shard's probe (its log, jobs and outbox), label `shard`.
pub struct ProbeMetric {
    /// The metric name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The unit of the value.
    pub unit: &'static str,
    /// The help text (without the unit, which is appended).
    pub help: &'static str,
    /// The value in a probe (`None`: the shard does not have it, e.g. no log).
    get: fn(&ShardProbe) -> Option<u64>,
}

macro_rules! p {
    ($name:literal, $kind:ident, $unit:literal, $help:literal, $get:expr) => {
        ProbeMetric {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            help: $help,
            get: $get,
        }
    };
}

/// The per-shard metrics of the log, the outbox and the jobs, read on the shards at scrape
/// time (label `shard`; `quark_jobs` also has `state`).
pub const PROBE_METRICS: &[ProbeMetric] = &[
    p!(
        "quark_log_appends_total",
        Counter,
        "batches",
        "Batches appended to the shard log.",
        |p| p.log.as_ref().map(|l| l.append_count)
    ),
    p!(
        "quark_log_appended_records_total",
        Counter,
        "records",
        "Records in the batches appended to the shard log.",
        |p| p.log.as_ref().map(|l| l.appended_records)
    ),
    p!(
        "quark_log_appended_bytes_total",
        Counter,
        "bytes",
        "Encoded bytes appended to the shard log (batch and record headers included).",
        |p| p.log.as_ref().map(|l| l.appended_bytes)
    ),
    p!(
        "quark_log_flushes_total",
        Counter,
        "writes",
        "Flushes (one write each) of the shard log's group commit.",
        |p| p.log.as_ref().map(|l| l.flush_count)
    ),
    p!(
        "quark_log_fsyncs_total",
        Counter,
        "syncs",
        "Flushes made durable: fdatasync calls, or write-through writes.",
        |p| p.log.as_ref().map(|l| l.sync_count)
    ),
    p!(
        "quark_log_flushed_bytes_total",
        Counter,
        "bytes",
        "Data bytes written by the shard log's flushes.",
        |p| p.log.as_ref().map(|l| l.flushed_bytes)
    ),
    p!(
        "quark_log_segments",
        Gauge,
        "segments",
        "Segment files of the shard log.",
        |p| p.log.as_ref().map(|l| l.segment_count as u64)
    ),
    p!(
        "quark_log_unacked_lsns",
        Gauge,
        "lsns",
        "LSNs assigned but not yet acknowledged (queued for a flush).",
        |p| p
            .log
            .as_ref()
            .map(|l| l.next_lsn.saturating_sub(l.acked_lsn))
    ),
    p!(
        "quark_log_unsynced_lsns",
        Gauge,
        "lsns",
        "LSNs acknowledged but not yet covered by an fsync (fsync = interval or never).",
        |p| p
            .log
            .as_ref()
            .map(|l| l.acked_lsn.saturating_sub(l.synced_lsn))
    ),
    p!(
        "quark_journal_persists_total",
        Counter,
        "batches",
        "Successful persists of event-sourced actors (one log batch each).",
        |p| p.journal.as_ref().map(|j| j.persists)
    ),
    p!(
        "quark_journal_events_total",
        Counter,
        "events",
        "Events persisted by event-sourced actors.",
        |p| p.journal.as_ref().map(|j| j.events)
    ),
    p!(
        "quark_journal_snapshots_total",
        Counter,
        "snapshots",
        "Snapshots written with those persists (snapshot_every).",
        |p| p.journal.as_ref().map(|j| j.snapshots)
    ),
    p!(
        "quark_outbox_delivered_total",
        Counter,
        "messages",
        "Outbox messages acknowledged as applied by their receiver.",
        |p| p.outbox.as_ref().map(|o| o.delivered)
    ),
    p!(
        "quark_outbox_duplicates_total",
        Counter,
        "messages",
        "Outbox messages acknowledged as duplicates (applied before).",
        |p| p.outbox.as_ref().map(|o| o.duplicates)
    ),
    p!(
        "quark_outbox_retries_total",
        Counter,
        "attempts",
        "Failed outbox delivery attempts that were retried.",
        |p| p.outbox.as_ref().map(|o| o.retries)
    ),
    p!(
        "quark_outbox_dead_lettered_total",
        Counter,
        "messages",
        "Outbox messages moved to the dead letters.",
        |p| p.outbox.as_ref().map(|o| o.dead_lettered)
    ),
    p!(
        "quark_outbox_inbox_evicted_total",
        Counter,
        "streams",
        "Sender streams the shard's inbox forgot because of dedupe_count_max.",
        |p| p.outbox.as_ref().map(|o| o.inbox_evicted)
    ),
    p!(
        "quark_outbox_pending",
        Gauge,
        "messages",
        "Outbox messages committed and not yet acknowledged.",
        |p| p.outbox.as_ref().map(|o| o.pending)
    ),
    p!(
        "quark_outbox_pending_bytes",
        Gauge,
        "bytes",
        "Bytes counted against the outbox's pending_bytes_max.",
        |p| p.outbox.as_ref().map(|o| o.pending_bytes)
    ),
    p!(
        "quark_outbox_dead_letters",
        Gauge,
        "messages",
        "Outbox dead letters on the list now.",
        |p| p.outbox.as_ref().map(|o| o.dead_letters)
    ),
    p!(
        "quark_outbox_recovered",
        Gauge,
        "messages",
        "Outbox messages found in the log at start-up.",
        |p| p.outbox.as_ref().map(|o| o.recovered)
    ),
    p!(
        "quark_workflow_history_events",
        Gauge,
        "records",
        "Records in the current runs' histories of the shard's running workflow instances, summed.",
        |p| p.workflows.as_ref().map(|w| w.history_events)
    ),
    p!(
        "quark_workflow_history_events_max",
        Gauge,
        "records",
        "Records in the largest current-run history of a running workflow instance on the shard (compare with [workflows] max_history_events).",
        |p| p.workflows.as_ref().map(|w| w.history_events_max)
    ),
    p!(
        "quark_workflow_history_bytes",
        Gauge,
        "bytes",
        "Bytes of the current runs' histories of the shard's running workflow instances, summed.",
        |p| p.workflows.as_ref().map(|w| w.history_bytes)
    ),
    p!(
        "quark_workflow_history_bytes_max",
        Gauge,
        "bytes",
        "Bytes of the largest current-run history of a running workflow instance on the shard (compare with [workflows] max_history_bytes).",
        |p| p.workflows.as_ref().map(|w| w.history_bytes_max)
    ),
];

/// Workflow instances per shard and state: `(name, help)`.
pub const WORKFLOWS_METRIC: (&str, &str) = (
    "quark_workflow_instances",
    "Workflow instances in the shard's table, by state (running, completed, failed, non_deterministic, cancelled, terminated); finished ones count until purged. Unit: instances.",
);

/// Jobs per shard and state: `(name, help)`.
pub const JOBS_METRIC: (&str, &str) = (
    "quark_jobs",
    "Durable jobs known to the shard's queue, by state (blocked, scheduled, queued, running, completed, cancelled, dead). Unit: jobs.",
);

/// Projection lag, per shard and projection: `(name, help)`.
pub const PROJECTION_LAG_METRIC: (&str, &str) = (
    "quark_projection_lag_lsns",
    "LSNs of the shard's log not yet delivered to the projection (acknowledged log tail minus its feeder's position). Unit: lsns.",
);

/// The group-commit size histogram, per shard: `(name, help)`.
pub const GROUP_COMMIT_METRIC: (&str, &str) = (
    "quark_log_group_commit_batches",
    "Batches written per flush of the shard log (group-commit size); _sum is the batches flushed, _count the flushes. Unit: batches.",
);

/// The log's recovery time, per shard: `(name, help)`.
pub const RECOVERY_METRIC: (&str, &str) = (
    "quark_log_recovery_seconds",
    "How long opening the shard log took at start-up (scanning segments, rebuilding the index). Unit: seconds.",
);

/// Messages by kind and call, labelled `shard`, `kind` and `call`: `(name, help)`.
pub const MESSAGES_METRIC: (&str, &str) = (
    "quark_messages_total",
    "Messages by kind (local: to the same shard, cross_shard: to another shard of the node, remote: to another node; these counted by the sending shard; external: from outside the node, counted by the owner shard when it took the message) and call (tell or ask). Unit: messages.",
);

/// Ask latency, labelled `shard` and `kind`: `(name, help)`.
pub const ASK_LATENCY_METRIC: (&str, &str) = (
    "quark_ask_latency_seconds",
    "Latency of the asks made from the shard, by kind (local, cross_shard, remote), from the send to the reply (or the deadline), on the shard clock (read once per pump iteration). Unit: seconds.",
);

/// Live activations per actor type, labelled `shard` and `actor_type`: `(name, help)`.
pub const LIVE_BY_TYPE_METRIC: (&str, &str) = (
    "quark_activations_live_by_type",
    "Activations alive on the shard now, by actor type. Unit: activations.",
);

/// The known size of the actors' states per actor type, labelled `shard` and `actor_type`.
pub const STATE_BYTES_METRIC: (&str, &str) = (
    "quark_actor_state_bytes",
    "Known size of the states of the shard's live activations, by actor type: the deep size (the type's ActorType::memory_size hook) of each activation between turns, the shallow size (size_of) otherwise and for types without the hook. Unit: bytes.",
);

/// Attributed memory per actor type, labelled `shard` and `actor_type` (with
/// `quark::CountingAlloc`).
pub const ACTOR_MEMORY_METRIC: (&str, &str) = (
    "quark_actor_memory_bytes",
    "Memory of the shard's activations by actor type: the memory_size hook's deep size, else the live bytes allocated in their turns (quark::CountingAlloc; docs/MEMORY.md). Unit: bytes.",
);

/// Closed connections, labelled `shard` and `reason`.
pub const CLOSED_METRIC: (&str, &str) = (
    "quark_net_connections_closed_total",
    "Cluster connections closed, by reason. Unit: connections.",
);

/// Node-level metrics: `(name, kind, unit, help)`.
pub const NODE_METRICS: &[(&str, Kind, &str, &str)] = &[
    ("quark_build_info", Kind::Gauge, "info", "Always 1; label version is the quark version."),
    ("quark_node_ready", Kind::Gauge, "boolean", "1 while the node accepts work (as /readyz), 0 during start-up and drain."),
    ("quark_node_uptime_seconds", Kind::Gauge, "seconds", "Seconds since the admin endpoint started (with the node)."),
    ("quark_shards", Kind::Gauge, "shards", "Shards of the node."),
    ("quark_process_resident_bytes", Kind::Gauge, "bytes", "Resident set size of the node's process (/proc/self/statm), the whole process: it cannot be split by shard."),
    ("quark_admin_stats_failed", Kind::Gauge, "boolean", "1 if a shard did not answer this scrape's stats request within a second (the per-shard series are then left out)."),
    ("quark_admin_probe_failed", Kind::Gauge, "boolean", "1 if a shard did not answer this scrape's log/jobs/outbox probe within a second (those series are then left out)."),
];

/// The label value of a close reason.
pub fn reason_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::PeerClosed => "peer_closed",
        CloseReason::Goodbye => "goodbye",
        CloseReason::Oversized => "oversized",
        CloseReason::Truncated => "truncated",
        CloseReason::BadFrame => "bad_frame",
        CloseReason::BadPayload => "bad_payload",
        CloseReason::HandshakeFailed => "handshake_failed",
        CloseReason::HeartbeatTimeout => "heartbeat_timeout",
        CloseReason::Io => "io",
        CloseReason::Shutdown => "shutdown",
        CloseReason::OutStalled => "out_stalled",
    }
}

/// The last value exported for every counter series, so an exported counter never goes
/// down within the node's life, even if a shard's snapshot were older than the last one.
#[derive(Default)]
pub(crate) struct Monotonic {
    last: HashMap<(&'static str, u16, &'static str), u64>,
}

impl Monotonic {
    fn clamp(&mut self, name: &'static str, shard: u16, extra: &'static str, v: u64) -> u64 {
        let last = self.last.entry((name, shard, extra)).or_insert(0);
        *last = (*last).max(v);
        *last
    }
}

/// Why the exposition could not be produced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("building the metrics registry")]
    Prometheus(#[from] prometheus::Error),
    #[error("the encoded exposition is not UTF-8")]
    Utf8(#[from] std::string::FromUtf8Error),
}

fn help(help: &str, unit: &str) -> String {
    format!("{help} Unit: {unit}.")
}

/// The exposition for a node in `phase` with `shards` shards (`None`: the engine is not
/// running); `snapshots` is `Err` when the shards' stats request failed.
pub(crate) fn encode(
    shards: Option<usize>,
    snapshots: Result<&[ShardStatsSnapshot], ()>,
    probes: Result<&[ShardProbe], ()>,
    phase: Phase,
    uptime_seconds: f64,
    mono: &mut Monotonic,
) -> Result<String, RenderError> {
    let registry = Registry::new();
    let node_help = |name: &str| {
        let (_, _, unit, h) = NODE_METRICS
            .iter()
            .find(|m| m.0 == name)
            .expect("every node metric is in NODE_METRICS");
        help(h, unit)
    };
    let build = IntGaugeVec::new(
        Opts::new("quark_build_info", node_help("quark_build_info")),
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build))?;
    let ready = IntGaugeVec::new(
        Opts::new("quark_node_ready", node_help("quark_node_ready")),
        &[],
    )?;
    ready
        .with_label_values(&[] as &[&str])
        .set(i64::from(phase == Phase::Ready));
    registry.register(Box::new(ready))?;
    let uptime = GaugeVec::new(
        Opts::new(
            "quark_node_uptime_seconds",
            node_help("quark_node_uptime_seconds"),
        ),
        &[],
    )?;
    uptime.with_label_values(&[] as &[&str]).set(uptime_seconds);
    registry.register(Box::new(uptime))?;
    if let Some(rss) = super::status::resident_bytes() {
        let g = IntGaugeVec::new(
            Opts::new(
                "quark_process_resident_bytes",
                node_help("quark_process_resident_bytes"),
            ),
            &[],
        )?;
        g.with_label_values(&[] as &[&str])
            .set(i64::try_from(rss).unwrap_or(i64::MAX));
        registry.register(Box::new(g))?;
    }

    if let Some(n) = shards {
        let g = IntGaugeVec::new(Opts::new("quark_shards", node_help("quark_shards")), &[])?;
        g.with_label_values(&[] as &[&str]).set(n as i64);
        registry.register(Box::new(g))?;
        let failed = IntGaugeVec::new(
            Opts::new(
                "quark_admin_stats_failed",
                node_help("quark_admin_stats_failed"),
            ),
            &[],
        )?;
        failed
            .with_label_values(&[] as &[&str])
            .set(i64::from(snapshots.is_err()));
        registry.register(Box::new(failed))?;
    }
    if let (Some(_), Ok(live)) = (shards, snapshots) {
        for m in SHARD_METRICS {
            let rows: Vec<(u16, u64)> = live
                .iter()
                .filter_map(|s| (m.get)(s).map(|v| (s.shard, v)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            register_per_shard(&registry, mono, m.name, help(m.help, m.unit), m.kind, rows)?;
        }
        let with_net: Vec<_> = live
            .iter()
            .filter_map(|s| s.net.as_ref().map(|n| (s.shard, n)))
            .collect();
        if !with_net.is_empty() {
            let (name, h) = CLOSED_METRIC;
            let c = IntCounterVec::new(Opts::new(name, h), &["shard", "reason"])?;
            for (shard, n) in with_net {
                for r in CloseReason::ALL {
                    let label = reason_label(r);
                    let v = mono.clamp(name, shard, label, n.peers.closed(r));
                    c.with_label_values(&[&shard.to_string(), label]).inc_by(v);
                }
            }
            registry.register(Box::new(c))?;
        }
        register_engine_extras(&registry, live, mono)?;
    }
    if let Some(n) = shards {
        let failed = IntGaugeVec::new(
            Opts::new(
                "quark_admin_probe_failed",
                node_help("quark_admin_probe_failed"),
            ),
            &[],
        )?;
        failed
            .with_label_values(&[] as &[&str])
            .set(i64::from(n > 0 && probes.is_err()));
        registry.register(Box::new(failed))?;
    }
    let with_probes = match (shards, probes) {
        (Some(_), Ok(p)) => p,
        _ => &[],
    };
    register_probes(&registry, with_probes, mono)?;
    let mut families = registry.gather();
    if let (Some(_), Ok(live)) = (shards, snapshots) {
        families.extend(ask_latency_family(live));
        families.extend(super::load::families(live));
    }
    families.extend(group_commit_family(with_probes));
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// The message kinds of a snapshot: `(kind label, counts)`.
fn message_kinds(s: &ShardStatsSnapshot) -> [(&'static str, MessageCounts); 4] {
    [
        ("local", s.messages_local),
        ("cross_shard", s.messages_cross_shard),
        ("remote", s.messages_remote),
        ("external", s.messages_external),
    ]
}

/// Registers the engine's messages by kind and activations by type (the ask latency
/// histograms are families of their own, see [`ask_latency_family`]).
fn register_engine_extras(
    registry: &Registry,
    live: &[ShardStatsSnapshot],
    mono: &mut Monotonic,
) -> Result<(), RenderError> {
    let (name, h) = MESSAGES_METRIC;
    let c = IntCounterVec::new(Opts::new(name, h), &["shard", "kind", "call"])?;
    for s in live {
        let shard = s.shard.to_string();
        for (kind, counts) in message_kinds(s) {
            for (call, v, key) in [
                ("tell", counts.tells, TELL_KEYS),
                ("ask", counts.asks, ASK_KEYS),
            ] {
                let key = key[kind_index(kind)];
                let v = mono.clamp(name, s.shard, key, v);
                c.with_label_values(&[&shard, kind, call]).inc_by(v);
            }
        }
    }
    registry.register(Box::new(c))?;
    let (name, h) = LIVE_BY_TYPE_METRIC;
    let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "actor_type"])?;
    let mut any = false;
    for s in live {
        for (ty, n) in &s.live_per_type {
            any = true;
            g.with_label_values(&[s.shard.to_string().as_str(), ty])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
    if any {
        registry.register(Box::new(g))?;
    }
    let (name, h) = STATE_BYTES_METRIC;
    let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "actor_type"])?;
    let mut any = false;
    for s in live {
        for t in &s.state_bytes_per_type {
            any = true;
            g.with_label_values(&[s.shard.to_string().as_str(), t.type_name])
                .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
        }
    }
    if any {
        registry.register(Box::new(g))?;
    }
    let (name, h) = ACTOR_MEMORY_METRIC;
    let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "actor_type"])?;
    let mut any = false;
    for s in live.iter().filter(|s| s.load.memory.counting) {
        for t in &s.load.memory.per_type {
            any = true;
            g.with_label_values(&[s.shard.to_string().as_str(), t.type_name])
                .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
        }
    }
    if any {
        registry.register(Box::new(g))?;
    }
    Ok(())
}

/// The clamp keys of [`Monotonic`] for the message counters (one per kind and call).
const TELL_KEYS: [&str; 4] = [
    "local/tell",
    "cross_shard/tell",
    "remote/tell",
    "external/tell",
];
const ASK_KEYS: [&str; 4] = ["local/ask", "cross_shard/ask", "remote/ask", "external/ask"];

fn kind_index(kind: &str) -> usize {
    match kind {
        "local" => 0,
        "cross_shard" => 1,
        "remote" => 2,
        _ => 3,
    }
}

/// The ask latency histograms of `live`, labelled `shard` and `kind`, from the shards' bucket
/// counts (power-of-two microseconds, exported in seconds).
fn ask_latency_family(live: &[ShardStatsSnapshot]) -> Option<prometheus::proto::MetricFamily> {
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let label = |name: &str, value: String| {
        let mut l = LabelPair::default();
        l.set_name(name.to_owned());
        l.set_value(value);
        l
    };
    let mut metrics = Vec::new();
    for s in live {
        for (kind, lat) in [
            ("local", &s.ask_latency_local),
            ("cross_shard", &s.ask_latency_cross_shard),
            ("remote", &s.ask_latency_remote),
        ] {
            let mut cumulative = 0;
            let buckets = lat.buckets[..ASK_LATENCY_BUCKETS - 1]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound((1u64 << i) as f64 / 1e6);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(lat.count());
            h.set_sample_sum(lat.sum_us as f64 / 1e6);
            let mut m = Metric::from_label(vec![
                label("kind", kind.to_owned()),
                label("shard", s.shard.to_string()),
            ]);
            m.set_histogram(h);
            metrics.push(m);
        }
    }
    if metrics.is_empty() {
        return None;
    }
    let (name, h) = ASK_LATENCY_METRIC;
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(h.to_owned());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(metrics);
    Some(f)
}

/// Registers one metric with a value per shard: a counter (kept monotonic across scrapes by
/// `mono`) or a gauge.
fn register_per_shard(
    registry: &Registry,
    mono: &mut Monotonic,
    name: &'static str,
    help_text: String,
    kind: Kind,
    rows: Vec<(u16, u64)>,
) -> Result<(), RenderError> {
    let opts = Opts::new(name, help_text);
    match kind {
        Kind::Counter => {
            let c = IntCounterVec::new(opts, &["shard"])?;
            for (shard, v) in rows {
                let v = mono.clamp(name, shard, "", v);
                c.with_label_values(&[&shard.to_string()]).inc_by(v);
            }
            registry.register(Box::new(c))?;
        }
        Kind::Gauge => {
            let g = IntGaugeVec::new(opts, &["shard"])?;
            for (shard, v) in rows {
                g.with_label_values(&[&shard.to_string()])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            registry.register(Box::new(g))?;
        }
    }
    Ok(())
}

/// Registers the probe metrics (log, outbox, jobs, recovery time) of `probes`.
fn register_probes(
    registry: &Registry,
    probes: &[ShardProbe],
    mono: &mut Monotonic,
) -> Result<(), RenderError> {
    for m in PROBE_METRICS {
        let rows: Vec<(u16, u64)> = probes
            .iter()
            .filter_map(|p| (m.get)(p).map(|v| (p.shard, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        register_per_shard(registry, mono, m.name, help(m.help, m.unit), m.kind, rows)?;
    }
    let logs: Vec<_> = probes
        .iter()
        .filter_map(|p| p.log.as_ref().map(|l| (p.shard, l)))
        .collect();
    if !logs.is_empty() {
        let (name, h) = RECOVERY_METRIC;
        let g = GaugeVec::new(Opts::new(name, h), &["shard"])?;
        for (shard, l) in logs {
            g.with_label_values(&[&shard.to_string()])
                .set(l.recovery_us as f64 / 1e6);
        }
        registry.register(Box::new(g))?;
    }
    let lags: Vec<(u16, &str, u64)> = probes
        .iter()
        .filter_map(|p| p.journal.as_ref().map(|j| (p.shard, j)))
        .flat_map(|(shard, j)| {
            j.projection_lag
                .iter()
                .map(move |(name, lag)| (shard, name.as_str(), *lag))
        })
        .collect();
    if !lags.is_empty() {
        let (name, h) = PROJECTION_LAG_METRIC;
        let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "projection"])?;
        for (shard, projection, lag) in lags {
            g.with_label_values(&[&shard.to_string(), projection])
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        registry.register(Box::new(g))?;
    }
    let jobs: Vec<_> = probes
        .iter()
        .filter_map(|p| p.jobs.as_ref().map(|j| (p.shard, j)))
        .collect();
    if !jobs.is_empty() {
        let (name, h) = JOBS_METRIC;
        let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "state"])?;
        for (shard, counts) in jobs {
            for s in JOB_STATES {
                let state = job_state_name(s);
                let v = counts.get(state).copied().unwrap_or(0);
                g.with_label_values(&[&shard.to_string(), state])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        registry.register(Box::new(g))?;
    }
    let wfs: Vec<_> = probes
        .iter()
        .filter_map(|p| p.workflows.as_ref().map(|w| (p.shard, w)))
        .collect();
    if !wfs.is_empty() {
        let (name, h) = WORKFLOWS_METRIC;
        let g = IntGaugeVec::new(Opts::new(name, h), &["shard", "state"])?;
        for (shard, w) in wfs {
            for s in WORKFLOW_STATES {
                let v = w.instances.get(s.name()).copied().unwrap_or(0);
                g.with_label_values(&[&shard.to_string(), s.name()])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        registry.register(Box::new(g))?;
    }
    Ok(())
}

/// Every workflow state, in the order the exposition lists them.
const WORKFLOW_STATES: [crate::workflow::InstanceState; 6] = {
    use crate::workflow::InstanceState as S;
    [
        S::Running,
        S::Completed,
        S::Failed,
        S::NonDeterministic,
        S::Cancelled,
        S::Terminated,
    ]
};

/// The group-commit histogram, built from the logs' bucket counts (the `prometheus` crate's
/// `Histogram` observes values one by one; the log keeps the buckets itself, so the family is
/// assembled here). `None` without a log.
fn group_commit_family(probes: &[ShardProbe]) -> Option<prometheus::proto::MetricFamily> {
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let mut metrics = Vec::new();
    for p in probes {
        let Some(l) = p.log.as_ref() else { continue };
        let mut buckets = Vec::with_capacity(quark_persist::GROUP_COMMIT_BUCKETS - 1);
        let mut cumulative = 0;
        // The last bucket (more than 2^(n-2) batches) is the +Inf bucket: the sample count.
        for (i, n) in l.group_commit_sizes[..quark_persist::GROUP_COMMIT_BUCKETS - 1]
            .iter()
            .enumerate()
        {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound((1u64 << i) as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let mut h = Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(l.group_commit_sizes.iter().sum());
        h.set_sample_sum(l.flushed_batches as f64);
        let mut label = LabelPair::default();
        label.set_name("shard".to_owned());
        label.set_value(p.shard.to_string());
        let mut m = Metric::from_label(vec![label]);
        m.set_histogram(h);
        metrics.push(m);
    }
    if metrics.is_empty() {
        return None;
    }
    let (name, h) = GROUP_COMMIT_METRIC;
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(h.to_owned());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(metrics);
    Some(f)
}

/// The exposition for a scrape now.
pub(crate) fn render(shared: &Shared) -> Result<String, RenderError> {
    let phase = shared.phase();
    let stats = shared.stats();
    let shards = match &stats {
        None => None,
        Some(Ok(v)) => Some(v.len()),
        Some(Err(_)) => Some(shared.info.get().map_or(0, |i| i.shards.len())),
    };
    let snaps = match &stats {
        Some(Ok(v)) => Ok(v.as_slice()),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "admin endpoint: a scrape got no shard counters");
            Err(())
        }
        None => Ok(&[][..]),
    };
    let probed = shared.probe();
    let probes = match &probed {
        Some(Ok(v)) => Ok(v.as_slice()),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "admin endpoint: a scrape got no log/jobs/outbox figures");
            Err(())
        }
        None => Ok(&[][..]),
    };
    let mut mono = shared.monotonic.lock().unwrap_or_else(|p| p.into_inner());
    let mut text = encode(
        shards,
        snaps,
        probes,
        phase,
        shared.started.elapsed().as_secs_f64(),
        &mut mono,
    )?;
    if let (Some(m), Some(Ok(live))) = (shared.memory.get(), &stats) {
        let families = super::memory::families(&m.report(live), m.monitor.is_some());
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        text.push_str(&String::from_utf8(out)?);
    }
    if let Some(read) = shared.locality.get() {
        let families = super::locality::families(&read());
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        text.push_str(&String::from_utf8(out)?);
    }
    if let Some(o) = super::load::otlp_report(shared) {
        let mut out = Vec::new();
        TextEncoder::new().encode(&super::load::otlp_families(o), &mut out)?;
        text.push_str(&String::from_utf8(out)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(shard: u16, parks: u64) -> ShardStatsSnapshot {
        ShardStatsSnapshot {
            shard,
            iterations: 10,
            parks,
            live_activations: 3,
            ..Default::default()
        }
    }

    #[test]
    fn counters_never_go_down() {
        let mut mono = Monotonic::default();
        let a = encode(
            Some(1),
            Ok(&[snap(0, 7)]),
            Ok(&[]),
            Phase::Ready,
            1.0,
            &mut mono,
        )
        .unwrap();
        assert!(a.contains("quark_shard_parks_total{shard=\"0\"} 7"), "{a}");
        // An older snapshot (fewer parks) does not lower the exported counter.
        let b = encode(
            Some(1),
            Ok(&[snap(0, 5)]),
            Ok(&[]),
            Phase::Ready,
            1.0,
            &mut mono,
        )
        .unwrap();
        assert!(b.contains("quark_shard_parks_total{shard=\"0\"} 7"), "{b}");
        assert!(b.contains("quark_activations_live{shard=\"0\"} 3"), "{b}");
        assert!(b.contains("quark_admin_stats_failed 0"), "{b}");
    }

    #[test]
    fn a_failed_stats_request_leaves_the_shard_series_out() {
        let mut mono = Monotonic::default();
        let text = encode(Some(2), Err(()), Err(()), Phase::Ready, 1.0, &mut mono).unwrap();
        assert!(text.contains("quark_admin_stats_failed 1"), "{text}");
        assert!(text.contains("quark_shards 2"), "{text}");
        assert!(!text.contains("shard=\""), "{text}");
    }
}
