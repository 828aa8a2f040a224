//! TLS 1.3 under the frames (rustls, sans-IO): mutual authentication with certificates from a
//! configured CA, certificate and key files reloaded when they change.
//!
//! - [`TlsContext`] holds what a node or client loaded from its files (`ca`, `cert`, `key`)
//!   and makes one [`TlsSession`] per new connection: a server session for an accepted
//!   connection, a client session for a dialed one. Both sides present their certificate and
//!   verify the peer's against the CA (mutual TLS; a peer without a certificate is refused).
//! - [`TlsSession`] is rustls's connection behind the calls the I/O layer needs: ciphertext in
//!   ([`TlsSession::read_tls`] then [`TlsSession::process`]), plaintext out
//!   ([`TlsSession::read_plain`]), plaintext in ([`TlsSession::write_plain`]), ciphertext out
//!   ([`TlsSession::write_tls`]). It opens no socket: the shard's connections and the blocking
//!   client probe move the bytes.
//! - Reload: every new session first checks (at most once per `reload_interval`) whether the
//!   three files changed (modification time, length, inode); if so it loads them again and new
//!   sessions use the new certificate; sessions already open carry on with the old one. A
//!   reload that fails (a half-written file) keeps the previous certificate, logs the error
//!   naming the file, and is retried at the next check.
//!
//! The Quark handshake (cluster id, protocol version, HMAC proof over the cluster secret) runs
//! unchanged inside TLS: TLS authenticates the machine (its certificate), the handshake the
//! cluster membership and the protocol version. See `docs/PROTOCOL.md` ("TLS layer").

mod blocking;
mod session;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

pub use blocking::{TlsBlocking, TlsIoError, TlsStream};
pub use session::{looks_like_tls, PlainRead, TlsSession, TlsSessionError};

/// Where a node's or client's TLS material is, and how often to look for new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) that sign every node's and client's certificate:
    /// the only roots trusted for peers.
    pub ca: PathBuf,
    /// PEM file with this side's certificate chain (leaf first), signed by the CA.
    pub cert: PathBuf,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The name a dialed node's certificate must carry (a DNS name, or an IP address, in its
    /// subject alternative names). `None`: the IP address that was dialed.
    pub server_name: Option<String>,
    /// How often a new connection checks the three files for changes. Zero: every new
    /// connection checks.
    pub reload_interval: Duration,
    /// PEM files of certificate revocation lists, signed by the CA: a peer whose certificate
    /// is listed is refused (`CertificateError::Revoked` on this side, the alert
    /// `CertificateRevoked` on the peer's). Loaded and reloaded with the other files. Empty:
    /// no revocation check.
    pub crls: Vec<PathBuf>,
}

impl TlsFiles {
    /// The three files, with the default reload interval (5 s) and no server name override.
    pub fn new(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> TlsFiles {
        TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
            reload_interval: Duration::from_secs(5),
            crls: Vec::new(),
        }
    }
}

/// Which TLS file an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFileKind {
    /// The CA certificate(s) (`tls.ca`).
    Ca,
    /// This side's certificate chain (`tls.cert`).
    Cert,
    /// This side's private key (`tls.key`).
    Key,
    /// A certificate revocation list (`tls.crls`).
    Crl,
}

impl std::fmt::Display for TlsFileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFileKind::Ca => "CA certificate file (tls.ca)",
            TlsFileKind::Cert => "certificate file (tls.cert)",
            TlsFileKind::Key => "private key file (tls.key)",
            TlsFileKind::Crl => "certificate revocation list (tls.crls)",
        })
    }
}

/// Why TLS material could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("{kind} {}: cannot read it", path.display())]
    Read {
        /// Which file.
        kind: TlsFileKind,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected type (e.g. a key where a certificate was
    /// expected, or DER instead of PEM).
    #[error("{kind} {}: no PEM {expected} block in it", path.display())]
    NoPem {
        /// Which file.
        kind: TlsFileKind,
        /// Its path.
        path: PathBuf,
        /// The PEM label expected ("CERTIFICATE", "PRIVATE KEY").
        expected: &'static str,
    },
    /// A PEM block could not be decoded.
    #[error("{kind} {}: invalid PEM", path.display())]
    BadPem {
        /// Which file.
        kind: TlsFileKind,
        /// Its path.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A CA certificate is not a usable trust anchor.
    #[error("{kind} {}: a certificate in it is not a valid CA certificate", path.display())]
    BadCa {
        /// Which file.
        kind: TlsFileKind,
        /// Its path.
        path: PathBuf,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The certificate and the key do not form a usable identity (the key is not the
    /// certificate's, or its algorithm is not supported).
    #[error("certificate {} and private key {}: not usable together", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The peer verifier could not be built from the CA file (and the revocation lists).
    #[error("{} : cannot build the certificate verifier (with its revocation lists)", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// `server_name` is not a valid DNS name or IP address.
    #[error("tls.server_name {name:?} is not a valid DNS name or IP address")]
    ServerName {
        /// The name given.
        name: String,
    },
}

/// What one load of the files produced.
struct Loaded {
    server: Arc<ServerConfig>,
    /// The same certificate, asking no client certificate (an HTTPS endpoint open to clients
    /// without one: the admin endpoint unless it requires them).
    server_open: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    stamp: Vec<Option<FileStamp>>,
    fingerprint: String,
}

/// What tells a file changed: modification time, length and inode (a file replaced by a
/// rename has a new inode even within one timestamp tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

struct State {
    loaded: Loaded,
    checked: Instant,
    /// The stamp of the files at the last failed reload (not retried until they change again).
    failed: Option<Vec<Option<FileStamp>>>,
}

/// A node's or client's TLS settings, loaded: makes the session of each new connection and
/// reloads the certificate when its files change (see the module docs).
///
/// Shared by every shard (`Arc`); the lock is taken once per new connection, never per
/// message.
pub struct TlsContext {
    files: TlsFiles,
    server_name: Option<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("files", &self.files)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl TlsContext {
    /// Loads the files (errors name the file and what is wrong with it).
    pub fn load(files: TlsFiles) -> Result<Arc<TlsContext>, TlsError> {
        let server_name = match &files.server_name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|_| TlsError::ServerName { name: n.clone() })?,
            ),
        };
        // ring, not aws-lc-rs: no cmake/C++ build on the shared build machines. Its key
        // exchanges are X25519 and the NIST curves (no post-quantum hybrid), hence the
        // deprecation notice.
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM first (the suite both sides then pick): 128-bit security, and cheaper
        // per byte than AES-256 on the frames' path.
        provider.cipher_suites = vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let provider = Arc::new(provider);
        let loaded = load(&files, &provider)?;
        tracing::info!(cert = %files.cert.display(), fingerprint = %loaded.fingerprint,
            "TLS certificate loaded");
        Ok(Arc::new(TlsContext {
            files,
            server_name,
            provider,
            state: Mutex::new(State {
                loaded,
                checked: Instant::now(),
                failed: None,
            }),
        }))
    }

    /// The files this context was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// SHA-256 of the certificate presented now (the leaf, DER), hex.
    pub fn fingerprint(&self) -> String {
        self.lock().loaded.fingerprint.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a whole `State` (every update is one
        // assignment), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the files now (whatever the interval) and loads them again if they changed.
    /// `Ok(true)`: a new certificate is in use; `Ok(false)`: nothing changed (or the same
    /// failed files again); `Err`: they changed but do not load (the previous certificate
    /// stays in use).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut st = self.lock();
        self.reload_locked(&mut st)
    }

    fn reload_locked(&self, st: &mut State) -> Result<bool, TlsError> {
        st.checked = Instant::now();
        let now = stamps(&self.files);
        if now == st.loaded.stamp || st.failed.as_ref() == Some(&now) {
            return Ok(false);
        }
        match load(&self.files, &self.provider) {
            Ok(l) => {
                tracing::info!(cert = %self.files.cert.display(), fingerprint = %l.fingerprint,
                    previous = %st.loaded.fingerprint,
                    "TLS certificate reloaded: new connections use it");
                st.loaded = l;
                st.failed = None;
                Ok(true)
            }
            Err(e) => {
                st.failed = Some(now);
                Err(e)
            }
        }
    }

    /// The configs for a new connection, after the periodic check of the files.
    fn current(&self) -> (Arc<ServerConfig>, Arc<ServerConfig>, Arc<ClientConfig>) {
        let mut st = self.lock();
        if st.checked.elapsed() >= self.files.reload_interval {
            if let Err(e) = self.reload_locked(&mut st) {
                tracing::error!(error = %crate::ErrorChain(&e),
                    "TLS files changed but do not load; the previous certificate stays in use");
            }
        }
        (
            st.loaded.server.clone(),
            st.loaded.server_open.clone(),
            st.loaded.client.clone(),
        )
    }

    /// A session for a connection accepted from a peer (this side is the TLS server).
    pub fn server_session(&self) -> Result<TlsSession, TlsSessionError> {
        let (server, _, _) = self.current();
        let conn = rustls::ServerConnection::new(server).map_err(TlsSessionError::Setup)?;
        Ok(TlsSession::new(rustls::Connection::Server(conn)))
    }

    /// A server session that asks no client certificate (this side's certificate, TLS 1.3):
    /// for an HTTPS endpoint whose clients need not present one.
    pub fn server_session_open(&self) -> Result<TlsSession, TlsSessionError> {
        let (_, open, _) = self.current();
        let conn = rustls::ServerConnection::new(open).map_err(TlsSessionError::Setup)?;
        Ok(TlsSession::new(rustls::Connection::Server(conn)))
    }

    /// A session for a connection dialed to `ip` (this side is the TLS client). The peer's
    /// certificate must name `server_name` if one is configured, else `ip`.
    pub fn client_session(&self, ip: IpAddr) -> Result<TlsSession, TlsSessionError> {
        let (_, _, client) = self.current();
        let name = self
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(ip.into()));
        let conn = rustls::ClientConnection::new(client, name).map_err(TlsSessionError::Setup)?;
        Ok(TlsSession::new(rustls::Connection::Client(conn)))
    }
}

fn stamps(f: &TlsFiles) -> Vec<Option<FileStamp>> {
    let mut v = vec![stamp(&f.ca), stamp(&f.cert), stamp(&f.key)];
    v.extend(f.crls.iter().map(|p| stamp(p)));
    v
}

fn crls(f: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let kind = TlsFileKind::Crl;
    let mut out = Vec::new();
    for path in &f.crls {
        let pem = read(kind, path)?;
        let before = out.len();
        for c in CertificateRevocationListDer::pem_slice_iter(&pem) {
            out.push(c.map_err(|source| TlsError::BadPem {
                kind,
                path: path.clone(),
                source,
            })?);
        }
        if out.len() == before {
            return Err(TlsError::NoPem {
                kind,
                path: path.clone(),
                expected: "X509 CRL",
            });
        }
    }
    Ok(out)
}

fn read(kind: TlsFileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        kind,
        path: path.to_path_buf(),
        source,
    })
}

fn certs(kind: TlsFileKind, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(kind, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            kind,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            kind,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let kind = TlsFileKind::Key;
    let pem = read(kind, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            kind,
            path: path.to_path_buf(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::BadPem {
            kind,
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Loads the three files and builds both configs: TLS 1.3 only, mutual authentication against
/// the CA, no session resumption (every connection verifies the peer's current certificate).
fn load(f: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
    // Stamps first: a file replaced after this point is seen as changed at the next check.
    let stamp = stamps(f);
    let mut roots = RootCertStore::empty();
    for c in certs(TlsFileKind::Ca, &f.ca)? {
        roots.add(c).map_err(|source| TlsError::BadCa {
            kind: TlsFileKind::Ca,
            path: f.ca.clone(),
            source,
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(TlsFileKind::Cert, &f.cert)?;
    let key = key(&f.key)?;
    let fingerprint = hex(&Sha256::digest(chain[0].as_ref()));
    let identity = |source| TlsError::Identity {
        cert: f.cert.clone(),
        key: f.key.clone(),
        source,
    };
    let revoked = crls(f)?;
    let verifier_err = |source| TlsError::Verifier {
        path: f.ca.clone(),
        source,
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(revoked.clone())
        .build()
        .map_err(verifier_err)?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(revoked)
            .build()
            .map_err(verifier_err)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(identity)?;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut server_open = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(identity)?;
    server_open.session_storage = Arc::new(NoServerSessionStorage {});
    server_open.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(identity)?;
    client.resumption = Resumption::disabled();
    Ok(Loaded {
        server: Arc::new(server),
        server_open: Arc::new(server_open),
        client: Arc::new(client),
        stamp,
        fingerprint,
    })
}

/// A TLS client of an HTTPS endpoint (a tool such as the `quark` CLI talking to a node's
/// admin endpoint): trusts the CA of `ca` only, presents a certificate if given one.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Loads `ca` (the roots the server's certificate must chain to) and, if given, the
    /// client's certificate chain and key (errors name the file).
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsClient, TlsError> {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in certs(TlsFileKind::Ca, ca)? {
            roots.add(c).map_err(|source| TlsError::BadCa {
                kind: TlsFileKind::Ca,
                path: ca.to_path_buf(),
                source,
            })?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Identity {
                cert: ca.to_path_buf(),
                key: ca.to_path_buf(),
                source,
            })?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key_path)) => {
                let chain = certs(TlsFileKind::Cert, cert)?;
                let k = key(key_path)?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|source| TlsError::Identity {
                        cert: cert.to_path_buf(),
                        key: key_path.to_path_buf(),
                        source,
                    })?
            }
        };
        config.resumption = Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    /// A session for a connection to `ip`, whose certificate must name that address.
    pub fn session(&self, ip: IpAddr) -> Result<TlsSession, TlsSessionError> {
        let name = ServerName::IpAddress(ip.into());
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(TlsSessionError::Setup)?;
        Ok(TlsSession::new(rustls::Connection::Client(conn)))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
