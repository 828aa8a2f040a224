//! Power-loss property test: the log runs in-process on [`SimIo`], a simulated disk with a
//! volatile cache, and the power is cut at a seeded I/O operation; recovery then opens a fresh
//! [`Log`] on what survived (see `quark_persist::sim` and `docs/PERSIST.md`, "Testing
//! durability"). A SIGKILL cannot test this: the page cache outlives the process.
//!
//! Each seed runs [`EPOCHS`] epochs. An epoch opens the log, runs 1-4 concurrent appenders
//! (so group commit merges batches) beside a maintenance task (compaction with a random live
//! ratio, scrub, roll, sync) on small segments, cuts the power at a random operation (or
//! after the workload), keeps none / an in-order prefix / a random subset of the unsynced
//! writes (a torn last write at 512-byte sectors, possibly the write the crash interrupted)
//! and a prefix of the unsynced directory operations. The next epoch's crash point falls
//! inside its open (the recovery of that loss) about one time in ten. Every batch carries an event on a ledger key first (never truncated), naming the
//! batch, so the surviving batches and their LSNs are known. After each recovery:
//! - every batch acknowledged under `fsync = always` (or covered by a completed `sync`,
//!   compaction or scrub under `fsync = never`), and every batch that survived an earlier
//!   recovery, is present at the same LSNs;
//! - every record found by a full scan belongs to a surviving batch and is bit-exact (key,
//!   kind, payload): nothing of a lost batch is half-applied, no stale or torn byte surfaces;
//! - each key's live records (`key_lsns` + `read_many`) equal a replay of the surviving
//!   batches (events, snapshots and truncates);
//! - LSNs of surviving batches strictly increase and do not overlap, `next_lsn` is above all
//!   of them, and every later append gets an LSN at or above it (never reused);
//! - over the run, recovery truncated torn tails (asserted, so the tearing is exercised).
//!
//! Replay one seed: `SEED=1234 cargo test -p quark-persist --test power_loss -- --nocapture`
//! (the failing seed is printed in that form). `POWER_LOSS_SEEDS=n` changes the seed count,
//! `POWER_LOSS_BASE=b` the first seed.
//!
//! Checked against broken builds (`POWER_LOSS_SEEDS=100` to 1000; each failed within 2 s):
//! - `sync_data` skipped after a flush (`group_commit.rs`, `flush_one`: `if sync && false`):
//!   "SEED=10 ...: epoch 2: acknowledged batch 63 (LSN 146) lost" (seeds with
//!   `write_through = false`; others fail recovery on a sealed segment that was never synced);
//! - the directory sync after creating a segment removed (`log.rs`, `create_segment`):
//!   "SEED=0 ...: epoch 1: acknowledged batch 0 (LSN 1) lost" (the segment's name is lost);
//! - the batch checksum check skipped (`record.rs`, `decode_batch`: `if false && crc32c..`):
//!   "SEED=12 ...: record 1 of batch 43 (origin 102) not bit-exact" (a torn batch recovered);
//! - spares made reusable before compaction's directory sync (`compaction.rs` before this
//!   test existed): "SEED=25 ...: epoch 1: recovery failed: bad segment header in
//!   .../00000000000000000757.seg: base LSN in header differs from the file name".

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use quark_persist::sim::{LossMode, SimIo, SimRng};
use quark_persist::{
    block_on, Batch, CompactionPolicy, DirectIo, FsyncPolicy, Log, LogConfig, Preallocate,
    RecordKind,
};

/// Seeds per run (each cuts the power at least [`EPOCHS`] times).
const SEEDS_DEFAULT: u64 = 3_800;
const EPOCHS: usize = 3;
const LEDGER: &[u8] = b"ledger";
const DATA_KEYS: u64 = 5;

fn data_key(i: u64) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

/// One generated batch: record 0 is the ledger event naming it.
#[derive(Clone, Debug)]
struct Spec {
    recs: Vec<(RecordKind, Vec<u8>, Vec<u8>)>,
}

impl Spec {
    fn batch(&self) -> Batch {
        let mut b = Batch::new();
        for (kind, key, payload) in &self.recs {
            match kind {
                RecordKind::Event => b.event(key, payload),
                RecordKind::Snapshot => b.snapshot(key, payload),
                RecordKind::Truncate => {
                    let bound = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                    b.truncate(key, bound)
                }
            };
        }
        b
    }
}

/// Parameters of one seed's log and workload.
#[derive(Clone, Debug)]
struct Params {
    config: LogConfig,
    appenders: u64,
    batches_per_appender: u64,
    payload_max: u64,
    /// Crash points are drawn from `1..=ops_span`.
    ops_span: u64,
    maintenance_permille: u64,
}

fn params(rng: &mut SimRng) -> Params {
    let mut config = LogConfig::new("/sim/log", 3);
    config.segment_bytes = [8192, 12288, 16384, 32768][rng.below(4) as usize];
    config.fsync = if rng.chance(850) {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    config.write_through = rng.chance(500);
    config.preallocate = if rng.chance(500) {
        Preallocate::ZeroFill
    } else {
        Preallocate::Fallocate
    };
    config.recycle_segments_max = rng.below(3) as usize;
    // Write-through seeds mostly write direct (aligned O_DIRECT writes, torn at any sector).
    config.direct_io = if rng.chance(700) {
        DirectIo::Auto
    } else {
        DirectIo::Off
    };
    config.pending_bytes_max = [2048, 8192, 1 << 20][rng.below(3) as usize];
    let appenders = 1 + rng.below(4);
    Params {
        config,
        appenders,
        // Most seeds append until the power is cut; some stop early, so the cut finds an
        // idle log.
        batches_per_appender: if rng.chance(900) {
            u64::MAX
        } else {
            3 + rng.below(10)
        },
        payload_max: [64, 600, 1500][rng.below(3) as usize],
        ops_span: 20 + rng.below(280),
        maintenance_permille: rng.below(300),
    }
}

/// What the test knows across epochs of one seed.
#[derive(Default)]
struct Model {
    specs: Vec<Spec>,
    /// Batches that must be found at this first LSN after any later recovery.
    durable: BTreeMap<u64, u64>,
    /// Acknowledged under `fsync = never`, not yet covered by a sync: (id, first LSN).
    acked_unsynced: Vec<(u64, u64)>,
    /// Every append of this epoch gets an LSN at or above this.
    lsn_floor: u64,
}

#[derive(Default)]
struct Totals {
    power_losses: u64,
    mid_op_crashes: u64,
    recovery_crashes: u64,
    truncated_tails: u64,
    acked_batches: u64,
    surviving_unacked: u64,
    /// Coverage: appends acknowledged, flushes (writes) that carried them, segments reused,
    /// segments compaction removed, records it copied forward, scrubs completed.
    appends: u64,
    flushes: u64,
    recycled: u64,
    compacted_segments: u64,
    copied_records: u64,
    scrubs: u64,
    /// Flushes written as aligned direct writes, and interrupted direct writes a power loss
    /// kept torn (any subset of their sectors).
    direct_writes: u64,
    torn_direct: u64,
}

impl Totals {
    fn describe(&self) -> String {
        format!(
            "{} power losses ({} at a crash point mid-operation, {} of them in recovery), {} durable batches checked, {} batches survived that were not known durable (unacknowledged, or acknowledged unsynced under fsync = never), {} torn tails truncated; {} appends in {} flushes, {} segments reused, {} compacted away ({} records copied), {} scrubs; {} direct writes, {} torn direct writes",
            self.power_losses,
            self.mid_op_crashes,
            self.recovery_crashes,
            self.acked_batches,
            self.surviving_unacked,
            self.truncated_tails,
            self.appends,
            self.flushes,
            self.recycled,
            self.compacted_segments,
            self.copied_records,
            self.scrubs,
            self.direct_writes,
            self.torn_direct
        )
    }

    fn add(&mut self, t: &Totals) {
        self.power_losses += t.power_losses;
        self.mid_op_crashes += t.mid_op_crashes;
        self.recovery_crashes += t.recovery_crashes;
        self.truncated_tails += t.truncated_tails;
        self.acked_batches += t.acked_batches;
        self.surviving_unacked += t.surviving_unacked;
        self.appends += t.appends;
        self.flushes += t.flushes;
        self.recycled += t.recycled;
        self.compacted_segments += t.compacted_segments;
        self.copied_records += t.copied_records;
        self.scrubs += t.scrubs;
        self.direct_writes += t.direct_writes;
        self.torn_direct += t.torn_direct;
    }
}

fn payload_bytes(id: u64, idx: usize, len: usize) -> Vec<u8> {
    common::payload(id.wrapping_mul(31).wrapping_add(idx as u64 + 1), len)
}

fn new_spec(model: &mut Model, rng: &mut SimRng, p: &Params, next_lsn: u64) -> u64 {
    let id = model.specs.len() as u64;
    let mut recs = vec![(
        RecordKind::Event,
        LEDGER.to_vec(),
        [id.to_le_bytes(), [0xAB; 8]].concat(),
    )];
    for idx in 1..=rng.below(4) as usize {
        let key = data_key(rng.below(DATA_KEYS));
        let roll = rng.below(100);
        if roll < 12 {
            let bound = if rng.chance(100) {
                u64::MAX
            } else {
                next_lsn.saturating_sub(rng.below(30))
            };
            recs.push((RecordKind::Truncate, key, bound.to_le_bytes().to_vec()));
        } else {
            let kind = if roll < 30 {
                RecordKind::Snapshot
            } else {
                RecordKind::Event
            };
            let len = rng.below(p.payload_max + 1) as usize;
            recs.push((kind, key, payload_bytes(id, idx, len)));
        }
    }
    model.specs.push(Spec { recs });
    id
}

/// A key's live records: (origin LSN, kind, payload).
type Live = Vec<(u64, RecordKind, Vec<u8>)>;

/// Why a seed failed.
type Failure = String;

struct Ctx {
    params: Params,
    rng: RefCell<SimRng>,
    model: RefCell<Model>,
    failure: RefCell<Option<Failure>>,
    coverage: RefCell<Totals>,
}

impl Ctx {
    fn fail(&self, msg: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(msg);
        }
    }
}

async fn appender(ctx: &Ctx, log: &Log<SimIo>, io: &SimIo) {
    for _ in 0..ctx.params.batches_per_appender {
        let id = {
            let next = log.stats().next_lsn;
            new_spec(
                &mut ctx.model.borrow_mut(),
                &mut ctx.rng.borrow_mut(),
                &ctx.params,
                next,
            )
        };
        let spec = ctx.model.borrow().specs[id as usize].clone();
        match log.append(&spec.batch()).await {
            Ok(r) => {
                ctx.coverage.borrow_mut().appends += 1;
                let mut m = ctx.model.borrow_mut();
                if r.len() != spec.recs.len() as u64 || r.first < m.lsn_floor {
                    ctx.fail(format!(
                        "batch {id} got LSNs {r:?} (records {}, floor {})",
                        spec.recs.len(),
                        m.lsn_floor
                    ));
                }
                if ctx.params.config.fsync == FsyncPolicy::Always {
                    m.durable.insert(id, r.first);
                } else {
                    m.acked_unsynced.push((id, r.first));
                }
            }
            Err(e) => {
                if !io.crashed() {
                    ctx.fail(format!("append failed without a crash: {e}"));
                }
                return;
            }
        }
    }
}

/// Runs `op` (which starts with a log sync); on success, what was acknowledged before it is
/// durable.
async fn covered_by_sync<T, E: std::fmt::Display>(
    ctx: &Ctx,
    io: &SimIo,
    what: &str,
    op: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let before: Vec<(u64, u64)> = ctx.model.borrow().acked_unsynced.clone();
    match op.await {
        Ok(v) => {
            let mut m = ctx.model.borrow_mut();
            for (id, first) in before {
                m.durable.insert(id, first);
            }
            let m = &mut *m;
            let durable = &m.durable;
            m.acked_unsynced.retain(|(id, _)| !durable.contains_key(id));
            Some(v)
        }
        Err(e) => {
            if !io.crashed() {
                ctx.fail(format!("{what} failed without a crash: {e}"));
            }
            None
        }
    }
}

async fn maintenance(ctx: &Ctx, log: &Log<SimIo>, io: &SimIo, running: &Cell<u64>) {
    while running.get() > 0 && !io.crashed() {
        let (act, ratio) = {
            let mut rng = ctx.rng.borrow_mut();
            let act = if rng.chance(ctx.params.maintenance_permille) {
                rng.below(5)
            } else {
                5
            };
            (act, 0.25 + rng.below(70) as f64 / 100.0)
        };
        match act {
            0 | 1 => {
                let policy = CompactionPolicy {
                    live_ratio_max: ratio,
                    copy_batch_bytes: 2048,
                    ..CompactionPolicy::default()
                };
                if let Some(r) = covered_by_sync(ctx, io, "compact", log.compact(policy)).await {
                    let mut c = ctx.coverage.borrow_mut();
                    c.compacted_segments += r.segments_deleted as u64;
                    c.copied_records += r.records_copied;
                }
            }
            2 => {
                if covered_by_sync(ctx, io, "scrub", log.scrub())
                    .await
                    .is_some()
                {
                    ctx.coverage.borrow_mut().scrubs += 1;
                }
            }
            3 => {
                if let Err(e) = log.roll().await {
                    if !io.crashed() {
                        ctx.fail(format!("roll failed without a crash: {e}"));
                    }
                }
            }
            4 => {
                covered_by_sync(ctx, io, "sync", log.sync()).await;
            }
            _ => common::yield_once().await,
        }
        if io.crashed() {
            return;
        }
    }
}

async fn workload(ctx: &Ctx, log: &Log<SimIo>, io: &SimIo) {
    let running = Cell::new(ctx.params.appenders);
    let mut futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    for _ in 0..ctx.params.appenders {
        let running = &running;
        futs.push(Box::pin(async move {
            appender(ctx, log, io).await;
            running.set(running.get() - 1);
        }));
    }
    futs.push(Box::pin(maintenance(ctx, log, io, &running)));
    common::join_all(futs).await;
}

/// Checks the recovered log against the model; returns the surviving batches (id -> first).
async fn verify(model: &Model, log: &Log<SimIo>) -> Result<BTreeMap<u64, u64>, Failure> {
    let stats = log.stats();
    let ledger = log
        .read_many(&log.key_lsns(LEDGER))
        .await
        .map_err(|e| format!("read ledger: {e}"))?;
    // first LSN -> id, and id -> first.
    let mut by_lsn: BTreeMap<u64, u64> = BTreeMap::new();
    let mut surviving: BTreeMap<u64, u64> = BTreeMap::new();
    let mut prev_end = 0;
    for r in &ledger {
        let id = u64::from_le_bytes(
            r.payload
                .get(..8)
                .ok_or("short ledger payload")?
                .try_into()
                .expect("8 bytes"),
        );
        let spec = model
            .specs
            .get(id as usize)
            .ok_or_else(|| format!("ledger names unknown batch {id}"))?;
        if spec.recs[0].2 != r.payload || r.kind != RecordKind::Event {
            return Err(format!("ledger record of batch {id} not bit-exact"));
        }
        if r.origin_lsn < prev_end {
            return Err(format!(
                "batch {id} at LSN {} overlaps or precedes the batch before it (ends {prev_end})",
                r.origin_lsn
            ));
        }
        prev_end = r.origin_lsn + spec.recs.len() as u64;
        if surviving.insert(id, r.origin_lsn).is_some() {
            return Err(format!("batch {id} appears twice in the ledger"));
        }
        by_lsn.insert(r.origin_lsn, id);
    }
    if stats.next_lsn < prev_end {
        return Err(format!(
            "next LSN {} would reuse LSNs of surviving batches (up to {prev_end})",
            stats.next_lsn
        ));
    }
    for (&id, &first) in &model.durable {
        match surviving.get(&id) {
            None => return Err(format!("acknowledged batch {id} (LSN {first}) lost")),
            Some(&f) if f != first => {
                return Err(format!("batch {id} moved from LSN {first} to {f}"));
            }
            Some(_) => {}
        }
    }
    // Every physically present record belongs to a surviving batch, bit-exact.
    let mut scan = log.scan(1);
    while let Some(r) = scan.next().await.map_err(|e| format!("scan: {e}"))? {
        let (first, id) = by_lsn
            .range(..=r.origin_lsn)
            .next_back()
            .map(|(&f, &i)| (f, i))
            .ok_or_else(|| format!("record at origin {} precedes every batch", r.origin_lsn))?;
        let spec = &model.specs[id as usize];
        let idx = (r.origin_lsn - first) as usize;
        let Some((kind, key, payload)) = spec.recs.get(idx) else {
            return Err(format!(
                "record at LSN {} (origin {}) belongs to no surviving batch: half-applied or stale",
                r.lsn, r.origin_lsn
            ));
        };
        if (*kind, key, payload) != (r.kind, &r.key, &r.payload) {
            return Err(format!(
                "record {idx} of batch {id} (origin {}) not bit-exact",
                r.origin_lsn
            ));
        }
    }
    // Live records per key equal a replay of the surviving batches.
    let mut floors: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut written: HashMap<Vec<u8>, Live> = HashMap::new();
    for (&first, &id) in &by_lsn {
        for (i, (kind, key, payload)) in model.specs[id as usize].recs.iter().enumerate() {
            let lsn = first + i as u64;
            let floor = match kind {
                RecordKind::Snapshot => lsn,
                RecordKind::Truncate => {
                    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")).min(lsn)
                }
                _ => 0,
            };
            let f = floors.entry(key.clone()).or_insert(0);
            *f = (*f).max(floor);
            if *kind != RecordKind::Truncate {
                written
                    .entry(key.clone())
                    .or_default()
                    .push((lsn, *kind, payload.clone()));
            }
        }
    }
    for k in 0..DATA_KEYS {
        let key = data_key(k);
        let floor = floors.get(&key).copied().unwrap_or(0);
        let want: Live = written
            .get(&key)
            .map(|w| w.iter().filter(|r| r.0 >= floor).cloned().collect())
            .unwrap_or_default();
        let got: Live = log
            .read_many(&log.key_lsns(&key))
            .await
            .map_err(|e| format!("read {key:?}: {e}"))?
            .into_iter()
            .map(|r| (r.origin_lsn, r.kind, r.payload))
            .collect();
        if got != want {
            let g: Vec<u64> = got.iter().map(|r| r.0).collect();
            let w: Vec<u64> = want.iter().map(|r| r.0).collect();
            return Err(format!(
                "live records of {:?}: origins {g:?}, replay says {w:?} (or payloads differ)",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    Ok(surviving)
}

fn open(
    io: &SimIo,
    config: &LogConfig,
) -> Result<(Log<SimIo>, quark_persist::RecoveryReport), quark_persist::OpenError> {
    block_on(Log::open(io.clone(), config.clone()))
}

fn run_seed(seed: u64, totals: &mut Totals) -> Result<(), Failure> {
    let mut rng = SimRng::new(seed);
    let p = params(&mut rng);
    let ctx = Ctx {
        params: p.clone(),
        rng: RefCell::new(SimRng::new(rng.next_u64())),
        model: RefCell::new(Model::default()),
        failure: RefCell::new(None),
        coverage: RefCell::new(Totals::default()),
    };
    let mut io = SimIo::new(rng.next_u64());
    for epoch in 0..EPOCHS {
        // The crash point may fall in open (recovery of the previous loss), the workload or
        // after it (the power is cut when the workload ends).
        let k = 1 + rng.below(p.ops_span);
        io.crash_at_op(io.ops() + k);
        match open(&io, &p.config) {
            Ok((log, report)) => {
                totals.truncated_tails += report.truncated.len() as u64;
                if !report.quarantined.is_empty() {
                    return Err(format!("epoch {epoch}: quarantine under truncate-tail"));
                }
                block_on(workload(&ctx, &log, &io));
                let stats = log.stats();
                let mut c = ctx.coverage.borrow_mut();
                c.flushes += stats.flush_count;
                c.recycled += stats.segments_recycled;
                c.direct_writes += stats.direct_writes;
                if let Some(f) = ctx.failure.borrow_mut().take() {
                    return Err(format!("epoch {epoch}: {f}"));
                }
            }
            Err(_) if io.crashed() => totals.recovery_crashes += 1,
            Err(e) => return Err(format!("epoch {epoch}: open failed: {e}")),
        }
        if io.crashed() {
            totals.mid_op_crashes += 1;
        } else {
            io.crash_now();
        }
        let mode = LossMode::ALL[rng.below(3) as usize];
        io = io.power_loss(mode, rng.next_u64());
        totals.power_losses += 1;
        totals.torn_direct += io.torn_direct_writes();
        // Recover (never crashed here: the next epoch's open may be) and check.
        let (log, report) =
            open(&io, &p.config).map_err(|e| format!("epoch {epoch}: recovery failed: {e}"))?;
        totals.truncated_tails += report.truncated.len() as u64;
        if !report.quarantined.is_empty() {
            return Err(format!("epoch {epoch}: quarantine under truncate-tail"));
        }
        let surviving = block_on(verify(&ctx.model.borrow(), &log))
            .map_err(|f| format!("epoch {epoch}: {f}"))?;
        let mut m = ctx.model.borrow_mut();
        totals.acked_batches += m.durable.len() as u64;
        totals.surviving_unacked += surviving
            .keys()
            .filter(|id| !m.durable.contains_key(id))
            .count() as u64;
        // What recovery found is durable now (recovery synced it): it must stay.
        m.durable = surviving;
        m.acked_unsynced.clear();
        m.lsn_floor = log.stats().next_lsn;
        drop(m);
        drop(log);
    }
    totals.add(&ctx.coverage.borrow());
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn acknowledged_batches_survive_power_loss() {
    let started = Instant::now();
    if let Some(seed) = env_u64("SEED") {
        let mut totals = Totals::default();
        let mut rng = SimRng::new(seed);
        eprintln!("SEED={seed}: {:?}", params(&mut rng));
        if let Err(f) = run_seed(seed, &mut totals) {
            panic!("SEED={seed} cargo test -p quark-persist --test power_loss: {f}");
        }
        eprintln!("SEED={seed}: {}", totals.describe());
        return;
    }
    let seeds = env_u64("POWER_LOSS_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let base = env_u64("POWER_LOSS_BASE").unwrap_or(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4) as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut totals = Totals::default();
                let mut seed = base + t;
                while seed < base + seeds {
                    if let Err(f) = run_seed(seed, &mut totals) {
                        return Err(format!(
                            "SEED={seed} cargo test -p quark-persist --test power_loss: {f}"
                        ));
                    }
                    seed += threads;
                }
                Ok(totals)
            })
        })
        .collect();
    let mut sum = Totals::default();
    let mut failures = Vec::new();
    for h in handles {
        match h.join().expect("seed thread panicked") {
            Ok(t) => sum.add(&t),
            Err(f) => failures.push(f),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "power loss: {seeds} seeds, {}, {:?}",
        sum.describe(),
        started.elapsed()
    );
    assert!(
        sum.mid_op_crashes >= 10_000 || seeds < SEEDS_DEFAULT,
        "at least 10,000 crash points per run ({})",
        sum.mid_op_crashes
    );
    assert!(sum.truncated_tails > 0, "no torn tail was ever truncated");
    assert!(
        sum.flushes < sum.appends,
        "group commit never merged batches ({} flushes for {} appends)",
        sum.flushes,
        sum.appends
    );
    assert!(sum.recycled > 0, "no spare segment was reused");
    assert!(
        sum.compacted_segments > 0 && sum.copied_records > 0,
        "compaction never removed a segment or copied a record"
    );
    assert!(sum.scrubs > 0, "no scrub completed");
    assert!(sum.direct_writes > 0, "no flush was a direct write");
    assert!(
        sum.torn_direct > 0,
        "no interrupted direct write was kept torn"
    );
    assert!(
        sum.surviving_unacked > 0,
        "no unacknowledged batch ever survived"
    );
}
