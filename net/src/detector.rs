//! Heartbeat failure detector driven by an injected clock.

use std::time::{Duration, Instant};

/// Detector settings. Invariant (checked by [`FailureDetector::new`]):
/// `heartbeat_interval < suspect_after <= dead_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat_interval: Duration,
    /// Silence after which the peer is `Suspect`.
    pub suspect_after: Duration,
    /// Silence after which the peer is `Dead` (close the connection, reconnect with backoff).
    pub dead_after: Duration,
}

impl Default for DetectorConfig {
    /// 100 ms heartbeats, suspect after 500 ms, dead after 2 s of silence.
    fn default() -> Self {
        DetectorConfig {
            heartbeat_interval: Duration::from_millis(100),
            suspect_after: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
        }
    }
}

/// What the detector believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Heard from within `suspect_after`.
    Alive,
    /// Silent for `suspect_after` or more; still connected.
    Suspect,
    /// Silent for `dead_after` or more. Final for this connection.
    Dead,
}

/// A change of [`Liveness`], to log and act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Previous state.
    pub from: Liveness,
    /// New state.
    pub to: Liveness,
    /// How long the peer had been silent when the change was observed.
    pub silent_for: Duration,
}

/// One connection's failure detector. Every frame received counts as a sign of life (not only
/// heartbeat acks). Time comes only from the `now` arguments; instants that go backwards are
/// treated as no time passing.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    cfg: DetectorConfig,
    last_heard: Instant,
    last_sent: Instant,
    state: Liveness,
}

impl FailureDetector {
    /// A detector for a connection established at `now` (the peer counts as just heard).
    ///
    /// # Panics
    /// If the config violates `heartbeat_interval < suspect_after <= dead_after` (a config
    /// validation bug).
    pub fn new(cfg: DetectorConfig, now: Instant) -> FailureDetector {
        assert!(
            cfg.heartbeat_interval < cfg.suspect_after && cfg.suspect_after <= cfg.dead_after,
            "detector config must satisfy heartbeat_interval < suspect_after <= dead_after: {cfg:?}"
        );
        FailureDetector {
            cfg,
            last_heard: now,
            last_sent: now,
            state: Liveness::Alive,
        }
    }

    /// The current belief.
    pub fn state(&self) -> Liveness {
        self.state
    }

    fn set(&mut self, to: Liveness, silent_for: Duration) -> Option<Transition> {
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        Some(Transition {
            from,
            to,
            silent_for,
        })
    }

    /// A frame arrived from the peer at `now`. Returns `Suspect → Alive` if it revives a
    /// suspect peer; a `Dead` peer stays dead (its connection is being torn down).
    pub fn on_heard(&mut self, now: Instant) -> Option<Transition> {
        let silent_for = now.saturating_duration_since(self.last_heard);
        if now > self.last_heard {
            self.last_heard = now;
        }
        match self.state {
            Liveness::Suspect => self.set(Liveness::Alive, silent_for),
            Liveness::Alive | Liveness::Dead => None,
        }
    }

    /// Re-evaluates at `now`; call at least at [`next_check`](Self::next_check).
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        let silent_for = now.saturating_duration_since(self.last_heard);
        let to = if self.state == Liveness::Dead || silent_for >= self.cfg.dead_after {
            Liveness::Dead
        } else if silent_for >= self.cfg.suspect_after {
            Liveness::Suspect
        } else {
            Liveness::Alive
        };
        self.set(to, silent_for)
    }

    /// True if a heartbeat should be sent at `now` (nothing sent for `heartbeat_interval`).
    pub fn heartbeat_due(&self, now: Instant) -> bool {
        self.state != Liveness::Dead
            && now.saturating_duration_since(self.last_sent) >= self.cfg.heartbeat_interval
    }

    /// Any frame was sent at `now` (resets the heartbeat timer).
    pub fn on_sent(&mut self, now: Instant) {
        if now > self.last_sent {
            self.last_sent = now;
        }
    }

    /// The earliest instant at which `tick` or `heartbeat_due` can change its answer.
    pub fn next_check(&self) -> Instant {
        let hb = self.last_sent + self.cfg.heartbeat_interval;
        let state = match self.state {
            Liveness::Alive => self.last_heard + self.cfg.suspect_after,
            Liveness::Suspect | Liveness::Dead => self.last_heard + self.cfg.dead_after,
        };
        hb.min(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    #[should_panic(expected = "heartbeat_interval < suspect_after")]
    fn bad_config_panics() {
        let cfg = DetectorConfig {
            heartbeat_interval: ms(500),
            suspect_after: ms(100),
            dead_after: ms(1000),
        };
        FailureDetector::new(cfg, Instant::now());
    }
}
