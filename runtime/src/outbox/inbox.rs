//! The receiver's inbox: per sender stream, the highest applied message sequence and when it
//! was applied. Kept in the receiver's log key (`qi` + actor) as receipts (one small record per
//! applied message, in the effect's batch) and periodic table snapshots that supersede them;
//! loaded into the activation on its first durable delivery.
//!
//! One entry covers every id of its stream: a dispatcher delivers a (sender, receiver) pair's
//! messages one at a time in sequence order, so an id at or below the entry's sequence was
//! applied (or is a stale copy of one that was).

use std::collections::HashMap;

use quark_persist::{Batch, NewRecord, RecordKind};
use quark_shard::{Actor, Context};

use super::dispatcher;
use super::format::{self, INBOX_PREFIX};
use super::{now_ms, MessageId};

/// Per-activation inbox (a [`Context::extension`] slot).
#[derive(Default)]
pub(crate) struct Inbox {
    loaded: bool,
    key: Vec<u8>,
    /// stream → (highest applied seq, wall-clock ms it was applied).
    table: HashMap<u64, (u64, u64)>,
    since_snapshot: u32,
}

/// Receipts written into a batch (one record), to record once it is durable.
pub(crate) struct StagedReceipt {
    pub ids: Vec<MessageId>,
    at_ms: u64,
    snapshot: bool,
}

/// Bytes one remembered stream costs in memory (key + value in the hash table, plus its
/// control byte), for the docs and the benchmark.
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<(u64, (u64, u64))>() + 1;

/// Loads the inbox of `ctx`'s actor from the log, once per activation.
pub(crate) async fn ensure_loaded<A: Actor>(ctx: &Context<A>) -> Result<(), String> {
    if ctx.extension(|i: &mut Inbox| i.loaded) {
        return Ok(());
    }
    let key = format::actor_key(INBOX_PREFIX, ctx.id());
    let mut table: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut since = 0u32;
    if let Some(log) = ctx.log() {
        let lsns = log.key_lsns(&key);
        let records = log
            .read_many(&lsns)
            .await
            .map_err(|e| format!("reading the inbox of {}: {e}", ctx.id()))?;
        for r in records {
            let table_record = r.kind == RecordKind::Snapshot;
            let entries = format::decode_inbox(&r.payload, table_record)
                .map_err(|e| format!("inbox of {}, LSN {}: {e}", ctx.id(), r.lsn))?;
            if table_record {
                table.clear();
                since = 0;
            } else {
                since += 1;
            }
            for (s, q, t) in entries {
                let e = table.entry(s).or_insert((q, t));
                if q >= e.0 {
                    *e = (q, t);
                }
            }
        }
    }
    let (window, count_max) = limits();
    let cutoff = now_ms().saturating_sub(window);
    table.retain(|_, (_, t)| *t >= cutoff);
    evict_over(&mut table, count_max);
    ctx.extension(|i: &mut Inbox| {
        *i = Inbox {
            loaded: true,
            key,
            table,
            since_snapshot: since,
        }
    });
    Ok(())
}

fn limits() -> (u64, usize) {
    dispatcher::current()
        .map(|d| {
            let c = d.config();
            (c.dedupe_window.as_millis() as u64, c.dedupe_count_max)
        })
        .unwrap_or((24 * 3600 * 1000, 100_000))
}

/// Forgets the oldest entries while over `count_max` (down to 7/8 of it); returns how many.
fn evict_over(table: &mut HashMap<u64, (u64, u64)>, count_max: usize) -> usize {
    if table.len() <= count_max {
        return 0;
    }
    let keep = (count_max - count_max / 8).max(1);
    let mut ages: Vec<(u64, u64)> = table.iter().map(|(s, (_, t))| (*t, *s)).collect();
    ages.sort_unstable();
    let n = table.len() - keep;
    for (_, s) in &ages[..n] {
        table.remove(s);
    }
    n
}

/// True if `id` was applied by this activation's actor (within the window).
pub(crate) fn seen<A: Actor>(ctx: &Context<A>, id: MessageId) -> bool {
    ctx.extension(|i: &mut Inbox| i.table.get(&id.stream).is_some_and(|(q, _)| id.seq <= *q))
}

/// Adds the receipts of `ids` to `batch` as one record: a receipt record listing them, or,
/// once `inbox_snapshot_every` receipt records were written since the last snapshot, the whole
/// table (with `ids`) as a snapshot record that supersedes the receipts.
pub(crate) fn stage_receipts<A: Actor>(
    ctx: &Context<A>,
    ids: Vec<MessageId>,
    batch: &mut Batch,
) -> StagedReceipt {
    let every = dispatcher::current()
        .map(|d| d.config().inbox_snapshot_every)
        .unwrap_or(256);
    let at_ms = now_ms();
    ctx.extension(|i: &mut Inbox| {
        if i.key.is_empty() {
            i.key = format::actor_key(INBOX_PREFIX, ctx.id());
        }
        let snapshot = i.since_snapshot + 1 >= every;
        let mut payload = Vec::new();
        if snapshot {
            let mut table = i.table.clone();
            for id in &ids {
                let e = table.entry(id.stream).or_insert((id.seq, at_ms));
                if id.seq >= e.0 {
                    *e = (id.seq, at_ms);
                }
            }
            let entries: Vec<(u64, u64, u64)> =
                table.iter().map(|(s, (q, t))| (*s, *q, *t)).collect();
            format::encode_inbox(&mut payload, &entries, true);
        } else {
            let entries: Vec<(u64, u64, u64)> =
                ids.iter().map(|id| (id.stream, id.seq, at_ms)).collect();
            format::encode_inbox(&mut payload, &entries, false);
        }
        batch.push(NewRecord {
            kind: if snapshot {
                RecordKind::Snapshot
            } else {
                RecordKind::Event
            },
            key: i.key.clone(),
            payload,
            expires_at_ms: None,
        });
        StagedReceipt {
            ids,
            at_ms,
            snapshot,
        }
    })
}

/// The batch with receipts `r` is durable.
pub(crate) fn committed<A: Actor>(ctx: &Context<A>, r: StagedReceipt) {
    let (window, count_max) = limits();
    let evicted = ctx.extension(|i: &mut Inbox| {
        for id in &r.ids {
            let e = i.table.entry(id.stream).or_insert((id.seq, r.at_ms));
            if id.seq >= e.0 {
                *e = (id.seq, r.at_ms);
            }
        }
        if r.snapshot {
            i.since_snapshot = 0;
            let cutoff = now_ms().saturating_sub(window);
            i.table.retain(|_, (_, t)| *t >= cutoff);
        } else {
            i.since_snapshot += 1;
        }
        evict_over(&mut i.table, count_max)
    });
    if evicted > 0 {
        tracing::warn!(actor = %ctx.id(), evicted, "inbox over dedupe_count_max: forgot the oldest sender streams");
        dispatcher::count_evicted(evicted as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_newest() {
        let mut t: HashMap<u64, (u64, u64)> = (0..100).map(|i| (i, (1, i))).collect();
        assert_eq!(evict_over(&mut t, 100), 0);
        t.insert(100, (1, 100));
        let n = evict_over(&mut t, 100);
        assert_eq!(n, 101 - 88);
        assert!(t.contains_key(&100) && !t.contains_key(&0));
    }
}
