//! Quark benchmarks support code: the actors the benchmarks drive, and summary statistics.

pub mod actors;
pub mod files;
pub mod journal_actors;
pub mod summary;
