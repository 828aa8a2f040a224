//! The `[cluster]` section of `quark.toml`: identity, static membership, secret and transport
//! bounds (every key in `docs/CONFIG.md`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quark_net::{ClusterSecret, Membership, PeerRole};
use quark_shard::NetConfig;
use serde::Deserialize;

use crate::config::{Check, ConfigError};

/// A node's cluster settings, validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The transport settings (identity, membership, secret, bounds); `listener` is set when
    /// the node binds at start.
    pub net: NetConfig,
    /// The address to listen on (default: this node's address in `nodes`).
    pub listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    cluster_id: String,
    node_id: u64,
    listen: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    frame_bytes_max: Option<u64>,
    out_bytes_max: Option<u64>,
    out_stall_timeout_ms: Option<u64>,
    requests_inflight_max: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    suspect_after_ms: Option<u64>,
    dead_after_ms: Option<u64>,
    reconnect_base_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    #[serde(default)]
    nodes: Vec<quark_net::MemberAddr>,
    tls: Option<crate::config::tls::RawTls>,
}

fn invalid(file: &Path, key: &str, value: String, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.to_owned(),
        value,
        reason,
    }
}

pub(crate) fn cluster_settings(
    raw: RawCluster,
    check: &Check<'_>,
) -> Result<ClusterSettings, ConfigError> {
    let file = check.file;
    let membership = Membership::from_config(&quark_net::ClusterConfig {
        cluster_id: raw.cluster_id,
        nodes: raw.nodes,
    })
    .map_err(|source| ConfigError::Cluster {
        file: file.to_path_buf(),
        source,
    })?;
    let Some(own) = membership.addr(raw.node_id) else {
        return Err(invalid(
            file,
            "cluster.node_id",
            raw.node_id.to_string(),
            "must be the id of one of cluster.nodes",
        ));
    };
    let listen = match raw.listen {
        None => own,
        Some(s) => s.parse().map_err(|_| {
            invalid(
                file,
                "cluster.listen",
                format!("{s:?}"),
                "an ip:port address",
            )
        })?,
    };
    let secret = match (raw.secret, raw.secret_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                file,
                "cluster.secret",
                "<redacted>".into(),
                "set either secret or secret_env, not both",
            ))
        }
        (Some(s), None) => Some(
            ClusterSecret::new(s.into_bytes(), "cluster.secret").map_err(|source| {
                ConfigError::Secret {
                    file: file.to_path_buf(),
                    source,
                }
            })?,
        ),
        (None, Some(var)) => match ClusterSecret::from_env(&var) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                return Err(invalid(
                    file,
                    "cluster.secret_env",
                    format!("{var:?}"),
                    "names an environment variable that is not set",
                ))
            }
            Err(source) => {
                return Err(ConfigError::Secret {
                    file: file.to_path_buf(),
                    source,
                })
            }
        },
        (None, None) => None,
    };
    let mut net = NetConfig::new(raw.node_id, PeerRole::Member, membership);
    net.secret = secret;
    net.tls = raw
        .tls
        .map(|t| crate::config::tls::tls_settings(t, check))
        .transpose()?;
    if let Some(v) = raw.frame_bytes_max {
        net.frame_bytes_max = check.range(
            "cluster.frame_bytes_max",
            v,
            4096,
            u64::from(quark_net::FRAME_BYTES_MAX_LIMIT),
            "4 KiB to 1 GiB",
        )? as u32;
    }
    if let Some(v) = raw.requests_inflight_max {
        net.requests_inflight_max = check.range(
            "cluster.requests_inflight_max",
            v,
            1,
            1 << 20,
            "1 to 1048576",
        )? as usize;
    }
    if let Some(v) = raw.out_bytes_max {
        net.out_bytes_max =
            check.range("cluster.out_bytes_max", v, 4096, 1 << 34, "4 KiB to 16 GiB")? as usize;
    }
    let ms = |key: &str, v: Option<u64>, lo: u64, hi: u64, reason: &'static str| {
        v.map(|v| {
            check
                .range(key, v, lo, hi, reason)
                .map(Duration::from_millis)
        })
        .transpose()
    };
    if let Some(d) = ms(
        "cluster.out_stall_timeout_ms",
        raw.out_stall_timeout_ms,
        1,
        3_600_000,
        "1 ms to 1 h",
    )? {
        net.out_stall_timeout = d;
    }
    if let Some(d) = ms(
        "cluster.heartbeat_interval_ms",
        raw.heartbeat_interval_ms,
        1,
        60_000,
        "1 ms to 1 min",
    )? {
        net.detector.heartbeat_interval = d;
    }
    if let Some(d) = ms(
        "cluster.suspect_after_ms",
        raw.suspect_after_ms,
        2,
        600_000,
        "2 ms to 10 min",
    )? {
        net.detector.suspect_after = d;
    }
    if let Some(d) = ms(
        "cluster.dead_after_ms",
        raw.dead_after_ms,
        2,
        3_600_000,
        "2 ms to 1 h",
    )? {
        net.detector.dead_after = d;
    }
    let d = net.detector;
    if !(d.heartbeat_interval < d.suspect_after && d.suspect_after <= d.dead_after) {
        return Err(invalid(
            file,
            "cluster.suspect_after_ms",
            format!(
                "heartbeat {:?}, suspect {:?}, dead {:?}",
                d.heartbeat_interval, d.suspect_after, d.dead_after
            ),
            "needs heartbeat_interval_ms < suspect_after_ms <= dead_after_ms",
        ));
    }
    if let Some(d) = ms(
        "cluster.reconnect_base_ms",
        raw.reconnect_base_ms,
        1,
        60_000,
        "1 ms to 1 min",
    )? {
        net.backoff.base = d;
    }
    if let Some(d) = ms(
        "cluster.reconnect_max_ms",
        raw.reconnect_max_ms,
        1,
        3_600_000,
        "1 ms to 1 h",
    )? {
        net.backoff.max = d;
    }
    if net.backoff.max < net.backoff.base {
        return Err(invalid(
            file,
            "cluster.reconnect_max_ms",
            net.backoff.max.as_millis().to_string(),
            "must be at least reconnect_base_ms",
        ));
    }
    if let Some(d) = ms(
        "cluster.connect_timeout_ms",
        raw.connect_timeout_ms,
        1,
        600_000,
        "1 ms to 10 min",
    )? {
        net.connect_timeout = d;
    }
    if let Some(d) = ms(
        "cluster.handshake_timeout_ms",
        raw.handshake_timeout_ms,
        1,
        600_000,
        "1 ms to 10 min",
    )? {
        net.handshake_timeout = d;
    }
    Ok(ClusterSettings { net, listen })
}
