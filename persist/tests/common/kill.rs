//! SIGKILL harness of the crash tests: the child announces that its log is open, the parent
//! kills it only after that, at a random moment; and [`SplitIo`], a backend that issues each
//! write as several smaller `pwrite`s so a kill can land inside one flush.
//!
//! Included with `#[path = "common/kill.rs"] mod kill;` (next to `mod common;`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_persist::{LogFile, LogIo, StdFile, StdIo};

/// The line a child prints once `Log::open` returned (recovery done, log usable).
pub const READY: &str = "READY";

/// When the parent kills the child.
#[derive(Copy, Clone, Debug)]
pub struct KillPlan {
    /// Acknowledgements to read after [`READY`] before arming the kill (0: at once).
    pub after_acks: u64,
    /// Then wait this long before the SIGKILL, reading acknowledgements meanwhile. Not a
    /// synchronisation: it only spreads the kill over whatever the child is doing.
    pub delay: Duration,
}

/// What a round observed.
#[derive(Debug, Default)]
pub struct Killed {
    /// Acknowledgement lines read (before and after the kill was armed).
    pub acks: u64,
}

/// Runs this test binary's test `child_test` as a child process (with `env_key=env_value`),
/// hands every stdout line holding `ACK ` to `on_ack` (what follows it), and SIGKILLs the
/// child as `plan` says, counting from its [`READY`] line. Checks that the child printed
/// [`READY`], died by that SIGKILL (not by an error or a panic) and did not hang (a 60 s
/// watchdog kills a hung child and fails the round).
pub fn run_child_and_kill(
    child_test: &str,
    env_key: &str,
    env_value: &Path,
    plan: KillPlan,
    round: u32,
    mut on_ack: impl FnMut(&str),
) -> Killed {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(&exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env_key, env_value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let pid = child.id() as i32;
    // The child's stderr, kept to explain a child that failed (its panic message).
    let stderr = {
        let mut pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    // SAFETY: plain kill(2) of our own child's pid (not yet reaped: the
                    // parent waits for it only after this thread is told `done`).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::park_timeout(Duration::from_millis(50));
            }
            false
        })
    };
    let mut killer: Option<std::thread::JoinHandle<()>> = None;
    let arm = |killer: &mut Option<std::thread::JoinHandle<()>>| {
        if killer.is_none() {
            let delay = plan.delay;
            *killer = Some(std::thread::spawn(move || {
                std::thread::sleep(delay);
                // SAFETY: as above; the child is reaped only after this thread is joined.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }));
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut ready = false;
    let mut killed = Killed::default();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // The harness prints "test <name> ... " without a newline before the child's first
        // line, so a marker may follow it on the same line.
        if !ready && line.contains(READY) {
            ready = true;
            if plan.after_acks == 0 {
                arm(&mut killer);
            }
        }
        if let Some((_, rest)) = line.split_once("ACK ") {
            assert!(ready, "round {round}: acknowledgement before {READY}");
            on_ack(rest);
            killed.acks += 1;
            if killed.acks == plan.after_acks {
                arm(&mut killer);
            }
        }
    }
    if let Some(k) = killer {
        k.join().expect("killer thread");
    }
    let status = child.wait().expect("wait");
    done.store(true, Ordering::Release);
    watchdog.thread().unpark();
    assert!(
        !watchdog.join().expect("watchdog"),
        "round {round}: child hung (ready: {ready}, acks: {})",
        killed.acks
    );
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        ready,
        "round {round}: the child never opened its log ({status}); its stderr:\n{stderr}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "round {round}: the child must die by SIGKILL, not by an error ({status}); its \
         stderr:\n{stderr}"
    );
    killed
}

/// [`StdIo`] whose writes go out as `piece_bytes` `pwrite`s in order, so that a process
/// kill can land between the pieces of one flush and leave a torn batch in the page cache
/// (a single large `pwrite` can also stop short on a fatal signal, between pages, but only
/// rarely inside the window a test can hit).
#[derive(Clone, Copy, Debug)]
pub struct SplitIo {
    pub piece_bytes: usize,
}

pub struct SplitFile {
    inner: StdFile,
    piece_bytes: usize,
}

impl LogIo for SplitIo {
    type File = SplitFile;
    async fn open(&self, path: &Path, create: bool) -> std::io::Result<SplitFile> {
        Ok(SplitFile {
            inner: StdIo.open(path, create).await?,
            piece_bytes: self.piece_bytes,
        })
    }
    async fn open_write_through(&self, path: &Path) -> std::io::Result<SplitFile> {
        Ok(SplitFile {
            inner: StdIo.open_write_through(path).await?,
            piece_bytes: self.piece_bytes,
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdIo.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove(path).await
    }
    async fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        StdIo.list_dir(dir).await
    }
    async fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.create_dir_all(dir).await
    }
    async fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.sync_dir(dir).await
    }
}

impl LogFile for SplitFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> std::io::Result<()> {
        for (i, piece) in buf.chunks(self.piece_bytes.max(1)).enumerate() {
            let at = pos + (i * self.piece_bytes) as u64;
            self.inner.write_all_at(Rc::new(piece.to_vec()), at).await?;
        }
        Ok(())
    }
    async fn read_at(&self, buf: Vec<u8>, pos: u64) -> (std::io::Result<usize>, Vec<u8>) {
        self.inner.read_at(buf, pos).await
    }
    async fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data().await
    }
    async fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len).await
    }
    async fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len).await
    }
    async fn file_len(&self) -> std::io::Result<u64> {
        self.inner.file_len().await
    }
}
