//! The connection handshake: version, cluster id, node id, and a mutual HMAC-SHA256
//! challenge–response over the cluster secret. Pure state machines: frames in, frames out.
//!
//! ```text
//! initiator (dialer)                                  acceptor (listener)
//!   Hello { version, cluster, node, role, has_secret, nonce_i }  ──►
//!        ◄──  Challenge { version, cluster, node, has_secret, nonce_a, proof_a, app_version_a }
//!   Proof { proof_i, app_version_i }                              ──►
//!        ◄──  Welcome
//! Either side, on any mismatch: Reject { reason, its version, cluster, node }, then close.
//! ```
//!
//! `proof_x = HMAC-SHA256(secret, transcript(label_x))`, where the transcript binds both
//! nonces, both node ids, the cluster id, the version and the initiator's role, and the label
//! differs per direction (so a proof cannot be reflected). Proofs are compared in constant
//! time. With no secret configured on both sides the key is empty (the proof then only
//! guards against accidents; such a node listens on loopback only, see
//! [`check_listen_addr`](crate::check_listen_addr)).

use hmac::{Hmac, Mac};
use rkyv::{Archive, Deserialize, Serialize};
use sha2::Sha256;

use crate::decoder::Frame;
use crate::frame::{FrameHead, FrameKind, OutBuf};
use crate::secret::ClusterSecret;
use crate::wire::{decode_message, encode_message, WireError, WireMessage};

/// The protocol version this build speaks (what frames and payloads mean). Peers must agree
/// exactly.
///
/// 4: the application version (`[node] app_version`) travels in the Challenge and the Proof.
/// 5: the member view epoch travels in `quark.member.state` (a `JOIN` waits for it) and in
/// `quark.migrate.arrive` (a target with a newer view refuses a hand-over that its view places
/// elsewhere): both bodies gained a `u64` (docs/PROTOCOL.md, docs/CLUSTER.md "Concurrent
/// joins").
pub const PROTOCOL_VERSION: u16 = 5;

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;

/// Bound on handshake frames (they are small; anything bigger is refused by the decoder the
/// I/O layer uses before the handshake completes, if it uses this bound).
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 4096;

/// The longest cluster id accepted, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 255;

const PROOF_BYTES: usize = 32;
const TRANSCRIPT_TAG: &[u8] = b"quark-handshake-v1\0";

/// What the connecting side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum PeerRole {
    /// A cluster member (a node of the static membership).
    Member = 0,
    /// An external client (not a member; sends requests, hosts no actors).
    Client = 1,
}

// Format: rkyv archive (meta section of a Hello frame). Frozen for all protocol versions so
// that a version mismatch can always be read and reported.
#[derive(Debug, Archive, Serialize, Deserialize)]
struct Hello {
    protocol_version: u16,
    cluster_id: String,
    node_id: u64,
    role: PeerRole,
    has_secret: bool,
    nonce: [u8; NONCE_BYTES],
}
impl WireMessage for Hello {
    const WIRE_NAME: &'static str = "quark.Hello";
}

// Format: rkyv archive (meta section of a Challenge frame).
#[derive(Debug, Archive, Serialize, Deserialize)]
struct Challenge {
    protocol_version: u16,
    cluster_id: String,
    node_id: u64,
    has_secret: bool,
    nonce: [u8; NONCE_BYTES],
    proof: [u8; PROOF_BYTES],
    /// The acceptor's application version (`[node] app_version`; empty: not set). Since 4.
    app_version: String,
}
impl WireMessage for Challenge {
    const WIRE_NAME: &'static str = "quark.Challenge";
}

// Format: rkyv archive (meta section of a Proof frame).
#[derive(Debug, Archive, Serialize, Deserialize)]
struct ProofMsg {
    proof: [u8; PROOF_BYTES],
    /// The initiator's application version (empty: not set). Since 4.
    app_version: String,
}
impl WireMessage for ProofMsg {
    const WIRE_NAME: &'static str = "quark.Proof";
}

// Format: rkyv archive (meta section of a Reject frame). Frozen for all protocol versions.
#[derive(Debug, Archive, Serialize, Deserialize)]
struct Reject {
    reason: u8,
    protocol_version: u16,
    cluster_id: String,
    node_id: u64,
}
impl WireMessage for Reject {
    const WIRE_NAME: &'static str = "quark.Reject";
}

/// The reason code carried by a Reject frame (values are on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Protocol versions differ.
    VersionMismatch,
    /// Cluster ids differ.
    ClusterMismatch,
    /// A proof did not verify: the secrets differ.
    WrongProof,
    /// One side has a secret configured, the other not.
    AuthModeMismatch,
    /// The acceptor is not the node the initiator dialed.
    UnexpectedPeer,
    /// A frame of the wrong kind for the handshake state.
    UnexpectedFrame,
    /// A handshake payload failed validation.
    BadPayload,
    /// The handshake did not complete in time.
    Timeout,
    /// A code this build does not know (a newer peer).
    Other(u8),
}

impl RejectReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RejectReason::VersionMismatch => 1,
            RejectReason::ClusterMismatch => 2,
            RejectReason::WrongProof => 3,
            RejectReason::AuthModeMismatch => 4,
            RejectReason::UnexpectedPeer => 5,
            RejectReason::UnexpectedFrame => 6,
            RejectReason::BadPayload => 7,
            RejectReason::Timeout => 8,
            RejectReason::Other(c) => c,
        }
    }

    /// Parses a wire code (unknown codes become [`RejectReason::Other`]).
    pub fn from_code(c: u8) -> RejectReason {
        match c {
            1 => RejectReason::VersionMismatch,
            2 => RejectReason::ClusterMismatch,
            3 => RejectReason::WrongProof,
            4 => RejectReason::AuthModeMismatch,
            5 => RejectReason::UnexpectedPeer,
            6 => RejectReason::UnexpectedFrame,
            7 => RejectReason::BadPayload,
            8 => RejectReason::Timeout,
            c => RejectReason::Other(c),
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::VersionMismatch => f.write_str("protocol version mismatch"),
            RejectReason::ClusterMismatch => f.write_str("cluster id mismatch"),
            RejectReason::WrongProof => f.write_str("wrong proof (cluster secrets differ)"),
            RejectReason::AuthModeMismatch => {
                f.write_str("one side has a cluster secret configured and the other not")
            }
            RejectReason::UnexpectedPeer => f.write_str("not the node that was dialed"),
            RejectReason::UnexpectedFrame => f.write_str("unexpected frame during handshake"),
            RejectReason::BadPayload => f.write_str("invalid handshake payload"),
            RejectReason::Timeout => f.write_str("handshake timed out"),
            RejectReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

/// What a peer said about itself (unauthenticated until the handshake succeeds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerClaim {
    /// Its node id.
    pub node_id: u64,
    /// Its cluster id.
    pub cluster_id: String,
    /// Its protocol version.
    pub protocol_version: u16,
}

impl std::fmt::Display for PeerClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} (cluster {:?}, protocol v{})",
            self.node_id, self.cluster_id, self.protocol_version
        )
    }
}

/// Why a handshake failed. Whenever this side detected the failure, it has also appended a
/// Reject frame (with the matching [`RejectReason`]) to the output buffer: flush it, then close.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Protocol versions differ.
    #[error("protocol version mismatch: we speak v{ours}, peer {peer} speaks v{}", peer.protocol_version)]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// What the peer claimed.
        peer: PeerClaim,
    },
    /// Cluster ids differ.
    #[error("cluster id mismatch: we are in cluster {ours:?}, peer {peer} claims cluster {:?}", peer.cluster_id)]
    ClusterMismatch {
        /// Our cluster id.
        ours: String,
        /// What the peer claimed.
        peer: PeerClaim,
    },
    /// The peer's proof did not verify with our secret.
    #[error("wrong proof from peer {peer}: the cluster secrets differ")]
    WrongProof {
        /// What the peer claimed.
        peer: PeerClaim,
    },
    /// One side has a secret, the other not.
    #[error("authentication mode mismatch with peer {peer}: we {}, the peer {}",
        if *ours_has_secret { "have a cluster secret" } else { "have no cluster secret" },
        if *ours_has_secret { "has none" } else { "has one" })]
    AuthModeMismatch {
        /// Whether we have a secret configured.
        ours_has_secret: bool,
        /// What the peer claimed.
        peer: PeerClaim,
    },
    /// The acceptor is not the node we dialed.
    #[error("dialed node {expected} but peer {peer} answered")]
    UnexpectedPeer {
        /// The node id we dialed.
        expected: u64,
        /// What the peer claimed.
        peer: PeerClaim,
    },
    /// A frame of the wrong kind for the current state.
    #[error("unexpected {kind:?} frame while {state}")]
    UnexpectedFrame {
        /// The state we were in.
        state: &'static str,
        /// The kind received.
        kind: FrameKind,
    },
    /// A handshake payload failed validation.
    #[error("invalid handshake payload")]
    BadPayload(#[source] WireError),
    /// The caller's timer fired before the handshake completed.
    #[error("handshake timed out while {state}{}", peer.as_ref().map(|p| format!(" (peer {p})")).unwrap_or_default())]
    Timeout {
        /// The state we were in.
        state: &'static str,
        /// What the peer claimed, if it said anything.
        peer: Option<PeerClaim>,
    },
    /// The peer refused us, for `reason`.
    #[error("peer {peer} refused the handshake: {reason}")]
    Rejected {
        /// The peer's reason.
        reason: RejectReason,
        /// What the peer claimed in its Reject.
        peer: PeerClaim,
    },
    /// Our configured cluster id is longer than [`CLUSTER_ID_BYTES_MAX`].
    #[error("configured cluster id is {len} bytes, at most {CLUSTER_ID_BYTES_MAX} allowed")]
    ClusterIdTooLong {
        /// Its length.
        len: usize,
    },
    /// The handshake machine was used after it finished or failed.
    #[error("handshake already {state}")]
    Finished {
        /// `"established"` or `"failed"`.
        state: &'static str,
    },
}

impl HandshakeError {
    /// The reason code this side sends (or sent) for this error; `None` for errors that came
    /// from the peer (`Rejected`) or from misuse.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            HandshakeError::VersionMismatch { .. } => RejectReason::VersionMismatch,
            HandshakeError::ClusterMismatch { .. } => RejectReason::ClusterMismatch,
            HandshakeError::WrongProof { .. } => RejectReason::WrongProof,
            HandshakeError::AuthModeMismatch { .. } => RejectReason::AuthModeMismatch,
            HandshakeError::UnexpectedPeer { .. } => RejectReason::UnexpectedPeer,
            HandshakeError::UnexpectedFrame { .. } => RejectReason::UnexpectedFrame,
            HandshakeError::BadPayload(_) => RejectReason::BadPayload,
            HandshakeError::Timeout { .. } => RejectReason::Timeout,
            HandshakeError::Rejected { .. }
            | HandshakeError::Finished { .. }
            | HandshakeError::ClusterIdTooLong { .. } => return None,
        })
    }
}

/// This node's side of every handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Normally [`PROTOCOL_VERSION`] (tests set others).
    pub protocol_version: u16,
    /// The cluster id (at most [`CLUSTER_ID_BYTES_MAX`] bytes).
    pub cluster_id: String,
    /// This node's id (clients pick any id, e.g. a random one).
    pub node_id: u64,
    /// Member or client (only the initiator's role is sent).
    pub role: PeerRole,
    /// The cluster secret, if configured.
    pub secret: Option<ClusterSecret>,
    /// The shard this side runs on (put in the frames' source shard).
    pub shard: u16,
    /// This side's application version (`[node] app_version`; empty: not set), told to the
    /// peer (version-aware placement, docs/MIGRATION.md). Not bound into the proofs.
    pub app_version: String,
}

impl HandshakeConfig {
    /// A member config with the current protocol version, shard 0.
    pub fn member(
        cluster_id: impl Into<String>,
        node_id: u64,
        secret: Option<ClusterSecret>,
    ) -> Self {
        HandshakeConfig {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            node_id,
            role: PeerRole::Member,
            secret,
            shard: 0,
            app_version: String::new(),
        }
    }

    fn check(&self) -> Result<(), HandshakeError> {
        if self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(HandshakeError::ClusterIdTooLong {
                len: self.cluster_id.len(),
            });
        }
        Ok(())
    }
}

/// The authenticated peer, once the handshake succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id (proven: it is bound into the verified proof).
    pub node_id: u64,
    /// The peer's role (as the initiator declared it; acceptors are members).
    pub role: PeerRole,
    /// The shard the peer's side of the connection runs on.
    pub shard: u16,
    /// The peer's application version (empty: not set).
    pub app_version: String,
}

/// Result of feeding a frame to a handshake machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Flush the output and wait for the next frame.
    Continue,
    /// Done: flush the output; from now on the connection carries application frames.
    Established(PeerInfo),
}

/// The inputs both sides bind into a proof.
struct Transcript<'a> {
    secret: Option<&'a ClusterSecret>,
    version: u16,
    cluster_id: &'a str,
    initiator: u64,
    acceptor: u64,
    role: PeerRole,
    nonce_i: &'a [u8; NONCE_BYTES],
    nonce_a: &'a [u8; NONCE_BYTES],
}

impl Transcript<'_> {
    fn mac(&self, label: u8) -> Hmac<Sha256> {
        let key = self.secret.map_or(&[][..], |s| s.expose());
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        // Format: { tag "quark-handshake-v1\0" | label u8 ('I' or 'A') | version u16 |
        //   cluster_id_len u32 | cluster_id | initiator_node u64 | acceptor_node u64 | role u8 |
        //   nonce_i [u8;32] | nonce_a [u8;32] }, integers little-endian.
        mac.update(TRANSCRIPT_TAG);
        mac.update(&[label]);
        mac.update(&self.version.to_le_bytes());
        mac.update(&(self.cluster_id.len() as u32).to_le_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(&self.initiator.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&[self.role as u8]);
        mac.update(self.nonce_i);
        mac.update(self.nonce_a);
        mac
    }
}

const LABEL_INITIATOR: u8 = b'I';
const LABEL_ACCEPTOR: u8 = b'A';

fn role_from_archived(r: &ArchivedPeerRole) -> PeerRole {
    match r {
        ArchivedPeerRole::Member => PeerRole::Member,
        ArchivedPeerRole::Client => PeerRole::Client,
    }
}

fn head(cfg: &HandshakeConfig, kind: FrameKind) -> FrameHead {
    FrameHead {
        source_shard: cfg.shard,
        ..FrameHead::new(kind)
    }
}

fn send_reject(cfg: &HandshakeConfig, out: &mut OutBuf, reason: RejectReason) {
    let msg = Reject {
        reason: reason.code(),
        protocol_version: cfg.protocol_version,
        cluster_id: cfg.cluster_id.clone(),
        node_id: cfg.node_id,
    };
    // A Reject is a few dozen bytes; it can only fail on a cluster id longer than the frame
    // bound, which `check_cluster_id` rules out. If it does fail, the peer sees a close.
    let _ = encode_message(
        out,
        head(cfg, FrameKind::Reject),
        &msg,
        HANDSHAKE_FRAME_BYTES_MAX,
    );
}

fn read_reject(frame: &Frame<'_>) -> HandshakeError {
    match decode_message::<Reject>(frame.meta()) {
        Ok(r) => HandshakeError::Rejected {
            reason: RejectReason::from_code(r.reason),
            peer: PeerClaim {
                node_id: r.node_id.to_native(),
                cluster_id: r.cluster_id.as_str().to_owned(),
                protocol_version: r.protocol_version.to_native(),
            },
        },
        Err(e) => HandshakeError::BadPayload(e),
    }
}

/// Compares claims common to both sides; the order of checks is part of the protocol (the
/// version first, so that a future version's differences are reported as such).
fn check_claims(
    cfg: &HandshakeConfig,
    peer: &PeerClaim,
    peer_has_secret: bool,
) -> Result<(), HandshakeError> {
    if peer.protocol_version != cfg.protocol_version {
        return Err(HandshakeError::VersionMismatch {
            ours: cfg.protocol_version,
            peer: peer.clone(),
        });
    }
    if peer.cluster_id != cfg.cluster_id {
        return Err(HandshakeError::ClusterMismatch {
            ours: cfg.cluster_id.clone(),
            peer: peer.clone(),
        });
    }
    if peer_has_secret != cfg.secret.is_some() {
        return Err(HandshakeError::AuthModeMismatch {
            ours_has_secret: cfg.secret.is_some(),
            peer: peer.clone(),
        });
    }
    Ok(())
}

#[derive(Debug)]
enum InitState {
    New,
    HelloSent,
    ProofSent { peer: PeerInfo },
    Established,
    Failed,
}

/// The dialing side's handshake.
///
/// Drive it: [`start`](Self::start) (writes Hello), then [`on_frame`](Self::on_frame) for each
/// frame received until it returns `Established` or an error; call
/// [`on_timeout`](Self::on_timeout) if the caller's handshake deadline passes first. After an
/// error, flush the output (it holds a Reject when we detected the cause) and close.
#[derive(Debug)]
pub struct Initiator {
    cfg: HandshakeConfig,
    nonce: [u8; NONCE_BYTES],
    expected_peer: Option<u64>,
    state: InitState,
    peer_claim: Option<PeerClaim>,
}

impl Initiator {
    /// A handshake with fresh random `nonce` (from the caller's RNG; never reuse one).
    /// `expected_peer` is the node id we dialed, if any (clients may pass `None`).
    pub fn new(
        cfg: HandshakeConfig,
        nonce: [u8; NONCE_BYTES],
        expected_peer: Option<u64>,
    ) -> Initiator {
        Initiator {
            cfg,
            nonce,
            expected_peer,
            state: InitState::New,
            peer_claim: None,
        }
    }

    /// Appends the Hello frame.
    pub fn start(&mut self, out: &mut OutBuf) -> Result<(), HandshakeError> {
        if !matches!(self.state, InitState::New) {
            return Err(self.misuse());
        }
        if let Err(e) = self.cfg.check() {
            self.state = InitState::Failed;
            return Err(e);
        }
        let hello = Hello {
            protocol_version: self.cfg.protocol_version,
            cluster_id: self.cfg.cluster_id.clone(),
            node_id: self.cfg.node_id,
            role: self.cfg.role,
            has_secret: self.cfg.secret.is_some(),
            nonce: self.nonce,
        };
        let _ = encode_message(
            out,
            head(&self.cfg, FrameKind::Hello),
            &hello,
            HANDSHAKE_FRAME_BYTES_MAX,
        );
        self.state = InitState::HelloSent;
        Ok(())
    }

    fn misuse(&self) -> HandshakeError {
        HandshakeError::Finished {
            state: if matches!(self.state, InitState::Established) {
                "established"
            } else {
                "failed"
            },
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            InitState::New => "not started",
            InitState::HelloSent => "awaiting Challenge",
            InitState::ProofSent { .. } => "awaiting Welcome",
            InitState::Established => "established",
            InitState::Failed => "failed",
        }
    }

    fn fail(&mut self, out: &mut OutBuf, err: HandshakeError) -> HandshakeError {
        if let Some(reason) = err.reject_reason() {
            send_reject(&self.cfg, out, reason);
        }
        self.state = InitState::Failed;
        err
    }

    /// Feeds one received frame. Appends our next frame (or a Reject) to `out`.
    pub fn on_frame(
        &mut self,
        frame: &Frame<'_>,
        out: &mut OutBuf,
    ) -> Result<HandshakeStatus, HandshakeError> {
        let kind = frame.header.head.kind;
        match (&self.state, kind) {
            (InitState::Established | InitState::Failed, _) => Err(self.misuse()),
            (InitState::New, _) => {
                let e = HandshakeError::UnexpectedFrame {
                    state: self.state_name(),
                    kind,
                };
                Err(self.fail(out, e))
            }
            (_, FrameKind::Reject) => {
                self.state = InitState::Failed;
                Err(read_reject(frame))
            }
            (InitState::HelloSent, FrameKind::Challenge) => match self.on_challenge(frame, out) {
                Ok(()) => Ok(HandshakeStatus::Continue),
                Err(e) => Err(self.fail(out, e)),
            },
            (InitState::ProofSent { peer }, FrameKind::Welcome) => {
                let peer = peer.clone();
                self.state = InitState::Established;
                Ok(HandshakeStatus::Established(peer))
            }
            _ => {
                let e = HandshakeError::UnexpectedFrame {
                    state: self.state_name(),
                    kind,
                };
                Err(self.fail(out, e))
            }
        }
    }

    fn on_challenge(&mut self, frame: &Frame<'_>, out: &mut OutBuf) -> Result<(), HandshakeError> {
        let c = decode_message::<Challenge>(frame.meta()).map_err(HandshakeError::BadPayload)?;
        let claim = PeerClaim {
            node_id: c.node_id.to_native(),
            cluster_id: c.cluster_id.as_str().to_owned(),
            protocol_version: c.protocol_version.to_native(),
        };
        self.peer_claim = Some(claim.clone());
        check_claims(&self.cfg, &claim, c.has_secret)?;
        if let Some(expected) = self.expected_peer {
            if expected != claim.node_id {
                return Err(HandshakeError::UnexpectedPeer {
                    expected,
                    peer: claim,
                });
            }
        }
        let cfg = &self.cfg;
        let mac_a = Transcript {
            secret: cfg.secret.as_ref(),
            version: cfg.protocol_version,
            cluster_id: &cfg.cluster_id,
            initiator: cfg.node_id,
            acceptor: claim.node_id,
            role: cfg.role,
            nonce_i: &self.nonce,
            nonce_a: &c.nonce,
        }
        .mac(LABEL_ACCEPTOR);
        // Constant-time comparison (hmac uses `subtle`).
        if mac_a.verify_slice(&c.proof).is_err() {
            return Err(HandshakeError::WrongProof { peer: claim });
        }
        let mac_i = Transcript {
            secret: cfg.secret.as_ref(),
            version: cfg.protocol_version,
            cluster_id: &cfg.cluster_id,
            initiator: cfg.node_id,
            acceptor: claim.node_id,
            role: cfg.role,
            nonce_i: &self.nonce,
            nonce_a: &c.nonce,
        }
        .mac(LABEL_INITIATOR);
        let msg = ProofMsg {
            proof: mac_i.finalize().into_bytes().into(),
            app_version: cfg.app_version.clone(),
        };
        let _ = encode_message(
            out,
            head(cfg, FrameKind::Proof),
            &msg,
            HANDSHAKE_FRAME_BYTES_MAX,
        );
        self.state = InitState::ProofSent {
            peer: PeerInfo {
                node_id: claim.node_id,
                role: PeerRole::Member,
                shard: frame.header.head.source_shard,
                app_version: c.app_version.as_str().to_owned(),
            },
        };
        Ok(())
    }

    /// The caller's handshake deadline passed. Appends a Reject (Timeout) unless the
    /// handshake already ended, and returns the error to report.
    pub fn on_timeout(&mut self, out: &mut OutBuf) -> HandshakeError {
        if matches!(self.state, InitState::Established | InitState::Failed) {
            return self.misuse();
        }
        let e = HandshakeError::Timeout {
            state: self.state_name(),
            peer: self.peer_claim.clone(),
        };
        self.fail(out, e)
    }
}

#[derive(Debug)]
enum AcceptState {
    AwaitHello,
    ChallengeSent {
        peer: PeerInfo,
        claim: PeerClaim,
        nonce_i: [u8; NONCE_BYTES],
    },
    Established,
    Failed,
}

/// The listening side's handshake. Feed it every frame received until it returns
/// `Established` or an error; [`on_timeout`](Self::on_timeout) when the caller's deadline
/// passes. After an error, flush the output (a Reject) and close.
#[derive(Debug)]
pub struct Acceptor {
    cfg: HandshakeConfig,
    nonce: [u8; NONCE_BYTES],
    state: AcceptState,
    peer_claim: Option<PeerClaim>,
}

impl Acceptor {
    /// An acceptor with fresh random `nonce` (from the caller's RNG; never reuse one).
    pub fn new(cfg: HandshakeConfig, nonce: [u8; NONCE_BYTES]) -> Acceptor {
        Acceptor {
            cfg,
            nonce,
            state: AcceptState::AwaitHello,
            peer_claim: None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            AcceptState::AwaitHello => "awaiting Hello",
            AcceptState::ChallengeSent { .. } => "awaiting Proof",
            AcceptState::Established => "established",
            AcceptState::Failed => "failed",
        }
    }

    fn misuse(&self) -> HandshakeError {
        HandshakeError::Finished {
            state: if matches!(self.state, AcceptState::Established) {
                "established"
            } else {
                "failed"
            },
        }
    }

    fn fail(&mut self, out: &mut OutBuf, err: HandshakeError) -> HandshakeError {
        if let Some(reason) = err.reject_reason() {
            send_reject(&self.cfg, out, reason);
        }
        self.state = AcceptState::Failed;
        err
    }

    /// Feeds one received frame. Appends our next frame (Challenge, Welcome or Reject).
    pub fn on_frame(
        &mut self,
        frame: &Frame<'_>,
        out: &mut OutBuf,
    ) -> Result<HandshakeStatus, HandshakeError> {
        let kind = frame.header.head.kind;
        match (&self.state, kind) {
            (AcceptState::Established | AcceptState::Failed, _) => Err(self.misuse()),
            (_, FrameKind::Reject) => {
                self.state = AcceptState::Failed;
                Err(read_reject(frame))
            }
            (AcceptState::AwaitHello, FrameKind::Hello) => match self.on_hello(frame, out) {
                Ok(()) => Ok(HandshakeStatus::Continue),
                Err(e) => Err(self.fail(out, e)),
            },
            (AcceptState::ChallengeSent { .. }, FrameKind::Proof) => match self.on_proof(frame) {
                Ok(peer) => {
                    let _ = out.push_empty(head(&self.cfg, FrameKind::Welcome));
                    self.state = AcceptState::Established;
                    Ok(HandshakeStatus::Established(peer))
                }
                Err(e) => Err(self.fail(out, e)),
            },
            _ => {
                let e = HandshakeError::UnexpectedFrame {
                    state: self.state_name(),
                    kind,
                };
                Err(self.fail(out, e))
            }
        }
    }

    fn on_hello(&mut self, frame: &Frame<'_>, out: &mut OutBuf) -> Result<(), HandshakeError> {
        self.cfg.check()?;
        let h = decode_message::<Hello>(frame.meta()).map_err(HandshakeError::BadPayload)?;
        let claim = PeerClaim {
            node_id: h.node_id.to_native(),
            cluster_id: h.cluster_id.as_str().to_owned(),
            protocol_version: h.protocol_version.to_native(),
        };
        self.peer_claim = Some(claim.clone());
        check_claims(&self.cfg, &claim, h.has_secret)?;
        let role = role_from_archived(&h.role);
        let cfg = &self.cfg;
        let mac_a = Transcript {
            secret: cfg.secret.as_ref(),
            version: cfg.protocol_version,
            cluster_id: &cfg.cluster_id,
            initiator: claim.node_id,
            acceptor: cfg.node_id,
            role,
            nonce_i: &h.nonce,
            nonce_a: &self.nonce,
        }
        .mac(LABEL_ACCEPTOR);
        let msg = Challenge {
            protocol_version: cfg.protocol_version,
            cluster_id: cfg.cluster_id.clone(),
            node_id: cfg.node_id,
            has_secret: cfg.secret.is_some(),
            nonce: self.nonce,
            proof: mac_a.finalize().into_bytes().into(),
            app_version: cfg.app_version.clone(),
        };
        let _ = encode_message(
            out,
            head(cfg, FrameKind::Challenge),
            &msg,
            HANDSHAKE_FRAME_BYTES_MAX,
        );
        self.state = AcceptState::ChallengeSent {
            peer: PeerInfo {
                node_id: claim.node_id,
                role,
                shard: frame.header.head.source_shard,
                // Learned from the Proof.
                app_version: String::new(),
            },
            nonce_i: h.nonce,
            claim,
        };
        Ok(())
    }

    fn on_proof(&self, frame: &Frame<'_>) -> Result<PeerInfo, HandshakeError> {
        let AcceptState::ChallengeSent {
            peer,
            claim,
            nonce_i,
        } = &self.state
        else {
            unreachable!("on_proof is only called in ChallengeSent");
        };
        let p = decode_message::<ProofMsg>(frame.meta()).map_err(HandshakeError::BadPayload)?;
        let cfg = &self.cfg;
        let mac_i = Transcript {
            secret: cfg.secret.as_ref(),
            version: cfg.protocol_version,
            cluster_id: &cfg.cluster_id,
            initiator: peer.node_id,
            acceptor: cfg.node_id,
            role: peer.role,
            nonce_i,
            nonce_a: &self.nonce,
        }
        .mac(LABEL_INITIATOR);
        mac_i
            .verify_slice(&p.proof)
            .map_err(|_| HandshakeError::WrongProof {
                peer: claim.clone(),
            })?;
        Ok(PeerInfo {
            app_version: p.app_version.as_str().to_owned(),
            ..peer.clone()
        })
    }

    /// The caller's handshake deadline passed. Appends a Reject (Timeout) unless the
    /// handshake already ended, and returns the error to report.
    pub fn on_timeout(&mut self, out: &mut OutBuf) -> HandshakeError {
        if matches!(self.state, AcceptState::Established | AcceptState::Failed) {
            return self.misuse();
        }
        let e = HandshakeError::Timeout {
            state: self.state_name(),
            peer: self.peer_claim.clone(),
        };
        self.fail(out, e)
    }
}
