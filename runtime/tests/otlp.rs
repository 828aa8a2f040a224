//! The OTLP trace exporter (`[observability] otlp_endpoint`) against a real HTTP receiver (a
//! test-local server that decodes the protobuf body): the spans two nodes export for one call
//! chain form one tree with the exact parent chain; a dead endpoint never delays a call.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

mod admin_common;

use prost::Message as _;
use quark::otlp::proto::{ExportTraceServiceRequest, KeyValue, Span, SPAN_KIND_SERVER};
use quark::rkyv;
use quark::{
    Actor, ActorId, ActorKey, Context, Handler, Message, Node, NodeConfig, TraceContext,
    TraceFutureExt, WireMessage,
};

struct Hop;
impl Actor for Hop {
    const TYPE_NAME: &'static str = "hop";
}

/// Asks the first of `rest` with the others; replies with the turn's span id per hop.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Chain {
    rest: Vec<u64>,
}
impl Message for Chain {
    type Reply = String;
}
impl WireMessage for Chain {
    const WIRE_NAME: &'static str = "otlp_test.Chain";
}
impl Handler<Chain> for Hop {
    async fn handle(&mut self, m: Chain, ctx: &Context<Self>) -> String {
        let mut out = ctx
            .trace()
            .map_or_else(|| "none".into(), |t| t.span_id_hex());
        if let Some((next, rest)) = m.rest.split_first() {
            let rest = rest.to_vec();
            match ctx.actor_ref::<Hop>(*next).ask(Chain { rest }).await {
                Ok(down) => out = format!("{out};{down}"),
                Err(e) => out = format!("error at {}: {e}", ctx.id()),
            }
        }
        out
    }
}

/// One exported span and the `quark.node` of its resource.
#[derive(Clone, Debug)]
struct Got {
    resource_node: Option<i64>,
    span: Span,
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
    attrs.iter().find(|kv| kv.key == key)
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered 200.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (spans.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                serve(conn, &s, &r);
            }
        });
        Receiver {
            addr,
            spans,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn of(&self, trace_id: u128) -> Vec<Got> {
        let want = trace_id.to_be_bytes();
        let s = self.spans.lock().unwrap();
        s.iter()
            .filter(|g| g.span.trace_id == want)
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: std::net::TcpStream, spans: &Mutex<Vec<Got>>, requests: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let request_line = line.trim().to_owned();
    let mut len = 0usize;
    let mut content_type = String::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("a header line");
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("a header");
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().expect("a length"),
            "content-type" => content_type = v.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("the body");
    requests
        .lock()
        .unwrap()
        .push(format!("{request_line} {content_type}"));
    if let Some(dir) = std::env::var_os("QUARK_OTLP_DUMP_DIR") {
        // scripts/otlp_check.sh decodes these with the official OTLP classes.
        let n = requests.lock().unwrap().len();
        let path = std::path::Path::new(&dir).join(format!("request-{n}.pb"));
        std::fs::write(&path, &body).expect("write the dumped request");
    }
    let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP request");
    {
        let mut s = spans.lock().unwrap();
        for rs in req.resource_spans {
            let node = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "quark.node"))
                .and_then(KeyValue::as_int);
            for ss in rs.scope_spans {
                for span in ss.spans {
                    s.push(Got {
                        resource_node: node,
                        span,
                    });
                }
            }
        }
    }
    let mut conn = r.into_inner();
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

fn two_nodes(endpoint: &str) -> Vec<Node> {
    let addrs = free_addrs(2);
    let mut members = String::new();
    for (i, a) in addrs.iter().enumerate() {
        members.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    (1..=2)
        .map(|id| {
            let admin = if id == 1 {
                "[admin]\nlisten = \"127.0.0.1:0\"\n"
            } else {
                ""
            };
            let text = format!(
                "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n{admin}\
                 [observability]\notlp_endpoint = \"{endpoint}\"\notlp_flush_interval_ms = 20\n\
                 [cluster]\ncluster_id = \"otlp\"\nnode_id = {id}\n{members}"
            );
            let config = NodeConfig::from_toml(&text, "otlp.toml").expect("the config");
            Node::builder()
                .config(config)
                .register(quark::ActorType::new(|_| Hop))
                .remote::<Hop, Chain>()
                .start()
                .expect("the node starts")
        })
        .collect()
}

/// A key of `hop` owned by shard `shard` of node `node`.
fn key_on(n: &Node, node: u64, shard: u16, not: &[u64]) -> u64 {
    (0..100_000u64)
        .find(|k| {
            let id = ActorId {
                type_name: Hop::TYPE_NAME,
                key: ActorKey::from(*k),
            };
            n.actor_ref::<Hop>(*k)
                .remote_node()
                .unwrap_or(n.node_id().unwrap())
                == node
                && n.handle().shard_of(&id) == shard
                && !not.contains(k)
        })
        .expect("some key lands on every shard of every node")
}

#[test]
fn the_spans_of_a_call_chain_across_two_nodes_are_exported_as_one_tree() {
    let rx = Receiver::start();
    let nodes = two_nodes(&format!("http://{}", rx.addr));
    let n1 = &nodes[0];
    // A (node 1, shard 0) -> B (node 2, shard 1) -> C (node 1, shard 1) -> D (node 1, shard 0).
    let a = key_on(n1, 1, 0, &[]);
    let b = key_on(n1, 2, 1, &[]);
    let c = key_on(n1, 1, 1, &[]);
    let d = key_on(n1, 1, 0, &[a]);
    let expect = [(a, 1i64, 0i64), (b, 2, 1), (c, 1, 1), (d, 1, 0)];
    let entry = n1.actor_ref::<Hop>(a);
    let chain = || Chain {
        rest: vec![b, c, d],
    };
    // Untraced until both links are up: nothing is exported for it.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match quark::block_on(entry.ask(chain())) {
            Ok(r) if !r.starts_with("error") => {
                assert_eq!(r, "none;none;none;none");
                break;
            }
            other => {
                assert!(Instant::now() < end, "the chain never completed: {other:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    let root = TraceContext::new_root();
    let reply = quark::block_on(entry.ask(chain()).with_trace(root)).expect("the traced chain");
    let hop_ids: Vec<&str> = reply.split(';').collect();
    assert_eq!(hop_ids.len(), 4, "{reply}");

    let end = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = rx.of(root.trace_id());
        if got.len() >= 4 {
            break got;
        }
        assert!(
            Instant::now() < end,
            "{} of 4 spans exported: {got:#?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(got.len(), 4, "one span per hop, each once: {got:#?}");
    let by_id: HashMap<Vec<u8>, &Got> = got.iter().map(|g| (g.span.span_id.clone(), g)).collect();
    assert_eq!(by_id.len(), 4, "distinct span ids");
    let mut parent = root.span_id().to_be_bytes().to_vec();
    let mut outer: Option<&Span> = None;
    for (i, (key, node, shard)) in expect.iter().enumerate() {
        let g = got
            .iter()
            .find(|g| {
                attr(&g.span.attributes, "quark.actor").and_then(KeyValue::as_str)
                    == Some(&format!("hop/{key}"))
            })
            .unwrap_or_else(|| panic!("no span for hop {i}: {got:#?}"));
        let s = &g.span;
        assert_eq!(s.parent_span_id, parent, "hop {i}'s parent");
        assert_eq!(
            hex(&s.span_id),
            hop_ids[i],
            "hop {i}: the handler's own span id"
        );
        assert_eq!(s.name, "quark.call");
        assert_eq!(s.kind, SPAN_KIND_SERVER);
        assert_eq!(s.flags, 1, "sampled");
        assert_eq!(g.resource_node, Some(*node), "hop {i} exported by its node");
        assert_eq!(
            attr(&s.attributes, "quark.node").and_then(KeyValue::as_int),
            Some(*node)
        );
        assert_eq!(
            attr(&s.attributes, "quark.shard").and_then(KeyValue::as_int),
            Some(*shard)
        );
        assert_eq!(
            attr(&s.attributes, "quark.actor_type").and_then(KeyValue::as_str),
            Some("hop")
        );
        assert!(attr(&s.attributes, "quark.message")
            .and_then(KeyValue::as_str)
            .is_some_and(|m| m.ends_with("Chain")));
        assert!(s.status.is_none(), "handled without error: {s:?}");
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
        if let Some(o) = outer {
            // A caller's turn encloses its callee's (it waits for the reply).
            assert!(
                o.start_time_unix_nano <= s.start_time_unix_nano,
                "hop {i} starts inside"
            );
            assert!(
                s.end_time_unix_nano <= o.end_time_unix_nano,
                "hop {i} ends inside"
            );
        }
        parent = s.span_id.clone();
        outer = Some(s);
    }
    {
        let reqs = rx.requests.lock().unwrap();
        assert!(!reqs.is_empty());
        for r in reqs.iter() {
            assert_eq!(r, "POST /v1/traces HTTP/1.1 application/x-protobuf");
        }
    }
    // The exporters count a batch once the receiver's answer is read (after it stored it).
    let end = Instant::now() + Duration::from_secs(5);
    let s1 = loop {
        let (s1, s2) = (n1.otlp_stats().unwrap(), nodes[1].otlp_stats().unwrap());
        if s1.spans_exported + s2.spans_exported == 4 {
            assert_eq!((s1.spans_exported, s2.spans_exported), (3, 1), "by node");
            break s1;
        }
        assert!(Instant::now() < end, "{s1:?} {s2:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(s1.spans_dropped_queue_full + s1.spans_failed, 0, "{s1:?}");
    // The exporter's counters in /metrics (promtool-checked) and /quark/load.
    let admin = n1.admin_addr().expect("node 1 has [admin]");
    let metrics = quark::admin::fetch(admin, "/metrics", Duration::from_secs(5))
        .unwrap()
        .body;
    for needle in [
        "quark_otlp_spans_exported_total 3",
        "quark_otlp_spans_dropped_total 0",
        "quark_otlp_spans_failed_total 0",
    ] {
        assert!(metrics.contains(needle), "no {needle:?} in\n{metrics}");
    }
    let load = quark::admin::fetch(admin, "/quark/load", Duration::from_secs(5))
        .unwrap()
        .body;
    let load: quark::admin::LoadReport = serde_json::from_str(&load).unwrap();
    assert_eq!(load.otlp.map(|o| o.spans_exported), Some(3));
    admin_common::promtool_check_metrics(&metrics);
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn a_stuck_collector_costs_the_calls_nothing_and_overflow_is_counted() {
    // A collector that takes the first request and does not answer until released (the
    // exporter thread waits in it), then closes every connection without answering.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let collector = std::thread::spawn(move || {
        let (first, _) = l.accept().expect("the exporter connects");
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(first);
        l.set_nonblocking(true).unwrap();
        // Until the test is done (a second message, or the test's end).
        while let Err(std::sync::mpsc::TryRecvError::Empty) = release_rx.try_recv() {
            match l.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let text = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [observability]\notlp_endpoint = \"http://{addr}/v1/traces\"\n\
         otlp_flush_interval_ms = 1\notlp_queue_spans_max = 4\notlp_batch_spans_max = 1\n\
         otlp_export_timeout_ms = 20000\n"
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "stuck.toml").unwrap())
        .register(quark::ActorType::new(|_| Hop))
        .start()
        .unwrap();
    let hop = node.actor_ref::<Hop>(1u64);
    let ask = || {
        quark::block_on(
            hop.ask(Chain { rest: vec![] })
                .with_trace(TraceContext::new_root()),
        )
    };
    assert!(ask().is_ok());
    held_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the exporter sends its first batch");
    // The exporter thread now waits for an answer that does not come: the calls go on.
    for _ in 0..199 {
        let r = ask();
        assert!(r.is_ok(), "{r:?}");
    }
    // A turn's span is handed to the exporter as the turn ends, which may be just after its
    // reply reached the caller: wait for the last one.
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = node.otlp_stats().unwrap();
        if s.spans_queued + s.spans_dropped_queue_full >= 200 || Instant::now() > end {
            break s;
        }
        std::thread::yield_now();
    };
    assert_eq!(s.spans_queued + s.spans_dropped_queue_full, 200, "{s:?}");
    assert!(
        s.spans_queued <= 1 + 4,
        "one in the stuck request, four queued: {s:?}"
    );
    release_tx.send(()).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = node.otlp_stats().unwrap();
        if s.spans_failed == s.spans_queued {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the queued spans were never tried: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(s.spans_exported, 0, "{s:?}");
    node.shutdown();
    release_tx.send(()).unwrap();
    collector.join().unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
