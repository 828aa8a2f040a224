//! Membership on etcd (docs/CLUSTER.md, "Membership on etcd") against a real etcd server:
//! `scripts/test` starts one (scripts/etcd.sh) and passes its endpoint in `QUARK_TEST_ETCD`
//! (and the server binary in `QUARK_ETCD_BIN`, for the test that restarts a private one).
//! Without `QUARK_TEST_ETCD` every test says so loudly and passes without running.
//!
//! Three nodes (in-process `Node`s; the SIGKILL case runs its node in a child process, this
//! test binary run again): a join under traffic, a graceful leave under traffic, a SIGKILL (the
//! lease expires, the others carry on, calls to its actors that are not movable fail naming
//! it), etcd restarted under the cluster, and a node cut off from etcd (fenced, then back).
//! Each test prints how long the member change took to be seen by every node (the issue's
//! target: within 2 s of the change in etcd; the lease TTL bounds the crash cases).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::{Actor, ActorType, CallError, Context, Handler, Message, Node, NodeConfig};

/// A movable actor (`migratable`): its state moves with it on a join or a drain.
struct Purse {
    balance: u64,
}
impl Actor for Purse {
    const TYPE_NAME: &'static str = "etcd-purse";
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Put(u64);
impl Message for Put {
    type Reply = u64;
}
impl quark::WireMessage for Put {
    const WIRE_NAME: &'static str = "etcd-test.Put";
}
impl Handler<Put> for Purse {
    async fn handle(&mut self, m: Put, _: &Context<Self>) -> u64 {
        self.balance += m.0;
        self.balance
    }
}

/// An actor that is not movable (placed by the seats: its state would be on its node's disk).
struct Ledger {
    n: u64,
}
impl Actor for Ledger {
    const TYPE_NAME: &'static str = "etcd-ledger";
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Note(u64);
impl Message for Note {
    type Reply = u64;
}
impl quark::WireMessage for Note {
    const WIRE_NAME: &'static str = "etcd-test.Note";
}
impl Handler<Note> for Ledger {
    async fn handle(&mut self, m: Note, _: &Context<Self>) -> u64 {
        self.n += m.0;
        self.n
    }
}

/// One test at a time: three nodes each, on a shared machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // Logs with RUST_LOG (e.g. RUST_LOG=quark::etcd=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn endpoint() -> Option<String> {
    match std::env::var("QUARK_TEST_ETCD") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            eprintln!(
                "\n*** SKIPPED: QUARK_TEST_ETCD is not set: no etcd server to test against. \
                 Run scripts/test, or `eval \"$(scripts/etcd.sh start)\"` first. ***\n"
            );
            None
        }
    }
}

/// A cluster id of its own per test run (its own key prefix in etcd).
fn cluster_id(name: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{name}-{}-{t}", std::process::id())
}

fn config_text(id: u64, cluster: &str, endpoint: &str, listen: SocketAddr) -> String {
    format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\nshutdown_timeout_ms = 4000\n\
         [cluster]\ncluster_id = \"{cluster}\"\nnode_id = {id}\nlisten = \"{listen}\"\n\
         [cluster.membership]\nprovider = \"etcd\"\nendpoints = [\"{endpoint}\"]\n\
         lease_ttl_s = 2\nzone = \"z{id}\"\n"
    )
}

fn start(id: u64, cluster: &str, endpoint: &str) -> Node {
    let listen = free_addrs(1)[0];
    let text = config_text(id, cluster, endpoint, listen);
    start_text(&text).unwrap_or_else(|e| panic!("node starts: {}", quark::ErrorChain(&e)))
}

fn start_text(text: &str) -> Result<Node, quark::NodeError> {
    let config = NodeConfig::from_toml(text, "etcd.toml").expect("config");
    Node::builder()
        .config(config)
        .register(ActorType::new(|_| Purse { balance: 0 }).migratable(
            |p: &Purse| p.balance.to_le_bytes().to_vec(),
            |_, b| {
                let b: [u8; 8] = b.try_into().map_err(|_| "not 8 bytes")?;
                Ok(Purse {
                    balance: u64::from_le_bytes(b),
                })
            },
        ))
        .register(ActorType::new(|_| Ledger { n: 0 }))
        .remote::<Purse, Put>()
        .remote::<Ledger, Note>()
        .start()
}

fn live(n: &Node) -> Vec<u64> {
    n.etcd_view()
        .expect("etcd membership")
        .live
        .keys()
        .copied()
        .collect()
}

/// Waits until every node of `nodes` sees exactly `want` registered; returns when.
fn wait_members(nodes: &[&Node], want: &[u64], within: Duration, what: &str) -> Instant {
    let end = Instant::now() + within;
    loop {
        if nodes.iter().all(|n| live(n) == want) {
            return Instant::now();
        }
        assert!(
            Instant::now() < end,
            "{what}: members not {want:?} within {within:?}: {:?}",
            nodes.iter().map(|n| live(n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Senders asking `Put(1)` of `keys` in turn through `h` until stopped; each returns, per key,
/// the deposits acknowledged and the last balance seen.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<(u64, u64, u64)>>>,
}

impl Traffic {
    fn start(h: quark::EngineHandle, keys: Arc<Vec<u64>>, senders: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..senders)
            .map(|s| {
                let (h, stop, done, keys) = (h.clone(), stop.clone(), done.clone(), keys.clone());
                std::thread::spawn(move || {
                    // Each sender owns its share of the keys (so a balance is its own count).
                    let mine: Vec<u64> = keys.iter().copied().skip(s).step_by(senders).collect();
                    let mut acked = vec![(0u64, 0u64, 0u64); mine.len()];
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 1) % mine.len();
                        let r = quark::block_on(h.actor_ref::<Purse>(mine[i]).ask(Put(1)));
                        let b = r.unwrap_or_else(|e| {
                            panic!("sender {s}, key {}: {}", mine[i], quark::ErrorChain(&e))
                        });
                        acked[i].0 += 1;
                        acked[i].1 = b;
                        acked[i].2 = mine[i];
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    acked
                })
            })
            .collect();
        Traffic {
            stop,
            done,
            threads,
        }
    }

    fn wait_for(&self, n: u64, what: &str) {
        let start = self.done.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(30), what, || {
            self.done.load(Ordering::Relaxed) >= start + n
        });
    }

    /// Stops the senders; asserts every balance equals its acknowledged deposits (no ask
    /// failed: a failure panics its sender; no state lost in a move).
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for t in self.threads {
            for (acked, balance, key) in t.join().expect("a sender failed") {
                assert_eq!(acked, balance, "purse {key} lost deposits in a move");
                total += acked;
            }
        }
        total
    }
}

fn purse_keys(n: usize) -> Arc<Vec<u64>> {
    Arc::new((0..n as u64).collect())
}

#[test]
fn a_node_joins_under_traffic_and_takes_its_share_with_state() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("join");
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "two nodes");
    // A client that reads the members from etcd (no node listed).
    let client = quark::Client::builder()
        .cluster_id(cluster.clone())
        .etcd(vec![ep.clone()], None)
        .message::<Put>()
        .connect()
        .expect("client");
    let keys = purse_keys(120);
    let traffic = Traffic::start(n1.handle(), keys.clone(), 3);
    traffic.wait_for(500, "before the join");
    // When nodes 1 and 2 first see node 3 (it registers during its start).
    let seen_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let t0 = Instant::now();
    let n3 = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| {
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if live(&n1) == [1, 2, 3] && live(&n2) == [1, 2, 3] {
                    *seen_at.lock().expect("seen") = Some(Instant::now());
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let n3 = start(3, &cluster, &ep);
        let _ = watcher.join();
        n3
    });
    wait_members(&[&n1, &n2, &n3], &[1, 2, 3], Duration::from_secs(5), "join");
    let seen = seen_at
        .lock()
        .expect("seen")
        .expect("nodes 1 and 2 saw node 3");
    eprintln!(
        "join: node 3 seen by nodes 1 and 2 {:?} after its start began (registration included)",
        seen.duration_since(t0)
    );
    assert!(
        seen.duration_since(t0) < Duration::from_secs(2),
        "the 2 s target"
    );
    // Homes agree on every node, and node 3 has its share.
    let homes = |n: &Node| -> Vec<Option<u64>> {
        keys.iter()
            .map(|k| n.actor_ref::<Purse>(*k).remote_node())
            .collect()
    };
    wait_until(Duration::from_secs(5), "homes agree", || {
        let h1: Vec<_> = homes(&n1).into_iter().map(|h| h.unwrap_or(1)).collect();
        let h2: Vec<_> = homes(&n2).into_iter().map(|h| h.unwrap_or(2)).collect();
        let h3: Vec<_> = homes(&n3).into_iter().map(|h| h.unwrap_or(3)).collect();
        let hc: Vec<_> = keys
            .iter()
            .map(|k| client.actor_ref::<Purse>(*k).remote_node().unwrap_or(0))
            .collect();
        h1 == h2 && h2 == h3 && h1 == hc && h1.contains(&3)
    });
    assert_eq!(
        client
            .etcd_view()
            .map(|v| v.live.keys().copied().collect::<Vec<_>>()),
        Some(vec![1, 2, 3])
    );
    traffic.wait_for(500, "after the join");
    let total = traffic.finish();
    // The moved purses are on node 3 with their balances (asked through node 3, local now).
    let on3: Vec<u64> = keys
        .iter()
        .copied()
        .filter(|k| n3.actor_ref::<Purse>(*k).remote_node().is_none())
        .collect();
    assert!(!on3.is_empty());
    let seen_on3: u64 = on3
        .iter()
        .map(|k| quark::block_on(n3.actor_ref::<Purse>(*k).ask(Put(0))).expect("on node 3"))
        .sum();
    assert!(
        seen_on3 > 0,
        "the purses homed on node 3 kept their deposits"
    );
    // The client reaches node 3's purses (dialed when etcd showed it) with their balances.
    for k in &on3 {
        let via_client = quark::block_on(client.actor_ref::<Purse>(*k).ask(Put(0)))
            .unwrap_or_else(|e| panic!("client, purse {k}: {}", quark::ErrorChain(&e)));
        let via_node = quark::block_on(n3.actor_ref::<Purse>(*k).ask(Put(0))).expect("node 3");
        assert_eq!(via_client, via_node);
    }
    client.shutdown();
    eprintln!(
        "join: {total} asks, 0 failed; {} purses now on node 3",
        on3.len()
    );
    n3.shutdown();
    n2.shutdown();
    n1.shutdown();
}

#[test]
fn a_node_leaves_gracefully_under_traffic() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("leave");
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    let n3 = start(3, &cluster, &ep);
    wait_members(
        &[&n1, &n2, &n3],
        &[1, 2, 3],
        Duration::from_secs(5),
        "three nodes",
    );
    let keys = purse_keys(120);
    let traffic = Traffic::start(n1.handle(), keys.clone(), 3);
    traffic.wait_for(500, "before the leave");
    let t0 = Instant::now();
    let report = n3.drain();
    let drained = t0.elapsed();
    assert_eq!(report.failed, 0, "{report:?}");
    let seen = wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "leave");
    eprintln!(
        "leave: drain moved {} actors in {drained:?}; its deleted key seen by every node {:?} \
         after the drain began",
        report.moved,
        seen.duration_since(t0)
    );
    traffic.wait_for(300, "after the leave");
    n3.shutdown();
    traffic.wait_for(300, "after node 3 stopped");
    let total = traffic.finish();
    assert!(keys
        .iter()
        .all(|k| n1.actor_ref::<Purse>(*k).remote_node() != Some(3)));
    eprintln!("leave: {total} asks, 0 failed");
    n2.shutdown();
    n1.shutdown();
}

/// The first node of a cluster knew no peer when it started: its peers are only in the live
/// view. Its drain must still move its actors to them (with their state).
#[test]
fn the_first_node_drains_to_the_nodes_that_joined_after_it() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("first");
    let n1 = start(1, &cluster, &ep);
    wait_members(&[&n1], &[1], Duration::from_secs(5), "node 1 alone");
    let n2 = start(2, &cluster, &ep);
    wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "two nodes");
    let keys = purse_keys(60);
    let traffic = Traffic::start(n2.handle(), keys.clone(), 2);
    traffic.wait_for(400, "before the drain");
    let report = n1.drain();
    assert!(report.moved > 0, "node 1 moved nothing: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    n1.shutdown();
    traffic.wait_for(300, "after node 1 stopped");
    // Every purse kept its deposits (a purse left behind would start again at 0 on node 2).
    traffic.finish();
    n2.shutdown();
}

/// The SIGKILL case's node: runs only as a child process of
/// `a_killed_node_leaves_by_lease_expiry_and_its_fixed_actors_fail_naming_it`.
#[test]
#[ignore = "a child process of the SIGKILL test"]
fn child_node_process() {
    let (Ok(id), Ok(cluster), Ok(ep)) = (
        std::env::var("QUARK_ETCD_CHILD_ID"),
        std::env::var("QUARK_ETCD_CHILD_CLUSTER"),
        std::env::var("QUARK_TEST_ETCD"),
    ) else {
        return;
    };
    let n = start(id.parse().expect("id"), &cluster, &ep);
    println!("CHILD READY");
    let _ = std::io::stdout().flush();
    // Until killed (its parent ends it with SIGKILL; reading stdin ends with the parent).
    let mut buf = [0u8; 1];
    let _ = std::io::stdin().read(&mut buf);
    n.shutdown();
}

#[test]
fn a_killed_node_leaves_by_lease_expiry_and_its_fixed_actors_fail_naming_it() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("kill");
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["child_node_process", "--exact", "--ignored", "--nocapture"])
        .env("QUARK_ETCD_CHILD_ID", "3")
        .env("QUARK_ETCD_CHILD_CLUSTER", &cluster)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child node");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("CHILD READY") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the child node started");
    wait_members(
        &[&n1, &n2],
        &[1, 2, 3],
        Duration::from_secs(5),
        "three nodes",
    );
    // A ledger (not movable) and purses homed on node 3, active there.
    let ledger = (0..10_000u64)
        .find(|k| n1.actor_ref::<Ledger>(*k).remote_node() == Some(3))
        .expect("a ledger homed on node 3");
    wait_until(Duration::from_secs(10), "node 3 answers", || {
        quark::block_on(n1.actor_ref::<Ledger>(ledger).ask(Note(1))).is_ok()
    });
    let purses: Vec<u64> = (0..10_000u64)
        .filter(|k| n1.actor_ref::<Purse>(*k).remote_node() == Some(3))
        .take(20)
        .collect();
    for k in &purses {
        assert_eq!(
            quark::block_on(n1.actor_ref::<Purse>(*k).ask(Put(5))).expect("purse on node 3"),
            5
        );
    }
    let others = purse_keys(60);
    let traffic = Traffic::start(
        n2.handle(),
        Arc::new(
            others
                .iter()
                .copied()
                .filter(|k| n2.actor_ref::<Purse>(*k).remote_node() != Some(3))
                .collect(),
        ),
        2,
    );
    traffic.wait_for(200, "before the kill");
    // SIGKILL: no drain, no deleted key; its lease (2 s) expires.
    let t0 = Instant::now();
    child.kill().expect("SIGKILL the child node");
    let _ = child.wait();
    let seen = wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(8), "kill");
    eprintln!(
        "kill: lease expiry seen by every node {:?} after SIGKILL (lease TTL 2 s)",
        seen.duration_since(t0)
    );
    // The ledger stays placed on node 3 (its seat): refused, naming node 3.
    let e =
        quark::block_on(n1.actor_ref::<Ledger>(ledger).ask(Note(1))).expect_err("node 3 is gone");
    match &e {
        CallError::NodeUnavailable { node: 3, .. } => {}
        other => panic!("expected NodeUnavailable from node 3, got {other}"),
    }
    let text = quark::ErrorChain(&e).to_string();
    assert!(
        text.contains("node 3 is not in the member set"),
        "the error names the missing node: {text}"
    );
    // Its purses reactivate on their new homes (empty: their state was in node 3's memory).
    for k in &purses {
        let home = n1.actor_ref::<Purse>(*k).remote_node();
        assert_ne!(home, Some(3));
        assert_eq!(
            quark::block_on(n1.actor_ref::<Purse>(*k).ask(Put(1))).expect("reactivated"),
            1
        );
    }
    traffic.wait_for(200, "after the kill");
    let total = traffic.finish();
    eprintln!("kill: the others carried on: {total} asks, 0 failed");
    n2.shutdown();
    n1.shutdown();
}

/// A TCP proxy in front of etcd that can be cut (connections closed, new ones accepted and
/// left unanswered) and healed.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(to: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = l.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, conns2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if let Ok(c) = s.try_clone() {
                    conns2.lock().expect("conns").push(c);
                }
                if c2.load(Ordering::SeqCst) {
                    continue; // accepted, never answered
                }
                let Ok(up) = TcpStream::connect(to) else {
                    continue;
                };
                if let Ok(c) = up.try_clone() {
                    conns2.lock().expect("conns").push(c);
                }
                for (mut a, mut b) in [
                    (s.try_clone().ok(), up.try_clone().ok()),
                    (up.try_clone().ok(), s.try_clone().ok()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a?, b?)))
                {
                    let cut = c2.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = a.read(&mut buf) {
                            if n == 0
                                || cut.load(Ordering::SeqCst)
                                || b.write_all(&buf[..n]).is_err()
                            {
                                break;
                            }
                        }
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn endpoint_addr(ep: &str) -> SocketAddr {
    ep.trim_start_matches("http://")
        .parse()
        .expect("QUARK_TEST_ETCD is http://ip:port")
}

#[test]
fn a_node_cut_off_from_etcd_fences_itself_and_rejoins_when_healed() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("partition");
    let proxy = Proxy::start(endpoint_addr(&ep));
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    let n3 = start(3, &cluster, &format!("http://{}", proxy.addr));
    wait_members(
        &[&n1, &n2, &n3],
        &[1, 2, 3],
        Duration::from_secs(5),
        "three nodes",
    );
    // A purse node 3 considers its own, active there with a balance.
    let k3 = (0..10_000u64)
        .find(|k| n3.actor_ref::<Purse>(*k).remote_node().is_none())
        .expect("a purse homed on node 3");
    assert_eq!(
        quark::block_on(n3.actor_ref::<Purse>(k3).ask(Put(7))).expect("k3"),
        7
    );
    let t0 = Instant::now();
    proxy.cut();
    // The others see node 3's lease expire; node 3 fences itself once its lease would have
    // expired, which is before etcd deletes its key (split-brain rule).
    let (mut fenced_at, mut seen_at) = (None, None);
    let end = Instant::now() + Duration::from_secs(8);
    while fenced_at.is_none() || seen_at.is_none() {
        assert!(
            Instant::now() < end,
            "partition: fenced {fenced_at:?}, seen {seen_at:?}"
        );
        if fenced_at.is_none() && n3.etcd_view().is_some_and(|v| v.fenced) {
            fenced_at = Some(t0.elapsed());
        }
        if seen_at.is_none() && live(&n1) == [1, 2] && live(&n2) == [1, 2] {
            seen_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (fenced_at, seen_at) = (fenced_at.expect("fenced"), seen_at.expect("seen"));
    eprintln!(
        "partition: node 3 fenced {fenced_at:?} after the cut; out of the others' member set \
         after {seen_at:?}"
    );
    assert!(
        fenced_at <= seen_at,
        "node 3 fenced itself only after the others dropped it"
    );
    // Fenced: a new movable activation on node 3 is held, not started.
    let fresh = (10_000..20_000u64)
        .find(|k| n3.actor_ref::<Purse>(*k).remote_node().is_none())
        .expect("a fresh purse homed on node 3");
    let r = quark::block_on(
        n3.actor_ref::<Purse>(fresh)
            .ask_timeout(Put(1), Duration::from_millis(300)),
    );
    assert!(r.is_err(), "a fenced node activated a movable actor: {r:?}");
    // Healed: node 3 registers again (a new lease), joins again, and activates again.
    let t1 = Instant::now();
    proxy.heal();
    let seen = wait_members(
        &[&n1, &n2, &n3],
        &[1, 2, 3],
        Duration::from_secs(10),
        "heal",
    );
    wait_until(Duration::from_secs(5), "node 3 unfenced", || {
        n3.etcd_view()
            .is_some_and(|v| !v.fenced && v.registrations >= 2)
    });
    eprintln!(
        "partition: healed; node 3 back in every member set after {:?}",
        seen.duration_since(t1)
    );
    wait_until(Duration::from_secs(10), "node 3 serves again", || {
        quark::block_on(
            n1.actor_ref::<Purse>(fresh)
                .ask_timeout(Put(0), Duration::from_millis(500)),
        )
        .is_ok()
    });
    n3.shutdown();
    n2.shutdown();
    n1.shutdown();
}

/// etcd's current revision and a compaction to it, with `etcdctl` (scripts/etcd.sh installs it).
fn compact_now(ep: &str) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", ep, "get", "/", "-w", "json"])
        .output()
        .expect("etcdctl (Debian's etcd-client)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
    let rev = v["header"]["revision"].as_i64().expect("revision");
    let st = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", ep, "compact", &rev.to_string()])
        .output()
        .expect("etcdctl compact");
    assert!(st.status.success(), "compact: {st:?}");
}

#[test]
fn a_watch_whose_revision_was_compacted_reads_the_members_again() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("compact");
    let proxy = Proxy::start(endpoint_addr(&ep));
    let n1 = start(1, &cluster, &ep);
    let n3 = start(3, &cluster, &format!("http://{}", proxy.addr));
    wait_members(&[&n1, &n3], &[1, 3], Duration::from_secs(5), "two nodes");
    let resyncs = n3.etcd_view().map_or(0, |v| v.resyncs);
    // Node 3's watch breaks; meanwhile node 2 joins and the history is compacted past the
    // revision node 3 would resume from.
    proxy.cut();
    let n2 = start(2, &cluster, &ep);
    wait_members(
        &[&n1, &n2],
        &[1, 2, 3],
        Duration::from_secs(5),
        "join while cut",
    );
    compact_now(&ep);
    proxy.heal();
    // Node 3 resumes, finds the revision compacted, reads the members again: it sees node 2.
    wait_members(&[&n3], &[1, 2, 3], Duration::from_secs(8), "resync");
    let v = n3.etcd_view().expect("etcd view");
    assert!(v.resyncs > resyncs, "no full read after compaction: {v:?}");
    eprintln!(
        "compaction: node 3 read the members again ({} reads in all)",
        v.resyncs
    );
    n2.shutdown();
    n3.shutdown();
    n1.shutdown();
}

/// A private etcd (the restart test stops it under the cluster).
struct PrivateEtcd {
    bin: String,
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<std::process::Child>,
}

impl PrivateEtcd {
    fn start(bin: &str) -> PrivateEtcd {
        let a = free_addrs(2);
        let mut e = PrivateEtcd {
            bin: bin.to_owned(),
            dir: tempfile::tempdir().expect("temp dir"),
            client: a[0],
            peer: a[1],
            child: None,
        };
        e.run();
        e
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    fn run(&mut self) {
        let (c, p) = (self.client, self.peer);
        let child = std::process::Command::new(&self.bin)
            .args([
                "--name",
                "private",
                "--data-dir",
                &self.dir.path().join("data").to_string_lossy(),
                "--listen-client-urls",
                &format!("http://{c}"),
                "--advertise-client-urls",
                &format!("http://{c}"),
                "--listen-peer-urls",
                &format!("http://{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://{p}"),
                "--initial-cluster",
                &format!("private=http://{p}"),
                "--unsafe-no-fsync",
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        // Ready when its /health answers healthy (it has a leader).
        wait_until(Duration::from_secs(20), "etcd is healthy", || {
            let Ok(mut s) = TcpStream::connect(c) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let req = format!("GET /health HTTP/1.0\r\nHost: {c}\r\n\r\n");
            let mut body = String::new();
            s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut body).is_ok()
                && body.contains("\"health\":\"true\"")
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn members_keep_serving_while_etcd_restarts_and_membership_resumes() {
    let Some(_) = endpoint() else { return };
    let Ok(bin) = std::env::var("QUARK_ETCD_BIN") else {
        eprintln!("\n*** SKIPPED: QUARK_ETCD_BIN is not set (scripts/etcd.sh start sets it) ***\n");
        return;
    };
    let _g = serial();
    let mut etcd = PrivateEtcd::start(&bin);
    let ep = etcd.endpoint();
    let cluster = cluster_id("restart");
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    let n3 = start(3, &cluster, &ep);
    wait_members(
        &[&n1, &n2, &n3],
        &[1, 2, 3],
        Duration::from_secs(5),
        "three nodes",
    );
    let keys = purse_keys(90);
    let traffic = Traffic::start(n1.handle(), keys, 2);
    traffic.wait_for(300, "before the restart");
    let resumes_before: u64 = [&n1, &n2, &n3]
        .iter()
        .map(|n| n.etcd_view().map_or(0, |v| v.watch_resumes))
        .sum();
    let errors = |n: &Node| n.etcd_view().map_or(0, |v| v.session_errors);
    let errors_before: Vec<u64> = [&n1, &n2, &n3].iter().map(|n| errors(n)).collect();
    let down = Instant::now();
    etcd.kill();
    // Down until every node noticed it: members serve on (the senders panic on any failure).
    wait_until(Duration::from_secs(10), "every node lost etcd", || {
        [&n1, &n2, &n3]
            .iter()
            .zip(&errors_before)
            .all(|(n, b)| errors(n) > *b)
    });
    traffic.wait_for(300, "while etcd is down");
    etcd.run();
    eprintln!("restart: etcd was down for {:?}", down.elapsed());
    // Membership resumes: the watches resumed, and a change made now is seen everywhere.
    wait_until(Duration::from_secs(10), "watches resumed", || {
        [&n1, &n2, &n3]
            .iter()
            .map(|n| n.etcd_view().map_or(0, |v| v.watch_resumes))
            .sum::<u64>()
            >= resumes_before + 3
    });
    traffic.wait_for(300, "after the restart");
    n3.drain();
    let t0 = Instant::now();
    let seen = wait_members(
        &[&n1, &n2],
        &[1, 2],
        Duration::from_secs(5),
        "leave after restart",
    );
    eprintln!(
        "restart: membership resumed; a leave seen by every node {:?} after its key was deleted",
        seen.duration_since(t0)
    );
    n3.shutdown();
    let total = traffic.finish();
    eprintln!("restart: {total} asks, 0 failed");
    n2.shutdown();
    n1.shutdown();
}

#[test]
fn bad_membership_config_is_refused_with_the_key() {
    let bad = [
        ("provider = \"zookeeper\"", "cluster.membership.provider"),
        (
            "provider = \"etcd\"\nendpoints = []",
            "cluster.membership.endpoints",
        ),
        (
            "provider = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]",
            "cluster.membership.endpoints",
        ),
        (
            "provider = \"etcd\"\nprefix = \"/no/slash\"",
            "cluster.membership.prefix",
        ),
        (
            "provider = \"etcd\"\nlease_ttl_s = 0",
            "cluster.membership.lease_ttl_s",
        ),
        (
            "provider = \"etcd\"\nadvertise = \"nowhere\"",
            "cluster.membership.advertise",
        ),
        (
            "provider = \"static\"\nzone = \"a\"",
            "cluster.membership.provider",
        ),
        // TLS and authentication to etcd.
        (
            "provider = \"etcd\"\nendpoints = [\"https://127.0.0.1:2379\"]",
            "cluster.membership.ca",
        ),
        (
            "provider = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nca = \"/etc/hosts\"",
            "cluster.membership.endpoints",
        ),
        (
            "provider = \"etcd\"\nendpoints = [\"https://127.0.0.1:2379\"]\nca = \"/nonexistent/ca.crt\"",
            "cluster.membership.ca",
        ),
        (
            "provider = \"etcd\"\ncert = \"/nonexistent/c.crt\"",
            "cluster.membership.cert",
        ),
        (
            "provider = \"etcd\"\nuser = \"quark\"",
            "cluster.membership.user",
        ),
        (
            "provider = \"etcd\"\nuser = \"quark\"\npassword_env = \"QUARK_TEST_NO_SUCH_VARIABLE\"",
            "cluster.membership.password_env",
        ),
    ];
    for (section, key) in bad {
        let text = format!(
            "[cluster]\ncluster_id = \"c\"\nnode_id = 1\nlisten = \"127.0.0.1:7000\"\n\
             [[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:7000\"\n\
             [cluster.membership]\n{section}\n"
        );
        let e = NodeConfig::from_toml(&text, "m.toml").expect_err(section);
        assert!(e.to_string().contains(key), "{section}: {e}");
    }
    // With etcd, no [[cluster.nodes]]: listen is required (it is the node's own entry).
    let e = NodeConfig::from_toml(
        "[cluster]\ncluster_id = \"c\"\nnode_id = 1\n[cluster.membership]\nprovider = \"etcd\"\n",
        "m.toml",
    )
    .expect_err("no listen");
    assert!(e.to_string().contains("cluster.listen"), "{e}");
    let ok = NodeConfig::from_toml(
        "[cluster]\ncluster_id = \"c\"\nnode_id = 4\nlisten = \"127.0.0.1:7004\"\n\
         [cluster.membership]\nprovider = \"etcd\"\n",
        "m.toml",
    )
    .expect("etcd without nodes");
    let c = ok.cluster.expect("cluster");
    match c.membership {
        quark::MembershipSettings::Etcd(e) => {
            assert_eq!(e.prefix, "/quark/c/members/");
            assert_eq!(e.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
            assert_eq!(e.lease_ttl_s, quark::ETCD_LEASE_TTL_S_DEFAULT);
            assert_eq!(
                e.advertise,
                "127.0.0.1:7004".parse::<SocketAddr>().expect("addr")
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---- TLS and authentication to etcd ----

mod etcd_tls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use std::path::{Path, PathBuf};

    pub struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().expect("key");
            let cert = p.self_signed(&key).expect("self-signed");
            Ca { cert, key }
        }

        /// Writes `<dir>/<name>.crt` and `.key`, for 127.0.0.1 (server and client use).
        pub fn issue(&self, dir: &Path, name: &str) {
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

        pub fn write(&self, path: &Path) {
            std::fs::write(path, self.cert.pem()).expect("write");
        }
    }

    /// A TLS etcd of its own (`scripts/etcd.sh start-tls`), stopped on drop.
    pub struct TlsEtcd {
        pub dir: PathBuf,
        pub endpoint: String,
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd.sh")
    }

    impl TlsEtcd {
        pub fn start(certs: &Path, auth: &str) -> TlsEtcd {
            let out = std::process::Command::new("bash")
                .arg(script())
                .arg("start-tls")
                .arg(certs)
                .arg(auth)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run scripts/etcd.sh");
            assert!(out.status.success(), "scripts/etcd.sh start-tls failed");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let var = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                    .unwrap_or_else(|| panic!("{name} in {text:?}"))
                    .to_owned()
            };
            TlsEtcd {
                dir: var("QUARK_ETCD_DIR").into(),
                endpoint: var("QUARK_TEST_ETCD"),
            }
        }
    }

    impl Drop for TlsEtcd {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }
}

/// The `[cluster.membership]` of a node of the TLS etcd (`ca`: the CA file it trusts).
fn tls_config_text(id: u64, cluster: &str, endpoint: &str, certs: &Path, ca: &str) -> String {
    let listen = free_addrs(1)[0];
    format!(
        "{}ca = {:?}\ncert = {:?}\nkey = {:?}\nuser = \"quark\"\npassword_env = \"QUARK_TEST_ETCD_PASSWORD\"\n",
        config_text(id, cluster, endpoint, listen),
        certs.join(ca),
        certs.join("node.crt"),
        certs.join("node.key"),
    )
}

#[test]
fn nodes_join_over_tls_with_auth_and_a_wrong_ca_or_password_is_refused_clearly() {
    // Runs only where the etcd tests run (scripts/test); its etcd is a private one with TLS.
    if endpoint().is_none() {
        return;
    }
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("quark-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = etcd_tls::Ca::new("etcd test CA");
    ca.write(&dir.join("ca.crt"));
    ca.issue(&dir, "server");
    ca.issue(&dir, "client");
    ca.issue(&dir, "node");
    etcd_tls::Ca::new("another CA").write(&dir.join("other-ca.crt"));
    let etcd = etcd_tls::TlsEtcd::start(&dir, "quark:s3cret-pw");
    assert!(etcd.endpoint.starts_with("https://"), "{}", etcd.endpoint);
    std::env::set_var("QUARK_TEST_ETCD_PASSWORD", "s3cret-pw");
    let cluster = cluster_id("tls");

    // Two nodes register over mutual TLS with a user and password, and see each other.
    let n1 = start_text(&tls_config_text(
        1,
        &cluster,
        &etcd.endpoint,
        &dir,
        "ca.crt",
    ))
    .unwrap_or_else(|e| panic!("node 1 over TLS: {}", quark::ErrorChain(&e)));
    let t = Instant::now();
    let n2 = start_text(&tls_config_text(
        2,
        &cluster,
        &etcd.endpoint,
        &dir,
        "ca.crt",
    ))
    .unwrap_or_else(|e| panic!("node 2 over TLS: {}", quark::ErrorChain(&e)));
    wait_members(
        &[&n1, &n2],
        &[1, 2],
        Duration::from_secs(2),
        "join over TLS",
    );
    eprintln!("join over TLS seen by both nodes in {:?}", t.elapsed());
    // Traffic between them goes as usual (a purse on each side).
    for k in 0..20u64 {
        let r = quark::block_on(n1.actor_ref::<Purse>(k).ask(Put(1)))
            .unwrap_or_else(|e| panic!("purse {k}: {}", quark::ErrorChain(&e)));
        assert_eq!(r, 1, "purse {k}");
    }

    // A node that does not trust etcd's CA is refused, saying so.
    let e = start_text(&tls_config_text(
        3,
        &cluster,
        &etcd.endpoint,
        &dir,
        "other-ca.crt",
    ))
    .map(|n| n.shutdown())
    .expect_err("a node with the wrong CA must not start");
    let text = quark::ErrorChain(&e).to_string();
    eprintln!("wrong CA: {text}");
    assert!(
        text.contains("certificate") && text.contains("cluster.membership.ca"),
        "the refusal names the certificate and the key to check: {text}"
    );

    // A wrong password is refused, saying so.
    std::env::set_var("QUARK_TEST_ETCD_PASSWORD", "wrong");
    let e = start_text(&tls_config_text(
        4,
        &cluster,
        &etcd.endpoint,
        &dir,
        "ca.crt",
    ))
    .map(|n| n.shutdown())
    .expect_err("a node with the wrong password must not start");
    std::env::set_var("QUARK_TEST_ETCD_PASSWORD", "s3cret-pw");
    let text = quark::ErrorChain(&e).to_string();
    eprintln!("wrong password: {text}");
    assert!(
        text.contains("authentication failed") || text.contains("invalid user"),
        "the refusal says the etcd authentication failed: {text}"
    );
    // Neither registered: the members are still 1 and 2.
    wait_members(
        &[&n1, &n2],
        &[1, 2],
        Duration::from_secs(1),
        "after the refusals",
    );
    n2.shutdown();
    n1.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The live member set reaches every consumer of the member list, not only placement: a node
/// that joins after the others started shows in their `/quark/status` peers (with its zone),
/// in `cluster_jobs().members()` (and so the reminder and job gateways, which share that
/// list), and in the member view placement reads its zone from.
#[test]
fn a_node_joining_after_start_shows_in_status_cluster_jobs_and_zones() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("live-view");
    let with_admin = |id: u64| {
        let listen = free_addrs(1)[0];
        format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_text(id, &cluster, &ep, listen)
        )
    };
    let n1 =
        start_text(&with_admin(1)).unwrap_or_else(|e| panic!("node 1: {}", quark::ErrorChain(&e)));
    let n2 =
        start_text(&with_admin(2)).unwrap_or_else(|e| panic!("node 2: {}", quark::ErrorChain(&e)));
    wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "1 and 2");
    // Node 3 joins after both started: neither has it in its start-time peers.
    let n3 =
        start_text(&with_admin(3)).unwrap_or_else(|e| panic!("node 3: {}", quark::ErrorChain(&e)));
    wait_members(
        &[&n1, &n2, &n3],
        &[1, 2, 3],
        Duration::from_secs(5),
        "3 joined",
    );
    for (n, me) in [(&n1, 1u64), (&n2, 2)] {
        let admin = n.admin_addr().expect("admin endpoint");
        let status = quark::admin::fetch_status(admin, Duration::from_secs(5)).expect("status");
        let peers: Vec<(u64, Option<String>, Option<String>)> = status
            .peers
            .iter()
            .map(|p| (p.node_id, p.state.clone(), p.zone.clone()))
            .collect();
        let others: Vec<u64> = [1u64, 2, 3].into_iter().filter(|&i| i != me).collect();
        assert_eq!(
            peers,
            others
                .iter()
                .map(|&i| (i, Some("up".to_owned()), Some(format!("z{i}"))))
                .collect::<Vec<_>>(),
            "node {me}'s /quark/status peers follow the live set, with their zones"
        );
        assert_eq!(status.zone.as_deref(), Some(format!("z{me}").as_str()));
        let p3 = status
            .peers
            .iter()
            .find(|p| p.node_id == 3)
            .expect("peer 3");
        assert_eq!(
            Some(p3.addr),
            n3.listen_addr(),
            "node 3's address from etcd"
        );
        assert_eq!(
            n.cluster_jobs().members(),
            vec![1, 2, 3],
            "node {me}'s cluster_jobs"
        );
        let view = n
            .handle()
            .members()
            .expect("a cluster node has a member view");
        assert_eq!(view.zone(3), Some("z3"), "node {me} reads node 3's zone");
        assert_eq!(view.zone(me), Some(format!("z{me}").as_str()));
    }
    // Node 3 leaves: it goes out of the lists again.
    let _ = n3.drain();
    wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "3 left");
    assert_eq!(
        n1.cluster_jobs().members(),
        vec![1, 2],
        "a member that left is not listed"
    );
    n3.shutdown();
    n2.shutdown();
    n1.shutdown();
}

/// Two membership changes at once: nodes 3 and 4 start together under traffic (each
/// registers and asks for its hand-over while the other's runs). Every node ends with the
/// same homes, each new node with its share, and no purse loses a deposit or fails an ask
/// (docs/CLUSTER.md, "Concurrent joins"). Before the view epochs it failed in most runs (12 of
/// 15, a balance behind its acknowledged deposits), for three causes, each closed:
/// 1. a peer's hand-over compared with the view before its *last* change only, so a peer that
///    saw both joins at once kept actors homed on the first joiner: it now hands over every
///    active movable actor whose home is the joiner in the view now;
/// 2. a peer that had seen only node 3 handed an actor to node 3 after node 4 (its home once
///    both are known) had already joined: the move carries the sender's view epoch and node 3,
///    whose view is newer and places the actor on node 4, refuses it; the sender waits for
///    that epoch and moves it to node 4, which still holds its first messages (that sender
///    answers node 4's `JOIN` only after its earlier hand-over ended: one at a time per node);
/// 3. a first message held by a joiner (sent by a node whose view placed the actor there, e.g.
///    it saw node 4 before node 3) was activated there, empty, when the joiner joined: it now
///    goes on to the actor's home in the joiner's view.
#[test]
fn two_nodes_joining_at_once_under_traffic_lose_nothing() {
    let Some(ep) = endpoint() else { return };
    let _g = serial();
    let cluster = cluster_id("two-joins");
    let n1 = start(1, &cluster, &ep);
    let n2 = start(2, &cluster, &ep);
    wait_members(&[&n1, &n2], &[1, 2], Duration::from_secs(5), "two nodes");
    let keys = purse_keys(160);
    let traffic = Traffic::start(n1.handle(), keys.clone(), 3);
    traffic.wait_for(500, "before the joins");
    let t0 = Instant::now();
    let (n3, n4) = std::thread::scope(|sc| {
        let a = sc.spawn(|| start(3, &cluster, &ep));
        let b = sc.spawn(|| start(4, &cluster, &ep));
        (
            a.join().expect("node 3 starts"),
            b.join().expect("node 4 starts"),
        )
    });
    let seen = wait_members(
        &[&n1, &n2, &n3, &n4],
        &[1, 2, 3, 4],
        Duration::from_secs(5),
        "two joins",
    );
    eprintln!(
        "two joins: both seen by every node {:?} after they began",
        seen.duration_since(t0)
    );
    let homes = |n: &Node, me: u64| -> Vec<u64> {
        keys.iter()
            .map(|k| n.actor_ref::<Purse>(*k).remote_node().unwrap_or(me))
            .collect()
    };
    wait_until(Duration::from_secs(5), "homes agree on all four", || {
        let h1 = homes(&n1, 1);
        h1 == homes(&n2, 2) && h1 == homes(&n3, 3) && h1 == homes(&n4, 4)
    });
    let h = homes(&n1, 1);
    for node in [3, 4] {
        assert!(
            h.contains(&node),
            "node {node} is the home of some purses: {h:?}"
        );
    }
    traffic.wait_for(500, "after the joins");
    // Every balance equals its acknowledged deposits: nothing lost in the two hand-overs.
    let total = traffic.finish();
    for (node, n) in [(3u64, &n3), (4, &n4)] {
        let mine: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| n.actor_ref::<Purse>(*k).remote_node().is_none())
            .collect();
        let sum: u64 = mine
            .iter()
            .map(|k| quark::block_on(n.actor_ref::<Purse>(*k).ask(Put(0))).expect("local purse"))
            .sum();
        assert!(
            sum > 0,
            "node {node}'s {} purses kept their deposits",
            mine.len()
        );
    }
    eprintln!("two joins: {total} asks, 0 failed, no deposit lost");
    n4.shutdown();
    n3.shutdown();
    n2.shutdown();
    n1.shutdown();
}
