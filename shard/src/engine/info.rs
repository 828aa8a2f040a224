//! What the engine reports about its shards: how each runs ([`ShardInfo`], [`Pinning`],
//! [`IoDriver`]), their counters ([`ShardStatsSnapshot`]) and what a shutdown could not
//! finish ([`ShutdownReport`]). Plain data.

use std::time::Duration;

use quark_placement::{ActorKey, ShardId};

/// How a shard thread runs: reported by [`Engine::info`](super::Engine::info).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The shard.
    pub shard: ShardId,
    /// The core the shard was assigned (from [`ShardSpec`](super::ShardSpec)).
    pub core: usize,
    /// The CPU the shard thread was running on when it started (`None` if the kernel does not
    /// say). Equal to `core` when pinning succeeded.
    pub running_on: Option<usize>,
    /// Whether the thread is pinned to `core`.
    pub pinning: Pinning,
    /// The I/O driver the shard's runtime uses.
    pub driver: IoDriver,
    /// The idle spin in effect (zero when more shards than cores share them, whatever the
    /// configuration says).
    pub idle_spin: Duration,
}

/// Whether a shard thread is pinned to its core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pinning {
    /// `pin_threads` is off: the thread may run on any allowed core.
    Off,
    /// The thread is pinned to its core.
    Pinned,
    /// Pinning was asked for but the system refused; the thread runs unpinned.
    Failed {
        /// The OS error number, where there is one.
        os_error: Option<i32>,
    },
}

/// The I/O driver of a shard's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoDriver {
    /// io_uring.
    IoUring,
    /// The epoll fallback (io_uring unavailable, or `force_legacy_driver`).
    Epoll,
}

/// The known size of one actor type's states on one shard
/// ([`ShardStatsSnapshot::state_bytes_per_type`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStateBytes {
    /// The type name.
    pub type_name: &'static str,
    /// Bytes: the deep size (the type's
    /// [`ActorType::memory_size`](crate::ActorType::memory_size) hook) of each activation
    /// between turns, and `size_of` the type (the shallow size) for the others and for every
    /// activation of a type without the hook.
    pub bytes: u64,
    /// Activations measured by the hook (the rest of the type's live activations count
    /// their shallow size).
    pub deep: u64,
}

/// A snapshot of one shard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatsSnapshot {
    /// The shard.
    pub shard: ShardId,
    /// Activations alive now.
    pub live_activations: u64,
    /// Activations created since start.
    pub activations: u64,
    /// Deactivations completed since start.
    pub deactivations: u64,
    /// Handler panics.
    pub panics: u64,
    /// Replies that arrived after their caller stopped waiting.
    pub replies_dropped: u64,
    /// Asks not run because their deadline had passed (or their caller had given up) when
    /// their turn came; each was failed with `Timeout` instead.
    pub asks_expired_skipped: u64,
    /// Times a local sender waited for mailbox space.
    pub mailbox_waits: u64,
    /// Times a sender waited for a cross-shard credit.
    pub credit_waits: u64,
    /// Times the shard parked.
    pub parks: u64,
    /// Parks ended by another thread ringing the shard's doorbell (a message or waker from
    /// another shard, the network's completions, or an outside caller).
    pub wakeups_doorbell: u64,
    /// Parks ended by the shard's own next deadline (a timer, a sweep, a heartbeat).
    pub wakeups_timer: u64,
    /// Parks ended by a local event (a waker on the shard's own thread).
    pub wakeups_local: u64,
    /// Pump iterations.
    pub iterations: u64,
    /// Trips through the executor's wait made to reap I/O completions.
    pub reaps: u64,
    /// Polls of tasks on the shard's scheduler.
    pub task_polls: u64,
    /// Messages received from rings and the injection queue.
    pub ring_msgs_in: u64,
    /// Calls awaiting a reply.
    pub calls_in_flight: u64,
    /// Live actor timers.
    pub timers: u64,
    /// Entries in the shard's timer heap, live and cancelled-but-not-yet-dropped (at most about
    /// twice `timers`: cancelled entries are dropped as they accumulate).
    pub timer_heap_entries: u64,
    /// Tasks alive on the shard's scheduler (activations and spawned tasks).
    pub tasks: u64,
    /// The shard log's next LSN (`None` without a log).
    pub log_next_lsn: Option<u64>,
    /// Bytes the shard log's segment files occupy (`None` without a log).
    pub log_disk_bytes: Option<u64>,
    /// The shard's cluster transport counters (`None` for a standalone node).
    pub net: Option<crate::net::NetStatsSnapshot>,
    /// Messages to actors of this shard (sent from it).
    pub messages_local: MessageCounts,
    /// Messages sent from this shard to actors of other shards of the node.
    pub messages_cross_shard: MessageCounts,
    /// Messages sent from this shard to actors of other nodes.
    pub messages_remote: MessageCounts,
    /// Messages from threads outside the node, counted when this shard (their owner) handled
    /// them.
    pub messages_external: MessageCounts,
    /// Latency of the asks made from this shard to actors of the same shard.
    pub ask_latency_local: AskLatency,
    /// Latency of the asks made from this shard to other shards of the node.
    pub ask_latency_cross_shard: AskLatency,
    /// Latency of the asks made from this shard to other nodes.
    pub ask_latency_remote: AskLatency,
    /// Live activations per actor type (registered types, in registration order).
    pub live_per_type: Vec<(&'static str, u64)>,
    /// The known size of the states of this shard's activations, per actor type (registered
    /// types, in registration order); their sum is the shard's actor memory as far as it is
    /// known (the process RSS cannot be split by shard).
    pub state_bytes_per_type: Vec<TypeStateBytes>,
    /// Messages queued in the mailboxes of this shard's activations now.
    pub mailbox_depth: u64,
    /// The longest mailbox of this shard now.
    pub mailbox_depth_max: u64,
    /// Messages waiting in this shard's overflow queues because the ring to their target
    /// shard was full.
    pub ring_overflow: u64,
    /// Messages waiting in this shard's inbound rings now: published by the sending shards,
    /// not yet consumed by this one (read when the snapshot is taken).
    pub ring_occupancy: u64,
    /// Turns by actor type, the busiest actors and the communication graph.
    pub load: crate::LoadSnapshot,
    /// Moves ordered by this shard as the actors' home shard (docs/MIGRATION.md).
    pub migrations_started: u64,
    /// Moves that ended with the actor on its new shard.
    pub migrations_done: u64,
    /// Moves aborted at their deadline (or refused by the actor's shard); the actor stayed.
    pub migrations_aborted: u64,
    /// Bytes of dehydrated state moved (states moved as a box count 0).
    pub migration_bytes: u64,
    /// Messages this shard, as their home, forwarded to actors living on another shard.
    pub migrate_forwarded: u64,
    /// Actors of this home shard that live on another shard or are moving now.
    pub directory_entries: u64,
}

/// Tells and asks of one kind, since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Tells.
    pub tells: u64,
    /// Asks.
    pub asks: u64,
}

/// An ask latency histogram, since the node started: `buckets[i]` counts the asks that took
/// at most `2^i` µs and more than `2^(i-1)` µs (not cumulative); the last bucket, any longer
/// ask. Asks that timed out count with their timeout. Measured with the shard clock, which is
/// read once per pump iteration: a latency is exact to about one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskLatency {
    /// Counts per bucket ([`crate::ASK_LATENCY_BUCKETS`] of them).
    pub buckets: [u64; crate::ASK_LATENCY_BUCKETS],
    /// The sum of the latencies, µs.
    pub sum_us: u64,
}

impl Default for AskLatency {
    fn default() -> Self {
        AskLatency {
            buckets: [0; crate::ASK_LATENCY_BUCKETS],
            sum_us: 0,
        }
    }
}

impl AskLatency {
    /// Asks counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What a shutdown could not finish within `shutdown_timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Shards that still had turns running or queued when the drain timed out.
    pub shards_not_drained: usize,
    /// Shards that still had activations when deactivation timed out.
    pub shards_not_deactivated: usize,
    /// Shard threads that panicked (a bug in Quark; handler panics never do this).
    pub shard_threads_panicked: usize,
}

/// Which live activations [`Engine::actors`](super::Engine::actors) lists, and how many.
///
/// Every filter given must match (they are ANDed); `None` matches everything. Rows come in
/// the order `(shard, actor type name, key)` (keys ordered as [`ActorKey`]'s `Ord`: numbers
/// first, numerically, then strings, then bytes); `after` continues a listing after a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorQuery {
    /// Only this actor type (its `TYPE_NAME`).
    pub actor_type: Option<String>,
    /// Only keys whose display form (`7`, `cart-3`, `0x00ff`) starts with this.
    pub key_prefix: Option<String>,
    /// Only this shard.
    pub shard: Option<ShardId>,
    /// Only activations idle for at least this long (see [`ActorRow::idle`]).
    pub idle_at_least: Option<Duration>,
    /// Only rows whose [`ActorRow::state_bytes`] is at least this (the deep size for a type
    /// with an [`ActorType::memory_size`](crate::ActorType::memory_size) hook, else the
    /// shallow size).
    pub state_bytes_at_least: Option<usize>,
    /// At most this many rows (1 ..= [`ACTOR_QUERY_LIMIT_MAX`]).
    pub limit: usize,
    /// Continue after this row (the `next` of the previous page).
    pub after: Option<ActorCursor>,
}

/// The most rows one [`ActorQuery`] may ask for.
pub const ACTOR_QUERY_LIMIT_MAX: usize = 1000;
/// The limit of [`ActorQuery::default`].
pub const ACTOR_QUERY_LIMIT_DEFAULT: usize = 100;

impl Default for ActorQuery {
    fn default() -> Self {
        ActorQuery {
            actor_type: None,
            key_prefix: None,
            shard: None,
            idle_at_least: None,
            state_bytes_at_least: None,
            limit: ACTOR_QUERY_LIMIT_DEFAULT,
            after: None,
        }
    }
}

/// One live activation (or, for a stateless-worker type, the pool of workers of one key).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActorRow {
    /// The shard it lives on.
    pub shard: ShardId,
    /// Its actor type's `TYPE_NAME`.
    pub actor_type: &'static str,
    /// Its key (`Display` gives the form operators type).
    pub key: ActorKey,
    /// How long since its last message turn began, when it is idle now (no turn running, no
    /// mail queued); `None` while it is busy or has mail. Timer turns do not count, as for
    /// the idle timeout. For a worker pool: the least idle worker's, `None` if any is busy.
    pub idle: Option<Duration>,
    /// Messages queued in its mailbox (for a worker pool: in all its workers' mailboxes).
    pub mailbox_len: usize,
    /// Whether the type is a stateless worker (one row per key, `workers` activations).
    pub stateless_worker: bool,
    /// Activations behind this row: 1, or the size of a worker pool.
    pub workers: usize,
    /// `size_of` of the actor's state times `workers`: the *shallow* size, which leaves out
    /// everything the state owns on the heap (vectors, maps, strings, boxes).
    pub state_bytes_shallow: usize,
    /// The state's size in bytes: the *deep* size the type's
    /// [`ActorType::memory_size`](crate::ActorType::memory_size) hook gives (summed over the
    /// workers) when `state_bytes_deep`, else `state_bytes_shallow`. The hook is called when
    /// the query is answered, on activations between turns; a busy one (a turn running or
    /// suspended) is shown by its shallow size, with `state_bytes_deep` false.
    pub state_bytes: usize,
    /// Whether `state_bytes` is the deep size (the hook's).
    pub state_bytes_deep: bool,
}

impl ActorRow {
    /// The cursor that continues a listing after this row.
    pub fn cursor(&self) -> ActorCursor {
        ActorCursor {
            shard: self.shard,
            actor_type: self.actor_type.to_owned(),
            key: self.key.clone(),
        }
    }
}

/// A page of [`Engine::actors`](super::Engine::actors).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActorPage {
    /// The rows, in `(shard, type, key)` order.
    pub rows: Vec<ActorRow>,
    /// Where the next page starts (`None`: this was the last page).
    pub next: Option<ActorCursor>,
}

/// A position in the `(shard, actor type, key)` order of a listing: the next page holds the
/// rows after it. It names a position, not an activation, so it stays valid while activations
/// come and go: a row present during the whole listing is listed exactly once; one activated
/// or deactivated meanwhile is listed at most once.
///
/// Its text form ([`Display`](std::fmt::Display) / [`FromStr`](std::str::FromStr)) is opaque
/// to callers and safe in a URL: `<shard>.<type name in hex>.<u|s|b><key>` (a number key in
/// decimal, a string or bytes key in hex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorCursor {
    /// The shard of the last row listed.
    pub shard: ShardId,
    /// Its actor type.
    pub actor_type: String,
    /// Its key.
    pub key: ActorKey,
}

// Format: "{shard}.{hex(type name)}.{kind}{value}", kind u (decimal u64), s (hex UTF-8), b (hex).
impl std::fmt::Display for ActorCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.", self.shard)?;
        write_hex(f, self.actor_type.as_bytes())?;
        match &self.key {
            ActorKey::U64(k) => write!(f, ".u{k}"),
            ActorKey::Str(s) => {
                f.write_str(".s")?;
                write_hex(f, s.as_bytes())
            }
            ActorKey::Bytes(b) => {
                f.write_str(".b")?;
                write_hex(f, b)
            }
        }
    }
}

fn write_hex(f: &mut std::fmt::Formatter<'_>, bytes: &[u8]) -> std::fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

fn read_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a cursor's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad actor cursor {cursor:?}: {part} is malformed (pass the `next` of a previous page)")]
pub struct CursorError {
    /// The text given.
    pub cursor: String,
    /// Which part is wrong: `shard`, `type`, `key` or `layout`.
    pub part: &'static str,
}

impl std::str::FromStr for ActorCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, CursorError> {
        let bad = |part| CursorError {
            cursor: text.to_owned(),
            part,
        };
        let mut parts = text.split('.');
        let (Some(shard), Some(ty), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("layout"));
        };
        let shard: ShardId = shard.parse().map_err(|_| bad("shard"))?;
        let actor_type = read_hex(ty)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("type"))?;
        let key = match key.split_at_checked(1) {
            Some(("u", n)) => ActorKey::U64(n.parse().map_err(|_| bad("key"))?),
            Some(("s", h)) => {
                let s = read_hex(h)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad("key"))?;
                ActorKey::Str(s.into())
            }
            Some(("b", h)) => ActorKey::Bytes(read_hex(h).ok_or_else(|| bad("key"))?.into()),
            _ => return Err(bad("key")),
        };
        Ok(ActorCursor {
            shard,
            actor_type,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_text_round_trips_and_bad_text_names_the_part() {
        for key in [
            ActorKey::U64(0),
            ActorKey::U64(u64::MAX),
            ActorKey::Str("cart.7/é".into()),
            ActorKey::Str("".into()),
            ActorKey::Bytes(vec![0, 255, 16].into()),
        ] {
            let c = ActorCursor {
                shard: 3,
                actor_type: "bank::Account".into(),
                key,
            };
            let text = c.to_string();
            assert!(
                text.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '.'),
                "{text}"
            );
            assert_eq!(text.parse::<ActorCursor>(), Ok(c));
        }
        let part = |t: &str| t.parse::<ActorCursor>().unwrap_err().part;
        assert_eq!(part("1.61"), "layout");
        assert_eq!(part("1.61.u1.x"), "layout");
        assert_eq!(part("x.61.u1"), "shard");
        assert_eq!(part("70000.61.u1"), "shard");
        assert_eq!(part("1.6.u1"), "type");
        assert_eq!(part("1..u1"), "type");
        assert_eq!(part("1.61.x1"), "key");
        assert_eq!(part("1.61.u-1"), "key");
        assert_eq!(part("1.61.sff"), "key");
        assert_eq!(part("1.61.b0"), "key");
    }
}
