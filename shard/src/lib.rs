//! Quark: the per-core engine (threads, rings, actor table, turns, timers).
