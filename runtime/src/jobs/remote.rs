//! Enqueue from other nodes and from a [`crate::Client`]: the job gateway.
//!
//! A node with a registered job type also registers the actor [`JobGateway`] and its wire
//! message [`RemoteEnqueue`]. The gateway `(JobGateway, key)` lives where the cluster's
//! placement puts `key`, and enqueues there: so the jobs of one concurrency key (the gateway's
//! key, see [`RemoteEnqueue::gateway_key`]) are all owned by one node, whichever node or client
//! sent them. The payload crosses as JSON and is checked against the job type on the owner.
//!
//! ```no_run
//! use quark::jobs::remote::{JobGateway, RemoteEnqueue};
//! use quark::jobs::{Job, JobOptions};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u64 }
//! # impl Job for Resize { const TYPE_NAME: &'static str = "resize"; }
//! # fn f(client: &quark::Client) {
//! let msg = RemoteEnqueue::new(&Resize { image: 7 }, JobOptions::default().concurrency("acme", 2))
//!     .expect("serialises");
//! let gateway = client.actor_ref::<JobGateway>(msg.gateway_key());
//! let id = quark::block_on(gateway.ask(msg)).expect("delivered").expect("enqueued");
//! # }
//! ```
//! (The client must know the message: `Client::builder().message::<RemoteEnqueue>()`.)

use std::time::Duration;

use quark_net::rkyv;
use quark_net::WireMessage;
use quark_shard::{Actor, ActorKey, Context, Handler, Message};

use super::{Job, JobId, JobOptions, NewJob, Schedule};

/// The actor that enqueues jobs sent from other nodes and clients (type name `quark.jobs`).
#[derive(Default)]
pub struct JobGateway;

impl Actor for JobGateway {
    const TYPE_NAME: &'static str = "quark.jobs";
}

/// An enqueue sent to a [`JobGateway`]: one job, with the options that cross the wire.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteEnqueue {
    /// The registered job type's name.
    pub type_name: String,
    /// The payload as JSON (decoded by the owner with the type's serde implementation).
    pub payload_json: String,
    /// Priority (higher first).
    pub priority: i32,
    /// Not before this long after the owner accepted it, in ms (0: now).
    pub delay_ms: u64,
    /// Not before this wall-clock time (ms since the Unix epoch), if set.
    pub at_ms: Option<u64>,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Concurrency key and its limit.
    pub concurrency: Option<(String, u32)>,
}

impl RemoteEnqueue {
    /// The enqueue of `job` with `options` (priority, a delay, unique and concurrency keys
    /// cross; the other options take the job type's defaults on the owner). Fails if the job
    /// does not serialise to JSON.
    pub fn new<J: Job>(job: &J, options: JobOptions) -> Result<Self, serde_json::Error> {
        let (delay_ms, at_ms) = match options.schedule {
            Schedule::Now => (0, None),
            Schedule::After(d) => (d.as_millis() as u64, None),
            Schedule::AtMs(ms) => (0, Some(ms)),
        };
        Ok(RemoteEnqueue {
            type_name: J::TYPE_NAME.to_owned(),
            payload_json: serde_json::to_string(job)?,
            priority: options.priority,
            delay_ms,
            at_ms,
            unique_key: options.unique_key,
            concurrency: options
                .concurrency_key
                .map(|k| (k, options.concurrency_limit.unwrap_or(1))),
        })
    }

    /// The gateway key for this job: its concurrency key, else its unique key, else a key of
    /// the current time (jobs without a key are spread over the nodes).
    pub fn gateway_key(&self) -> ActorKey {
        match (&self.concurrency, &self.unique_key) {
            (Some((k, _)), _) | (None, Some(k)) => ActorKey::from(k.as_str()),
            (None, None) => ActorKey::U64(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
                    .unwrap_or(0),
            ),
        }
    }

    fn into_new_job(self) -> NewJob {
        let mut o = JobOptions::default().priority(self.priority);
        if let Some(ms) = self.at_ms {
            o = o.at_ms(ms);
        } else if self.delay_ms > 0 {
            o = o.after(Duration::from_millis(self.delay_ms));
        }
        if let Some(u) = self.unique_key {
            o = o.unique(u);
        }
        if let Some((k, limit)) = self.concurrency {
            o = o.concurrency(k, limit);
        }
        NewJob::json(self.type_name, self.payload_json, o)
    }
}

/// Why a [`RemoteEnqueue`] was refused by the owner (nothing was stored). The cause is the
/// owner's [`super::EnqueueError`], printed with its causes (it does not cross the wire as a
/// type).
#[derive(
    Debug, Clone, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
pub enum RemoteEnqueueError {
    /// The owner refused the job (unknown type, payload that does not decode, bad options):
    /// the owner's error, with its causes.
    #[error("the owning node refused the job: {0}")]
    Refused(String),
    /// The owner has no job queue (no `[log]`, or the type is not registered there).
    #[error("the owning node runs no job queue")]
    NotRunning,
}

impl WireMessage for RemoteEnqueueError {
    const WIRE_NAME: &'static str = "quark.jobs.EnqueueError";
}

impl Message for RemoteEnqueue {
    type Reply = Result<u64, RemoteEnqueueError>;
}

impl WireMessage for RemoteEnqueue {
    const WIRE_NAME: &'static str = "quark.jobs.Enqueue";
}

impl Handler<RemoteEnqueue> for JobGateway {
    async fn handle(
        &mut self,
        msg: RemoteEnqueue,
        _: &Context<Self>,
    ) -> Result<u64, RemoteEnqueueError> {
        let jobs = super::queue::local_queue()
            .map(|q| q.jobs())
            .ok_or(RemoteEnqueueError::NotRunning)?;
        match jobs.enqueue_batch(vec![msg.into_new_job()]).await {
            Ok(ids) => Ok(ids.first().map_or(0, |id: &JobId| id.0)),
            Err(super::EnqueueError::NotRunning) => Err(RemoteEnqueueError::NotRunning),
            Err(e) => Err(RemoteEnqueueError::Refused(
                crate::ErrorChain(&e).to_string(),
            )),
        }
    }
}

// ---- Operations on jobs from other nodes and clients (see `super::cluster`). ----
//
// Each message below goes to a gateway on the node that owns the job (or, for list and pause,
// on each node): `ClusterJobs` picks a gateway key that the cluster's placement puts on the
// wanted node. The gateway runs the operation with its node's `Jobs` handle.

/// Why a job operation sent to a node's [`JobGateway`] failed there. It names the job or type;
/// the owner's error does not cross the wire as a type.
#[derive(
    Debug, Clone, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
pub enum RemoteJobError {
    /// No such job on that node (never existed, or finished and forgotten); the job's id on
    /// its node.
    #[error("job {} is not known there", JobId(*.0))]
    NotFound(u64),
    /// The job's state does not allow the operation (the owner's message).
    #[error("{0}")]
    WrongState(String),
    /// No job type of this name is registered on that node.
    #[error("no job type named {0:?} is registered there")]
    UnknownType(String),
    /// That node runs no job queue.
    #[error("the node runs no job queue")]
    NotRunning,
    /// Writing the records failed, or a shard stopped (the owner's error, with its causes).
    #[error("the node failed: {0}")]
    Failed(String),
}

impl WireMessage for RemoteJobError {
    const WIRE_NAME: &'static str = "quark.jobs.OpError";
}

impl From<super::JobsError> for RemoteJobError {
    fn from(e: super::JobsError) -> Self {
        use super::JobsError as E;
        match e {
            E::NotFound(id) => RemoteJobError::NotFound(id.0),
            E::WrongState { .. } => RemoteJobError::WrongState(e.to_string()),
            E::UnknownType(t) => RemoteJobError::UnknownType(t),
            E::NotRunning => RemoteJobError::NotRunning,
            other => RemoteJobError::Failed(crate::ErrorChain(&other).to_string()),
        }
    }
}

impl WireMessage for super::JobStatus {
    const WIRE_NAME: &'static str = "quark.jobs.Status";
}

/// A job's status on its node ([`JobGateway`] of the owning node).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteJobStatus {
    /// The job's id on its node.
    pub id: u64,
}

impl Message for RemoteJobStatus {
    type Reply = Result<super::JobStatus, RemoteJobError>;
}

impl WireMessage for RemoteJobStatus {
    const WIRE_NAME: &'static str = "quark.jobs.GetStatus";
}

/// Cancels a job on its node; the reply is the status once the cancellation is durable.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteJobCancel {
    /// The job's id on its node.
    pub id: u64,
}

impl Message for RemoteJobCancel {
    type Reply = Result<super::JobStatus, RemoteJobError>;
}

impl WireMessage for RemoteJobCancel {
    const WIRE_NAME: &'static str = "quark.jobs.Cancel";
}

/// One page of a node's jobs, by id (as [`super::Jobs::list`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteJobList {
    /// Only jobs in this state.
    pub state: Option<super::JobState>,
    /// Only jobs of this type.
    pub type_name: Option<String>,
    /// Only jobs with this concurrency key.
    pub concurrency_key: Option<String>,
    /// Only ids above this one (the node's id).
    pub after: Option<u64>,
    /// Page size, 1 to [`REMOTE_LIST_LIMIT_MAX`].
    pub limit: u32,
}

/// The largest page a [`RemoteJobList`] returns (a larger `limit` is cut to it).
pub const REMOTE_LIST_LIMIT_MAX: u32 = 1000;

impl Message for RemoteJobList {
    type Reply = Result<Vec<super::JobStatus>, RemoteJobError>;
}

impl WireMessage for RemoteJobList {
    const WIRE_NAME: &'static str = "quark.jobs.List";
}

/// Pauses (`paused: true`) or resumes a job type (`None`: the whole queue) on the node that
/// receives it, durably; the reply is the node's switches after the change: whether the whole
/// queue is paused, and the paused types.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct RemoteJobPause {
    /// The type (`None`: the whole queue).
    pub type_name: Option<String>,
    /// Pause (true) or resume (false).
    pub paused: bool,
}

impl Message for RemoteJobPause {
    type Reply = Result<(bool, Vec<String>), RemoteJobError>;
}

impl WireMessage for RemoteJobPause {
    const WIRE_NAME: &'static str = "quark.jobs.Pause";
}

fn local_jobs() -> Result<super::Jobs, RemoteJobError> {
    super::queue::local_queue()
        .map(|q| q.jobs())
        .ok_or(RemoteJobError::NotRunning)
}

impl Handler<RemoteJobStatus> for JobGateway {
    async fn handle(
        &mut self,
        msg: RemoteJobStatus,
        _: &Context<Self>,
    ) -> Result<super::JobStatus, RemoteJobError> {
        Ok(local_jobs()?.status(JobId(msg.id)).await?)
    }
}

impl Handler<RemoteJobCancel> for JobGateway {
    async fn handle(
        &mut self,
        msg: RemoteJobCancel,
        _: &Context<Self>,
    ) -> Result<super::JobStatus, RemoteJobError> {
        Ok(local_jobs()?.cancel(JobId(msg.id)).await?)
    }
}

impl Handler<RemoteJobList> for JobGateway {
    async fn handle(
        &mut self,
        msg: RemoteJobList,
        _: &Context<Self>,
    ) -> Result<Vec<super::JobStatus>, RemoteJobError> {
        let query = super::ListQuery {
            state: msg.state,
            type_name: msg.type_name,
            concurrency_key: msg.concurrency_key,
            after: msg.after.map(JobId),
            limit: msg.limit.clamp(1, REMOTE_LIST_LIMIT_MAX) as usize,
        };
        Ok(local_jobs()?.list(query).await?)
    }
}

impl Handler<RemoteJobPause> for JobGateway {
    async fn handle(
        &mut self,
        msg: RemoteJobPause,
        _: &Context<Self>,
    ) -> Result<(bool, Vec<String>), RemoteJobError> {
        let jobs = local_jobs()?;
        jobs.set_paused(msg.type_name, msg.paused).await?;
        Ok(jobs.paused().await?)
    }
}
