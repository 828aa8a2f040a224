//! TLS 1.3 with mutual authentication on real sockets (issue 21): two nodes and a `Client`
//! answer asks over it; every refusal (wrong CA, expired certificate, a client without a
//! certificate, plaintext against TLS both ways) is named on both sides and serves nothing;
//! a rotated certificate is presented to new connections while open ones carry on.
//! Certificates are made at test time (rcgen); no key is committed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::builtin::{Add, Counter};
use quark::tls::{TlsBlocking, TlsContext, TlsFiles};
use quark::{CallError, Client, ClientError, ErrorChain, Node, NodeConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

// ---- certificates made at test time ----

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// (cert PEM, key PEM) for 127.0.0.1, valid for `days` from yesterday (negative: expired
    /// that many days ago).
    fn issue(&self, name: &str, serial: u64, days: i64) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, name);
        p.serial_number = Some(serial.into());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        if days >= 0 {
            p.not_before = (now - day).into();
            p.not_after = (now + day * days as u32).into();
        } else {
            p.not_before = (now - day * 10).into();
            p.not_after = (now - day * (-days) as u32).into();
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("quark-tls-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Writes the CA, cert and key of `name` into `dir`.
fn files(dir: &Path, name: &str, ca: &Ca, id: &(String, String)) -> TlsFiles {
    let (a, c, k) = (
        dir.join(format!("{name}-ca.crt")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&a, ca.cert.pem()).unwrap();
    std::fs::write(&c, &id.0).unwrap();
    std::fs::write(&k, &id.1).unwrap();
    let mut f = TlsFiles::new(a, c, k);
    f.reload_interval = Duration::ZERO;
    f
}

// ---- what the nodes log ----

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;
impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .init();
    });
}

fn log_len() -> usize {
    LOG.lock().unwrap().len()
}

/// Waits (polling, bounded) for a log line written after `from` that contains every part.
fn find_logged(from: usize, parts: &[&str]) -> Result<String, String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&LOG.lock().unwrap()[from..]).into_owned();
        if let Some(l) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            eprintln!("node: {l}");
            return Ok(l.to_owned());
        }
        if Instant::now() >= end {
            return Err(format!("no log line with {parts:?}; logged since:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn logged_since(from: usize, parts: &[&str]) -> String {
    find_logged(from, parts).unwrap_or_else(|e| panic!("{e}"))
}

// ---- nodes and clients ----

fn node_toml(id: u64, addrs: &[SocketAddr], tls: Option<&TlsFiles>) -> String {
    let mut t = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"tls\"\nnode_id = {id}\n\
         heartbeat_interval_ms = 100\nsuspect_after_ms = 1000\ndead_after_ms = 3000\n\
         reconnect_base_ms = 20\nreconnect_max_ms = 200\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        t.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    if let Some(f) = tls {
        t.push_str(&format!(
            "[cluster.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\nreload_interval_ms = 0\n",
            f.ca, f.cert, f.key
        ));
    }
    t
}

fn node(id: u64, addrs: &[SocketAddr], tls: Option<&TlsFiles>) -> Node {
    let config = NodeConfig::from_toml(&node_toml(id, addrs, tls), "tls.toml").unwrap();
    quark::builtin::register_builtin(Node::builder().config(config))
        .start()
        .unwrap()
}

fn client(addrs: &[SocketAddr], tls: Option<TlsFiles>) -> Result<Client, ClientError> {
    let mut b = quark::builtin::builtin_messages(Client::builder().cluster_id("tls"));
    for (i, a) in addrs.iter().enumerate() {
        b = b.node(i as u64 + 1, *a);
    }
    if let Some(f) = tls {
        b = b.tls_files(f);
    }
    b.require_all_nodes(true).connect()
}

/// (handshakes completed, requests received) over all shards of `n`.
fn served(n: &Node) -> (u64, u64) {
    n.stats()
        .unwrap()
        .iter()
        .filter_map(|s| s.net.as_ref())
        .fold((0, 0), |(h, r), s| {
            (h + s.peers.handshakes_ok, r + s.requests_in)
        })
}

/// Connections closed by `n` so far (a refused connection is one).
fn closes(n: &Node) -> u64 {
    n.stats()
        .unwrap()
        .iter()
        .filter_map(|s| s.net.as_ref())
        .map(|s| s.peers.closed_total())
        .sum()
}

/// Waits until `n` has closed more than `before` connections: the refusal was this node's (log
/// lines of the nodes of other tests in this binary cannot stand in for it).
fn closed_since(n: &Node, before: u64) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(5);
    while closes(n) <= before {
        if Instant::now() >= end {
            return Err(format!("the node closed no connection (still {before})"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_nodes_and_a_client_answer_asks_over_mutual_tls() {
    let dir = tempdir("ok");
    let ca = Ca::new("quark test CA");
    let addrs = free_addrs(2);
    let f1 = files(&dir.0, "n1", &ca, &ca.issue("node-1", 1, 30));
    let f2 = files(&dir.0, "n2", &ca, &ca.issue("node-2", 2, 30));
    let n1 = node(1, &addrs, Some(&f1));
    let n2 = node(2, &addrs, Some(&f2));
    // Node to node: node 1 adds to counters, some of which live on node 2.
    for key in 0..16u64 {
        eventually("an ask from node 1", || {
            quark::block_on(n1.actor_ref::<Counter>(key).ask(Add(0))).ok()
        });
        quark::block_on(n1.actor_ref::<Counter>(key).ask(Add(1))).unwrap();
    }
    let (_, remote_on_2) = served(&n2);
    assert!(remote_on_2 > 0, "node 2 served asks from node 1");
    // A client with its own certificate from the same CA.
    let fc = files(&dir.0, "c", &ca, &ca.issue("client", 3, 30));
    let c = client(&addrs, Some(fc)).expect("a TLS client connects");
    for key in 0..16u64 {
        let v = eventually("a client ask", || {
            quark::block_on(c.actor_ref::<Counter>(key).ask(Add(1))).ok()
        });
        assert_eq!(v, 2, "counter {key}: node 1's add and the client's");
    }
    c.shutdown();
    n1.shutdown();
    n2.shutdown();
}

/// A TLS client that presents no certificate, made with rustls directly (Quark's own
/// configuration always has one).
fn connect_without_certificate(addr: SocketAddr, ca: &Ca) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert.pem().as_bytes()).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    // The handshake completes on the client's side; the server's verdict comes as an alert.
    let _ = tls.write_all(b"QK");
    let mut buf = [0u8; 64];
    std::io::Read::read(&mut tls, &mut buf).map_err(|e| e.to_string())
}

/// A connection attempt that must be refused: what the client must say, what the node must
/// log.
struct Refusal<'a> {
    case: &'a str,
    client: &'a [&'a str],
    node: &'a [&'a str],
}

impl Refusal<'_> {
    /// Checks the outcome against `node` (log position and close count taken before the
    /// attempt); returns what is wrong. Every case is checked, so that a broken build shows
    /// each case that let a connection through.
    fn check(
        &self,
        node: &Node,
        (from, closed): (usize, u64),
        outcome: Result<Client, ClientError>,
    ) -> Option<String> {
        let e = match outcome {
            Ok(c) => {
                c.shutdown();
                return Some(format!("{}: the client connected", self.case));
            }
            Err(e) => ErrorChain(&e).to_string(),
        };
        eprintln!("{}: client: {e}", self.case);
        if let Some(p) = self.client.iter().find(|p| !e.contains(**p)) {
            return Some(format!(
                "{}: the client's error lacks {p:?}: {e}",
                self.case
            ));
        }
        find_logged(from, self.node)
            .and_then(|_| closed_since(node, closed))
            .err()
            .map(|e| format!("{}: {e}", self.case))
    }
}

#[test]
fn refusals_are_named_on_both_sides_and_serve_nothing() {
    capture_logs();
    let dir = tempdir("refuse");
    let (ca, other) = (Ca::new("quark test CA"), Ca::new("another CA"));
    let addrs = free_addrs(2);
    let n1 = node(
        1,
        &addrs[..1],
        Some(&files(&dir.0, "n1", &ca, &ca.issue("n1", 1, 30))),
    );
    let plain_addrs = [addrs[1]];
    let plain = node(1, &plain_addrs, None);
    let at = [addrs[0]];
    let refused = "refused an incoming connection";
    let mut wrong = Vec::new();

    // 1. The client's certificate is from another CA: the node refuses it.
    let from = (log_len(), closes(&n1));
    let c = client(
        &at,
        Some(files(&dir.0, "c1", &ca, &other.issue("c1", 2, 30))),
    );
    wrong.extend(
        Refusal {
            case: "client cert from another CA",
            client: &["refused the TLS handshake", "signed by another CA"],
            node: &[refused, "certificate is refused", "UnknownIssuer"],
        }
        .check(&n1, from, c),
    );

    // 2. The client trusts another CA only: it refuses the node's certificate.
    let from = (log_len(), closes(&n1));
    let c = client(
        &at,
        Some(files(&dir.0, "c2", &other, &other.issue("c2", 3, 30))),
    );
    wrong.extend(
        Refusal {
            case: "client trusts another CA",
            client: &["certificate is refused", "UnknownIssuer", "tls.ca"],
            node: &[refused, "refused the TLS handshake"],
        }
        .check(&n1, from, c),
    );

    // 3. An expired client certificate.
    let from = (log_len(), closes(&n1));
    let c = client(&at, Some(files(&dir.0, "c3", &ca, &ca.issue("c3", 4, -2))));
    wrong.extend(
        Refusal {
            case: "expired client certificate",
            client: &["has expired"],
            node: &[refused, "certificate is refused", "expired"],
        }
        .check(&n1, from, c),
    );

    // 4. A TLS client without a certificate.
    let (from, closed) = (log_len(), closes(&n1));
    match connect_without_certificate(addrs[0], &ca) {
        Ok(n) => wrong.push(format!("no client certificate: the client read {n} bytes")),
        Err(e) if !e.contains("CertificateRequired") => {
            wrong.push(format!("no client certificate: the client is told {e}"))
        }
        Err(_) => wrong.extend(
            find_logged(from, &[refused, "presented no certificate"])
                .and_then(|_| closed_since(&n1, closed))
                .err()
                .map(|e| format!("no client certificate: {e}")),
        ),
    }

    // 5. A plaintext client against the TLS node.
    let from = (log_len(), closes(&n1));
    let c = client(&at, None);
    wrong.extend(
        Refusal {
            case: "plaintext client, TLS node",
            client: &["the node speaks TLS and this client has no TLS configured"],
            node: &[refused, "speaks plaintext"],
        }
        .check(&n1, from, c),
    );

    // 6. A TLS client against a plaintext node.
    let from = (log_len(), closes(&plain));
    let c = client(
        &plain_addrs,
        Some(files(&dir.0, "c6", &ca, &ca.issue("c6", 5, 30))),
    );
    wrong.extend(
        Refusal {
            case: "TLS client, plaintext node",
            client: &["closed the connection during the TLS handshake"],
            node: &[refused, "the peer speaks TLS"],
        }
        .check(&plain, from, c),
    );

    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing was served: no handshake completed, no request arrived.
    assert_eq!(served(&n1), (0, 0), "the TLS node served nothing");
    assert_eq!(served(&plain), (0, 0), "the plaintext node served nothing");
    // The node itself works for a client with the right certificate.
    let good = client(&at, Some(files(&dir.0, "ok", &ca, &ca.issue("ok", 6, 30)))).unwrap();
    let v = quark::block_on(good.actor_ref::<Counter>(1u64).ask(Add(1))).unwrap();
    assert_eq!(v, 1);
    good.shutdown();
    n1.shutdown();
    plain.shutdown();
}

#[test]
fn a_node_from_another_ca_is_unreachable_and_says_why() {
    capture_logs();
    let dir = tempdir("peer");
    let (ca, other) = (Ca::new("quark test CA"), Ca::new("another CA"));
    let addrs = free_addrs(2);
    let from = log_len();
    let n1 = node(
        1,
        &addrs,
        Some(&files(&dir.0, "n1", &ca, &ca.issue("n1", 1, 30))),
    );
    let n2 = node(
        2,
        &addrs,
        Some(&files(&dir.0, "n2", &other, &other.issue("n2", 2, 30))),
    );
    // A key owned by node 2.
    let key = (0..1000u64)
        .find(|k| n1.actor_ref::<Counter>(*k).remote_node() == Some(2))
        .expect("some key lives on node 2");
    let e = eventually("node 1's link to node 2 to fail", || match quark::block_on(
        n1.actor_ref::<Counter>(key).ask(Add(1)),
    ) {
        Err(e @ CallError::NodeUnavailable { .. }) => {
            let s = ErrorChain(&e).to_string();
            s.contains("TLS").then_some(s)
        }
        _ => None,
    });
    assert!(
        e.contains("certificate is refused") || e.contains("refused the TLS handshake"),
        "{e}"
    );
    logged_since(from, &["cannot reach peer", "TLS with"]);
    logged_since(from, &["refused an incoming connection", "TLS with"]);
    assert_eq!(served(&n2).1, 0, "node 2 served nothing from node 1");
    assert_eq!(served(&n1).1, 0, "node 1 served nothing from node 2");
    n1.shutdown();
    n2.shutdown();
}

/// The certificate a node presents to a new connection (leaf, DER).
fn presented(addr: SocketAddr, client: &TlsContext) -> Vec<u8> {
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut t = TlsBlocking::new(client.client_session(addr.ip()).unwrap(), sock);
    t.handshake().unwrap();
    t.session().peer_certificate().unwrap().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn a_rotated_certificate_is_presented_to_new_connections() {
    let dir = tempdir("rotate");
    let ca = Ca::new("quark test CA");
    let addrs = free_addrs(1);
    let first = ca.issue("node-1 first", 10, 30);
    let f = files(&dir.0, "n1", &ca, &first);
    let n = node(1, &addrs, Some(&f));
    let fc = files(&dir.0, "c", &ca, &ca.issue("client", 3, 30));
    let c = client(&addrs, Some(fc.clone())).unwrap();
    let r = c.actor_ref::<Counter>(5u64);
    assert_eq!(quark::block_on(r.ask(Add(1))).unwrap(), 1);
    let probe = TlsContext::load(fc).unwrap();
    assert_eq!(presented(addrs[0], &probe), der(&first.0));
    // Rotate: a new key and certificate from the same CA, written aside and renamed over the
    // configured files (as cert-manager or an operator does).
    let second = ca.issue("node-1 second", 11, 30);
    std::fs::write(dir.0.join("new.key"), &second.1).unwrap();
    std::fs::write(dir.0.join("new.crt"), &second.0).unwrap();
    std::fs::rename(dir.0.join("new.key"), &f.key).unwrap();
    std::fs::rename(dir.0.join("new.crt"), &f.cert).unwrap();
    assert_eq!(
        presented(addrs[0], &probe),
        der(&second.0),
        "a new connection sees the new certificate"
    );
    // The client's connection, opened before the rotation, carries on.
    let (handshakes, _) = served(&n);
    assert_eq!(quark::block_on(r.ask(Add(1))).unwrap(), 2);
    assert_eq!(served(&n).0, handshakes, "no reconnection was needed");
    // And a new client connects against the new certificate.
    let c2 = client(
        &addrs,
        Some(files(&dir.0, "c2", &ca, &ca.issue("c2", 4, 30))),
    )
    .unwrap();
    assert_eq!(
        quark::block_on(c2.actor_ref::<Counter>(5u64).ask(Add(1))).unwrap(),
        3
    );
    c2.shutdown();
    c.shutdown();
    n.shutdown();
}

#[test]
fn tls_files_that_do_not_load_fail_the_configuration_naming_the_file() {
    let dir = tempdir("config");
    let ca = Ca::new("quark test CA");
    let f = files(&dir.0, "n1", &ca, &ca.issue("n1", 1, 30));
    let addrs = free_addrs(1);
    let err = |tls: &TlsFiles| -> String {
        let e = NodeConfig::from_toml(&node_toml(1, &addrs, Some(tls)), "tls.toml")
            .expect_err("refused");
        ErrorChain(&e).to_string()
    };
    let mut missing = f.clone();
    missing.key = dir.0.join("missing.key");
    let e = err(&missing);
    assert!(
        e.contains("tls.toml") && e.contains("tls.key") && e.contains("missing.key"),
        "{e}"
    );
    let mut swapped = f.clone();
    swapped.cert = f.key.clone();
    let e = err(&swapped);
    assert!(
        e.contains("tls.cert") && e.contains("no PEM CERTIFICATE"),
        "{e}"
    );
    let mut other_key = f.clone();
    other_key.key = dir.0.join("other.key");
    std::fs::write(&other_key.key, ca.issue("x", 9, 30).1).unwrap();
    let e = err(&other_key);
    assert!(e.contains("not usable together"), "{e}");
}

#[test]
fn with_tls_and_no_secret_a_node_may_listen_off_loopback() {
    let dir = tempdir("listen");
    let ca = Ca::new("quark test CA");
    let f = files(&dir.0, "n1", &ca, &ca.issue("n1", 1, 30));
    let addrs = free_addrs(1);
    let text = |tls: Option<&TlsFiles>| {
        node_toml(1, &addrs, tls).replace("node_id = 1\n", "node_id = 1\nlisten = \"0.0.0.0:0\"\n")
    };
    let plain = NodeConfig::from_toml(&text(None), "tls.toml").unwrap();
    let e = quark::builtin::register_builtin(Node::builder().config(plain))
        .start()
        .err()
        .expect("no secret, no TLS: loopback only");
    assert!(
        e.to_string().contains("without a cluster secret or TLS"),
        "{e}"
    );
    let with_tls = NodeConfig::from_toml(&text(Some(&f)), "tls.toml").unwrap();
    let n = quark::builtin::register_builtin(Node::builder().config(with_tls))
        .start()
        .expect("TLS: any address");
    assert!(n.listen_addr().is_some_and(|a| a.ip().is_unspecified()));
    n.shutdown();
}
