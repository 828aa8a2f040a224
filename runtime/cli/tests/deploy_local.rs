//! The Kubernetes topology of `scripts/deploy/` (docs/DEPLOY.md) with processes: three "pods"
//! started through `scripts/deploy/entrypoint.sh` from `scripts/deploy/k8s/quark.toml.in`,
//! with membership in a real etcd, TLS on every connection (certificates with the shared
//! name the manifests use) and a cluster secret from the environment. Only what cannot exist
//! on one machine differs, rewritten in the rendered files: the ports (each pod its own), the
//! data and certificate directories, the etcd endpoint and the cluster id (unique per run).
//!
//! Asserted: every pod becomes ready (`/readyz` 200) and registers; a `Client` configured as
//! an application in the cluster would be (TLS, secret, members from etcd) gets every
//! migratable counter's exact count; SIGTERM to a pod drains it (its `/readyz` answers 503,
//! it leaves etcd, its actors keep their counts on the others); the pod started again with
//! its data directory joins again and serves.
//!
//! Needs the etcd of `scripts/etcd.sh` (`QUARK_TEST_ETCD`; scripts/test starts it) and the
//! cargo feature `etcd` of quark-cli: `cargo test -p quark-cli --features etcd --test
//! deploy_local`.
#![cfg(feature = "etcd")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../tests/ports/mod.rs"]
mod ports;
#[path = "procs/mod.rs"]
mod procs;
use ports::free_addrs;
use procs::Proc;

use quark::builtin::{Add, Tally};
use quark::Client;

const PODS: usize = 3;
const KEYS: u64 = 60;
const SECRET: &str = "deploy-local-test-secret-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A CA and one certificate with the manifests' shared name (`quark.internal`), for server
/// and client use, as the Secret `quark-tls` holds them.
fn make_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    std::fs::create_dir_all(dir).expect("cert dir");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "deploy test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = p.self_signed(&ca_key).expect("ca");
    let mut p = CertificateParams::new(vec!["quark.internal".to_owned()]).expect("params");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca, &ca_key).expect("cert");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
}

/// The manifests' template with what differs on one machine replaced: the certificate and
/// data directories, the etcd endpoints, the cluster id, and shorter timeouts for a test.
fn local_template(dir: &Path, etcd: &str, cluster_id: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("scripts/deploy/k8s/quark.toml.in"))
        .expect("read the template");
    let mut out = String::new();
    for line in text.lines() {
        if line.contains("/etc/quark/etcd-tls/") && etcd.starts_with("http://") {
            // The test's etcd is plain http: no TLS to it (etcd_membership.rs tests TLS).
            continue;
        }
        let line = if line.starts_with("endpoints = ") {
            format!("endpoints = [\"{etcd}\"]")
        } else if line.starts_with("cluster_id = ") {
            format!("cluster_id = \"{cluster_id}\"")
        } else if line.starts_with("shards = ") {
            "shards = 2\npin_threads = false\nidle_spin_us = 0".to_owned()
        } else if line.starts_with("shutdown_timeout_ms = ") {
            "shutdown_timeout_ms = 10000".to_owned()
        } else if line.starts_with("fsync = ") {
            "fsync = \"never\"".to_owned()
        } else {
            line.replace("/etc/quark/tls", &dir.join("tls").display().to_string())
                .replace(
                    "/var/lib/quark/data",
                    &dir.join("data-@NODE_ID@").display().to_string(),
                )
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join("quark.toml.in");
    std::fs::write(&path, out).expect("write the template");
    path
}

/// Starts pod `quark-<ordinal>` through the entrypoint, as the StatefulSet would.
fn start_pod(dir: &Path, template: &Path, ordinal: usize, port: u16, admin: u16) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("scripts/deploy/entrypoint.sh"))
        .env("QUARK_TEMPLATE", template)
        .env("QUARK_CONFIG", dir.join(format!("pod-{ordinal}.toml")))
        .env("QUARK_HOSTNAME", format!("quark-{ordinal}"))
        .env("POD_IP", "127.0.0.1")
        .env("QUARK_PORT", port.to_string())
        .env("QUARK_ADMIN_PORT", admin.to_string())
        .env("QUARK_APP_VERSION", "1.0.0")
        .env("QUARK_BIN", env!("CARGO_BIN_EXE_quark"))
        .env("QUARK_LOG_FORMAT", "text")
        .env("QUARK_CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "info");
    Proc::spawn(cmd)
}

fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/readyz`'s status (`None`: the endpoint does not answer).
fn readyz(admin: SocketAddr) -> Option<u16> {
    quark::admin::fetch(admin, "/readyz", Duration::from_secs(2))
        .ok()
        .map(|r| r.status)
}

fn wait_ready(pod: &Proc, admin: SocketAddr, name: &str) {
    eventually(&format!("{name} ready"), Duration::from_secs(30), || {
        (readyz(admin) == Some(200)).then_some(())
    });
    let _ = pod;
}

/// SIGTERM, then the exit within the grace the manifests give (60 s); the pod's log. The
/// readiness probe must see the drain: the first answer of `/readyz` after the signal that is
/// not 200 is 503 (the kubelet takes the pod out of the Service's endpoints then).
fn terminate(mut pod: Proc, admin: SocketAddr, name: &str) -> String {
    // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped yet.
    let r = unsafe { libc::kill(pod.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "SIGTERM to {name}");
    let end = Instant::now() + Duration::from_secs(60);
    let not_ready = loop {
        match readyz(admin) {
            Some(200) => assert!(
                Instant::now() < end,
                "{name}: still ready 60 s after SIGTERM"
            ),
            other => break other,
        }
    };
    assert_eq!(
        not_ready,
        Some(503),
        "{name}: /readyz after SIGTERM (None: it stopped answering without a 503 first)"
    );
    loop {
        match pod
            .stdout
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains("quark: stopped") => break,
            Ok(_) => {}
            Err(e) => panic!(
                "{name} did not stop within 60 s of SIGTERM ({e}):\n{}",
                pod.log()
            ),
        }
    }
    let status = pod.child.wait().expect("wait");
    let log = pod.log();
    assert!(status.success(), "{name} exited with {status}:\n{log}");
    log
}

#[test]
fn the_manifests_topology_serves_drains_and_rejoins_with_processes() {
    let Ok(etcd) = std::env::var("QUARK_TEST_ETCD") else {
        panic!("QUARK_TEST_ETCD is not set: run scripts/etcd.sh start (scripts/test does)");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(&dir.path().join("tls"));
    let cluster_id = format!("deploy-{}", std::process::id());
    let template = local_template(dir.path(), &etcd, &cluster_id);
    let addrs = free_addrs(2 * PODS);
    let (cluster, admin): (Vec<SocketAddr>, Vec<SocketAddr>) =
        (addrs[..PODS].to_vec(), addrs[PODS..].to_vec());
    let mut pods: Vec<Option<Proc>> = (0..PODS)
        .map(|i| {
            let p = start_pod(dir.path(), &template, i, cluster[i].port(), admin[i].port());
            wait_ready(&p, admin[i], &format!("quark-{i}"));
            Some(p)
        })
        .collect();

    // An application in the cluster: TLS with a client certificate, the secret, the members
    // from etcd (none listed).
    let tls = dir.path().join("tls");
    let client = Client::builder()
        .cluster_id(cluster_id.clone())
        .secret_env("QUARK_TEST_DEPLOY_SECRET")
        .tls_files(quark::tls::TlsFiles {
            server_name: Some("quark.internal".to_owned()),
            ..quark::tls::TlsFiles::new(
                tls.join("ca.crt"),
                tls.join("tls.crt"),
                tls.join("tls.key"),
            )
        })
        .etcd(vec![etcd.clone()], None)
        .message::<Add>();
    std::env::set_var("QUARK_TEST_DEPLOY_SECRET", SECRET);
    let client = client.connect().expect("the client connects");
    let mut counts = vec![0i64; KEYS as usize];
    let bump = |counts: &mut Vec<i64>| {
        for k in 0..KEYS {
            let v = eventually("an increment", Duration::from_secs(20), || {
                quark::block_on(client.actor_ref::<Tally>(k).ask(Add(1))).ok()
            });
            counts[k as usize] += 1;
            assert_eq!(v, counts[k as usize], "tally {k}");
        }
    };
    bump(&mut counts);

    // SIGTERM to the last pod (a rolling update or a scale down starts there): it drains.
    let last = PODS - 1;
    let pod = pods[last].take().expect("running");
    let log = terminate(pod, admin[last], "quark-2");
    assert!(
        log.contains("drained to the other nodes"),
        "quark-2 did not drain:\n{log}"
    );
    // Every counter kept its count on the others.
    bump(&mut counts);

    // The pod comes back (same ordinal, same data directory) and joins again.
    let p = start_pod(
        dir.path(),
        &template,
        last,
        cluster[last].port(),
        admin[last].port(),
    );
    wait_ready(&p, admin[last], "quark-2 again");
    pods[last] = Some(p);
    bump(&mut counts);
    assert!(counts.iter().all(|c| *c == 3));
    drop(client);
    for (i, p) in pods.into_iter().enumerate() {
        if let Some(p) = p {
            terminate(p, admin[i], &format!("quark-{i}"));
        }
    }
}
