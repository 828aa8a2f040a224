//! The retention sweep: applies a journaled type's retention to every actor of the type in a
//! shard's log, including actors that are never activated again.

use std::time::Duration;

use quark_persist::Batch;
use quark_shard::{current_shard_log, EngineHandle, ShardLog};

use super::format::{self, Stream};
use super::{now_ms, EventSourced, JournalError};
use crate::{ActorId, ActorKey};

/// Truncation records per appended batch of one sweep.
const SWEEP_KEYS_PER_BATCH: usize = 256;

/// How often the sweep runs for a retention age: a quarter of it, between 100 ms and 15 min.
pub(crate) fn sweep_interval(age: Duration) -> Duration {
    (age / 4).clamp(Duration::from_millis(100), Duration::from_secs(15 * 60))
}

/// Starts the retention sweep of type `A` on every shard.
pub(crate) fn start_retention_sweeps<A: EventSourced>(engine: &EngineHandle, age: Duration) {
    for shard in 0..engine.shard_count() {
        let e = engine.clone();
        drop(engine.spawn_on(shard, move || async move {
            let Some(log) = current_shard_log() else {
                return;
            };
            let every = sweep_interval(age);
            while e.is_running() {
                quark_shard::sleep(every).await;
                if !e.is_running() {
                    break;
                }
                match sweep::<A>(&log, age).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(shard, actor_type = A::TYPE_NAME, streams = n, "retention sweep truncated streams"),
                    Err(err) => tracing::warn!(shard, actor_type = A::TYPE_NAME, error = %err, "retention sweep failed"),
                }
            }
        }));
    }
}

/// One pass over this shard's actors of type `A`: for each actor whose newest snapshot older
/// than `age` still has older events or snapshots, appends truncation records for both of its
/// keys at that snapshot. Returns the number of actors truncated.
///
/// Safe beside a live activation: the floor only rises, and it never passes a snapshot, so the
/// events after it (all an activation needs) stay.
pub(crate) async fn sweep<A: EventSourced>(
    log: &ShardLog,
    age: Duration,
) -> Result<u64, JournalError> {
    let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
    let mut batch = Batch::new();
    let mut truncated = 0u64;
    for sk in log.keys_with_prefix(&format::type_prefix(Stream::Snapshots, A::TYPE_NAME)) {
        let Some(ek) = format::sibling_key(&sk, Stream::Events) else {
            continue;
        };
        let snapshots = log.key_lsns(&sk);
        let mut floor = None;
        for &lsn in snapshots.iter().rev() {
            let Some(rec) = log.read(lsn).await.map_err(|source| JournalError::Read {
                actor: ActorId::new(
                    A::TYPE_NAME,
                    format::parse_stream_key(&sk)
                        .map(|k| k.key)
                        .unwrap_or_else(|_| ActorKey::from(&sk[..])),
                ),
                source,
            })?
            else {
                continue;
            };
            let Ok(snap) = format::decode_snapshot(&rec.payload) else {
                continue;
            };
            if snap.timestamp_ms <= cutoff {
                floor = Some((lsn, rec.origin_lsn));
                break;
            }
        }
        let Some((snap_lsn, floor)) = floor else {
            continue;
        };
        let older_snapshot = snapshots.first().is_some_and(|&l| l < snap_lsn);
        let older_event = log.key_lsns(&ek).first().is_some_and(|&l| l < floor);
        if older_snapshot || older_event {
            batch.truncate(&ek, floor).truncate(&sk, floor);
            truncated += 1;
        }
        if batch.len() >= 2 * SWEEP_KEYS_PER_BATCH {
            append(log, &batch).await?;
            batch = Batch::new();
        }
    }
    if !batch.is_empty() {
        append(log, &batch).await?;
    }
    Ok(truncated)
}

async fn append(log: &ShardLog, batch: &Batch) -> Result<(), JournalError> {
    log.append(batch)
        .await
        .map(|_| ())
        .map_err(|source| JournalError::Append { source })
}
