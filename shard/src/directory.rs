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
//! An actor type's [`PlacementPolicy`] decides where a *first* activation goes (an id that
//! has no entry): the home shard (hash, the default), the sender's shard, a fixed shard, or a
//! fixed node. A policy that places an actor away from home makes an entry for it exactly as
//! a move does, at the home, before the first message is sent on: every later message finds
//! the entry, so one id never gets two activations.
//!
//! A leaf service: generic over what waits in an entry (`T`) and over the pending move (`O`),
//! it knows nothing of actors or envelopes. In memory only: after a restart every actor is at
//! its home again (docs/MIGRATION.md, "Durability").

use std::collections::VecDeque;

use quark_placement::{ActorKey, NodeId, ShardId};
use rustc_hash::FxHashMap;

/// Where the first activation of an actor of a type goes (set with
/// [`crate::ActorType::placement`]; docs/MIGRATION.md, "Placement policies").
///
/// Every sender on a node addresses the actor's *home shard* (its hash placement) whatever
/// the policy; a policy that places the actor elsewhere leaves a directory entry at the home,
/// which forwards every message to the actor's place, in order. Moves (`migrate`) and drains
/// still apply to a placed actor like to any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PlacementPolicy {
    /// The home shard (hash of the id): no entry, no forwarding. The default.
    #[default]
    Hash,
    /// The shard the first message was sent from, when it was sent from a shard of this node
    /// (an actor's handler or a shard task, including the shard serving the network
    /// connection a request came in on); a first message from a thread outside the shards
    /// (`Engine::actor_ref` used from `main`, a client) activates it at home.
    PreferCaller,
    /// Always this shard of the node (taken modulo the node's shard count).
    Shard(ShardId),
    /// Always this node of the cluster, on the actor's home shard there. Senders on a node
    /// address that node directly; a message that reaches another node (a client addresses
    /// by hash) is sent on by the actor's home shard there. A node without a cluster, or the
    /// named node itself, places the actor at home.
    Node(NodeId),
}

impl PlacementPolicy {
    /// The shard a first activation goes to on this node, for a first message from shard
    /// `sender` (`None`: from outside the shards), with `home` the actor's home shard.
    pub(crate) fn first_shard(
        self,
        home: ShardId,
        sender: Option<ShardId>,
        shards: u16,
    ) -> ShardId {
        match self {
            PlacementPolicy::Hash | PlacementPolicy::Node(_) => home,
            PlacementPolicy::PreferCaller => sender.unwrap_or(home),
            PlacementPolicy::Shard(s) => s % shards.max(1),
        }
    }

    /// True if the policy may place a first activation away from its home shard on this node.
    pub(crate) fn places_on_shards(self) -> bool {
        matches!(
            self,
            PlacementPolicy::PreferCaller | PlacementPolicy::Shard(_)
        )
    }
}

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
    fn policies_pick_the_documented_first_shard() {
        use PlacementPolicy::*;
        assert_eq!(Hash.first_shard(2, Some(1), 4), 2);
        assert_eq!(PreferCaller.first_shard(2, Some(1), 4), 1);
        assert_eq!(PreferCaller.first_shard(2, None, 4), 2);
        assert_eq!(Shard(3).first_shard(2, Some(1), 4), 3);
        assert_eq!(Shard(5).first_shard(2, None, 4), 1);
        assert_eq!(Node(7).first_shard(2, Some(1), 4), 2);
        assert!(!Hash.places_on_shards() && !Node(1).places_on_shards());
        assert!(PreferCaller.places_on_shards() && Shard(0).places_on_shards());
    }

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
