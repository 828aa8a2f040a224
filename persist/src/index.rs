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
    snapshot: bool,
}

/// A record that stopped being live: the segment holding `lsn` loses `bytes` of live data.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dead {
    pub lsn: u64,
    pub bytes: u64,
}

/// Key → live records, ordered by origin LSN. A snapshot removes every entry with a smaller
/// origin; a record with the same origin as an existing entry (a compaction copy) replaces it.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    keys: HashMap<Box<[u8]>, Vec<Entry>>,
}

impl KeyIndex {
    /// Applies one record in LSN order. Returns whether the record itself is live; records it
    /// supersedes are pushed to `dead`. Records with an empty key are not indexed (always live).
    pub fn apply(
        &mut self,
        key: &[u8],
        kind: RecordKind,
        origin: u64,
        lsn: u64,
        bytes: u64,
        dead: &mut Vec<Dead>,
    ) -> bool {
        if key.is_empty() {
            return true;
        }
        // Look up before inserting: `entry` would allocate the boxed key on every call.
        if !self.keys.contains_key(key) {
            self.keys.insert(key.into(), Vec::new());
        }
        let entries = self
            .keys
            .get_mut(key)
            .expect("invariant: inserted just above");
        if let Some(first) = entries.first() {
            if first.snapshot && first.origin > origin {
                // Superseded already by a later snapshot (an old copy found after it).
                dead.push(Dead { lsn, bytes });
                return false;
            }
        }
        let entry = Entry {
            origin,
            lsn,
            bytes,
            snapshot: kind == RecordKind::Snapshot,
        };
        match entries.binary_search_by_key(&origin, |e| e.origin) {
            Ok(i) => {
                let old = entries[i];
                debug_assert!(old.lsn < lsn, "records are applied in LSN order");
                dead.push(Dead {
                    lsn: old.lsn,
                    bytes: old.bytes,
                });
                entries[i] = entry;
            }
            Err(i) => entries.insert(i, entry),
        }
        if entry.snapshot {
            let cut = entries.partition_point(|e| e.origin < origin);
            for e in entries.drain(..cut) {
                dead.push(Dead {
                    lsn: e.lsn,
                    bytes: e.bytes,
                });
            }
        }
        true
    }

    /// Physical LSNs of the key's live records in logical order (the latest snapshot first, if
    /// any, then later records).
    pub fn lsns(&self, key: &[u8]) -> Vec<u64> {
        self.keys
            .get(key)
            .map(|v| v.iter().map(|e| e.lsn).collect())
            .unwrap_or_default()
    }

    /// True if `lsn` is the current physical location of a live record of `key`.
    pub fn is_live(&self, key: &[u8], lsn: u64) -> bool {
        self.keys
            .get(key)
            .is_some_and(|v| v.iter().any(|e| e.lsn == lsn))
    }

    /// Number of indexed keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Forgets every record whose physical LSN is in `[from, to)` (a quarantined or deleted
    /// segment).
    pub fn forget_range(&mut self, from: u64, to: u64) {
        self.keys.retain(|_, v| {
            v.retain(|e| e.lsn < from || e.lsn >= to);
            !v.is_empty()
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
    }

    /// Marks one record dead.
    pub fn kill(&mut self, bytes: u64) {
        debug_assert!(self.live_records > 0 && self.live_bytes >= bytes);
        self.live_records = self.live_records.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(bytes);
    }

    /// True when no record of the segment is needed any more at wall time `now_ms`.
    pub fn is_garbage(&self, now_ms: u64) -> bool {
        self.live_records == 0 || self.expiry_max_ms <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordKind::{Event, Snapshot};

    #[test]
    fn snapshot_supersedes_earlier_records_of_its_key_only() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        assert!(ix.apply(b"a", Event, 1, 1, 10, &mut dead));
        assert!(ix.apply(b"b", Event, 2, 2, 10, &mut dead));
        assert!(ix.apply(b"a", Event, 3, 3, 10, &mut dead));
        assert!(dead.is_empty());
        assert!(ix.apply(b"a", Snapshot, 4, 4, 20, &mut dead));
        assert_eq!(
            dead,
            vec![Dead { lsn: 1, bytes: 10 }, Dead { lsn: 3, bytes: 10 }]
        );
        assert!(ix.apply(b"a", Event, 5, 5, 10, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![4, 5]);
        assert_eq!(ix.lsns(b"b"), vec![2]);
        assert!(ix.apply(b"", Event, 6, 6, 10, &mut dead));
        assert_eq!(ix.key_count(), 2);
    }

    #[test]
    fn copies_replace_in_logical_order_and_stale_copies_are_dead() {
        let mut ix = KeyIndex::default();
        let mut dead = Vec::new();
        ix.apply(b"a", Snapshot, 10, 10, 5, &mut dead);
        ix.apply(b"a", Event, 11, 11, 5, &mut dead);
        ix.apply(b"a", Event, 50, 50, 5, &mut dead);
        // Compaction copies 10 and 11 forward to 100 and 101.
        ix.apply(b"a", Snapshot, 10, 100, 5, &mut dead);
        ix.apply(b"a", Event, 11, 101, 5, &mut dead);
        assert_eq!(ix.lsns(b"a"), vec![100, 101, 50]);
        assert_eq!(
            dead,
            vec![Dead { lsn: 10, bytes: 5 }, Dead { lsn: 11, bytes: 5 }]
        );
        dead.clear();
        // A newer snapshot, then an old copy of origin 11 shows up: dead on arrival.
        ix.apply(b"a", Snapshot, 60, 60, 5, &mut dead);
        assert_eq!(dead.len(), 3);
        assert!(!ix.apply(b"a", Event, 11, 102, 5, &mut dead));
        assert_eq!(ix.lsns(b"a"), vec![60]);
        assert!(ix.is_live(b"a", 60) && !ix.is_live(b"a", 50));
    }

    #[test]
    fn stats_track_garbage_and_expiry() {
        let mut s = SegmentStats::default();
        s.add(10, true, Some(100));
        s.add(10, true, Some(200));
        assert!(!s.is_garbage(150));
        assert!(s.is_garbage(200));
        s.add(10, true, None);
        assert!(!s.is_garbage(u64::MAX - 1));
        s.kill(10);
        s.kill(10);
        s.kill(10);
        assert!(s.is_garbage(0));
    }
}
