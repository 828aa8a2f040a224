//! Frame header, frame kinds, and the encoder into an outgoing buffer.
//!
//! Every frame is a 32-byte little-endian header followed by a payload that starts at offset
//! 32 (a multiple of 16) and is zero-padded so the whole frame is a multiple of 16 bytes. A
//! receive buffer whose start is 16-aligned therefore holds every payload at a 16-aligned
//! address, which is what rkyv needs to read an archive in place.
//!
//! The payload has two sections: a *meta* section (`meta_len` bytes, e.g. a request envelope)
//! and a *body* (e.g. the user's message) that starts at the next 16-aligned payload offset
//! after the meta section. Both are addressed by [`Frame::meta`](crate::Frame::meta) and
//! [`Frame::body`](crate::Frame::body).

use rkyv::util::AlignedVec;

/// Bytes in a frame header. A multiple of 16, so the payload is 16-aligned.
pub const HEADER_BYTES: usize = 32;
/// Alignment, in bytes, of every frame start, payload, meta and body section.
pub const FRAME_ALIGN: usize = 16;
/// The two magic bytes every frame starts with (`"QK"`).
pub const MAGIC: [u8; 2] = *b"QK";
/// Version of the frame *format* (byte 2 of the header). The handshake's
/// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) versions what the frames mean.
pub const FRAME_FORMAT_VERSION: u8 = 1;
/// Default bound on one frame, header and padding included (1 MiB).
pub const DEFAULT_FRAME_BYTES_MAX: u32 = 1 << 20;
/// The largest `frame_bytes_max` a decoder accepts (1 GiB); bigger frames make no sense on a
/// cluster link and would only be a way to make a node allocate.
pub const FRAME_BYTES_MAX_LIMIT: u32 = 1 << 30;

/// Rounds `n` up to the next multiple of [`FRAME_ALIGN`].
#[inline]
pub(crate) const fn align16(n: usize) -> usize {
    (n + (FRAME_ALIGN - 1)) & !(FRAME_ALIGN - 1)
}

/// What a frame is for. The numeric values are on the wire and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake 1, initiator → acceptor: version, cluster id, node id, nonce.
    Hello = 1,
    /// Handshake 2, acceptor → initiator: its version, cluster id, node id, nonce and proof.
    Challenge = 2,
    /// Handshake 3, initiator → acceptor: the initiator's proof.
    Proof = 3,
    /// Handshake 4, acceptor → initiator: the connection is established.
    Welcome = 4,
    /// Either side, during the handshake: refusal with a reason code; the sender closes.
    Reject = 5,
    /// An ask: request envelope in meta, message archive in body; expects a `Response` or
    /// `ErrorReply` with the same correlation id.
    Request = 16,
    /// The reply to a `Request`: response envelope in meta, reply archive in body.
    Response = 17,
    /// A tell: request envelope in meta, message archive in body; no reply.
    OneWay = 18,
    /// The reply to a `Request` that failed: response envelope with the error in meta.
    ErrorReply = 19,
    /// Liveness probe; empty payload; the peer answers with `HeartbeatAck` (same correlation).
    Heartbeat = 32,
    /// Answer to `Heartbeat`; empty payload.
    HeartbeatAck = 33,
    /// Orderly close: the sender sends nothing more on this connection.
    Goodbye = 34,
}

impl FrameKind {
    /// Every kind, for tests and tables.
    pub const ALL: [FrameKind; 12] = [
        FrameKind::Hello,
        FrameKind::Challenge,
        FrameKind::Proof,
        FrameKind::Welcome,
        FrameKind::Reject,
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::OneWay,
        FrameKind::ErrorReply,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatAck,
        FrameKind::Goodbye,
    ];

    /// Parses the kind byte; `None` for a value no version-1 peer sends.
    pub const fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Challenge,
            3 => FrameKind::Proof,
            4 => FrameKind::Welcome,
            5 => FrameKind::Reject,
            16 => FrameKind::Request,
            17 => FrameKind::Response,
            18 => FrameKind::OneWay,
            19 => FrameKind::ErrorReply,
            32 => FrameKind::Heartbeat,
            33 => FrameKind::HeartbeatAck,
            34 => FrameKind::Goodbye,
            _ => return None,
        })
    }

    /// True for the five kinds that may only appear before the handshake completes.
    pub const fn is_handshake(self) -> bool {
        matches!(
            self,
            FrameKind::Hello
                | FrameKind::Challenge
                | FrameKind::Proof
                | FrameKind::Welcome
                | FrameKind::Reject
        )
    }
}

/// Flag bits defined by frame format version 1. None yet: senders set 0 and a decoder rejects
/// any other bit ([`FrameError::UnknownFlags`](crate::FrameError::UnknownFlags)), so a future
/// bit can only be used after the handshake agreed on a protocol version that defines it.
pub const KNOWN_FLAGS: u8 = 0;

/// The caller-chosen fields of a frame header (the lengths are filled in by the encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHead {
    /// The frame kind.
    pub kind: FrameKind,
    /// Flag bits; must be a subset of [`KNOWN_FLAGS`].
    pub flags: u8,
    /// The sending shard on the sending node.
    pub source_shard: u16,
    /// The shard on the receiving node this frame is for.
    pub target_shard: u16,
    /// Matches a `Response`/`ErrorReply` to its `Request`, a `HeartbeatAck` to its
    /// `Heartbeat`. Free for other kinds (0 by convention).
    pub correlation: u64,
}

impl FrameHead {
    /// A head with no flags, shards 0 and correlation 0.
    pub const fn new(kind: FrameKind) -> FrameHead {
        FrameHead {
            kind,
            flags: 0,
            source_shard: 0,
            target_shard: 0,
            correlation: 0,
        }
    }

    /// The head of a reply to a frame with this head: shards swapped, same correlation.
    pub const fn reply(&self, kind: FrameKind) -> FrameHead {
        FrameHead {
            kind,
            flags: 0,
            source_shard: self.target_shard,
            target_shard: self.source_shard,
            correlation: self.correlation,
        }
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Kind, flags, shards and correlation id.
    pub head: FrameHead,
    /// Total frame bytes: header + payload + zero padding; a multiple of 16.
    pub frame_len: u32,
    /// Payload bytes (meta section, padding, body).
    pub payload_len: u32,
    /// Bytes of the meta section at the start of the payload.
    pub meta_len: u32,
}

/// Why a frame was refused. Each of these means the byte stream can no longer be trusted:
/// the connection is to be closed (and counted); the decoder stays failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a frame larger than the configured bound.
    #[error("frame of {len} bytes exceeds frame_bytes_max {max}")]
    Oversized {
        /// Announced frame length.
        len: u64,
        /// Configured bound.
        max: u32,
    },
    /// The first two bytes are not `"QK"`: not a Quark peer, or the stream lost sync.
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?} (\"QK\")")]
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// A frame format version this decoder does not speak.
    #[error("frame format version {found}, this node speaks {FRAME_FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A kind byte that names no [`FrameKind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Flag bits outside [`KNOWN_FLAGS`].
    #[error("unknown flag bits {found:#04x} (known {KNOWN_FLAGS:#04x})")]
    UnknownFlags {
        /// The flags byte found.
        found: u8,
    },
    /// A reserved header byte is not zero.
    #[error("reserved header byte at offset {offset} is {value:#04x}, expected 0")]
    ReservedNonZero {
        /// Offset of the byte in the header.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// The lengths in the header disagree (frame vs payload vs meta section).
    #[error(
        "inconsistent lengths: frame_len {frame_len}, payload_len {payload_len}, meta_len {meta_len}"
    )]
    BadLength {
        /// Announced frame length.
        frame_len: u32,
        /// Announced payload length.
        payload_len: u32,
        /// Announced meta section length.
        meta_len: u32,
    },
    /// A frame length that is not a multiple of 16, or a frame that does not start at a
    /// 16-aligned address (so its payload could not be read in place).
    #[error("misaligned frame: {what} is {value}, must be a multiple of {FRAME_ALIGN}")]
    Misaligned {
        /// Which quantity is misaligned (`"frame_len"` or `"frame address"`).
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The stream ended (or the slice ended) inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header (or a header) needs.
        need: usize,
    },
}

/// Parses and validates a 32-byte header against `frame_bytes_max`. This is the only place
/// that reads header bytes from the network; it never panics.
pub(crate) fn parse_header(
    h: &[u8; HEADER_BYTES],
    frame_bytes_max: u32,
) -> Result<FrameHeader, FrameError> {
    let rd_u16 = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let rd_u32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    if h[0..2] != MAGIC {
        return Err(FrameError::BadMagic {
            found: [h[0], h[1]],
        });
    }
    if h[2] != FRAME_FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion { found: h[2] });
    }
    let frame_len = rd_u32(4);
    if frame_len > frame_bytes_max {
        return Err(FrameError::Oversized {
            len: u64::from(frame_len),
            max: frame_bytes_max,
        });
    }
    if frame_len as usize & (FRAME_ALIGN - 1) != 0 {
        return Err(FrameError::Misaligned {
            what: "frame_len",
            value: u64::from(frame_len),
        });
    }
    let kind = FrameKind::from_u8(h[3]).ok_or(FrameError::UnknownKind(h[3]))?;
    let payload_len = rd_u32(8);
    let meta_len = rd_u32(12);
    let flags = h[16];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags { found: flags });
    }
    for offset in [17usize, 22, 23] {
        if h[offset] != 0 {
            return Err(FrameError::ReservedNonZero {
                offset,
                value: h[offset],
            });
        }
    }
    let bad_len = FrameError::BadLength {
        frame_len,
        payload_len,
        meta_len,
    };
    // frame_len must be exactly the padded size of header + payload (no slack to hide data in),
    // and the body, when there is one, starts at the 16-aligned end of the meta section.
    if (frame_len as usize) < HEADER_BYTES
        || align16(HEADER_BYTES + payload_len as usize) != frame_len as usize
        || meta_len > payload_len
        || (meta_len < payload_len && align16(meta_len as usize) > payload_len as usize)
    {
        return Err(bad_len);
    }
    Ok(FrameHeader {
        head: FrameHead {
            kind,
            flags,
            source_shard: rd_u16(18),
            target_shard: rd_u16(20),
            correlation: u64::from_le_bytes([
                h[24], h[25], h[26], h[27], h[28], h[29], h[30], h[31],
            ]),
        },
        frame_len,
        payload_len,
        meta_len,
    })
}

// Format (32 bytes, little-endian):
// { magic [u8;2] = "QK" | format_version u8 = 1 | kind u8 | frame_len u32 | payload_len u32
//   | meta_len u32 | flags u8 | reserved u8 = 0 | source_shard u16 | target_shard u16
//   | reserved [u8;2] = 0 | correlation u64 }
// followed by payload_len bytes of payload and zero padding up to frame_len (a multiple of 16).
fn write_header(dst: &mut [u8], head: &FrameHead, frame_len: u32, payload_len: u32, meta_len: u32) {
    debug_assert_eq!(dst.len(), HEADER_BYTES);
    dst[0..2].copy_from_slice(&MAGIC);
    dst[2] = FRAME_FORMAT_VERSION;
    dst[3] = head.kind as u8;
    dst[4..8].copy_from_slice(&frame_len.to_le_bytes());
    dst[8..12].copy_from_slice(&payload_len.to_le_bytes());
    dst[12..16].copy_from_slice(&meta_len.to_le_bytes());
    dst[16] = head.flags;
    dst[17] = 0;
    dst[18..20].copy_from_slice(&head.source_shard.to_le_bytes());
    dst[20..22].copy_from_slice(&head.target_shard.to_le_bytes());
    dst[22] = 0;
    dst[23] = 0;
    dst[24..32].copy_from_slice(&head.correlation.to_le_bytes());
}

/// A connection's outgoing byte buffer: frames are appended back to back (many per buffer),
/// and the I/O layer writes [`pending`](OutBuf::pending) with one `write`/`send` per flush,
/// then calls [`consume`](OutBuf::consume) with what the kernel took.
///
/// Guarantees: the storage is 16-aligned and every frame starts at a 16-aligned offset, so a
/// payload is serialized directly into its final place (no intermediate copy). `consume` keeps
/// that invariant when it compacts. The buffer grows as frames are appended; its bound is the
/// caller's: check [`len`](OutBuf::len) against the connection's configured outgoing bound
/// before encoding, and await the socket when it is full (backpressure).
#[derive(Default)]
pub struct OutBuf {
    /// Invariant: `head % 16` equals the offset of every frame start modulo 16 in `vec`, i.e.
    /// frames start at multiples of 16 in `vec`; bytes before `head` are already written.
    vec: AlignedVec<FRAME_ALIGN>,
    head: usize,
}

impl std::fmt::Debug for OutBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutBuf")
            .field("pending_bytes", &self.len())
            .finish()
    }
}

/// Errors while encoding one frame. The buffer is left as it was before the frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame would exceed the largest frame length the header can carry, or the bound the
    /// caller passed.
    #[error("encoded frame of {len} bytes exceeds frame_bytes_max {max}")]
    TooLarge {
        /// Bytes the frame would have.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// rkyv could not serialize the value.
    #[error("serializing {wire_name}")]
    Serialize {
        /// Wire name of the value's type.
        wire_name: &'static str,
        /// The serializer's error.
        #[source]
        source: rkyv::rancor::Error,
    },
    /// Flag bits outside [`KNOWN_FLAGS`].
    #[error("flag bits {flags:#04x} are not defined by this protocol version")]
    UnknownFlags {
        /// The flags given.
        flags: u8,
    },
}

impl OutBuf {
    /// An empty buffer.
    pub fn new() -> OutBuf {
        OutBuf::default()
    }

    /// An empty buffer with room for `bytes` before it reallocates.
    pub fn with_capacity(bytes: usize) -> OutBuf {
        OutBuf {
            vec: AlignedVec::with_capacity(bytes),
            head: 0,
        }
    }

    /// The bytes not yet handed to the kernel, whole frames unless a write was partial.
    pub fn pending(&self) -> &[u8] {
        &self.vec[self.head..]
    }

    /// Bytes pending.
    pub fn len(&self) -> usize {
        self.vec.len() - self.head
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the first `n` pending bytes as written. Compacts (keeping 16-alignment of frame
    /// starts) when everything is written or when the written prefix is over half the buffer.
    ///
    /// # Panics
    /// If `n > self.len()` (a bug in the caller's I/O loop, not a network condition).
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "consume({n}) beyond {} pending bytes",
            self.len()
        );
        self.head += n;
        if self.head == self.vec.len() {
            self.vec.clear();
            self.head = 0;
        } else if self.head >= FRAME_ALIGN && self.head * 2 >= self.vec.len() {
            // Move the tail down by a multiple of 16 so frame starts stay 16-aligned.
            let shift = self.head - self.head % FRAME_ALIGN;
            let len = self.vec.len();
            self.vec.copy_within(shift..len, 0);
            self.vec.resize(len - shift, 0);
            self.head -= shift;
        }
    }

    /// Drops everything pending (e.g. after the connection closed).
    pub fn clear(&mut self) {
        self.vec.clear();
        self.head = 0;
    }

    /// Starts a frame: reserves its header. Write the meta section and/or body through the
    /// returned builder, then call [`FrameBuilder::finish`]; dropping the builder without
    /// `finish` removes the partial frame.
    pub fn begin_frame(&mut self, head: FrameHead) -> Result<FrameBuilder<'_>, EncodeError> {
        if head.flags & !KNOWN_FLAGS != 0 {
            return Err(EncodeError::UnknownFlags { flags: head.flags });
        }
        let start = self.vec.len();
        debug_assert_eq!(start % FRAME_ALIGN, 0, "frame start must be 16-aligned");
        self.vec.resize(start + HEADER_BYTES, 0);
        Ok(FrameBuilder {
            buf: self,
            start,
            head,
            meta_len: None,
            finished: false,
        })
    }

    /// Appends a frame with an empty payload (heartbeats, goodbye, welcome).
    pub fn push_empty(&mut self, head: FrameHead) -> Result<(), EncodeError> {
        self.begin_frame(head)?.finish(u32::MAX).map(|_| ())
    }
}

/// Writes one frame's payload directly into an [`OutBuf`]. Implements rkyv's `Writer`, so a
/// value is archived in place; the header's lengths are patched by [`finish`](Self::finish).
pub struct FrameBuilder<'a> {
    buf: &'a mut OutBuf,
    start: usize,
    head: FrameHead,
    meta_len: Option<usize>,
    finished: bool,
}

impl FrameBuilder<'_> {
    fn payload_start(&self) -> usize {
        self.start + HEADER_BYTES
    }

    /// Bytes of payload written so far.
    pub fn payload_len(&self) -> usize {
        self.buf.vec.len() - self.payload_start()
    }

    /// Appends raw bytes to the payload (the current section).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.vec.extend_from_slice(bytes);
    }

    /// Ends the meta section at the current position and pads to 16 so the body that follows
    /// starts aligned. Call at most once, before writing the body; without it, the whole
    /// payload is meta.
    pub fn end_meta(&mut self) {
        assert!(self.meta_len.is_none(), "end_meta called twice");
        let meta = self.payload_len();
        self.meta_len = Some(meta);
        let padded = self.payload_start() + align16(meta);
        self.buf.vec.resize(padded, 0);
    }

    /// Archives `value` with rkyv at the current position (the root lands at the end).
    pub(crate) fn archive<T>(
        &mut self,
        wire_name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError>
    where
        T: for<'x, 'y> rkyv::Serialize<crate::wire::PayloadSerializer<'x, 'y>>,
    {
        let pos0 = self.buf.vec.len();
        debug_assert_eq!(pos0 % FRAME_ALIGN, 0, "archives start 16-aligned");
        let writer = PayloadWriter {
            vec: &mut self.buf.vec,
            base: pos0,
        };
        match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, writer) {
            Ok(_) => Ok(()),
            Err(source) => {
                self.buf.vec.resize(pos0, 0);
                Err(EncodeError::Serialize { wire_name, source })
            }
        }
    }

    /// Pads the frame, patches the header and commits it to the buffer. Fails (and removes
    /// the frame) if the frame would exceed `frame_bytes_max`. Returns the frame's length.
    pub fn finish(mut self, frame_bytes_max: u32) -> Result<u32, EncodeError> {
        let payload_len = self.payload_len();
        let frame_len = align16(HEADER_BYTES + payload_len);
        let max = frame_bytes_max.min(FRAME_BYTES_MAX_LIMIT);
        if frame_len > max as usize {
            return Err(EncodeError::TooLarge {
                len: frame_len as u64,
                max: u64::from(max),
            });
        }
        let meta_len = self.meta_len.unwrap_or(payload_len);
        self.buf.vec.resize(self.start + frame_len, 0);
        let start = self.start;
        write_header(
            &mut self.buf.vec[start..start + HEADER_BYTES],
            &self.head,
            frame_len as u32,
            payload_len as u32,
            meta_len as u32,
        );
        self.finished = true;
        Ok(frame_len as u32)
    }
}

impl Drop for FrameBuilder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.buf.vec.resize(self.start, 0);
        }
    }
}

/// The rkyv writer over a frame's payload. Positions are relative to the archive's start,
/// which is 16-aligned in the buffer, so rkyv's alignment of every field (≤ 16) holds in
/// memory too. Public only because it appears in [`WireMessage`](crate::WireMessage)'s bounds.
pub struct PayloadWriter<'a> {
    vec: &'a mut AlignedVec<FRAME_ALIGN>,
    base: usize,
}

impl rkyv::ser::Positional for PayloadWriter<'_> {
    fn pos(&self) -> usize {
        self.vec.len() - self.base
    }
}

impl<E> rkyv::ser::Writer<E> for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.vec.extend_from_slice(bytes);
        Ok(())
    }
}
