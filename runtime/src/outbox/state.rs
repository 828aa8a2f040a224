//! Durable state for ordinary actors (Orleans' `IPersistentState`): the state is loaded at
//! activation and [`Save::save`] writes it, with the turn's staged messages and inbox receipt,
//! as one atomic batch. Writers outside the actor use [`DurableStates`] with an expected
//! version (optimistic concurrency).

use std::future::Future;

use quark_persist::{Batch, NewRecord, RecordKind};
use quark_placement::{ActorId, ActorKey};
use quark_shard::{Actor, ActorType, CallError, Context, EngineHandle, Invoke};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::format::{self, STATE_PREFIX};
use super::now_ms;
use super::turn::{self, CommitError};

/// An actor whose whole state is saved as one record (postcard) and loaded at activation.
pub trait DurableState: Actor + Serialize + DeserializeOwned {
    /// Schema version written with the state; bump it when the encoding changes and teach
    /// [`DurableState::upcast`] the old one.
    const SCHEMA_VERSION: u16 = 1;

    /// The state of an actor that was never saved.
    fn initial(key: &ActorKey) -> Self;

    /// Reads a state stored with another schema version. The default refuses.
    fn upcast(schema_version: u16, data: &[u8]) -> Result<Self, String> {
        let _ = data;
        Err(format!(
            "state schema version {schema_version} cannot be read (current {})",
            Self::SCHEMA_VERSION
        ))
    }
}

/// Per-activation bookkeeping.
#[derive(Default)]
struct StateMeta {
    loaded: bool,
    key: Vec<u8>,
    version: u64,
}

/// The [`ActorType`] of a durable-state actor: activations load the last saved state (or
/// [`DurableState::initial`]). Without a log, activations start from `initial` and `save`
/// fails with [`SaveError`]`::Commit(NoLog)`.
///
/// Its activations may move between the shards of a node (`Node::migrate`): the saved state
/// and the inbox move as log records (`ActorType::moves_with_log`), durably on the new shard
/// before the home records the new place; what was not saved is not carried
/// (docs/MIGRATION.md, "Durable actors").
pub fn durable_state<A: DurableState>() -> ActorType<A> {
    ActorType::loaded(|ctx| Box::pin(load::<A>(ctx))).moves_with_log(log_keys)
}

/// The log keys of a durable-state actor that move with it: its state and its inbox.
fn log_keys(id: &ActorId) -> Vec<Vec<u8>> {
    vec![
        format::actor_key(STATE_PREFIX, id),
        format::actor_key(format::INBOX_PREFIX, id),
    ]
}

async fn load<A: DurableState>(ctx: &Context<A>) -> Result<A, quark_shard::LoadError> {
    let key = format::actor_key(STATE_PREFIX, ctx.id());
    let mut version = 0;
    let mut state = None;
    if let Some(log) = ctx.log() {
        if let Some(&lsn) = log.key_lsns(&key).last() {
            let r = log.read(lsn).await?.ok_or_else(|| {
                format!("state of {} at LSN {lsn} is gone from the log", ctx.id())
            })?;
            let (schema, v, _, data) = format::decode_state(&r.payload)
                .map_err(|e| format!("state of {} at LSN {lsn}: {e}", ctx.id()))?;
            let s = if schema == A::SCHEMA_VERSION {
                postcard::from_bytes(data).map_err(|e| {
                    format!("state of {} at LSN {lsn} did not decode: {e}", ctx.id())
                })?
            } else {
                A::upcast(schema, data).map_err(|e| format!("state of {}: {e}", ctx.id()))?
            };
            version = v;
            state = Some(s);
        }
    }
    ctx.extension(|m: &mut StateMeta| {
        *m = StateMeta {
            loaded: true,
            key,
            version,
        }
    });
    Ok(state.unwrap_or_else(|| A::initial(&ctx.id().key)))
}

/// Why a save failed. Nothing of the batch is durable; the activation is deactivated when
/// idle (its memory may be ahead of the log) and reloads on its next message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The type was not registered with [`durable_state`].
    #[error("actor {actor} is not registered with durable_state()")]
    NotDurable {
        /// The actor.
        actor: ActorId,
    },
    /// An earlier save or durable turn of this activation failed, so its memory may be ahead
    /// of the log; it is being reloaded. Retry the call.
    #[error("actor {actor}: an earlier save or durable turn failed; the activation reloads from the log, retry")]
    Stale {
        /// The actor.
        actor: ActorId,
    },
    /// The state did not serialise.
    #[error("actor {actor}: the state did not serialise: {detail}")]
    Encode {
        /// The actor.
        actor: ActorId,
        /// The serialiser's message.
        detail: String,
    },
    /// An outside writer expected another version.
    #[error("actor {actor}: expected version {expected}, the state is at version {actual}")]
    VersionConflict {
        /// The actor.
        actor: ActorId,
        /// Expected by the writer.
        expected: u64,
        /// The state's version.
        actual: u64,
    },
    /// The batch was not written.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Saving a durable-state actor from its handler.
pub trait Save<A: DurableState> {
    /// Writes `state` (pass the handler's `self`), the turn's staged durable messages and the
    /// inbox receipt of the message being handled as one batch; returns the new version once
    /// it is durable. Cancel safety: do not drop it midway.
    fn save(&self, state: &A) -> impl Future<Output = Result<u64, SaveError>>;
}

impl<A: DurableState> Save<A> for Context<A> {
    async fn save(&self, state: &A) -> Result<u64, SaveError> {
        save_at(self, state, None).await
    }
}

async fn save_at<A: DurableState>(
    ctx: &Context<A>,
    state: &A,
    expected: Option<u64>,
) -> Result<u64, SaveError> {
    let actor = || ctx.id().clone();
    let (loaded, key, version) =
        ctx.extension(|m: &mut StateMeta| (m.loaded, m.key.clone(), m.version));
    if !loaded {
        return Err(SaveError::NotDurable { actor: actor() });
    }
    if turn::is_stale(ctx) {
        return Err(SaveError::Stale { actor: actor() });
    }
    if let Some(expected) = expected {
        if expected != version {
            return Err(SaveError::VersionConflict {
                actor: actor(),
                expected,
                actual: version,
            });
        }
    }
    let data = postcard::to_allocvec(state).map_err(|e| SaveError::Encode {
        actor: actor(),
        detail: e.to_string(),
    })?;
    let mut payload = Vec::with_capacity(24 + data.len());
    format::encode_state(
        &mut payload,
        A::SCHEMA_VERSION,
        version + 1,
        now_ms(),
        &data,
    );
    let mut batch = Batch::new();
    batch.push(NewRecord {
        kind: RecordKind::Snapshot,
        key,
        payload,
        expires_at_ms: None,
    });
    match turn::commit_with(ctx, batch).await {
        Ok(_) => {
            ctx.extension(|m: &mut StateMeta| m.version = version + 1);
            Ok(version + 1)
        }
        Err(e) => {
            turn::mark_stale(ctx);
            Err(e.into())
        }
    }
}

/// A state and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// Saves so far (0 = never saved).
    pub version: u64,
    /// The state.
    pub state: T,
}

/// Why a [`DurableStates`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The call to the actor failed (activation failure, shutdown, timeout).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The write was refused or failed.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// The state did not round-trip through its encoding.
    #[error("actor {actor}: reading the state failed: {detail}")]
    Decode {
        /// The actor.
        actor: ActorId,
        /// The decoder's message.
        detail: String,
    },
}

/// Reads and writes durable-state actors of type `A` from outside them, as turns of their
/// activations (in order with their messages).
pub struct DurableStates<A> {
    engine: EngineHandle,
    _a: std::marker::PhantomData<fn() -> A>,
}

impl<A: DurableState> DurableStates<A> {
    /// The actors of type `A` of the node behind `engine` (`node.handle()`).
    pub fn new(engine: EngineHandle) -> Self {
        DurableStates {
            engine,
            _a: std::marker::PhantomData,
        }
    }

    /// The current state and version of `key`.
    pub async fn read(&self, key: impl Into<ActorKey>) -> Result<Versioned<A>, StateError> {
        let r = self.engine.actor_ref::<A>(key);
        let (version, bytes) = r
            .ask(Invoke::new(|a: &mut A, ctx: &Context<A>| {
                Box::pin(async move {
                    let v = ctx.extension(|m: &mut StateMeta| m.version);
                    (v, postcard::to_allocvec(&*a).map_err(|e| e.to_string()))
                })
            }))
            .await?;
        let decode = |detail: String| StateError::Decode {
            actor: r.id().clone(),
            detail,
        };
        let state =
            postcard::from_bytes(&bytes.map_err(decode)?).map_err(|e| decode(e.to_string()))?;
        Ok(Versioned { version, state })
    }

    /// Replaces the state of `key` with `state` if it is at version `expected`; returns the new
    /// version. [`SaveError::VersionConflict`] otherwise (nothing written).
    pub async fn write(
        &self,
        key: impl Into<ActorKey>,
        expected: u64,
        state: A,
    ) -> Result<u64, StateError>
    where
        A: Send,
    {
        let r = self.engine.actor_ref::<A>(key);
        let out = r
            .ask(Invoke::new(move |a: &mut A, ctx: &Context<A>| {
                Box::pin(async move {
                    let v = save_at(ctx, &state, Some(expected)).await?;
                    *a = state;
                    Ok::<u64, SaveError>(v)
                })
            }))
            .await??;
        Ok(out)
    }
}
