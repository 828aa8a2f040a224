//! Quark: a thread-per-core, shared-nothing virtual-actor runtime.
#![deny(missing_docs)]
