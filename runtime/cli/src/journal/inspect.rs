//! `inspect` and `export`: the selected streams as a summary, an event table or JSON lines.

use std::io::Write;

use anyhow::Result;
use quark::journal::format::{EventRecord, Hash, SnapshotRecord};
use quark::ActorKey;

use super::output::{count, hex, write_json_line, write_table};
use super::scan::{scan, warn_damage, warn_undecodable, ActorStream, Scan, Stored};
use super::select::Filters;
use super::time::format_time;
use super::{require_actor, Outcome, Source};

#[derive(clap::Args, Debug)]
pub(super) struct InspectArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
    /// JSON lines: one object per event (with `--actor`) or per stream (summary).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
}

pub(super) fn inspect(args: &InspectArgs, out: &mut impl Write) -> Result<Outcome> {
    let f = &args.filters;
    let dir = &args.source.data_dir;
    let one_actor = f.actor.is_some();
    let scan = scan(dir, &|t, k| f.selects(t, k), one_actor && args.json)?;
    warn_damage(&scan);
    let streams = match &f.actor {
        Some(sel) => require_actor(&scan, sel, dir)?,
        None => scan.actors.values().collect(),
    };
    for a in &streams {
        warn_undecodable(&scan, a);
    }
    match (one_actor, args.json) {
        (true, true) => {
            for a in streams {
                write_json_lines(&scan, a, f, out)?;
            }
        }
        (true, false) => {
            for a in streams {
                write_event_table(&scan, a, f, out)?;
            }
        }
        (false, json) => write_summary(&scan, &streams, f, json, out)?,
    }
    Ok(Outcome::Clean)
}

pub(super) fn export(args: &ExportArgs, out: &mut impl Write) -> Result<Outcome> {
    let f = &args.filters;
    let dir = &args.source.data_dir;
    let scan = scan(dir, &|t, k| f.selects(t, k), true)?;
    warn_damage(&scan);
    if let Some(sel) = &f.actor {
        require_actor(&scan, sel, dir)?;
    }
    for a in scan.actors.values() {
        warn_undecodable(&scan, a);
        write_json_lines(&scan, a, f, out)?;
    }
    Ok(Outcome::Clean)
}

/// A stream's events and (with `--snapshots`) snapshots that pass the filters, in version
/// order; a snapshot at version v follows the event v.
fn selected<'a>(a: &'a ActorStream, f: &Filters) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = a
        .decoded_events()
        .filter(|(_, e, _)| f.event(e))
        .map(|(s, e, h)| Row::Event(s, e, h))
        .collect();
    if f.snapshots {
        rows.extend(
            a.decoded_snapshots()
                .filter(|(_, snap)| f.snapshot(snap))
                .map(|(s, snap)| Row::Snapshot(s, snap)),
        );
    }
    rows.sort_by_key(|r| match r {
        Row::Event(s, e, _) => (e.version, 0, s.place.origin_lsn),
        Row::Snapshot(s, snap) => (snap.version, 1, s.place.origin_lsn),
    });
    rows
}

enum Row<'a> {
    Event(&'a Stored, &'a EventRecord, &'a Hash),
    Snapshot(&'a Stored, &'a SnapshotRecord),
}

/// An actor key in JSON: a number for u64 keys (exact: serde_json keeps u64), the string for
/// string keys, `0x` + hex for byte keys; `key_kind` says which.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum JsonKey<'a> {
    U64(u64),
    Str(&'a str),
    Hex(String),
}

fn key_json(key: &ActorKey) -> (JsonKey<'_>, &'static str) {
    match key {
        ActorKey::U64(k) => (JsonKey::U64(*k), "u64"),
        ActorKey::Str(s) => (JsonKey::Str(s), "str"),
        ActorKey::Bytes(b) => (JsonKey::Hex(format!("0x{}", hex(b))), "bytes"),
    }
}

// Format (export / inspect --json, one object per line; full table in docs/JOURNALING.md):
//   { record: "event" | "snapshot", actor, type, key, key_kind, shard, version, timestamp_ms,
//     timestamp, event_type (events), schema_version, lsn, origin_lsn, file, offset,
//     batch_offset, data_bytes, data (hex), prev_hash + hash (events) | chain_hash (snapshots) }
/// One event or snapshot as a JSON line.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    record: &'static str,
    actor: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
    key: &'a JsonKey<'a>,
    key_kind: &'static str,
    shard: u32,
    version: u64,
    timestamp_ms: u64,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    schema_version: u16,
    lsn: u64,
    origin_lsn: u64,
    file: &'a str,
    offset: u64,
    batch_offset: u64,
    data_bytes: u64,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_hash: Option<String>,
}

// Format (inspect --json without --actor, one object per stream):
//   { record: "stream", actor, type, key, key_kind, shard, events, first_version, last_version,
//     snapshots, bytes }
/// One stream of the summary as a JSON line.
#[derive(serde::Serialize)]
struct StreamLine<'a> {
    record: &'static str,
    actor: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
    key: &'a JsonKey<'a>,
    key_kind: &'static str,
    shard: u32,
    events: u64,
    first_version: Option<u64>,
    last_version: Option<u64>,
    snapshots: u64,
    bytes: u64,
}

fn write_json_lines(scan: &Scan, a: &ActorStream, f: &Filters, out: &mut impl Write) -> Result<()> {
    let (key, key_kind) = key_json(&a.key);
    let actor = a.actor();
    for row in selected(a, f) {
        let s = match row {
            Row::Event(s, _, _) | Row::Snapshot(s, _) => s,
        };
        let mut line = RecordLine {
            record: "event",
            actor: &actor,
            type_name: &a.type_name,
            key: &key,
            key_kind,
            shard: a.shard,
            version: 0,
            timestamp_ms: 0,
            timestamp: String::new(),
            event_type: None,
            schema_version: 0,
            lsn: s.place.lsn,
            origin_lsn: s.place.origin_lsn,
            file: &scan.files[s.place.file],
            offset: s.place.offset,
            batch_offset: s.place.batch_offset,
            data_bytes: s.data_bytes,
            data: String::new(),
            prev_hash: None,
            hash: None,
            chain_hash: None,
        };
        match row {
            Row::Event(_, e, h) => {
                line.version = e.version;
                line.timestamp_ms = e.timestamp_ms;
                line.event_type = Some(&e.event_type);
                line.schema_version = e.schema_version;
                line.data = hex(&e.data);
                line.prev_hash = Some(hex(&e.prev_hash));
                line.hash = Some(hex(h));
            }
            Row::Snapshot(_, snap) => {
                line.record = "snapshot";
                line.version = snap.version;
                line.timestamp_ms = snap.timestamp_ms;
                line.schema_version = snap.schema_version;
                line.data = hex(&snap.data);
                line.chain_hash = Some(hex(&snap.chain_hash));
            }
        }
        line.timestamp = format_time(line.timestamp_ms);
        write_json_line(out, &line)?;
    }
    Ok(())
}

fn versions(a: &ActorStream) -> String {
    let mut v = a.decoded_events().map(|(_, e, _)| e.version);
    match (v.next(), v.last()) {
        (Some(first), Some(last)) => format!("{first}..{last}"),
        (Some(first), None) => format!("{first}..{first}"),
        _ => "-".into(),
    }
}

fn write_event_table(
    scan: &Scan,
    a: &ActorStream,
    f: &Filters,
    out: &mut impl Write,
) -> Result<()> {
    writeln!(
        out,
        "{} (shard {}): {} events, versions {}, {} snapshots",
        a.actor(),
        a.shard,
        a.events.len(),
        versions(a),
        a.snapshots.len()
    )?;
    let rows: Vec<Vec<String>> = selected(a, f)
        .into_iter()
        .map(|row| {
            let (s, version, ts, what, schema) = match row {
                Row::Event(s, e, _) => (
                    s,
                    e.version,
                    e.timestamp_ms,
                    e.event_type.clone(),
                    e.schema_version,
                ),
                Row::Snapshot(s, snap) => (
                    s,
                    snap.version,
                    snap.timestamp_ms,
                    "(snapshot)".to_owned(),
                    snap.schema_version,
                ),
            };
            vec![
                version.to_string(),
                format_time(ts),
                ts.to_string(),
                what,
                schema.to_string(),
                s.place.lsn.to_string(),
                scan.files[s.place.file].clone(),
                s.place.offset.to_string(),
                s.data_bytes.to_string(),
            ]
        })
        .collect();
    write_table(
        out,
        &[
            "VERSION",
            "TIME",
            "TIME_MS",
            "EVENT_TYPE",
            "SCHEMA",
            "LSN",
            "FILE",
            "OFFSET",
            "DATA_BYTES",
        ],
        &rows,
    )?;
    Ok(())
}

fn write_summary(
    scan: &Scan,
    streams: &[&ActorStream],
    f: &Filters,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let mut rows = Vec::new();
    let (mut events_total, mut snapshots_total) = (0u64, 0u64);
    for a in streams {
        let events: Vec<_> = a.decoded_events().filter(|(_, e, _)| f.event(e)).collect();
        let snapshots = a.decoded_snapshots().filter(|(_, s)| f.snapshot(s)).count() as u64;
        let first = events.first().map(|(_, e, _)| e.version);
        let last = events.last().map(|(_, e, _)| e.version);
        let bytes: u64 = events.iter().map(|(s, _, _)| s.payload_bytes).sum::<u64>()
            + a.decoded_snapshots()
                .filter(|(_, s)| f.snapshot(s))
                .map(|(s, _)| s.payload_bytes)
                .sum::<u64>();
        events_total += events.len() as u64;
        snapshots_total += snapshots;
        if json {
            let (key, key_kind) = key_json(&a.key);
            let line = StreamLine {
                record: "stream",
                actor: &a.actor(),
                type_name: &a.type_name,
                key: &key,
                key_kind,
                shard: a.shard,
                events: events.len() as u64,
                first_version: first,
                last_version: last,
                snapshots,
                bytes,
            };
            write_json_line(out, &line)?;
        } else {
            rows.push(vec![
                a.actor(),
                a.shard.to_string(),
                events.len().to_string(),
                match (first, last) {
                    (Some(f), Some(l)) => format!("{f}..{l}"),
                    _ => "-".into(),
                },
                snapshots.to_string(),
                bytes.to_string(),
            ]);
        }
    }
    if !json {
        write_table(
            out,
            &["ACTOR", "SHARD", "EVENTS", "VERSIONS", "SNAPSHOTS", "BYTES"],
            &rows,
        )?;
        writeln!(
            out,
            "{}, {}, {} in {} ({})",
            count(streams.len() as u64, "actor"),
            count(events_total, "event"),
            count(snapshots_total, "snapshot"),
            count(scan.shard_count as u64, "shard"),
            count(scan.files.len() as u64, "segment file"),
        )?;
    }
    Ok(())
}
