//! The executor seam: the only module of Quark's product crates that names the executor
//! (monoio). A later switch of executor (compio is the alternative we watch) touches this
//! module and nothing else.

pub mod log_io;
