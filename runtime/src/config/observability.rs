//! The `[observability]` section: the OTLP trace exporter's knobs (see `docs/CONFIG.md`).

use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Int};
use crate::otlp::{OtlpConfig, OtlpEndpoint};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObservability {
    otlp_endpoint: Option<String>,
    otlp_batch_spans_max: Option<Int>,
    otlp_flush_interval_ms: Option<Int>,
    otlp_queue_spans_max: Option<Int>,
    otlp_export_timeout_ms: Option<Int>,
    otlp_sample_ratio: Option<f64>,
    otlp_service_name: Option<String>,
}

/// The `[observability]` settings.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ObservabilityConfig {
    /// The OTLP trace exporter (`otlp_*` keys); `None` (no `otlp_endpoint`): traces go only
    /// to the logs.
    pub otlp: Option<OtlpConfig>,
}

pub(super) fn observability_section(
    r: RawObservability,
    check: &Check<'_>,
) -> Result<ObservabilityConfig, ConfigError> {
    let Some(url) = r.otlp_endpoint else {
        let other_key = [
            r.otlp_batch_spans_max.is_some(),
            r.otlp_flush_interval_ms.is_some(),
            r.otlp_queue_spans_max.is_some(),
            r.otlp_export_timeout_ms.is_some(),
            r.otlp_sample_ratio.is_some(),
            r.otlp_service_name.is_some(),
        ];
        if other_key.contains(&true) {
            return Err(check.invalid(
                "observability.otlp_endpoint",
                "(missing)",
                "the otlp_* keys need otlp_endpoint, the collector's http://host:port",
            ));
        }
        return Ok(ObservabilityConfig::default());
    };
    let endpoint = OtlpEndpoint::parse(&url).map_err(|_| {
        check.invalid(
            "observability.otlp_endpoint",
            format!("{url:?}"),
            "http://host:port[/path] (only http; the path defaults to /v1/traces)",
        )
    })?;
    let mut c = OtlpConfig::new(endpoint);
    if let Some(v) = r.otlp_batch_spans_max {
        c.batch_spans_max = check.int(
            "observability.otlp_batch_spans_max",
            v,
            1,
            65_536,
            "1 to 65536 spans",
        )? as usize;
    }
    if let Some(v) = r.otlp_flush_interval_ms {
        c.flush_interval = Duration::from_millis(check.int(
            "observability.otlp_flush_interval_ms",
            v,
            1,
            60_000,
            "1 ms to 60 s",
        )?);
    }
    if let Some(v) = r.otlp_queue_spans_max {
        c.queue_spans_max = check.int(
            "observability.otlp_queue_spans_max",
            v,
            1,
            1 << 20,
            "1 to 1048576 spans",
        )? as usize;
    }
    if let Some(v) = r.otlp_export_timeout_ms {
        c.export_timeout = Duration::from_millis(check.int(
            "observability.otlp_export_timeout_ms",
            v,
            1,
            60_000,
            "1 ms to 60 s",
        )?);
    }
    if let Some(v) = r.otlp_sample_ratio {
        if !(0.0..=1.0).contains(&v) {
            return Err(check.invalid(
                "observability.otlp_sample_ratio",
                v,
                "0.0 (no trace) to 1.0 (every trace)",
            ));
        }
        c.sample_ratio = v;
    }
    if let Some(v) = r.otlp_service_name {
        if v.is_empty() {
            return Err(check.invalid(
                "observability.otlp_service_name",
                "\"\"",
                "a non-empty name",
            ));
        }
        c.service_name = v;
    }
    Ok(ObservabilityConfig { otlp: Some(c) })
}
