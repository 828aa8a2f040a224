//! Three `quark serve` processes on loopback ports, driven by a `Client`: asks to every node, a
//! node killed with SIGKILL (calls to its actors fail fast, the others go on), the node
//! restarted (it serves again), and handshakes refused for a wrong secret, cluster id and
//! protocol version, with the cause named on both sides.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../tests/ports/mod.rs"]
mod ports;
#[path = "procs/mod.rs"]
mod procs;
use ports::free_addrs;
use procs::Proc;

use quark::builtin::{Add, Counter};
use quark::{CallError, Client, ClientError, ClusterSecret, HandshakeConfig, PeerRole};

const SECRET: &str = "test-secret-0123456789";
const SECRET_VAR: &str = "QUARK_TEST_CLUSTER_SECRET";

fn write_config(dir: &Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    let mut text = format!(
        "[node]\nshards = 1\nidle_spin_us = 0\nshutdown_timeout_ms = 2000\n\n\
         [cluster]\ncluster_id = \"procs\"\nnode_id = 1\nsecret_env = \"{SECRET_VAR}\"\n\
         heartbeat_interval_ms = 20\nsuspect_after_ms = 100\ndead_after_ms = 300\n\
         reconnect_base_ms = 10\nreconnect_max_ms = 100\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "\n[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts node `id` and waits (at most 10 s) for its ready line; `Err(stderr)` if the process
/// exits first.
fn try_serve(config: &Path, id: u64) -> Result<Proc, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--node-id", &id.to_string()])
        .env(SECRET_VAR, SECRET)
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn(cmd);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match p.stdout.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => break,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The process exited before it was ready.
                let _ = p.child.wait();
                // Give the stderr reader a moment to collect the last line.
                std::thread::sleep(Duration::from_millis(50));
                return Err(p.log());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "node {id} did not print its ready line within 10 s; stderr:\n{}",
                p.log()
            ),
        }
    }
    Ok(p)
}

/// Starts node `id`, retrying (for up to 10 s) while its address is still held by the sockets
/// of a node killed just before on the same port (they linger until the peers close theirs).
fn serve(config: &Path, id: u64) -> Proc {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match try_serve(config, id) {
            Ok(p) => return p,
            Err(stderr) if stderr.contains("Address already in use") && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(stderr) => panic!("node {id} exited before it was ready; stderr:\n{stderr}"),
        }
    }
}

fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn client(addrs: &[SocketAddr]) -> Client {
    let mut b = Client::builder()
        .cluster_id("procs")
        .secret(Some(
            ClusterSecret::new(SECRET.as_bytes().to_vec(), "test").unwrap(),
        ))
        .transport(|n| {
            n.backoff.base = Duration::from_millis(10);
            n.backoff.max = Duration::from_millis(100);
        });
    for (i, a) in addrs.iter().enumerate() {
        b = b.node(i as u64 + 1, *a);
    }
    quark::builtin::builtin_messages(b).connect().unwrap()
}

/// A counter key whose owner is `node`.
fn key_on(c: &Client, node: u64) -> u64 {
    (0..10_000u64)
        .find(|k| c.actor_ref::<Counter>(*k).remote_node() == Some(node))
        .unwrap()
}

/// How soon after a node is killed calls to its actors must fail with `NodeUnavailable`: its
/// kernel closes its connections at once (the failure detector would take `dead_after`, 300 ms
/// here); 250 ms leaves room for a loaded machine.
const FAILOVER_MAX: Duration = Duration::from_millis(250);

#[test]
fn three_processes_kill_one_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let config = write_config(dir.path(), &addrs);
    let n1 = serve(&config, 1);
    let _n2 = serve(&config, 2);
    let n3 = serve(&config, 3);
    let c = client(&addrs);
    let refs: Vec<_> = (1..=3)
        .map(|n| c.actor_ref::<Counter>(key_on(&c, n)))
        .collect();
    for r in &refs {
        // Wait with a read (Add(0)): a retried write that timed out could have run twice.
        eventually("an ask to every node", Duration::from_secs(10), || {
            quark::block_on(r.ask(Add(0))).ok()
        });
        assert_eq!(quark::block_on(r.ask(Add(1))).unwrap(), 1);
    }
    // While node 3 is killed, a thread keeps batches of asks to it in flight: the asks that
    // were on the wire when it died must fail with NodeUnavailable as its connection drops,
    // not wait for their 5 s deadline.
    let on3 = refs[2].clone();
    let batches = Arc::new(AtomicU64::new(0));
    let batches2 = batches.clone();
    let in_flight = std::thread::spawn(move || loop {
        let batch: Vec<_> = (0..50)
            .map(|_| on3.ask_timeout(Add(0), Duration::from_secs(5)))
            .collect();
        let results = quark::block_on(futures::future::join_all(batch));
        let done = Instant::now();
        for r in results {
            match r {
                Ok(_) => {}
                Err(CallError::NodeUnavailable { node: 3, .. }) => return Ok(done),
                other => return Err(other),
            }
        }
        batches2.fetch_add(1, Ordering::SeqCst);
    });
    // Let the asker get going, then SIGKILL node 3.
    eventually("asks in flight to node 3", Duration::from_secs(10), || {
        (batches.load(Ordering::SeqCst) >= 3).then_some(())
    });
    drop(n3);
    let killed = Instant::now();
    // From the kill on, every call fails with NodeUnavailable, the first within
    // FAILOVER_MAX; a Timeout (a call that waited for its deadline) fails the test.
    let first = loop {
        let t0 = Instant::now();
        match quark::block_on(refs[2].ask_timeout(Add(1), Duration::from_secs(5))) {
            Err(CallError::NodeUnavailable { node: 3, .. }) => break t0.elapsed(),
            Ok(v) => {
                // Node 3's connection is not yet seen closed; the process is gone, though.
                assert!(
                    killed.elapsed() < FAILOVER_MAX,
                    "node 3 answered {v} {:?} after its kill",
                    killed.elapsed()
                );
            }
            Err(e) => panic!("a call to a killed node: {e:?} after {:?}", t0.elapsed()),
        }
    };
    let to_first = killed.elapsed();
    assert!(
        to_first < FAILOVER_MAX,
        "the first NodeUnavailable came {to_first:?} after the kill (the call took {first:?})"
    );
    // And so on through the client's reconnect attempts (backoff 10 to 100 ms): a call every
    // millisecond or so for 300 ms after the kill, each failing within FAILOVER_MAX.
    let mut calls = 0;
    while killed.elapsed() < Duration::from_millis(300) {
        let t0 = Instant::now();
        let r = quark::block_on(refs[2].ask_timeout(Add(1), Duration::from_secs(5)));
        let took = t0.elapsed();
        assert!(
            matches!(r, Err(CallError::NodeUnavailable { node: 3, .. })) && took < FAILOVER_MAX,
            "call {calls} to a killed node, {:?} after the kill: {r:?} after {took:?}",
            t0.saturating_duration_since(killed)
        );
        calls += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    match in_flight.join().unwrap() {
        Ok(failed) => {
            let took = failed.saturating_duration_since(killed);
            assert!(
                took < FAILOVER_MAX,
                "asks in flight at the kill failed {took:?} after it"
            );
        }
        Err(e) => panic!("an ask in flight when node 3 was killed: {e:?}"),
    }
    // The other nodes go on, and keep their state.
    assert_eq!(quark::block_on(refs[0].ask(Add(1))).unwrap(), 2);
    assert_eq!(quark::block_on(refs[1].ask(Add(1))).unwrap(), 2);
    // Restart node 3: it rejoins and serves again (a fresh activation).
    let _n3 = serve(&config, 3);
    let v = eventually("node 3 serving again", Duration::from_secs(10), || {
        quark::block_on(refs[2].ask(Add(0))).ok()
    });
    assert_eq!(v, 0, "a fresh activation after the restart");
    assert_eq!(quark::block_on(refs[2].ask(Add(5))).unwrap(), 5);
    c.shutdown();

    // Handshake refusals, named on both sides.
    let secret = |s: &str| Some(ClusterSecret::new(s.as_bytes().to_vec(), "test").unwrap());
    let cfg = |cluster: &str, secret: Option<ClusterSecret>, version: u16| HandshakeConfig {
        protocol_version: version,
        cluster_id: cluster.into(),
        node_id: 999,
        role: PeerRole::Client,
        secret,
        shard: 0,
        app_version: String::new(),
    };
    let cases = [
        (
            cfg(
                "procs",
                secret("wrong-secret-0123456789"),
                quark::PROTOCOL_VERSION,
            ),
            "wrong proof",
            "wrong proof",
        ),
        (
            cfg("other", secret(SECRET), quark::PROTOCOL_VERSION),
            "refused the handshake: cluster id mismatch",
            "cluster id mismatch",
        ),
        (
            cfg("procs", secret(SECRET), 7),
            "refused the handshake: protocol version mismatch",
            "protocol version mismatch",
        ),
    ];
    for (cfg, ours, theirs) in cases {
        let e = quark::probe(addrs[0], cfg, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ClientError::Handshake { .. }), "{e:?}");
        let chain = quark::ErrorChain(&e).to_string();
        assert!(chain.contains(ours), "client side: {chain}");
        eventually(
            &format!("node 1 logging {theirs:?}"),
            Duration::from_secs(5),
            || n1.stderr.lock().unwrap().contains(theirs).then_some(()),
        );
    }
    // The right settings still work, and the secret never shows in a log.
    quark::probe(
        addrs[0],
        cfg("procs", secret(SECRET), quark::PROTOCOL_VERSION),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!n1.stderr.lock().unwrap().contains(SECRET));

    // SIGTERM: the node drains, says so, and exits successfully.
    let mut n1 = n1;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(n1.child.id() as i32, libc::SIGTERM) },
        0
    );
    let status = eventually(
        "node 1 to exit after SIGTERM",
        Duration::from_secs(10),
        || n1.child.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
    let stopped = n1
        .stdout
        .recv_timeout(Duration::from_secs(5))
        .expect("a line after the ready line");
    assert!(stopped.contains("quark: stopped"), "{stopped}");
}
