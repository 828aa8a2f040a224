//! The admin endpoint over HTTPS (`[admin] tls = true`, `client_cert_required = true`;
//! docs/CONFIG.md, `[admin]`): a client with a certificate of the cluster's CA is served; a
//! plain HTTP request gets a clear `400`; a client without a certificate, or with one of
//! another CA, is refused by TLS (and the node logs why). Certificates are made here (rcgen).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

mod ports;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    /// Writes `<dir>/<name>.crt` and `.key`, for 127.0.0.1 (server and client use).
    fn issue(&self, dir: &Path, name: &str) {
        self.issue_serial(dir, name, None)
    }

    fn issue_serial(&self, dir: &Path, name: &str, serial: Option<u64>) {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        p.serial_number = serial.map(Into::into);
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("signed");
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write");
    }

    /// Writes a revocation list of this CA naming `serials`.
    fn write_crl(&self, path: &Path, serials: &[u64]) {
        let p = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = p.signed_by(&self.cert, &self.key).expect("CRL");
        std::fs::write(path, crl.pem().expect("CRL PEM")).expect("write");
    }
}

fn start(dir: &Path, required: bool) -> quark::Node {
    start_with(dir, required, "")
}

/// `extra`: more `[cluster.tls]` lines.
fn start_with(dir: &Path, required: bool, extra: &str) -> quark::Node {
    let listen = ports::free_addrs(1)[0];
    let d = dir.display();
    let text = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"admin-tls\"\nnode_id = 1\nlisten = \"{listen}\"\n\
         nodes = [{{ id = 1, addr = \"{listen}\" }}]\n\
         [cluster.tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node.crt\"\nkey = \"{d}/node.key\"\n{extra}\
         [admin]\nlisten = \"127.0.0.1:0\"\ntls = true\nclient_cert_required = {required}\n"
    );
    let config = quark::NodeConfig::from_toml(&text, "admin-tls.toml").expect("config");
    quark::Node::builder()
        .config(config)
        .start()
        .unwrap_or_else(|e| panic!("node starts: {}", quark::ErrorChain(&e)))
}

/// `GET /healthz` over TLS with `client`; the response text, or the error's chain.
fn get_tls(addr: SocketAddr, client: &quark::tls::TlsClient) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let sess = client.session(addr.ip()).map_err(|e| e.to_string())?;
    let mut t = quark::tls::TlsBlocking::new(sess, s);
    let chain = |e: quark::tls::TlsIoError| quark::ErrorChain(&e).to_string();
    t.handshake().map_err(chain)?;
    t.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(chain)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = t.read(&mut buf).map_err(chain)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn https_admin_serves_a_known_client_and_refuses_plain_http_and_unknown_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    ca.issue(p, "operator");
    let other = Ca::new("someone else's CA");
    other.write(&p.join("other-ca.crt"));
    other.issue(p, "stranger");
    let node = start(p, true);
    let addr = node.admin_addr().expect("admin endpoint");

    // A plain HTTP request: a clear 400, nothing served.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /quark/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut plain = String::new();
    let _ = s.read_to_string(&mut plain);
    assert!(plain.starts_with("HTTP/1.1 400 "), "{plain}");
    assert!(plain.contains("speaks HTTPS only"), "{plain}");
    assert!(!plain.contains("\"peers\""), "no status served: {plain}");

    // A client with a certificate of the cluster's CA: served.
    let operator = quark::tls::TlsClient::load(
        &p.join("ca.crt"),
        Some((&p.join("operator.crt"), &p.join("operator.key"))),
    )
    .expect("client files");
    let ok = get_tls(addr, &operator).expect("the operator is served");
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert!(ok.ends_with("ok\n"), "{ok}");

    // No client certificate where one is required: refused by TLS.
    let anonymous = quark::tls::TlsClient::load(&p.join("ca.crt"), None).expect("ca");
    let e = get_tls(addr, &anonymous).expect_err("a client without a certificate is refused");
    eprintln!("no client certificate: {e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A certificate of another CA: refused by TLS, naming the unknown issuer.
    let stranger = quark::tls::TlsClient::load(
        &p.join("ca.crt"),
        Some((&p.join("stranger.crt"), &p.join("stranger.key"))),
    )
    .expect("client files");
    let e = get_tls(addr, &stranger).expect_err("an unknown client certificate is refused");
    eprintln!("unknown client certificate: {e}");
    assert!(
        e.contains("UnknownCA") || e.contains("UnknownIssuer") || e.contains("unknown"),
        "{e}"
    );

    // A client that does not trust the node's CA refuses the endpoint.
    let wrong_trust = quark::tls::TlsClient::load(&p.join("other-ca.crt"), None).expect("ca");
    let e = get_tls(addr, &wrong_trust).expect_err("the node's certificate is not trusted");
    assert!(e.contains("UnknownIssuer"), "{e}");

    // The library client (what the `quark` CLI uses with --ca/--cert/--cert-key).
    assert!(quark::admin::set_client_tls(operator));
    let r = quark::admin::fetch(addr, "/healthz", Duration::from_secs(5)).expect("fetch");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    node.shutdown();
}

#[test]
fn https_admin_without_required_client_certificates_serves_a_client_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    let node = start(p, false);
    let addr = node.admin_addr().expect("admin endpoint");
    let anonymous = quark::tls::TlsClient::load(&p.join("ca.crt"), None).expect("ca");
    let ok = get_tls(addr, &anonymous).expect("served without a client certificate");
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    node.shutdown();
}

#[test]
fn admin_tls_without_cluster_tls_is_refused_with_the_key() {
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\ntls = true\n";
    let e = quark::NodeConfig::from_toml(text, "a.toml").expect_err("refused");
    let msg = quark::ErrorChain(&e).to_string();
    assert!(
        msg.contains("admin.tls") && msg.contains("[cluster.tls]"),
        "{msg}"
    );
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\nclient_cert_required = true\n";
    let e = quark::NodeConfig::from_toml(text, "a.toml").expect_err("refused");
    let msg = quark::ErrorChain(&e).to_string();
    assert!(msg.contains("admin.client_cert_required"), "{msg}");
}

#[test]
fn a_revoked_client_certificate_is_refused_naming_the_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    ca.issue_serial(p, "operator", Some(41));
    ca.issue_serial(p, "former", Some(42));
    ca.write_crl(&p.join("revoked.crl"), &[42]);
    let crls = format!("crls = [\"{}/revoked.crl\"]\n", p.display());
    let node = start_with(p, true, &crls);
    let addr = node.admin_addr().expect("admin endpoint");
    let client = |name: &str| {
        quark::tls::TlsClient::load(
            &p.join("ca.crt"),
            Some((
                &p.join(format!("{name}.crt")),
                &p.join(format!("{name}.key")),
            )),
        )
        .expect("client files")
    };
    let ok = get_tls(addr, &client("operator")).expect("a certificate not listed is served");
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    let e = get_tls(addr, &client("former")).expect_err("a revoked certificate is refused");
    assert!(
        e.contains("CertificateRevoked") && e.contains("revoked"),
        "{e}"
    );
    node.shutdown();
}

#[test]
fn a_missing_crl_file_fails_the_config_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    let d = p.display();
    let text = format!(
        "[cluster]\ncluster_id = \"c\"\nnode_id = 1\nlisten = \"127.0.0.1:1\"\n\
         nodes = [{{ id = 1, addr = \"127.0.0.1:1\" }}]\n\
         [cluster.tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node.crt\"\nkey = \"{d}/node.key\"\n\
         crls = [\"{d}/gone.crl\"]\n"
    );
    let e = quark::NodeConfig::from_toml(&text, "c.toml").expect_err("refused");
    let msg = quark::ErrorChain(&e).to_string();
    assert!(
        msg.contains("gone.crl") && msg.contains("revocation list"),
        "{msg}"
    );
}

#[test]
fn a_peer_with_a_revoked_certificate_is_refused_on_the_cluster_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    ca.issue_serial(p, "peer", Some(51));
    ca.issue_serial(p, "retired", Some(52));
    ca.write_crl(&p.join("revoked.crl"), &[52]);
    let crls = format!("crls = [\"{}/revoked.crl\"]\n", p.display());
    let node = start_with(p, true, &crls);
    let cluster_addr = node.listen_addr().expect("cluster listener");
    let probe = |name: &str| {
        let files = quark::tls::TlsFiles::new(
            p.join("ca.crt"),
            p.join(format!("{name}.crt")),
            p.join(format!("{name}.key")),
        );
        let ctx = quark::tls::TlsContext::load(files).expect("peer files");
        // Node id 2 presents itself as a member of the same cluster (no secret configured).
        let cfg = quark::HandshakeConfig::member("admin-tls", 2, None);
        quark::probe_with(cluster_addr, cfg, Some(&ctx), Duration::from_secs(5))
            .map_err(|e| quark::ErrorChain(&e).to_string())
    };
    // A certificate not listed gets through TLS (the Quark handshake may then answer as it
    // will: node 2 is not a configured member); the revoked one never gets past TLS.
    let ok = probe("peer");
    if let Err(e) = &ok {
        assert!(!e.contains("Revoked") && !e.contains("TLS"), "{e}");
    }
    let e = probe("retired").expect_err("a revoked peer is refused");
    assert!(e.contains("CertificateRevoked"), "{e}");
    node.shutdown();
}
