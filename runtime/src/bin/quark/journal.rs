//! `quark journal`: reads the journals in a stopped node's data directory, offline.
//!
//! - `inspect`: a summary of every actor's stream, or one actor's events (`--actor`), as a
//!   table or as JSON lines (`--json`).
//! - `export`: every matching event as a JSON line (the format of `inspect --json`).
//! - `verify`: checks every stream's versions and hash chain, the snapshots' chain hashes, and
//!   reports log damage (checksum failures) with file and offset.
//!
//! Files are opened read-only through `quark_persist::inspect_dir`; nothing is ever written.
//! The walk applies the log's liveness rules (snapshot and truncate barriers, compaction
//! copies) itself, so it shows what the runtime would load. Memory: the decoded records of
//! the selected actors (event data only when it is printed).
//!
//! Exit codes: 0 success, 1 `verify` found a broken stream or log damage, 2 a usage error or a
//! failure to run (the message names the directory, file, actor or argument).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use quark::journal::format::{self, EventRecord, FormatError, Hash, SnapshotRecord, Stream};
use quark::ActorKey;
use quark_persist::{inspect_dir, DamageKind, RecordKind, QUARANTINE_DIR};

// ---- command line ----

/// `quark journal` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JournalCommand {
    /// Summarise every actor's stream, or list one actor's events (`--actor`).
    Inspect(InspectArgs),
    /// Print every matching event as one JSON object per line (as `inspect --json`).
    Export(ExportArgs),
    /// Check versions, hash chains, snapshots and log checksums; exit 1 on any problem.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
    /// JSON lines: one object per event (with `--actor`) or per stream (summary).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
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

#[derive(clap::Args, Debug)]
struct Source {
    /// The node's data directory (its `[log] data_dir`, holding `shard-<N>/`), opened read-only.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct Filters {
    /// Only this actor: `TYPE/KEY` with KEY a u64 (`account/42`), a string (`account/ann`;
    /// quote it, `account/"42"`, when it looks like a number or hex) or bytes (`account/0x00ff`).
    #[arg(long, value_name = "TYPE/KEY", value_parser = parse_actor)]
    actor: Option<ActorSel>,
    /// Only actors of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "actor")]
    type_name: Option<String>,
    /// Only versions from N on (inclusive).
    #[arg(long, value_name = "N")]
    from_version: Option<u64>,
    /// Only versions up to N (inclusive).
    #[arg(long, value_name = "N")]
    to_version: Option<u64>,
    /// Only records persisted at or after this time (ms since the Unix epoch, or RFC 3339).
    #[arg(long, value_name = "MS|RFC3339", value_parser = parse_time)]
    since: Option<u64>,
    /// Only records persisted at or before this time (ms since the Unix epoch, or RFC 3339).
    #[arg(long, value_name = "MS|RFC3339", value_parser = parse_time)]
    until: Option<u64>,
    /// Only events with this type name.
    #[arg(long, value_name = "NAME")]
    event_type: Option<String>,
    /// Also list the snapshots (with `--actor`, and in `export`).
    #[arg(long)]
    snapshots: bool,
}

impl Filters {
    fn selects(&self, type_name: &str, key: &ActorKey) -> bool {
        match (&self.actor, &self.type_name) {
            (Some(a), _) => a.type_name == type_name && &a.key == key,
            (None, Some(t)) => t == type_name,
            (None, None) => true,
        }
    }

    fn in_range(&self, version: u64, timestamp_ms: u64) -> bool {
        self.from_version.is_none_or(|v| version >= v)
            && self.to_version.is_none_or(|v| version <= v)
            && self.since.is_none_or(|t| timestamp_ms >= t)
            && self.until.is_none_or(|t| timestamp_ms <= t)
    }

    fn event(&self, e: &EventRecord) -> bool {
        self.in_range(e.version, e.timestamp_ms)
            && self.event_type.as_ref().is_none_or(|n| *n == e.event_type)
    }

    fn snapshot(&self, s: &SnapshotRecord) -> bool {
        self.in_range(s.version, s.timestamp_ms)
    }
}

/// An actor named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ActorSel {
    type_name: String,
    key: ActorKey,
}

impl fmt::Display for ActorSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.type_name, self.key)
    }
}

/// Parses `TYPE/KEY` (split at the first `/`; see [`parse_key`]).
fn parse_actor(s: &str) -> Result<ActorSel, String> {
    let Some((type_name, key)) = s.split_once('/') else {
        return Err(format!(
            "actor {s:?} is not TYPE/KEY (for example account/42, account/ann, account/0x00ff)"
        ));
    };
    if type_name.is_empty() {
        return Err(format!("actor {s:?} has an empty type name"));
    }
    if type_name.len() > u8::MAX as usize {
        return Err(format!(
            "actor {s:?}: type names are at most 255 bytes in the journal"
        ));
    }
    let key = parse_key(key).map_err(|why| format!("actor {s:?}: {why}"))?;
    Ok(ActorSel {
        type_name: type_name.to_owned(),
        key,
    })
}

/// KEY syntax: decimal digits = u64; `"..."` = string (with `\"`, `\\`, `\n`, `\r`, `\t`, `\0`,
/// `\u{..}` escapes, as `inspect` prints keys); `0x` + an even number of hex digits = bytes;
/// anything else = the string as typed.
fn parse_key(s: &str) -> Result<ActorKey, String> {
    if s.is_empty() {
        return Err("the key is empty (quote it, \"\", for an empty string key)".into());
    }
    if let Some(quoted) = s.strip_prefix('"') {
        let Some(inner) = quoted.strip_suffix('"') else {
            return Err(format!("the key {s} has no closing quote"));
        };
        return unescape(inner).map(|k| ActorKey::from(k.as_str()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(ActorKey::U64).map_err(|_| {
            format!("the key {s} does not fit a u64 (quote it for a string key: \"{s}\")")
        });
    }
    if let Some(digits) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return unhex(digits).map(|b| ActorKey::from(&b[..])).ok_or_else(|| {
            format!("the key {s} is not 0x followed by pairs of hex digits (quote it for a string key)")
        });
    }
    Ok(ActorKey::from(s))
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = || format!("bad escape in the quoted key \"{s}\"");
        match chars.next().ok_or_else(bad)? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'u' => {
                let rest = chars.as_str();
                let body = rest.strip_prefix('{').ok_or_else(bad)?;
                let end = body.find('}').ok_or_else(bad)?;
                let code = u32::from_str_radix(&body[..end], 16).map_err(|_| bad())?;
                out.push(char::from_u32(code).ok_or_else(bad)?);
                chars = body[end + 1..].chars();
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

// ---- time: ms since the Unix epoch <-> RFC 3339 (UTC) ----

fn parse_time(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s} is too large for milliseconds"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?} is neither milliseconds since the Unix epoch nor an RFC 3339 time \
             (2026-11-26T12:00:00Z, 2026-11-26T13:00:00.5+01:00, or a date 2026-11-26)"
        )
    })
}

const DAY_MS: i64 = 86_400_000;

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_days(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `y-m-d` (y ≥ 1970, a valid date).
fn days_since_epoch(y: i64, m: u32, d: u32) -> i64 {
    let years: i64 = (1970..y).map(|y| if is_leap(y) { 366 } else { 365 }).sum();
    let months: i64 = (1..m).map(|m| month_days(y, m) as i64).sum();
    years + months + d as i64 - 1
}

/// `YYYY-MM-DD`, optionally followed by `THH:MM:SS[.fraction](Z|±HH:MM)` (`t`, `z` and a
/// space separator are accepted); a date alone means midnight UTC.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |at: usize, n: usize| -> Option<u32> {
        let d = b.get(at..at + n)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u32, |acc, c| acc * 10 + (c - b'0') as u32))
    };
    let (y, m, d) = (num(0, 4)? as i64, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if y < 1970 || !(1..=12).contains(&m) || d == 0 || d > month_days(y, m) {
        return None;
    }
    let date_ms = days_since_epoch(y, m, d) * DAY_MS;
    if b.len() == 10 {
        return u64::try_from(date_ms).ok();
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hh, mm, ss) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut at = 19;
    let mut frac_ms = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                frac_ms = frac_ms * 10 + (b[at] - b'0') as i64;
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..3 {
            frac_ms *= 10;
        }
    }
    let offset_ms = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 && b[at + 3] == b':' => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = (oh as i64 * 60 + om as i64) * 60_000;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let ms = date_ms + ((hh as i64 * 60 + mm as i64) * 60 + ss as i64) * 1000 + frac_ms;
    u64::try_from(ms - offset_ms).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_time(ms: u64) -> String {
    let mut days = (ms / DAY_MS as u64) as i64;
    let rest = ms % DAY_MS as u64;
    let mut y = 1970;
    loop {
        let n = if is_leap(y) { 366 } else { 365 };
        if days < n {
            break;
        }
        days -= n;
        y += 1;
    }
    let mut m = 1;
    while days >= month_days(y, m) as i64 {
        days -= month_days(y, m) as i64;
        m += 1;
    }
    let (h, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!(
        "{y:04}-{m:02}-{:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z",
        days + 1
    )
}

// ---- reading a data directory ----

/// Where a record sits.
#[derive(Clone, Debug)]
struct Place {
    /// Index into [`Scan::files`].
    file: usize,
    batch_offset: u64,
    /// Offset of the record's header in the file.
    offset: u64,
    lsn: u64,
    origin_lsn: u64,
}

enum Body {
    Event {
        decoded: Result<EventRecord, FormatError>,
        /// The chain hash of this record (SHA-256 of log key and payload).
        hash: Hash,
    },
    Snapshot(Result<SnapshotRecord, FormatError>),
}

struct Stored {
    place: Place,
    payload_bytes: u64,
    /// Bytes of the user data (kept even when the data itself was dropped).
    data_bytes: u64,
    body: Body,
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
struct ActorStream {
    type_name: String,
    key: ActorKey,
    shard: u32,
    /// Live events, in logical order.
    events: Vec<Stored>,
    /// Live snapshots, in logical order.
    snapshots: Vec<Stored>,
}

impl ActorStream {
    fn actor(&self) -> String {
        format!("{}/{}", self.type_name, self.key)
    }

    fn decoded_events(&self) -> impl Iterator<Item = (&Stored, &EventRecord, &Hash)> {
        self.events.iter().filter_map(|s| match &s.body {
            Body::Event {
                decoded: Ok(e),
                hash,
            } => Some((s, e, hash)),
            _ => None,
        })
    }

    fn decoded_snapshots(&self) -> impl Iterator<Item = (&Stored, &SnapshotRecord)> {
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
struct DamageAt {
    file: usize,
    offset: u64,
    what: String,
}

/// What one walk over a data directory found.
struct Scan {
    /// Segment files walked, relative to the data directory (`shard-0/….seg`).
    files: Vec<String>,
    shard_count: usize,
    /// Actor streams by (type, key, shard).
    actors: BTreeMap<(String, ActorKey, u32), ActorStream>,
    damage: Vec<DamageAt>,
    /// Directories of segments moved aside by recovery (not walked).
    quarantined: Vec<String>,
}

impl Scan {
    fn place(&self, p: &Place) -> String {
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

/// Walks every shard log of `data_dir` and collects the live journal records of the actors
/// `select` accepts. With `keep_data` false the event and snapshot data are dropped after
/// hashing (verify and summaries do not print them).
fn scan(
    data_dir: &Path,
    select: &dyn Fn(&str, &ActorKey) -> bool,
    keep_data: bool,
) -> Result<Scan> {
    let shards = shard_dirs(data_dir)?;
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

fn warn_damage(scan: &Scan) {
    for d in &scan.damage {
        eprintln!(
            "warning: log damage in {} at offset {}: {} (run `quark journal verify`)",
            scan.files[d.file], d.offset, d.what
        );
    }
}

fn warn_undecodable(scan: &Scan, a: &ActorStream) {
    for (s, e) in a.undecodable() {
        eprintln!(
            "warning: {}: the record at {} does not decode: {e}",
            a.actor(),
            scan.place(&s.place)
        );
    }
}

// ---- entry point ----

/// The result of a command that ran to the end.
enum Outcome {
    Clean,
    /// Integrity problems were found and reported.
    Problems,
}

/// Runs `quark journal …` and maps the outcome to the exit code (0, 1 problems, 2 errors).
pub fn run(args: Args) -> ExitCode {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match args.command {
        JournalCommand::Inspect(a) => inspect(&a, &mut out),
        JournalCommand::Export(a) => export(&a, &mut out),
        JournalCommand::Verify(a) => verify(&a, &mut out),
    }
    .and_then(|o| {
        out.flush()?;
        Ok(o)
    });
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS // the reader went away (`| head`)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn require_actor<'a>(scan: &'a Scan, sel: &ActorSel, dir: &Path) -> Result<Vec<&'a ActorStream>> {
    let found: Vec<_> = scan.actors.values().collect();
    if found.is_empty() {
        bail!(
            "actor {sel} has no journal records in {} (list the actors with `quark journal \
             inspect --data-dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    Ok(found)
}

// ---- inspect and export ----

fn inspect(args: &InspectArgs, out: &mut impl Write) -> Result<Outcome> {
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

fn export(args: &ExportArgs, out: &mut impl Write) -> Result<Outcome> {
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

fn write_json_line(out: &mut impl Write, line: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
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

/// Writes rows as columns padded to their widest cell (the last column unpadded).
fn write_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `1 actor`, `3 actors`.
fn count(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
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

// ---- verify ----

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

fn verify(args: &VerifyArgs, out: &mut impl Write) -> Result<Outcome> {
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
            "note: {type_name}/{key} has streams in shards {shards:?} (did the shard count \
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

    #[test]
    fn keys_parse_as_documented() {
        let k = |s: &str| parse_key(s).unwrap();
        assert_eq!(k("42"), ActorKey::U64(42));
        assert_eq!(k("ann"), ActorKey::from("ann"));
        assert_eq!(k("\"42\""), ActorKey::from("42"));
        assert_eq!(k("\"a\\\"b\\u{1f600}\""), ActorKey::from("a\"b\u{1f600}"));
        assert_eq!(k("0x00ff"), ActorKey::from(&[0u8, 0xff][..]));
        assert_eq!(k("a/b"), ActorKey::from("a/b"));
        assert!(parse_key("").is_err());
        assert!(parse_key("0xabc").is_err());
        assert!(parse_key("99999999999999999999999").is_err());
        assert!(parse_key("\"open").is_err());
        // What inspect prints reads back as the same key.
        for key in [
            ActorKey::U64(7),
            ActorKey::from("a \"quoted\"\tkey\n"),
            ActorKey::from("42"),
            ActorKey::from(&b"\x01\x02"[..]),
        ] {
            assert_eq!(k(&key.to_string()), key, "{key}");
        }
        let a = parse_actor("account/ann/x").unwrap();
        assert_eq!(
            (a.type_name.as_str(), a.key),
            ("account", ActorKey::from("ann/x"))
        );
        assert!(parse_actor("account").is_err());
        assert!(parse_actor("/1").is_err());
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.1234+01:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms)), Ok(ms), "{ms}");
        }
        for bad in [
            "2023-02-29",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20",
            "yesterday",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    // ---- liveness and verification on hand-built streams ----

    const KEY: &[u8] = b"test-key";

    fn place(lsn: u64, origin_lsn: u64) -> Place {
        Place {
            file: 0,
            batch_offset: 0,
            offset: lsn * 100,
            lsn,
            origin_lsn,
        }
    }

    fn test_scan() -> Scan {
        Scan {
            files: vec!["shard-0/00000000000000000001.seg".into()],
            shard_count: 1,
            actors: BTreeMap::new(),
            damage: Vec::new(),
            quarantined: Vec::new(),
        }
    }

    /// An event at `version` linking to `prev`, stored at `lsn`; and its hash.
    fn event(version: u64, prev: &Hash, data: &[u8], lsn: u64) -> (Stored, Hash) {
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
