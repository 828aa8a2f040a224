//! The instance's messages (start, inputs, events, status, wait, history, stop, purge, the
//! reply of a `call_actor`) and their turns, and the tasks that run its launched activities.

use super::*;

/// Starts the instance (or returns the existing one).
pub(crate) struct StartMsg {
    pub name: String,
    pub version: u32,
    pub input: Vec<u8>,
    pub parent: Option<String>,
}
impl Message for StartMsg {
    type Reply = Result<StartOutcome, WorkflowError>;
}
impl Handler<StartMsg> for WorkflowInstance {
    async fn handle(
        &mut self,
        m: StartMsg,
        ctx: &Context<Self>,
    ) -> Result<StartOutcome, WorkflowError> {
        if let Some(info) = &self.info {
            return Ok(StartOutcome {
                instance: self.id.clone(),
                name: info.name.clone(),
                version: info.version,
                existed: true,
            });
        }
        if ctx.log().is_none() {
            return Err(WorkflowError::NoLog {
                instance: self.id.clone(),
            });
        }
        let now = now_ms();
        let info = Info {
            name: m.name.clone(),
            version: m.version,
            run: 1,
            parent: m.parent.clone(),
            started_ms: now,
            state: InstanceState::Running,
            output: None,
            finished_ms: None,
            events: 0,
            bytes: 0,
            warned: false,
        };
        let exec = self.new_execution(&info, m.input.clone(), now)?;
        self.info = Some(info);
        self.exec = Some(exec);
        let records = vec![(
            RecordKind::Snapshot,
            HistoryEvent::Started {
                name: m.name.clone(),
                version: m.version,
                input: m.input,
                run: 1,
                time_ms: now,
                parent: m.parent,
            },
        )];
        if let Err(e) = self.drive(ctx, records, None).await {
            self.info = None;
            self.exec = None;
            return Err(e);
        }
        let info = self.info.as_ref().expect("invariant: started above");
        if !info.state.is_finished() {
            table_set(&self.id, &info.name, info.state);
            table_history(&self.id, info.events, info.bytes);
        }
        Ok(StartOutcome {
            instance: self.id.clone(),
            name: m.name,
            version: m.version,
            existed: false,
        })
    }
}

/// The id of the child started by step `seq` of run `run` of instance `parent`:
/// `<parent>/<run>.<seq>` (the run keeps the children of successive runs apart).
pub(crate) fn child_id(parent: &str, run: u64, seq: u64) -> String {
    format!("{parent}/{run}.{seq}")
}

/// Runs activity call `seq` to its end: locally, or as a job (the one recorded for it, else a
/// new one whose id is recorded).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_activity(
    shared: &WfShared,
    me: &quark_shard::ActorRef<WorkflowInstance>,
    id: &str,
    run: u64,
    seq: u64,
    name: &str,
    input: Vec<u8>,
    options: &crate::workflow::ActivityOptions,
    known: Option<crate::jobs::JobId>,
) -> Result<Vec<u8>, String> {
    use crate::workflow::activity::{enqueue_job, run_local, wait_job};
    if options.local {
        return run_local(shared, id.to_owned(), run, seq, name, input, options).await;
    }
    if let Some(job) = known {
        if let Some(r) = wait_job(shared, name, job).await {
            return r;
        }
    }
    let job = enqueue_job(shared, id, run, seq, name, input, options).await?;
    let _ = me
        .tell(JobAssigned {
            run,
            seq,
            job: job.0,
        })
        .await;
    match wait_job(shared, name, job).await {
        Some(r) => r,
        None => Err(format!(
            "activity {name:?}: job {job} was forgotten before it finished"
        )),
    }
}

/// Records the job that runs activity `seq` of run `run`.
pub(crate) struct JobAssigned {
    run: u64,
    seq: u64,
    job: u64,
}
impl Message for JobAssigned {
    type Reply = ();
}
impl Handler<JobAssigned> for WorkflowInstance {
    async fn handle(&mut self, m: JobAssigned, ctx: &Context<Self>) {
        let current = self
            .info
            .as_ref()
            .is_some_and(|i| i.run == m.run && !i.state.is_finished());
        let Some(exec) = self.exec.as_mut().filter(|_| current) else {
            return;
        };
        if !exec.pending.contains_key(&m.seq) || exec.jobs.insert(m.seq, m.job).is_some() {
            return;
        }
        let record = [(
            RecordKind::Event,
            HistoryEvent::ActivityJob {
                seq: m.seq,
                job: m.job,
            },
        )];
        if let Err(e) = self.append(ctx, &record).await {
            tracing::warn!(instance = %self.id, error = %crate::ErrorChain(&e), "recording an activity's job failed");
        }
    }
}

/// An input for the run `run` (an activity's or child's result).
pub(crate) struct InputMsg {
    pub run: u64,
    pub event: HistoryEvent,
}
impl Message for InputMsg {
    type Reply = ();
}
impl Handler<InputMsg> for WorkflowInstance {
    async fn handle(&mut self, m: InputMsg, ctx: &Context<Self>) {
        self.input(ctx, m.run, m.event).await;
    }
}

impl crate::outbox::DurableHandler<crate::workflow::CallReply> for WorkflowInstance {
    /// A `call_actor` reply: recorded (with the reply's receipt, in one batch) if its step is
    /// waiting; acknowledged and dropped otherwise (delivered again after a crash, or for a
    /// run that ended).
    async fn handle_durable(
        &mut self,
        m: crate::workflow::CallReply,
        ctx: &Context<Self>,
    ) -> Result<(), crate::outbox::Retry> {
        let event = HistoryEvent::ActorReplied {
            seq: m.seq,
            result: m.result,
            time_ms: now_ms(),
        };
        self.input_checked(ctx, m.run, event)
            .await
            .map_err(|e| crate::outbox::Retry {
                reason: crate::ErrorChain(&e).to_string(),
            })
    }
}

impl WorkflowInstance {
    async fn input(&mut self, ctx: &Context<Self>, run: u64, event: HistoryEvent) {
        if let Err(e) = self.input_checked(ctx, run, event).await {
            tracing::warn!(instance = %self.id, error = %crate::ErrorChain(&e), "recording a workflow step failed; the instance reloads from its history");
        }
    }

    /// Records input `event` of run `run` and runs the code on, if the run is current and the
    /// input is for a waiting step (else nothing happens).
    async fn input_checked(
        &mut self,
        ctx: &Context<Self>,
        run: u64,
        event: HistoryEvent,
    ) -> Result<(), WorkflowError> {
        let current = self
            .info
            .as_ref()
            .is_some_and(|i| i.run == run && !i.state.is_finished());
        let Some(exec) = self.exec.as_mut().filter(|_| current) else {
            return Ok(());
        };
        if !exec.accepts(&event) {
            return Ok(());
        }
        exec.deliver(&event);
        self.drive(ctx, vec![(RecordKind::Event, event)], None)
            .await
    }
}

/// A durable timer (or event timeout) of run `run` is due.
#[derive(Clone)]
pub(crate) struct TimerDue {
    pub(super) run: u64,
    pub(super) seq: u64,
    /// The wall-clock due time (ms since the epoch) the history promises.
    pub(super) at_ms: u64,
}
impl Message for TimerDue {
    type Reply = ();
}
impl Handler<TimerDue> for WorkflowInstance {
    async fn handle(&mut self, m: TimerDue, ctx: &Context<Self>) {
        // The shard's timer counts on its own (monotonic, cached per pump pass) clock, which
        // can reach the delay a little before the wall clock reaches `at_ms`: wait out the rest,
        // so that the recorded fire time, the orchestration's `now`, is never before the due time.
        let now = now_ms();
        if now < m.at_ms {
            ctx.set_timer(Duration::from_millis(m.at_ms - now), m);
            return;
        }
        let event = HistoryEvent::TimerFired {
            seq: m.seq,
            time_ms: now,
        };
        self.input(ctx, m.run, event).await;
    }
}

/// Raises an event.
pub(crate) struct RaiseMsg {
    pub name: String,
    pub payload: Vec<u8>,
}
impl Message for RaiseMsg {
    type Reply = Result<(), WorkflowError>;
}
impl Handler<RaiseMsg> for WorkflowInstance {
    async fn handle(&mut self, m: RaiseMsg, ctx: &Context<Self>) -> Result<(), WorkflowError> {
        self.running()?;
        let event = HistoryEvent::EventRaised {
            name: m.name,
            payload: m.payload,
            time_ms: now_ms(),
        };
        let exec = self
            .exec
            .as_mut()
            .expect("invariant: a running instance has a run");
        exec.deliver(&event);
        self.drive(ctx, vec![(RecordKind::Event, event)], None)
            .await
    }
}

/// Status.
pub(crate) struct StatusMsg;
impl Message for StatusMsg {
    type Reply = Result<WorkflowStatus, WorkflowError>;
}
impl Handler<StatusMsg> for WorkflowInstance {
    async fn handle(
        &mut self,
        _: StatusMsg,
        _: &Context<Self>,
    ) -> Result<WorkflowStatus, WorkflowError> {
        self.status()
    }
}

/// Wait for the end.
pub(crate) struct WaitMsg;
impl Message for WaitMsg {
    type Reply = Result<oneshot::Receiver<WorkflowStatus>, WorkflowError>;
}
impl Handler<WaitMsg> for WorkflowInstance {
    async fn handle(
        &mut self,
        _: WaitMsg,
        _: &Context<Self>,
    ) -> Result<oneshot::Receiver<WorkflowStatus>, WorkflowError> {
        let st = self.status()?;
        let (tx, rx) = oneshot::channel();
        if st.state.is_finished() {
            let _ = tx.send(st);
        } else {
            self.waiters.retain(|w| !w.is_canceled());
            self.waiters.push(tx);
        }
        Ok(rx)
    }
}

/// The history.
pub(crate) struct HistoryMsg;
impl Message for HistoryMsg {
    type Reply = Result<Vec<HistoryEvent>, WorkflowError>;
}
impl Handler<HistoryMsg> for WorkflowInstance {
    async fn handle(
        &mut self,
        _: HistoryMsg,
        ctx: &Context<Self>,
    ) -> Result<Vec<HistoryEvent>, WorkflowError> {
        self.status()?;
        let Some(log) = ctx.log() else {
            return Err(WorkflowError::NoLog {
                instance: self.id.clone(),
            });
        };
        Ok(read_history(log, &self.id, &self.key).await?.0)
    }
}

/// Cancel or terminate.
pub(crate) struct StopMsg {
    pub state: InstanceState,
}
impl Message for StopMsg {
    type Reply = Result<WorkflowStatus, WorkflowError>;
}
impl Handler<StopMsg> for WorkflowInstance {
    async fn handle(
        &mut self,
        m: StopMsg,
        ctx: &Context<Self>,
    ) -> Result<WorkflowStatus, WorkflowError> {
        self.running()?;
        let now = now_ms();
        let reason = format!("{} through the API", m.state.name());
        let records = vec![(
            RecordKind::Event,
            HistoryEvent::Finished {
                state: m.state,
                output: Err(reason.clone()),
                time_ms: now,
            },
        )];
        self.append(ctx, &records).await?;
        self.finish(ctx, m.state, Err(reason), now);
        self.status()
    }
}

/// Purge a finished instance.
pub(crate) struct PurgeMsg;
impl Message for PurgeMsg {
    type Reply = Result<(), WorkflowError>;
}
impl Handler<PurgeMsg> for WorkflowInstance {
    async fn handle(&mut self, _: PurgeMsg, ctx: &Context<Self>) -> Result<(), WorkflowError> {
        let st = self.status()?;
        if !st.state.is_finished() {
            return Err(WorkflowError::Running {
                instance: self.id.clone(),
            });
        }
        let Some(log) = ctx.log() else {
            return Err(WorkflowError::NoLog {
                instance: self.id.clone(),
            });
        };
        let mut batch = Batch::new();
        batch.truncate(&self.key, u64::MAX);
        log.append(&batch)
            .await
            .map_err(|source| WorkflowError::Append {
                instance: self.id.clone(),
                source,
            })?;
        // The activation stays (empty): a start of the same id may already be queued behind
        // this purge, and a deactivation requested now would take that new run down with it.
        self.info = None;
        self.exec = None;
        table_remove(&self.id);
        Ok(())
    }
}
