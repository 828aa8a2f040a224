//! Quark: wire protocol (frames, handshake, auth), sans-IO.
