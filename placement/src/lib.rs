//! Quark placement: where an actor lives.
//!
//! Pure and deterministic: no I/O, no clocks, no randomness. Every node and every client computes
//! the same owner for the same [`ActorId`] from the same membership, because the hash used here is
//! defined by this crate (FNV-1a 64 with a splitmix64 finaliser), not by `std`'s per-process
//! randomised hasher.
//!
//! ```
//! use quark_placement::{ActorId, ActorKey, shard_for};
//! let id = ActorId::new("counter", ActorKey::U64(7));
//! let shard = shard_for(&id, 4);
//! assert!(shard < 4);
//! assert_eq!(shard, shard_for(&id, 4)); // stable
//! ```
#![deny(missing_docs)]

mod id;
mod live;
pub mod locality;
mod ring;

pub use id::{stable_hash, ActorId, ActorKey};
pub use live::{version_cmp, version_older, LiveMember, LiveMembers, MemberState};
pub use ring::{
    jump_hash, key_for_shard, keys_for_shard, node_for, shard_for, NodeId, Placement, ShardId,
};

/// Version of the placement functions ([`stable_hash`], [`shard_for`], [`node_for`]). A data
/// directory records the version its logs were laid out with (its manifest); a build whose
/// functions place actors differently must raise it, and a node then refuses that directory
/// until `quark data reshard` has moved every stream to the shard the new version picks.
pub const PLACEMENT_VERSION: u32 = 1;
