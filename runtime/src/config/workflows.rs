//! The `[workflows]` section: history bounds of workflow instances (docs/CONFIG.md,
//! docs/WORKFLOWS.md).

use serde::Deserialize;

use super::{Check, ConfigError, Int};
use crate::workflow::WorkflowsConfig;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkflows {
    max_history_events: Option<Int>,
    max_history_bytes: Option<Int>,
    history_warn_fraction: Option<f64>,
}

pub(super) fn workflows_section(
    r: RawWorkflows,
    check: &Check<'_>,
) -> Result<WorkflowsConfig, ConfigError> {
    let mut c = WorkflowsConfig::default();
    if let Some(v) = r.max_history_events {
        c.max_history_events = check.int(
            "workflows.max_history_events",
            v,
            16,
            100_000_000,
            "16 to 100000000 records",
        )?;
    }
    if let Some(v) = r.max_history_bytes {
        c.max_history_bytes = check.int(
            "workflows.max_history_bytes",
            v,
            4096,
            1 << 40,
            "4096 bytes to 1 TiB",
        )?;
    }
    if let Some(v) = r.history_warn_fraction {
        if !(v > 0.0 && v <= 1.0) {
            return Err(check.invalid(
                "workflows.history_warn_fraction",
                v,
                "above 0.0 and at most 1.0 (a fraction of the limits)",
            ));
        }
        c.history_warn_fraction = v;
    }
    Ok(c)
}
