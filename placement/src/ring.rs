//! From an actor id to a node and a shard.
//!
//! - Node: rendezvous (highest-random-weight) hashing over the member set. When a node joins or
//!   leaves, only the actors whose winner changes move (about 1/n of them), and the answer does
//!   not depend on the order members are listed in.
//! - Shard within a node: jump consistent hash over the node's shard count, so that growing a
//!   node from n to n+1 shards moves about 1/(n+1) of its actors.
//! - Keys for a shard: [`keys_for_shard`] lists the keys of a type that a node places on a
//!   given shard (for tests and benchmarks that need an actor on a known shard).
//!
//! There are no per-actor overrides: every node, client and offline tool (`quark data
//! reshard`) must find an actor's shard from its id alone, because the shard also holds the
//! actor's journal.

use crate::id::{mix64, ActorId};

/// Index of a shard within a node (`0..shards`).
pub type ShardId = u16;

/// A cluster member's id, as configured.
pub type NodeId = u64;

/// Jump consistent hash (Lamping & Veach): maps `key` to a bucket in `0..buckets`.
///
/// # Panics
/// If `buckets` is 0 (an invariant of every caller: a node has at least one shard).
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "jump_hash needs at least one bucket");
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b.wrapping_add(1) as f64)
            * ((1u64 << 31) as f64 / ((key >> 33).wrapping_add(1) as f64))) as i64;
    }
    b as u32
}

/// The shard (in `0..shards`) that owns `id` on its node.
///
/// # Panics
/// If `shards` is 0.
pub fn shard_for(id: &ActorId, shards: u16) -> ShardId {
    // Salted so that the shard choice is independent of the node choice.
    jump_hash(
        mix64(id.stable_hash() ^ 0x5348_4152_445f_5341),
        u32::from(shards),
    ) as ShardId
}

/// The node (from `members`) that owns `id`, by rendezvous hashing; `None` if `members` is empty.
pub fn node_for(id: &ActorId, members: &[NodeId]) -> Option<NodeId> {
    let h = id.stable_hash();
    members
        .iter()
        .copied()
        .max_by_key(|node| (mix64(h ^ mix64(*node)), *node))
}

/// The `u64` keys, ascending from 0, whose actor of type `type_name` a node with `shards`
/// shards places on `shard` (by [`shard_for`]; about one key in `shards`). In a cluster the
/// key's node is chosen first ([`node_for`]): the key is on `shard` of whichever node owns it.
///
/// # Panics
/// If `shard >= shards`.
pub fn keys_for_shard(
    type_name: &'static str,
    shard: ShardId,
    shards: u16,
) -> impl Iterator<Item = u64> {
    assert!(
        shard < shards,
        "shard {shard} does not exist on a node of {shards} shards"
    );
    (0..=u64::MAX).filter(move |&k| shard_for(&ActorId::new(type_name, k), shards) == shard)
}

/// The smallest `u64` key whose actor of type `type_name` a node with `shards` shards places
/// on `shard`: `keys_for_shard(type_name, shard, shards).next()`.
///
/// # Panics
/// If `shard >= shards`.
pub fn key_for_shard(type_name: &'static str, shard: ShardId, shards: u16) -> u64 {
    keys_for_shard(type_name, shard, shards)
        .next()
        .expect("jump hash reaches every shard")
}

/// A cluster's placement: members and their shard counts.
///
/// Pure data; cheap to clone for a small cluster. Every node and client that holds the same
/// `Placement` computes the same owners.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    members: Vec<(NodeId, u16)>,
    node_ids: Vec<NodeId>,
}

impl Placement {
    /// A placement over `members`, each `(node id, shard count)`.
    ///
    /// # Panics
    /// If a member has 0 shards or a node id is listed twice (configuration is validated before
    /// it reaches here).
    pub fn new(members: impl IntoIterator<Item = (NodeId, u16)>) -> Self {
        let mut members: Vec<(NodeId, u16)> = members.into_iter().collect();
        members.sort_unstable();
        for w in members.windows(2) {
            assert!(w[0].0 != w[1].0, "node id {} listed twice", w[0].0);
        }
        assert!(
            members.iter().all(|m| m.1 > 0),
            "a node needs at least one shard"
        );
        let node_ids = members.iter().map(|m| m.0).collect();
        Placement { members, node_ids }
    }

    /// A single node with `shards` shards.
    pub fn single(node: NodeId, shards: u16) -> Self {
        Self::new([(node, shards)])
    }

    /// The members, sorted by node id.
    pub fn members(&self) -> &[(NodeId, u16)] {
        &self.members
    }

    /// The owner `(node, shard)` of `id`; `None` if the cluster has no members.
    pub fn locate(&self, id: &ActorId) -> Option<(NodeId, ShardId)> {
        let node = node_for(id, &self.node_ids)?;
        let shards = self
            .members
            .binary_search_by_key(&node, |m| m.0)
            .map(|i| self.members[i].1)
            .expect("node_for returns a member");
        Some((node, shard_for(id, shards)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ActorKey;

    #[test]
    fn jump_hash_moves_few_keys_when_growing() {
        let moved = (0..10_000u64)
            .filter(|k| jump_hash(mix64(*k), 8) != jump_hash(mix64(*k), 9))
            .count();
        // Expected about 1/9 of the keys (1,111); anything near that is consistent hashing.
        assert!((800..1_450).contains(&moved), "moved {moved}");
        // Keys that moved went to the new bucket only.
        for k in 0..10_000u64 {
            let (a, b) = (jump_hash(mix64(k), 8), jump_hash(mix64(k), 9));
            assert!(a == b || b == 8);
        }
    }

    #[test]
    fn shards_are_balanced() {
        let mut counts = [0u32; 4];
        for k in 0..40_000u64 {
            counts[shard_for(&ActorId::new("a", k), 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn node_choice_ignores_member_order_and_moves_little() {
        let ids: Vec<ActorId> = (0..3_000u64).map(|k| ActorId::new("x", k)).collect();
        let three = [1, 2, 3];
        let reversed = [3, 2, 1];
        for id in &ids {
            assert_eq!(node_for(id, &three), node_for(id, &reversed));
        }
        let four = [1, 2, 3, 4];
        let moved = ids
            .iter()
            .filter(|id| node_for(id, &three) != node_for(id, &four))
            .count();
        assert!((500..1_000).contains(&moved), "moved {moved}");
        for id in &ids {
            let (a, b) = (node_for(id, &three), node_for(id, &four));
            assert!(a == b || b == Some(4), "a key moved between old members");
        }
    }

    #[test]
    fn locate_is_node_then_shard() {
        let p = Placement::new([(1, 2), (2, 3)]);
        let id = ActorId::new("a", ActorKey::from("k"));
        let (node, shard) = p.locate(&id).unwrap();
        assert_eq!(Some(node), node_for(&id, &[1, 2]));
        assert_eq!(shard, shard_for(&id, if node == 1 { 2 } else { 3 }));
        assert_eq!(Placement::new([]).locate(&id), None);
    }

    #[test]
    fn keys_for_shard_land_on_that_shard() {
        for shards in [1u16, 2, 7, 64] {
            for shard in 0..shards {
                let keys: Vec<u64> = keys_for_shard("echo", shard, shards).take(5).collect();
                assert_eq!(keys.len(), 5);
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending: {keys:?}");
                for k in &keys {
                    assert_eq!(shard_for(&ActorId::new("echo", *k), shards), shard);
                }
                let first = key_for_shard("echo", shard, shards);
                assert_eq!(first, keys[0]);
                // The smallest: no smaller key is on that shard.
                assert!((0..first).all(|k| shard_for(&ActorId::new("echo", k), shards) != shard));
            }
        }
        // The type name is part of the id: another type's keys differ.
        let a: Vec<u64> = keys_for_shard("a", 1, 8).take(8).collect();
        let b: Vec<u64> = keys_for_shard("b", 1, 8).take(8).collect();
        assert_ne!(a, b);
    }

    #[test]
    #[should_panic(expected = "does not exist")]
    fn keys_for_a_missing_shard_panic() {
        let _ = key_for_shard("echo", 4, 4);
    }
}
