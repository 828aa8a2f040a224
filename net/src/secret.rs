//! The cluster secret and the "no secret ⇒ loopback only" listen rule.

use std::net::SocketAddr;

/// The shared cluster secret: the HMAC key of the handshake.
///
/// Guarantees: `Debug` and `Display` never print it (nor its length); its bytes are
/// overwritten with zeros when it is dropped; it is at least [`ClusterSecret::MIN_BYTES`]
/// bytes long.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Box<[u8]>);

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret is shorter than [`ClusterSecret::MIN_BYTES`].
    #[error("cluster secret from {source_name} is {len} bytes; at least {min} are required")]
    TooShort {
        /// Where it came from (config key or environment variable name).
        source_name: String,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The environment variable named for the secret is not set (or empty).
    #[error("environment variable {var} (named for the cluster secret) is not set")]
    EnvUnset {
        /// The variable's name.
        var: String,
    },
    /// The environment variable is set but is not valid UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode {
        /// The variable's name.
        var: String,
    },
}

impl ClusterSecret {
    /// The shortest accepted secret, in bytes.
    pub const MIN_BYTES: usize = 16;

    /// A secret from raw bytes; `source_name` names where it came from in errors.
    pub fn new(bytes: impl Into<Vec<u8>>, source_name: &str) -> Result<ClusterSecret, SecretError> {
        let bytes: Vec<u8> = bytes.into();
        if bytes.len() < Self::MIN_BYTES {
            return Err(SecretError::TooShort {
                source_name: source_name.to_owned(),
                len: bytes.len(),
                min: Self::MIN_BYTES,
            });
        }
        Ok(ClusterSecret(bytes.into_boxed_slice()))
    }

    /// Reads the secret from environment variable `var`, which must be set: a variable named
    /// for the secret but unset (or empty) is [`SecretError::EnvUnset`], never "no secret".
    pub fn require_env(var: &str) -> Result<ClusterSecret, SecretError> {
        Self::from_env(var)?.ok_or_else(|| SecretError::EnvUnset {
            var: var.to_owned(),
        })
    }

    /// Reads the secret from environment variable `var`: `Ok(None)` when it is unset or
    /// empty. Prefer [`ClusterSecret::require_env`] when a variable was named in
    /// configuration: unset must then be an error, not "no secret".
    pub fn from_env(var: &str) -> Result<Option<ClusterSecret>, SecretError> {
        match std::env::var(var) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode {
                var: var.to_owned(),
            }),
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => ClusterSecret::new(v.into_bytes(), var).map(Some),
        }
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ClusterSecret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference to a byte of our buffer;
            // a volatile write keeps the compiler from eliding the wipe of a dead buffer.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl std::fmt::Display for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a node may listen on, given its secret configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// A secret is configured: any address; every peer must prove the secret.
    Authenticated,
    /// No secret is configured but TLS is: any address; every peer must present a
    /// certificate signed by the configured CA (mutual TLS).
    Certificates,
    /// No secret is configured and the address is a loopback one. The node must say so at
    /// start-up (log [`ListenMode::NO_SECRET_NOTICE`] with the address).
    LoopbackOnly,
}

impl ListenMode {
    /// The start-up line for [`ListenMode::LoopbackOnly`].
    pub const NO_SECRET_NOTICE: &'static str =
        "no cluster secret configured: listening on loopback only (set a cluster secret to accept remote peers)";
}

/// A listen address refused by [`check_listen_addr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// No secret is configured and the address is not loopback (this includes `0.0.0.0` and
    /// `[::]`).
    #[error(
        "refusing to listen on {addr} without a cluster secret or TLS: configure a secret or [cluster.tls], or listen on a loopback address (127.0.0.1 / [::1])"
    )]
    NoSecretOffLoopback {
        /// The refused address.
        addr: SocketAddr,
    },
}

/// Applies the rule "a node with no secret configured listens only on loopback" (for a node
/// without TLS; see [`check_listen`]).
pub fn check_listen_addr(
    addr: SocketAddr,
    secret: Option<&ClusterSecret>,
) -> Result<ListenMode, ListenError> {
    check_listen(addr, secret, false)
}

/// The listen rule: a node with a cluster secret, or with TLS configured (`tls`: mutual
/// authentication by certificates), may listen on any address; a node with neither only on
/// loopback.
pub fn check_listen(
    addr: SocketAddr,
    secret: Option<&ClusterSecret>,
    tls: bool,
) -> Result<ListenMode, ListenError> {
    match secret {
        Some(_) => Ok(ListenMode::Authenticated),
        None if tls => Ok(ListenMode::Certificates),
        None if addr.ip().is_loopback() => Ok(ListenMode::LoopbackOnly),
        None => Err(ListenError::NoSecretOffLoopback { addr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_printed() {
        let s = ClusterSecret::new(b"hunter2hunter2hunter2".to_vec(), "test").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn short_secret_refused_and_named() {
        let e = ClusterSecret::new(b"short".to_vec(), "QUARK_SECRET").unwrap_err();
        assert_eq!(
            e,
            SecretError::TooShort {
                source_name: "QUARK_SECRET".into(),
                len: 5,
                min: 16
            }
        );
        assert!(e.to_string().contains("QUARK_SECRET"));
    }

    #[test]
    fn listen_rule() {
        let s = ClusterSecret::new(vec![7u8; 32], "t").unwrap();
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let lan: SocketAddr = "10.0.0.5:7000".parse().unwrap();
        assert_eq!(check_listen_addr(lo, None), Ok(ListenMode::LoopbackOnly));
        assert_eq!(check_listen_addr(lo6, None), Ok(ListenMode::LoopbackOnly));
        assert_eq!(
            check_listen_addr(any, None),
            Err(ListenError::NoSecretOffLoopback { addr: any })
        );
        let e = check_listen_addr(lan, None).unwrap_err();
        assert!(e.to_string().contains("10.0.0.5:7000"));
        assert_eq!(
            check_listen_addr(lan, Some(&s)),
            Ok(ListenMode::Authenticated)
        );
        assert_eq!(check_listen(lan, None, true), Ok(ListenMode::Certificates));
        assert_eq!(
            check_listen(lan, Some(&s), true),
            Ok(ListenMode::Authenticated)
        );
        assert_eq!(
            check_listen(any, None, false),
            Err(ListenError::NoSecretOffLoopback { addr: any })
        );
    }
}
