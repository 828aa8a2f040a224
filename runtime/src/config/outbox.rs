//! The `[outbox]` section: every [`OutboxConfig`] knob, range-checked with its key, and the
//! outbox's own rules (the dedupe window rule, retry delays) checked when the file is read.

use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Int};
use crate::outbox::{FullPolicy, OutboxConfig, OutboxConfigError};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    attempts_max: Option<Int>,
    give_up_after_ms: Option<Int>,
    retry_initial_ms: Option<Int>,
    retry_max_ms: Option<Int>,
    delivery_timeout_ms: Option<Int>,
    pending_bytes_max: Option<Int>,
    full_policy: Option<String>,
    inflight_max: Option<Int>,
    batch_max: Option<Int>,
    ack_flush_interval_ms: Option<Int>,
    dedupe_window_ms: Option<Int>,
    dedupe_count_max: Option<Int>,
    inbox_snapshot_every: Option<Int>,
    dead_letters_max: Option<Int>,
}

/// The keys an `[outbox]` section sets (a key it leaves out is `None`). At start they are
/// applied key by key over the config given in code (`NodeBuilder::outbox`, or the defaults),
/// like `[actors.<name>]` over a type's registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxSection {
    attempts_max: Option<u32>,
    give_up_after: Option<Duration>,
    retry_initial: Option<Duration>,
    retry_max: Option<Duration>,
    delivery_timeout: Option<Duration>,
    pending_bytes_max: Option<u64>,
    full_policy: Option<FullPolicy>,
    inflight_max: Option<usize>,
    batch_max: Option<usize>,
    ack_flush_interval: Option<Duration>,
    dedupe_window: Option<Duration>,
    dedupe_count_max: Option<usize>,
    inbox_snapshot_every: Option<u32>,
    dead_letters_max: Option<usize>,
}

impl OutboxSection {
    /// Sets every key of the section on `base` (the code's config or the defaults).
    pub fn apply(&self, base: &mut OutboxConfig) {
        fn set<T: Copy>(to: &mut T, from: Option<T>) {
            if let Some(v) = from {
                *to = v;
            }
        }
        set(&mut base.attempts_max, self.attempts_max);
        set(&mut base.give_up_after, self.give_up_after);
        set(&mut base.retry_initial, self.retry_initial);
        set(&mut base.retry_max, self.retry_max);
        set(&mut base.delivery_timeout, self.delivery_timeout);
        set(&mut base.pending_bytes_max, self.pending_bytes_max);
        set(&mut base.full_policy, self.full_policy);
        set(&mut base.inflight_max, self.inflight_max);
        set(&mut base.batch_max, self.batch_max);
        set(&mut base.ack_flush_interval, self.ack_flush_interval);
        set(&mut base.dedupe_window, self.dedupe_window);
        set(&mut base.dedupe_count_max, self.dedupe_count_max);
        set(&mut base.inbox_snapshot_every, self.inbox_snapshot_every);
        set(&mut base.dead_letters_max, self.dead_letters_max);
    }

    /// The section over the defaults.
    pub fn to_config(&self) -> OutboxConfig {
        let mut c = OutboxConfig::default();
        self.apply(&mut c);
        c
    }
}

const DAY_MS: u64 = 86_400_000;

fn ms(
    check: &Check<'_>,
    key: &str,
    v: Int,
    lo: u64,
    hi: u64,
    why: &'static str,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(check.int(key, v, lo, hi, why)?))
}

pub(super) fn outbox_section(
    r: RawOutbox,
    check: &Check<'_>,
) -> Result<OutboxSection, ConfigError> {
    let mut s = OutboxSection::default();
    if let Some(v) = r.attempts_max {
        s.attempts_max = Some(check.int(
            "outbox.attempts_max",
            v,
            1,
            u32::MAX as u64,
            "1 to 4294967295",
        )? as u32);
    }
    if let Some(v) = r.give_up_after_ms {
        s.give_up_after = Some(ms(
            check,
            "outbox.give_up_after_ms",
            v,
            1,
            365 * DAY_MS,
            "1 ms to 365 days",
        )?);
    }
    if let Some(v) = r.retry_initial_ms {
        s.retry_initial = Some(ms(
            check,
            "outbox.retry_initial_ms",
            v,
            1,
            DAY_MS,
            "1 ms to 1 day",
        )?);
    }
    if let Some(v) = r.retry_max_ms {
        s.retry_max = Some(ms(
            check,
            "outbox.retry_max_ms",
            v,
            1,
            DAY_MS,
            "1 ms to 1 day",
        )?);
    }
    if let Some(v) = r.delivery_timeout_ms {
        s.delivery_timeout = Some(ms(
            check,
            "outbox.delivery_timeout_ms",
            v,
            1,
            DAY_MS,
            "1 ms to 1 day",
        )?);
    }
    if let Some(v) = r.pending_bytes_max {
        s.pending_bytes_max = Some(check.int(
            "outbox.pending_bytes_max",
            v,
            4096,
            1 << 40,
            "4 KiB to 1 TiB",
        )?);
    }
    if let Some(p) = r.full_policy {
        s.full_policy = Some(match p.as_str() {
            "wait" => FullPolicy::Wait,
            "fail" => FullPolicy::Fail,
            _ => {
                return Err(check.invalid(
                    "outbox.full_policy",
                    format!("{p:?}"),
                    "\"wait\" or \"fail\"",
                ))
            }
        });
    }
    if let Some(v) = r.inflight_max {
        s.inflight_max = Some(check.int(
            "outbox.inflight_max",
            v,
            1,
            1 << 20,
            "1 to 1048576 deliveries",
        )? as usize);
    }
    if let Some(v) = r.batch_max {
        s.batch_max =
            Some(check.int("outbox.batch_max", v, 1, 65_536, "1 to 65536 messages")? as usize);
    }
    if let Some(v) = r.ack_flush_interval_ms {
        s.ack_flush_interval = Some(ms(
            check,
            "outbox.ack_flush_interval_ms",
            v,
            1,
            DAY_MS,
            "1 ms to 1 day",
        )?);
    }
    if let Some(v) = r.dedupe_window_ms {
        s.dedupe_window = Some(ms(
            check,
            "outbox.dedupe_window_ms",
            v,
            1,
            3650 * DAY_MS,
            "1 ms to 3650 days",
        )?);
    }
    if let Some(v) = r.dedupe_count_max {
        s.dedupe_count_max = Some(check.int(
            "outbox.dedupe_count_max",
            v,
            1,
            1 << 32,
            "1 to 4294967296 sender streams",
        )? as usize);
    }
    if let Some(v) = r.inbox_snapshot_every {
        s.inbox_snapshot_every = Some(check.int(
            "outbox.inbox_snapshot_every",
            v,
            1,
            1 << 20,
            "1 to 1048576 receipts",
        )? as u32);
    }
    if let Some(v) = r.dead_letters_max {
        s.dead_letters_max =
            Some(check.int("outbox.dead_letters_max", v, 1, 1 << 24, "1 to 16777216")? as usize);
    }
    // The outbox's own rules, over the defaults for the keys the file leaves out (start-up
    // checks them again over the code's config).
    match s.to_config().validate() {
        Ok(()) => Ok(s),
        Err(OutboxConfigError::GiveUpNotBelowWindow {
            give_up_after,
            dedupe_window,
        }) => {
            let key = if s.give_up_after.is_some() {
                "outbox.give_up_after_ms"
            } else {
                "outbox.dedupe_window_ms"
            };
            let shown = if s.give_up_after.is_some() {
                give_up_after
            } else {
                dedupe_window
            };
            Err(check.invalid(
                key,
                shown.as_millis(),
                "give_up_after_ms must be shorter than dedupe_window_ms (default 86400000, 24 h): a receiver would forget ids a sender can still redeliver, and apply a duplicate",
            ))
        }
        Err(OutboxConfigError::RetryDelays { initial, max }) => {
            let (key, shown) = if s.retry_initial.is_some() {
                ("outbox.retry_initial_ms", initial)
            } else {
                ("outbox.retry_max_ms", max)
            };
            Err(check.invalid(
                key,
                shown.as_millis(),
                "retry_initial_ms must not exceed retry_max_ms (defaults 20 and 5000)",
            ))
        }
        Err(_) => Err(check.invalid("outbox", "(section)", "a bound is zero")),
    }
}
