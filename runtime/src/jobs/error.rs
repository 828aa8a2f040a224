//! Why a jobs operation failed.

use super::*;

/// Why an enqueue was refused. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// No job type of this name is registered on the node.
    #[error("job type {name:?} is not registered on this node (registered: {registered:?})")]
    UnknownJobType {
        /// The name given.
        name: String,
        /// The registered names.
        registered: Vec<String>,
    },
    /// The payload does not decode as the job type's payload.
    #[error("payload of job type {type_name:?} does not decode: {detail}")]
    BadPayload {
        /// The job type.
        type_name: String,
        /// The decoder's message.
        detail: String,
    },
    /// An option is invalid.
    #[error("invalid job options: {detail}")]
    BadOptions {
        /// What is wrong.
        detail: String,
    },
    /// The jobs of an atomic batch must all be owned by one shard, but their concurrency or
    /// unique keys place them on different shards.
    #[error("the batch's jobs are owned by different shards ({first} and {other}); an atomic batch needs one owner (split it)")]
    BatchSpansShards {
        /// The shard of the first job.
        first: ShardId,
        /// Another shard.
        other: ShardId,
    },
    /// The batch is empty.
    #[error("empty batch")]
    EmptyBatch,
    /// The dependencies within the batch form a cycle.
    #[error("the batch's dependencies form a cycle through jobs {jobs:?} (batch indices)")]
    DependencyCycle {
        /// The batch indices on the cycle.
        jobs: Vec<usize>,
    },
    /// A cron expression or time zone was refused.
    #[error("bad schedule: {0}")]
    BadSchedule(#[from] cron::CronError),
    /// A dependency is not usable: out of the batch, unknown, on another shard, or dead or
    /// cancelled.
    #[error("bad dependency of batch job {index}: {detail}")]
    BadDependency {
        /// The job's index in the batch.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// The node has no log (`[log]` section) or no job type registered: jobs are not running.
    #[error(
        "jobs are not running on this node (needs a [log] data_dir and a registered job type)"
    )]
    NotRunning,
    /// Appending the records failed (nothing acknowledged).
    #[error("appending the job records failed: {0}")]
    Append(#[source] AppendError),
    /// The owning shard stopped before answering.
    #[error("the owning shard stopped before answering")]
    ShardStopped,
}

/// Why the node's jobs did not start (a start error of the node: the node does not run with a
/// job queue it could not recover).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsStartError {
    /// Reading a shard's job records failed.
    #[error("shard {shard}: reading the job records")]
    Read {
        /// The shard.
        shard: ShardId,
        /// Why.
        #[source]
        source: quark_persist::ReadError,
    },
    /// Recording the attempts the previous run left unfinished failed.
    #[error("shard {shard}: recording the interrupted job attempts")]
    Append {
        /// The shard.
        shard: ShardId,
        /// Why.
        #[source]
        source: AppendError,
    },
    /// A record the queue needs to start does not decode (written by a newer version, or
    /// damaged): the node refuses to run with a queue state it cannot read.
    #[error("shard {shard}: {what} does not decode")]
    BadRecord {
        /// The shard.
        shard: ShardId,
        /// Which record.
        what: &'static str,
        /// Why.
        #[source]
        source: record::RecordError,
    },
    /// A shard's recovery did not run (the shard stopped).
    #[error("shard {shard}: the job recovery did not run")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
}

/// Why a job operation (cancel, replay, purge, list) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// No such job (never existed, or finished and forgotten).
    #[error("job {0} is not known")]
    NotFound(JobId),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {state:?}; {op} needs {needs}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: JobState,
        /// The operation.
        op: &'static str,
        /// The states it needs.
        needs: &'static str,
    },
    /// No schedule of this name.
    #[error("no schedule named {0:?}")]
    NoSchedule(String),
    /// No job type of this name is registered.
    #[error("no job type named {0:?} is registered")]
    UnknownType(String),
    /// See [`EnqueueError::NotRunning`].
    #[error(
        "jobs are not running on this node (needs a [log] data_dir and a registered job type)"
    )]
    NotRunning,
    /// Appending failed.
    #[error("appending the job records failed: {0}")]
    Append(#[source] AppendError),
    /// The owning shard stopped before answering.
    #[error("the owning shard stopped before answering")]
    ShardStopped,
}
