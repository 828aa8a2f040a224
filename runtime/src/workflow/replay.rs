//! The replay check: runs an orchestration against a recorded history (exported with
//! `Workflows::history` / `history_json`), outside a node, and reports non-determinism. Use it
//! in CI to check a code change against production histories.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{Execution, Outcome};
use super::history::HistoryEvent;
use super::{NonDeterminism, WorkflowContext};

/// What a replay check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records in the history checked.
    pub events: usize,
    /// Inputs delivered (one poll each).
    pub inputs: usize,
    /// Steps the code asked for.
    pub steps: u64,
    /// True if the code finished within the history (with `Ok` or `Err`).
    pub finished: bool,
    /// Time the replay took (decoding excluded).
    pub took: Duration,
}

/// Why a replay check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The history does not begin with a `Started` record.
    #[error("the history does not begin with a Started record")]
    NoStart,
    /// The code diverged from the history.
    #[error(transparent)]
    NonDeterministic(#[from] NonDeterminism),
    /// A line of a JSON export did not parse.
    #[error("line {line} of the history export does not parse: {detail}")]
    Json {
        /// The 1-based line.
        line: usize,
        /// The parser's message.
        detail: String,
    },
}

/// Parses a `Workflows::history_json` export.
pub fn parse_history_json(text: &str) -> Result<Vec<HistoryEvent>, ReplayError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReplayError::Json {
                line: i + 1,
                detail: e.to_string(),
            })
        })
        .collect()
}

/// Replays `orchestration` against `history` (one run: its `Started` record first) exactly as
/// an activation does, without running any step: `Ok` if every step the code asks for matches
/// the recorded one, else the [`NonDeterminism`] an instance would stop with. Activities are
/// never called: their recorded results stand in for them (and steps past the end of the
/// history just stay pending).
pub fn replay_check<I, O, E, F, Fut>(
    orchestration: F,
    history: &[HistoryEvent],
) -> Result<ReplayReport, ReplayError>
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(WorkflowContext, I) -> Fut + 'static,
    Fut: Future<Output = Result<O, E>> + 'static,
{
    let Some(HistoryEvent::Started {
        input,
        run,
        time_ms,
        ..
    }) = history.first()
    else {
        return Err(ReplayError::NoStart);
    };
    let instance = format!("replay-check/{run}");
    let began = Instant::now();
    let input = input.clone();
    let mut exec = Execution::new(&instance, *run, *time_ms, &history[1..], move |ctx| {
        Box::pin(async move {
            let input: I = postcard::from_bytes(&input)
                .map_err(|e| format!("the input does not decode: {e}"))?;
            match orchestration(ctx, input).await {
                Ok(o) => postcard::to_allocvec(&o).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    });
    let mut outcome = exec.poll();
    let mut inputs = 0;
    for e in &history[1..] {
        if !matches!(outcome, Outcome::Pending) {
            break;
        }
        if matches!(
            e,
            HistoryEvent::ActivityDone { .. }
                | HistoryEvent::TimerFired { .. }
                | HistoryEvent::EventRaised { .. }
                | HistoryEvent::ChildDone { .. }
                | HistoryEvent::ActorReplied { .. }
        ) {
            exec.deliver(e);
            inputs += 1;
            outcome = exec.poll();
        }
    }
    let took = began.elapsed();
    let steps = exec.steps_issued();
    match outcome {
        Outcome::NonDeterministic(e) => Err(e.into()),
        o => Ok(ReplayReport {
            events: history.len(),
            inputs,
            steps,
            finished: matches!(o, Outcome::Done(_)),
            took,
        }),
    }
}
