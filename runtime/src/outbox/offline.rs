//! The dead-letter list of a *stopped* node's shard log, for `quark outbox dead-letters`: read,
//! replay and purge through a log opened by the caller (`quark_persist::Log::open` on the
//! shard's directory, which takes the directory's lock, so a running node's log is refused).
//! The changes are the records the running dispatcher writes for [`super::Outbox::replay`] and
//! [`super::Outbox::purge`]; the node delivers a replayed message when it starts.

use quark_persist::{Batch, Log, LogIo};
use quark_placement::ShardId;

use super::dispatcher::{decode_dead, decode_dead_list, encode_dead, replay_id, settle};
use super::format::{self, DEAD_LETTER_KEY};
use super::{DeadLetter, MessageId};

/// Why an offline dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineError {
    /// Reading the list's record failed.
    #[error("shard {shard}: reading the dead-letter list failed: {source}")]
    Read {
        /// The shard.
        shard: ShardId,
        /// The log's error.
        #[source]
        source: quark_persist::ReadError,
    },
    /// The list's record does not decode.
    #[error("shard {shard}: the dead-letter list at LSN {lsn} does not decode: {source}")]
    Format {
        /// The shard.
        shard: ShardId,
        /// Its LSN.
        lsn: u64,
        /// What is wrong.
        #[source]
        source: format::FormatError,
    },
    /// No dead letter has this id on the shard.
    #[error("shard {shard} has no dead letter {id}")]
    NoSuchDeadLetter {
        /// The shard.
        shard: ShardId,
        /// The id asked for.
        id: MessageId,
    },
    /// Appending the change failed.
    #[error("shard {shard}: appending failed: {source}")]
    Append {
        /// The shard.
        shard: ShardId,
        /// The log's error.
        #[source]
        source: quark_persist::AppendError,
    },
}

/// Decodes a dead-letter list record's payload (the latest `qd` snapshot of a shard's log),
/// for tools that read segment files directly.
pub fn decode_dead_letters(
    shard: ShardId,
    payload: &[u8],
) -> Result<Vec<DeadLetter>, format::FormatError> {
    decode_dead(shard, payload)
}

/// The dead letters in shard `shard`'s log, oldest first.
pub async fn dead_letters<IO: LogIo>(
    log: &Log<IO>,
    shard: ShardId,
) -> Result<Vec<DeadLetter>, OfflineError> {
    Ok(dead_list(log, shard).await?.0)
}

/// The dead letters and the settled ids (replayed or purged) of shard `shard`'s list.
async fn dead_list<IO: LogIo>(
    log: &Log<IO>,
    shard: ShardId,
) -> Result<(Vec<DeadLetter>, Vec<MessageId>), OfflineError> {
    let Some(&lsn) = log.key_lsns(DEAD_LETTER_KEY).last() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let Some(r) = log
        .read(lsn)
        .await
        .map_err(|source| OfflineError::Read { shard, source })?
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    decode_dead_list(shard, &r.payload).map_err(|source| OfflineError::Format {
        shard,
        lsn,
        source,
    })
}

/// Appends dead letter `id` again as an outbox message of its sender (under its replay id, as
/// [`super::Outbox::replay`] does) and the list without it, in one batch. Returns the replay
/// id; the node sends it when it starts.
pub async fn replay<IO: LogIo>(
    log: &Log<IO>,
    shard: ShardId,
    id: MessageId,
) -> Result<MessageId, OfflineError> {
    let (list, settled) = dead_list(log, shard).await?;
    let Some(d) = list.iter().find(|d| d.id == id) else {
        return Err(OfflineError::NoSuchDeadLetter { shard, id });
    };
    let (sender, record) = d.parts();
    let mut rec = format::decode_outbox(record).map_err(|source| OfflineError::Format {
        shard,
        lsn: 0,
        source,
    })?;
    let rid = replay_id(id);
    rec.id_override = Some((rid.stream, rid.seq));
    let mut payload = Vec::new();
    format::encode_outbox(&mut payload, &rec);
    let rest: Vec<DeadLetter> = list.iter().filter(|d| d.id != id).cloned().collect();
    let mut batch = Batch::new();
    batch.event(sender, &payload);
    batch.snapshot(DEAD_LETTER_KEY, &encode_dead(&rest, &settle(&settled, id)));
    log.append(&batch)
        .await
        .map_err(|source| OfflineError::Append { shard, source })?;
    Ok(rid)
}

/// Removes dead letter `id` from shard `shard`'s list for good.
pub async fn purge<IO: LogIo>(
    log: &Log<IO>,
    shard: ShardId,
    id: MessageId,
) -> Result<(), OfflineError> {
    let (list, settled) = dead_list(log, shard).await?;
    if !list.iter().any(|d| d.id == id) {
        return Err(OfflineError::NoSuchDeadLetter { shard, id });
    }
    let rest: Vec<DeadLetter> = list.into_iter().filter(|d| d.id != id).collect();
    let mut batch = Batch::new();
    batch.snapshot(DEAD_LETTER_KEY, &encode_dead(&rest, &settle(&settled, id)));
    log.append(&batch)
        .await
        .map_err(|source| OfflineError::Append { shard, source })?;
    Ok(())
}
