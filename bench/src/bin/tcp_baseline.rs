//! Same-run baseline for the across-nodes targets (issue 5): a plain blocking TCP ping-pong of
//! 64-byte messages between two processes pinned to two cores, and a batched one-way stream of
//! 64-byte messages; plus the same one-way stream as quark-net frames (32-byte header + 32-byte
//! payload = 64 bytes per frame) decoded with `FrameDecoder`, to show the codec's cost.
//!
//! `tcp_baseline` (mode `both`, the default) starts itself as the server (`--mode server`,
//! pinned to `--server-cpu`) and runs the client (pinned to `--client-cpu`) against it, `--runs`
//! times, then prints each run, the median and spread, and one JSON line. `--mode server` and
//! `--mode client --connect host:port` run the halves separately.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use quark_net::{FrameDecoder, FrameHead, FrameKind, OutBuf};

const MSG_BYTES: usize = 64;
const PHASE_PINGPONG: u8 = b'P';
/// Ping-pong with both sides busy-polling non-blocking sockets (no sleep/wake-up per message).
const PHASE_PINGPONG_SPIN: u8 = b'p';
const PHASE_STREAM: u8 = b'S';
const PHASE_FRAMED: u8 = b'F';
const PHASE_QUIT: u8 = b'Q';
/// Bytes per `write` in the one-way streams (1,024 messages of 64 B).
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Both,
    Server,
    Client,
}

#[derive(Parser, Debug)]
#[command(about = "Plain blocking TCP baseline: 64 B ping-pong RTT and batched one-way msgs/s")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Server: address to listen on (port 0 picks one and prints it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Client: server address (mode client).
    #[arg(long)]
    connect: Option<SocketAddr>,
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Round trips per run (after warm-up).
    #[arg(long, default_value_t = 50_000)]
    round_trips: u64,
    /// One-way messages per run.
    #[arg(long, default_value_t = 5_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn pin(cpu: usize) {
    // A benchmark still runs unpinned, with a warning (its figures are then suspect).
    if let Err(e) = quark_shard::pin_current_thread(cpu) {
        eprintln!("warning: {}", quark_shard::ErrorChain(&e));
    }
}

fn serve(listen: SocketAddr, cpu: usize) -> Result<()> {
    pin(cpu);
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let mut s = conn?;
        s.set_nodelay(true)?;
        let mut phase = [0u8; 1];
        s.read_exact(&mut phase)?;
        match phase[0] {
            PHASE_PINGPONG | PHASE_PINGPONG_SPIN => {
                let mut buf = [0u8; MSG_BYTES];
                s.set_nonblocking(phase[0] == PHASE_PINGPONG_SPIN)?;
                loop {
                    match read_exact_spin(&mut s, &mut buf) {
                        Ok(()) => s.write_all(&buf)?,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            PHASE_STREAM => {
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                let mut left = u64::from_le_bytes(n) as usize * MSG_BYTES;
                let mut buf = vec![0u8; BATCH_BYTES * 4];
                while left > 0 {
                    let got = s.read(&mut buf)?;
                    if got == 0 {
                        bail!("stream ended with {left} bytes missing");
                    }
                    left = left.saturating_sub(got);
                }
                s.write_all(&[1])?;
            }
            PHASE_FRAMED => {
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                let want = u64::from_le_bytes(n);
                let mut dec = FrameDecoder::new(1 << 20);
                let (mut frames, mut sum) = (0u64, 0u64);
                while frames < want {
                    let dst = dec.unfilled();
                    let got = s.read(dst)?;
                    if got == 0 {
                        bail!("framed stream ended after {frames} frames");
                    }
                    dec.filled(got)?;
                    while let Some(f) = dec.next_frame() {
                        frames += 1;
                        sum = sum.wrapping_add(f.header.head.correlation);
                    }
                }
                std::hint::black_box(sum);
                s.write_all(&[1])?;
            }
            PHASE_QUIT => return Ok(()),
            other => bail!("unknown phase byte {other}"),
        }
    }
    Ok(())
}

/// `read_exact` that also works on a non-blocking socket by spinning on `WouldBlock`.
fn read_exact_spin(s: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct RunResult {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    spin_p50_us: f64,
    spin_p99_us: f64,
    stream_msgs_per_s: f64,
    framed_msgs_per_s: f64,
}

fn connect(addr: SocketAddr, phase: u8) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(&[phase])?;
    Ok(s)
}

fn ping_pong(addr: SocketAddr, round_trips: u64, spin: bool) -> Result<Histogram<u64>> {
    let phase = if spin {
        PHASE_PINGPONG_SPIN
    } else {
        PHASE_PINGPONG
    };
    let mut s = connect(addr, phase)?;
    s.set_nonblocking(spin)?;
    let mut msg = [7u8; MSG_BYTES];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let warmup = round_trips / 10;
    for i in 0..warmup + round_trips {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        s.write_all(&msg)?; // 64 B always fits an empty socket buffer, even non-blocking
        read_exact_spin(&mut s, &mut msg)?;
        let ns = t.elapsed().as_nanos() as u64;
        if u64::from_le_bytes(msg[..8].try_into()?) != i {
            bail!("echo mismatch at {i}");
        }
        if i >= warmup {
            hist.record(ns.max(1))?;
        }
    }
    Ok(hist)
}

fn stream(addr: SocketAddr, messages: u64) -> Result<f64> {
    let mut s = connect(addr, PHASE_STREAM)?;
    s.write_all(&messages.to_le_bytes())?;
    let batch = vec![3u8; BATCH_BYTES];
    let mut left = messages as usize * MSG_BYTES;
    let t = Instant::now();
    while left > 0 {
        let n = left.min(BATCH_BYTES);
        s.write_all(&batch[..n])?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    Ok(messages as f64 / t.elapsed().as_secs_f64())
}

fn framed(addr: SocketAddr, messages: u64) -> Result<f64> {
    let mut s = connect(addr, PHASE_FRAMED)?;
    s.write_all(&messages.to_le_bytes())?;
    let mut out = OutBuf::with_capacity(BATCH_BYTES + 64);
    let payload = [5u8; MSG_BYTES - quark_net::HEADER_BYTES];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < messages {
        // Encode a batch of 64-byte frames, then one write per flush.
        while out.len() + MSG_BYTES <= BATCH_BYTES && sent < messages {
            let head = FrameHead {
                correlation: sent,
                ..FrameHead::new(FrameKind::OneWay)
            };
            let mut f = out.begin_frame(head)?;
            f.extend_from_slice(&payload);
            f.finish(u32::MAX)?;
            sent += 1;
        }
        s.write_all(out.pending())?;
        out.consume(out.len());
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    Ok(messages as f64 / t.elapsed().as_secs_f64())
}

fn client_run(addr: SocketAddr, args: &Args) -> Result<RunResult> {
    let h = ping_pong(addr, args.round_trips, false)?;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let hs = ping_pong(addr, args.round_trips, true)?;
    let spin_us = |q: f64| hs.value_at_quantile(q) as f64 / 1000.0;
    Ok(RunResult {
        p50_us: us(0.50),
        p90_us: us(0.90),
        p99_us: us(0.99),
        p999_us: us(0.999),
        spin_p50_us: spin_us(0.50),
        spin_p99_us: spin_us(0.99),
        stream_msgs_per_s: stream(addr, args.messages)?,
        framed_msgs_per_s: framed(addr, args.messages)?,
    })
}

/// A summary row: JSON name, accessor, display scale, display unit.
type Field = (&'static str, fn(&RunResult) -> f64, f64, &'static str);

fn client(addr: SocketAddr, args: &Args) -> Result<()> {
    println!("{}", quark_bench::machine::Machine::describe().line());
    pin(args.client_cpu);
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let r = client_run(addr, args)?;
        println!(
            "run {}: rtt p50 {:.1} us  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  | busy-poll rtt p50 {:.1} p99 {:.1} | one-way raw {:.2} M msg/s  | one-way quark-net frames {:.2} M msg/s",
            i + 1,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.spin_p50_us,
            r.spin_p99_us,
            r.stream_msgs_per_s / 1e6,
            r.framed_msgs_per_s / 1e6
        );
        runs.push(r);
    }
    let mut json = serde_json::Map::new();
    println!("summary over {} runs: median [min .. max]", runs.len());
    let fields: [Field; 8] = [
        ("rtt_p50_us", |r| r.p50_us, 1.0, "us"),
        ("rtt_p90_us", |r| r.p90_us, 1.0, "us"),
        ("rtt_p99_us", |r| r.p99_us, 1.0, "us"),
        ("rtt_p999_us", |r| r.p999_us, 1.0, "us"),
        ("spin_rtt_p50_us", |r| r.spin_p50_us, 1.0, "us"),
        ("spin_rtt_p99_us", |r| r.spin_p99_us, 1.0, "us"),
        (
            "oneway_raw_msgs_per_s",
            |r| r.stream_msgs_per_s,
            1e6,
            "M msg/s",
        ),
        (
            "oneway_framed_msgs_per_s",
            |r| r.framed_msgs_per_s,
            1e6,
            "M msg/s",
        ),
    ];
    for (name, get, scale, unit) in fields {
        let s = quark_bench::summary::spread(&runs.iter().map(get).collect::<Vec<_>>());
        let (med, lo, hi) = (s.median, s.min, s.max);
        println!(
            "  {name:<26} {:>8.2} [{:.2} .. {:.2}] {unit}",
            med / scale,
            lo / scale,
            hi / scale
        );
        json.insert(
            name.into(),
            serde_json::json!({"median": med, "min": lo, "max": hi}),
        );
    }
    json.insert("runs".into(), runs.len().into());
    json.insert("msg_bytes".into(), MSG_BYTES.into());
    println!("{}", serde_json::Value::Object(json));
    let _ = connect(addr, PHASE_QUIT);
    Ok(())
}

fn spawn_server(args: &Args) -> Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--mode", "server", "--listen", &args.listen.to_string()])
        .args(["--server-cpu", &args.server_cpu.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn server")?;
    let out = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .parse()
        .with_context(|| format!("server printed {line:?}"))?;
    Ok((child, addr))
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.mode {
        Mode::Server => serve(args.listen, args.server_cpu),
        Mode::Client => {
            let addr = args
                .connect
                .context("--connect is required in client mode")?;
            client(addr, &args)
        }
        Mode::Both => {
            let (mut child, addr) = spawn_server(&args)?;
            let res = client(addr, &args);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait()?.is_none() {
                child.kill()?;
            }
            res
        }
    }
}
