//! Quark's wire protocol, sans-IO: frames, typed rkyv payloads, the authenticated handshake,
//! and the pure parts of cluster logic (membership, reconnect backoff, failure detection,
//! per-peer counters).
//!
//! Nothing here opens a socket, spawns a thread or names an executor: the shard engine feeds
//! received bytes into a [`FrameDecoder`], drives the [`Initiator`]/[`Acceptor`] handshake
//! machines with the frames it gets, appends outgoing frames to an [`OutBuf`] and writes that
//! buffer with one system call per flush. Time and randomness are passed in, so every
//! behaviour is deterministic under test. The byte layout is in `docs/PROTOCOL.md`.
#![deny(missing_docs)]

mod backoff;
mod counters;
mod decoder;
mod detector;
mod driver;
mod frame;
mod handshake;
mod membership;
mod secret;
pub mod tls;
mod wire;

mod error_chain;
pub use error_chain::ErrorChain;

pub use backoff::{Backoff, BackoffConfig};
pub use counters::{CloseReason, PeerCounters};
pub use decoder::{decode_frame, Frame, FrameDecoder, READ_CHUNK_BYTES};
pub use detector::{DetectorConfig, FailureDetector, Liveness, Transition};
pub use driver::{DriveError, HandshakeDriver};
pub use frame::{
    EncodeError, FrameBuilder, FrameError, FrameHead, FrameHeader, FrameKind, OutBuf,
    PayloadWriter, DEFAULT_FRAME_BYTES_MAX, FRAME_ALIGN, FRAME_BYTES_MAX_LIMIT,
    FRAME_FORMAT_VERSION, HEADER_BYTES, KNOWN_FLAGS, MAGIC,
};
pub use handshake::{
    Acceptor, HandshakeConfig, HandshakeError, HandshakeStatus, Initiator, PeerClaim, PeerInfo,
    PeerRole, RejectReason, CLUSTER_ID_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX, NONCE_BYTES,
    PROTOCOL_VERSION,
};
pub use membership::{ClusterConfig, MemberAddr, Membership, MembershipError};
/// The rkyv version this crate archives with (derive `rkyv::Archive`/`Serialize` through it
/// so the versions match).
pub use rkyv;
pub use secret::{
    check_listen, check_listen_addr, ClusterSecret, ListenError, ListenMode, SecretError,
};
pub use wire::{
    decode_message, decode_request, decode_response, encode_error_reply, encode_message,
    encode_request, encode_response, ArchivedRemoteError, ArchivedRequestEnvelope, ArchivedWireKey,
    ArchivedWireTrace, PayloadSerializer, RemoteError, RequestEnvelope, RequestView, ResponseView,
    WireError, WireKey, WireMessage, WireOwned, WireTrace,
};
