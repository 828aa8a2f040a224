//! `quark data reshard`: rewrites a data directory's shard logs for a new shard count.
//!
//! 1. Locks the directory exclusively, and finishes (or undoes) an interrupted reshard.
//! 2. Builds the new layout in `DIR/.reshard-tmp/shard-<N>/`: for every key of every old log,
//!    its live records (what the runtime loads: the latest snapshot and what follows, after
//!    truncations) are appended, in their order, to the log of the shard that owns the key
//!    under the new count (`quark_placement::shard_for`, what the engine uses). Superseded
//!    records and truncation barriers are not copied; the key index is rebuilt by the new
//!    logs' recovery.
//! 3. Projection state (`qp<name>`, per-shard checkpoints that are LSNs of the old logs) goes to
//!    the projection's new home shard. A projection that had read every event of every old
//!    shard keeps its read model, with checkpoints moved to the ends of the new logs; any other
//!    is dropped and rebuilt from the journals at the next start (a partial read model cannot
//!    be matched to positions in the new logs).
//! 4. Closes (syncs) the new logs and syncs the directories, then commits by renaming the new
//!    manifest into place, and moves the new layout in (`quark_shard::data_dir`).
//!
//! A kill before the commit leaves the old layout (the next run or node start removes
//! `.reshard-tmp`); a kill after it leaves a committed manifest whose move the next run or node
//! start finishes. `QUARK_RESHARD_KILL_AFTER=<n>` (for tests) makes the process SIGKILL itself
//! after its n-th durable step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use quark::journal::format::{self, Stream};
use quark::{ActorId, ActorKey};
use quark_persist::{block_on, Batch, FsyncPolicy, Log, LogConfig, NewRecord, Preallocate, StdIo};
use quark_shard::data_dir::{self, DataDir, DataDirError, RESHARD_TMP_DIR};

/// Arguments of `quark data reshard`.
#[derive(clap::Args, Debug)]
pub struct ReshardArgs {
    /// The node's data directory (its `[log] data_dir`); the node must be stopped.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The new shard count (the `[node] shards` the node will be started with).
    #[arg(long, value_name = "N")]
    shards: u16,
    /// Segment size of the new logs (default: that of the existing segments, else 64 MiB).
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
}

/// Encoded bytes of records per appended batch (also bounded by a quarter segment).
const BATCH_BYTES_MAX: usize = 256 * 1024;
/// Records of one key read at once (a long stream is copied in pieces).
const READ_RECORDS_MAX: usize = 1024;
/// Projection state key prefix (`runtime/src/journal/projection.rs`).
const PROJECTION_PREFIX: &[u8] = b"qp";
/// The shard limit of the engine.
const SHARDS_MAX: u16 = 256;

/// Counts durable steps; SIGKILLs the process after the n-th when asked (tests).
struct Steps {
    done: u64,
    kill_after: Option<u64>,
}

impl Steps {
    fn from_env() -> Result<Self> {
        let kill_after = match std::env::var("QUARK_RESHARD_KILL_AFTER") {
            Ok(v) => Some(
                v.parse()
                    .with_context(|| format!("QUARK_RESHARD_KILL_AFTER={v:?} is not a number"))?,
            ),
            Err(_) => None,
        };
        Ok(Steps {
            done: 0,
            kill_after,
        })
    }

    fn step(&mut self, what: &'static str) {
        self.done += 1;
        tracing::debug!(step = self.done, what, "reshard step");
        if self.kill_after == Some(self.done) {
            eprintln!("quark data reshard: QUARK_RESHARD_KILL_AFTER reached after step {} ({what}): killing myself", self.done);
            // SAFETY: kill(2) on our own pid; no memory is touched.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// Which new shard owns a log key.
enum Owner {
    /// A journal stream: the actor's shard.
    Shard(u16),
    /// A projection's state: goes to the projection actor's shard, after everything else.
    Projection { name: String, shard: u16 },
}

/// Actor type names as `&'static str` (an `ActorId` holds one); one leak per distinct name.
#[derive(Default)]
struct Names(HashMap<String, &'static str>);

impl Names {
    fn get(&mut self, name: &str) -> &'static str {
        if let Some(n) = self.0.get(name) {
            return n;
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        self.0.insert(name.to_owned(), leaked);
        leaked
    }

    fn owner(&mut self, key: &[u8], shards: u16) -> Option<Owner> {
        if let Ok(sk) = format::parse_stream_key(key) {
            let id = ActorId::new(self.get(&sk.type_name), sk.key);
            return Some(Owner::Shard(quark_placement::shard_for(&id, shards)));
        }
        let name = std::str::from_utf8(key.strip_prefix(PROJECTION_PREFIX)?).ok()?;
        let id = ActorId::new(self.get(name), ActorKey::U64(0));
        Some(Owner::Projection {
            name: name.to_owned(),
            shard: quark_placement::shard_for(&id, shards),
        })
    }
}

/// Runs `quark data reshard`.
pub fn reshard(a: &ReshardArgs) -> Result<()> {
    if a.shards == 0 || a.shards > SHARDS_MAX {
        bail!("--shards {}: expected 1 to {SHARDS_MAX}", a.shards);
    }
    let mut steps = Steps::from_env()?;
    let dir = &a.data_dir;
    let mut dd = DataDir::open_offline(dir, &mut |w| steps.step(w)).map_err(|e| match e {
        DataDirError::Lock(_) => anyhow::Error::new(e).context(format!(
            "quark data reshard needs the stopped node's data directory {} to itself",
            dir.display()
        )),
        other => anyhow::Error::new(other),
    })?;
    let old = dd.manifest().clone();
    if old.shards == a.shards && old.placement_version == quark_placement::PLACEMENT_VERSION {
        println!(
            "{} already has {} shards placed by placement version {}: nothing to do",
            dir.display(),
            a.shards,
            old.placement_version
        );
        return Ok(());
    }
    let segment_bytes = match a.segment_bytes {
        Some(b) => b,
        None => existing_segment_bytes(dir)?.unwrap_or(64 << 20),
    };
    let tmp = dir.join(RESHARD_TMP_DIR);
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let summary = block_on(build(
        dir,
        &tmp,
        old.shards,
        a.shards,
        segment_bytes,
        &mut steps,
    ))?;
    data_dir::sync_dir(&tmp)?;
    data_dir::sync_dir(dir)?;
    steps.step("new layout synced");
    dd.commit_reshard(a.shards, &mut |w| steps.step(w))
        .with_context(|| format!("the new layout of {} is committed; run the same command again (or start the node) to finish moving it in", dir.display()))?;
    println!(
        "resharded {} from {} to {} shards: {} keys, {} records moved",
        dir.display(),
        old.shards,
        a.shards,
        summary.keys,
        summary.records
    );
    for line in summary.projections {
        println!("{line}");
    }
    Ok(())
}

struct Summary {
    keys: u64,
    records: u64,
    /// One line per projection: kept or reset.
    projections: Vec<String>,
}

/// A projection state record found in an old log.
struct FoundProjection {
    name: String,
    new_shard: u16,
    /// The old shard it was found in, and whether that was its home under the old count.
    from_home: bool,
    payload: Vec<u8>,
    expires_at_ms: Option<u64>,
}

fn log_config(dir: PathBuf, shard: u16, segment_bytes: u64) -> LogConfig {
    let mut c = LogConfig::new(dir, u32::from(shard));
    c.segment_bytes = segment_bytes;
    c.fsync = FsyncPolicy::Never; // synced once, by close, before the commit
    c.preallocate = Preallocate::Fallocate;
    c.write_through = false;
    c
}

/// Copies every live record of the old logs into new logs under `tmp`.
async fn build(
    dir: &Path,
    tmp: &Path,
    old_n: u16,
    new_n: u16,
    segment_bytes: u64,
    steps: &mut Steps,
) -> Result<Summary> {
    let mut new_logs = Vec::with_capacity(usize::from(new_n));
    for j in 0..new_n {
        let d = tmp.join(format!("shard-{j}"));
        let (log, _) = Log::open(StdIo, log_config(d.clone(), j, segment_bytes))
            .await
            .with_context(|| format!("cannot create the new log {}", d.display()))?;
        new_logs.push(log);
    }
    let batch_max = BATCH_BYTES_MAX.min(segment_bytes as usize / 4);
    let mut pending: Vec<(Batch, usize)> = (0..new_n).map(|_| (Batch::new(), 0)).collect();
    let mut names = Names::default();
    let mut summary = Summary {
        keys: 0,
        records: 0,
        projections: Vec::new(),
    };
    // Per old shard: the LSN of its last live journal event (None: no event).
    let mut last_event: Vec<Option<u64>> = vec![None; usize::from(old_n)];
    let mut projections: Vec<FoundProjection> = Vec::new();
    for i in 0..old_n {
        let d = dir.join(format!("shard-{i}"));
        if !d.is_dir() {
            continue; // a shard that never wrote (or a layout without it): nothing to move
        }
        let seg = existing_segment_bytes_in(&d)?.unwrap_or(segment_bytes);
        let mut config = log_config(d.clone(), i, seg);
        config.recycle_segments_max = usize::MAX; // keep the old log's spares as they are
        let (log, _) = Log::open(StdIo, config).await.with_context(|| {
            format!(
                "cannot open the old log {} (start the node once, or repair it, then reshard)",
                d.display()
            )
        })?;
        let mut keys = log.keys_with_prefix(b"");
        keys.sort();
        for key in keys {
            let lsns = log.key_lsns(&key);
            if lsns.is_empty() {
                continue;
            }
            let Some(owner) = names.owner(&key, new_n) else {
                bail!(
                    "log key {} in {} is neither a journal stream nor a projection state: \
                     reshard cannot tell which shard owns it; nothing was changed",
                    hex(&key),
                    d.display()
                );
            };
            let read_err = || format!("cannot read key {} in {}", hex(&key), d.display());
            match owner {
                Owner::Projection { name, shard } => {
                    // Only the latest state record counts.
                    let last = &lsns[lsns.len() - 1..];
                    let records = log.read_many(last).await.with_context(read_err)?;
                    let Some(rec) = records.into_iter().next() else {
                        continue;
                    };
                    let id = ActorId::new(names.get(&name), ActorKey::U64(0));
                    projections.push(FoundProjection {
                        from_home: quark_placement::shard_for(&id, old_n) == i,
                        name,
                        new_shard: shard,
                        payload: rec.payload,
                        expires_at_ms: rec.expires_at_ms,
                    });
                }
                Owner::Shard(j) => {
                    let events =
                        format::parse_stream_key(&key).is_ok_and(|k| k.stream == Stream::Events);
                    summary.keys += 1;
                    for chunk in lsns.chunks(READ_RECORDS_MAX) {
                        let records = log.read_many(chunk).await.with_context(read_err)?;
                        for rec in records {
                            if events && rec.kind == quark_persist::RecordKind::Event {
                                let l = &mut last_event[usize::from(i)];
                                *l = Some(l.map_or(rec.lsn, |x| x.max(rec.lsn)));
                            }
                            summary.records += 1;
                            let (batch, bytes) = &mut pending[usize::from(j)];
                            *bytes += rec.key.len() + rec.payload.len() + 64;
                            batch.push(NewRecord {
                                kind: rec.kind,
                                key: rec.key,
                                payload: rec.payload,
                                expires_at_ms: rec.expires_at_ms,
                            });
                            if *bytes >= batch_max {
                                flush(
                                    &new_logs[usize::from(j)],
                                    &mut pending[usize::from(j)],
                                    steps,
                                )
                                .await?;
                            }
                        }
                    }
                }
            }
        }
        log.close()
            .await
            .with_context(|| format!("cannot close the old log {}", d.display()))?;
    }
    for (j, p) in pending.iter_mut().enumerate() {
        flush(&new_logs[j], p, steps).await?;
    }
    // Projections, after every journal record: a kept one's checkpoints are the new ends.
    let ends: Vec<u64> = new_logs.iter().map(|l| l.stats().next_lsn).collect();
    projections.sort_by(|a, b| (&a.name, !a.from_home).cmp(&(&b.name, !b.from_home)));
    projections.dedup_by(|later, first| later.name == first.name);
    for p in projections {
        let j = usize::from(p.new_shard);
        match remap_projection(&p.payload, old_n, &last_event, &ends)
            .with_context(|| format!("projection {}", p.name))?
        {
            Some(payload) => {
                summary.projections.push(format!(
                    "projection {}: it had read every event; read model kept, checkpoints moved to the new logs' ends",
                    p.name
                ));
                pending[j].0.push(NewRecord {
                    kind: quark_persist::RecordKind::Snapshot,
                    key: [PROJECTION_PREFIX, p.name.as_bytes()].concat(),
                    payload,
                    expires_at_ms: p.expires_at_ms,
                });
                flush(&new_logs[j], &mut pending[j], steps).await?;
            }
            None => summary.projections.push(format!(
                "projection {}: it had not read every event; its read model was dropped and is rebuilt from the journals at the next start",
                p.name
            )),
        }
    }
    for (j, log) in new_logs.iter().enumerate() {
        log.close()
            .await
            .with_context(|| format!("cannot sync the new log of shard {j}"))?;
        steps.step("closed (synced) a new log");
    }
    Ok(summary)
}

async fn flush(log: &Log<StdIo>, pending: &mut (Batch, usize), steps: &mut Steps) -> Result<()> {
    if pending.0.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(&mut pending.0);
    pending.1 = 0;
    log.append(&batch).await.with_context(|| {
        format!(
            "cannot append to the new log {}",
            log.config().dir.display()
        )
    })?;
    steps.step("appended a batch to a new log");
    Ok(())
}

/// The projection state re-based on the new logs when it had read every event of every old
/// shard (`None`: it had not, and is reset).
// Format (projection state, runtime/src/journal/projection.rs):
//   { format u8 = 1 | shard_count u16 | checkpoint u64 × shard_count | state (postcard) }
fn remap_projection(
    payload: &[u8],
    old_n: u16,
    last_event: &[Option<u64>],
    ends: &[u64],
) -> Result<Option<Vec<u8>>> {
    if payload.len() < 3 || payload[0] != 1 {
        bail!(
            "unknown projection state format (first byte {:?})",
            payload.first()
        );
    }
    let n = usize::from(u16::from_le_bytes([payload[1], payload[2]]));
    let end = 3 + n * 8;
    if payload.len() < end {
        bail!(
            "projection state truncated ({} bytes, {n} checkpoints)",
            payload.len()
        );
    }
    let checkpoints: Vec<u64> = payload[3..end]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    let caught_up = (0..usize::from(old_n)).all(|s| match last_event[s] {
        None => true,
        Some(last) => checkpoints.get(s).is_some_and(|&c| c > last),
    });
    if !caught_up {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(3 + ends.len() * 8 + payload.len() - end);
    out.push(1);
    out.extend_from_slice(&(ends.len() as u16).to_le_bytes());
    for e in ends {
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(&payload[end..]);
    Ok(Some(out))
}

/// The size of the segment files under `dir`'s shard logs (the largest), if there are any.
fn existing_segment_bytes(dir: &Path) -> Result<Option<u64>> {
    let mut best = None;
    for (_, d) in data_dir::shard_dirs(dir)? {
        best = best.max(existing_segment_bytes_in(&d)?);
    }
    Ok(best)
}

fn existing_segment_bytes_in(d: &Path) -> Result<Option<u64>> {
    let mut best = None;
    for e in std::fs::read_dir(d).with_context(|| format!("cannot list {}", d.display()))? {
        let e = e.with_context(|| format!("cannot list {}", d.display()))?;
        if e.file_name().to_string_lossy().ends_with(".seg") {
            let len = e
                .metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?
                .len();
            best = best.max(Some(len));
        }
    }
    Ok(best)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
