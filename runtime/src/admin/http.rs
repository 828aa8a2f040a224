//! The admin endpoint's HTTP/1.1 server: one accept thread, a bounded number of requests
//! served at once, bounded request heads, one request per connection; over TLS 1.3 with
//! `admin.tls` (the node's certificate; client certificates required with
//! `admin.client_cert_required`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{AdminError, AdminTls, Phase, Shared, CONNECTIONS_MAX, IO_TIMEOUT, REQUEST_BYTES_MAX};

/// How long the accept thread lingers on a connection it refuses (over `CONNECTIONS_MAX`).
const REJECT_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The running server: its address, stop flag and accept thread.
pub(super) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Server {
    /// Binds `listen` and starts the accept thread.
    pub(super) fn start(
        listen: SocketAddr,
        tls: Option<AdminTls>,
        shared: Arc<Shared>,
    ) -> Result<Server, AdminError> {
        let listener = TcpListener::bind(listen).map_err(|source| AdminError::Bind {
            addr: listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: listen,
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("quark-admin".into())
            .spawn(move || accept_loop(listener, tls, shared, stop2))
            .map_err(AdminError::Thread)?;
        Ok(Server { addr, stop, accept })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for the requests being served (each bounded by `IO_TIMEOUT`
    /// for its reads and writes) and joins the accept thread.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocked `accept` with a connection of our own; the loop sees the flag.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.addr.port())
            }
            _ => self.addr,
        };
        if let Err(e) = TcpStream::connect_timeout(&wake, IO_TIMEOUT) {
            // The accept thread stays blocked; leave it rather than hang the shutdown.
            tracing::warn!(addr = %wake, error = %e, "cannot wake the admin endpoint's thread; leaving it");
            return;
        }
        if self.accept.join().is_err() {
            tracing::error!("the admin endpoint's thread panicked");
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<AdminTls>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::with_capacity(CONNECTIONS_MAX);
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let (done, running): (Vec<_>, Vec<_>) = workers.drain(..).partition(|w| w.is_finished());
        workers = running;
        for w in done {
            let _ = w.join();
        }
        if busy.load(Ordering::Acquire) >= CONNECTIONS_MAX {
            // Answered here, with short deadlines: the accept thread waits at most
            // REJECT_LINGER for this client.
            let mut s = stream;
            let _ = s.set_write_timeout(Some(REJECT_LINGER));
            let _ = s.set_read_timeout(Some(REJECT_LINGER));
            let _ = write_response(&mut s, 503, "text/plain", b"too many admin connections\n");
            linger_close(s);
            continue;
        }
        let shared = shared.clone();
        busy.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(busy.clone());
        let tls = tls.clone();
        match std::thread::Builder::new()
            .name("quark-admin-conn".into())
            .spawn(move || match tls {
                None => serve_connection(stream, &shared, slot),
                Some(t) => serve_tls(stream, &t, &shared, slot),
            }) {
            Ok(h) => workers.push(h),
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: cannot start a connection thread")
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// A parsed request head: what the router needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    /// What follows `?` in the target (without a `#` fragment); empty if none.
    pub(super) query: String,
}

/// Why a request head was not read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Over `REQUEST_BYTES_MAX` bytes without the blank line that ends a head.
    TooLarge,
    /// Not `METHOD SP TARGET SP HTTP/1.x`.
    Malformed,
    /// The peer closed, stalled past `IO_TIMEOUT`, or the socket failed.
    Gone,
}

/// Reads one request head (at most `REQUEST_BYTES_MAX` bytes).
pub(super) fn read_head(r: &mut impl Read) -> Result<Request, HeadError> {
    let mut buf = vec![0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = r.read(&mut buf[len..]).map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        len += n;
        if let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            return parse_head(&buf[..end]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let head = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = head.split("\r\n").next().ok_or(HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
    })
}

/// One of the `CONNECTIONS_MAX` connection slots: given back on drop. A connection gives it
/// back *before* it closes its socket, so a client that saw its answer end can connect again
/// at once (counting finished threads instead refused a fast sequential client with 503 while
/// the previous threads were still exiting).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one HTTPS connection: the TLS handshake, then the request as over plain HTTP. A
/// client that speaks plain HTTP gets a plain `400` saying the endpoint wants HTTPS; a
/// refused handshake (no client certificate where one is required, one not signed by the
/// CA, a revoked one) is logged with the client's address and the cause, and the client gets
/// TLS's alert.
fn serve_tls(stream: TcpStream, tls: &AdminTls, shared: &Shared, slot: Slot) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = stream.peer_addr().ok();
    let mut first = [0u8; 3];
    let plain = match stream.peek(&mut first) {
        Ok(n) if n >= first.len() => !quark_net::tls::looks_like_tls(&first),
        // A TLS record starts with its content type (22, a handshake); HTTP with a letter.
        Ok(n) if n > 0 => first[0] != 0x16,
        _ => return,
    };
    if plain {
        tracing::warn!(
            ?peer,
            "admin endpoint: a plain HTTP request to the HTTPS endpoint refused"
        );
        let mut s = stream;
        let _ = write_response(
            &mut s,
            400,
            "text/plain",
            b"this admin endpoint speaks HTTPS only (admin.tls = true): use https:// (quark: --ca)\n",
        );
        drop(slot);
        linger_close(s);
        return;
    }
    let sess = if tls.client_cert_required {
        tls.context.server_session()
    } else {
        tls.context.server_session_open()
    };
    let sess = match sess {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(?peer, error = %crate::ErrorChain(&e), "admin endpoint: no TLS session");
            return;
        }
    };
    let mut b = quark_net::tls::TlsBlocking::new(sess, stream);
    if let Err(e) = b.handshake() {
        tracing::warn!(?peer, error = %crate::ErrorChain(&e),
            "admin endpoint: TLS handshake refused");
        return;
    }
    let mut t = quark_net::tls::TlsStream(b);
    let req = match read_head(&mut t) {
        Ok(r) => r,
        Err(HeadError::Gone) => {
            // Also where a refused client certificate shows (TLS 1.3: after the handshake).
            tracing::debug!(?peer, "admin endpoint: TLS client gone before its request");
            return;
        }
        Err(HeadError::TooLarge) => {
            let _ = write_response(&mut t, 431, "text/plain", b"request head too large\n");
            t.0.close();
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = write_response(&mut t, 400, "text/plain", b"bad request\n");
            t.0.close();
            return;
        }
    };
    let (status, content_type, body) = route(&req, shared);
    let _ = if req.method == "HEAD" {
        write_head(&mut t, status, content_type, body.len())
    } else {
        write_response(&mut t, status, content_type, &body)
    };
    t.0.close();
    drop(slot);
    linger_close(t.0.into_inner());
}

fn serve_connection(mut stream: TcpStream, shared: &Shared, slot: Slot) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let req = match read_head(&mut stream) {
        Ok(r) => r,
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge) => {
            let _ = write_response(&mut stream, 431, "text/plain", b"request head too large\n");
            drop(slot);
            linger_close(stream);
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = write_response(&mut stream, 400, "text/plain", b"bad request\n");
            drop(slot);
            linger_close(stream);
            return;
        }
    };
    let (status, content_type, body) = route(&req, shared);
    let _ = if req.method == "HEAD" {
        // The head a GET would get (its Content-Length included), without the body.
        write_head(&mut stream, status, content_type, body.len())
    } else {
        write_response(&mut stream, status, content_type, &body)
    };
    drop(slot);
    linger_close(stream);
}

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers one request: `(status, content type, body)`.
fn route(req: &Request, shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    if req.path == "/quark/jobs" || req.path.starts_with("/quark/jobs/") {
        return super::jobs::route(req, shared); // GET and POST: see jobs.rs
    }
    if req.path == "/quark/workflows" || req.path.starts_with("/quark/workflows/") {
        return super::workflows::route(req, shared); // GET and POST: see workflows.rs
    }
    if req.path.starts_with("/quark/outbox/") {
        return super::outbox::route(req, shared);
    }
    if req.path == "/quark/reminders" || req.path.starts_with("/quark/reminders/") {
        return super::reminders::route(req, shared);
    }
    if req.path == "/quark/actors/where" || req.path == "/quark/actors/move" {
        return super::actors::placement_route(req, shared); // GET where, POST move
    }
    if req.method != "GET" && req.method != "HEAD" {
        return (405, "text/plain", b"only GET and HEAD\n".to_vec());
    }
    match req.path.as_str() {
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/readyz" => match shared.phase() {
            Phase::Ready => (200, "text/plain", b"ready\n".to_vec()),
            p => (
                503,
                "text/plain",
                format!("not ready: {}\n", p.name()).into_bytes(),
            ),
        },
        "/metrics" => match super::metrics::render(shared) {
            Ok(text) => (200, METRICS_CONTENT_TYPE, text.into_bytes()),
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: cannot encode the metrics");
                (500, "text/plain", b"cannot encode the metrics\n".to_vec())
            }
        },
        "/quark/shards" => {
            let report = super::shards::build(shared);
            match serde_json::to_vec(&report) {
                Ok(body) => (200, "application/json", body),
                Err(_) => (
                    500,
                    "text/plain",
                    b"cannot encode the shards report\n".to_vec(),
                ),
            }
        }
        "/quark/actors" => super::actors::list(shared, &req.query),
        "/quark/load" => super::load::serve(shared),
        "/quark/actors/counts" => super::actors::counts(shared),
        "/quark/status" => {
            let status = super::status::build(shared);
            match serde_json::to_vec_pretty(&status) {
                Ok(body) => (200, "application/json", body),
                Err(_) => (500, "text/plain", b"cannot encode the status\n".to_vec()),
            }
        }
        path => match super::dashboard::asset(path) {
            Some((content_type, body)) => (200, content_type, body.as_bytes().to_vec()),
            None => (404, "text/plain", b"not found\n".to_vec()),
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write_head(w, status, content_type, body.len())?;
    w.write_all(body)?;
    w.flush()
}

fn write_head(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    content_length: usize,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
    );
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Closes our side, then reads (and drops) what the client still sends, up to a bound, so
/// that unread bytes do not turn the close into a reset that destroys the response.
fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut left = 16 * REQUEST_BYTES_MAX;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let r = read_head(&mut &b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"[..]).unwrap();
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.method, "GET");
        assert_eq!(r.query, "x=1");
        let r =
            read_head(&mut &b"GET /quark/actors?type=a&limit=2#frag HTTP/1.1\r\n\r\n"[..]).unwrap();
        assert_eq!(
            (r.path.as_str(), r.query.as_str()),
            ("/quark/actors", "type=a&limit=2")
        );
        assert_eq!(
            read_head(&mut &b"GET /metrics\r\n\r\n"[..]),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            read_head(&mut &b"GET / HTTP/1.1\r\n"[..]),
            Err(HeadError::Gone)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(REQUEST_BYTES_MAX)
        );
        assert_eq!(read_head(&mut big.as_bytes()), Err(HeadError::TooLarge));
        // Just under the bound is read.
        let fits = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(REQUEST_BYTES_MAX - 40)
        );
        assert!(read_head(&mut fits.as_bytes()).is_ok());
    }
}
