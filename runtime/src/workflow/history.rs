//! The history of a workflow instance: its records in the owning shard's log, under the key
//! `qw/<instance id>`.
//!
//! Every record is one [`HistoryEvent`]. A run starts with a `Started` record written as a log
//! *snapshot* record, so `continue_as_new` (which writes the next run's `Started`) supersedes
//! every record of the previous run: compaction frees them and a load reads only the current
//! run. A purge is a truncate record over the key.

use serde::{Deserialize, Serialize};

/// The prefix of every instance's log key.
pub(crate) const KEY_PREFIX: &[u8] = b"qw/";
/// The format byte written before every history record.
const FORMAT: u8 = 1;

/// The log key of instance `id`.
/// The log key of instance `id`'s history records (`qw/<id>`).
pub fn instance_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_PREFIX.len() + id.len());
    k.extend_from_slice(KEY_PREFIX);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The instance id of a log key written by [`instance_key`].
pub(crate) fn instance_of_key(key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    String::from_utf8(rest.to_vec()).ok()
}

/// What kind of step a history position holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    /// `call_activity`.
    Activity,
    /// A durable `timer`.
    Timer,
    /// `wait_event` (with or without a timeout).
    Event,
    /// `sub_orchestration`.
    SubOrchestration,
    /// `when_any`: the position of a race whose winner is recorded.
    Select,
    /// `call_actor`: a durable message to an actor through the outbox, its reply recorded.
    Actor,
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepKind::Activity => "activity",
            StepKind::Timer => "timer",
            StepKind::Event => "wait_event",
            StepKind::SubOrchestration => "sub_orchestration",
            StepKind::Select => "when_any",
            StepKind::Actor => "call_actor",
        })
    }
}

/// A step as the non-determinism check compares it: kind, name and a hash of its input.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepDesc {
    /// The kind of step.
    pub kind: StepKind,
    /// The activity, event or sub-orchestration name (`"timer"` for a timer, `"when_any"` for
    /// a race).
    pub name: String,
    /// FNV-1a 64 of the step's encoded input (a timer: its duration in ms; a race: its number
    /// of branches).
    pub input_hash: u64,
}

impl std::fmt::Display for StepDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} (input hash {:016x})",
            self.kind, self.name, self.input_hash
        )
    }
}

/// FNV-1a 64 over `bytes`: the input hash of a step.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// It runs (waiting for a step, or between steps).
    Running,
    /// The orchestration returned `Ok`.
    Completed,
    /// The orchestration returned `Err`, or the instance hit a history limit.
    Failed,
    /// Replay asked for a step other than the one its history recorded; the instance stopped.
    NonDeterministic,
    /// Cancelled through the API (its children were cancelled too).
    Cancelled,
    /// Terminated through the API (its children were left alone).
    Terminated,
}

impl InstanceState {
    /// True for every state but `Running`.
    pub fn is_finished(self) -> bool {
        self != InstanceState::Running
    }

    /// The lower-case name (`running`, `completed`, `failed`, `non_deterministic`,
    /// `cancelled`, `terminated`).
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Completed => "completed",
            InstanceState::Failed => "failed",
            InstanceState::NonDeterministic => "non_deterministic",
            InstanceState::Cancelled => "cancelled",
            InstanceState::Terminated => "terminated",
        }
    }

    /// Parses [`InstanceState::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => InstanceState::Running,
            "completed" => InstanceState::Completed,
            "failed" => InstanceState::Failed,
            "non_deterministic" => InstanceState::NonDeterministic,
            "cancelled" => InstanceState::Cancelled,
            "terminated" => InstanceState::Terminated,
            _ => return None,
        })
    }
}

/// One record of an instance's history. Inputs and outputs are the user's types encoded with
/// postcard (serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryEvent {
    /// A run began (the first record of every run; written as a log snapshot record).
    Started {
        /// The orchestration's registered name.
        name: String,
        /// The registered version this run executes.
        version: u32,
        /// The encoded input.
        input: Vec<u8>,
        /// The run number: 1, then one more per `continue_as_new`.
        run: u64,
        /// Wall-clock ms when the run began (`ctx.now()` until the first input).
        time_ms: u64,
        /// The parent instance, for a sub-orchestration.
        parent: Option<String>,
    },
    /// The code asked for step `seq`.
    Scheduled {
        /// The position (0-based, per run).
        seq: u64,
        /// What was asked.
        step: StepDesc,
        /// The step's encoded input (activities and sub-orchestrations).
        input: Vec<u8>,
        /// When the timer (or the event's timeout) fires, ms since the Unix epoch.
        fire_at_ms: Option<u64>,
    },
    /// Activity `seq` finished: its encoded output, or its last error.
    ActivityDone {
        /// The position.
        seq: u64,
        /// Output or error message.
        result: Result<Vec<u8>, String>,
        /// Wall-clock ms of delivery.
        time_ms: u64,
    },
    /// Activity `seq` runs as job `job` (written once the job is enqueued, so that a replay
    /// waits for that job instead of enqueuing the call again).
    ActivityJob {
        /// The position.
        seq: u64,
        /// The job's id (`JobId`'s raw `u64`).
        job: u64,
    },
    /// Timer `seq` (or the timeout of event wait `seq`) fired.
    TimerFired {
        /// The position.
        seq: u64,
        /// Wall-clock ms of delivery.
        time_ms: u64,
    },
    /// An event was raised for the instance.
    EventRaised {
        /// The event's name.
        name: String,
        /// Its encoded payload.
        payload: Vec<u8>,
        /// Wall-clock ms of delivery.
        time_ms: u64,
    },
    /// Sub-orchestration `seq` finished.
    ChildDone {
        /// The position.
        seq: u64,
        /// Output or error message.
        result: Result<Vec<u8>, String>,
        /// Wall-clock ms of delivery.
        time_ms: u64,
    },
    /// Race `seq` (`when_any`) was won by branch `index`.
    Chosen {
        /// The position of the race.
        seq: u64,
        /// The winning branch.
        index: u32,
    },
    /// `ctx.is_patched(id)` returned true for the first time in this run.
    Patched {
        /// The patch id.
        id: String,
    },
    /// The actor called by step `seq` (`call_actor`) replied. Recorded at most once per step:
    /// a reply delivered again (after a crash) finds the step resolved and is dropped.
    ActorReplied {
        /// The position.
        seq: u64,
        /// The encoded reply, or why there is none.
        result: Result<Vec<u8>, String>,
        /// Wall-clock ms of delivery.
        time_ms: u64,
    },
    /// The instance finished (the last record).
    Finished {
        /// How.
        state: InstanceState,
        /// The encoded output (`Ok`) or the error message (`Err`).
        output: Result<Vec<u8>, String>,
        /// Wall-clock ms.
        time_ms: u64,
    },
}

impl HistoryEvent {
    /// The wall-clock time an input carries (what `ctx.now()` shows after it).
    pub(crate) fn time_ms(&self) -> Option<u64> {
        match self {
            HistoryEvent::Started { time_ms, .. }
            | HistoryEvent::ActivityDone { time_ms, .. }
            | HistoryEvent::TimerFired { time_ms, .. }
            | HistoryEvent::EventRaised { time_ms, .. }
            | HistoryEvent::ChildDone { time_ms, .. }
            | HistoryEvent::ActorReplied { time_ms, .. }
            | HistoryEvent::Finished { time_ms, .. } => Some(*time_ms),
            _ => None,
        }
    }

    /// A short name of the record's variant.
    pub fn kind_name(&self) -> &'static str {
        match self {
            HistoryEvent::Started { .. } => "started",
            HistoryEvent::Scheduled { .. } => "scheduled",
            HistoryEvent::ActivityDone { .. } => "activity_done",
            HistoryEvent::ActivityJob { .. } => "activity_job",
            HistoryEvent::TimerFired { .. } => "timer_fired",
            HistoryEvent::EventRaised { .. } => "event_raised",
            HistoryEvent::ChildDone { .. } => "child_done",
            HistoryEvent::Chosen { .. } => "chosen",
            HistoryEvent::Patched { .. } => "patched",
            HistoryEvent::Finished { .. } => "finished",
            HistoryEvent::ActorReplied { .. } => "actor_replied",
        }
    }
}

// Format: { format u8 = 1 | postcard(HistoryEvent) }
/// Encodes one history record's payload.
pub(crate) fn encode(event: &HistoryEvent) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // postcard into a Vec fails only on a serde error of a type we own (no maps with
    // non-string keys, no unsized sequences), so this is an invariant.
    let body = postcard::to_allocvec(event).expect("invariant: a HistoryEvent always encodes");
    out.extend_from_slice(&body);
    out
}

/// Decodes a history record's payload (tools reading a stopped node's log).
pub fn decode_record(payload: &[u8]) -> Result<HistoryEvent, String> {
    decode(payload)
}

/// Decodes a payload written by [`encode`].
pub(crate) fn decode(payload: &[u8]) -> Result<HistoryEvent, String> {
    match payload.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((f, _)) => Err(format!("unknown history record format {f}")),
        None => Err("empty history record".to_owned()),
    }
}

/// `events` as JSON lines: one record per line, the `HistoryEvent` serde form (byte fields are
/// arrays of numbers). The export `history_json` returns and the replay check reads.
pub(crate) fn json_lines(events: &[HistoryEvent]) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for e in events {
        out.push_str(&serde_json::to_string(e)?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_an_unknown_format() {
        let e = HistoryEvent::Scheduled {
            seq: 3,
            step: StepDesc {
                kind: StepKind::Activity,
                name: "charge".into(),
                input_hash: fnv1a(b"x"),
            },
            input: b"x".to_vec(),
            fire_at_ms: None,
        };
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode(&bad).unwrap_err().contains("format 9"));
        assert_eq!(
            instance_of_key(&instance_key("a/b")).as_deref(),
            Some("a/b")
        );
    }
}
