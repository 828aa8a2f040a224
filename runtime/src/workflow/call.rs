//! `call_actor`: an exactly-once message from an orchestration to an actor through the
//! outbox, and its reply back as a durable message recorded in the history.
//!
//! The flow: the step's `Scheduled` record and the outbox record of a [`WorkflowCall`] are one
//! log batch of the instance (`WorkflowInstance::append` stages the turn's outbox records into
//! its batch); the outbox delivers the call to the receiver, whose inbox applies it once per
//! message id ([`ActorCallHandler::handle_call`]); the receiver's turn stages a [`CallReply`]
//! to the instance in the batch of its effects and receipt; the instance's delivery turn
//! records `ActorReplied` in the same batch as the reply's receipt (a reply for a step already
//! resolved is acknowledged and dropped).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use quark_shard::{Actor, ActorKey, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::instance::WorkflowInstance;
use crate::outbox::{Durable, DurableHandler, DurableMessage, Retry, SendError};

/// A message an orchestration sends to an actor with `WorkflowContext::call_actor`, with the
/// type of its reply. Serialised with postcard under its stable [`ActorCall::NAME`] (never
/// reuse a name for another layout).
pub trait ActorCall: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name (e.g. `"shop.Reserve.v1"`); the outbox carries the call under it.
    const NAME: &'static str;
    /// What the actor answers (recorded in the calling instance's history).
    type Reply: Serialize + DeserializeOwned + 'static;
}

/// Handling of calls `M` from orchestrations by actor `Self`: at most once per call (the
/// outbox's inbox), with the reply sent back durably. Register it with
/// `NodeBuilder::register_actor_call::<Self, M>()`.
///
/// Like a [`DurableHandler`]: the handler's `save`/`commit` stage their records, and the
/// delivery writes them, the call's receipt and the reply as one batch after the handler
/// returned. Return `Err(Retry)` to have the call delivered again later (only if nothing was
/// committed). A business failure belongs in the reply type (e.g. `Result<T, E>`).
pub trait ActorCallHandler<M: ActorCall>: Actor {
    /// Handles one call and returns its reply.
    fn handle_call(
        &mut self,
        msg: M,
        ctx: &Context<Self>,
    ) -> impl Future<Output = Result<M::Reply, Retry>>;
}

/// The durable message that carries a call (outbox name: the call's [`ActorCall::NAME`]):
/// the calling instance, its run and the step's position (where the reply goes), and the
/// message.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(bound = "")]
pub struct WorkflowCall<M: ActorCall> {
    /// The calling instance.
    pub instance: String,
    /// Its run.
    pub run: u64,
    /// The step's position in the run.
    pub seq: u64,
    /// The message.
    pub msg: M,
}

impl<M: ActorCall> DurableMessage for WorkflowCall<M> {
    const NAME: &'static str = M::NAME;
}

impl<B, M> DurableHandler<WorkflowCall<M>> for B
where
    B: ActorCallHandler<M>,
    M: ActorCall,
{
    async fn handle_durable(
        &mut self,
        call: WorkflowCall<M>,
        ctx: &Context<Self>,
    ) -> Result<(), Retry> {
        let reply = self.handle_call(call.msg, ctx).await?;
        let result = postcard::to_allocvec(&reply)
            .map_err(|e| format!("the reply to {} does not serialise: {e}", M::NAME));
        ctx.send_durable::<WorkflowInstance, CallReply>(
            call.instance,
            CallReply {
                run: call.run,
                seq: call.seq,
                result,
            },
        )
        .await
        .map_err(|e| Retry {
            reason: format!("staging the reply to {}: {e}", M::NAME),
        })
    }
}

/// The reply to a [`WorkflowCall`], to the calling instance.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CallReply {
    /// The caller's run.
    pub run: u64,
    /// The step's position.
    pub seq: u64,
    /// The encoded reply, or why there is none.
    pub result: Result<Vec<u8>, String>,
}

impl DurableMessage for CallReply {
    const NAME: &'static str = "quark.wf.CallReply.v1";
}

type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + 'a>>;
type SendFn = dyn for<'a> Fn(&'a Context<WorkflowInstance>, String, u64, u64) -> SendFuture<'a>;

/// Stages a `call_actor` step's message in the instance's turn (typed at the call site, run
/// by the instance when it writes the step's `Scheduled` record).
#[derive(Clone)]
pub(crate) struct ActorSend(Rc<SendFn>);

impl std::fmt::Debug for ActorSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorSend")
    }
}

impl ActorSend {
    pub(crate) fn new<B, M>(key: ActorKey, msg: Vec<u8>) -> Self
    where
        B: ActorCallHandler<M>,
        M: ActorCall,
    {
        ActorSend(Rc::new(move |ctx, instance, run, seq| {
            let key = key.clone();
            let decoded = postcard::from_bytes::<M>(&msg);
            Box::pin(async move {
                // The bytes were encoded from an `M` by `call_actor`.
                let msg = decoded.map_err(|e| SendError::Encode {
                    actor: ctx.id().clone(),
                    message: M::NAME,
                    detail: e.to_string(),
                })?;
                ctx.send_durable::<B, WorkflowCall<M>>(
                    key,
                    WorkflowCall {
                        instance,
                        run,
                        seq,
                        msg,
                    },
                )
                .await
            })
        }))
    }

    /// Stages the message of step `seq` of run `run` of `instance` in `ctx`'s turn.
    pub(crate) fn stage<'a>(
        &self,
        ctx: &'a Context<WorkflowInstance>,
        instance: String,
        run: u64,
        seq: u64,
    ) -> SendFuture<'a> {
        (self.0)(ctx, instance, run, seq)
    }
}
