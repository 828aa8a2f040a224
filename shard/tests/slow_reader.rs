//! A connection that sends requests and never reads its replies: the node stops reading it once
//! its outgoing bytes reach `out_bytes_max` (backpressure), so its memory stays bounded; it
//! closes the connection once the backlog stays over the bound for `out_stall_timeout`; and
//! another client's asks keep being answered meanwhile.
//!
//! One test in this file: it measures the process's resident memory (the node is in-process).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_net::rkyv;
use quark_net::{
    CloseReason, ClusterConfig, FrameDecoder, FrameHead, FrameKind, HandshakeConfig,
    HandshakeStatus, Initiator, Membership, NodeConfig, OutBuf, PeerRole, RequestEnvelope, WireKey,
    WireMessage,
};
use quark_shard::{
    block_on, Actor, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    NetConfig, ShardSpec,
};

struct Store;
impl Actor for Store {
    const TYPE_NAME: &'static str = "store";
}

/// Answers with `n` bytes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Blob(u32);
impl Message for Blob {
    type Reply = Vec<u8>;
}
impl WireMessage for Blob {
    const WIRE_NAME: &'static str = "test.Blob";
}
impl Handler<Blob> for Store {
    async fn handle(&mut self, m: Blob, _: &Context<Self>) -> Vec<u8> {
        vec![7; m.0 as usize]
    }
}

const OUT_BYTES_MAX: usize = 1 << 20;
const STALL: Duration = Duration::from_millis(1000);
/// Reply size of the abuser's requests: each ~100-byte request makes 4 KiB of reply.
const REPLY_BYTES: u32 = 4096;
/// Growth of the resident set at which the abuser is stopped (the test then fails).
const RSS_ABORT_BYTES: u64 = 96 << 20;
/// The bound the test asserts: the node's memory grows by less than this with the abuser.
const RSS_BOUND_BYTES: u64 = 40 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value in kB");
    kb * 1024
}

fn engine(net: NetConfig) -> Engine {
    let config = EngineConfig {
        shards: ShardSpec::Count(1),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ask_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(2),
        net: Some(net),
        ..EngineConfig::default()
    };
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Store))
        .remote::<Store, Blob>()
        .start()
        .expect("engine starts")
}

/// A raw connection that completes the client handshake.
fn handshaken(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cfg = HandshakeConfig {
        role: PeerRole::Client,
        ..HandshakeConfig::member("slow", 0x8000_0000_0000_0077, None)
    };
    let mut init = Initiator::new(cfg, [9; 32], None);
    let mut out = OutBuf::new();
    init.start(&mut out).unwrap();
    let mut dec = FrameDecoder::new(4096);
    let mut buf = [0u8; 4096];
    loop {
        s.write_all(out.pending()).unwrap();
        out.clear();
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "node closed during the handshake");
        dec.feed(&buf[..n]).unwrap();
        while let Some(f) = dec.next_frame() {
            if let HandshakeStatus::Established(_) = init.on_frame(&f, &mut out).unwrap() {
                return s;
            }
        }
    }
}

/// How the abuser ended.
#[derive(Debug, PartialEq)]
enum Abuse {
    /// The node closed the connection (a write failed).
    Closed,
    /// The test told it to stop (memory over the abort bound, or deadline).
    Stopped,
}

/// Sends pipelined `Blob` requests as fast as the node takes them, never reading.
fn abuser(mut s: std::net::TcpStream, stop: Arc<AtomicBool>) -> Abuse {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let env = RequestEnvelope::new("store", WireKey::U64(1), "test.Blob", 10_000);
    let mut out = OutBuf::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut off = 0;
    let mut corr = 1u64;
    while !stop.load(Ordering::Relaxed) {
        if off == pending.len() {
            out.clear();
            for _ in 0..64 {
                let head = FrameHead {
                    correlation: corr,
                    ..FrameHead::new(FrameKind::Request)
                };
                corr += 1;
                quark_net::encode_request(&mut out, head, &env, &Blob(REPLY_BYTES), 1 << 20)
                    .unwrap();
            }
            pending = out.pending().to_vec();
            off = 0;
        }
        match s.write(&pending[off..]) {
            Ok(0) => return Abuse::Closed,
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Abuse::Closed,
        }
    }
    Abuse::Stopped
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn a_connection_that_never_reads_is_bounded_then_closed_and_others_are_served() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = Membership::from_config(&ClusterConfig {
        cluster_id: "slow".into(),
        nodes: vec![NodeConfig {
            id: 1,
            addr: addr.to_string(),
        }],
    })
    .unwrap();
    let mut cfg = NetConfig::new(1, PeerRole::Member, m.clone());
    cfg.listener = Some(Arc::new(listener));
    cfg.out_bytes_max = OUT_BYTES_MAX;
    cfg.out_stall_timeout = STALL;
    cfg.detector.heartbeat_interval = Duration::from_millis(20);
    cfg.detector.suspect_after = Duration::from_millis(100);
    // The failure detector alone must not be what closes the abuser.
    cfg.detector.dead_after = Duration::from_secs(30);
    let node = engine(cfg);

    // Another client, on its own connection.
    let mut ccfg = NetConfig::new(0x8000_0000_0000_0001, PeerRole::Client, m);
    ccfg.detector.heartbeat_interval = Duration::from_millis(20);
    ccfg.detector.suspect_after = Duration::from_millis(100);
    ccfg.detector.dead_after = Duration::from_secs(30);
    let client = engine(ccfg);
    let other = client.actor_ref::<Store>(2u64);
    let start = Instant::now();
    while block_on(other.ask(Blob(8))).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "client link up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut before = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        block_on(other.ask(Blob(8))).expect("ask before the abuser");
        before.push(t.elapsed());
    }
    let p99_before = p99(before);

    let rss0 = rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let s = handshaken(addr);
    let stop2 = stop.clone();
    let t_attach = Instant::now();
    let abuse = std::thread::spawn(move || abuser(s, stop2));

    let mut during = Vec::new();
    let mut rss_max = rss0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !abuse.is_finished() {
        let t = Instant::now();
        block_on(other.ask(Blob(8))).expect("another client's ask while the abuser is attached");
        during.push(t.elapsed());
        rss_max = rss_max.max(rss_bytes());
        if rss_max.saturating_sub(rss0) > RSS_ABORT_BYTES || Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let attached_for = t_attach.elapsed();
    let ended = abuse.join().expect("abuser thread");
    let grew = rss_max.saturating_sub(rss0);
    assert!(
        grew < RSS_BOUND_BYTES,
        "the node's memory grew by {} MiB with one connection that never reads (bound {} MiB, \
         out_bytes_max {} KiB)",
        grew >> 20,
        RSS_BOUND_BYTES >> 20,
        OUT_BYTES_MAX >> 10
    );
    assert_eq!(
        ended,
        Abuse::Closed,
        "the node must close a peer that stays over out_bytes_max for out_stall_timeout \
         (attached for {attached_for:?})"
    );
    assert!(
        attached_for >= STALL,
        "closed after {attached_for:?}, before out_stall_timeout {STALL:?}"
    );
    let stats = node.stats().expect("stats")[0].net.clone().unwrap();
    assert_eq!(stats.peers.closed(CloseReason::OutStalled), 1, "{stats:?}");
    assert!(
        during.len() >= 10,
        "another client's asks while the abuser was attached: {}",
        during.len()
    );
    let p99_during = p99(during);
    assert!(
        p99_during <= (p99_before * 2).max(Duration::from_millis(100)),
        "another client's p99 went from {p99_before:?} to {p99_during:?} with the abuser attached"
    );
    client.shutdown();
    node.shutdown();
}
