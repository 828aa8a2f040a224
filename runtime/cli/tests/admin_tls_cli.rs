//! `quark status` against an HTTPS admin endpoint (`[admin] tls = true`,
//! `client_cert_required = true`): with `--ca`, `--cert`, `--cert-key` it prints the status;
//! without `--ca` it fails saying the endpoint speaks HTTPS only; without a client
//! certificate it fails naming the refusal.

use std::path::Path;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

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
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
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
}

#[test]
fn quark_status_talks_https_with_its_tls_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ca = Ca::new("cluster CA");
    ca.write(&p.join("ca.crt"));
    ca.issue(p, "node");
    ca.issue(p, "operator");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let d = p.display();
    let text = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"cli-tls\"\nnode_id = 1\nlisten = \"{listen}\"\n\
         nodes = [{{ id = 1, addr = \"{listen}\" }}]\n\
         [cluster.tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node.crt\"\nkey = \"{d}/node.key\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntls = true\nclient_cert_required = true\n"
    );
    let config = quark::NodeConfig::from_toml(&text, "cli-tls.toml").expect("config");
    let node = quark::Node::builder()
        .config(config)
        .start()
        .expect("node starts");
    let addr = node.admin_addr().expect("admin endpoint").to_string();
    let quark = env!("CARGO_BIN_EXE_quark");
    let run = |extra: &[&str]| {
        let out = Command::new(quark)
            .args(["status", "--addr", &addr, "--json"])
            .args(extra)
            .env_remove("QUARK_ADMIN_CA")
            .env_remove("QUARK_ADMIN_CERT")
            .env_remove("QUARK_ADMIN_KEY")
            .output()
            .expect("quark runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca_path = p.join("ca.crt").display().to_string();
    let cert = p.join("operator.crt").display().to_string();
    let key = p.join("operator.key").display().to_string();
    let (ok, out, err) = run(&["--ca", &ca_path, "--cert", &cert, "--cert-key", &key]);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("\"node_id\""), "{out}");
    let (ok, out, err) = run(&[]);
    assert!(!ok, "plain HTTP to an HTTPS endpoint fails: {out}");
    assert!(err.contains("speaks HTTPS only"), "{err}");
    let (ok, _, err) = run(&["--ca", &ca_path]);
    assert!(!ok, "no client certificate: refused");
    assert!(err.contains("CertificateRequired"), "{err}");
    node.shutdown();
}
