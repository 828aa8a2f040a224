//! What shard threads report to the engine over its event channel ([`ShardEvent`]), and why a
//! shard could not start ([`StartFailure`]).

use quark_placement::ShardId;

use super::info::ShardInfo;
use super::StartError;
use crate::envelope::CrossMsg;
use crate::ring::Producer;

pub(crate) enum ShardEvent {
    /// The shard built its inbound rings: the producer ends, one per other shard.
    Ready(ShardId, Vec<Producer<CrossMsg>>),
    /// The shard got its outbound rings and runs its pump.
    Started(ShardInfo),
    LogFailed(ShardId, quark_persist::OpenError),
    /// A start-up step failed (the shard thread then exits).
    Failed(ShardId, StartFailure),
    Drained(ShardId),
    Deactivated(ShardId),
    /// The shard thread exited (sent on every exit, also by a panic).
    Exited(ShardId),
}

/// Why a shard thread could not start (mapped to a [`StartError`] naming the shard).
pub(crate) enum StartFailure {
    Runtime(std::io::Error),
    Doorbell(std::io::Error),
    Listener(std::io::Error),
}

impl StartFailure {
    pub(super) fn into_error(self, shard: ShardId) -> StartError {
        match self {
            StartFailure::Runtime(source) => StartError::Runtime { shard, source },
            StartFailure::Doorbell(source) => StartError::Doorbell { shard, source },
            StartFailure::Listener(source) => StartError::Listener { shard, source },
        }
    }
}
