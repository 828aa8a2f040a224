//! io_uring-backed file I/O for the durable log (`quark_persist`'s I/O seam), through monoio.
