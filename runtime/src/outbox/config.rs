//! The outbox's knobs and their start-up checks.

use std::time::Duration;

/// What a turn does when its shard's pending outbox bytes are at the bound.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// `send_durable` waits until deliveries free room (the default).
    #[default]
    Wait,
    /// `send_durable` fails at once with [`crate::outbox::SendError::Full`].
    Fail,
}

/// The outbox's settings (per node; every shard runs one dispatcher with them). Every field
/// is documented in `docs/OUTBOX.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Bytes of committed-but-unacknowledged (and staged) messages a shard may hold before
    /// `send_durable` waits or fails ([`FullPolicy`]). Default 64 MiB.
    pub pending_bytes_max: u64,
    /// What `send_durable` does at the bound. Default [`FullPolicy::Wait`].
    pub full_policy: FullPolicy,
    /// Messages a shard's dispatcher has in deliveries in flight at once (messages waiting for
    /// their receiver's current delivery to end do not count; `pending_bytes_max` bounds
    /// them). Default 32,768.
    pub inflight_max: usize,
    /// Deadline of one delivery attempt. Default 10 s.
    pub delivery_timeout: Duration,
    /// First retry delay; doubles per failed attempt. Default 20 ms.
    pub retry_initial: Duration,
    /// Cap of the retry delay. Default 5 s.
    pub retry_max: Duration,
    /// Attempts after which a message goes to the dead-letter list. Default 100.
    pub attempts_max: u32,
    /// Age (since the sending turn) after which an undelivered message goes to the
    /// dead-letter list. Must be below `dedupe_window`. Default 1 h.
    pub give_up_after: Duration,
    /// How long a receiver remembers a sender stream's last applied id. Default 24 h.
    pub dedupe_window: Duration,
    /// Sender streams a receiver remembers at most (the oldest are forgotten beyond it, and
    /// counted in [`crate::outbox::OutboxStats::inbox_evicted`]). Default 100,000.
    pub dedupe_count_max: usize,
    /// Receipts after which a receiver writes its whole inbox table as one snapshot record
    /// (superseding the receipts). Default 256.
    pub inbox_snapshot_every: u32,
    /// Dead letters a shard keeps; beyond it, failing messages stay pending and are retried
    /// (nothing is dropped). Default 10,000.
    pub dead_letters_max: usize,
    /// Messages to one receiver (of one message type) handed to it in one delivery: the
    /// receiver applies them in one turn and writes their effects and inbox receipts in one
    /// batch. 1 delivers every message in its own turn and batch. Default 256.
    pub batch_max: usize,
    /// How often acknowledgements are written at most (one truncation record per sender per
    /// write, however many of its messages were acknowledged meanwhile). Default 20 ms.
    pub ack_flush_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            pending_bytes_max: 64 << 20,
            full_policy: FullPolicy::Wait,
            inflight_max: 32_768,
            delivery_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_secs(5),
            attempts_max: 100,
            give_up_after: Duration::from_secs(3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            dedupe_count_max: 100_000,
            inbox_snapshot_every: 256,
            dead_letters_max: 10_000,
            batch_max: 256,
            ack_flush_interval: Duration::from_millis(20),
        }
    }
}

/// Why an outbox configuration was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxConfigError {
    /// A sender could still redeliver a message after the receiver forgot its id: a duplicate
    /// would be applied.
    #[error("outbox give_up_after ({give_up_after:?}) must be shorter than dedupe_window ({dedupe_window:?}): a receiver would forget ids the sender can still redeliver")]
    GiveUpNotBelowWindow {
        /// The sender's give-up age.
        give_up_after: Duration,
        /// The receiver's window.
        dedupe_window: Duration,
    },
    /// A bound is zero.
    #[error("outbox {knob} must be above zero")]
    Zero {
        /// The knob.
        knob: &'static str,
    },
    /// The retry delays are inconsistent.
    #[error("outbox retry_initial ({initial:?}) must not exceed retry_max ({max:?})")]
    RetryDelays {
        /// `retry_initial`.
        initial: Duration,
        /// `retry_max`.
        max: Duration,
    },
}

impl OutboxConfig {
    /// Checks the rules above; the node refuses to start otherwise.
    pub fn validate(&self) -> Result<(), OutboxConfigError> {
        if self.give_up_after >= self.dedupe_window {
            return Err(OutboxConfigError::GiveUpNotBelowWindow {
                give_up_after: self.give_up_after,
                dedupe_window: self.dedupe_window,
            });
        }
        for (knob, zero) in [
            ("pending_bytes_max", self.pending_bytes_max == 0),
            ("inflight_max", self.inflight_max == 0),
            ("attempts_max", self.attempts_max == 0),
            ("dedupe_count_max", self.dedupe_count_max == 0),
            ("inbox_snapshot_every", self.inbox_snapshot_every == 0),
            ("dead_letters_max", self.dead_letters_max == 0),
            ("batch_max", self.batch_max == 0),
            ("ack_flush_interval", self.ack_flush_interval.is_zero()),
            ("delivery_timeout", self.delivery_timeout.is_zero()),
            ("retry_initial", self.retry_initial.is_zero()),
        ] {
            if zero {
                return Err(OutboxConfigError::Zero { knob });
            }
        }
        if self.retry_initial > self.retry_max {
            return Err(OutboxConfigError::RetryDelays {
                initial: self.retry_initial,
                max: self.retry_max,
            });
        }
        Ok(())
    }

    /// The delay before attempt `attempt + 1` (exponential from `retry_initial`, capped).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        (self.retry_initial * (1u32 << shift)).min(self.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_at_or_past_the_window_is_refused() {
        let mut c = OutboxConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.give_up_after = c.dedupe_window;
        assert!(matches!(
            c.validate(),
            Err(OutboxConfigError::GiveUpNotBelowWindow { .. })
        ));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = OutboxConfig::default();
        assert_eq!(c.backoff(1), Duration::from_millis(20));
        assert_eq!(c.backoff(2), Duration::from_millis(40));
        assert_eq!(c.backoff(30), c.retry_max);
    }
}
