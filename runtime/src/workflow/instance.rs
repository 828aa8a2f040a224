//! The instance actor (`quark.wf`, keyed by instance id): loads its history, replays it, runs
//! the orchestration forward one turn at a time and appends its records. Beside it:
//! `messages` (the instance's messages and their turns, and the tasks that run its launched
//! steps) and `sweep` (the per-shard instance table and the resume sweep at start).

mod messages;
mod remote;
mod sweep;

use messages::run_activity;
pub(crate) use messages::{
    child_id, HistoryMsg, InputMsg, PurgeMsg, RaiseMsg, StartMsg, StatusMsg, StopMsg, TimerDue,
    WaitMsg,
};
use sweep::table_history;
use sweep::table_remove;
pub(crate) use sweep::{resume_shard, table_figures, table_page, table_set};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use quark_persist::{Batch, NewRecord, RecordKind};
use quark_placement::ActorKey;
use quark_shard::{Actor, ActorType, Context, Handler, Message};

use super::context::{Execution, Outcome};
use super::handle::{StartOutcome, WorkflowStatus};
use super::history::{self, HistoryEvent, InstanceState, StepKind};
use super::{WfShared, WorkflowError};
use crate::journal::now_ms;

struct Info {
    name: String,
    version: u32,
    run: u64,
    parent: Option<String>,
    started_ms: u64,
    state: InstanceState,
    output: Option<Result<Vec<u8>, String>>,
    finished_ms: Option<u64>,
    events: u64,
    bytes: u64,
    warned: bool,
}

/// A workflow instance: the actor behind one instance id (type `quark.wf`). Reach it through
/// [`super::Workflows`]; its messages are internal.
pub struct WorkflowInstance {
    shared: Arc<WfShared>,
    id: String,
    key: Vec<u8>,
    info: Option<Info>,
    exec: Option<Execution>,
    /// Records produced by the replay at load (past the end of the history) and its outcome,
    /// appended and acted on by `on_activate`.
    deferred: Option<(Vec<(RecordKind, HistoryEvent)>, Outcome)>,
    waiters: Vec<oneshot::Sender<WorkflowStatus>>,
}

impl Actor for WorkflowInstance {
    const TYPE_NAME: &'static str = "quark.wf";

    async fn on_activate(&mut self, ctx: &Context<Self>) {
        if self.info.as_ref().is_some_and(|i| i.state.is_finished()) {
            // Finished: nothing runs here, no need to stay.
            ctx.deactivate_when_idle();
        }
        if let Some((records, outcome)) = self.deferred.take() {
            if let Err(e) = self.drive(ctx, records, Some(outcome)).await {
                tracing::error!(instance = %self.id, error = %crate::ErrorChain(&e), "resuming a workflow instance failed; it reloads on its next message");
                ctx.deactivate_when_idle();
            }
        }
    }
}

/// How long a running instance's activation may stay idle: in effect never. A running
/// instance stays in memory (its timers are actor timers and its launched steps report to the
/// activation: a new activation would launch them again); it deactivates once finished.
const RUNNING_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 86_400);

pub(crate) fn actor_type(shared: Arc<WfShared>) -> ActorType<WorkflowInstance> {
    ActorType::loaded(move |ctx| {
        let shared = Arc::clone(&shared);
        Box::pin(async move { load(ctx, shared).await })
    })
    .idle_timeout(RUNNING_IDLE_TIMEOUT)
}

fn id_of(key: &ActorKey) -> String {
    match key {
        ActorKey::Str(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

async fn load(
    ctx: &Context<WorkflowInstance>,
    shared: Arc<WfShared>,
) -> Result<WorkflowInstance, quark_shard::LoadError> {
    let id = id_of(&ctx.id().key);
    let key = history::instance_key(&id);
    let mut me = WorkflowInstance {
        shared,
        id,
        key,
        info: None,
        exec: None,
        deferred: None,
        waiters: Vec::new(),
    };
    let Some(log) = ctx.log() else {
        return Ok(me);
    };
    let (events, bytes) = read_history(log, &me.id, &me.key).await?;
    if events.is_empty() {
        return Ok(me);
    }
    me.restore(events, bytes)?;
    Ok(me)
}

/// The instance's live records, decoded, and their payload bytes.
pub(crate) async fn read_history(
    log: &quark_shard::ShardLog,
    id: &str,
    key: &[u8],
) -> Result<(Vec<HistoryEvent>, u64), WorkflowError> {
    let lsns = log.key_lsns(key);
    if lsns.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let records = log
        .read_many(&lsns)
        .await
        .map_err(|e| WorkflowError::Read {
            instance: id.to_owned(),
            detail: crate::ErrorChain(&e).to_string(),
        })?;
    let mut bytes = 0;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        bytes += r.payload.len() as u64;
        out.push(
            history::decode(&r.payload).map_err(|detail| WorkflowError::Read {
                instance: id.to_owned(),
                detail: format!("record at LSN {}: {detail}", r.lsn),
            })?,
        );
    }
    Ok((out, bytes))
}

fn is_input(e: &HistoryEvent) -> bool {
    matches!(
        e,
        HistoryEvent::ActivityDone { .. }
            | HistoryEvent::TimerFired { .. }
            | HistoryEvent::EventRaised { .. }
            | HistoryEvent::ChildDone { .. }
            | HistoryEvent::ActorReplied { .. }
    )
}

impl WorkflowInstance {
    /// Rebuilds the instance from its history: a finished one from its last record, a running
    /// one by replaying its run (one poll per recorded input).
    fn restore(&mut self, events: Vec<HistoryEvent>, bytes: u64) -> Result<(), WorkflowError> {
        let Some(HistoryEvent::Started {
            name,
            version,
            input,
            run,
            time_ms,
            parent,
        }) = events.first().cloned()
        else {
            return Err(WorkflowError::Read {
                instance: self.id.clone(),
                detail: format!(
                    "the history does not begin with a Started record (it begins with {:?})",
                    events.first().map(|e| e.kind_name())
                ),
            });
        };
        let mut info = Info {
            name: name.clone(),
            version,
            run,
            parent,
            started_ms: time_ms,
            state: InstanceState::Running,
            output: None,
            finished_ms: None,
            events: events.len() as u64,
            bytes,
            warned: false,
        };
        if let Some(HistoryEvent::Finished {
            state,
            output,
            time_ms,
        }) = events.last()
        {
            info.state = *state;
            info.output = Some(output.clone());
            info.finished_ms = Some(*time_ms);
            table_set(&self.id, &name, *state);
            self.info = Some(info);
            return Ok(());
        }
        let Some(f) = self.shared.orchestration(&name, version) else {
            return Err(WorkflowError::UnknownOrchestration {
                name,
                version: Some(version),
                registered: format!(
                    "{}; instance {:?} started on that version and can only finish on it: register it again",
                    self.shared.registered(),
                    self.id
                ),
            });
        };
        let mut exec = Execution::new(&self.id, run, time_ms, &events[1..], |ctx| f(ctx, input));
        let mut records = Vec::new();
        let mut outcome = exec.poll();
        records.extend(exec.take_records());
        for ev in events[1..].iter().filter(|e| is_input(e)) {
            if !matches!(outcome, Outcome::Pending) {
                break;
            }
            exec.deliver(ev);
            outcome = exec.poll();
            records.extend(exec.take_records());
        }
        table_set(&self.id, &name, InstanceState::Running);
        table_history(&self.id, info.events, info.bytes);
        self.info = Some(info);
        self.exec = Some(exec);
        self.deferred = Some((
            records
                .into_iter()
                .map(|e| (RecordKind::Event, e))
                .collect(),
            outcome,
        ));
        Ok(())
    }

    fn status(&self) -> Result<WorkflowStatus, WorkflowError> {
        let info = self.info.as_ref().ok_or_else(|| WorkflowError::NotFound {
            instance: self.id.clone(),
        })?;
        Ok(WorkflowStatus {
            instance: self.id.clone(),
            name: info.name.clone(),
            version: info.version,
            run: info.run,
            state: info.state,
            parent: info.parent.clone(),
            started_ms: info.started_ms,
            finished_ms: info.finished_ms,
            output: info.output.clone(),
            history_events: info.events,
            history_bytes: info.bytes,
            pending_steps: self
                .exec
                .as_ref()
                .map(|e| e.pending.len() as u64)
                .unwrap_or(0),
        })
    }

    fn new_execution(
        &self,
        info: &Info,
        input: Vec<u8>,
        start_ms: u64,
    ) -> Result<Execution, WorkflowError> {
        let f = self
            .shared
            .orchestration(&info.name, info.version)
            .ok_or_else(|| WorkflowError::UnknownOrchestration {
                name: info.name.clone(),
                version: Some(info.version),
                registered: self.shared.registered(),
            })?;
        Ok(Execution::new(&self.id, info.run, start_ms, &[], |ctx| {
            f(ctx, input)
        }))
    }

    /// Polls the run (unless `first` is the outcome of a poll already made), appends the
    /// records of this turn as one batch, and launches the new steps.
    async fn drive(
        &mut self,
        ctx: &Context<Self>,
        mut records: Vec<(RecordKind, HistoryEvent)>,
        mut first: Option<Outcome>,
    ) -> Result<(), WorkflowError> {
        let mut finished = None;
        while let Some(exec) = self.exec.as_mut() {
            let outcome = match first.take() {
                Some(o) => o,
                None => {
                    let o = exec.poll();
                    records.extend(
                        exec.take_records()
                            .into_iter()
                            .map(|e| (RecordKind::Event, e)),
                    );
                    o
                }
            };
            match outcome {
                Outcome::Pending => break,
                Outcome::Done(out) => {
                    let state = if out.is_ok() {
                        InstanceState::Completed
                    } else {
                        InstanceState::Failed
                    };
                    finished = Some((state, out));
                    break;
                }
                Outcome::NonDeterministic(e) => {
                    tracing::error!(instance = %self.id, "{e}");
                    finished = Some((InstanceState::NonDeterministic, Err(e.to_string())));
                    break;
                }
                Outcome::ContinueAsNew(input) => {
                    let now = now_ms();
                    let info = self
                        .info
                        .as_mut()
                        .expect("invariant: a running instance has its info");
                    info.run += 1;
                    info.events = 0;
                    info.bytes = 0;
                    info.warned = false;
                    records.clear();
                    records.push((
                        RecordKind::Snapshot,
                        HistoryEvent::Started {
                            name: info.name.clone(),
                            version: info.version,
                            input: input.clone(),
                            run: info.run,
                            time_ms: now,
                            parent: info.parent.clone(),
                        },
                    ));
                    let info = self.info.as_ref().expect("invariant: set above");
                    let exec = self.new_execution(info, input, now)?;
                    self.exec = Some(exec);
                }
            }
        }
        // History bounds.
        let cfg = &self.shared.config;
        let info = self
            .info
            .as_mut()
            .expect("invariant: a driven instance has its info");
        let add_bytes: u64 = records
            .iter()
            .map(|(_, e)| history::encode(e).len() as u64)
            .sum();
        let events = info.events + records.len() as u64;
        let bytes = info.bytes + add_bytes;
        if finished.is_none() && (events > cfg.max_history_events || bytes > cfg.max_history_bytes)
        {
            let msg = format!(
                "workflow instance {:?}: its history would reach {events} records and {bytes} bytes, above the limits of {} records and {} bytes ([workflows] max_history_events, max_history_bytes): use continue_as_new to bound it",
                self.id, cfg.max_history_events, cfg.max_history_bytes
            );
            tracing::error!(instance = %self.id, "{msg}");
            // The run's history stays within the limit: this turn's records are dropped (all
            // but a new run's `Started`), and only the `Finished` record is added.
            records.retain(|(kind, _)| *kind == RecordKind::Snapshot);
            finished = Some((InstanceState::Failed, Err(msg)));
        } else if !info.warned
            && (events as f64 >= cfg.max_history_events as f64 * cfg.history_warn_fraction
                || bytes as f64 >= cfg.max_history_bytes as f64 * cfg.history_warn_fraction)
        {
            info.warned = true;
            tracing::warn!(instance = %self.id, events, bytes, max_events = cfg.max_history_events, max_bytes = cfg.max_history_bytes, "a workflow instance's history passed the warning fraction of its limits; use continue_as_new");
        }
        let now = now_ms();
        if let Some((state, out)) = &finished {
            records.push((
                RecordKind::Event,
                HistoryEvent::Finished {
                    state: *state,
                    output: out.clone(),
                    time_ms: now,
                },
            ));
        }
        // `call_actor` steps asked for in this turn: their messages are staged now and written
        // with this batch (sent if and only if the step is recorded).
        let failed_sends = if finished.is_none() {
            self.stage_actor_calls(ctx, &records).await
        } else {
            Vec::new()
        };
        self.append(ctx, &records).await?;
        if let Some((state, out)) = finished {
            self.finish(ctx, state, out, now);
        } else {
            self.launch(ctx);
            let run = self.info.as_ref().map(|i| i.run).unwrap_or(0);
            for (seq, error) in failed_sends {
                // Recorded as the step's (failed) reply by a turn of its own.
                let me = ctx.self_ref();
                let _detached = ctx.engine().spawn_on(ctx.shard(), move || async move {
                    let event = HistoryEvent::ActorReplied {
                        seq,
                        result: Err(error),
                        time_ms: now_ms(),
                    };
                    let _ = me.tell(InputMsg { run, event }).await;
                });
            }
        }
        Ok(())
    }

    /// Stages the message of every `call_actor` step scheduled in `records` in this turn
    /// (the next `append` writes them with the records); returns the steps whose message could
    /// not be staged, with why.
    async fn stage_actor_calls(
        &mut self,
        ctx: &Context<Self>,
        records: &[(RecordKind, HistoryEvent)],
    ) -> Vec<(u64, String)> {
        let (Some(info), Some(exec)) = (self.info.as_ref(), self.exec.as_ref()) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for (_, e) in records {
            let HistoryEvent::Scheduled { seq, step, .. } = e else {
                continue;
            };
            if step.kind != StepKind::Actor {
                continue;
            }
            let Some(send) = exec.pending.get(seq).and_then(|(c, _)| c.send.clone()) else {
                continue;
            };
            if let Err(e) = send.stage(ctx, self.id.clone(), info.run, *seq).await {
                failed.push((*seq, crate::ErrorChain(&e).to_string()));
            }
        }
        failed
    }

    async fn append(
        &mut self,
        ctx: &Context<Self>,
        records: &[(RecordKind, HistoryEvent)],
    ) -> Result<(), WorkflowError> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(log) = ctx.log() else {
            return Err(WorkflowError::NoLog {
                instance: self.id.clone(),
            });
        };
        let mut batch = Batch::new();
        let mut bytes = 0;
        for (kind, e) in records {
            let payload = history::encode(e);
            bytes += payload.len() as u64;
            batch.push(NewRecord {
                kind: *kind,
                key: self.key.clone(),
                payload,
                expires_at_ms: None,
            });
        }
        // The turn's staged outbox records (`call_actor` messages) and, in the delivery turn of
        // a reply, its inbox receipt: written atomically with the history records.
        let taken = crate::outbox::stage_into(ctx, &mut batch);
        match log.append(&batch).await {
            Ok(range) => crate::outbox::committed(ctx, taken, &range),
            Err(source) => {
                crate::outbox::aborted(ctx, taken);
                // The live run is ahead of the log: rebuild from the log on the next message.
                ctx.deactivate_when_idle();
                return Err(WorkflowError::Append {
                    instance: self.id.clone(),
                    source,
                });
            }
        }
        if let Some(info) = self.info.as_mut() {
            info.events += records.len() as u64;
            info.bytes += bytes;
            table_history(&self.id, info.events, info.bytes);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        ctx: &Context<Self>,
        state: InstanceState,
        out: Result<Vec<u8>, String>,
        now: u64,
    ) {
        let cancel_children = state == InstanceState::Cancelled;
        let run = self.info.as_ref().map(|i| i.run).unwrap_or(1);
        let children: Vec<String> = self
            .exec
            .take()
            .map(|e| {
                e.pending
                    .values()
                    .filter(|(c, launched)| *launched && c.step.kind == StepKind::SubOrchestration)
                    .map(|(c, _)| child_id(&self.id, run, c.seq))
                    .collect()
            })
            .unwrap_or_default();
        let info = self
            .info
            .as_mut()
            .expect("invariant: a finished instance has its info");
        info.state = state;
        info.output = Some(out);
        info.finished_ms = Some(now);
        table_set(&self.id, &info.name, state);
        // Finished: nothing more runs here, so the activation may go (it reloads from the
        // history's last record when asked).
        ctx.deactivate_when_idle();
        if cancel_children && !children.is_empty() {
            let engine = ctx.engine();
            let shared = Arc::clone(&self.shared);
            let _detached = engine.clone().spawn_on(ctx.shard(), move || async move {
                let wf = super::Workflows::new(engine, shared);
                for child in children {
                    if let Err(e) = wf.cancel(&child).await {
                        tracing::warn!(child = %child, error = %crate::ErrorChain(&e), "cancelling a child instance failed");
                    }
                }
            });
        }
        if let Ok(st) = self.status() {
            for w in self.waiters.drain(..) {
                let _ = w.send(st.clone());
            }
        }
    }

    /// Starts the work of every issued step not yet launched.
    fn launch(&mut self, ctx: &Context<Self>) {
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        let run = self.info.as_ref().map(|i| i.run).unwrap_or(0);
        let now = now_ms();
        for (seq, (cmd, launched)) in exec.pending.iter_mut() {
            if *launched {
                continue;
            }
            *launched = true;
            let seq = *seq;
            match cmd.step.kind {
                StepKind::Activity => {
                    let me = ctx.self_ref();
                    let shared = Arc::clone(&self.shared);
                    let id = self.id.clone();
                    let name = cmd.step.name.clone();
                    let input = cmd.input.clone();
                    let options = cmd.options.clone();
                    let known = exec.jobs.get(&seq).copied().map(crate::jobs::JobId);
                    let _detached = ctx.engine().spawn_on(ctx.shard(), move || async move {
                        let result = run_activity(
                            &shared, &me, &id, run, seq, &name, input, &options, known,
                        )
                        .await;
                        let _ = me
                            .tell(InputMsg {
                                run,
                                event: HistoryEvent::ActivityDone {
                                    seq,
                                    result,
                                    time_ms: now_ms(),
                                },
                            })
                            .await;
                    });
                }
                StepKind::Timer | StepKind::Event => {
                    if let Some(at) = cmd.fire_at_ms {
                        let delay = Duration::from_millis(at.saturating_sub(now));
                        ctx.set_timer(
                            delay,
                            TimerDue {
                                run,
                                seq,
                                at_ms: at,
                            },
                        );
                    }
                }
                StepKind::SubOrchestration => {
                    let me = ctx.self_ref();
                    let shared = Arc::clone(&self.shared);
                    let engine = ctx.engine();
                    let parent = self.id.clone();
                    let name = cmd.step.name.clone();
                    let input = cmd.input.clone();
                    let _detached = ctx.engine().spawn_on(ctx.shard(), move || async move {
                        let child = child_id(&parent, run, seq);
                        let wf = super::Workflows::new(engine, shared);
                        let result = match wf
                            .start_raw(&name, None, &child, input, Some(parent))
                            .await
                        {
                            Err(e) => Err(crate::ErrorChain(&e).to_string()),
                            Ok(_) => match wf.wait(&child).await {
                                Err(e) => Err(crate::ErrorChain(&e).to_string()),
                                Ok(st) => match (st.state, st.output) {
                                    (InstanceState::Completed, Some(Ok(b))) => Ok(b),
                                    (s, Some(Err(e))) => {
                                        Err(format!("child {child:?} {}: {e}", s.name()))
                                    }
                                    (s, _) => Err(format!("child {child:?} ended {}", s.name())),
                                },
                            },
                        };
                        let _ = me
                            .tell(InputMsg {
                                run,
                                event: HistoryEvent::ChildDone {
                                    seq,
                                    result,
                                    time_ms: now_ms(),
                                },
                            })
                            .await;
                    });
                }
                // The message left with the `Scheduled` record's batch (see `drive`); the
                // reply comes back as a durable message (`ActorReplyMsg`).
                StepKind::Select | StepKind::Actor => {}
            }
        }
    }

    fn running(&self) -> Result<(), WorkflowError> {
        match &self.info {
            None => Err(WorkflowError::NotFound {
                instance: self.id.clone(),
            }),
            Some(i) if i.state.is_finished() => Err(WorkflowError::Finished {
                instance: self.id.clone(),
                state: i.state,
            }),
            Some(_) => Ok(()),
        }
    }
}
