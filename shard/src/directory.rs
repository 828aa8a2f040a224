//! The placement directory of one shard: where the actors whose *home* is this shard live, for
//! those that do not live here.
//!
//! An actor's home is its hash placement (`quark_placement::shard_for`), and every sender on
//! the node addresses the home (an [`crate::ActorRef`] computes it once). Most actors live at
//! home, and for them the directory holds nothing: a message finds the activation in the
//! home's table and the directory is never read. The directory is read only when a message
//! *misses* the table (the activation path), to learn that the actor lives on another shard
//! (the message is forwarded there) or is being moved (the message waits here, in order,
//! until the move ends).
//!
//! The home is the one place that orders every message to the actor: while an entry exists,
//! messages pass through it in arrival order, and a move starts only when nothing waits in
//! the entry. This is what keeps per-sender FIFO order across a move (see `migrate`).
//!
//! A leaf service: generic over what waits in an entry (`T`) and over the pending move (`O`),
//! it knows nothing of actors or envelopes. In memory only: after a restart every actor is at
//! its home again (docs/MIGRATION.md, "Durability").

use std::collections::VecDeque;

use quark_placement::{ActorKey, ShardId};
use rustc_hash::FxHashMap;

/// An actor of this home shard, by registry type index and key.
pub(crate) type Slot = (u16, ActorKey);

/// Where one actor lives and what waits for it at home.
pub(crate) struct Entry<T, O> {
    /// The shard the actor lives on (or will be activated on at its next message); only
    /// meaningful while `node` is `None`.
    pub(crate) place: ShardId,
    /// The other node the actor lives on (`None`: this node, shard `place`).
    pub(crate) node: Option<u64>,
    /// A move ordered and not answered yet: messages wait in `queue` meanwhile.
    pub(crate) moving: Option<O>,
    /// Messages waiting, in arrival order: during a move, or for a credit to `place`.
    pub(crate) queue: VecDeque<T>,
    /// A task of the home shard is waiting for a credit to `place` to send `queue` on.
    pub(crate) flushing: bool,
}

impl<T, O> Entry<T, O> {
    /// Nothing waits and nothing is under way: a message may go straight to `place`, and a
    /// move may start.
    pub(crate) fn is_quiet(&self) -> bool {
        self.moving.is_none() && self.queue.is_empty() && !self.flushing
    }
}

/// A shard's directory: entries only for actors of this home that live elsewhere or are
/// being moved (see the module doc).
pub(crate) struct Directory<T, O> {
    home: ShardId,
    entries: FxHashMap<Slot, Entry<T, O>>,
}

impl<T, O> Directory<T, O> {
    pub(crate) fn new(home: ShardId) -> Self {
        Directory {
            home,
            entries: FxHashMap::default(),
        }
    }

    /// True if `slot` has an entry (the actor is away or moving). Empty directory first: the
    /// common case costs one length test.
    #[inline]
    pub(crate) fn has(&self, slot: &Slot) -> bool {
        !self.entries.is_empty() && self.entries.contains_key(slot)
    }

    pub(crate) fn get(&self, slot: &Slot) -> Option<&Entry<T, O>> {
        self.entries.get(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: &Slot) -> Option<&mut Entry<T, O>> {
        self.entries.get_mut(slot)
    }

    /// The entry of `slot`, made (at home, nothing waiting) if there is none.
    pub(crate) fn entry(&mut self, slot: Slot) -> &mut Entry<T, O> {
        let home = self.home;
        self.entries.entry(slot).or_insert_with(|| Entry {
            place: home,
            node: None,
            moving: None,
            queue: VecDeque::new(),
            flushing: false,
        })
    }

    /// Removes `slot`'s entry (the actor is back at home and nothing waits).
    pub(crate) fn remove(&mut self, slot: &Slot) -> Option<Entry<T, O>> {
        self.entries.remove(slot)
    }

    /// Where the actor of `slot` lives: its entry's place, else home.
    pub(crate) fn place_of(&self, slot: &Slot) -> ShardId {
        self.entries.get(slot).map_or(self.home, |e| e.place)
    }

    /// Entries (actors of this home that are away or moving).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_without_entry_is_at_home_and_costs_no_entry() {
        let mut d: Directory<u32, ()> = Directory::new(3);
        let slot = (0u16, ActorKey::from(7u64));
        assert!(!d.has(&slot));
        assert_eq!(d.place_of(&slot), 3);
        let e = d.entry(slot.clone());
        assert_eq!(e.place, 3);
        assert!(e.is_quiet());
        e.place = 1;
        e.queue.push_back(9);
        assert!(!d.get(&slot).expect("made above").is_quiet());
        assert_eq!(d.place_of(&slot), 1);
        assert_eq!(d.len(), 1);
        let gone = d.remove(&slot).expect("present");
        assert_eq!(gone.queue, [9]);
        assert!(!d.has(&slot));
        assert_eq!(d.len(), 0);
    }
}
