//! The `quark journal` tool against a data directory written by a real node (shut down before
//! the tool runs): inspect and its filters, JSON lines, verify on a clean log, on a resealed
//! tampered event (broken link) and on a plain flipped byte (checksum damage).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use quark::journal::JournalPolicy;
use quark::{block_on, Node, NodeConfig};
use serde_json::Value;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{Account, Deposit, Withdraw};

// ---- the data directory ----

/// The memo of `key`'s event at `version` (unique in the whole log, so a test finds the
/// event's bytes by searching for it).
fn memo(key: &str, version: u64) -> String {
    format!("memo<{key}:{version:04}>")
}

/// Writes, with a 2-shard node snapshotting every 5 events, then shuts it down:
/// - `account/ann`: 12 events, versions 3, 6, 9, 12 `Withdrew`, the others `Deposited`;
/// - `account/bob`: 2 `Deposited`;
/// - `account/7` (u64 key): 1 `Deposited`.
fn populate(dir: &Path) -> Result<()> {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n",
        dir.to_str().context("temp dir path is UTF-8")?
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml")?)
        .register_journaled::<Account>(JournalPolicy::snapshot_every(5))
        .start()?;
    let ann = node.actor_ref::<Account>("ann");
    for v in 1..=12u64 {
        let got = if v.is_multiple_of(3) {
            block_on(ann.ask(Withdraw(1)))??
        } else {
            block_on(ann.ask(Deposit(v as i64, memo("ann", v))))??
        };
        assert_eq!(got, v);
    }
    let bob = node.actor_ref::<Account>("bob");
    for v in 1..=2u64 {
        block_on(bob.ask(Deposit(10, memo("bob", v))))??;
    }
    block_on(
        node.actor_ref::<Account>(7u64)
            .ask(Deposit(1, memo("7", 1))),
    )??;
    node.shutdown();
    Ok(())
}

// ---- running the tool ----

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `quark journal <args>`; fails the test if it takes more than 30 s.
/// `quark journal <command> --data-dir <dir> <rest…>`.
fn quark_on(dir: &Path, command: &str, rest: &[&str]) -> Result<Run> {
    let mut args = vec![command, "--data-dir", dir_arg(dir)];
    args.extend_from_slice(rest);
    quark(&args)
}

fn quark(args: &[&str]) -> Result<Run> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.arg("journal").args(args);
    let (tx, rx) = mpsc::channel::<std::io::Result<Output>>();
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("quark journal {args:?} did not finish within 30 s"))??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("temp dir path is UTF-8")
}

fn json_lines(stdout: &str) -> Result<Vec<Value>> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
        .collect()
}

fn field_u64(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} not a u64 in {v}"))
}

/// The only segment file under `dir` containing `needle`, and the offset of it there.
fn find_bytes(dir: &Path, needle: &[u8]) -> Result<(PathBuf, usize)> {
    let mut hits = Vec::new();
    for shard in std::fs::read_dir(dir)? {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard)? {
            let f = f?.path();
            let bytes = std::fs::read(&f)?;
            for (at, w) in bytes.windows(needle.len()).enumerate() {
                if w == needle {
                    hits.push((f.clone(), at));
                }
            }
        }
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        n => bail!("{n} occurrences of {:?}", String::from_utf8_lossy(needle)),
    }
}

/// The record (its header offset and its batch's offset) holding byte `at` of `file`.
fn record_at(file: &Path, at: usize) -> Result<(u64, u64)> {
    let seg = quark_persist::inspect_segment(file)?;
    let r = seg
        .records
        .iter()
        .rev()
        .find(|r| r.record_offset <= at as u64)
        .context("no record before the offset")?;
    Ok((r.record_offset, r.batch_offset))
}

fn rel(dir: &Path, file: &Path) -> String {
    file.strip_prefix(dir).unwrap().display().to_string()
}

// ---- tests ----

#[test]
fn inspect_lists_streams_and_events_and_filters_them() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    populate(tmp.path())?;
    let dir = dir_arg(tmp.path());

    // Summary: one row per actor.
    let r = quark(&["inspect", "--data-dir", dir])?;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let row = |actor: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{actor} ")))
            .unwrap_or_else(|| panic!("no row for {actor} in\n{}", r.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // ACTOR SHARD EVENTS VERSIONS SNAPSHOTS BYTES
    assert_eq!(row("account/\"ann\"")[2..5], ["12", "1..12", "2"]);
    assert_eq!(row("account/\"bob\"")[2..5], ["2", "1..2", "0"]);
    assert_eq!(row("account/7")[2..5], ["1", "1..1", "0"]);
    assert!(r
        .stdout
        .contains("3 actors, 15 events, 2 snapshots in 2 shards"));

    // One actor's events, as a table.
    let r = quark(&["inspect", "--data-dir", dir, "--actor", "account/ann"])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 12);
    for (i, row) in rows.iter().enumerate() {
        let v = i as u64 + 1;
        assert_eq!(row[0], v.to_string());
        let ty = if v.is_multiple_of(3) {
            "Withdrew"
        } else {
            "Deposited"
        };
        assert_eq!(row[3], ty, "{row:?}");
        assert!(
            row[6].starts_with("shard-") && row[6].ends_with(".seg"),
            "{row:?}"
        );
    }

    // JSON lines, with every documented field.
    let r = quark(&[
        "inspect",
        "--data-dir",
        dir,
        "--actor",
        "account/ann",
        "--json",
    ])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = json_lines(&r.stdout)?;
    assert_eq!(lines.len(), 12);
    let v5 = &lines[4];
    assert_eq!(v5["record"], "event");
    assert_eq!(v5["actor"], "account/\"ann\"");
    assert_eq!(
        (&v5["type"], &v5["key"], &v5["key_kind"]),
        (&"account".into(), &"ann".into(), &"str".into())
    );
    assert_eq!(field_u64(v5, "version"), 5);
    assert_eq!(v5["event_type"], "Deposited");
    assert_eq!(field_u64(v5, "schema_version"), 1);
    for f in [
        "timestamp_ms",
        "lsn",
        "origin_lsn",
        "shard",
        "offset",
        "batch_offset",
        "data_bytes",
    ] {
        field_u64(v5, f);
    }
    // The data is the stored bytes in hex: the memo is in it.
    let data = v5["data"].as_str().unwrap();
    let memo_hex: String = memo("ann", 5).bytes().map(|b| format!("{b:02x}")).collect();
    assert!(data.contains(&memo_hex), "{data}");
    assert_eq!(data.len() as u64, 2 * field_u64(v5, "data_bytes"));
    // The chain: each event's prev_hash is the previous event's hash.
    assert_eq!(lines[0]["prev_hash"], "0".repeat(64));
    for w in lines.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    // The file and offset point at the record: its bytes hold the memo.
    let (file, at) = find_bytes(tmp.path(), memo("ann", 5).as_bytes())?;
    assert_eq!(v5["file"], rel(tmp.path(), &file));
    assert_eq!(record_at(&file, at)?.0, field_u64(v5, "offset"));

    // Filters.
    let versions = |args: &[&str]| -> Result<Vec<u64>> {
        let mut a = vec![
            "inspect",
            "--data-dir",
            dir,
            "--actor",
            "account/ann",
            "--json",
        ];
        a.extend_from_slice(args);
        let r = quark(&a)?;
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        Ok(json_lines(&r.stdout)?
            .iter()
            .map(|l| field_u64(l, "version"))
            .collect())
    };
    assert_eq!(
        versions(&["--from-version", "4", "--to-version", "6"])?,
        [4, 5, 6]
    );
    assert_eq!(versions(&["--event-type", "Withdrew"])?, [3, 6, 9, 12]);
    let t7 = field_u64(&lines[6], "timestamp_ms");
    let t9 = field_u64(&lines[8], "timestamp_ms");
    let expected: Vec<u64> = lines
        .iter()
        .filter(|l| (t7..=t9).contains(&field_u64(l, "timestamp_ms")))
        .map(|l| field_u64(l, "version"))
        .collect();
    assert!(expected.contains(&7) && expected.contains(&9));
    let since = versions(&["--since", &t7.to_string(), "--until", &t9.to_string()])?;
    assert_eq!(since, expected);
    // RFC 3339 times (as printed, with ms) select the same.
    let (r7, r9) = (
        lines[6]["timestamp"].as_str().unwrap(),
        lines[8]["timestamp"].as_str().unwrap(),
    );
    assert_eq!(versions(&["--since", r7, "--until", r9])?, expected);
    // Snapshots (at versions 5 and 10) join the listing.
    let r = quark(&[
        "inspect",
        "--data-dir",
        dir,
        "--actor",
        "account/ann",
        "--json",
        "--snapshots",
    ])?;
    let snaps: Vec<u64> = json_lines(&r.stdout)?
        .iter()
        .filter(|l| l["record"] == "snapshot")
        .map(|l| field_u64(l, "version"))
        .collect();
    assert_eq!(snaps, [5, 10]);
    // Key syntaxes: u64, quoted string.
    let r = quark(&[
        "inspect",
        "--data-dir",
        dir,
        "--actor",
        "account/7",
        "--json",
    ])?;
    assert_eq!(json_lines(&r.stdout)?[0]["key_kind"], "u64");
    let r = quark(&[
        "inspect",
        "--data-dir",
        dir,
        "--actor",
        "account/\"bob\"",
        "--json",
    ])?;
    assert_eq!(json_lines(&r.stdout)?.len(), 2);
    // Summary of one type, as JSON.
    let r = quark(&["inspect", "--data-dir", dir, "--type", "account", "--json"])?;
    assert_eq!(json_lines(&r.stdout)?.len(), 3);

    // Export: every event of every actor.
    let r = quark(&["export", "--data-dir", dir])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = json_lines(&r.stdout)?;
    assert_eq!(all.len(), 15);
    assert_eq!(all.iter().filter(|l| l["key"] == "bob").count(), 2);
    Ok(())
}

#[test]
fn errors_name_the_thing_and_exit_2() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("nope");
    let r = quark(&["verify", "--data-dir", dir_arg(&missing)])?;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains(dir_arg(&missing)), "{}", r.stderr);

    std::fs::write(tmp.path().join("notes.txt"), "hello")?;
    let dir = dir_arg(tmp.path());
    let refused = |args: &[&str], says: &str| -> Result<()> {
        let r = quark(args)?;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        Ok(())
    };
    refused(
        &["inspect", "--data-dir", dir],
        "not a Quark data directory",
    )?;
    refused(
        &["inspect", "--data-dir", dir, "--actor", "account"],
        "\"account\" is not TYPE/KEY",
    )?;
    refused(&["inspect", "--data-dir", dir, "--since", "soon"], "soon")?;
    populate(tmp.path())?;
    refused(
        &["inspect", "--data-dir", dir, "--actor", "account/zed"],
        "account/\"zed\" has no journal records",
    )?;
    Ok(())
}

#[test]
fn verify_passes_on_a_clean_log() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    populate(tmp.path())?;
    let r = quark_on(tmp.path(), "verify", &["--print-heads"])?;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("head "), "{}", r.stdout);
    assert!(
        r.stdout.contains("OK: 3 actors in 2 shards")
            && r.stdout
                .contains("15 events and 2 snapshots read; 3 OK, 0 broken; 0 damaged"),
        "{}",
        r.stdout
    );
    // The head of ann is the hash of its last event.
    let export = quark_on(tmp.path(), "export", &["--actor", "account/ann"])?;
    let last = json_lines(&export.stdout)?.pop().context("no events")?;
    let hash = last["hash"].as_str().unwrap();
    assert!(
        r.stdout.contains(&format!(
            "head account/\"ann\" shard={} version=12 hash={hash}",
            last["shard"]
        )),
        "{}",
        r.stdout
    );
    Ok(())
}

#[test]
fn verify_reports_a_resealed_tampered_event_as_a_broken_link() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    populate(tmp.path())?;
    let (file, at) = find_bytes(tmp.path(), memo("ann", 4).as_bytes())?;
    let (record, batch) = record_at(&file, at)?;
    let mut bytes = std::fs::read(&file)?;
    bytes[at] ^= 0x20; // "memo" -> "Memo"
    assert!(quark_persist::fuzz::reseal_batch_at(
        &mut bytes,
        batch as usize
    ));
    std::fs::write(&file, &bytes)?;

    let r = quark_on(tmp.path(), "verify", &[])?;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let broken: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("BROKEN"))
        .collect();
    assert_eq!(broken.len(), 1, "{}", r.stdout);
    let line = broken[0];
    // Reported at version 5, whose prev_hash no longer matches the hash of version 4, naming
    // version 4's record (the tampered one) by file and offset.
    assert!(line.starts_with("BROKEN account/\"ann\" (shard "), "{line}");
    assert!(line.contains(" at version 5, "), "{line}");
    let f = rel(tmp.path(), &file);
    assert!(line.contains(" of version 4 (LSN "), "{line}");
    assert!(line.contains(&format!("{f} offset {record})")), "{line}");
    assert!(
        !r.stdout.contains("DAMAGE"),
        "the checksum verifies: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("FAILED: 3 actors") && r.stdout.contains("2 OK, 1 broken"),
        "{}",
        r.stdout
    );

    // Only ann is checked with --actor; bob alone passes.
    let r = quark_on(tmp.path(), "verify", &["--actor", "account/bob"])?;
    assert_eq!(r.code, 0, "{}", r.stdout);
    Ok(())
}

#[test]
fn verify_reports_checksum_damage_with_file_and_offset() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    populate(tmp.path())?;
    let (file, at) = find_bytes(tmp.path(), memo("bob", 1).as_bytes())?;
    let (_, batch) = record_at(&file, at)?;
    let mut bytes = std::fs::read(&file)?;
    bytes[at + 2] ^= 1;
    std::fs::write(&file, &bytes)?;

    let r = quark_on(tmp.path(), "verify", &[])?;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let f = rel(tmp.path(), &file);
    assert!(
        r.stdout
            .contains(&format!("DAMAGE {f} offset {batch}: checksum mismatch")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("; 1 damaged position in 1 file"),
        "{}",
        r.stdout
    );
    // Inspect still lists what verifies and warns about the damage.
    let r = quark_on(tmp.path(), "inspect", &[])?;
    assert_eq!(r.code, 0);
    assert!(
        r.stderr.contains(&format!("{f} at offset {batch}")),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn verify_follows_retention_and_erasure() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\n\
         fsync = \"always\"\n[actors.account]\nsnapshot_every_events = 5\nretention_age_ms = 1\n",
        dir_arg(tmp.path())
    );
    let start = || -> Result<Node> {
        Ok(Node::builder()
            .config(NodeConfig::from_toml(&text, "test.toml")?)
            .register_journaled::<Account>(JournalPolicy::default())
            .start()?)
    };
    let node = start()?;
    let ann = node.actor_ref::<Account>("ann");
    for v in 1..=17u64 {
        block_on(ann.ask(Deposit(1, memo("ann", v))))??;
        // Let each snapshot age past the 1 ms retention before the next persist (not a
        // synchronisation: only the snapshots' age matters).
        std::thread::sleep(Duration::from_millis(2));
    }
    let retained = block_on(
        node.journal()
            .events_by_version::<Account>("ann", 0..=u64::MAX),
    )?;
    let first = retained.first().context("events retained")?.version;
    assert!(first > 1, "retention dropped early events");
    let bob = node.actor_ref::<Account>("bob");
    block_on(bob.ask(Deposit(1, memo("bob", 1))))??;
    block_on(bob.ask(Deposit(1, memo("bob", 2))))??;
    node.shutdown();

    // The records retention superseded are still in the files (no compaction ran), but they
    // are not shown, and the retained stream is anchored on the snapshot at first - 1.
    assert!(find_bytes(tmp.path(), memo("ann", 1).as_bytes()).is_ok());
    let streams = || -> Result<Vec<Value>> {
        let r = quark_on(tmp.path(), "inspect", &["--json"])?;
        assert_eq!(r.code, 0, "{}", r.stderr);
        json_lines(&r.stdout)
    };
    let of = |streams: &[Value], key: &str| -> Value {
        streams
            .iter()
            .find(|l| l["key"] == key)
            .unwrap_or_else(|| panic!("no stream {key}: {streams:?}"))
            .clone()
    };
    let s = streams()?;
    assert_eq!(field_u64(&of(&s, "ann"), "first_version"), first);
    assert_eq!(field_u64(&of(&s, "ann"), "last_version"), 17);
    let verify = || -> Result<()> {
        let r = quark_on(tmp.path(), "verify", &[])?;
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert!(!r.stdout.contains("note:"), "{}", r.stdout);
        assert!(r.stdout.contains("2 OK, 0 broken"), "{}", r.stdout);
        Ok(())
    };
    verify()?;

    // Erase bob's stream and start a new one: only the new stream is shown and verified.
    let node = start()?;
    block_on(node.journal().erase::<Account>("bob"))?;
    let bob = node.actor_ref::<Account>("bob");
    assert_eq!(block_on(bob.ask(Deposit(1, memo("bob-again", 1))))??, 1);
    node.shutdown();
    let s = streams()?;
    assert_eq!(field_u64(&of(&s, "bob"), "events"), 1);
    assert_eq!(field_u64(&of(&s, "bob"), "first_version"), 1);
    verify()
}
