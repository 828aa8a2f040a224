//! Benchmark actors: the one echo actor, `quark::builtin::Echo` (what `quark serve` hosts),
//! and its messages.

pub use quark::builtin::{Bump, Echo, Handled, Ping, Tiny};
