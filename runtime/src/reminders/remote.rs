//! Every actor's reminders across a cluster: the reminder gateway.
//!
//! A node with a type registered for reminders also registers the actor [`ReminderGateway`]
//! (type `quark.reminders`) and its wire messages. The admin endpoint of any node addresses the
//! gateway of each member (a gateway key that the cluster's placement puts there, as the job
//! handle does) to list every actor's reminders page by page, or to cancel one actor's
//! reminder: `quark reminders list|cancel --addr` (see `docs/JOBS.md`).

use quark_net::rkyv;
use quark_net::WireMessage;
use quark_shard::{Actor, Context, EngineHandle, Handler, Message, ShardId};

use super::service::{self, ListPos, ListedReminder};
use super::ReminderError;

/// The actor that serves reminder listings and cancellations to other nodes (type name
/// `quark.reminders`).
#[derive(Default)]
pub struct ReminderGateway;

impl Actor for ReminderGateway {
    const TYPE_NAME: &'static str = "quark.reminders";
}

/// A position in a node's listing of every reminder: the shard, then (group, actor, name)
/// within it. A page starts at it (inclusive).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
pub struct ReminderPos {
    /// The shard.
    pub shard: u16,
    /// The group of the actor's table on the shard.
    pub group: u32,
    /// The actor, encoded (type name length, type name, key).
    pub actor: Vec<u8>,
    /// The reminder's name.
    pub name: String,
}

impl ReminderPos {
    /// The first position after this one.
    pub fn successor(&self) -> ReminderPos {
        let mut next = self.clone();
        next.name.push('\0');
        next
    }
}

/// One reminder of a node's listing.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct ListedRemote {
    /// Where it is (shard, group, actor, name).
    pub pos: ReminderPos,
    /// The first occurrence (ms since the Unix epoch).
    pub first_due_ms: u64,
    /// The period in ms (0: one-shot).
    pub period_ms: u64,
    /// The next occurrence at or after now.
    pub next_due_ms: u64,
}

/// One page of a node's reminders.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteReminderPage {
    /// The reminders, by position.
    pub items: Vec<ListedRemote>,
    /// Where the node's next page starts (`None`: the node has no more).
    pub next: Option<ReminderPos>,
}

impl WireMessage for RemoteReminderPage {
    const WIRE_NAME: &'static str = "quark.reminders.Page";
}

/// Lists up to `limit` reminders of every actor on the receiving node (of type `type_name`
/// if given), from `from` on.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteReminderList {
    /// Only actors of this type.
    pub type_name: Option<String>,
    /// Where the page starts (`None`: the beginning).
    pub from: Option<ReminderPos>,
    /// Page size (1 to [`REMINDER_PAGE_MAX`]).
    pub limit: u32,
}

/// The largest page of a [`RemoteReminderList`].
pub const REMINDER_PAGE_MAX: u32 = 1001;

impl Message for RemoteReminderList {
    type Reply = Result<RemoteReminderPage, RemoteReminderError>;
}

impl WireMessage for RemoteReminderList {
    const WIRE_NAME: &'static str = "quark.reminders.List";
}

/// Cancels actor `actor`'s reminder `name` on the receiving node (every shard is asked; the
/// owner cancels it). The reply says whether it existed.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteReminderCancel {
    /// The actor's type (must be registered for reminders there).
    pub type_name: String,
    /// The actor, encoded (type name length, type name, key).
    pub actor: Vec<u8>,
    /// The reminder's name.
    pub name: String,
}

impl Message for RemoteReminderCancel {
    type Reply = Result<bool, RemoteReminderError>;
}

impl WireMessage for RemoteReminderCancel {
    const WIRE_NAME: &'static str = "quark.reminders.Cancel";
}

/// Why a node refused a reminder request (the node's error, printed with its causes).
#[derive(
    Debug, Clone, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
pub enum RemoteReminderError {
    /// The node runs no reminders.
    #[error("the node runs no reminders")]
    NotRunning,
    /// The actor type is not registered for reminders there.
    #[error("actor type {0:?} is not registered for reminders there")]
    NotRegistered(String),
    /// Reading or writing the records failed, or a shard stopped.
    #[error("the node failed: {0}")]
    Failed(String),
}

impl WireMessage for RemoteReminderError {
    const WIRE_NAME: &'static str = "quark.reminders.Error";
}

impl From<ReminderError> for RemoteReminderError {
    fn from(e: ReminderError) -> Self {
        match e {
            ReminderError::NotRunning => RemoteReminderError::NotRunning,
            ReminderError::NotRegistered { actor_type } => {
                RemoteReminderError::NotRegistered(actor_type)
            }
            other => RemoteReminderError::Failed(crate::ErrorChain(&other).to_string()),
        }
    }
}

impl Handler<RemoteReminderList> for ReminderGateway {
    async fn handle(
        &mut self,
        msg: RemoteReminderList,
        ctx: &Context<Self>,
    ) -> Result<RemoteReminderPage, RemoteReminderError> {
        let engine = ctx.engine();
        let limit = msg.limit.clamp(1, REMINDER_PAGE_MAX) as usize;
        Ok(list_node(&engine, msg.type_name, msg.from.unwrap_or_default(), limit).await?)
    }
}

impl Handler<RemoteReminderCancel> for ReminderGateway {
    async fn handle(
        &mut self,
        msg: RemoteReminderCancel,
        ctx: &Context<Self>,
    ) -> Result<bool, RemoteReminderError> {
        let engine = ctx.engine();
        Ok(cancel_on_node(&engine, msg.type_name, msg.actor, msg.name).await?)
    }
}

/// Up to `limit` reminders of every actor on this node (of type `type_name`, if given), from
/// `from` on, by (shard, group, actor, name). The page is short only when the node has no
/// more (`next` is then `None`).
pub(crate) async fn list_node(
    engine: &EngineHandle,
    type_name: Option<String>,
    from: ReminderPos,
    limit: usize,
) -> Result<RemoteReminderPage, ReminderError> {
    let mut items = Vec::new();
    let mut shard: ShardId = from.shard;
    let mut pos = ListPos {
        group: from.group,
        actor: from.actor,
        name: from.name,
    };
    while shard < engine.shard_count() {
        let want = limit - items.len();
        let t = type_name.clone();
        let p = pos.clone();
        let page = engine
            .spawn_on(shard, move || async move {
                match service::local() {
                    Some(svc) => svc.list_all(p, t.as_deref(), want).await,
                    None => Err(ReminderError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(ReminderError::Stopped))?;
        items.extend(
            page.items
                .into_iter()
                .map(|ListedReminder { pos, info }| ListedRemote {
                    pos: ReminderPos {
                        shard,
                        group: pos.group,
                        actor: pos.actor,
                        name: pos.name,
                    },
                    first_due_ms: info.first_due_ms,
                    period_ms: info.period_ms,
                    next_due_ms: info.next_due_ms,
                }),
        );
        match page.next {
            Some(next) => pos = next,
            None => {
                shard += 1;
                pos = ListPos::default();
            }
        }
        if items.len() >= limit {
            break;
        }
    }
    let next = (shard < engine.shard_count()).then_some(ReminderPos {
        shard,
        group: pos.group,
        actor: pos.actor,
        name: pos.name,
    });
    Ok(RemoteReminderPage { items, next })
}

/// Cancels actor `actor`'s reminder `name` on every shard of this node; whether it existed.
pub(crate) async fn cancel_on_node(
    engine: &EngineHandle,
    type_name: String,
    actor: Vec<u8>,
    name: String,
) -> Result<bool, ReminderError> {
    let mut existed = false;
    for s in 0..engine.shard_count() {
        let (t, a, n) = (type_name.clone(), actor.clone(), name.clone());
        existed |= engine
            .spawn_on(s, move || async move {
                match service::local() {
                    Some(svc) if !svc.delivers(&t) => {
                        Err(ReminderError::NotRegistered { actor_type: t })
                    }
                    Some(svc) => svc.del(a, n).await,
                    None => Err(ReminderError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(ReminderError::Stopped))?;
    }
    Ok(existed)
}
