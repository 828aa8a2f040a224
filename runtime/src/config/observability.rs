//! The `[observability]` section: the OTLP trace exporter's knobs (see `docs/CONFIG.md`).
//! The exporter is built only with the `otlp` cargo feature; without it, any `otlp_*` key is
//! refused naming the feature (never silently ignored).

#[cfg(feature = "otlp")]
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Int};
#[cfg(feature = "otlp")]
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
    /// to the logs. Only with the `otlp` cargo feature.
    #[cfg(feature = "otlp")]
    pub otlp: Option<OtlpConfig>,
}

/// Why an `otlp_*` key is refused by a build without the exporter.
pub(super) const NO_EXPORTER: &str = "this build has no OTLP exporter: enable the cargo feature \
     `otlp` of the `quark` crate (quark = { features = [\"otlp\"] }); `quark serve` has it";

pub(super) fn observability_section(
    r: RawObservability,
    check: &Check<'_>,
) -> Result<ObservabilityConfig, ConfigError> {
    #[cfg(feature = "otlp")]
    return with_exporter(r, check);
    #[cfg(not(feature = "otlp"))]
    return without_exporter(&r, check);
}

/// The first `otlp_*` key set, if any.
fn first_otlp_key(r: &RawObservability) -> Option<&'static str> {
    [
        ("otlp_endpoint", r.otlp_endpoint.is_some()),
        ("otlp_batch_spans_max", r.otlp_batch_spans_max.is_some()),
        ("otlp_flush_interval_ms", r.otlp_flush_interval_ms.is_some()),
        ("otlp_queue_spans_max", r.otlp_queue_spans_max.is_some()),
        ("otlp_export_timeout_ms", r.otlp_export_timeout_ms.is_some()),
        ("otlp_sample_ratio", r.otlp_sample_ratio.is_some()),
        ("otlp_service_name", r.otlp_service_name.is_some()),
    ]
    .into_iter()
    .find_map(|(k, set)| set.then_some(k))
}

/// A build without the exporter: any `otlp_*` key is an error naming the feature.
#[cfg_attr(feature = "otlp", allow(dead_code))]
fn without_exporter(
    r: &RawObservability,
    check: &Check<'_>,
) -> Result<ObservabilityConfig, ConfigError> {
    match first_otlp_key(r) {
        Some(key) => Err(check.invalid(&format!("observability.{key}"), "(set)", NO_EXPORTER)),
        None => Ok(ObservabilityConfig::default()),
    }
}

#[cfg(feature = "otlp")]
fn with_exporter(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spans::Doc;

    /// The refusal a build without the `otlp` feature gives (tested in both builds: this
    /// calls the feature-off path directly; `runtime/tests/otlp_feature.rs` checks the
    /// whole `NodeConfig::from_toml` of the build under test).
    #[test]
    fn without_the_exporter_an_otlp_key_is_refused_naming_the_feature() {
        let text = "[observability]\notlp_sample_ratio = 0.5\n";
        let doc = Doc::parse(text).expect("parses");
        let check = Check {
            file: std::path::Path::new("q.toml"),
            text,
            doc: &doc,
        };
        let raw = RawObservability {
            otlp_sample_ratio: Some(0.5),
            ..RawObservability::default()
        };
        let e = without_exporter(&raw, &check)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("observability.otlp_sample_ratio"), "{e}");
        assert!(e.contains("`otlp`") && e.contains("cargo feature"), "{e}");
        assert!(e.contains("q.toml") && e.contains("0.5"), "{e}");
        let none = without_exporter(&RawObservability::default(), &check);
        assert_eq!(
            none.expect("no key: accepted"),
            ObservabilityConfig::default()
        );
    }
}
