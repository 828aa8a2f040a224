//! Quark: pure, deterministic placement (actor id hashing, shard and node selection).
