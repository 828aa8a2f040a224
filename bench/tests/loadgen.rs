//! Runs the `loadgen` binary briefly and checks its JSON report.

use std::process::Command;

fn run(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--duration-s", "0.5", "--warmup-s", "0.2", "--actors", "50"])
        .args(["--inflight", "8", "--json"])
        .args(extra)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object on stdout")
}

#[test]
fn closed_loop_ask_reports_throughput_and_latency() {
    let r = run(&[]);
    assert_eq!(r["op"], "ask");
    assert_eq!(r["mode"], "closed loop");
    assert_eq!(r["errors"], 0);
    assert!(r["ops"].as_u64().expect("ops") > 0);
    assert!(r["throughput_rps"].as_f64().expect("throughput") > 0.0);
    let p50 = r["p50_ns"].as_u64().expect("p50");
    let p99 = r["p99_ns"].as_u64().expect("p99");
    let max = r["max_ns"].as_u64().expect("max");
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{r}");
}

#[test]
fn open_loop_counts_exactly_the_requests_scheduled_in_the_window() {
    let r = run(&["--op", "tell", "--rate", "2000"]);
    assert_eq!(r["op"], "tell");
    assert_eq!(r["mode"], "open loop");
    assert_eq!(r["errors"], 0);
    // 2000 req/s over 2 shards: one request per ms per shard. The 0.5 s window holds the
    // requests scheduled in it, 500 per shard, whenever they complete: each is either
    // completed (`ops`) or still incomplete at the hard stop (`late`), none dropped, none
    // from the warm-up. (Rounding of the schedule can put one more or one less per shard.)
    let shards = r["shards"].as_u64().expect("shards");
    let counted = r["ops"].as_u64().expect("ops") + r["late"].as_u64().expect("late");
    let want = 500 * shards;
    assert!(
        counted.abs_diff(want) <= shards,
        "{counted} requests counted, {want} scheduled in the window"
    );
    // The machine line and commit travel with the figures.
    assert!(r["machine"]["cores"].as_u64().expect("cores") >= 1, "{r}");
    assert!(r["machine"]["commit"].is_string(), "{r}");
}

#[test]
fn a_bad_config_file_is_an_error_not_a_panic() {
    let path = std::env::temp_dir().join(format!("loadgen-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[node]\nshards = 0\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("loadgen runs");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.shards"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A CA and one certificate for 127.0.0.1 (server and client use), as PEM files in `dir`.
fn make_certs(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    std::fs::create_dir_all(dir).expect("cert dir");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "loadgen test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = p.self_signed(&ca_key).expect("ca");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca, &ca_key).expect("cert");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    std::fs::write(dir.join("node.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("node.key"), key.serialize_pem()).expect("write");
}

#[test]
fn target_over_tls_is_served_and_a_client_without_certificates_is_refused() {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
    make_certs(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nshards = 1\n[cluster]\ncluster_id = \"lg\"\nnode_id = 1\n\
             [[cluster.nodes]]\nid = 1\naddr = \"{addr}\"\n\
             [cluster.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            dir.join("ca.crt"),
            dir.join("node.crt"),
            dir.join("node.key")
        ),
    )
    .expect("write config");
    let node = quark::builtin::register_builtin(quark::Node::builder())
        .config_file(&config)
        .expect("config")
        .start()
        .expect("node starts");
    let r = run(&[
        "--target",
        &addr,
        "--cluster-id",
        "lg",
        "--tls-ca",
        dir.join("ca.crt").to_str().expect("utf-8"),
        "--tls-cert",
        dir.join("node.crt").to_str().expect("utf-8"),
        "--tls-key",
        dir.join("node.key").to_str().expect("utf-8"),
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().expect("ops") > 0, "{r}");
    assert!(
        r["target"].as_str().expect("target").starts_with("tcp+tls"),
        "{r}"
    );
    // The same node refuses a plaintext client, and loadgen says why.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--duration-s", "0.2", "--warmup-s", "0", "--json"])
        .args(["--target", &addr, "--cluster-id", "lg"])
        .output()
        .expect("loadgen runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS"), "{stderr}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
