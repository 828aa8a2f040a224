//! Quark benchmarks support code.
