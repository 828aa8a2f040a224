//! Typed payloads: the [`WireMessage`] trait, rkyv encode/validate helpers, and the request /
//! response envelopes.

use std::borrow::Cow;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::with::AsOwned;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::decoder::Frame;
use crate::frame::{EncodeError, FrameHead, FrameKind, OutBuf, FRAME_ALIGN};

/// The rkyv serializer a payload is archived with (writes straight into an [`OutBuf`]).
pub type PayloadSerializer<'w, 'a> =
    HighSerializer<crate::frame::PayloadWriter<'w>, ArenaHandle<'a>, rancor::Error>;

/// A type that crosses nodes. `WIRE_NAME` is its stable name on the wire: it is what a request
/// names, what a receiver looks up, and it must never be reused for a different layout (add a
/// version suffix instead, e.g. `"bank.Deposit.v2"`).
///
/// Implement it for any `#[derive(rkyv::Archive, rkyv::Serialize)]` type whose archived form
/// has alignment ≤ 16 (true of every type built from rkyv's primitives, strings, vecs, enums).
pub trait WireMessage:
    Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
    + for<'w, 'a> Serialize<PayloadSerializer<'w, 'a>>
{
    /// Stable name of the type on the wire.
    const WIRE_NAME: &'static str;
}

macro_rules! wire_primitive {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl WireMessage for $t {
            const WIRE_NAME: &'static str = $name;
        }
    )*};
}

// Common reply types, so that a message can answer with a plain value.
wire_primitive! {
    () => "unit",
    bool => "bool",
    u16 => "u16",
    u32 => "u32",
    u64 => "u64",
    i16 => "i16",
    i32 => "i32",
    i64 => "i64",
    f32 => "f32",
    f64 => "f64",
    String => "string",
    Vec<u8> => "bytes",
}

/// Longest generated wire name (of `Option<T>`, `Result<T, E>`, `Vec<T>`, tuples); a longer
/// one is cut at a character boundary. Generated names appear in error messages only: what a
/// request names on the wire is its message type's own `WIRE_NAME`.
pub(crate) const GENERATED_WIRE_NAME_BYTES_MAX: usize = 128;

/// A wire name built at compile time from parts.
pub(crate) struct WireName {
    bytes: [u8; GENERATED_WIRE_NAME_BYTES_MAX],
    len: usize,
}

impl WireName {
    /// The concatenation of `parts`, cut at [`GENERATED_WIRE_NAME_BYTES_MAX`] bytes.
    pub(crate) const fn concat(parts: &[&str]) -> WireName {
        let mut bytes = [0u8; GENERATED_WIRE_NAME_BYTES_MAX];
        let mut len = 0;
        let mut p = 0;
        'outer: while p < parts.len() {
            let part = parts[p].as_bytes();
            let mut i = 0;
            while i < part.len() {
                if len == GENERATED_WIRE_NAME_BYTES_MAX {
                    // Back off to a character boundary.
                    while len > 0 && (bytes[len - 1] & 0xC0) == 0x80 {
                        len -= 1;
                    }
                    if len > 0 && bytes[len - 1] >= 0xC0 {
                        len -= 1;
                    }
                    break 'outer;
                }
                bytes[len] = part[i];
                len += 1;
                i += 1;
            }
            p += 1;
        }
        WireName { bytes, len }
    }

    /// The name.
    pub(crate) const fn as_str(&self) -> &str {
        match std::str::from_utf8(self.bytes.split_at(self.len).0) {
            Ok(s) => s,
            Err(_) => panic!("a wire name is cut at a character boundary"),
        }
    }
}

/// Generated names of the generic wire types.
struct Named<T: ?Sized>(std::marker::PhantomData<T>);

impl<T: WireMessage> Named<Option<T>> {
    const NAME: WireName = WireName::concat(&["option<", T::WIRE_NAME, ">"]);
}

impl<T: WireMessage> Named<Vec<T>> {
    const NAME: WireName = WireName::concat(&["vec<", T::WIRE_NAME, ">"]);
}

impl<T: WireMessage, E: WireMessage> Named<Result<T, E>> {
    const NAME: WireName = WireName::concat(&["result<", T::WIRE_NAME, ",", E::WIRE_NAME, ">"]);
}

impl<A: WireMessage, B: WireMessage> Named<(A, B)> {
    const NAME: WireName = WireName::concat(&["(", A::WIRE_NAME, ",", B::WIRE_NAME, ")"]);
}

impl<A: WireMessage, B: WireMessage, C: WireMessage> Named<(A, B, C)> {
    const NAME: WireName =
        WireName::concat(&["(", A::WIRE_NAME, ",", B::WIRE_NAME, ",", C::WIRE_NAME, ")"]);
}

impl<A: WireMessage, B: WireMessage, C: WireMessage, D: WireMessage> Named<(A, B, C, D)> {
    const NAME: WireName = WireName::concat(&[
        "(",
        A::WIRE_NAME,
        ",",
        B::WIRE_NAME,
        ",",
        C::WIRE_NAME,
        ",",
        D::WIRE_NAME,
        ")",
    ]);
}

/// `Option<T>`, `Vec<T>`, `Result<T, E>` and tuples of up to four wire types are wire types
/// themselves (replies such as `Result<u64, MyError>` need no wrapper). Their `WIRE_NAME` is
/// generated, e.g. `"result<u64,bank.Error>"`.
macro_rules! wire_generic {
    ($(<$($p:ident),+> $t:ty;)*) => {$(
        impl<$($p: WireMessage),+> WireMessage for $t
        where
            $t: Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
                + for<'w, 'a> Serialize<PayloadSerializer<'w, 'a>>,
        {
            const WIRE_NAME: &'static str = Named::<$t>::NAME.as_str();
        }
    )*};
}

wire_generic! {
    <T> Option<T>;
    <T> Vec<T>;
    <T, E> Result<T, E>;
    <A, B> (A, B);
    <A, B, C> (A, B, C);
    <A, B, C, D> (A, B, C, D);
}

/// A [`WireMessage`] that can also be turned back into an owned value (every type deriving
/// `rkyv::Deserialize` as well). Implemented for all such types.
pub trait WireOwned: WireMessage + Sized {
    /// Validates `payload` as an archived `Self` (see [`decode_message`]) and deserializes it.
    fn from_wire(payload: &[u8]) -> Result<Self, WireError>;
}

impl<M> WireOwned for M
where
    M: WireMessage,
    M::Archived: Deserialize<M, HighDeserializer<rancor::Error>>,
{
    fn from_wire(payload: &[u8]) -> Result<M, WireError> {
        let archived = decode_message::<M>(payload)?;
        rkyv::deserialize::<M, rancor::Error>(archived).map_err(|source| WireError::Invalid {
            wire_name: M::WIRE_NAME,
            len: payload.len(),
            source,
        })
    }
}

/// Why a payload could not be used. The sender is not trusted: answer a request with a
/// [`RemoteError::BadPayload`] reply, or close the connection for control frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Bytes are not a valid archive of the expected type (bytecheck failed).
    #[error("payload of {len} bytes is not a valid {wire_name}")]
    Invalid {
        /// Wire name of the expected type.
        wire_name: &'static str,
        /// Payload length.
        len: usize,
        /// The validator's error.
        #[source]
        source: rancor::Error,
    },
    /// The payload does not start at a 16-aligned address (it was not taken from a
    /// [`Frame`] of an aligned buffer).
    #[error("payload for {wire_name} at address {addr:#x} is not {FRAME_ALIGN}-aligned")]
    Misaligned {
        /// Wire name of the expected type.
        wire_name: &'static str,
        /// The address.
        addr: usize,
    },
    /// The frame is of a kind this decoder does not read.
    #[error("expected a {expected} frame, got {found:?}")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// What came.
        found: FrameKind,
    },
}

/// Validates `payload` as an archived `M` and returns a reference into it (zero copy).
/// Untrusted bytes are checked completely (bounds, alignment, UTF-8, enum tags, pointers)
/// before anything is read; this never panics.
pub fn decode_message<M: WireMessage>(payload: &[u8]) -> Result<&M::Archived, WireError> {
    let addr = payload.as_ptr() as usize;
    // An empty payload (the archive of `()` or of an empty struct) has no bytes to align, and
    // an empty buffer's address is a dangling 0x1: refusing it made every remote ask with a
    // `()` reply fail with `BadReply`.
    if !payload.is_empty() && addr & (FRAME_ALIGN - 1) != 0 {
        return Err(WireError::Misaligned {
            wire_name: M::WIRE_NAME,
            addr,
        });
    }
    rkyv::access::<M::Archived, rancor::Error>(payload).map_err(|source| WireError::Invalid {
        wire_name: M::WIRE_NAME,
        len: payload.len(),
        source,
    })
}

/// Appends one frame whose whole payload is the archive of `msg` (used for control frames:
/// the handshake, or an application's own frame kinds). Read it back with
/// `decode_message::<M>(frame.meta())`.
pub fn encode_message<M: WireMessage>(
    out: &mut OutBuf,
    head: FrameHead,
    msg: &M,
    frame_bytes_max: u32,
) -> Result<u32, EncodeError> {
    let mut f = out.begin_frame(head)?;
    f.archive(M::WIRE_NAME, msg)?;
    f.finish(frame_bytes_max)
}

/// The key part of an actor id as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum WireKey<'a> {
    /// An integer key.
    U64(u64),
    /// A string key.
    Str(#[rkyv(with = AsOwned)] Cow<'a, str>),
    /// A binary key.
    Bytes(#[rkyv(with = AsOwned)] Cow<'a, [u8]>),
}

/// The meta section of a `Request` or `OneWay` frame: who the message is for and what it is.
/// The message itself is the frame's body.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RequestEnvelope<'a> {
    /// The actor type's registered name.
    #[rkyv(with = AsOwned)]
    pub actor_type: Cow<'a, str>,
    /// The actor's key.
    pub key: WireKey<'a>,
    /// [`WireMessage::WIRE_NAME`] of the body's type.
    #[rkyv(with = AsOwned)]
    pub message_type: Cow<'a, str>,
    /// Time left until the caller gives up, in milliseconds, measured when the frame was
    /// encoded (relative, so clocks need not agree). 0 for tells without deadline.
    pub deadline_ms: u32,
    /// The sender's trace context (W3C `traceparent` parts), when the call is part of a trace;
    /// `None` otherwise. Appended last; validated with the rest of the envelope.
    pub trace: Option<WireTrace>,
}

/// A W3C trace context as it travels in a [`RequestEnvelope`]: the trace id, the id of the
/// sender's span (the parent of the receiving turn) and the flags byte, as in `traceparent`
/// (`00-<trace_id hex>-<span_id hex>-<flags hex>`; ids big-endian).
// Format (archived): { trace_id [u8; 16] | span_id [u8; 8] | flags u8 } (25 bytes, align 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct WireTrace {
    /// The 128-bit trace id, big-endian; never all zeros.
    pub trace_id: [u8; 16],
    /// The parent span id, big-endian; never all zeros.
    pub span_id: [u8; 8],
    /// The W3C flags (bit 0: sampled).
    pub flags: u8,
}

impl WireMessage for RequestEnvelope<'_> {
    const WIRE_NAME: &'static str = "quark.RequestEnvelope";
}

/// Why a remote call failed, as the callee reports it. Travels in an `ErrorReply` frame.
///
/// Each of the engine's call errors has its own code here, so a caller on another node gets
/// the same error it would get locally (see the "Call errors" table in `docs/ARCHITECTURE.md`).
/// New variants are only ever appended (the archived tag of a variant is its position), and a
/// peer that reads a tag it does not know rejects the frame as invalid.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize, thiserror::Error)]
#[rkyv(derive(Debug))]
#[non_exhaustive]
pub enum RemoteError {
    /// The receiving node has no actor type of this name.
    #[error("unknown actor type {actor_type:?}")]
    UnknownActorType {
        /// The name the request carried.
        actor_type: String,
    },
    /// The actor type does not handle a message of this wire name.
    #[error("actor type {actor_type:?} has no handler for message type {message_type:?}")]
    UnknownMessageType {
        /// The actor type.
        actor_type: String,
        /// The wire name the request carried.
        message_type: String,
    },
    /// The body failed validation as the named message type.
    #[error("payload is not a valid {message_type:?}")]
    BadPayload {
        /// The wire name the request carried.
        message_type: String,
    },
    /// The handler panicked; the activation was stopped.
    #[error("the actor panicked while handling the message")]
    ActorPanicked,
    /// The deadline passed on the callee's side.
    #[error("deadline exceeded on the callee")]
    Timeout,
    /// The callee node is stopping and takes no new work.
    #[error("the callee node is shutting down")]
    ShuttingDown,
    /// The callee refused to activate the actor: its shard (or node) is at its memory
    /// reject threshold (the engine's `CallError::Overloaded { cause: Memory }`). Before
    /// protocol v1.2 it meant a full queue (now [`RemoteError::Full`]); builds of this
    /// protocol version that predate the memory refusal read it as a refusal
    /// ("the callee is overloaded").
    #[error("the callee is overloaded")]
    Overloaded,
    /// The call was queued behind one whose handler panicked; it never ran (safe to retry).
    #[error("the activation was discarded after a panic before this call ran")]
    ActivationAborted,
    /// The handler panicked with `message` (the panic's text and, where known, its location);
    /// the activation was stopped. Sent instead of `ActorPanicked` since protocol v1.1 (added
    /// last: the tags of the variants above are unchanged).
    #[error("the actor panicked while handling the message: {message}")]
    Panicked {
        /// The panic message, e.g. `"overdrawn at src/bank.rs:12:9"`.
        message: String,
    },
    // Protocol v1.2: one code per engine call error (appended; tags above unchanged).
    /// The actor's state could not be loaded on the callee; the call had no effect.
    #[error("the actor could not be activated: {detail}")]
    ActivationFailed {
        /// What the callee's loader reported.
        detail: String,
    },
    /// The callee could not reach the node it forwarded the call to.
    #[error("node {node} is unavailable to the callee")]
    NodeUnavailable {
        /// The node the callee could not reach.
        node: u64,
    },
    /// The callee has no wire codec for a message type it needed to send on.
    #[error("message type {message_type} is not registered as a wire message on the callee")]
    NotWireMessage {
        /// The Rust type name.
        message_type: String,
    },
    /// A frame the callee had to send (e.g. the reply) exceeded its `frame_bytes_max`.
    #[error(
        "message {message_type} is {bytes} bytes encoded, over the callee's frame_bytes_max {max}"
    )]
    MessageTooLarge {
        /// Wire name of the message.
        message_type: String,
        /// Encoded frame size.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// The callee could not archive a message it had to send (e.g. the reply).
    #[error("message {message_type} could not be serialized on the callee")]
    NotSerializable {
        /// Wire name of the message.
        message_type: String,
    },
    /// A reply the callee received from a third node failed validation.
    #[error("invalid {message_type} reply from node {node} to the callee")]
    BadReply {
        /// The node that sent the invalid reply.
        node: u64,
        /// Wire name of the request's message type.
        message_type: String,
    },
    /// No room on the callee's way to the actor; the message was not delivered.
    #[error("no room on the callee ({place} full)")]
    Full {
        /// What was full (`"mailbox"`, `"cross-shard credits"`, `"injection queue"`,
        /// `"connection buffer"`).
        place: String,
    },
}

impl WireMessage for RemoteError {
    const WIRE_NAME: &'static str = "quark.RemoteError";
}

/// Appends a `Request` (or, with `kind = OneWay`, a tell) frame: `envelope` archived in the
/// meta section, `msg` archived in the body, both in place in `out`.
///
/// ```
/// use quark_net::*;
/// let mut out = OutBuf::new();
/// #[derive(rkyv::Archive, rkyv::Serialize)]
/// struct Ping { n: u64 }
/// impl WireMessage for Ping { const WIRE_NAME: &'static str = "test.Ping"; }
/// let env = RequestEnvelope::new("counter", WireKey::U64(7), Ping::WIRE_NAME, 500);
/// let head = FrameHead { correlation: 42, ..FrameHead::new(FrameKind::Request) };
/// encode_request(&mut out, head, &env, &Ping { n: 1 }, DEFAULT_FRAME_BYTES_MAX).unwrap();
/// let mut dec = FrameDecoder::new(DEFAULT_FRAME_BYTES_MAX);
/// assert_eq!(dec.feed(out.pending()).unwrap(), out.len());
/// let frame = dec.next_frame().unwrap();
/// let req = decode_request(&frame).unwrap();
/// assert_eq!(req.envelope.message_type.as_str(), "test.Ping");
/// assert_eq!(decode_message::<Ping>(req.body).unwrap().n, 1);
/// ```
pub fn encode_request<M: WireMessage>(
    out: &mut OutBuf,
    head: FrameHead,
    envelope: &RequestEnvelope<'_>,
    msg: &M,
    frame_bytes_max: u32,
) -> Result<u32, EncodeError> {
    debug_assert!(matches!(head.kind, FrameKind::Request | FrameKind::OneWay));
    let mut f = out.begin_frame(head)?;
    f.archive(RequestEnvelope::WIRE_NAME, envelope)?;
    f.end_meta();
    f.archive(M::WIRE_NAME, msg)?;
    f.finish(frame_bytes_max)
}

impl<'a> RequestEnvelope<'a> {
    /// An envelope borrowing its strings (no allocation).
    pub fn new(
        actor_type: &'a str,
        key: WireKey<'a>,
        message_type: &'a str,
        deadline_ms: u32,
    ) -> RequestEnvelope<'a> {
        RequestEnvelope {
            actor_type: Cow::Borrowed(actor_type),
            key,
            message_type: Cow::Borrowed(message_type),
            deadline_ms,
            trace: None,
        }
    }
}

/// A validated `Request`/`OneWay` frame: the envelope, read in place, and the body bytes
/// (16-aligned, not yet validated: the receiver picks the type from `envelope.message_type`
/// and calls [`decode_message`]; if it knows no such type it answers with
/// [`RemoteError::UnknownMessageType`]).
pub struct RequestView<'a> {
    /// Header fields of the frame (reply with `head.reply(..)`).
    pub head: FrameHead,
    /// The envelope, validated.
    pub envelope: &'a ArchivedRequestEnvelope<'static>,
    /// The message archive.
    pub body: &'a [u8],
}

/// Validates a `Request`/`OneWay` frame's envelope.
pub fn decode_request<'a>(frame: &Frame<'a>) -> Result<RequestView<'a>, WireError> {
    let kind = frame.header.head.kind;
    if !matches!(kind, FrameKind::Request | FrameKind::OneWay) {
        return Err(WireError::WrongKind {
            expected: "Request or OneWay",
            found: kind,
        });
    }
    let envelope = decode_message::<RequestEnvelope<'static>>(frame.meta())?;
    Ok(RequestView {
        head: frame.header.head,
        envelope,
        body: frame.body(),
    })
}

/// Appends the `Response` to a request: `reply` archived as the body, empty meta.
/// `request` is the request's head (shards are swapped, the correlation id kept).
pub fn encode_response<R: WireMessage>(
    out: &mut OutBuf,
    request: &FrameHead,
    reply: &R,
    frame_bytes_max: u32,
) -> Result<u32, EncodeError> {
    let mut f = out.begin_frame(request.reply(FrameKind::Response))?;
    f.end_meta();
    f.archive(R::WIRE_NAME, reply)?;
    f.finish(frame_bytes_max)
}

/// Appends the `ErrorReply` to a request: `error` archived as the meta section.
pub fn encode_error_reply(
    out: &mut OutBuf,
    request: &FrameHead,
    error: &RemoteError,
    frame_bytes_max: u32,
) -> Result<u32, EncodeError> {
    encode_message(
        out,
        request.reply(FrameKind::ErrorReply),
        error,
        frame_bytes_max,
    )
}

/// What came back for a request.
#[derive(Debug)]
pub enum ResponseView<'a> {
    /// The reply archive (16-aligned; validate with [`decode_message`] as the expected type).
    Reply(&'a [u8]),
    /// The callee's typed error.
    Error(RemoteError),
}

/// Reads a `Response` or `ErrorReply` frame. The error variant is validated and
/// deserialized (error path only, so the allocation does not matter).
pub fn decode_response<'a>(frame: &Frame<'a>) -> Result<ResponseView<'a>, WireError> {
    match frame.header.head.kind {
        FrameKind::Response => Ok(ResponseView::Reply(frame.body())),
        FrameKind::ErrorReply => {
            let archived = decode_message::<RemoteError>(frame.meta())?;
            let err =
                rkyv::deserialize::<RemoteError, rancor::Error>(archived).map_err(|source| {
                    WireError::Invalid {
                        wire_name: RemoteError::WIRE_NAME,
                        len: frame.meta().len(),
                        source,
                    }
                })?;
            Ok(ResponseView::Error(err))
        }
        found => Err(WireError::WrongKind {
            expected: "Response or ErrorReply",
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameDecoder, DEFAULT_FRAME_BYTES_MAX};

    /// The envelope's trace field survives encode -> validate, `Some` and `None`.
    #[test]
    fn the_trace_context_travels_in_the_request_envelope() {
        let trace = WireTrace {
            trace_id: *b"0123456789abcdef",
            span_id: 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes(),
            flags: 1,
        };
        for t in [Some(trace), None] {
            let mut env = RequestEnvelope::new("counter", WireKey::U64(7), "unit", 500);
            env.trace = t;
            let mut out = OutBuf::new();
            let head = FrameHead::new(FrameKind::Request);
            encode_request(&mut out, head, &env, &(), DEFAULT_FRAME_BYTES_MAX)
                .expect("a small request encodes");
            let mut dec = FrameDecoder::new(DEFAULT_FRAME_BYTES_MAX);
            assert_eq!(dec.feed(out.pending()).expect("a valid frame"), out.len());
            let frame = dec.next_frame().expect("one frame");
            let req = decode_request(&frame).expect("the envelope validates");
            let got = req.envelope.trace.as_ref().map(|w| WireTrace {
                trace_id: w.trace_id,
                span_id: w.span_id,
                flags: w.flags,
            });
            assert_eq!(got, t);
            assert_eq!(req.envelope.deadline_ms.to_native(), 500);
        }
    }
}
