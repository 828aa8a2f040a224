//! Sagas: multi-actor business transactions without distributed locks. A saga is a
//! durable-state actor that runs its steps one after the other; each step's action is a durable
//! message to a participant (through the outbox), and the participant answers with a durable
//! [`SagaReply`]. When a step is refused, or its reply does not come within the step timeout,
//! the saga runs the compensations of the steps before it (and of the timed-out step) in
//! reverse order, again through the outbox. Progress is saved with each message, in the same
//! batch, so a crash resumes where it was.
//!
//! Participants receive a [`SagaStep`] inside their messages and answer with [`reply`].
//! Compensations must be idempotent and must accept a step whose action never ran (after a
//! timeout the saga cannot know whether it did).

use std::future::Future;
use std::time::Duration;

use quark_placement::ActorKey;
use quark_shard::{Actor, Context, EngineHandle, Handler, Invoke, Message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::state::{durable_state, DurableState, Save, SaveError};
use super::turn::SendError;
use super::{Durable, DurableHandler, DurableMessage, Retry};

/// A saga's definition and data: its steps and their compensations.
pub trait SagaDef: Serialize + DeserializeOwned + Send + 'static {
    /// The saga actor type's name.
    const TYPE_NAME: &'static str;
    /// How long a step (or compensation) may wait for its reply before the saga compensates.
    const STEP_TIMEOUT: Duration = Duration::from_secs(30);

    /// Number of steps.
    fn step_count(&self) -> u32;

    /// Stages the action of step `step`: send the participant a durable message carrying
    /// `info` (with `ctx.send_durable`).
    fn action(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<SagaActor<Self>>,
    ) -> impl Future<Output = Result<(), SendError>>;

    /// Stages the compensation of step `step`, carrying `info`.
    fn compensate(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<SagaActor<Self>>,
    ) -> impl Future<Output = Result<(), SendError>>;
}

/// What a participant needs to answer a step: put it in the step's message, pass it to
/// [`reply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStep {
    /// The saga's key.
    pub saga: String,
    /// The step.
    pub step: u32,
    /// True for a compensation.
    pub compensation: bool,
}

/// A participant's answer to a step or compensation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaReply {
    /// The step answered.
    pub step: SagaStep,
    /// The action (or compensation) was applied.
    pub ok: bool,
    /// Why not, when refused.
    pub reason: String,
}

impl DurableMessage for SagaReply {
    const NAME: &'static str = "quark.saga.Reply.v1";
}

/// Answers `step` of saga type `D` from a participant's durable handler; it commits with the
/// participant's turn (its save, or `ctx.commit()`).
pub async fn reply<D: SagaDef, A: Actor>(
    ctx: &Context<A>,
    step: SagaStep,
    ok: bool,
    reason: impl Into<String>,
) -> Result<(), SendError> {
    let key = ActorKey::from(step.saga.as_str());
    ctx.send_durable::<SagaActor<D>, SagaReply>(
        key,
        SagaReply {
            step,
            ok,
            reason: reason.into(),
        },
    )
    .await
}

/// Where a saga is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaPhase {
    /// Not started.
    New,
    /// Waiting for the reply of step `0`.
    Running(u32),
    /// Waiting for the reply of the compensation of step `0`.
    Compensating(u32),
    /// Every step applied.
    Completed,
    /// Every needed compensation applied.
    Compensated,
    /// A compensation was refused: needs an operator.
    Stuck(String),
}

/// A saga actor's durable state.
#[derive(Serialize, Deserialize)]
#[serde(bound = "D: SagaDef")]
pub struct SagaActor<D> {
    def: Option<D>,
    phase: SagaPhase,
    /// Why the saga compensates (the refusal or the timeout).
    cause: Option<String>,
    /// Counts timers, so that a stale timeout is ignored.
    epoch: u64,
}

impl<D: SagaDef> Actor for SagaActor<D> {
    const TYPE_NAME: &'static str = D::TYPE_NAME;

    async fn on_activate(&mut self, ctx: &Context<Self>) {
        // After a restart: wait for the pending reply again, with a fresh timeout.
        if matches!(
            self.phase,
            SagaPhase::Running(_) | SagaPhase::Compensating(_)
        ) {
            ctx.set_timer(D::STEP_TIMEOUT, StepTimeout { epoch: self.epoch });
        }
    }
}

impl<D: SagaDef> DurableState for SagaActor<D> {
    fn initial(_key: &ActorKey) -> Self {
        SagaActor {
            def: None,
            phase: SagaPhase::New,
            cause: None,
            epoch: 0,
        }
    }
}

/// Registers saga type `D` on a node builder (its actor and its reply message).
pub fn register<D: SagaDef>(builder: crate::NodeBuilder) -> crate::NodeBuilder {
    builder
        .register(durable_state::<SagaActor<D>>())
        .durable::<SagaActor<D>, SagaReply>()
}

/// Why a saga could not be started or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The call to the saga actor failed.
    #[error(transparent)]
    Call(#[from] crate::CallError),
    /// Staging the first step failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Saving the saga failed.
    #[error(transparent)]
    Save(#[from] SaveError),
}

/// A saga's phase and why it compensated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaStatus {
    /// Where it is.
    pub phase: SagaPhase,
    /// The refusal or timeout that made it compensate.
    pub cause: Option<String>,
}

/// Starts and inspects sagas of type `D`.
pub struct Sagas<D> {
    engine: EngineHandle,
    _d: std::marker::PhantomData<fn() -> D>,
}

impl<D: SagaDef> Sagas<D> {
    /// The sagas of the node behind `engine`.
    pub fn new(engine: EngineHandle) -> Self {
        Sagas {
            engine,
            _d: std::marker::PhantomData,
        }
    }

    /// Starts saga `key` with `def` (its first step is staged and saved with it). Starting a
    /// key that was started before changes nothing and returns its status (idempotent).
    pub async fn start(&self, key: &str, def: D) -> Result<SagaStatus, SagaError> {
        let r = self.engine.actor_ref::<SagaActor<D>>(key);
        r.ask(Invoke::new(move |s: &mut SagaActor<D>, ctx| {
            Box::pin(async move {
                if s.phase == SagaPhase::New {
                    s.def = Some(def);
                    s.advance(ctx, 0).await?;
                    ctx.save(s).await?;
                }
                Ok(s.status())
            })
        }))
        .await?
    }

    /// The status of saga `key`.
    pub async fn status(&self, key: &str) -> Result<SagaStatus, SagaError> {
        let r = self.engine.actor_ref::<SagaActor<D>>(key);
        Ok(r.ask(Invoke::new(|s: &mut SagaActor<D>, _ctx| {
            Box::pin(async move { s.status() })
        }))
        .await?)
    }
}

fn saga_key<D: SagaDef>(ctx: &Context<SagaActor<D>>) -> String {
    match &ctx.id().key {
        ActorKey::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl<D: SagaDef> SagaActor<D> {
    fn status(&self) -> SagaStatus {
        SagaStatus {
            phase: self.phase.clone(),
            cause: self.cause.clone(),
        }
    }

    fn arm(&mut self, ctx: &Context<Self>) {
        self.epoch += 1;
        ctx.set_timer(D::STEP_TIMEOUT, StepTimeout { epoch: self.epoch });
    }

    /// Stages step `step`'s action (or completes).
    async fn advance(&mut self, ctx: &Context<Self>, step: u32) -> Result<(), SendError> {
        let def = self
            .def
            .as_ref()
            .expect("invariant: a started saga has its definition");
        if step >= def.step_count() {
            self.phase = SagaPhase::Completed;
            return Ok(());
        }
        let info = SagaStep {
            saga: saga_key(ctx),
            step,
            compensation: false,
        };
        def.action(step, info, ctx).await?;
        self.phase = SagaPhase::Running(step);
        self.arm(ctx);
        Ok(())
    }

    /// Stages the compensation of `step` (counting down), or ends compensated.
    async fn compensate_from(
        &mut self,
        ctx: &Context<Self>,
        step: Option<u32>,
    ) -> Result<(), SendError> {
        let Some(step) = step else {
            self.phase = SagaPhase::Compensated;
            return Ok(());
        };
        let def = self
            .def
            .as_ref()
            .expect("invariant: a started saga has its definition");
        let info = SagaStep {
            saga: saga_key(ctx),
            step,
            compensation: true,
        };
        def.compensate(step, info, ctx).await?;
        self.phase = SagaPhase::Compensating(step);
        self.arm(ctx);
        Ok(())
    }
}

fn retry(e: impl std::fmt::Display) -> Retry {
    Retry {
        reason: e.to_string(),
    }
}

impl<D: SagaDef> DurableHandler<SagaReply> for SagaActor<D> {
    async fn handle_durable(&mut self, m: SagaReply, ctx: &Context<Self>) -> Result<(), Retry> {
        match (&self.phase, m.step.compensation) {
            (SagaPhase::Running(s), false) if *s == m.step.step => {
                if m.ok {
                    self.advance(ctx, s + 1).await.map_err(retry)?;
                } else {
                    self.cause = Some(format!("step {s} refused: {}", m.reason));
                    let s = *s;
                    self.compensate_from(ctx, s.checked_sub(1))
                        .await
                        .map_err(retry)?;
                }
            }
            (SagaPhase::Compensating(s), true) if *s == m.step.step => {
                if m.ok {
                    let s = *s;
                    self.compensate_from(ctx, s.checked_sub(1))
                        .await
                        .map_err(retry)?;
                } else {
                    self.phase =
                        SagaPhase::Stuck(format!("compensation of step {s} refused: {}", m.reason));
                }
            }
            // A late or repeated reply (e.g. after a timeout): nothing to do but record it.
            _ => {}
        }
        ctx.save(self).await.map_err(retry)?;
        Ok(())
    }
}

/// The step timer (not durable: re-armed at activation).
#[derive(Clone)]
struct StepTimeout {
    epoch: u64,
}

impl Message for StepTimeout {
    type Reply = ();
}

impl<D: SagaDef> Handler<StepTimeout> for SagaActor<D> {
    async fn handle(&mut self, m: StepTimeout, ctx: &Context<Self>) {
        if m.epoch != self.epoch {
            return;
        }
        let r = match self.phase.clone() {
            SagaPhase::Running(s) => {
                self.cause = Some(format!("step {s} timed out after {:?}", D::STEP_TIMEOUT));
                // The action may have run: compensate it too.
                self.compensate_from(ctx, Some(s)).await
            }
            SagaPhase::Compensating(_) => {
                // The compensation is in the outbox, which retries it until it is delivered
                // or dead-lettered: keep waiting.
                self.arm(ctx);
                return;
            }
            _ => return,
        };
        let saved = match r {
            Ok(()) => ctx.save(self).await.map(|_| ()),
            Err(e) => {
                tracing::warn!(saga = %ctx.id(), error = %e, "saga timeout: staging failed; retrying at the next timeout");
                self.arm(ctx);
                return;
            }
        };
        if let Err(e) = saved {
            tracing::warn!(saga = %ctx.id(), error = %e, "saga timeout: saving failed");
        }
    }
}
