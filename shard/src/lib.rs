//! Quark: the per-core engine (threads, rings, actor table, turns, timers).
#![deny(missing_docs)]

pub mod rt;
