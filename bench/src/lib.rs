//! Quark benchmarks support code: the actors the benchmarks drive, the measuring loops, the
//! load generator's request loops and sample selection, the tokio baseline, summary
//! statistics and the machine line every binary prints.

pub mod actors;
pub mod driver;
pub mod files;
pub mod journal_actors;
pub mod machine;
pub mod measure;
pub mod summary;
pub mod tokio_actor;
pub mod window;
