//! Reading a data directory: the walk over every shard's log that collects the live journal
//! records of the selected actors, applying the log's liveness rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use quark::journal::format::{self, EventRecord, FormatError, Hash, SnapshotRecord, Stream};
use quark::ActorKey;
use quark_persist::{inspect_dir, DamageKind, RecordKind, QUARANTINE_DIR};

/// Where a record sits.
#[derive(Clone, Debug)]
pub(super) struct Place {
    /// Index into [`Scan::files`].
    pub(super) file: usize,
    pub(super) batch_offset: u64,
    /// Offset of the record's header in the file.
    pub(super) offset: u64,
    pub(super) lsn: u64,
    pub(super) origin_lsn: u64,
}

pub(super) enum Body {
    Event {
        decoded: Result<EventRecord, FormatError>,
        /// The chain hash of this record (SHA-256 of log key and payload).
        hash: Hash,
    },
    Snapshot(Result<SnapshotRecord, FormatError>),
}

pub(super) struct Stored {
    pub(super) place: Place,
    pub(super) payload_bytes: u64,
    /// Bytes of the user data (kept even when the data itself was dropped).
    pub(super) data_bytes: u64,
    pub(super) body: Body,
}

/// The live records of one log key, applying the log's rules (docs/LOG_FORMAT.md): a
/// barrier (snapshot-kind record, or truncate) raises the key's floor, and records whose
/// origin LSN is below the floor are superseded; a later copy of an origin replaces it.
#[derive(Default)]
struct KeyRecords {
    floor: u64,
    /// Live records by origin LSN (logical order).
    live: BTreeMap<u64, Stored>,
}

impl KeyRecords {
    fn raise_floor(&mut self, floor: u64) {
        if floor > self.floor {
            self.floor = floor;
            self.live = self.live.split_off(&floor);
        }
    }

    fn truncate(&mut self, origin: u64, before_lsn: u64) {
        self.raise_floor(before_lsn.min(origin));
    }

    fn record(&mut self, barrier: bool, stored: Stored) {
        let origin = stored.place.origin_lsn;
        if origin < self.floor {
            return; // an old copy of a superseded record
        }
        self.live.insert(origin, stored);
        if barrier {
            self.raise_floor(origin);
        }
    }
}

/// One actor's journal in one shard.
pub(super) struct ActorStream {
    pub(super) type_name: String,
    pub(super) key: ActorKey,
    pub(super) shard: u32,
    /// Live events, in logical order.
    pub(super) events: Vec<Stored>,
    /// Live snapshots, in logical order.
    pub(super) snapshots: Vec<Stored>,
}

impl ActorStream {
    pub(super) fn actor(&self) -> String {
        format!("{}/{:?}", self.type_name, self.key)
    }

    pub(super) fn decoded_events(&self) -> impl Iterator<Item = (&Stored, &EventRecord, &Hash)> {
        self.events.iter().filter_map(|s| match &s.body {
            Body::Event {
                decoded: Ok(e),
                hash,
            } => Some((s, e, hash)),
            _ => None,
        })
    }

    pub(super) fn decoded_snapshots(&self) -> impl Iterator<Item = (&Stored, &SnapshotRecord)> {
        self.snapshots.iter().filter_map(|s| match &s.body {
            Body::Snapshot(Ok(snap)) => Some((s, snap)),
            _ => None,
        })
    }

    fn undecodable(&self) -> impl Iterator<Item = (&Stored, &FormatError)> {
        self.events
            .iter()
            .chain(&self.snapshots)
            .filter_map(|s| match &s.body {
                Body::Event {
                    decoded: Err(e), ..
                }
                | Body::Snapshot(Err(e)) => Some((s, e)),
                _ => None,
            })
    }
}

/// A damaged position found by the walk.
pub(super) struct DamageAt {
    pub(super) file: usize,
    pub(super) offset: u64,
    pub(super) what: String,
}

/// What one walk over a data directory found.
pub(super) struct Scan {
    /// Segment files walked, relative to the data directory (`shard-0/….seg`).
    pub(super) files: Vec<String>,
    pub(super) shard_count: usize,
    /// Actor streams by (type, key, shard).
    pub(super) actors: BTreeMap<(String, ActorKey, u32), ActorStream>,
    pub(super) damage: Vec<DamageAt>,
    /// Directories of segments moved aside by recovery (not walked).
    pub(super) quarantined: Vec<String>,
}

impl Scan {
    pub(super) fn place(&self, p: &Place) -> String {
        format!("LSN {}, {} offset {}", p.lsn, self.files[p.file], p.offset)
    }
}

/// The `shard-<N>` log directories of `data_dir`, by shard number.
fn shard_dirs(data_dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let meta = std::fs::metadata(data_dir)
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "the data directory {} is not a directory",
            data_dir.display()
        );
    }
    let mut shards = Vec::new();
    let mut has_segments = false;
    let entries = std::fs::read_dir(data_dir)
        .with_context(|| format!("cannot list the data directory {}", data_dir.display()))?;
    for entry in entries {
        let entry = entry
            .with_context(|| format!("cannot list the data directory {}", data_dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        has_segments |= name.ends_with(".seg");
        let Some(n) = name
            .strip_prefix("shard-")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() {
            shards.push((n, entry.path()));
        }
    }
    if shards.is_empty() {
        if has_segments {
            bail!(
                "{} is not a Quark data directory but looks like one shard's log (it holds .seg \
                 files): pass its parent, the node's data directory holding shard-<N>/",
                data_dir.display()
            );
        }
        bail!(
            "{} is not a Quark data directory: it has no shard-<N>/ log directory (pass the \
             node's [log] data_dir)",
            data_dir.display()
        );
    }
    shards.sort();
    Ok(shards)
}

/// Takes `data_dir`'s shared lock (held while the walk reads) and refuses a directory a node
/// or `quark data reshard` holds, or one whose reshard was interrupted (its shard logs are
/// then half moved).
fn lock_for_reading(data_dir: &Path) -> Result<quark_persist::DirLock> {
    let lock = quark_persist::DirLock::shared(data_dir).with_context(|| {
        format!(
            "quark journal reads only a stopped node's data directory: stop the node using {} \
             (or wait for `quark data reshard` to finish) and run it again",
            data_dir.display()
        )
    })?;
    let manifest = quark_shard::data_dir::read_manifest(data_dir)?;
    if let Some(m) = manifest.filter(|m| m.reshard != quark_shard::data_dir::ReshardPhase::Done) {
        bail!(
            "{} holds an interrupted `quark data reshard` (to {} shards): run it again, or start \
             the node, to finish it before reading",
            data_dir.display(),
            m.shards
        );
    }
    Ok(lock)
}

/// Walks every shard log of `data_dir` and collects the live journal records of the actors
/// `select` accepts. With `keep_data` false the event and snapshot data are dropped after
/// hashing (verify and summaries do not print them).
pub(super) fn scan(
    data_dir: &Path,
    select: &dyn Fn(&str, &ActorKey) -> bool,
    keep_data: bool,
) -> Result<Scan> {
    shard_dirs(data_dir)?; // a clear error for a path that is no data directory
    let _lock = lock_for_reading(data_dir)?;
    let shards = shard_dirs(data_dir)?; // again, under the lock
    let mut out = Scan {
        files: Vec::new(),
        shard_count: shards.len(),
        actors: BTreeMap::new(),
        damage: Vec::new(),
        quarantined: Vec::new(),
    };
    for (shard, dir) in shards {
        let rel = |p: &Path| p.strip_prefix(data_dir).unwrap_or(p).display().to_string();
        let listing = inspect_dir(&dir)?;
        out.quarantined.extend(
            listing
                .other_files
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| n == QUARANTINE_DIR))
                .map(|p| rel(p)),
        );
        let mut keys: BTreeMap<Vec<u8>, (format::StreamKey, KeyRecords)> = BTreeMap::new();
        for segment in listing.segments() {
            let segment = segment?;
            let file = out.files.len();
            out.files.push(rel(&segment.path));
            out.damage.extend(segment.damage.iter().map(|d| DamageAt {
                file,
                offset: d.offset,
                what: match d.what {
                    DamageKind::LsnGap { expected, found } if found > expected => format!(
                        "batch starts at LSN {found}, expected {expected}: LSNs {expected}..={} \
                         are missing here",
                        found - 1
                    ),
                    ref other => other.to_string(),
                },
            }));
            for r in segment.records {
                if !keys.contains_key(&r.key) {
                    let Ok(sk) = format::parse_stream_key(&r.key) else {
                        continue; // not a journal record (projection state, other users)
                    };
                    if !select(&sk.type_name, &sk.key) {
                        continue;
                    }
                    keys.insert(r.key.clone(), (sk, KeyRecords::default()));
                }
                let (sk, recs) = keys
                    .get_mut(&r.key)
                    .expect("invariant: the key was inserted just above");
                let place = Place {
                    file,
                    batch_offset: r.batch_offset,
                    offset: r.record_offset,
                    lsn: r.lsn,
                    origin_lsn: r.origin_lsn,
                };
                let barrier = match r.kind {
                    RecordKind::Truncate => {
                        // Format (truncate payload): { before_lsn u64 } LE; the log rejects a
                        // batch holding any other length, so a bad one cannot reach here.
                        if let Ok(b) = <[u8; 8]>::try_from(&r.payload[..]) {
                            recs.truncate(r.origin_lsn, u64::from_le_bytes(b));
                        }
                        continue;
                    }
                    RecordKind::Snapshot => true,
                    RecordKind::Event => false,
                };
                let mut data_bytes = 0;
                let body = match sk.stream {
                    Stream::Events => {
                        let hash = format::event_hash(&r.key, &r.payload);
                        let mut decoded = format::decode_event(&r.payload);
                        if let Ok(e) = &mut decoded {
                            data_bytes = e.data.len() as u64;
                            if !keep_data {
                                e.data = Vec::new();
                            }
                        }
                        Body::Event { decoded, hash }
                    }
                    Stream::Snapshots => {
                        let mut decoded = format::decode_snapshot(&r.payload);
                        if let Ok(s) = &mut decoded {
                            data_bytes = s.data.len() as u64;
                            if !keep_data {
                                s.data = Vec::new();
                            }
                        }
                        Body::Snapshot(decoded)
                    }
                };
                recs.record(
                    barrier,
                    Stored {
                        place,
                        payload_bytes: r.payload.len() as u64,
                        data_bytes,
                        body,
                    },
                );
            }
        }
        for (sk, recs) in keys.into_values() {
            if recs.live.is_empty() {
                continue; // erased or fully truncated
            }
            let stream = out
                .actors
                .entry((sk.type_name.clone(), sk.key.clone(), shard))
                .or_insert_with(|| ActorStream {
                    type_name: sk.type_name.clone(),
                    key: sk.key.clone(),
                    shard,
                    events: Vec::new(),
                    snapshots: Vec::new(),
                });
            let live = recs.live.into_values().collect();
            match sk.stream {
                Stream::Events => stream.events = live,
                Stream::Snapshots => stream.snapshots = live,
            }
        }
    }
    Ok(out)
}

pub(super) fn warn_damage(scan: &Scan) {
    for d in &scan.damage {
        eprintln!(
            "warning: log damage in {} at offset {}: {} (run `quark journal verify`)",
            scan.files[d.file], d.offset, d.what
        );
    }
}

pub(super) fn warn_undecodable(scan: &Scan, a: &ActorStream) {
    for (s, e) in a.undecodable() {
        eprintln!(
            "warning: {}: the record at {} does not decode: {e}",
            a.actor(),
            scan.place(&s.place)
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    // ---- hand-built records (also used by the verify tests) ----

    const KEY: &[u8] = b"test-key";

    pub(crate) fn place(lsn: u64, origin_lsn: u64) -> Place {
        Place {
            file: 0,
            batch_offset: 0,
            offset: lsn * 100,
            lsn,
            origin_lsn,
        }
    }

    /// An event at `version` linking to `prev`, stored at `lsn`; and its hash.
    pub(crate) fn event(version: u64, prev: &Hash, data: &[u8], lsn: u64) -> (Stored, Hash) {
        let mut p = Vec::new();
        format::encode_event(&mut p, 1, version, 0, "E", data, prev);
        let hash = format::event_hash(KEY, &p);
        let body = Body::Event {
            decoded: format::decode_event(&p),
            hash,
        };
        let stored = Stored {
            place: place(lsn, lsn),
            payload_bytes: p.len() as u64,
            data_bytes: data.len() as u64,
            body,
        };
        (stored, hash)
    }

    #[test]
    fn liveness_follows_barriers_and_copies() {
        let stored = |lsn, origin| {
            let mut s = event(1, &format::GENESIS, b"d", lsn).0;
            s.place = place(lsn, origin);
            s
        };
        let mut k = KeyRecords::default();
        for lsn in 1..=3 {
            k.record(false, stored(lsn, lsn));
        }
        k.truncate(5, 3); // supersedes origins 1 and 2
        assert_eq!(k.live.keys().copied().collect::<Vec<_>>(), [3]);
        k.record(false, stored(7, 3)); // a compaction copy replaces the original
        k.record(false, stored(8, 2)); // an old copy below the floor stays dead
        assert_eq!(k.live.len(), 1);
        assert_eq!(k.live[&3].place.lsn, 7);
        k.truncate(9, 2); // below the floor: no effect
        assert_eq!(k.live.len(), 1);
        k.record(false, stored(10, 10));
        k.record(true, stored(11, 11)); // a snapshot-kind record supersedes what precedes it
        assert_eq!(k.live.keys().copied().collect::<Vec<_>>(), [11]);
    }
}
