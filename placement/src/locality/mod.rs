//! Locality-aware repartitioning (issue 19): the pure, deterministic decision code.
//!
//! - [`EdgeSketch`]: a bounded heavy-hitters counter (Space-Saving top-K) of actor-to-actor
//!   edges, decayed per round: what each shard keeps of its sampled sends.
//! - [`Repartitioner`]: one round at a time, from the merged edge summaries, the actors'
//!   places and the places' loads, proposes moves that cut the most cross-node, then
//!   cross-shard, traffic (same shard > same node > same zone, [`Costs`]), under a balance
//!   tolerance (pairwise exchanges where a lone move would break it), skipping anchored
//!   actors (traffic mostly local), actors cooling down after a move, and immovable ones.
//!   Each [`Move`] says what it is expected to save.
//!
//! No clock, no I/O, no randomness: the engine (`quark::locality`) and the simulator
//! (`bench/src/bin/repartsim.rs`) run the same code. docs/LOCALITY.md explains the decisions.
//!
//! ```
//! use std::collections::{BTreeMap, HashMap};
//! use quark_placement::locality::*;
//! let at = |shard| Location { zone: 0, node: 1, shard };
//! // "a" (shard 0) talks only to "b" (shard 1); "c" and "d" keep the two shards balanced.
//! let edges = vec![("a", "b", 100.0), ("c", "c2", 1.0)];
//! let mut actors = HashMap::new();
//! for (id, s) in [("a", 0), ("b", 1), ("c", 0), ("c2", 0)] {
//!     actors.insert(id, ActorPlace { location: at(s), home: None, movable: true, memory_bytes: 0, traffic: 0.0 });
//! }
//! let mut loads = BTreeMap::new();
//! loads.insert(at(0), Load { activations: 10, memory_bytes: None });
//! loads.insert(at(1), Load { activations: 10, memory_bytes: None });
//! let mut r = Repartitioner::new(RoundConfig::default());
//! let report = r.round(&RoundInput { edges: &edges, actors: &actors, loads: &loads });
//! assert_eq!(report.moves.len(), 1);
//! assert_eq!(report.moves[0].actor, "b"); // to the first of equal places, deterministically
//! assert_eq!(report.moves[0].saved_cross_shard, 100.0);
//! ```

mod round;
mod sketch;

pub use round::{
    ActorPlace, Costs, Load, Location, Move, Repartitioner, RoundConfig, RoundInput, RoundReport,
};
pub use sketch::{Counter, EdgeSketch};
