//! The OTLP trace messages the exporter sends (`opentelemetry/proto/collector/trace/v1` and the
//! messages it uses), written with `prost`'s derive: only the fields Quark fills, with the
//! field numbers of the OTLP protobuf definitions (a receiver skips the fields it does not
//! know, and absent fields are their defaults). `docs/OPERATIONS.md` lists what each span
//! carries.

/// `ExportTraceServiceRequest`: the body of `POST /v1/traces`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    /// One per node whose spans are in the batch.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`: the spans of one resource (a node).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    /// The node: `service.name`, `service.instance.id`, `quark.node`.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// One scope (`quark`).
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Its attributes.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `ScopeSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    /// The instrumentation scope (`quark`, the crate version).
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `Span`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    /// 16 bytes, big-endian (as in `traceparent`).
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    /// 8 bytes (Quark's spans always have a parent: the caller's context).
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    /// `quark.call` or `quark.task`.
    #[prost(string, tag = "5")]
    pub name: String,
    /// [`SPAN_KIND_INTERNAL`] or [`SPAN_KIND_SERVER`].
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// Start, ns since the Unix epoch.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// End, ns since the Unix epoch.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// `quark.actor`, `quark.actor_type`, `quark.message`, `quark.shard`, `quark.node`.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// Unset when the handler returned; error (with a message) when it panicked or was
    /// cancelled.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    /// The W3C trace flags (low byte).
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

/// `Span.SpanKind.SPAN_KIND_INTERNAL`: a spawned task.
pub const SPAN_KIND_INTERNAL: i32 = 1;
/// `Span.SpanKind.SPAN_KIND_SERVER`: a turn handling a message.
pub const SPAN_KIND_SERVER: i32 = 2;

/// `Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// Why it failed.
    #[prost(string, tag = "2")]
    pub message: String,
    /// [`STATUS_CODE_UNSET`] or [`STATUS_CODE_ERROR`].
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `Status.StatusCode.STATUS_CODE_UNSET`.
pub const STATUS_CODE_UNSET: i32 = 0;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
pub const STATUS_CODE_ERROR: i32 = 2;

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue` (the string and integer cases).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "any_value::Value", tags = "1, 3")]
    pub value: Option<any_value::Value>,
}

/// `AnyValue`'s `oneof`.
pub mod any_value {
    /// A string or an integer.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `string_value`.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// `int_value`.
        #[prost(int64, tag = "3")]
        IntValue(i64),
    }
}

impl KeyValue {
    /// A string attribute.
    pub fn string(key: &str, v: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    /// An integer attribute.
    pub fn int(key: &str, v: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(v)),
            }),
        }
    }

    /// The string value, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            any_value::Value::IntValue(_) => None,
        }
    }

    /// The integer value, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            any_value::Value::StringValue(_) => None,
        }
    }
}
