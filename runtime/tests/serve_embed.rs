//! `quark::serve` embedded in a program of one's own: the `my_node` example
//! (runtime/examples/my_node.rs) run as a process prints its ready line, serves its own actor
//! type to a `Client`, and on SIGTERM drains, prints `quark: stopped` and exits 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod ports;

#[path = "../examples/my_node.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
mod my_node;
use my_node::{Visit, Visits};

/// The `my_node` example binary of the profile this test was built with, built (or found up
/// to date) by cargo.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // <target>/<profile>/deps/serve_embed-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory");
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cargo
        .args(["build", "--quiet", "-p", "quark", "--example", "my_node"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
        None => panic!("no profile directory above {}", exe.display()),
    }
    let status = cargo.status().expect("run cargo to build the example");
    assert!(status.success(), "building the my_node example failed");
    let bin = profile_dir.join("examples").join("my_node");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `r` sent to a channel by a thread (so reads can have deadlines).
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn start(bin: &Path, args: &[&str]) -> Running {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the my_node example");
    let stdout = lines(child.stdout.take().expect("piped stdout"));
    let stderr = lines(child.stderr.take().expect("piped stderr"));
    Running {
        child,
        stdout,
        stderr,
    }
}

/// The next stdout line containing `what`, within `within`.
fn wait_line(r: &Running, what: &str, within: Duration) -> Result<String, String> {
    let end = Instant::now() + within;
    loop {
        match r
            .stdout
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains(what) => return Ok(line),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "no line with {what:?} ({e:?}); stderr:\n{}",
                    stderr_of(r)
                ))
            }
        }
    }
}

fn stderr_of(r: &Running) -> String {
    r.stderr.try_iter().collect::<Vec<_>>().join("\n")
}

/// Waits for the process to exit, at most `within` (then kills it and fails).
fn wait_exit(r: &mut Running, within: Duration) -> ExitStatus {
    let pid = r.child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let status = std::thread::scope(|s| {
        let child = &mut r.child;
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(status) => Some(status.expect("wait for the child")),
            Err(_) => {
                // SAFETY: kill(2) with the pid of our own child, so the waiting thread ends.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                None
            }
        }
    });
    match status {
        Some(s) => s,
        None => panic!(
            "the node did not exit within {within:?}; stderr:\n{}",
            stderr_of(r)
        ),
    }
}

#[test]
fn my_node_serves_its_own_actor_and_stops_cleanly_on_sigterm() {
    let bin = example_binary();
    let tmp = tempfile::tempdir().unwrap();
    let addr = ports::free_addrs(1)[0];
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nshards = 2\nidle_spin_us = 0\n\n[cluster]\ncluster_id = \"embed\"\nnode_id = 7\n\n\
             [[cluster.nodes]]\nid = 7\naddr = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let mut node = start(&bin, &["--config", config.to_str().unwrap()]);
    let ready = wait_line(&node, "listening on", Duration::from_secs(20)).unwrap();
    assert_eq!(
        ready,
        format!("quark: node 7 listening on {addr} (2 shards)")
    );

    // The node serves the example's own actor type to a client in this process.
    let client = quark::Client::builder()
        .cluster_id("embed")
        .node(7, addr)
        .message::<Visit>()
        .connect()
        .unwrap();
    let home = client.actor_ref::<Visits>("/home");
    assert_eq!(quark::block_on(home.ask(Visit)).unwrap(), 1);
    assert_eq!(quark::block_on(home.ask(Visit)).unwrap(), 2);
    assert_eq!(
        quark::block_on(client.actor_ref::<Visits>("/about").ask(Visit)).unwrap(),
        1
    );
    client.shutdown();

    // SAFETY: kill(2) with the pid of our own child process.
    let rc = unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM sent");
    wait_line(&node, "quark: stopped", Duration::from_secs(20)).unwrap();
    let status = wait_exit(&mut node, Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        stderr_of(&node)
    );
    let log = stderr_of(&node);
    assert!(log.contains("draining"), "the drain is logged: {log}");
}

#[test]
fn my_node_stops_cleanly_on_sigint() {
    let bin = example_binary();
    let tmp = tempfile::tempdir().unwrap();
    let addrs = ports::free_addrs(2);
    let config = tmp.path().join("two.toml");
    // A two-node file, run as its second node (`--node-id` picks the member and its address).
    std::fs::write(
        &config,
        format!(
            "[node]\nshards = 1\nidle_spin_us = 0\n\n[cluster]\ncluster_id = \"embed\"\nnode_id = 1\n\n\
             [[cluster.nodes]]\nid = 1\naddr = \"{}\"\n\n[[cluster.nodes]]\nid = 2\naddr = \"{}\"\n",
            addrs[0], addrs[1]
        ),
    )
    .unwrap();
    let mut node = start(
        &bin,
        &["--config", config.to_str().unwrap(), "--node-id", "2"],
    );
    let ready = wait_line(&node, "listening on", Duration::from_secs(20)).unwrap();
    assert_eq!(
        ready,
        format!("quark: node 2 listening on {} (1 shards)", addrs[1])
    );
    // SAFETY: kill(2) with the pid of our own child process.
    let rc = unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "SIGINT sent");
    wait_line(&node, "quark: stopped", Duration::from_secs(20)).unwrap();
    let status = wait_exit(&mut node, Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        stderr_of(&node)
    );
}

#[test]
fn my_node_refuses_a_bad_config_naming_the_file_and_key() {
    let bin = example_binary();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "[node]\nshards = 2\nshards = 3\n").unwrap();
    let mut node = start(&bin, &["--config", config.to_str().unwrap()]);
    let status = wait_exit(&mut node, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    // The stderr reader thread ends with the process; collect what it read.
    let end = Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while let Ok(line) = node
        .stderr
        .recv_timeout(end.saturating_duration_since(Instant::now()))
    {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains(&format!(
            "{}:3:1: key `node.shards`: duplicate key",
            config.display()
        )),
        "{log}"
    );
    let mut node = start(&bin, &["--node-id", "1"]);
    assert_eq!(
        wait_exit(&mut node, Duration::from_secs(20)).code(),
        Some(1)
    );
}
