//! The admin endpoint (`[admin]`): the Prometheus exposition checked by `promtool`, health and
//! readiness through a node's life, the status document against `Node::stats()`, the
//! loopback rule, and the request bounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

mod admin_common;

use quark::admin::{fetch, fetch_status, Status, CONNECTIONS_MAX, REQUEST_BYTES_MAX};
use quark::builtin::{Add, Counter};
use quark::{
    Actor, ActorType, AdminConfig, AdminError, Handler, Message, Node, NodeConfig, NodeError,
};

const T: Duration = Duration::from_secs(5);

/// A state with a deep size (`ActorType::memory_size`): the bytes it holds.
struct Blob(Vec<u8>);
impl Actor for Blob {
    const TYPE_NAME: &'static str = "blob";
}
struct Fill(usize);
impl Message for Fill {
    type Reply = ();
}
impl Handler<Fill> for Blob {
    async fn handle(&mut self, m: Fill, _: &quark::Context<Self>) {
        self.0 = vec![0; m.0];
    }
}
const BLOB_BYTES: usize = 4096;

fn eventually<V>(what: &str, within: Duration, mut f: impl FnMut() -> Option<V>) -> V {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = fetch(addr, path, T).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status, r.body)
}

/// Two clustered nodes with the built-in actors, a log each, the first with an admin
/// endpoint on a free loopback port; counters asked through node 1 (some owned by node 2).
fn two_nodes(dir: &std::path::Path) -> Vec<Node> {
    let addrs = free_addrs(2);
    let mut members = String::new();
    for (i, a) in addrs.iter().enumerate() {
        members.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let nodes: Vec<Node> = (1..=2)
        .map(|id| {
            let admin = if id == 1 {
                "[admin]\nlisten = \"127.0.0.1:0\"\n"
            } else {
                ""
            };
            let text = format!(
                "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
                 [log]\ndata_dir = \"{}\"\nfsync = \"never\"\n{admin}\
                 [cluster]\ncluster_id = \"admin\"\nnode_id = {id}\n{members}",
                dir.join(format!("n{id}")).display()
            );
            let config = NodeConfig::from_toml(&text, "admin.toml").unwrap();
            quark::builtin::register_builtin(Node::builder().config(config))
                .register(
                    // Local to the sender (a stateless worker): node 1's own figures.
                    ActorType::new(|_| Blob(Vec::new()))
                        .stateless(1)
                        .memory_size(|b: &Blob| b.0.capacity()),
                )
                .start()
                .unwrap()
        })
        .collect();
    // One sampled turn (one in 64) of blob 7, which then holds BLOB_BYTES.
    for _ in 0..quark::TURN_SAMPLE_EVERY {
        quark::block_on(nodes[0].actor_ref::<Blob>(7u64).ask(Fill(BLOB_BYTES))).unwrap();
    }
    for key in 0..16u64 {
        eventually("an ask across nodes", Duration::from_secs(10), || {
            quark::block_on(nodes[0].actor_ref::<Counter>(key).ask(Add(1))).ok()
        });
    }
    nodes
}

fn operations_doc() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The metric names of an exposition (from its `# TYPE` lines).
fn metric_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_exposition_passes_promtool_and_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = two_nodes(dir.path());
    let addr = nodes[0].admin_addr().expect("node 1 has [admin]");
    assert_eq!(nodes[1].admin_addr(), None, "no [admin] table: no endpoint");
    let r = fetch(addr, "/metrics", T).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let text = r.body;
    // Per-shard series from the snapshots: shards, activations, log and net counters.
    for needle in [
        "quark_shards 2",
        "quark_node_ready 1",
        "quark_activations_created_total{shard=\"0\"}",
        "quark_activations_live{shard=\"1\"}",
        "quark_log_disk_bytes{shard=\"0\"}",
        "quark_net_frames_sent_total{shard=\"0\"}",
        "quark_net_connections_closed_total{reason=\"heartbeat_timeout\",shard=\"1\"}",
        "quark_build_info{version=\"",
        "quark_messages_handled_total{actor_type=\"counter\",shard=\"0\"}",
        "quark_turn_duration_seconds_bucket{actor_type=\"counter\",shard=\"0\",le=",
        "quark_node_requests_sent_total{shard=\"0\",to_node=\"2\"}",
        "quark_net_rtt_seconds{peer=\"2\",shard=\"0\"}",
        "# TYPE quark_top_actor_memory_bytes gauge",
        "quark_actor_state_bytes{actor_type=\"blob\",shard=\"",
        "quark_process_resident_bytes ",
        "quark_node_memory_level 0",
        "quark_shard_memory_level{shard=\"1\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The largest actor by deep size, as Node::stats reports it.
    let top: Vec<String> = nodes[0]
        .stats()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s.load.top_memory.iter().map(move |t| {
                format!(
                    "quark_top_actor_memory_bytes{{actor=\"{}\",shard=\"{}\"}} {}",
                    t.actor, s.shard, t.bytes
                )
            })
        })
        .collect();
    assert_eq!(top.len(), 1, "{top:?}");
    assert!(top[0].ends_with(&format!(" {BLOB_BYTES}")), "{top:?}");
    assert!(text.contains(&top[0]), "missing {:?} in\n{text}", top[0]);
    // The node's own figure: live activations summed over shards equals Node::stats().
    let live: u64 = nodes[0]
        .stats()
        .unwrap()
        .iter()
        .map(|s| s.live_activations)
        .sum();
    let exported: u64 = text
        .lines()
        .filter(|l| l.starts_with("quark_activations_live{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(exported, live);
    assert!(live > 0);
    // Every exported metric is documented.
    let doc = operations_doc();
    for name in metric_names(&text) {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/OPERATIONS.md"
        );
    }
    for n in nodes {
        n.shutdown();
    }
    admin_common::promtool_check_metrics(&text);
}

#[test]
fn load_report_matches_node_stats_and_measures_the_peers_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = two_nodes(dir.path());
    let addr = nodes[0].admin_addr().unwrap();
    let (status, body) = get(addr, "/quark/load");
    assert_eq!(status, 200, "{body}");
    let r: quark::admin::LoadReport = serde_json::from_str(&body).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.sample_every, quark::TURN_SAMPLE_EVERY);
    // No traffic since `two_nodes` returned: the node's counters did not move.
    let stats = nodes[0].stats().unwrap();
    let handled = |t: &str| -> u64 {
        stats
            .iter()
            .flat_map(|s| &s.load.types)
            .filter(|l| l.type_name == t)
            .map(|l| l.handled)
            .sum()
    };
    let counter = r
        .types
        .iter()
        .find(|t| t.actor_type == "counter")
        .expect("a counter row");
    assert_eq!(counter.handled, handled("counter"));
    assert!(counter.handled > 0);
    // The asks for keys node 2 owns went there, counted by the shard that sent them.
    let to2: u64 = stats
        .iter()
        .flat_map(|s| &s.load.to_nodes)
        .filter(|(n, _)| *n == 2)
        .map(|(_, c)| c)
        .sum();
    assert!(to2 > 0);
    assert_eq!(
        r.to_nodes
            .iter()
            .map(|t| (t.node, t.requests))
            .collect::<Vec<_>>(),
        vec![(2, to2)]
    );
    assert_eq!(r.shard_matrix.len(), 2);
    // Every shard's link to node 2 is up and has a kernel RTT estimate.
    let rtt: Vec<_> = r.peer_rtt.iter().filter(|p| p.node == 2).collect();
    assert_eq!(rtt.len(), 2, "one per shard: {:?}", r.peer_rtt);
    for p in rtt {
        assert!(p.rtt_us > 0 && p.rtt_us < 1_000_000, "{p:?}");
    }
    // The largest actors by deep size: blob 7, on the shard Node::stats reports it on.
    let shard = stats
        .iter()
        .find(|s| !s.load.top_memory.is_empty())
        .expect("a shard with the blob")
        .shard;
    let by_memory: Vec<_> = r
        .top_actors_by_memory
        .iter()
        .map(|a| (a.actor.as_str(), a.shard, a.bytes))
        .collect();
    assert_eq!(by_memory, vec![("blob/7", shard, BLOB_BYTES as u64)]);
    assert_eq!(r.otlp, None, "no exporter configured");
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn status_reports_what_node_stats_reports() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = two_nodes(dir.path());
    let addr = nodes[0].admin_addr().unwrap();
    let rss_before = statm_rss();
    let status: Status = fetch_status(addr, T).unwrap();
    let rss_after = statm_rss();
    let stats = nodes[0].stats().unwrap();
    assert_eq!(status.node_id, Some(1));
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.state, "ready");
    assert!(status.ready);
    assert_eq!(status.stats_error, None);
    assert_eq!(status.cluster_listen, nodes[0].listen_addr());
    assert_eq!(status.shards.len(), stats.len());
    for (st, s) in status.shards.iter().zip(&stats) {
        assert!(st.answered);
        assert_eq!(st.shard, s.shard);
        let info = &nodes[0].info()[usize::from(s.shard)];
        assert_eq!(st.core, Some(info.core));
        assert_eq!(st.running_on, info.running_on);
        assert_eq!(st.pinning, "off", "pin_threads = false");
        let driver = match info.driver {
            quark::IoDriver::IoUring => "io_uring",
            _ => "epoll",
        };
        assert_eq!(st.driver, driver);
        assert_eq!(st.idle_spin_us, Some(info.idle_spin.as_micros() as u64));
        // No traffic since: the activation and log figures are the same in both.
        assert_eq!(st.live_activations, s.live_activations);
        assert_eq!(st.activations, s.activations);
        assert_eq!(st.deactivations, s.deactivations);
        assert_eq!(st.panics, s.panics);
        assert_eq!(st.log_next_lsn, s.log_next_lsn);
        assert_eq!(st.links_up, s.net.as_ref().map(|n| n.links_up));
        // Memory: the known state sizes the shard reports, summed.
        let bytes: u64 = s.state_bytes_per_type.iter().map(|t| t.bytes).sum();
        assert_eq!(st.state_bytes, bytes);
        assert_eq!(
            st.state_bytes_deep,
            s.state_bytes_per_type.iter().map(|t| t.deep).sum::<u64>()
        );
    }
    // The blob (the one type with a hook) counts its deep size, on its shard only; the
    // counters their shallow size each.
    let blob: Vec<_> = stats
        .iter()
        .flat_map(|s| &s.state_bytes_per_type)
        .filter(|t| t.type_name == "blob" && t.deep > 0)
        .collect();
    assert_eq!(blob.len(), 1, "{stats:?}");
    assert_eq!((blob[0].bytes, blob[0].deep), (BLOB_BYTES as u64, 1));
    for s in &stats {
        let counter = s
            .state_bytes_per_type
            .iter()
            .find(|t| t.type_name == "counter")
            .unwrap();
        let live = s.live_per_type.iter().find(|t| t.0 == "counter").unwrap().1;
        assert_eq!(
            (counter.bytes, counter.deep),
            (live * std::mem::size_of::<Counter>() as u64, 0)
        );
    }
    // The process RSS (this test's own process), between two readings of /proc/self/statm.
    let rss = status.rss_bytes.expect("an RSS on Linux");
    let (lo, hi) = (rss_before.min(rss_after), rss_before.max(rss_after));
    assert!(rss >= lo / 2 && rss <= hi * 2, "{lo} .. {hi}: {rss}");
    assert!(
        status
            .shards
            .iter()
            .map(|s| s.live_activations)
            .sum::<u64>()
            > 0
    );
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.peers[0].node_id, 2);
    assert_eq!(Some(status.peers[0].addr), nodes[1].listen_addr());
    for n in nodes {
        n.shutdown();
    }
}

/// This process's resident set size, bytes (`/proc/self/statm`'s second field, in pages).
fn statm_rss() -> u64 {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Blocks its shard thread until the test says so (to hold a drain open).
struct Blocker;
impl Actor for Blocker {
    const TYPE_NAME: &'static str = "blocker";
}
struct Hold(std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>);
impl Message for Hold {
    type Reply = ();
}
impl Handler<Hold> for Blocker {
    async fn handle(&mut self, m: Hold, _: &quark::Context<Self>) {
        let (started, release) = m.0.lock().unwrap().take().unwrap();
        started.send(()).unwrap();
        // Blocks the shard on purpose: the drain cannot finish before the release.
        let _ = release.recv_timeout(Duration::from_secs(20));
    }
}

#[test]
fn ready_after_start_not_ready_during_drain_gone_after_shutdown() {
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = Node::builder()
        .config(config)
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(2);
            e.pin_threads = false;
            e.idle_spin = Duration::ZERO;
        })
        .register(ActorType::new(|_| Blocker))
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap();
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".to_owned()));

    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let blocker = node.actor_ref::<Blocker>("b");
    let asker = std::thread::spawn(move || {
        quark::block_on(blocker.ask(Hold(std::sync::Mutex::new(Some((started_tx, release_rx))))))
    });
    started_rx.recv_timeout(T).expect("the handler started");
    assert_eq!(get(addr, "/readyz").0, 200, "still ready while serving");
    let stopper = std::thread::spawn(move || node.shutdown());
    // The drain cannot end while the handler blocks: readiness must drop meanwhile.
    let body = eventually("/readyz to answer 503 during the drain", T, || {
        let (code, body) = get(addr, "/readyz");
        (code == 503).then_some(body)
    });
    assert_eq!(body, "not ready: draining\n");
    assert_eq!(get(addr, "/healthz").0, 200, "alive while draining");
    assert!(
        !stopper.is_finished(),
        "the drain is held open by the handler"
    );
    release_tx.send(()).unwrap();
    let report = stopper.join().unwrap();
    assert_eq!(report, quark::ShutdownReport::default());
    asker.join().unwrap().unwrap();
    // Stopped and joined with the node: nothing listens any more.
    assert!(TcpStream::connect_timeout(&addr, T).is_err());
}

#[test]
fn admin_is_off_by_default_and_non_loopback_is_refused() {
    let c = NodeConfig::from_toml("[node]\nshards = 1\n", "a.toml").unwrap();
    assert_eq!(c.admin, None);
    let c = NodeConfig::from_toml("[admin]\nlisten = \"127.0.0.1:9100\"\n", "a.toml").unwrap();
    assert_eq!(
        c.admin,
        Some(AdminConfig::new("127.0.0.1:9100".parse().unwrap()))
    );
    let e = NodeConfig::from_toml("[admin]\nlisten = \"0.0.0.0:9100\"\n", "a.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.listen") && e.contains("allow_remote"),
        "{e}"
    );
    let c = NodeConfig::from_toml(
        "[admin]\nlisten = \"0.0.0.0:9100\"\nallow_remote = true\n",
        "a.toml",
    )
    .unwrap();
    assert!(c.admin.unwrap().allow_remote);
    let e = NodeConfig::from_toml("[admin]\nlisten = \"127.0.0.1:9100\"\nport = 1\n", "a.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin.port") || e.contains("`port`"), "{e}");
    let e = NodeConfig::from_toml("[admin]\nlisten = \"localhost\"\n", "a.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin.listen"), "{e}");
    // Built in code: refused at start, before any shard starts.
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("0.0.0.0:0".parse().unwrap()));
    let r = Node::builder()
        .config(config)
        .engine(|e| e.shards = quark::ShardSpec::Count(1))
        .start();
    assert!(matches!(
        r,
        Err(NodeError::Admin(AdminError::RemoteRefused { .. }))
    ));
}

#[test]
fn request_size_and_connections_are_bounded() {
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = Node::builder()
        .config(config)
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(1);
            e.pin_threads = false;
        })
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap();
    let read_all = |s: &mut TcpStream| {
        s.set_read_timeout(Some(T)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    // A head twice the bound: refused with 431, not buffered.
    let mut s = TcpStream::connect(addr).unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * REQUEST_BYTES_MAX)
    );
    s.write_all(big.as_bytes()).unwrap();
    let answer = read_all(&mut s);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    drop(s);
    // A head under the bound is served.
    let mut s = TcpStream::connect(addr).unwrap();
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(REQUEST_BYTES_MAX / 2)
    );
    s.write_all(fits.as_bytes()).unwrap();
    assert!(read_all(&mut s).starts_with("HTTP/1.1 200 "));
    drop(s);
    eventually("the served connections' slots to free up", T, || {
        (fetch(addr, "/healthz", T).ok()?.status == 200).then_some(())
    });
    // Clients that send half a request head: each one served holds a slot until the read
    // deadline drops it (it then sees the connection close with no answer); a client over the
    // limit is answered 503 at once. Two more than the limit: at least two get 503, and no
    // more than CONNECTIONS_MAX are ever held (a slot still held by the request above only
    // turns one more into a 503).
    let clients: Vec<TcpStream> = (0..CONNECTIONS_MAX + 2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|mut s| read_all(&mut s)).collect();
    let held = answers.iter().filter(|a| a.is_empty()).count();
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503 "))
        .count();
    assert_eq!(held + refused, answers.len(), "{answers:?}");
    assert!(held <= CONNECTIONS_MAX, "{answers:?}");
    assert!(refused >= 2, "{answers:?}");
    // The slots free up again.
    eventually("a slot to free up", T, || {
        (fetch(addr, "/healthz", T).ok()?.status == 200).then_some(())
    });
    node.shutdown();
}
