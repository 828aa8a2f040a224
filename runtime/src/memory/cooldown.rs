//! The per-actor move cooldown, shared by every mover of the node (the memory monitor now;
//! locality repartitioning can use the same one, docs/MEMORY.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark_shard::ActorId;

/// Actors remembered at most; past it the oldest entries go first.
const ENTRIES_MAX: usize = 65_536;

/// When each recently moved actor was moved: a mover asks [`MoveCooldown::allows`] before it
/// moves an actor and calls [`MoveCooldown::moved`] after, so that two movers (memory and
/// locality) never bounce an actor between shards faster than the cooldown. Cheap to clone
/// (one shared table behind a mutex, touched once per move considered, never per message).
#[derive(Clone, Default)]
pub struct MoveCooldown {
    inner: Arc<Mutex<HashMap<ActorId, Instant>>>,
}

impl MoveCooldown {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `actor` may be moved at `now`: it was not moved within `cooldown`.
    pub fn allows(&self, actor: &ActorId, now: Instant, cooldown: Duration) -> bool {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.get(actor)
            .is_none_or(|at| now.saturating_duration_since(*at) >= cooldown)
    }

    /// Records that `actor` moved at `now`.
    pub fn moved(&self, actor: &ActorId, now: Instant) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= ENTRIES_MAX {
            if let Some(oldest) = t.iter().min_by_key(|(_, at)| **at).map(|(a, _)| a.clone()) {
                t.remove(&oldest);
            }
        }
        t.insert(actor.clone(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_moved_recently_is_held_back_until_its_cooldown_passed() {
        let c = MoveCooldown::new();
        let a = ActorId::new("t", 1u64);
        let t0 = Instant::now();
        let cd = Duration::from_secs(30);
        assert!(c.allows(&a, t0, cd));
        c.moved(&a, t0);
        assert!(!c.allows(&a, t0 + Duration::from_secs(29), cd));
        assert!(c.allows(&a, t0 + Duration::from_secs(30), cd));
        assert!(c.allows(&ActorId::new("t", 2u64), t0, cd));
    }
}
