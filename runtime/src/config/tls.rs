//! `[cluster.tls]`: TLS 1.3 with mutual authentication on every connection of the node (see
//! `docs/CONFIG.md` and `docs/OPERATIONS.md`, "TLS").

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Check, ConfigError};

/// The `[cluster.tls]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    ca: String,
    cert: String,
    key: String,
    server_name: Option<String>,
    reload_interval_ms: Option<u64>,
    crls: Option<Vec<String>>,
}

/// Loads the files named by `[cluster.tls]`: a missing, unreadable or invalid file fails the
/// configuration, naming the file.
pub(crate) fn tls_settings(
    raw: RawTls,
    check: &Check<'_>,
) -> Result<std::sync::Arc<quark_net::tls::TlsContext>, ConfigError> {
    for (key, v) in [
        ("cluster.tls.ca", &raw.ca),
        ("cluster.tls.cert", &raw.cert),
        ("cluster.tls.key", &raw.key),
    ] {
        if v.is_empty() {
            return Err(ConfigError::Invalid {
                file: check.file.to_path_buf(),
                key: key.to_owned(),
                value: "\"\"".into(),
                reason: "a path to a PEM file",
            });
        }
    }
    let mut files = quark_net::tls::TlsFiles::new(
        PathBuf::from(raw.ca),
        PathBuf::from(raw.cert),
        PathBuf::from(raw.key),
    );
    files.server_name = raw.server_name;
    for (i, c) in raw.crls.unwrap_or_default().into_iter().enumerate() {
        if c.is_empty() {
            return Err(ConfigError::Invalid {
                file: check.file.to_path_buf(),
                key: format!("cluster.tls.crls[{i}]"),
                value: "\"\"".into(),
                reason: "a path to a PEM file of a certificate revocation list",
            });
        }
        files.crls.push(PathBuf::from(c));
    }
    if let Some(v) = raw.reload_interval_ms {
        files.reload_interval = Duration::from_millis(check.range(
            "cluster.tls.reload_interval_ms",
            v,
            0,
            86_400_000,
            "0 to 1 day",
        )?);
    }
    quark_net::tls::TlsContext::load(files).map_err(|source| ConfigError::Tls {
        file: check.file.to_path_buf(),
        source: Box::new(source),
    })
}
