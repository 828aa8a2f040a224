//! An OTLP/HTTP trace exporter with Quark's own span ids.
//!
//! The engine hands every finished span of a traced turn or task to a [`quark_shard::SpanSink`]
//! ([`quark_shard::SpanRecord`]: trace id, span id, parent span id, actor, message, shard,
//! node, start, end, status). The ids are the ones carried in the envelopes and frames, so the
//! spans that several nodes export for one request form one tree at the collector.
//!
//! [`OtlpExporter::start`] starts one background thread per node. The sink a shard calls only
//! `try_send`s into a bounded queue ([`OtlpConfig::queue_spans_max`]): when the queue is full
//! the span is dropped and counted ([`OtlpStats::spans_dropped_queue_full`]); a shard never
//! waits for the exporter. The thread sends a batch as `POST <endpoint>` (protobuf,
//! `Content-Type: application/x-protobuf`) when it holds [`OtlpConfig::batch_spans_max`] spans
//! or [`OtlpConfig::flush_interval`] after the first span of the batch arrived. A batch the
//! collector refuses, or that cannot be sent within [`OtlpConfig::export_timeout`], is dropped
//! and counted ([`OtlpStats::spans_failed`]); there is no retry (the next batch is tried
//! afresh). Only `http://` endpoints are supported (no TLS: run a local collector or agent).
//!
//! Sampling ([`OtlpConfig::sample_ratio`]) is decided from the trace id alone (its low 64
//! bits against the ratio), so that every node of a cluster keeps or drops the same traces,
//! whole; a trace whose W3C `sampled` flag is off is never exported.

pub mod proto;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use quark_shard::{SpanKind, SpanRecord, SpanSink, SpanSinkHandle, SpanStatus};

/// The exporter's settings (`[observability]` in `quark.toml`; see `docs/CONFIG.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Where spans are sent.
    pub endpoint: OtlpEndpoint,
    /// The most spans in one request.
    pub batch_spans_max: usize,
    /// The longest a span waits in a partial batch.
    pub flush_interval: Duration,
    /// The fraction of traces exported, 0.0 to 1.0.
    pub sample_ratio: f64,
    /// Spans waiting to be sent, at most (beyond: dropped and counted).
    pub queue_spans_max: usize,
    /// Deadline of one request (connect, write, read of the response head).
    pub export_timeout: Duration,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpConfig {
    /// The defaults, sending to `endpoint`: batches of at most 512 spans, flushed every
    /// second, every trace exported, a queue of 8192 spans, a 5 s request deadline,
    /// `service.name = "quark"`.
    pub fn new(endpoint: OtlpEndpoint) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            batch_spans_max: 512,
            flush_interval: Duration::from_secs(1),
            sample_ratio: 1.0,
            queue_spans_max: 8192,
            export_timeout: Duration::from_secs(5),
            service_name: "quark".to_owned(),
        }
    }
}

/// An OTLP/HTTP endpoint: `http://host:port[/path]` (the path defaults to `/v1/traces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    host: String,
    port: u16,
    path: String,
}

/// Why an endpoint URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not `http://`: TLS is not supported.
    #[error("OTLP endpoint {url:?}: only http:// is supported (run a local collector for TLS)")]
    Scheme {
        /// The URL given.
        url: String,
    },
    /// No host, or a port that is not a number from 1 to 65535.
    #[error("OTLP endpoint {url:?}: expected http://host:port[/path]")]
    Malformed {
        /// The URL given.
        url: String,
    },
}

impl OtlpEndpoint {
    /// Parses `http://host:port[/path]` (port 4318, the OTLP/HTTP default, when left out).
    pub fn parse(url: &str) -> Result<OtlpEndpoint, EndpointError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| EndpointError::Scheme {
                url: url.to_owned(),
            })?;
        let malformed = || EndpointError::Malformed {
            url: url.to_owned(),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| malformed())?)
            }
            _ => (authority, 4318),
        };
        if host.is_empty() || port == 0 || path.contains(char::is_whitespace) {
            return Err(malformed());
        }
        let path = if path.is_empty() || path == "/" {
            "/v1/traces".to_owned()
        } else {
            path.to_owned()
        };
        Ok(OtlpEndpoint {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The URL (`http://host:port/path`).
    pub fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

impl std::fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// The exporter's counters (since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpStats {
    /// Spans taken into the queue.
    pub spans_queued: u64,
    /// Spans dropped because the queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans the collector accepted (a 2xx answer).
    pub spans_exported: u64,
    /// Spans of batches that failed (no connection, an error status, a timeout).
    pub spans_failed: u64,
    /// Requests that got a 2xx answer.
    pub batches_exported: u64,
    /// Requests that failed.
    pub batches_failed: u64,
}

#[derive(Default)]
struct Counters {
    spans_queued: AtomicU64,
    spans_dropped_queue_full: AtomicU64,
    spans_exported: AtomicU64,
    spans_failed: AtomicU64,
    batches_exported: AtomicU64,
    batches_failed: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        // Relaxed: independent counters, read only for reporting.
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> OtlpStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OtlpStats {
            spans_queued: g(&self.spans_queued),
            spans_dropped_queue_full: g(&self.spans_dropped_queue_full),
            spans_exported: g(&self.spans_exported),
            spans_failed: g(&self.spans_failed),
            batches_exported: g(&self.batches_exported),
            batches_failed: g(&self.batches_failed),
        }
    }
}

enum Item {
    Span(SpanRecord),
    /// Send what is queued now, then answer.
    Flush(SyncSender<()>),
    /// Send what is queued, then end the thread.
    Stop,
}

/// The sink the shards call: a bounded queue in front of the exporter thread.
struct QueueSink {
    tx: SyncSender<Item>,
    counters: Arc<Counters>,
    /// Traces whose low 64 id bits are below this are kept (`u64::MAX` and `keep_all`: all).
    threshold: u64,
    keep_all: bool,
}

impl SpanSink for QueueSink {
    fn wants(&self, trace_id: u128) -> bool {
        self.keep_all || (trace_id as u64) < self.threshold
    }

    fn record(&self, span: SpanRecord) {
        match self.tx.try_send(Item::Span(span)) {
            Ok(()) => Counters::add(&self.counters.spans_queued, 1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Counters::add(&self.counters.spans_dropped_queue_full, 1)
            }
        }
    }
}

/// A handle that reads an exporter's counters (for the admin endpoint).
#[derive(Clone)]
pub struct OtlpStatsHandle(Arc<Counters>);

impl OtlpStatsHandle {
    /// The counters now.
    pub fn get(&self) -> OtlpStats {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for OtlpStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpStartError {
    /// A setting is out of range.
    #[error("OTLP exporter: {what}")]
    Config {
        /// Which setting, and what it must be.
        what: &'static str,
    },
    /// The exporter thread could not be started.
    #[error("OTLP exporter: starting its thread failed")]
    Thread(#[source] std::io::Error),
}

/// A running exporter (see the module docs). Stopping it (or dropping it) sends what is
/// queued, then joins its thread.
pub struct OtlpExporter {
    tx: SyncSender<Item>,
    counters: Arc<Counters>,
    sink: SpanSinkHandle,
    thread: Option<JoinHandle<()>>,
}

impl OtlpExporter {
    /// Starts the exporter thread.
    pub fn start(config: OtlpConfig) -> Result<OtlpExporter, OtlpStartError> {
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(OtlpStartError::Config {
                what: "sample_ratio must be from 0.0 to 1.0",
            });
        }
        if config.batch_spans_max == 0 || config.queue_spans_max == 0 {
            return Err(OtlpStartError::Config {
                what: "batch_spans_max and queue_spans_max must be at least 1",
            });
        }
        let (tx, rx) = mpsc::sync_channel(config.queue_spans_max);
        let counters = Arc::new(Counters::default());
        let sink = QueueSink {
            tx: tx.clone(),
            counters: counters.clone(),
            // Exact at the ends: 0.0 keeps nothing, 1.0 everything.
            threshold: (config.sample_ratio * u64::MAX as f64) as u64,
            keep_all: config.sample_ratio >= 1.0,
        };
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("quark-otlp".into())
            .spawn(move || run(config, rx, &c))
            .map_err(OtlpStartError::Thread)?;
        Ok(OtlpExporter {
            tx,
            counters,
            sink: SpanSinkHandle(Arc::new(sink)),
            thread: Some(thread),
        })
    }

    /// The sink to give the engine ([`quark_shard::EngineConfig::span_sink`]).
    pub fn sink(&self) -> SpanSinkHandle {
        self.sink.clone()
    }

    /// A handle reading the counters from elsewhere.
    pub fn stats_handle(&self) -> OtlpStatsHandle {
        OtlpStatsHandle(self.counters.clone())
    }

    /// The counters.
    pub fn stats(&self) -> OtlpStats {
        self.counters.snapshot()
    }

    /// Sends every span queued before this call, and returns when that request ended (or
    /// the exporter thread is gone). For tests and for a clean shutdown.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.send(Item::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }

    /// Sends what is queued and stops the thread.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            // `send` waits for room; the thread empties the queue, so this is bounded by one
            // request's deadline per batch queued.
            let _ = self.tx.send(Item::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The exporter thread: batches, sends, counts.
fn run(config: OtlpConfig, rx: Receiver<Item>, counters: &Counters) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(config.batch_spans_max.min(4096));
    // When the current batch must go (set when its first span arrives).
    let mut due: Option<Instant> = None;
    loop {
        let item = match due {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Item::Stop),
            },
            None => Some(rx.recv().unwrap_or(Item::Stop)),
        };
        match item {
            Some(Item::Span(s)) => {
                batch.push(s);
                due.get_or_insert_with(|| Instant::now() + config.flush_interval);
                if batch.len() < config.batch_spans_max {
                    continue;
                }
            }
            None => {}
            Some(Item::Flush(ack)) => {
                drain_into(&rx, &mut batch, &config, counters);
                send_batch(&config, &mut batch, counters);
                due = None;
                let _ = ack.send(());
                continue;
            }
            Some(Item::Stop) => {
                drain_into(&rx, &mut batch, &config, counters);
                send_batch(&config, &mut batch, counters);
                return;
            }
        }
        send_batch(&config, &mut batch, counters);
        due = None;
    }
}

/// Moves every span queued now into `batch`, sending full batches on the way.
fn drain_into(
    rx: &Receiver<Item>,
    batch: &mut Vec<SpanRecord>,
    config: &OtlpConfig,
    counters: &Counters,
) {
    while let Ok(item) = rx.try_recv() {
        match item {
            Item::Span(s) => batch.push(s),
            Item::Flush(ack) => {
                let _ = ack.send(());
            }
            Item::Stop => {}
        }
        if batch.len() >= config.batch_spans_max {
            send_batch(config, batch, counters);
        }
    }
}

fn send_batch(config: &OtlpConfig, batch: &mut Vec<SpanRecord>, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let body = encode(batch, &config.service_name).encode_to_vec();
    batch.clear();
    match post(&config.endpoint, &body, config.export_timeout) {
        Ok(()) => {
            Counters::add(&counters.spans_exported, n);
            Counters::add(&counters.batches_exported, 1);
        }
        Err(e) => {
            Counters::add(&counters.spans_failed, n);
            Counters::add(&counters.batches_failed, 1);
            tracing::warn!(endpoint = %config.endpoint, spans = n,
                error = %quark_shard::ErrorChain(&e), "OTLP export failed; the batch is dropped");
        }
    }
}

/// The request body for `spans`: one `ResourceSpans` per node.
pub fn encode(spans: &[SpanRecord], service_name: &str) -> proto::ExportTraceServiceRequest {
    let mut by_node: Vec<(Option<u64>, Vec<proto::Span>)> = Vec::new();
    for s in spans {
        let span = to_proto(s);
        match by_node.iter_mut().find(|(n, _)| *n == s.node) {
            Some((_, v)) => v.push(span),
            None => by_node.push((s.node, vec![span])),
        }
    }
    let resource_spans = by_node
        .into_iter()
        .map(|(node, spans)| {
            let mut attributes = vec![proto::KeyValue::string("service.name", service_name)];
            if let Some(n) = node {
                attributes.push(proto::KeyValue::string(
                    "service.instance.id",
                    format!("node-{n}"),
                ));
                attributes.push(proto::KeyValue::int("quark.node", n as i64));
            }
            proto::ResourceSpans {
                resource: Some(proto::Resource { attributes }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "quark".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    }),
                    spans,
                }],
            }
        })
        .collect();
    proto::ExportTraceServiceRequest { resource_spans }
}

fn to_proto(s: &SpanRecord) -> proto::Span {
    let mut attributes = Vec::with_capacity(5);
    if let Some(a) = &s.actor {
        attributes.push(proto::KeyValue::string("quark.actor", a.as_str()));
        if let Some((ty, _)) = a.split_once('/') {
            attributes.push(proto::KeyValue::string("quark.actor_type", ty));
        }
    }
    attributes.push(proto::KeyValue::string("quark.message", s.message));
    attributes.push(proto::KeyValue::int("quark.shard", i64::from(s.shard)));
    if let Some(n) = s.node {
        attributes.push(proto::KeyValue::int("quark.node", n as i64));
    }
    let status = match s.status {
        SpanStatus::Ok => None,
        other => Some(proto::Status {
            message: match other {
                SpanStatus::Panicked => "the handler panicked",
                _ => "cancelled before it finished",
            }
            .to_owned(),
            code: proto::STATUS_CODE_ERROR,
        }),
    };
    proto::Span {
        trace_id: s.trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        parent_span_id: s.parent_span_id.to_be_bytes().to_vec(),
        name: s.kind.name().to_owned(),
        kind: match s.kind {
            SpanKind::Call => proto::SPAN_KIND_SERVER,
            _ => proto::SPAN_KIND_INTERNAL,
        },
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes,
        status,
        flags: u32::from(s.flags),
    }
}

/// Why one export request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The endpoint's name did not resolve, or no address accepted a connection.
    #[error("connecting to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed (or timed out).
    #[error("sending to {endpoint}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The collector answered with a status other than 2xx.
    #[error("{endpoint} answered HTTP {status}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
    },
    /// The answer was not an HTTP/1.x response.
    #[error("{endpoint} sent something that is not an HTTP response")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
    },
}

// Format: an HTTP/1.1 request, one per connection:
// `POST <path> HTTP/1.1\r\nHost: <host>:<port>\r\nContent-Type: application/x-protobuf\r\n
//  Content-Length: <n>\r\nConnection: close\r\n\r\n<n bytes of ExportTraceServiceRequest>`.
fn post(ep: &OtlpEndpoint, body: &[u8], timeout: Duration) -> Result<(), ExportError> {
    let endpoint = || ep.url();
    let addrs = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|source| ExportError::Connect {
            endpoint: endpoint(),
            source,
        })?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| ExportError::Connect {
        endpoint: endpoint(),
        source: last,
    })?;
    let io = |source| ExportError::Io {
        endpoint: endpoint(),
        source,
    };
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.host,
        ep.port,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    s.flush().map_err(io)?;
    // The status line is all that is read ("HTTP/1.1 200 ...").
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| ExportError::BadResponse {
            endpoint: endpoint(),
        })?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ExportError::Status {
            endpoint: endpoint(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_the_default_path_and_port() {
        let e = OtlpEndpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:4318/v1/traces");
        let e = OtlpEndpoint::parse("http://collector/custom/path").unwrap();
        assert_eq!(e.url(), "http://collector:4318/custom/path");
        assert!(matches!(
            OtlpEndpoint::parse("https://collector:4318"),
            Err(EndpointError::Scheme { .. })
        ));
        for bad in [
            "http://",
            "http://:4318",
            "http://h:0",
            "http://h:x/v1",
            "http://h:1/a b",
        ] {
            assert!(
                matches!(
                    OtlpEndpoint::parse(bad),
                    Err(EndpointError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn sampling_keeps_the_ratio_of_trace_ids_and_decides_by_id_alone() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let sink = |ratio: f64| QueueSink {
            tx: tx.clone(),
            counters: Arc::default(),
            threshold: (ratio * u64::MAX as f64) as u64,
            keep_all: ratio >= 1.0,
        };
        let none = sink(0.0);
        let all = sink(1.0);
        let quarter = sink(0.25);
        let ids: Vec<u128> = (0..4000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        assert!(ids.iter().all(|&i| all.wants(i) && !none.wants(i)));
        let kept = ids.iter().filter(|&&i| quarter.wants(i)).count();
        assert!((800..1200).contains(&kept), "{kept} of 4000 kept at 0.25");
        assert_eq!(
            ids.iter().map(|&i| quarter.wants(i)).collect::<Vec<_>>(),
            ids.iter().map(|&i| sink(0.25).wants(i)).collect::<Vec<_>>(),
            "the same decision on every node"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = mpsc::sync_channel(2);
        let counters = Arc::new(Counters::default());
        let sink = QueueSink {
            tx,
            counters: counters.clone(),
            threshold: u64::MAX,
            keep_all: true,
        };
        let rec = SpanRecord {
            kind: SpanKind::Call,
            trace_id: 1,
            span_id: 2,
            parent_span_id: 3,
            flags: 1,
            actor: Some("t/1".into()),
            message: "M",
            shard: 0,
            node: None,
            start_unix_ns: 1,
            end_unix_ns: 2,
            status: SpanStatus::Ok,
        };
        for _ in 0..5 {
            sink.record(rec.clone());
        }
        let s = counters.snapshot();
        assert_eq!((s.spans_queued, s.spans_dropped_queue_full), (2, 3));
    }
}
