//! Jobs across a cluster: enqueue, status, cancel, list and pause from any node
//! ([`crate::Node::cluster_jobs`]) or from a [`crate::Client`] ([`crate::Client::jobs`]).
//!
//! A job is owned by one shard of one node, and its records are in that node's log. A
//! [`ClusterJobId`] names the owning node's member id beside the job's id on that node
//! (`shard.sequence`), so whoever holds the id can find the owner, whatever key (or none) the
//! job was placed by. Each operation is a message to the [`JobGateway`] of the node it concerns:
//! the handle picks, once per node, a gateway key that the cluster's placement puts on that
//! node (placement is a pure function of the member list, the same on every node and client).
//!
//! ```no_run
//! use quark::jobs::cluster::ClusterListQuery;
//! use quark::jobs::{Job, JobOptions};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u64 }
//! # impl Job for Resize { const TYPE_NAME: &'static str = "resize"; }
//! # fn f(client: &quark::Client) {
//! let jobs = client.jobs();
//! let id = quark::block_on(jobs.enqueue(&Resize { image: 7 }, JobOptions::default())).unwrap();
//! println!("{id}"); // e.g. 2/1.17: node 2, shard 1, sequence 17
//! let status = quark::block_on(jobs.status(id)).unwrap();
//! let page = quark::block_on(jobs.list(ClusterListQuery::default())).unwrap();
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quark_placement::NodeId;
use quark_shard::{Actor, ActorRef, CallError, EngineHandle};

use super::remote::{
    JobGateway, RemoteEnqueue, RemoteEnqueueError, RemoteJobCancel, RemoteJobError, RemoteJobList,
    RemoteJobPause, RemoteJobStatus, REMOTE_LIST_LIMIT_MAX,
};
use super::{Job, JobId, JobOptions, JobState, JobStatus};

/// A job's id in a cluster: the owning node's member id and the job's id on that node.
/// Printed `node/shard.sequence` (e.g. `2/1.17`); [`std::str::FromStr`] reads that form.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterJobId {
    /// The owning node's member id (0 for a node without a `[cluster]` section).
    pub node: NodeId,
    /// The job's id on that node.
    pub job: JobId,
}

impl std::fmt::Display for ClusterJobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.job)
    }
}

impl std::str::FromStr for ClusterJobId {
    type Err = String;
    /// Parses `node/shard.sequence` (the job part as [`JobId`] reads it).
    fn from_str(s: &str) -> Result<Self, String> {
        let (node, job) = s
            .split_once('/')
            .ok_or_else(|| format!("cluster job id {s:?}: expected node/shard.sequence"))?;
        let node = node
            .parse()
            .map_err(|e| format!("cluster job id {s:?}: node: {e}"))?;
        Ok(ClusterJobId {
            node,
            job: job.parse()?,
        })
    }
}

/// A job's status with its cluster id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterJobStatus {
    /// The job's cluster id.
    pub id: ClusterJobId,
    /// What its owner knows of it.
    pub status: JobStatus,
}

/// Which jobs [`ClusterJobs::list`] returns: the filters of [`super::ListQuery`], with a
/// cluster-wide cursor.
#[derive(Clone, Debug, Default)]
pub struct ClusterListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this type.
    pub type_name: Option<String>,
    /// Only jobs with this concurrency key.
    pub concurrency_key: Option<String>,
    /// Only jobs after this one (paging: the previous page's `next`).
    pub after: Option<ClusterJobId>,
    /// Only the jobs of this node.
    pub node: Option<NodeId>,
    /// Page size, 1 to 1000 (0 = 100).
    pub limit: u32,
}

/// One page of [`ClusterJobs::list`], ordered by node id, then job id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterJobsPage {
    /// The jobs.
    pub jobs: Vec<ClusterJobStatus>,
    /// The cursor of the next page (`None`: this is the last page).
    pub next: Option<ClusterJobId>,
}

/// Why a cluster job operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterJobsError {
    /// The node is not a member of the cluster this handle knows.
    #[error("node {node} is not a member of the cluster (members: {members:?})")]
    UnknownNode {
        /// The node asked for.
        node: NodeId,
        /// The members.
        members: Vec<NodeId>,
    },
    /// The message did not reach node `node`, or its answer did not come back (the node is
    /// down, or the call timed out). The job's records are in that node's log: it resumes
    /// when the node restarts.
    #[error("node {node} did not answer")]
    Call {
        /// The node.
        node: NodeId,
        /// The cause.
        #[source]
        source: CallError,
    },
    /// Node `node` refused the operation (unknown job or type, a state that does not allow
    /// it, no job queue there).
    #[error("node {node}")]
    Refused {
        /// The node.
        node: NodeId,
        /// Its reason.
        #[source]
        source: RemoteJobError,
    },
    /// Node `node` refused the enqueue (nothing was stored).
    #[error("node {node} refused the enqueue")]
    Enqueue {
        /// The node.
        node: NodeId,
        /// Its reason.
        #[source]
        source: RemoteEnqueueError,
    },
    /// The payload does not serialise to JSON (nothing was sent).
    #[error("the job's payload does not serialise to JSON")]
    Encode(#[source] serde_json::Error),
}

/// The cluster's members and, per member, a key of a gateway actor type that the cluster's
/// placement puts on that member (found on first use): how a handle addresses one chosen node.
/// Shared by [`ClusterJobs`] and the admin endpoint's cluster-wide reminder routes.
#[derive(Clone)]
pub(crate) struct MemberGateways {
    handle: EngineHandle,
    /// This node's id (`None` on a client).
    local: Option<NodeId>,
    /// The members, ascending.
    members: Vec<NodeId>,
    /// (gateway type, member) → a key placed on it.
    keys: Arc<Mutex<HashMap<(&'static str, NodeId), u64>>>,
}

/// How many gateway keys are tried to find one a node owns: rendezvous hashing gives each of
/// `n` members a key with probability `1/n`, so with fewer than a few hundred members the
/// search ends long before.
const KEY_SEARCH_MAX: u64 = 1 << 20;

impl MemberGateways {
    /// `local` is the node's own id (`None` for a client); `members` the cluster's node ids (a
    /// standalone node: empty, it is then node 0).
    pub(crate) fn new(handle: EngineHandle, local: Option<NodeId>, members: Vec<NodeId>) -> Self {
        let mut members = members;
        if members.is_empty() {
            members.push(local.unwrap_or(0));
        }
        members.sort_unstable();
        members.dedup();
        MemberGateways {
            handle,
            local,
            members,
            keys: Arc::default(),
        }
    }

    /// The members now, ascending: those given at creation, and every member of the
    /// engine's live view that has not left (a node that joined through etcd after the
    /// start is there; one whose lease expired, or that left after a drain, is not, unless
    /// it was given at creation: a call to it then fails naming it).
    pub(crate) fn members(&self) -> Vec<NodeId> {
        let mut m = self.members.clone();
        if let Some(live) = self.handle.members() {
            m.extend(live.present().map(|l| l.id));
            m.sort_unstable();
            m.dedup();
        }
        m
    }

    /// The node an actor ref reaches.
    pub(crate) fn node_of<A: Actor>(&self, r: &ActorRef<A>) -> NodeId {
        r.remote_node().or(self.local).unwrap_or(0)
    }

    /// An actor of type `A` on member `node` (`None`: not a member).
    pub(crate) fn on<A: Actor>(&self, node: NodeId) -> Option<ActorRef<A>> {
        self.members().binary_search(&node).ok()?;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&k) = keys.get(&(A::TYPE_NAME, node)) {
            return Some(self.handle.actor_ref::<A>(k));
        }
        // Keys with the top bit set: clear of the small keys applications may use.
        for k in (1u64 << 63)..(1u64 << 63) + KEY_SEARCH_MAX {
            let r = self.handle.actor_ref::<A>(k);
            if self.node_of(&r) == node {
                keys.insert((A::TYPE_NAME, node), k);
                return Some(r);
            }
        }
        None
    }
}

/// The jobs of a cluster, from one node or a client. `Send + Clone`; each method is one
/// message per node it concerns (awaited on a shard, or from any thread with
/// [`crate::block_on`]).
#[derive(Clone)]
pub struct ClusterJobs {
    nodes: MemberGateways,
    handle: EngineHandle,
}

impl std::fmt::Debug for ClusterJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterJobs")
            .field("local", &self.nodes.local)
            .field("members", &self.nodes.members())
            .finish_non_exhaustive()
    }
}

impl ClusterJobs {
    /// A handle over `handle`'s engine (see [`MemberGateways::new`]).
    pub(crate) fn new(handle: EngineHandle, local: Option<NodeId>, members: Vec<NodeId>) -> Self {
        ClusterJobs {
            nodes: MemberGateways::new(handle.clone(), local, members),
            handle,
        }
    }

    /// The cluster's member ids now, ascending (follows the live member set: see
    /// docs/CLUSTER.md, "Membership on etcd").
    pub fn members(&self) -> Vec<NodeId> {
        self.nodes.members()
    }

    /// The gateway on `node`.
    fn gateway(&self, node: NodeId) -> Result<ActorRef<JobGateway>, ClusterJobsError> {
        self.nodes
            .on::<JobGateway>(node)
            .ok_or_else(|| ClusterJobsError::UnknownNode {
                node,
                members: self.nodes.members(),
            })
    }

    fn call_error(node: NodeId) -> impl FnOnce(CallError) -> ClusterJobsError {
        move |source| ClusterJobsError::Call { node, source }
    }

    fn refused(node: NodeId) -> impl FnOnce(RemoteJobError) -> ClusterJobsError {
        move |source| ClusterJobsError::Refused { node, source }
    }

    /// Enqueues `job` on the node that owns its gateway key (its concurrency key, else its
    /// unique key, else a spread key; see [`RemoteEnqueue`]); resolves with its cluster id once
    /// the owner made it durable. Priority, schedule, unique and concurrency keys cross; the
    /// other options take the type's defaults on the owner.
    pub async fn enqueue<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<ClusterJobId, ClusterJobsError> {
        let msg = RemoteEnqueue::new(job, options).map_err(ClusterJobsError::Encode)?;
        self.enqueue_message(msg).await
    }

    /// Enqueues an already built [`RemoteEnqueue`] (a JSON payload by type name).
    pub async fn enqueue_message(
        &self,
        msg: RemoteEnqueue,
    ) -> Result<ClusterJobId, ClusterJobsError> {
        let gw = self.handle.actor_ref::<JobGateway>(msg.gateway_key());
        let node = self.nodes.node_of(&gw);
        let id = gw
            .ask(msg)
            .await
            .map_err(Self::call_error(node))?
            .map_err(|source| ClusterJobsError::Enqueue { node, source })?;
        Ok(ClusterJobId {
            node,
            job: JobId(id),
        })
    }

    /// The job's status, from its owner.
    pub async fn status(&self, id: ClusterJobId) -> Result<JobStatus, ClusterJobsError> {
        let gw = self.gateway(id.node)?;
        gw.ask(RemoteJobStatus { id: id.job.0 })
            .await
            .map_err(Self::call_error(id.node))?
            .map_err(Self::refused(id.node))
    }

    /// Cancels a queued, scheduled or running job on its owner (as [`super::Jobs::cancel`]);
    /// resolves with its status once the cancellation is durable.
    pub async fn cancel(&self, id: ClusterJobId) -> Result<JobStatus, ClusterJobsError> {
        let gw = self.gateway(id.node)?;
        gw.ask(RemoteJobCancel { id: id.job.0 })
            .await
            .map_err(Self::call_error(id.node))?
            .map_err(Self::refused(id.node))
    }

    /// One page of the cluster's jobs matching `query`, ordered by node id and then job id. It
    /// asks the nodes in order, from the cursor's node on, until the page is full and one job
    /// more is seen (so the last page has no cursor). A node that does not answer fails the
    /// call, naming it.
    pub async fn list(&self, query: ClusterListQuery) -> Result<ClusterJobsPage, ClusterJobsError> {
        let limit = match query.limit {
            0 => 100,
            n => n.min(REMOTE_LIST_LIMIT_MAX),
        } as usize;
        let mut jobs = Vec::new();
        for node in self.nodes.members() {
            if query.node.is_some_and(|n| n != node) {
                continue;
            }
            let after = match query.after {
                Some(c) if node < c.node => continue,
                Some(c) if node == c.node => Some(c.job.0),
                _ => None,
            };
            let want = limit + 1 - jobs.len();
            let gw = self.gateway(node)?;
            let page = gw
                .ask(RemoteJobList {
                    state: query.state,
                    type_name: query.type_name.clone(),
                    concurrency_key: query.concurrency_key.clone(),
                    after,
                    limit: want as u32,
                })
                .await
                .map_err(Self::call_error(node))?
                .map_err(Self::refused(node))?;
            jobs.extend(page.into_iter().map(|status| ClusterJobStatus {
                id: ClusterJobId {
                    node,
                    job: status.id,
                },
                status,
            }));
            if jobs.len() > limit {
                break;
            }
        }
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        Ok(ClusterJobsPage { jobs, next })
    }

    /// Pauses (true) or resumes (false) starting jobs of `type_name` (`None`: the whole
    /// queue) on every node, durably (as [`super::Jobs::set_paused`] on each). Resolves with
    /// each node's switches after the change: `(node, whole queue paused, paused types)`. On
    /// an error the nodes before the failing one changed already: call again.
    pub async fn set_paused(
        &self,
        type_name: Option<String>,
        paused: bool,
    ) -> Result<Vec<(NodeId, bool, Vec<String>)>, ClusterJobsError> {
        let members = self.nodes.members();
        let mut out = Vec::with_capacity(members.len());
        for node in members {
            let gw = self.gateway(node)?;
            let (all, types) = gw
                .ask(RemoteJobPause {
                    type_name: type_name.clone(),
                    paused,
                })
                .await
                .map_err(Self::call_error(node))?
                .map_err(Self::refused(node))?;
            out.push((node, all, types));
        }
        Ok(out)
    }
}
