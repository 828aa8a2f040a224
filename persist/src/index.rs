//! The in-memory key index (key → live records in logical order) and per-segment liveness
//! accounting that drives compaction. Rebuilt by recovery from the records themselves.

use std::collections::HashMap;

use crate::record::RecordKind;

/// One live record of a key.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Logical position (the LSN the record was first written at).
    origin: u64,
    /// Physical LSN now holding the record.
    lsn: u64,
    /// Bytes the record occupies (for segment accounting).
    bytes: u64,
}

/// A record that stopped being live: the segment holding `lsn` loses `bytes` of live data.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dead {
    pub lsn: u64,
    pub bytes: u64,
}

/// What the index knows of one key.
#[derive(Debug, Default)]
struct KeyState {
    /// Live records (events and snapshots), ordered by origin; every origin ≥ `floor`.
    entries: Vec<Entry>,
    /// Records of the key with an origin below this are superseded (set by the latest
    /// snapshot or truncate barrier; 0 = none).
    floor: u64,
    /// The live truncate record that set `floor`, if the barrier is a truncate.
    truncate: Option<Entry>,
}

/// Key → live records, ordered by origin LSN, plus the key's floor. A snapshot at origin `o`
/// or a truncate whose floor is `o` supersedes every record of the key with a smaller origin
/// (including an older truncate barrier); a record with the same origin as an existing entry
/// (a compaction copy) replaces it; a record whose origin is below the floor (an old copy
/// found after the barrier) is dead on arrival.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    keys: HashMap<Box<[u8]>, KeyState>,
}

impl KeyIndex {
    /// Applies one record in LSN order. `floor` is [`crate::record::floor_of`] of the record
    /// (0 for events). Returns whether the record itself is live; records it supersedes are
    /// pushed to `dead`. Records with an empty key are not indexed: always live, except a
    /// key-less truncate, which supersedes nothing and is dead on arrival.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        key: &[u8],
        kind: RecordKind,
        origin: u64,
        lsn: u64,
        bytes: u64,
        floor: u64,
        dead: &mut Vec<Dead>,
    ) -> bool {
        debug_assert!(origin <= lsn, "a record's origin never follows its LSN");
        debug_assert!(
            floor <= origin,
            "a record never supersedes records after it"
        );
        if key.is_empty() {
            return kind != RecordKind::Truncate;
        }
        // Look up before inserting: `entry` would allocate the boxed key on every call.
        if !self.keys.contains_key(key) {
            self.keys.insert(key.into(), KeyState::default());
        }
        let ks = self
            .keys
            .get_mut(key)
            .expect("invariant: inserted just above");
        let entry = Entry { origin, lsn, bytes };
        if kind == RecordKind::Truncate {
            if let Some(old) = ks.truncate.filter(|t| t.origin == origin) {
                // A compaction copy of the current barrier.
                debug_assert!(old.lsn < lsn, "records are applied in LSN order");
                dead.push(Dead {
                    lsn: old.lsn,
                    bytes: old.bytes,
                });
                ks.truncate = Some(entry);
                return true;
            }
            if floor <= ks.floor {
                // Says nothing the current barrier does not (or an old copy found later).
                return false;
            }
            if let Some(old) = ks.truncate.take() {
                dead.push(Dead {
                    lsn: old.lsn,
                    bytes: old.bytes,
                });
            }
            ks.truncate = Some(entry);
            raise_floor(ks, floor, dead);
            return true;
        }
        if origin < ks.floor {
            // Superseded already by a later barrier (an old copy found after it).
            dead.push(Dead { lsn, bytes });
            return false;
        }
        match ks.entries.binary_search_by_key(&origin, |e| e.origin) {
            Ok(i) => {
                let old = ks.entries[i];
                debug_assert!(old.lsn < lsn, "records are applied in LSN order");
                dead.push(Dead {
                    lsn: old.lsn,
                    bytes: old.bytes,
                });
                ks.entries[i] = entry;
            }
            Err(i) => ks.entries.insert(i, entry),
        }
        if kind == RecordKind::Snapshot && floor > ks.floor {
            // A truncate barrier below the snapshot is covered by it.
            if let Some(t) = ks.truncate.filter(|t| t.origin < floor) {
                dead.push(Dead {
                    lsn: t.lsn,
                    bytes: t.bytes,
                });
                ks.truncate = None;
            }
            raise_floor(ks, floor, dead);
        }
        true
    }

    /// Physical LSNs of the key's live records in logical order (the latest snapshot first, if
    /// any, then later records). Truncate records are never listed.
    pub fn lsns(&self, key: &[u8]) -> Vec<u64> {
        self.keys
            .get(key)
            .map(|ks| ks.entries.iter().map(|e| e.lsn).collect())
            .unwrap_or_default()
    }

    /// True if `lsn` is the current physical location of a live record of `key` (including
    /// its live truncate barrier).
    pub fn is_live(&self, key: &[u8], lsn: u64) -> bool {
        self.keys.get(key).is_some_and(|ks| {
            ks.truncate.is_some_and(|t| t.lsn == lsn) || ks.entries.iter().any(|e| e.lsn == lsn)
        })
    }

    /// The keys starting with `prefix` that have at least one live record (in no particular
    /// order). Walks every key: for periodic maintenance, not for hot paths.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(k, ks)| k.starts_with(prefix) && !ks.entries.is_empty())
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Number of indexed keys (a key erased by a truncate stays counted while its barrier is
    /// live).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Forgets every record whose physical LSN is in `[from, to)` (a quarantined or deleted
    /// segment).
    pub fn forget_range(&mut self, from: u64, to: u64) {
        let gone = |e: &Entry| e.lsn >= from && e.lsn < to;
        self.keys.retain(|_, ks| {
            ks.entries.retain(|e| !gone(e));
            if ks.truncate.as_ref().is_some_and(gone) {
                ks.truncate = None;
            }
            !ks.entries.is_empty() || ks.truncate.is_some()
        });
    }
}

/// Raises the key's floor to `floor`: every entry with a smaller origin is superseded.
fn raise_floor(ks: &mut KeyState, floor: u64, dead: &mut Vec<Dead>) {
    debug_assert!(floor > ks.floor);
    ks.floor = floor;
    let cut = ks.entries.partition_point(|e| e.origin < floor);
    for e in ks.entries.drain(..cut) {
        dead.push(Dead {
            lsn: e.lsn,
            bytes: e.bytes,
        });
    }
}

/// Liveness of one segment's records.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentStats {
    /// Records in the segment.
    pub records: u64,
    /// Records not superseded.
    pub live_records: u64,
    /// Record bytes (headers + keys + payloads) of all records.
    pub record_bytes: u64,
    /// Record bytes of live records.
    pub live_bytes: u64,
    /// Latest expiry of any record (`u64::MAX` if one never expires; 0 when empty).
    pub expiry_max_ms: u64,
    /// Earliest expiry of any record (`None` when no record has one).
    pub expiry_min_ms: Option<u64>,
}

impl SegmentStats {
    /// Counts a new record.
    pub fn add(&mut self, bytes: u64, live: bool, expires_at_ms: Option<u64>) {
        self.records += 1;
        self.record_bytes += bytes;
        if live {
            self.live_records += 1;
            self.live_bytes += bytes;
        }
        self.expiry_max_ms = self.expiry_max_ms.max(expires_at_ms.unwrap_or(u64::MAX));
        if let Some(e) = expires_at_ms {
            self.expiry_min_ms = Some(self.expiry_min_ms.map_or(e, |m| m.min(e)));
        }
    }

    /// Marks one record dead.
    pub fn kill(&mut self, bytes: u64) {
        debug_assert!(self.live_records > 0 && self.live_bytes >= bytes);
        self.live_records = self.live_records.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(bytes);
    }

    /// True when every record of the segment is live and none has expired at `now_ms`: the
    /// segment holds no byte that [`crate::Log::scrub`] must remove.
    pub fn is_all_live(&self, now_ms: u64) -> bool {
        self.live_records == self.records && self.expiry_min_ms.is_none_or(|e| e > now_ms)
    }

    /// True when no record of the segment is needed any more at wall time `now_ms`.
    pub fn is_garbage(&self, now_ms: u64) -> bool {
        self.live_records == 0 || self.expiry_max_ms <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordKind::{Event, Snapshot, Truncate};

    /// Applies an event or snapshot (floor derived as the log does).
    fn apply(
        ix: &mut KeyIndex,
        key: &[u8],
        kind: RecordKind,
        origin: u64,
        lsn: u64,
        bytes: u64,
        dead: &mut Vec<Dead>,
    ) -> bool {
        let floor = crate::record::floor_of(kind, origin, &[]);
        ix.apply(key, kind, origin, lsn, bytes, floor, dead)
    }

    /// Applies a truncate record of `key` with bound `before`.
    fn truncate(
        ix: &mut KeyIndex,
        key: &[u8],
        origin: u64,
        lsn: u64,
        before: u64,
        dead: &mut Vec<Dead>,
    ) -> bool {
        let floor = crate::record::floor_of(Truncate, origin, &before.to_le_bytes());
        ix.apply(key, Truncate, origin, lsn, 49, floor, dead)
    }

    #[test]
    fn truncate_supersedes_below_its_bound_and_keeps_the_rest() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        for l in 1..=5 {
            assert!(apply(&mut ix, b"a", Event, l, l, 10, &mut dead));
        }
        assert!(apply(&mut ix, b"b", Event, 6, 6, 10, &mut dead));
        assert!(truncate(&mut ix, b"a", 7, 7, 4, &mut dead));
        assert_eq!(
            dead,
            vec![
                Dead { lsn: 1, bytes: 10 },
                Dead { lsn: 2, bytes: 10 },
                Dead { lsn: 3, bytes: 10 }
            ]
        );
        assert_eq!(
            ix.lsns(b"a"),
            vec![4, 5],
            "truncate records are never listed"
        );
        assert!(ix.is_live(b"a", 7), "the barrier is live");
        assert_eq!(ix.lsns(b"b"), vec![6]);
        // A lower or equal bound says nothing new: dead on arrival, the barrier stays.
        dead.clear();
        assert!(!truncate(&mut ix, b"a", 8, 8, 3, &mut dead));
        assert!(dead.is_empty() && ix.is_live(b"a", 7));
        // A compaction copy of the barrier replaces it; an old copy of a record below the
        // floor is dead on arrival.
        assert!(truncate(&mut ix, b"a", 7, 20, 4, &mut dead));
        assert_eq!(dead, vec![Dead { lsn: 7, bytes: 49 }]);
        dead.clear();
        assert!(!apply(&mut ix, b"a", Event, 2, 21, 10, &mut dead));
        assert!(
            apply(&mut ix, b"a", Event, 4, 22, 10, &mut dead),
            "a copy at the floor"
        );
        assert_eq!(ix.lsns(b"a"), vec![22, 5]);
        // A higher bound supersedes the earlier barrier and what it newly covers.
        dead.clear();
        assert!(truncate(&mut ix, b"a", 30, 30, 5, &mut dead));
        assert_eq!(
            dead,
            vec![Dead { lsn: 20, bytes: 49 }, Dead { lsn: 22, bytes: 10 }]
        );
        assert!(!ix.is_live(b"a", 20) && ix.is_live(b"a", 30));
        assert_eq!(ix.lsns(b"a"), vec![5]);
    }

    #[test]
    fn erasure_is_capped_at_the_truncate_and_the_key_can_be_reused() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        apply(&mut ix, b"a", Snapshot, 1, 1, 10, &mut dead);
        apply(&mut ix, b"a", Event, 2, 2, 10, &mut dead);
        assert!(truncate(&mut ix, b"a", 3, 3, u64::MAX, &mut dead));
        assert_eq!(dead.len(), 2);
        assert!(ix.lsns(b"a").is_empty());
        assert_eq!(ix.key_count(), 1, "the barrier keeps the key");
        // Written again after the erasure: live.
        assert!(apply(&mut ix, b"a", Event, 4, 4, 10, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![4]);
        // A later snapshot covers the truncate barrier: it dies with the records below.
        dead.clear();
        assert!(apply(&mut ix, b"a", Snapshot, 5, 5, 10, &mut dead));
        assert_eq!(
            dead,
            vec![Dead { lsn: 3, bytes: 49 }, Dead { lsn: 4, bytes: 10 }]
        );
        assert_eq!(ix.lsns(b"a"), vec![5]);
        // Forgetting the segment of the only record drops the key.
        ix.forget_range(5, 6);
        assert_eq!(ix.key_count(), 0);
        // A key-less truncate means nothing.
        assert!(!truncate(&mut ix, b"", 9, 9, 5, &mut dead));
    }

    #[test]
    fn a_copy_of_an_old_snapshot_after_a_truncate_stays_below_the_floor() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        apply(&mut ix, b"a", Snapshot, 10, 10, 5, &mut dead);
        apply(&mut ix, b"a", Event, 11, 11, 5, &mut dead);
        truncate(&mut ix, b"a", 12, 12, 11, &mut dead);
        assert_eq!(ix.lsns(b"a"), vec![11]);
        dead.clear();
        // Compaction copies the old snapshot (origin 10) forward: below the floor 11.
        assert!(!apply(&mut ix, b"a", Snapshot, 10, 40, 5, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![11]);
        assert!(ix.is_live(b"a", 12));
    }

    #[test]
    fn keys_with_prefix_lists_keys_with_live_records() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        ix.apply(b"qa1", Event, 1, 1, 10, 0, &mut dead);
        ix.apply(b"qa2", Event, 2, 2, 10, 0, &mut dead);
        ix.apply(b"qb1", Event, 3, 3, 10, 0, &mut dead);
        let mut keys = ix.keys_with_prefix(b"qa");
        keys.sort();
        assert_eq!(keys, vec![b"qa1".to_vec(), b"qa2".to_vec()]);
        assert_eq!(ix.keys_with_prefix(b"x"), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn snapshot_supersedes_earlier_records_of_its_key_only() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        assert!(apply(&mut ix, b"a", Event, 1, 1, 10, &mut dead));
        assert!(apply(&mut ix, b"b", Event, 2, 2, 10, &mut dead));
        assert!(apply(&mut ix, b"a", Event, 3, 3, 10, &mut dead));
        assert!(dead.is_empty());
        assert!(apply(&mut ix, b"a", Snapshot, 4, 4, 20, &mut dead));
        assert_eq!(
            dead,
            vec![Dead { lsn: 1, bytes: 10 }, Dead { lsn: 3, bytes: 10 }]
        );
        assert!(apply(&mut ix, b"a", Event, 5, 5, 10, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![4, 5]);
        assert_eq!(ix.lsns(b"b"), vec![2]);
        assert!(apply(&mut ix, b"", Event, 6, 6, 10, &mut dead));
        assert_eq!(ix.key_count(), 2);
    }

    #[test]
    fn copies_replace_in_logical_order_and_stale_copies_are_dead() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        apply(&mut ix, b"a", Snapshot, 10, 10, 5, &mut dead);
        apply(&mut ix, b"a", Event, 11, 11, 5, &mut dead);
        apply(&mut ix, b"a", Event, 50, 50, 5, &mut dead);
        // Compaction copies 10 and 11 forward to 100 and 101.
        apply(&mut ix, b"a", Snapshot, 10, 100, 5, &mut dead);
        apply(&mut ix, b"a", Event, 11, 101, 5, &mut dead);
        assert_eq!(ix.lsns(b"a"), vec![100, 101, 50]);
        assert_eq!(
            dead,
            vec![Dead { lsn: 10, bytes: 5 }, Dead { lsn: 11, bytes: 5 }]
        );
        dead.clear();
        // A newer snapshot, then an old copy of origin 11 shows up: dead on arrival.
        apply(&mut ix, b"a", Snapshot, 60, 60, 5, &mut dead);
        assert_eq!(dead.len(), 3);
        assert!(!apply(&mut ix, b"a", Event, 11, 102, 5, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![60]);
        assert!(ix.is_live(b"a", 60) && !ix.is_live(b"a", 50));
    }

    #[test]
    fn stats_track_garbage_and_expiry() {
        let mut s = SegmentStats::default();
        s.add(10, true, Some(100));
        s.add(10, true, Some(200));
        assert!(!s.is_garbage(150));
        assert!(s.is_all_live(99) && !s.is_all_live(100));
        assert!(s.is_garbage(200));
        s.add(10, true, None);
        assert!(!s.is_garbage(u64::MAX - 1));
        s.kill(10);
        s.kill(10);
        s.kill(10);
        assert!(s.is_garbage(0));
    }
}
