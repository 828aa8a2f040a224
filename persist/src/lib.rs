//! Quark: the per-shard durable log (segments, group commit, recovery, compaction).
