//! `verify`: every stream's versions and hash chain, the snapshots' chain hashes, and the log
//! damage, reported with file and offset.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use quark::journal::format::{self, EventRecord, Hash, SnapshotRecord};
use quark::ActorKey;

use super::output::count;
use super::scan::{scan, ActorStream, Body, Place, Scan, Stored};
use super::select::{parse_actor, ActorSel};
use super::{require_actor, Outcome, Source};

#[derive(clap::Args, Debug)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    source: Source,
    /// Only this actor (`TYPE/KEY`, as for `inspect`).
    #[arg(long, value_name = "TYPE/KEY", value_parser = parse_actor)]
    actor: Option<ActorSel>,
    /// Only actors of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "actor")]
    type_name: Option<String>,
    /// Also print each stream's latest version and chain hash (an anchor to keep elsewhere).
    #[arg(long)]
    print_heads: bool,
}

/// How a stream's first retained event is anchored.
#[derive(Debug, PartialEq, Eq)]
enum Anchor {
    /// Version 1 links to GENESIS.
    Genesis,
    /// Earlier events were dropped; the first retained one links to a retained snapshot.
    Snapshot,
    /// Earlier events were dropped and no snapshot marks their end: the first retained
    /// event's prev_hash is taken on trust.
    Trusted { first: u64 },
}

/// The first problem of a stream.
struct Broken {
    version: Option<u64>,
    place: Place,
    what: String,
}

#[derive(Default)]
struct StreamCheck {
    events: u64,
    snapshots: u64,
    anchor: Option<Anchor>,
    head: Option<(u64, Hash)>,
    broken: Option<Broken>,
    /// Further problems after the first (snapshot mismatches).
    more_problems: u64,
    /// Snapshots older than the retained events (cannot be checked).
    unchecked_snapshots: u64,
}

/// Checks the link of a stream's first retained event `e`: to GENESIS (version 1), or to the
/// retained snapshot at the version before it (earlier events dropped); with neither, there is
/// nothing to check it against and its `prev_hash` is trusted.
fn check_first(
    scan: &Scan,
    e: &EventRecord,
    snapshots: &[(&Stored, &SnapshotRecord)],
) -> (Anchor, Option<String>) {
    let prev = format::hex(&e.prev_hash);
    if e.version == 0 {
        let why = "version 0 is not a valid event version (the first event is version 1)";
        return (Anchor::Genesis, Some(why.to_owned()));
    }
    if e.version == 1 {
        let problem = (e.prev_hash != format::GENESIS)
            .then(|| format!("prev_hash {prev} of version 1 is not GENESIS (32 zero bytes)"));
        return (Anchor::Genesis, problem);
    }
    match snapshots.iter().find(|(_, s)| s.version == e.version - 1) {
        Some((at, snap)) => {
            let problem = (e.prev_hash != snap.chain_hash).then(|| {
                format!(
                    "prev_hash {prev} of the first retained event does not match the chain hash \
                     {} of the snapshot at version {} ({})",
                    format::hex(&snap.chain_hash),
                    snap.version,
                    scan.place(&at.place)
                )
            });
            (Anchor::Snapshot, problem)
        }
        None => (Anchor::Trusted { first: e.version }, None),
    }
}

fn check_stream(scan: &Scan, a: &ActorStream) -> StreamCheck {
    let mut c = StreamCheck {
        events: a.events.len() as u64,
        snapshots: a.snapshots.len() as u64,
        ..StreamCheck::default()
    };
    let mut problems: Vec<Broken> = Vec::new();
    let snapshots: Vec<_> = a.decoded_snapshots().collect();
    // version → chain hash of the verified prefix of the chain.
    let mut hashes: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut prev: Option<(u64, Hash, &Stored)> = None;
    let mut first_version = None;
    for s in &a.events {
        let Body::Event { decoded, hash } = &s.body else {
            continue;
        };
        let e = match decoded {
            Ok(e) => e,
            Err(err) => {
                problems.push(Broken {
                    version: prev.map(|(v, _, _)| v + 1),
                    place: s.place.clone(),
                    what: format!("the event record does not decode: {err}"),
                });
                break;
            }
        };
        let problem = match prev {
            None => {
                first_version = Some(e.version);
                let (anchor, problem) = check_first(scan, e, &snapshots);
                c.anchor = Some(anchor);
                problem
            }
            Some((pv, _, ps)) if e.version != pv + 1 => Some(format!(
                "expected version {} after version {pv} ({}), found version {}",
                pv + 1,
                scan.place(&ps.place),
                e.version
            )),
            Some((pv, ph, ps)) if e.prev_hash != ph => Some(format!(
                "prev_hash {} does not match the hash {} of version {pv} ({}): event {pv} or \
                 event {} was altered",
                format::hex(&e.prev_hash),
                format::hex(&ph),
                scan.place(&ps.place),
                e.version
            )),
            Some(_) => None,
        };
        if let Some(what) = problem {
            problems.push(Broken {
                version: Some(e.version),
                place: s.place.clone(),
                what,
            });
            break;
        }
        hashes.insert(e.version, *hash);
        prev = Some((e.version, *hash, s));
    }
    c.head = prev.map(|(v, h, _)| (v, h));
    let chain_ok = problems.is_empty();
    let last = c.head.map(|(v, _)| v);
    for s in &a.snapshots {
        let snap = match &s.body {
            Body::Snapshot(Ok(snap)) => snap,
            Body::Snapshot(Err(err)) => {
                problems.push(Broken {
                    version: None,
                    place: s.place.clone(),
                    what: format!("the snapshot record does not decode: {err}"),
                });
                continue;
            }
            Body::Event { .. } => continue,
        };
        let v = snap.version;
        let expected = if v == 0 {
            Some(format::GENESIS)
        } else {
            hashes.get(&v).copied()
        };
        let problem = match expected {
            Some(h) if h != snap.chain_hash => Some(format!(
                "snapshot at version {v}: chain_hash {} does not match the hash {} of the event \
                 at version {v}",
                format::hex(&snap.chain_hash),
                format::hex(&h)
            )),
            Some(_) => None,
            // The anchor snapshot: checked through the first event's prev_hash.
            None if first_version == Some(v + 1) => None,
            None if first_version.is_some_and(|f| v + 1 < f) => {
                c.unchecked_snapshots += 1;
                None
            }
            None if !chain_ok => None, // beyond the break: already reported
            None => Some(format!(
                "snapshot at version {v} is ahead of the last retained event ({})",
                last.map_or("none".to_owned(), |l| format!("version {l}"))
            )),
        };
        if let Some(what) = problem {
            problems.push(Broken {
                version: Some(v),
                place: s.place.clone(),
                what,
            });
        }
    }
    // The chain break (if any) is reported first, then the earliest snapshot problem.
    let mut problems = problems.into_iter();
    c.broken = problems.next();
    c.more_problems = problems.count() as u64;
    c
}

pub(super) fn verify(args: &VerifyArgs, out: &mut impl Write) -> Result<Outcome> {
    let dir = &args.source.data_dir;
    let select = |t: &str, k: &ActorKey| match (&args.actor, &args.type_name) {
        (Some(a), _) => a.type_name == t && &a.key == k,
        (None, Some(n)) => n == t,
        (None, None) => true,
    };
    let scan = scan(dir, &select, false)?;
    if let Some(sel) = &args.actor {
        require_actor(&scan, sel, dir)?;
    }
    let (mut events, mut snapshots, mut ok, mut broken) = (0u64, 0u64, 0u64, 0u64);
    let mut heads = Vec::new();
    for a in scan.actors.values() {
        let c = check_stream(&scan, a);
        events += c.events;
        snapshots += c.snapshots;
        if let Some(b) = &c.broken {
            broken += 1;
            let version = b.version.map_or("?".to_owned(), |v| v.to_string());
            writeln!(
                out,
                "BROKEN {} (shard {}) at version {version}, {}: {}{}",
                a.actor(),
                a.shard,
                scan.place(&b.place),
                b.what,
                match c.more_problems {
                    0 => String::new(),
                    n => format!(" (and {n} more problems in this stream)"),
                }
            )?;
        } else {
            ok += 1;
        }
        if let Some(Anchor::Trusted { first }) = c.anchor {
            writeln!(
                out,
                "note: {} (shard {}): no event before version {first} is readable (dropped by \
                 retention, or lost to damage) and no snapshot at version {} is; the \
                 prev_hash of version {first} is accepted as the anchor",
                a.actor(),
                a.shard,
                first.saturating_sub(1)
            )?;
        }
        if c.unchecked_snapshots > 0 {
            writeln!(
                out,
                "note: {} (shard {}): {} snapshots precede the retained events and cannot be \
                 checked",
                a.actor(),
                a.shard,
                c.unchecked_snapshots
            )?;
        }
        if let Some((v, h)) = c.head {
            heads.push((a.actor(), a.shard, v, h));
        }
    }
    for d in &scan.damage {
        writeln!(
            out,
            "DAMAGE {} offset {}: {}",
            scan.files[d.file], d.offset, d.what
        )?;
    }
    // An actor owned by one shard has its stream there; streams in several shards mean the
    // shard count changed (the runtime reads only the owner's).
    let mut by_actor: BTreeMap<(&str, &ActorKey), Vec<u32>> = BTreeMap::new();
    for a in scan.actors.values() {
        by_actor
            .entry((&a.type_name, &a.key))
            .or_default()
            .push(a.shard);
    }
    for ((type_name, key), shards) in by_actor.iter().filter(|(_, s)| s.len() > 1) {
        writeln!(
            out,
            "note: {type_name}/{key:?} has streams in shards {shards:?} (did the shard count \
             change?); each was checked on its own, and the node reads only its owner's"
        )?;
    }
    for q in &scan.quarantined {
        writeln!(
            out,
            "note: {q} holds segments moved aside by recovery; they are not verified"
        )?;
    }
    if args.print_heads {
        for (actor, shard, v, h) in heads {
            writeln!(
                out,
                "head {actor} shard={shard} version={v} hash={}",
                format::hex(&h)
            )?;
        }
    }
    let damaged_files = {
        let mut f: Vec<usize> = scan.damage.iter().map(|d| d.file).collect();
        f.dedup();
        f.len()
    };
    let clean = broken == 0 && scan.damage.is_empty();
    writeln!(
        out,
        "{}: {} in {} ({}), {} and {} read; {ok} OK, {broken} broken; {} in {}",
        if clean { "OK" } else { "FAILED" },
        count(scan.actors.len() as u64, "actor"),
        count(scan.shard_count as u64, "shard"),
        count(scan.files.len() as u64, "segment file"),
        count(events, "event"),
        count(snapshots, "snapshot"),
        count(scan.damage.len() as u64, "damaged position"),
        count(damaged_files as u64, "file"),
    )?;
    Ok(if clean {
        Outcome::Clean
    } else {
        Outcome::Problems
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::scan::tests::{event, place};

    // ---- verification on hand-built streams ----

    fn test_scan() -> Scan {
        Scan {
            files: vec!["shard-0/00000000000000000001.seg".into()],
            shard_count: 1,
            actors: BTreeMap::new(),
            damage: Vec::new(),
            quarantined: Vec::new(),
        }
    }

    fn snapshot(version: u64, chain_hash: &Hash, lsn: u64) -> Stored {
        let mut p = Vec::new();
        format::encode_snapshot(&mut p, 1, version, 0, chain_hash, b"s");
        Stored {
            place: place(lsn, lsn),
            payload_bytes: p.len() as u64,
            data_bytes: 1,
            body: Body::Snapshot(format::decode_snapshot(&p)),
        }
    }

    /// A correct chain of versions `1..=n`; hashes[v] is the hash of version v (hashes[0] =
    /// GENESIS). Event v is at LSN 10 * v.
    fn chain(n: u64) -> (Vec<Stored>, Vec<Hash>) {
        let mut hashes = vec![format::GENESIS];
        let mut events = Vec::new();
        for v in 1..=n {
            let (e, h) = event(v, &hashes[v as usize - 1], b"data", 10 * v);
            events.push(e);
            hashes.push(h);
        }
        (events, hashes)
    }

    fn stream(events: Vec<Stored>, snapshots: Vec<Stored>) -> ActorStream {
        ActorStream {
            type_name: "t".into(),
            key: ActorKey::U64(1),
            shard: 0,
            events,
            snapshots,
        }
    }

    fn broken_at(c: &StreamCheck) -> Option<(Option<u64>, u64, &str)> {
        c.broken
            .as_ref()
            .map(|b| (b.version, b.place.lsn, b.what.as_str()))
    }

    #[test]
    fn an_intact_chain_with_snapshots_verifies() {
        let (events, h) = chain(5);
        let snaps = vec![snapshot(0, &format::GENESIS, 1), snapshot(3, &h[3], 35)];
        let c = check_stream(&test_scan(), &stream(events, snaps));
        assert!(c.broken.is_none(), "{:?}", broken_at(&c));
        assert_eq!(c.anchor, Some(Anchor::Genesis));
        assert_eq!(c.head, Some((5, h[5])));
        assert_eq!((c.events, c.snapshots), (5, 2));
    }

    #[test]
    fn a_retained_stream_is_anchored_on_its_snapshot_or_trusted() {
        let (_, h) = chain(6);
        let tail = || chain(6).0.into_iter().skip(3).collect::<Vec<_>>();
        let c = check_stream(&test_scan(), &stream(tail(), vec![snapshot(3, &h[3], 35)]));
        assert!(c.broken.is_none(), "{:?}", broken_at(&c));
        assert_eq!(c.anchor, Some(Anchor::Snapshot));
        // A snapshot whose chain hash is not the first event's link: broken at version 4.
        let c = check_stream(&test_scan(), &stream(tail(), vec![snapshot(3, &h[2], 35)]));
        let (v, lsn, what) = broken_at(&c).unwrap();
        assert_eq!((v, lsn), (Some(4), 40));
        assert!(what.contains("snapshot at version 3"), "{what}");
        // No snapshot at version 3: the link of version 4 is trusted; older ones unchecked.
        let c = check_stream(&test_scan(), &stream(tail(), vec![snapshot(1, &h[1], 15)]));
        assert!(c.broken.is_none());
        assert_eq!(c.anchor, Some(Anchor::Trusted { first: 4 }));
        assert_eq!(c.unchecked_snapshots, 1);
    }

    #[test]
    fn the_first_broken_link_is_reported() {
        // A missing version.
        let (mut events, _) = chain(5);
        events.remove(2);
        let c = check_stream(&test_scan(), &stream(events, vec![]));
        let (v, lsn, what) = broken_at(&c).unwrap();
        assert_eq!((v, lsn), (Some(4), 40));
        assert!(what.contains("expected version 3"), "{what}");
        // Event 3 altered (same link, other data): the link of version 4 breaks.
        let (mut events, h) = chain(5);
        events[2] = event(3, &h[2], b"DATA", 30).0;
        let c = check_stream(&test_scan(), &stream(events, vec![]));
        let (v, lsn, what) = broken_at(&c).unwrap();
        assert_eq!((v, lsn), (Some(4), 40));
        assert!(what.contains("of version 3 (LSN 30, shard-0/"), "{what}");
        assert_eq!(c.head, Some((3, event(3, &h[2], b"DATA", 30).1)));
        // Version 1 not linked to GENESIS.
        let (mut events, _) = chain(2);
        events[0] = event(1, &[1; 32], b"data", 10).0;
        let c = check_stream(&test_scan(), &stream(events, vec![]));
        assert_eq!(broken_at(&c).unwrap().0, Some(1));
        // A snapshot that disagrees with the chain, or is ahead of it.
        let (events, h) = chain(5);
        let snaps = vec![snapshot(2, &h[1], 25), snapshot(9, &h[5], 95)];
        let c = check_stream(&test_scan(), &stream(events, snaps));
        let (v, lsn, what) = broken_at(&c).unwrap();
        assert_eq!((v, lsn), (Some(2), 25));
        assert!(what.contains("chain_hash"), "{what}");
        assert_eq!(c.more_problems, 1, "the snapshot ahead of the events");
    }
}
