//! The `[cluster]` section of `quark.toml`: identity, membership (static, or on etcd:
//! `[cluster.membership]`), secret and transport bounds (every key in `docs/CONFIG.md`).

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
    /// Where the member set comes from (`[cluster.membership]`).
    pub membership: MembershipSettings,
}

/// Where a node's member set comes from (`[cluster.membership] provider`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// Built once per node at start: the size of the etcd variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum MembershipSettings {
    /// `[[cluster.nodes]]`, fixed (the default).
    Static,
    /// Registered in and watched from etcd v3 (docs/CLUSTER.md, "Membership on etcd").
    Etcd(EtcdSettings),
}

/// `[cluster.membership]` with `provider = "etcd"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// etcd endpoints (`http://host:port`), tried in turn by the client.
    pub endpoints: Vec<String>,
    /// The key prefix of the members (default `/quark/<cluster_id>/members/`); ends with `/`.
    pub prefix: String,
    /// The lease's time to live, seconds (default 2): how long after a node stops keeping
    /// it alive its peers drop it, and how long a node that lost etcd keeps activating.
    pub lease_ttl_s: u64,
    /// The node's zone label (registered, shown; empty: none).
    pub zone: String,
    /// The address peers and clients dial (default: `listen`).
    pub advertise: SocketAddr,
    /// TLS to etcd (`https://` endpoints): the CA that signs etcd's certificate, and this
    /// node's client certificate for etcd's mutual TLS (`--client-cert-auth`). `None`: plain
    /// `http://`.
    pub tls: Option<EtcdTls>,
    /// etcd authentication (`user`, password from the environment). `None`: none.
    pub auth: Option<EtcdAuth>,
}

/// TLS to etcd (`[cluster.membership] ca`, `cert`, `key`, `server_name`). The files are read
/// again at every (re)connection to etcd, so a rotated certificate is used from the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file with the CA certificate(s) that sign etcd's server certificate.
    pub ca: std::path::PathBuf,
    /// PEM files with this node's client certificate and its key (mutual TLS), if etcd asks
    /// for one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The DNS name etcd's certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// etcd authentication: a user and its password (`[cluster.membership] user`,
/// `password_env`). The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The default lease TTL, seconds: a member change is seen within about this.
pub const ETCD_LEASE_TTL_S_DEFAULT: u64 = 2;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMembership {
    provider: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    lease_ttl_s: Option<u64>,
    zone: Option<String>,
    advertise: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
    user: Option<String>,
    password_env: Option<String>,
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
    membership: Option<RawMembership>,
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
    let etcd = match raw.membership.as_ref().and_then(|m| m.provider.as_deref()) {
        None | Some("static") => false,
        Some("etcd") => true,
        Some(other) => {
            return Err(check.invalid(
                "cluster.membership.provider",
                format!("{other:?}"),
                "\"static\" or \"etcd\"",
            ))
        }
    };
    let listen_cfg = match &raw.listen {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            invalid(
                file,
                "cluster.listen",
                format!("{s:?}"),
                "an ip:port address",
            )
        })?),
    };
    let mut nodes = raw.nodes;
    if etcd && !nodes.iter().any(|n| n.id == raw.node_id) {
        // With etcd the static list may be empty: the node's own entry is its listen address
        // (the others come from etcd).
        let Some(l) = listen_cfg else {
            return Err(invalid(
                file,
                "cluster.listen",
                "(absent)".into(),
                "required with provider = \"etcd\" when cluster.nodes has no entry for node_id",
            ));
        };
        nodes.push(quark_net::MemberAddr {
            id: raw.node_id,
            addr: l.to_string(),
        });
    }
    let cluster_id = raw.cluster_id;
    let membership = Membership::from_config(&quark_net::ClusterConfig {
        cluster_id: cluster_id.clone(),
        nodes,
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
    let listen = listen_cfg.unwrap_or(own);
    let membership_settings = match raw.membership {
        Some(m) if etcd => MembershipSettings::Etcd(etcd_settings(m, &cluster_id, listen, check)?),
        Some(m) => {
            if m.endpoints.is_some()
                || m.prefix.is_some()
                || m.lease_ttl_s.is_some()
                || m.zone.is_some()
                || m.advertise.is_some()
                || m.ca.is_some()
                || m.cert.is_some()
                || m.key.is_some()
                || m.server_name.is_some()
                || m.user.is_some()
                || m.password_env.is_some()
            {
                return Err(invalid(
                    file,
                    "cluster.membership.provider",
                    "\"static\"".into(),
                    "endpoints, prefix, lease_ttl_s, zone, advertise, ca, cert, key, server_name, \
                     user and password_env apply to provider = \"etcd\" only",
                ));
            }
            MembershipSettings::Static
        }
        None => MembershipSettings::Static,
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
    net.dynamic_members = matches!(membership_settings, MembershipSettings::Etcd(_));
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
    Ok(ClusterSettings {
        net,
        listen,
        membership: membership_settings,
    })
}

/// What a build without the `etcd` feature says about `provider = "etcd"`.
#[cfg(not(feature = "etcd"))]
const NO_ETCD: &str = "this build has no etcd membership: enable the cargo feature `etcd` of the \
     `quark` crate (quark = { features = [\"etcd\"] }), or build `quark serve` with \
     `cargo build -p quark-cli --features etcd`";

/// `[cluster.membership]` `ca`, `cert`, `key`, `server_name`, as written.
#[cfg(feature = "etcd")]
struct TlsKeys<'a> {
    ca: &'a Option<String>,
    cert: &'a Option<String>,
    key: &'a Option<String>,
    server_name: &'a Option<String>,
}

/// `ca`, `cert`, `key`, `server_name`: TLS to etcd, required by `https://` endpoints.
#[cfg(feature = "etcd")]
fn etcd_tls(
    m: TlsKeys<'_>,
    endpoints: &[String],
    file: &Path,
) -> Result<Option<EtcdTls>, ConfigError> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let Some(ca) = m.ca else {
        if https > 0 {
            return Err(invalid(
                file,
                "cluster.membership.ca",
                "(absent)".into(),
                "required with https:// endpoints: the PEM file of the CA that signs etcd's \
                 certificate",
            ));
        }
        for (key, v) in [
            ("cluster.membership.cert", m.cert),
            ("cluster.membership.key", m.key),
            ("cluster.membership.server_name", m.server_name),
        ] {
            if let Some(v) = v {
                return Err(invalid(
                    file,
                    key,
                    format!("{v:?}"),
                    "applies with TLS to etcd only: set cluster.membership.ca and https:// \
                     endpoints",
                ));
            }
        }
        return Ok(None);
    };
    if https != endpoints.len() {
        return Err(invalid(
            file,
            "cluster.membership.endpoints",
            format!("{endpoints:?}"),
            "with cluster.membership.ca (TLS to etcd) every endpoint is https://host:port",
        ));
    }
    let readable = |key: &str, path: &str| -> Result<std::path::PathBuf, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Ok(path.into()),
            Ok(_) => Err(invalid(
                file,
                key,
                format!("{path:?}"),
                "a PEM file (no -----BEGIN)",
            )),
            Err(_) => Err(invalid(
                file,
                key,
                format!("{path:?}"),
                "a readable PEM file (it cannot be read)",
            )),
        }
    };
    let ca = readable("cluster.membership.ca", ca)?;
    let identity = match (m.cert, m.key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((
            readable("cluster.membership.cert", c)?,
            readable("cluster.membership.key", k)?,
        )),
        (Some(c), None) => {
            return Err(invalid(
                file,
                "cluster.membership.cert",
                format!("{c:?}"),
                "set together with cluster.membership.key",
            ))
        }
        (None, Some(k)) => {
            return Err(invalid(
                file,
                "cluster.membership.key",
                format!("{k:?}"),
                "set together with cluster.membership.cert",
            ))
        }
    };
    Ok(Some(EtcdTls {
        ca,
        identity,
        server_name: m.server_name.clone(),
    }))
}

/// `user`, `password_env`: etcd authentication.
#[cfg(feature = "etcd")]
fn etcd_auth(
    user: &Option<String>,
    password_env: &Option<String>,
    file: &Path,
) -> Result<Option<EtcdAuth>, ConfigError> {
    match (user, password_env) {
        (None, None) => Ok(None),
        (Some(user), Some(var)) => {
            if user.is_empty() {
                return Err(invalid(
                    file,
                    "cluster.membership.user",
                    "\"\"".into(),
                    "a non-empty etcd user name",
                ));
            }
            match std::env::var(var) {
                Ok(password) if !password.is_empty() => Ok(Some(EtcdAuth {
                    user: user.clone(),
                    password,
                })),
                _ => Err(invalid(
                    file,
                    "cluster.membership.password_env",
                    format!("{var:?}"),
                    "names an environment variable that is not set (or is empty)",
                )),
            }
        }
        (Some(user), None) => Err(invalid(
            file,
            "cluster.membership.user",
            format!("{user:?}"),
            "set together with cluster.membership.password_env (the variable with its password)",
        )),
        (None, Some(var)) => Err(invalid(
            file,
            "cluster.membership.password_env",
            format!("{var:?}"),
            "set together with cluster.membership.user",
        )),
    }
}

fn etcd_settings(
    m: RawMembership,
    cluster_id: &str,
    listen: SocketAddr,
    check: &Check<'_>,
) -> Result<EtcdSettings, ConfigError> {
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (&m, cluster_id, listen);
        Err(check.invalid("cluster.membership.provider", "\"etcd\"", NO_ETCD))
    }
    #[cfg(feature = "etcd")]
    {
        let file = check.file;
        let endpoints = m
            .endpoints
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".to_owned()]);
        if endpoints.is_empty() {
            return Err(invalid(
                file,
                "cluster.membership.endpoints",
                "[]".into(),
                "at least one endpoint, e.g. \"http://127.0.0.1:2379\"",
            ));
        }
        for e in &endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || !r.contains(':')) {
                return Err(invalid(
                    file,
                    "cluster.membership.endpoints",
                    format!("{e:?}"),
                    "each endpoint is http://host:port (or https://host:port)",
                ));
            }
        }
        let prefix = m
            .prefix
            .unwrap_or_else(|| format!("/quark/{cluster_id}/members/"));
        if prefix.is_empty() || !prefix.ends_with('/') {
            return Err(invalid(
                file,
                "cluster.membership.prefix",
                format!("{prefix:?}"),
                "a non-empty key prefix ending with '/'",
            ));
        }
        let lease_ttl_s = match m.lease_ttl_s {
            None => ETCD_LEASE_TTL_S_DEFAULT,
            Some(v) => check.range(
                "cluster.membership.lease_ttl_s",
                v,
                1,
                3600,
                "1 to 3600 s (etcd may raise it to its minimum)",
            )?,
        };
        let zone = m.zone.clone().unwrap_or_default();
        if zone.len() > 64 {
            return Err(invalid(
                file,
                "cluster.membership.zone",
                format!("{zone:?}"),
                "at most 64 bytes",
            ));
        }
        let advertise =
            match m.advertise {
                None if listen.ip().is_unspecified() => return Err(invalid(
                    file,
                    "cluster.membership.advertise",
                    "(absent)".into(),
                    "required when cluster.listen is an unspecified address (0.0.0.0 or [::]): \
                     the ip:port peers dial",
                )),
                None => listen,
                Some(a) => {
                    let addr: SocketAddr = a.parse().map_err(|_| {
                        invalid(
                            file,
                            "cluster.membership.advertise",
                            format!("{a:?}"),
                            "an ip:port address",
                        )
                    })?;
                    if addr.port() == 0 || addr.ip().is_unspecified() {
                        return Err(invalid(
                            file,
                            "cluster.membership.advertise",
                            format!("{a:?}"),
                            "a dialable ip:port (not port 0, not 0.0.0.0)",
                        ));
                    }
                    addr
                }
            };
        let tls = etcd_tls(
            TlsKeys {
                ca: &m.ca,
                cert: &m.cert,
                key: &m.key,
                server_name: &m.server_name,
            },
            &endpoints,
            file,
        )?;
        let auth = etcd_auth(&m.user, &m.password_env, file)?;
        Ok(EtcdSettings {
            endpoints,
            prefix,
            lease_ttl_s,
            zone,
            advertise,
            tls,
            auth,
        })
    }
}
