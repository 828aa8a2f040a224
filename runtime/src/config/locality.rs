//! The `[locality]` section: locality-aware repartitioning (docs/CONFIG.md, docs/LOCALITY.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Int};
use crate::locality::LocalityConfig;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocality {
    enabled: Option<bool>,
    interval_ms: Option<Int>,
    jitter_ms: Option<Int>,
    cooldown_ms: Option<Int>,
    top_k: Option<Int>,
    balance_tolerance: Option<f64>,
    max_moves_per_round: Option<Int>,
    zones: Option<BTreeMap<String, String>>,
}

pub(super) fn locality_section(
    r: RawLocality,
    check: &Check<'_>,
) -> Result<LocalityConfig, ConfigError> {
    let mut c = LocalityConfig::default();
    if let Some(v) = r.enabled {
        c.enabled = v;
    }
    if let Some(v) = r.interval_ms {
        c.interval = Duration::from_millis(check.int(
            "locality.interval_ms",
            v,
            10,
            86_400_000,
            "10 ms to 1 day",
        )?);
    }
    if let Some(v) = r.jitter_ms {
        c.jitter = Duration::from_millis(check.int(
            "locality.jitter_ms",
            v,
            0,
            86_400_000,
            "0 to 1 day",
        )?);
    }
    if let Some(v) = r.cooldown_ms {
        c.cooldown = Duration::from_millis(check.int(
            "locality.cooldown_ms",
            v,
            0,
            604_800_000,
            "0 to 1 week",
        )?);
    }
    if let Some(v) = r.top_k {
        c.top_k = check.int("locality.top_k", v, 16, 1 << 20, "16 to 1048576 edges")? as usize;
    }
    if let Some(v) = r.balance_tolerance {
        if !(0.0..=1.0).contains(&v) {
            return Err(check.invalid(
                "locality.balance_tolerance",
                v,
                "0.0 to 1.0 (a fraction of the mean load)",
            ));
        }
        c.balance_tolerance = v;
    }
    if let Some(v) = r.max_moves_per_round {
        c.max_moves_per_round = check.int(
            "locality.max_moves_per_round",
            v,
            0,
            1 << 20,
            "0 to 1048576 moves",
        )? as usize;
    }
    if let Some(zones) = r.zones {
        for (node, zone) in zones {
            let Ok(id) = node.parse::<u64>() else {
                return Err(check.invalid(
                    "locality.zones",
                    node,
                    "a table of node id = zone name (the keys are node ids: \"1\" = \"eu-1a\")",
                ));
            };
            if zone.is_empty() {
                return Err(check.invalid(
                    "locality.zones",
                    format!("{id} = \"\""),
                    "a non-empty zone name for every node listed",
                ));
            }
            c.zones.insert(id, zone);
        }
    }
    Ok(c)
}
