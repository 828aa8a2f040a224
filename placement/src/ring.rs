//! From an actor id to a node and a shard.
//!
//! - Node: rendezvous (highest-random-weight) hashing over the member set. When a node joins or
//!   leaves, only the actors whose winner changes move (about 1/n of them), and the answer does
//!   not depend on the order members are listed in.
//! - Shard within a node: jump consistent hash over the node's shard count, so that growing a
//!   node from n to n+1 shards moves about 1/(n+1) of its actors.
//! - Overrides: a directory of explicit placements (migrations, hints) consulted first.

use std::collections::HashMap;

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

/// A cluster's placement: members, their shard counts, and overrides.
///
/// Pure data; cheap to clone for a small cluster. Every node and client that holds the same
/// `Placement` computes the same owners.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    members: Vec<(NodeId, u16)>,
    node_ids: Vec<NodeId>,
    overrides: HashMap<ActorId, (NodeId, ShardId)>,
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
        Placement {
            members,
            node_ids,
            overrides: HashMap::new(),
        }
    }

    /// A single node with `shards` shards.
    pub fn single(node: NodeId, shards: u16) -> Self {
        Self::new([(node, shards)])
    }

    /// The members, sorted by node id.
    pub fn members(&self) -> &[(NodeId, u16)] {
        &self.members
    }

    /// Pin `id` to `(node, shard)`, overriding the hash (used after a migration).
    pub fn set_override(&mut self, id: ActorId, node: NodeId, shard: ShardId) {
        self.overrides.insert(id, (node, shard));
    }

    /// Remove an override; returns whether there was one.
    pub fn clear_override(&mut self, id: &ActorId) -> bool {
        self.overrides.remove(id).is_some()
    }

    /// The owner `(node, shard)` of `id`; `None` if the cluster has no members.
    pub fn locate(&self, id: &ActorId) -> Option<(NodeId, ShardId)> {
        if let Some(o) = self.overrides.get(id) {
            return Some(*o);
        }
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
    fn overrides_win() {
        let mut p = Placement::new([(1, 2), (2, 2)]);
        let id = ActorId::new("a", ActorKey::from("k"));
        let natural = p.locate(&id).unwrap();
        let other = if natural.0 == 1 { 2 } else { 1 };
        p.set_override(id.clone(), other, 1);
        assert_eq!(p.locate(&id), Some((other, 1)));
        assert!(p.clear_override(&id));
        assert_eq!(p.locate(&id), Some(natural));
        assert_eq!(Placement::new([]).locate(&id), None);
    }
}
