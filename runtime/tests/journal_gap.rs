//! A gap in an actor's event stream (a middle log segment quarantined by recovery) is never
//! skipped: activation rebuilds from the latest snapshot plus every event after it *by
//! version*, loads fine when the lost events all precede that snapshot, and refuses with
//! `CallError::ActivationFailed` naming the missing versions when an event it needs is gone.
//! A refused activation writes nothing, so no version is ever written twice; the operator can
//! give such a stream up with `Journal::erase`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quark::journal::{At, JournalError, JournalPolicy};
use quark::{block_on, ActorId, ActorKey, CallError, Node, NodeConfig};

mod common;
use common::{Account, Deposit, Get};

/// Events written to the actor; with [`MEMO_BYTES`] memos they fill about four 1 MiB
/// segments.
const EVENTS: u64 = 400;
const SNAPSHOT_EVERY: u64 = 50;
const MEMO_BYTES: usize = 8 << 10;
/// The newest snapshot: written with the first event of the batch that found it due, so it
/// holds the state at the last multiple of [`SNAPSHOT_EVERY`] below [`EVENTS`].
const LAST_SNAPSHOT: u64 = (EVENTS - 1) / SNAPSHOT_EVERY * SNAPSHOT_EVERY;

fn start(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 1\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\n\
         fsync = \"always\"\nrecovery = \"quarantine\"\n",
        dir.to_str().unwrap()
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").unwrap())
        .register_journaled::<Account>(JournalPolicy::snapshot_every(SNAPSHOT_EVERY))
        .start()
        .unwrap()
}

fn deposit(node: &Node, amount: i64) -> u64 {
    block_on(
        node.actor_ref::<Account>("ann")
            .ask(Deposit(amount, "m".repeat(MEMO_BYTES))),
    )
    .unwrap()
    .unwrap()
}

/// The segment files of shard 0, by base LSN.
fn segments(dir: &Path) -> BTreeMap<u64, PathBuf> {
    std::fs::read_dir(dir.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let base = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((base, p))
        })
        .collect()
}

/// Writes versions 1..=EVENTS (deposit `v` at version `v`), stops the node, and returns the
/// versions held by each segment, in segment order.
fn write_stream(dir: &Path) -> Vec<(PathBuf, Vec<u64>)> {
    let node = start(dir);
    for v in 1..=EVENTS {
        assert_eq!(deposit(&node, v as i64), v);
    }
    let events = block_on(
        node.journal()
            .events_by_version::<Account>("ann", 0..=u64::MAX),
    )
    .unwrap();
    node.shutdown();
    assert_eq!(events.len() as u64, EVENTS);
    let segs = segments(dir);
    let mut by_segment: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in &events {
        let (&base, _) = segs
            .range(..=e.lsn)
            .next_back()
            .expect("a segment holds it");
        by_segment.entry(base).or_default().push(e.version);
    }
    let out: Vec<_> = segs
        .iter()
        .map(|(base, p)| (p.clone(), by_segment.remove(base).unwrap_or_default()))
        .collect();
    assert!(
        out.len() >= 4 && out.iter().all(|(_, v)| !v.is_empty()),
        "expected at least four segments, each with events: {:?}",
        out.iter().map(|(_, v)| v.len()).collect::<Vec<_>>()
    );
    out
}

/// Flips a byte inside the first record of `seg`: recovery (`quarantine`) moves the segment
/// aside and every record in it is lost.
fn damage(seg: &Path) {
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[4096 + 100] ^= 0x5a;
    std::fs::write(seg, bytes).unwrap();
}

fn quarantined(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("shard-0").join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn lost_events_before_the_latest_snapshot_do_not_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = write_stream(tmp.path());
    // The second segment: every version in it precedes the latest snapshot.
    let (seg, lost) = &segs[1];
    assert!(
        *lost.last().unwrap() < LAST_SNAPSHOT,
        "segment 2 holds versions {lost:?}, not all before the snapshot at {LAST_SNAPSHOT}"
    );
    damage(seg);

    let total: i64 = (1..=EVENTS as i64).sum();
    let node = start(tmp.path());
    assert_eq!(
        quarantined(tmp.path()),
        1,
        "recovery quarantined the segment"
    );
    let ann = node.actor_ref::<Account>("ann");
    // The snapshot, then every event after it (by version): nothing skipped.
    assert_eq!(
        block_on(ann.ask(Get)).unwrap(),
        (total, EVENTS - LAST_SNAPSHOT),
        "state and events applied after the snapshot at {LAST_SNAPSHOT}"
    );
    assert_eq!(
        block_on(node.journal().version::<Account>("ann")).unwrap(),
        EVENTS
    );
    // Time travel: to a point whose events are all there, fine; into the gap, refused naming it.
    let journal = node.journal();
    let before_gap = lost[0] - 1;
    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::Version(before_gap))).unwrap(),
        ((1..=before_gap as i64).sum(), before_gap)
    );
    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::Version(LAST_SNAPSHOT))).unwrap(),
        ((1..=LAST_SNAPSHOT as i64).sum(), LAST_SNAPSHOT)
    );
    let (first, last) = (lost[0], *lost.last().unwrap());
    // (The snapshots taken within the lost versions are lost with them: each is stored with
    // the event after its version.)
    match block_on(journal.state_at::<Account>("ann", At::Version(first))) {
        Err(JournalError::VersionGap {
            first_missing,
            last_missing,
            next_version,
            ..
        }) => assert_eq!(
            (first_missing, last_missing, next_version),
            (first, last, last + 1)
        ),
        other => panic!("time travel into the gap: expected a version gap, got {other:?}"),
    }
    // A dry-run replay from version 1 meets the gap too.
    match block_on(journal.replay::<Account>("ann", At::Latest, |_| {})) {
        Err(JournalError::VersionGap {
            first_missing,
            last_missing,
            ..
        }) => assert_eq!((first_missing, last_missing), (first, last)),
        other => panic!("replay across the gap: expected a version gap, got {other:?}"),
    }
    // Versions continue after the last intact one, never re-issuing one.
    assert_eq!(deposit(&node, 1000), EVENTS + 1);
    node.shutdown();

    let node = start(tmp.path());
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get))
            .unwrap()
            .0,
        total + 1000
    );
    let versions: Vec<u64> = block_on(
        node.journal()
            .events_by_version::<Account>("ann", 0..=u64::MAX),
    )
    .unwrap()
    .iter()
    .map(|e| e.version)
    .collect();
    let expected: Vec<u64> = (1..=EVENTS + 1).filter(|v| !lost.contains(v)).collect();
    assert_eq!(versions, expected, "each version once, in order");
    node.shutdown();
}

#[test]
fn a_gap_after_the_latest_usable_snapshot_refuses_activation_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = write_stream(tmp.path());
    // The second-to-last segment: it holds the event written with the latest snapshot (so
    // that snapshot is lost too), and a later segment still holds newer events.
    let (seg, lost) = &segs[segs.len() - 2];
    assert!(
        lost.contains(&(LAST_SNAPSHOT + 1)),
        "segment {seg:?} holds versions {lost:?}, not the one after the latest snapshot"
    );
    let (first, last) = (lost[0], *lost.last().unwrap());
    damage(seg);

    let node = start(tmp.path());
    assert_eq!(
        quarantined(tmp.path()),
        1,
        "recovery quarantined the segment"
    );
    let ann = node.actor_ref::<Account>("ann");
    for attempt in 0..2 {
        match block_on(ann.ask(Deposit(1, "after the gap".into()))) {
            Err(CallError::ActivationFailed { actor, detail }) => {
                assert_eq!(actor.type_name, "account");
                assert_eq!(actor.key, ActorKey::from("ann"));
                let range = format!("versions {first}..={last} are missing");
                assert!(
                    detail.contains(&range),
                    "attempt {attempt}: {detail:?} names {range:?}"
                );
            }
            other => panic!("attempt {attempt}: expected ActivationFailed, got {other:?}"),
        }
    }
    // The journal API reports the same gap, as a structured error naming the actor by its
    // typed id (shown in the message with the key as written).
    match block_on(node.journal().state_at::<Account>("ann", At::Latest)) {
        Err(
            e @ JournalError::VersionGap {
                first_missing,
                last_missing,
                ..
            },
        ) => {
            assert_eq!((first_missing, last_missing), (first, last));
            let JournalError::VersionGap { actor, .. } = &e else {
                unreachable!("matched above")
            };
            assert_eq!(*actor, ActorId::new("account", "ann"));
            assert!(
                e.to_string()
                    .starts_with("journal of account/ann: versions "),
                "{e}"
            );
        }
        other => panic!("expected a version gap, got {other:?}"),
    }
    node.shutdown();

    // Nothing was written: the stream still ends at the last version written before.
    let node = start(tmp.path());
    let versions: Vec<u64> = block_on(
        node.journal()
            .events_by_version::<Account>("ann", 0..=u64::MAX),
    )
    .unwrap()
    .iter()
    .map(|e| e.version)
    .collect();
    let expected: Vec<u64> = (1..=EVENTS).filter(|v| !lost.contains(v)).collect();
    assert_eq!(versions, expected, "no version written twice, none added");

    // The operator gives the stream up: erasure works although the actor cannot be loaded,
    // and the actor then starts again from version 0.
    let report = block_on(node.journal().erase::<Account>("ann")).unwrap();
    assert!(report.records_erased >= expected.len() as u64, "{report:?}");
    assert_eq!(
        block_on(
            node.actor_ref::<Account>("ann")
                .ask(Deposit(7, "fresh".into()))
        )
        .unwrap()
        .unwrap(),
        1
    );
    node.shutdown();
    let node = start(tmp.path());
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get)).unwrap(),
        (7, 1)
    );
    node.shutdown();
}

#[test]
fn restoring_the_quarantined_segment_closes_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = write_stream(tmp.path());
    let (seg, _) = &segs[segs.len() - 2];
    let original = std::fs::read(seg).unwrap();
    damage(seg);
    let node = start(tmp.path());
    assert_eq!(
        quarantined(tmp.path()),
        1,
        "recovery quarantined the segment"
    );
    let r = block_on(node.actor_ref::<Account>("ann").ask(Get));
    assert!(
        matches!(r, Err(CallError::ActivationFailed { .. })),
        "{r:?}"
    );
    node.shutdown();

    // The operator restores the segment from a backup (here: its bytes before the damage) and
    // removes the quarantined copy.
    let moved = tmp
        .path()
        .join("shard-0")
        .join("quarantine")
        .join(seg.file_name().unwrap());
    std::fs::remove_file(&moved).unwrap();
    std::fs::write(seg, original).unwrap();
    let node = start(tmp.path());
    let total: i64 = (1..=EVENTS as i64).sum();
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get)).unwrap(),
        (total, EVENTS - LAST_SNAPSHOT)
    );
    assert_eq!(deposit(&node, 1), EVENTS + 1);
    node.shutdown();
}
