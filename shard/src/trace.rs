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
//!
//! **Export.** When the engine is given a [`SpanSink`] ([`crate::EngineConfig::span_sink`]),
//! every traced turn, spawned task and timer tick also produces a [`SpanRecord`] with Quark's
//! own ids (trace id, span id, parent span id: the same as the `quark.call` span's fields), so
//! that an exporter (the `quark` crate's OTLP exporter) ships trees that stay whole across
//! nodes. The sink is asked first whether it wants the trace ([`SpanSink::wants`]; a sampling
//! decision made from the trace id alone, so that every node takes the same one), and a record
//! is built only then. Untraced turns never reach this code.
//!
//! **Inheritance.** A task spawned from a traced turn ([`crate::EngineHandle::spawn_on`]) runs
//! in a child span of the turn (`quark.task`), and the ticks of a timer set in a traced turn
//! ([`crate::Context::set_timer`], [`crate::Context::set_interval`]) run as turns whose parent
//! is the turn that set the timer.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// The record to export when the future ends (a traced turn or task, with a sink that
    /// wants its trace); boxed: `None` costs one pointer.
    record: Option<Box<SpanRecord>>,
}

impl<F: Future> Future for WithTrace<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned (never moved out); the other fields are not
        // pinned and are only read or taken.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        if this.ctx.is_none() && this.span.is_none() {
            // An untraced spawned task: polled by the scheduler, never inside a turn, so no
            // context is current to clear (this keeps untraced tasks at their old cost).
            return inner.poll(cx);
        }
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        // A handler that panics unwinds through here: the guard exports the span as failed.
        let guard = PanicGuard(&mut this.record);
        let r = scoped(this.ctx, || inner.poll(cx));
        drop(guard);
        if r.is_ready() {
            if let Some(rec) = this.record.take() {
                finish(rec, SpanStatus::Ok);
            }
        }
        r
    }
}

impl<F> Drop for WithTrace<F> {
    fn drop(&mut self) {
        // Dropped before it completed: the turn or task was cancelled (shutdown, deactivation
        // of a spawned task's shard).
        if let Some(rec) = self.record.take() {
            finish(rec, SpanStatus::Cancelled);
        }
    }
}

/// Exports the pending record as [`SpanStatus::Panicked`] if dropped during an unwind.
struct PanicGuard<'a>(&'a mut Option<Box<SpanRecord>>);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(rec) = self.0.take() {
                finish(rec, SpanStatus::Panicked);
            }
        }
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
            record: None,
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
        record: None,
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
    let record = pending(
        SpanKind::Call,
        &ctx,
        parent,
        Some(actor),
        message,
        shard,
        node,
    );
    WithTrace {
        inner,
        ctx: Some(ctx),
        span: Some(span),
        record,
    }
}

/// The future of a task spawned on behalf of a traced turn (`parent` is the turn's context):
/// a child context with a new span id is current while it runs, inside a `quark.task` span.
/// With no parent, the task runs untraced (only the current context is cleared while it
/// runs, as for any spawned task).
pub(crate) fn task<F: Future>(
    parent: Option<TraceContext>,
    shard: crate::ShardId,
    node: Option<quark_placement::NodeId>,
    inner: F,
) -> WithTrace<F> {
    let Some(parent) = parent else {
        return carry(None, inner);
    };
    let ctx = parent.child(new_span_id());
    let span = tracing::info_span!(
        "quark.task",
        trace_id = %format_args!("{:032x}", ctx.trace_id()),
        span_id = %format_args!("{:016x}", ctx.span_id()),
        parent_span_id = %format_args!("{:016x}", parent.span_id()),
        shard,
        node,
    );
    let record = pending(SpanKind::Task, &ctx, parent, None, "spawn_on", shard, node);
    WithTrace {
        inner,
        ctx: Some(ctx),
        span: Some(span),
        record,
    }
}

/// What a [`SpanRecord`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanKind {
    /// A turn of an actor (a message handled; a timer tick is one too): `quark.call`.
    Call,
    /// A task spawned from a traced turn with [`crate::EngineHandle::spawn_on`]: `quark.task`.
    Task,
}

impl SpanKind {
    /// The span's name (`quark.call`, `quark.task`), as in the logs.
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Call => "quark.call",
            SpanKind::Task => "quark.task",
        }
    }
}

/// How a span ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanStatus {
    /// The handler (or task) returned.
    Ok,
    /// The handler panicked (the activation ended; an ask got `CallError::Panicked`).
    Panicked,
    /// The turn or task was dropped before it finished (shutdown).
    Cancelled,
}

/// One finished span, with Quark's own ids: handed to the engine's [`SpanSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRecord {
    /// `quark.call` or `quark.task`.
    pub kind: SpanKind,
    /// The trace id shared by every span of the request.
    pub trace_id: u128,
    /// This span's id (the `span_id` field of the `quark.call` span and of
    /// [`crate::Context::trace`] in the handler).
    pub span_id: u64,
    /// The span that caused this one: the sending turn, the caller's context given with
    /// [`TraceFutureExt::with_trace`], the turn that spawned the task or set the timer.
    pub parent_span_id: u64,
    /// The W3C flags of the trace.
    pub flags: u8,
    /// The actor (`type/key`) whose turn this is; `None` for a task.
    pub actor: Option<String>,
    /// The message type handled (its Rust type name); `"spawn_on"` for a task.
    pub message: &'static str,
    /// The shard it ran on.
    pub shard: crate::ShardId,
    /// The node it ran on (`None`: a standalone engine).
    pub node: Option<quark_placement::NodeId>,
    /// When the turn was started (handed its message), ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// When it ended, ns since the Unix epoch.
    pub end_unix_ns: u64,
    /// How it ended.
    pub status: SpanStatus,
}

/// Where a node's finished spans go (an exporter). Called on shard threads: both methods must
/// be cheap and never block (queue the record, drop it when the queue is full).
pub trait SpanSink: Send + Sync + 'static {
    /// Whether spans of this trace are wanted (sampling). Must depend on the trace id alone,
    /// so that every node of a cluster keeps or drops the same traces whole.
    fn wants(&self, trace_id: u128) -> bool;
    /// Takes one finished span.
    fn record(&self, span: SpanRecord);
}

/// A [`SpanSink`] in the engine's config (a cloneable handle; `Debug` names no internals).
#[derive(Clone)]
pub struct SpanSinkHandle(pub Arc<dyn SpanSink>);

impl fmt::Debug for SpanSinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpanSinkHandle(..)")
    }
}

thread_local! {
    /// The engine's span sink, set on each shard thread when it starts.
    static SINK: RefCell<Option<Arc<dyn SpanSink>>> = const { RefCell::new(None) };
}

/// Makes `sink` the span sink of the calling (shard) thread.
pub(crate) fn set_thread_sink(sink: Option<SpanSinkHandle>) {
    SINK.with(|s| *s.borrow_mut() = sink.map(|h| h.0));
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The record of a span that starts now, if this thread has a sink that wants its trace (and
/// the trace is sampled by its W3C flag).
fn pending(
    kind: SpanKind,
    ctx: &TraceContext,
    parent: TraceContext,
    actor: Option<&quark_placement::ActorId>,
    message: &'static str,
    shard: crate::ShardId,
    node: Option<quark_placement::NodeId>,
) -> Option<Box<SpanRecord>> {
    if !ctx.sampled() {
        return None;
    }
    SINK.with(|s| {
        let s = s.borrow();
        let sink = s.as_ref()?;
        sink.wants(ctx.trace_id()).then(|| {
            let start = unix_ns();
            Box::new(SpanRecord {
                kind,
                trace_id: ctx.trace_id(),
                span_id: ctx.span_id(),
                parent_span_id: parent.span_id(),
                flags: ctx.flags(),
                actor: actor.map(ToString::to_string),
                message,
                shard,
                node,
                start_unix_ns: start,
                end_unix_ns: start,
                status: SpanStatus::Ok,
            })
        })
    })
}

/// Ends a record now and hands it to the thread's sink.
fn finish(mut rec: Box<SpanRecord>, status: SpanStatus) {
    rec.end_unix_ns = unix_ns().max(rec.start_unix_ns);
    rec.status = status;
    // `try_with`: a task dropped while the thread's locals are being destroyed exports
    // nothing rather than panicking.
    let _ = SINK.try_with(|s| {
        if let Some(sink) = s.borrow().as_ref() {
            sink.record(*rec);
        }
    });
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
