//! Durable reminders: per-actor timers (one-shot and periodic, period down to 1 ms) stored in
//! the owning shard's log. They survive restarts and reactivate their actor to deliver a
//! [`ReminderTick`] as an ordinary turn.
//!
//! A handler registers, cancels and lists its actor's reminders:
//!
//! ```no_run
//! use quark::reminders::{self, Reminder, ReminderTick};
//! use quark::{Actor, Context, Handler, Message, Node};
//! use std::time::Duration;
//!
//! struct Invoice;
//! impl Actor for Invoice { const TYPE_NAME: &'static str = "invoice"; }
//! struct Issue;
//! impl Message for Issue { type Reply = (); }
//! impl Handler<Issue> for Invoice {
//!     async fn handle(&mut self, _: Issue, ctx: &Context<Self>) {
//!         // Durable: survives a restart of the node.
//!         reminders::register(ctx, "overdue", Reminder::once(Duration::from_secs(30 * 86_400)))
//!             .await
//!             .expect("reminder stored");
//!     }
//! }
//! impl Handler<ReminderTick> for Invoice {
//!     async fn handle(&mut self, tick: ReminderTick, _: &Context<Self>) {
//!         println!("{} is due (late by {} ms)", tick.name, tick.fired_ms - tick.due_ms);
//!     }
//! }
//! let node = Node::builder()
//!     .config_file("quark.toml").unwrap() // needs a [log] section
//!     .register(quark::ActorType::new(|_| Invoice))
//!     .register_reminders::<Invoice>()
//!     .start()
//!     .unwrap();
//! ```
//!
//! How they are stored (a time-bucketed index on the log, loading only the near future) and
//! what is guaranteed is in `docs/JOBS.md`, "Durable reminders".

pub(crate) mod format;
pub mod remote;
mod service;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quark_persist::{AppendError, ReadError};
use quark_shard::{Actor, ActorKey, CallError, Context, EngineHandle, Handler, Message, ShardId};

/// The message a reminder delivers: one turn of the actor per occurrence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReminderTick {
    /// The reminder's name (unique per actor).
    pub name: String,
    /// When this occurrence was due (wall-clock ms since the Unix epoch).
    pub due_ms: u64,
    /// When the shard fired it (wall-clock ms); `fired_ms - due_ms` is its lateness.
    pub fired_ms: u64,
    /// The period (ms); 0 for a one-shot reminder.
    pub period_ms: u64,
    /// Occurrences of a periodic reminder that were skipped because this one fired late (the
    /// node was down, or the shard was busy for more than a period): they are not delivered
    /// one by one.
    pub missed: u64,
}

impl Message for ReminderTick {
    type Reply = ();
}

/// When a reminder fires.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Reminder {
    first: First,
    /// `None` for a one-shot reminder.
    period: Option<Duration>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum First {
    After(Duration),
    AtMs(u64),
}

impl Reminder {
    /// Once, `delay` from now.
    pub fn once(delay: Duration) -> Self {
        Reminder {
            first: First::After(delay),
            period: None,
        }
    }

    /// Once, at wall-clock `ms` (since the Unix epoch); a time in the past fires at once.
    pub fn once_at_ms(ms: u64) -> Self {
        Reminder {
            first: First::AtMs(ms),
            period: None,
        }
    }

    /// Every `period` (at least 1 ms, whole milliseconds: a fraction is dropped), the first
    /// time one period from now.
    pub fn every(period: Duration) -> Self {
        Reminder {
            first: First::After(period),
            period: Some(period),
        }
    }

    /// Every `period` (at least 1 ms), the first time `first` from now.
    pub fn every_after(first: Duration, period: Duration) -> Self {
        Reminder {
            first: First::After(first),
            period: Some(period),
        }
    }

    /// The period in ms (0 = one-shot), refusing periods under 1 ms.
    fn period_ms(&self) -> Result<u64, ReminderError> {
        match self.period {
            None => Ok(0),
            Some(p) if p < Duration::from_millis(1) => Err(ReminderError::PeriodTooShort {
                period_us: p.as_micros() as u64,
            }),
            Some(p) => Ok(duration_ms(p)),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A registered reminder, as [`list`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReminderInfo {
    /// Its name.
    pub name: String,
    /// The first occurrence (wall-clock ms).
    pub first_due_ms: u64,
    /// The period (ms); 0 for a one-shot reminder.
    pub period_ms: u64,
    /// The next occurrence on the reminder's grid (`first_due_ms + k * period_ms`) at or after
    /// now (the first occurrence for a one-shot reminder that has not fired).
    pub next_due_ms: u64,
}

/// Settings of the node's reminders (`NodeBuilder::reminders_config`).
#[derive(Clone, Debug)]
pub struct RemindersConfig {
    /// Width of a time bucket of the on-log index, in ms (default 1000). A shard holds in
    /// memory only the reminders of the buckets within [`RemindersConfig::lookahead_ms`] of
    /// now (and those not yet delivered).
    pub bucket_ms: u64,
    /// How far ahead of its start a bucket is read from the log (default 1000 ms).
    pub lookahead_ms: u64,
    /// Fine buckets per coarse bucket (default 3600: an hour). A reminder due more than about
    /// one coarse bucket ahead is stored in its coarse bucket, which is spread into fine
    /// buckets one coarse width before its time: the log's index then holds at most about two
    /// coarse widths of fine buckets plus one key per coarse bucket with reminders.
    pub coarse_buckets: u64,
    /// Tables of reminders per shard (actors are hashed to one; default 4096). More groups make
    /// each table smaller (cheaper to rewrite and read) and cost one key of the log's index
    /// each.
    pub groups_per_shard: u32,
    /// Ticks being delivered per shard at most (default 10 000); due ticks beyond wait.
    pub ticks_inflight_max: usize,
    /// How long a tick's turn may take before the delivery counts as failed (default 30 s).
    pub tick_timeout: Duration,
    /// Bits of the per-shard filter that tells new reminder names from replaced ones
    /// (default 2^24 = 2 MiB per shard).
    pub filter_bits: u64,
}

impl Default for RemindersConfig {
    fn default() -> Self {
        RemindersConfig {
            bucket_ms: 1000,
            lookahead_ms: 1000,
            coarse_buckets: 3600,
            groups_per_shard: 4096,
            ticks_inflight_max: 10_000,
            tick_timeout: Duration::from_secs(30),
            filter_bits: 1 << 24,
        }
    }
}

impl RemindersConfig {
    fn check(&self) -> Result<(), RemindersStartError> {
        let bad = |key: &'static str, value: u64, expected: &'static str| {
            Err(RemindersStartError::BadConfig {
                key,
                value,
                expected,
            })
        };
        if self.bucket_ms == 0 {
            return bad("bucket_ms", 0, "at least 1");
        }
        if self.coarse_buckets == 0 {
            return bad("coarse_buckets", 0, "at least 1");
        }
        if self.groups_per_shard == 0 {
            return bad("groups_per_shard", 0, "at least 1");
        }
        if self.ticks_inflight_max == 0 {
            return bad("ticks_inflight_max", 0, "at least 1");
        }
        if self.filter_bits < 64 {
            return bad("filter_bits", self.filter_bits, "at least 64");
        }
        Ok(())
    }
}

/// Why a reminder operation failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReminderError {
    /// The node has no log (`[log]`) or no actor type registered for reminders.
    #[error("reminders are not running on this node (it needs a [log] section and a type registered with register_reminders)")]
    NotRunning,
    /// The actor's type was not registered with `NodeBuilder::register_reminders`: its ticks
    /// could not be delivered after a restart.
    #[error("actor type {actor_type:?} is not registered for reminders (NodeBuilder::register_reminders::<{actor_type}>())")]
    NotRegistered {
        /// The type.
        actor_type: String,
    },
    /// The name is empty.
    #[error("a reminder name must not be empty")]
    EmptyName,
    /// The name is longer than [`NAME_BYTES_MAX`].
    #[error("reminder name of {len} bytes is longer than {NAME_BYTES_MAX}")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A periodic reminder's period is below 1 ms.
    #[error("a reminder period must be at least 1 ms, got {period_us} µs")]
    PeriodTooShort {
        /// The period given, in µs.
        period_us: u64,
    },
    /// The first occurrence is too far in the future to be represented.
    #[error("a reminder's first occurrence is out of range")]
    OutOfRange,
    /// The shard's log refused the change.
    #[error("storing the reminder change")]
    Append(#[source] Arc<AppendError>),
    /// Reading the actor's reminder table failed.
    #[error("reading the reminder table")]
    Read(#[source] Arc<ReadError>),
    /// The shard is stopping.
    #[error("the shard's reminder service stopped")]
    Stopped,
}

/// Longest reminder name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// Why the node's reminders did not start (a start error of the node).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemindersStartError {
    /// A setting is out of range.
    #[error("reminders config: {key} = {value}: expected {expected}")]
    BadConfig {
        /// The setting's name in [`RemindersConfig`].
        key: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// A shard could not recover its reminders from its log.
    #[error("shard {shard}: recovering the reminders")]
    Recover {
        /// The shard.
        shard: ShardId,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// A shard's reminder recovery did not run (the shard stopped).
    #[error("shard {shard}: the reminder recovery did not run")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
}

/// Delivers a tick to actor `(A, key)`.
pub(crate) type DeliverFn = fn(
    EngineHandle,
    ActorKey,
    ReminderTick,
    Duration,
) -> Pin<Box<dyn Future<Output = Result<(), CallError>>>>;

fn deliver_to<A: Handler<ReminderTick>>(
    engine: EngineHandle,
    key: ActorKey,
    tick: ReminderTick,
    timeout: Duration,
) -> Pin<Box<dyn Future<Output = Result<(), CallError>>>> {
    Box::pin(async move {
        let r = engine.actor_ref::<A>(key);
        r.ask_timeout(tick, timeout).await
    })
}

/// What every shard's service shares.
pub(crate) struct Shared {
    pub config: RemindersConfig,
    pub deliver: HashMap<String, DeliverFn>,
}

/// Collects the reminder registrations of the node builder.
#[derive(Default)]
pub(crate) struct Setup {
    config: Option<RemindersConfig>,
    deliver: HashMap<String, DeliverFn>,
}

impl Setup {
    /// True once an actor type is registered for reminders.
    pub(crate) fn has_types(&self) -> bool {
        !self.deliver.is_empty()
    }

    pub(crate) fn register<A: Handler<ReminderTick>>(&mut self) {
        self.deliver
            .insert(A::TYPE_NAME.to_owned(), deliver_to::<A> as DeliverFn);
    }

    pub(crate) fn config(&mut self, config: RemindersConfig) {
        self.config = Some(config);
    }

    /// Recovers every shard's reminders (when a type is registered and the node has a log)
    /// and starts their services; returns when all shards recovered.
    pub(crate) fn start(
        self,
        engine: &EngineHandle,
        has_log: bool,
    ) -> Result<Reminders, RemindersStartError> {
        let config = self.config.unwrap_or_default();
        config.check()?;
        let started = has_log && !self.deliver.is_empty();
        let shared = Arc::new(Shared {
            config,
            deliver: self.deliver,
        });
        let r = Reminders {
            engine: engine.clone(),
            started,
        };
        if !started {
            return Ok(r);
        }
        let waits: Vec<_> = (0..engine.shard_count())
            .map(|s| {
                let shared = Arc::clone(&shared);
                let e = engine.clone();
                (
                    s,
                    engine.spawn_on(s, move || service::start_shard(shared, e, s)),
                )
            })
            .collect();
        let mut first_error = None;
        for (shard, w) in waits {
            let res = match w.join() {
                Ok(r) => r,
                Err(_) => Err(RemindersStartError::ShardStopped { shard }),
            };
            if let Err(e) = res {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }
}

/// Registers (or replaces) reminder `name` of the calling actor, durably: resolves once the
/// change is durable under the log's fsync policy. A replaced reminder does not fire again
/// (a tick of it already being delivered may still arrive).
///
/// Cancel safety: dropping the future does not withdraw the change (it may still be stored).
pub async fn register<A: Handler<ReminderTick>>(
    ctx: &Context<A>,
    name: &str,
    reminder: Reminder,
) -> Result<(), ReminderError> {
    check_name(name)?;
    let period_ms = reminder.period_ms()?;
    let now = service::now_ms();
    let first_due_ms = match reminder.first {
        First::After(d) => now
            .checked_add(duration_ms(d))
            .ok_or(ReminderError::OutOfRange)?,
        First::AtMs(ms) => ms,
    };
    if first_due_ms >= u64::MAX / 4 || period_ms >= u64::MAX / 4 {
        return Err(ReminderError::OutOfRange);
    }
    let svc = service::local().ok_or(ReminderError::NotRunning)?;
    let id = ctx.id();
    if !svc.delivers(id.type_name) {
        return Err(ReminderError::NotRegistered {
            actor_type: id.type_name.to_owned(),
        });
    }
    svc.set(actor_bytes(ctx), name.to_owned(), first_due_ms, period_ms)
        .await
}

/// Cancels reminder `name` of the calling actor, durably; resolves with whether it existed.
pub async fn cancel<A: Actor>(ctx: &Context<A>, name: &str) -> Result<bool, ReminderError> {
    check_name(name)?;
    let svc = service::local().ok_or(ReminderError::NotRunning)?;
    svc.del(actor_bytes(ctx), name.to_owned()).await
}

/// The calling actor's reminders, by name (fired one-shot reminders are gone).
pub async fn list<A: Actor>(ctx: &Context<A>) -> Result<Vec<ReminderInfo>, ReminderError> {
    let svc = service::local().ok_or(ReminderError::NotRunning)?;
    svc.list(actor_bytes(ctx)).await
}

fn check_name(name: &str) -> Result<(), ReminderError> {
    if name.is_empty() {
        return Err(ReminderError::EmptyName);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ReminderError::NameTooLong { len: name.len() });
    }
    Ok(())
}

fn actor_bytes<A: Actor>(ctx: &Context<A>) -> Vec<u8> {
    let id = ctx.id();
    let mut out = Vec::with_capacity(16 + id.type_name.len());
    crate::outbox::format::encode_actor(&mut out, id.type_name, &id.key);
    out
}

/// Counters of one shard's reminders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardReminderStats {
    /// Occurrences held in memory now (the near future, and those being delivered).
    pub loaded: u64,
    /// Ticks delivered (the turn ran).
    pub fired: u64,
    /// Ticks whose turn failed (the actor panicked, timed out, failed to activate).
    pub failed: u64,
    /// Ticks dropped because their actor type is not registered for reminders.
    pub undeliverable: u64,
    /// Slots of the time index read from the log and found stale (cancelled or replaced).
    pub stale_dropped: u64,
}

/// The node's reminders seen from outside an actor (`Node::reminders`): listing and counters.
#[derive(Clone)]
pub struct Reminders {
    engine: EngineHandle,
    started: bool,
}

impl std::fmt::Debug for Reminders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reminders")
            .field("started", &self.started)
            .finish()
    }
}

impl Reminders {
    /// The reminders of actor `(A, key)` (runs on its shard).
    pub async fn list<A: Actor>(
        &self,
        key: impl Into<ActorKey>,
    ) -> Result<Vec<ReminderInfo>, ReminderError> {
        if !self.started {
            return Err(ReminderError::NotRunning);
        }
        let r = self.engine.actor_ref::<A>(key);
        let shard = self.engine.shard_of(r.id());
        let mut actor = Vec::new();
        crate::outbox::format::encode_actor(&mut actor, A::TYPE_NAME, &r.id().key);
        self.engine
            .spawn_on(shard, move || async move {
                match service::local() {
                    Some(s) => s.list(actor).await,
                    None => Err(ReminderError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(ReminderError::Stopped))
    }

    /// Every shard's counters.
    pub async fn stats(&self) -> Result<Vec<ShardReminderStats>, ReminderError> {
        if !self.started {
            return Err(ReminderError::NotRunning);
        }
        let mut out = Vec::new();
        for s in 0..self.engine.shard_count() {
            let st = self
                .engine
                .spawn_on(
                    s,
                    move || async move { service::local().map(|s| s.stats()) },
                )
                .await
                .map_err(|_| ReminderError::Stopped)?
                .ok_or(ReminderError::NotRunning)?;
            out.push(st);
        }
        Ok(out)
    }
}

/// The reminders of actor `type_name`/`key`, for callers that know the actor only by name (the
/// admin endpoint's `/quark/reminders`): every shard of the node is asked (the owner answers
/// with them, the others with none), so neither the actor's Rust type nor its shard is needed.
/// Sorted by name. A type not registered for reminders is [`ReminderError::NotRegistered`].
pub(crate) async fn list_by_name(
    engine: &EngineHandle,
    type_name: &str,
    key: &ActorKey,
) -> Result<Vec<ReminderInfo>, ReminderError> {
    let mut actor = Vec::new();
    crate::outbox::format::encode_actor(&mut actor, type_name, key);
    let mut out = Vec::new();
    for s in 0..engine.shard_count() {
        let actor = actor.clone();
        let type_name = type_name.to_owned();
        let found = engine
            .spawn_on(s, move || async move {
                match service::local() {
                    Some(svc) if !svc.delivers(&type_name) => Err(ReminderError::NotRegistered {
                        actor_type: type_name,
                    }),
                    Some(svc) => svc.list(actor).await,
                    None => Err(ReminderError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(ReminderError::Stopped))?;
        out.extend(found);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
