//! Sessions between two contexts in memory (no sockets), with certificates made by rcgen at
//! test time: mutual authentication, each refusal with its message on both sides, reload.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA made at test time.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// A node certificate for 127.0.0.1 (PEM cert, PEM key), `days` valid from yesterday
    /// (negative: expired).
    pub(crate) fn issue(&self, name: &str, serial: u64, days: i64) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
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
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A revocation list (PEM) of this CA naming the certificates of `serials`.
    pub(crate) fn crl(&self, serials: &[u64]) -> String {
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
        p.signed_by(&self.cert, &self.key)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }
}

/// Writes `ca`, `cert`, `key` into `dir` under `name`; returns the files.
fn files(dir: &Path, name: &str, ca: &str, cert: &(String, String)) -> TlsFiles {
    let (c, k, a) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}-ca.crt")),
    );
    std::fs::write(&a, ca).expect("write ca");
    std::fs::write(&c, &cert.0).expect("write cert");
    std::fs::write(&k, &cert.1).expect("write key");
    let mut f = TlsFiles::new(a, c, k);
    f.reload_interval = Duration::ZERO;
    f
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "quark-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Moves `from`'s ciphertext to `to` and processes it there.
fn pass(from: &mut TlsSession, to: &mut TlsSession) -> Result<(), TlsSessionError> {
    let mut v = Vec::new();
    from.write_tls(&mut v).expect("write to a Vec");
    let mut off = 0;
    while off < v.len() {
        let space = to.recv_space();
        let n = space.len().min(v.len() - off);
        space[..n].copy_from_slice(&v[off..off + n]);
        to.received(n);
        off += n;
        to.process_received()?;
    }
    Ok(())
}

/// Runs a handshake and one message each way; returns (client outcome, server outcome).
fn run(
    client: &TlsContext,
    server: &TlsContext,
) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
    let mut c = client
        .client_session("127.0.0.1".parse().expect("ip"))
        .expect("client session");
    let mut s = server.server_session().expect("server session");
    c.write_plain(b"ping").expect("queue");
    let (mut ce, mut se) = (None, None);
    for _ in 0..6 {
        if se.is_none() {
            if let Err(e) = pass(&mut c, &mut s) {
                se = Some(e.to_string());
            }
        }
        if ce.is_none() {
            if let Err(e) = pass(&mut s, &mut c) {
                ce = Some(e.to_string());
            }
        }
    }
    let mut buf = [0u8; 16];
    let server_got = match (se, s.read_plain(&mut buf)) {
        (Some(e), _) => Err(e),
        (None, Ok(PlainRead::Data(n))) => Ok(buf[..n].to_vec()),
        (None, r) => Err(format!("no data: {r:?}")),
    };
    if server_got.is_ok() {
        s.write_plain(b"pong").expect("queue");
        if let Err(e) = pass(&mut s, &mut c) {
            ce.get_or_insert(e.to_string());
        }
    }
    let client_got = match (ce, c.read_plain(&mut buf)) {
        (Some(e), _) => Err(e),
        (None, Ok(PlainRead::Data(n))) => Ok(buf[..n].to_vec()),
        (None, Err(e)) => Err(e.to_string()),
        (None, r) => Err(format!("no data: {r:?}")),
    };
    (client_got, server_got)
}

fn pair(ca: &Ca, dir: &Path) -> (Arc<TlsContext>, Arc<TlsContext>) {
    let a = TlsContext::load(files(dir, "a", &ca.pem(), &ca.issue("a", 1, 30))).expect("a");
    let b = TlsContext::load(files(dir, "b", &ca.pem(), &ca.issue("b", 2, 30))).expect("b");
    (a, b)
}

#[test]
fn mutual_tls_carries_data_both_ways() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let (a, b) = pair(&ca, &dir);
    let (c, s) = run(&a, &b);
    assert_eq!(c.expect("client"), b"pong");
    assert_eq!(s.expect("server"), b"ping");
}

#[test]
fn a_server_from_another_ca_is_refused_on_both_sides() {
    let dir = tempdir();
    let (ca, other) = (Ca::new("ca"), Ca::new("other"));
    let client = TlsContext::load(files(&dir, "c", &ca.pem(), &ca.issue("c", 1, 30))).unwrap();
    // The server trusts `ca` (so it would accept the client) but its own cert is from `other`.
    let server = TlsContext::load(files(&dir, "s", &ca.pem(), &other.issue("s", 2, 30))).unwrap();
    let (c, s) = run(&client, &server);
    let (c, s) = (
        c.expect_err("client refuses"),
        s.expect_err("server refused"),
    );
    assert!(
        c.contains("certificate is refused") && c.contains("UnknownIssuer"),
        "{c}"
    );
    assert!(
        s.contains("refused the TLS handshake") && s.contains("signed by another CA"),
        "{s}"
    );
}

#[test]
fn a_client_from_another_ca_is_refused_on_both_sides() {
    let dir = tempdir();
    let (ca, other) = (Ca::new("ca"), Ca::new("other"));
    let client = TlsContext::load(files(&dir, "c", &ca.pem(), &other.issue("c", 1, 30))).unwrap();
    let server = TlsContext::load(files(&dir, "s", &ca.pem(), &ca.issue("s", 2, 30))).unwrap();
    let (c, s) = run(&client, &server);
    let (c, s) = (
        c.expect_err("client refused"),
        s.expect_err("server refuses"),
    );
    assert!(
        s.contains("certificate is refused") && s.contains("UnknownIssuer"),
        "{s}"
    );
    assert!(c.contains("refused the TLS handshake"), "{c}");
}

#[test]
fn an_expired_certificate_is_refused_on_both_sides() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let client = TlsContext::load(files(&dir, "c", &ca.pem(), &ca.issue("c", 1, -1))).unwrap();
    let server = TlsContext::load(files(&dir, "s", &ca.pem(), &ca.issue("s", 2, 30))).unwrap();
    let (c, s) = run(&client, &server);
    let (c, s) = (
        c.expect_err("client refused"),
        s.expect_err("server refuses"),
    );
    assert!(
        s.contains("certificate is refused") && s.contains("expired"),
        "{s}"
    );
    assert!(c.contains("has expired"), "{c}");
}

#[test]
fn a_plaintext_peer_is_named() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let (_, server) = pair(&ca, &dir);
    let mut s = server.server_session().unwrap();
    let mut out = crate::frame::OutBuf::new();
    out.push_empty(crate::frame::FrameHead::new(
        crate::frame::FrameKind::Heartbeat,
    ))
    .unwrap();
    let bytes = out.pending();
    s.recv_space()[..bytes.len()].copy_from_slice(bytes);
    s.received(bytes.len());
    let e = s.process_received().expect_err("refused");
    assert!(matches!(e, TlsSessionError::PlaintextPeer), "{e}");
    // What the plaintext side reads back is recognizably TLS.
    let mut v = Vec::new();
    s.write_tls(&mut v).unwrap();
    assert!(looks_like_tls(&v), "{v:?}");
}

#[test]
fn missing_and_invalid_files_name_the_path() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let mut f = files(&dir, "a", &ca.pem(), &ca.issue("a", 1, 30));
    f.key = dir.join("nope.key");
    let e = TlsContext::load(f.clone()).expect_err("missing key");
    assert!(
        matches!(
            e,
            TlsError::Read {
                kind: TlsFileKind::Key,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nope.key"), "{e}");
    // A certificate where the key should be.
    f.key = f.cert.clone();
    let e = TlsContext::load(f.clone()).expect_err("no key in it");
    assert!(
        matches!(
            e,
            TlsError::NoPem {
                kind: TlsFileKind::Key,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("a.crt"), "{e}");
    // Garbage as the CA.
    let bad = dir.join("bad-ca.crt");
    std::fs::write(&bad, "not a pem file").unwrap();
    let mut g = files(&dir, "b", &ca.pem(), &ca.issue("b", 1, 30));
    g.ca = bad;
    let e = TlsContext::load(g).expect_err("no CA in it");
    assert!(e.to_string().contains("bad-ca.crt"), "{e}");
    // A key that is not the certificate's.
    let other = ca.issue("c", 3, 30);
    std::fs::write(&f.cert, ca.issue("a", 1, 30).0).unwrap();
    f.key = dir.join("c.key");
    std::fs::write(&f.key, other.1).unwrap();
    let e = TlsContext::load(f).expect_err("mismatch");
    assert!(matches!(e, TlsError::Identity { .. }), "{e}");
}

#[test]
fn a_rotated_certificate_is_used_by_new_sessions() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let (client, server) = pair(&ca, &dir);
    let old = server.fingerprint();
    let mut s1 = client.client_session("127.0.0.1".parse().unwrap()).unwrap();
    let mut v1 = server.server_session().unwrap();
    for _ in 0..3 {
        pass(&mut s1, &mut v1).unwrap();
        pass(&mut v1, &mut s1).unwrap();
    }
    let first = s1.peer_certificate().expect("peer cert").to_vec();
    // Rotate: a new key and certificate from the same CA, written as new files and renamed
    // into place (as an operator or cert-manager does).
    let (cert, key) = ca.issue("b-rotated", 99, 30);
    let f = server.files().clone();
    std::fs::write(dir.join("new.crt"), &cert).unwrap();
    std::fs::write(dir.join("new.key"), &key).unwrap();
    std::fs::rename(dir.join("new.key"), &f.key).unwrap();
    std::fs::rename(dir.join("new.crt"), &f.cert).unwrap();
    let mut s2 = client.client_session("127.0.0.1".parse().unwrap()).unwrap();
    let mut v2 = server.server_session().unwrap();
    for _ in 0..3 {
        pass(&mut s2, &mut v2).unwrap();
        pass(&mut v2, &mut s2).unwrap();
    }
    let second = s2.peer_certificate().expect("peer cert").to_vec();
    assert_ne!(server.fingerprint(), old);
    let pem = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(
        second,
        pem.as_ref(),
        "the new session presents the new certificate"
    );
    assert_ne!(first, second);
    // The old session still carries data.
    s1.write_plain(b"still here").unwrap();
    pass(&mut s1, &mut v1).unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(v1.read_plain(&mut buf).unwrap(), PlainRead::Data(10));
    // A half-written rotation (a key that does not match) keeps the current certificate.
    std::fs::write(&f.key, ca.issue("x", 5, 30).1).unwrap();
    assert!(server.reload_if_changed().is_err());
    assert_eq!(second, {
        let mut s3 = client.client_session("127.0.0.1".parse().unwrap()).unwrap();
        let mut v3 = server.server_session().unwrap();
        for _ in 0..3 {
            pass(&mut s3, &mut v3).unwrap();
            pass(&mut v3, &mut s3).unwrap();
        }
        s3.peer_certificate().unwrap().to_vec()
    });
}

#[test]
fn a_tampered_record_is_refused() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let (a, b) = pair(&ca, &dir);
    let mut c = a.client_session("127.0.0.1".parse().unwrap()).unwrap();
    let mut s = b.server_session().unwrap();
    for _ in 0..3 {
        pass(&mut c, &mut s).unwrap();
        pass(&mut s, &mut c).unwrap();
    }
    c.write_plain(b"transfer 100 to alice").unwrap();
    let mut v = Vec::new();
    c.write_tls(&mut v).unwrap();
    let last = v.len() - 20;
    v[last] ^= 1;
    s.recv_space()[..v.len()].copy_from_slice(&v);
    s.received(v.len());
    let mut buf = [0u8; 64];
    let e = s.read_plain(&mut buf).expect_err("refused");
    assert!(
        matches!(e, TlsSessionError::Protocol(rustls::Error::DecryptError)),
        "{e:?}"
    );
}

#[test]
fn a_revoked_client_certificate_is_refused_naming_the_revocation() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let client = TlsContext::load(files(&dir, "c", &ca.pem(), &ca.issue("c", 7, 30))).unwrap();
    let crl = dir.join("revoked.crl");
    std::fs::write(&crl, ca.crl(&[7])).expect("write crl");
    let mut sf = files(&dir, "s", &ca.pem(), &ca.issue("s", 8, 30));
    sf.crls = vec![crl.clone()];
    let server = TlsContext::load(sf).unwrap();
    let (c, s) = run(&client, &server);
    let (c, s) = (
        c.expect_err("client refused"),
        s.expect_err("server refuses"),
    );
    assert!(
        s.contains("Revoked") && s.contains("revocation list"),
        "{s}"
    );
    assert!(
        c.contains("CertificateRevoked") && c.contains("revoked"),
        "{c}"
    );
    // A list that names another serial: served.
    std::fs::write(&crl, ca.crl(&[99])).expect("rewrite crl");
    assert!(
        server.reload_if_changed().expect("reload"),
        "the CRL file changed"
    );
    let (c, s) = run(&client, &server);
    assert_eq!(c.expect("client"), b"pong");
    assert_eq!(s.expect("server"), b"ping");
}

#[test]
fn a_revoked_server_certificate_is_refused_by_the_dialer() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let crl = dir.join("revoked.crl");
    std::fs::write(&crl, ca.crl(&[8])).expect("write crl");
    let mut cf = files(&dir, "c", &ca.pem(), &ca.issue("c", 7, 30));
    cf.crls = vec![crl];
    let client = TlsContext::load(cf).unwrap();
    let server = TlsContext::load(files(&dir, "s", &ca.pem(), &ca.issue("s", 8, 30))).unwrap();
    let (c, s) = run(&client, &server);
    let c = c.expect_err("client refuses");
    assert!(
        c.contains("Revoked") && c.contains("revocation list"),
        "{c}"
    );
    let s = s.expect_err("server refused");
    assert!(s.contains("CertificateRevoked"), "{s}");
}

#[test]
fn a_missing_or_invalid_crl_names_the_file() {
    let dir = tempdir();
    let ca = Ca::new("ca");
    let mut f = files(&dir, "c", &ca.pem(), &ca.issue("c", 7, 30));
    f.crls = vec![dir.join("nope.crl")];
    let e = TlsContext::load(f.clone())
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("revocation list") && e.contains("nope.crl"),
        "{e}"
    );
    let bad = dir.join("bad.crl");
    std::fs::write(&bad, ca.pem()).expect("write");
    f.crls = vec![bad];
    let e = TlsContext::load(f).expect_err("not a CRL").to_string();
    assert!(e.contains("bad.crl") && e.contains("X509 CRL"), "{e}");
}
