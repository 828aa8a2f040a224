//! Trace contexts: a W3C `traceparent`-compatible correlation id that follows one request
//! through turns on several shards and nodes.
//!
//! A [`TraceContext`] is a 128-bit trace id, the 64-bit id of the span that is the parent of
//! whatever it is attached to, and the W3C flags byte. It travels in the cross-shard envelope
//! and in the remote request frame. The *current* trace context of a thread is the one of the
//! turn being polled there (or of a future wrapped with [`TraceFutureExt::with_trace`]); every
//! message sent while it is set carries it. The receiving turn runs in a `tracing` span named
//! `quark.call` (fields: `actor`, `message`, `trace_id`, `span_id`, `parent_span_id`, `shard`,
//! `node`) with a fresh span id, and that becomes the current context while it runs.
//!
//! A message sent with no current trace carries `None`: the hot path then pays a thread-local
//! read and a null pointer in the envelope (the envelope holds an `Option<Box<TraceContext>>`;
//! a traced message pays one small allocation), nothing more.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll};

/// A W3C trace context: trace id, parent span id and flags.
///
/// Formatted (`Display`) and parsed (`FromStr`, [`TraceContext::parse`]) as a `traceparent`
/// header value of version `00`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
///
/// ```
/// use quark_shard::TraceContext;
/// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let ctx = TraceContext::parse(tp).unwrap();
/// assert!(ctx.sampled());
/// assert_eq!(ctx.to_string(), tp);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The `sampled` bit of the W3C flags byte.
const FLAG_SAMPLED: u8 = 0x01;

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParseError {
    /// The value is not `2-32-16-2` hex digits separated by `-` (version 00 has exactly 55
    /// characters).
    #[error("traceparent {value:?} is not of the form 00-<32 hex>-<16 hex>-<2 hex>")]
    Malformed {
        /// The value given (cut to 64 characters).
        value: String,
    },
    /// A version this implementation does not read (`ff` is invalid by the W3C spec; other
    /// versions than `00` are not read).
    #[error("traceparent version {version:?} is not supported (only \"00\")")]
    Version {
        /// The two-character version field.
        version: String,
    },
    /// The trace id or the parent span id is all zeros (invalid by the W3C spec).
    #[error("traceparent {value:?} has an all-zero trace id or span id")]
    ZeroId {
        /// The value given.
        value: String,
    },
}

impl TraceContext {
    /// A context from its parts. `None` if an id is all zeros (invalid in W3C trace context).
    pub fn from_parts(trace_id: u128, span_id: u64, flags: u8) -> Option<TraceContext> {
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id: trace_id.to_be_bytes(),
            span_id: span_id.to_be_bytes(),
            flags,
        })
    }

    /// A new trace (random trace id and span id, sampled): for a request that enters the
    /// system without a `traceparent`.
    pub fn new_root() -> TraceContext {
        let trace_id = nonzero(rand::random::<u128>);
        TraceContext {
            trace_id: trace_id.to_be_bytes(),
            span_id: new_span_id().to_be_bytes(),
            flags: FLAG_SAMPLED,
        }
    }

    /// Parses a `traceparent` header value (version `00`; surrounding whitespace allowed).
    pub fn parse(value: &str) -> Result<TraceContext, TraceParseError> {
        let v = value.trim();
        let malformed = || TraceParseError::Malformed {
            value: v.chars().take(64).collect(),
        };
        let parts: Vec<&str> = v.split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return Err(malformed());
        };
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return Err(malformed());
        }
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ![version, trace, span, flags].into_iter().all(hex) {
            return Err(malformed());
        }
        if version != "00" {
            return Err(TraceParseError::Version {
                version: version.to_owned(),
            });
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| malformed())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| malformed())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| malformed())?;
        TraceContext::from_parts(trace_id, span_id, flags).ok_or_else(|| TraceParseError::ZeroId {
            value: v.to_owned(),
        })
    }

    /// The 128-bit trace id, shared by every hop of one request.
    pub fn trace_id(&self) -> u128 {
        u128::from_be_bytes(self.trace_id)
    }

    /// The span id: of the span that is the parent of what this context is attached to (the
    /// sender's turn, for a message; the running turn, for [`crate::Context::trace`]).
    pub fn span_id(&self) -> u64 {
        u64::from_be_bytes(self.span_id)
    }

    /// The W3C flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The same trace, with `span_id` as the parent (a child span of this context).
    pub(crate) fn child(&self, span_id: u64) -> TraceContext {
        TraceContext {
            span_id: span_id.to_be_bytes(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits (the `trace_id` log field).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id())
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id())
    }
}

/// The context as it travels in a remote request frame.
pub(crate) fn to_wire(c: TraceContext) -> quark_net::WireTrace {
    quark_net::WireTrace {
        trace_id: c.trace_id,
        span_id: c.span_id,
        flags: c.flags,
    }
}

/// The context a remote request frame carried; `None` if an id is all zeros (ignored, as W3C
/// says of an invalid `traceparent`).
pub(crate) fn from_wire(w: &quark_net::ArchivedWireTrace) -> Option<TraceContext> {
    let c = TraceContext {
        trace_id: w.trace_id,
        span_id: w.span_id,
        flags: w.flags,
    };
    (c.trace_id != [0; 16] && c.span_id != [0; 8]).then_some(c)
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

impl FromStr for TraceContext {
    type Err = TraceParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceContext::parse(s)
    }
}

fn nonzero<T: PartialEq + Default>(mut gen: impl FnMut() -> T) -> T {
    loop {
        let v = gen();
        if v != T::default() {
            return v;
        }
    }
}

/// A fresh, non-zero span id.
pub(crate) fn new_span_id() -> u64 {
    nonzero(rand::random::<u64>)
}

thread_local! {
    /// The trace context of what is being polled on this thread (a traced turn, or a future
    /// wrapped by `with_trace`); `None` otherwise.
    static CURRENT: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// The trace context current on this thread: inside a traced turn, that turn's context (its
/// own span id); inside a future wrapped with [`TraceFutureExt::with_trace`], the context
/// given. A message sent now carries it.
#[inline]
pub fn current() -> Option<TraceContext> {
    CURRENT.with(Cell::get)
}

/// Whether a trace context is current on this thread.
#[inline]
pub(crate) fn is_traced() -> bool {
    CURRENT.with(|c| c.get().is_some())
}

/// The current trace context, boxed for an envelope (no allocation when there is none).
#[inline]
pub(crate) fn current_boxed() -> Option<Box<TraceContext>> {
    CURRENT.with(|c| c.get().map(Box::new))
}

/// Runs `f` with `ctx` as the current trace context, restoring the previous one after (also
/// on unwind).
pub(crate) fn scoped<R>(ctx: Option<TraceContext>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TraceContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(ctx)));
    f()
}

/// A future run with a trace context current while it is polled: see
/// [`TraceFutureExt::with_trace`].
#[must_use = "futures do nothing unless awaited"]
pub struct WithTrace<F> {
    inner: F,
    ctx: Option<TraceContext>,
    span: Option<tracing::Span>,
}

impl<F: Future> Future for WithTrace<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned (never moved out); the other fields are not
        // pinned and are only read.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        scoped(this.ctx, || inner.poll(cx))
    }
}

/// Runs a future (an `ask`, a `tell`, a task) within a trace.
pub trait TraceFutureExt: Future + Sized {
    /// Makes `ctx` the current trace context while this future is polled: every message it
    /// sends carries `ctx`, so the receiving turns are children of `ctx`'s span. Use it to
    /// continue an incoming request's trace:
    ///
    /// ```no_run
    /// # use quark_shard::{Actor, ActorRef, Context, Handler, Message, TraceContext, TraceFutureExt};
    /// # struct Counter; impl Actor for Counter { const TYPE_NAME: &'static str = "c"; }
    /// # struct Get; impl Message for Get { type Reply = u64; }
    /// # impl Handler<Get> for Counter { async fn handle(&mut self, _: Get, _: &Context<Self>) -> u64 { 0 } }
    /// # async fn demo(counter: ActorRef<Counter>, header: &str) {
    /// // `header` is the incoming HTTP request's `traceparent`.
    /// let ctx = TraceContext::parse(header).unwrap_or_else(|_| TraceContext::new_root());
    /// let n = counter.ask(Get).with_trace(ctx).await;
    /// # }
    /// ```
    fn with_trace(self, ctx: TraceContext) -> WithTrace<Self> {
        WithTrace {
            inner: self,
            ctx: Some(ctx),
            span: None,
        }
    }
}

impl<F: Future> TraceFutureExt for F {}

/// Wraps a future so that `ctx` (possibly `None`) is current while it is polled; used to carry
/// the caller's context into a task spawned on its behalf.
pub(crate) fn carry<F: Future>(ctx: Option<TraceContext>, inner: F) -> WithTrace<F> {
    WithTrace {
        inner,
        ctx,
        span: None,
    }
}

/// The future of a traced turn: a child context of `parent` with a new span id is current
/// while the handler runs, inside a `quark.call` span.
pub(crate) fn turn<F: Future>(
    parent: TraceContext,
    actor: &quark_placement::ActorId,
    message: &'static str,
    shard: crate::ShardId,
    node: Option<quark_placement::NodeId>,
    inner: F,
) -> WithTrace<F> {
    let ctx = parent.child(new_span_id());
    let span = tracing::info_span!(
        "quark.call",
        actor = %actor,
        message,
        trace_id = %format_args!("{:032x}", ctx.trace_id()),
        span_id = %format_args!("{:016x}", ctx.span_id()),
        parent_span_id = %format_args!("{:016x}", parent.span_id()),
        shard,
        node,
    );
    WithTrace {
        inner,
        ctx: Some(ctx),
        span: Some(span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(tp).expect("the W3C example parses");
        assert_eq!(ctx.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.span_id(), 0x00f067aa0ba902b7);
        assert_eq!(ctx.flags(), 1);
        assert_eq!(ctx.to_string(), tp);
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.to_string()), Ok(root));
    }

    #[test]
    fn bad_traceparents_are_refused_naming_why() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for v in bad {
            assert!(
                matches!(
                    TraceContext::parse(v),
                    Err(TraceParseError::Malformed { .. })
                ),
                "{v:?} must be malformed"
            );
        }
        assert!(matches!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Err(TraceParseError::Version { .. })
        ));
        assert!(matches!(
            TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Err(TraceParseError::ZeroId { .. })
        ));
        assert!(matches!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Err(TraceParseError::ZeroId { .. })
        ));
    }

    #[test]
    fn scoped_restores_the_previous_context() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_eq!(current(), None);
        scoped(Some(a), || {
            assert_eq!(current(), Some(a));
            scoped(Some(b), || assert_eq!(current(), Some(b)));
            assert_eq!(current(), Some(a));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn the_context_is_26_bytes_and_the_envelope_field_one_pointer() {
        assert_eq!(std::mem::size_of::<Option<TraceContext>>(), 26);
        assert_eq!(std::mem::align_of::<Option<TraceContext>>(), 1);
        assert_eq!(std::mem::size_of::<Option<Box<TraceContext>>>(), 8);
    }
}
