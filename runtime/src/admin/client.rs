//! A small client of the admin endpoint (for `quark status` and tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Status;

/// The largest response [`fetch`] reads.
const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// The TLS client of this process's admin requests (`None`: plain HTTP).
static CLIENT_TLS: std::sync::OnceLock<quark_net::tls::TlsClient> = std::sync::OnceLock::new();

/// Makes every later [`fetch`]/[`request`] of this process speak HTTPS with `tls` (the `quark`
/// CLI's `--ca`, `--cert`, `--key`, for an endpoint with `admin.tls = true`). Set once; false
/// if it was already set.
pub fn set_client_tls(tls: quark_net::tls::TlsClient) -> bool {
    CLIENT_TLS.set(tls).is_ok()
}

/// A response of the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header (empty if absent).
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// Why [`fetch`] or [`fetch_status`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Connecting, writing or reading failed (or timed out).
    #[error("admin endpoint {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the endpoint failed (its certificate is not signed by the CA
    /// given, or it refused this client's certificate, or it does not speak TLS).
    #[error("admin endpoint {addr}: TLS")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: quark_net::tls::TlsIoError,
    },
    /// The answer is not an HTTP response this client understands.
    #[error("admin endpoint {addr}: malformed HTTP response")]
    Malformed {
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The endpoint answered with a status other than 200.
    #[error("admin endpoint {addr}{path}: HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The status code.
        status: u16,
        /// The body (trimmed).
        body: String,
    },
    /// `/quark/status` did not hold a status document.
    #[error("admin endpoint {addr}: /quark/status is not a status document")]
    Json {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// `GET path` from the admin endpoint at `addr`; `timeout` bounds the connect and each read
/// and write. Any status code is returned as a [`Response`].
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, FetchError> {
    request(addr, "GET", path, timeout)
}

/// `method path` (no body) to the admin endpoint at `addr`, as [`fetch`] does a `GET`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    match CLIENT_TLS.get() {
        None => {
            s.write_all(head.as_bytes()).map_err(io)?;
            s.take(RESPONSE_BYTES_MAX)
                .read_to_end(&mut raw)
                .map_err(io)?;
        }
        Some(tls) => {
            let tls_err = |source| FetchError::Tls { addr, source };
            let sess = tls
                .session(addr.ip())
                .map_err(|e| tls_err(quark_net::tls::TlsIoError::Tls(e)))?;
            let mut t = quark_net::tls::TlsBlocking::new(sess, s);
            t.handshake().map_err(tls_err)?;
            t.write_all(head.as_bytes()).map_err(tls_err)?;
            let mut buf = [0u8; 16 * 1024];
            loop {
                // A refusal of this client's certificate arrives with the first read.
                let n = t.read(&mut buf).map_err(tls_err)?;
                if n == 0 || raw.len() as u64 >= RESPONSE_BYTES_MAX {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
    let text = String::from_utf8(raw).map_err(|_| FetchError::Malformed { addr })?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(FetchError::Malformed { addr })?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(FetchError::Malformed { addr })?;
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// The node's [`Status`] from `/quark/status`.
pub fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<Status, FetchError> {
    let path = "/quark/status";
    let r = fetch(addr, path, timeout)?;
    if r.status != 200 {
        return Err(FetchError::Status {
            addr,
            path: path.to_owned(),
            status: r.status,
            body: r.body.trim().to_owned(),
        });
    }
    serde_json::from_str(&r.body).map_err(|source| FetchError::Json { addr, source })
}
