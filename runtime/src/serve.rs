//! [`serve`]: runs a node of your own actor types as one member of a cluster, as `quark serve`
//! runs the built-in ones: it reads the configuration file, starts the node, prints a ready
//! line, waits for SIGINT or SIGTERM, drains and stops.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use quark_shard::ShutdownReport;

use crate::config::{ConfigError, NodeConfig};
use crate::node::{NodeBuilder, NodeError};

/// What [`serve`] runs: the configuration file, and which member of `[[cluster.nodes]]` this
/// process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The node's configuration file (TOML, with a `[cluster]` section; see `docs/CONFIG.md`).
    pub config: PathBuf,
    /// Run as this member of `[[cluster.nodes]]`: overrides `cluster.node_id` and listens on
    /// that member's address, so that one file can describe the whole cluster.
    pub node_id: Option<u64>,
}

impl ServeOptions {
    /// Serve with the configuration file `config` (as the file's `cluster.node_id`).
    pub fn new(config: impl Into<PathBuf>) -> Self {
        ServeOptions {
            config: config.into(),
            node_id: None,
        }
    }

    /// Reads the options from command-line arguments (without the program name):
    /// `--config PATH [--node-id N]`, also as `--config=PATH` and `--node-id=N`.
    ///
    /// ```
    /// let o = quark::ServeOptions::from_args(["--config", "n.toml", "--node-id=2"]).unwrap();
    /// assert_eq!(o.config, std::path::PathBuf::from("n.toml"));
    /// assert_eq!(o.node_id, Some(2));
    /// ```
    pub fn from_args<I, S>(args: I) -> Result<ServeOptions, ServeError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = None;
        let mut node_id = None;
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |flag: &'static str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or(ServeError::Usage {
                        arg: flag.to_owned(),
                        expected: "a value after it",
                    })
            };
            match flag.as_str() {
                "--config" => config = Some(PathBuf::from(value("--config")?)),
                "--node-id" => {
                    let v = value("--node-id")?;
                    node_id = Some(v.parse().map_err(|_| ServeError::Usage {
                        arg: format!("--node-id {v}"),
                        expected: "a node id (an unsigned integer)",
                    })?);
                }
                _ => {
                    return Err(ServeError::Usage {
                        arg,
                        expected: "--config PATH or --node-id N",
                    })
                }
            }
        }
        let config = config.ok_or(ServeError::Usage {
            arg: "--config".to_owned(),
            expected: "required",
        })?;
        Ok(ServeOptions { config, node_id })
    }
}

/// Why [`serve`] failed (before the node ran, or because it could not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A command-line argument of [`ServeOptions::from_args`] is wrong or missing.
    #[error("command line: `{arg}`: {expected} (usage: --config PATH [--node-id N])")]
    Usage {
        /// The argument.
        arg: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The configuration file was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file has no `[cluster]` section: a node that serves must listen.
    #[error("{}: serving needs a [cluster] section (see docs/examples/cluster-single.toml)", file.display())]
    NoCluster {
        /// The file.
        file: PathBuf,
    },
    /// `node_id` is not one of the file's `[[cluster.nodes]]`.
    #[error("--node-id {id}: {} has no such node in [[cluster.nodes]]", file.display())]
    UnknownNodeId {
        /// The file.
        file: PathBuf,
        /// The id asked for.
        id: u64,
    },
    /// The SIGINT/SIGTERM handlers could not be installed.
    #[error("cannot install the SIGINT/SIGTERM handlers")]
    Signals {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another `serve` runs in this process (the signal handlers are per process).
    #[error("another quark::serve is already running in this process")]
    AlreadyServing,
    /// The node did not start (actor sections, cores, listen address, ...).
    #[error("starting the node from {}", file.display())]
    Start {
        /// The configuration file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: NodeError,
    },
}

/// Runs `builder`'s actor types as one cluster member until SIGINT or SIGTERM, then drains and
/// stops the node; returns the shutdown report (`ShutdownReport::default()`: a clean drain).
///
/// In order:
/// 1. installs handlers for SIGINT and SIGTERM (restored when `serve` returns);
/// 2. reads `options.config` (errors name the file and the key), applies `options.node_id`,
///    and requires a `[cluster]` section;
/// 3. starts the node: the file is the builder's configuration (replacing an earlier
///    `config`/`config_file`), and the builder's `engine(..)` overrides apply over it;
/// 4. prints the ready line to stdout, which scripts and tests wait for:
///    `quark: node <id> listening on <ip:port> (<n> shards)`;
/// 5. waits for SIGINT or SIGTERM (one received during start-up counts), then moves the
///    active migratable actors to the other nodes ([`crate::Node::drain`], at most half of
///    `node.shutdown_timeout_ms`), then drains the
///    node ([`crate::Node::shutdown`]: queued and running turns finish, activations
///    deactivate, within `node.shutdown_timeout_ms`) and prints `quark: stopped`. Further
///    signals during the drain are ignored (the drain is bounded by that timeout); SIGKILL
///    stops the process at once.
///
/// Logs go through `tracing`: install a subscriber (e.g. `tracing_subscriber::fmt()`) to see
/// them. Only one `serve` runs per process at a time ([`ServeError::AlreadyServing`]).
///
/// ```no_run
/// use quark::{Actor, ActorType, Node, ServeOptions};
/// # struct Mine;
/// # impl Actor for Mine { const TYPE_NAME: &'static str = "mine"; }
/// let options = ServeOptions::from_args(std::env::args().skip(1))?;
/// let builder = Node::builder().register(ActorType::new(|_| Mine));
/// quark::serve(builder, &options)?;
/// # Ok::<(), quark::ServeError>(())
/// ```
pub fn serve(builder: NodeBuilder, options: &ServeOptions) -> Result<ShutdownReport, ServeError> {
    let signals = SignalPipe::install()?;
    let file = options.config.as_path();
    let config = load(file, options.node_id)?;
    let node = builder
        .config(config)
        .start()
        .map_err(|source| ServeError::Start {
            file: file.to_path_buf(),
            source,
        })?;
    // `load` made sure of a [cluster] section, so the node listens.
    let addr = node
        .listen_addr()
        .map_or_else(|| "(nowhere)".to_owned(), |a| a.to_string());
    let id = node.node_id().unwrap_or(0);
    tracing::info!(node = id, %addr, shards = node.shard_count(), "serving");
    ready_line(&format!(
        "quark: node {id} listening on {addr} ({} shards)",
        node.shard_count()
    ));
    let sig = signals.wait();
    tracing::info!(signal = sig, "signal received: draining");
    if node.node_id().is_some() {
        // Moves the active migratable actors to the other nodes first (a no-op without
        // peers or without such actors).
        let d = node.drain();
        tracing::info!(
            moved = d.moved,
            failed = d.failed,
            not_movable = d.not_movable,
            duration_ms = d.duration.as_millis() as u64,
            "drained to the other nodes"
        );
    }
    let report = node.shutdown();
    if report != ShutdownReport::default() {
        tracing::warn!(?report, "shutdown did not complete cleanly");
    }
    ready_line("quark: stopped");
    Ok(report)
}

/// Prints a line of the stdout protocol and flushes it (a pipe is not line-buffered by the
/// reader's clock). A closed stdout is not an error: the node runs on.
fn ready_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn load(file: &Path, node_id: Option<u64>) -> Result<NodeConfig, ServeError> {
    let mut config = NodeConfig::from_file(file)?;
    let Some(cluster) = config.cluster.as_mut() else {
        return Err(ServeError::NoCluster {
            file: file.to_path_buf(),
        });
    };
    if let Some(id) = node_id {
        if cluster.net.dynamic_members && !cluster.net.membership.contains(id) {
            // Membership on etcd: the node's own entry is its listen address.
            let own = quark_net::Membership::from_config(&quark_net::ClusterConfig {
                cluster_id: cluster.net.membership.cluster_id().to_owned(),
                nodes: vec![quark_net::MemberAddr {
                    id,
                    addr: cluster.listen.to_string(),
                }],
            })
            .map_err(|source| {
                ServeError::Config(crate::ConfigError::Cluster {
                    file: file.to_path_buf(),
                    source,
                })
            })?;
            cluster.net.membership = own;
            cluster.net.node_id = id;
            return Ok(config);
        }
        let Some(addr) = cluster.net.membership.addr(id) else {
            return Err(ServeError::UnknownNodeId {
                file: file.to_path_buf(),
                id,
            });
        };
        cluster.net.node_id = id;
        cluster.listen = addr;
    }
    Ok(config)
}

/// The write end of the signal pipe, for the handler (-1: none installed). Written before the
/// handlers are installed and after they are removed; the `sigaction` calls order it for the
/// handler, and SeqCst keeps the reasoning simple (it is touched twice per `serve`).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: an atomic load and `write` (errno saved around it).
    // SAFETY: __errno_location returns this thread's errno slot; write gets a valid one-byte
    // buffer, and a full or closed pipe only makes it fail (the write end is non-blocking).
    unsafe {
        let errno = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
        if fd >= 0 {
            let byte = sig as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// SIGINT and SIGTERM handlers that write the signal number into a pipe, so any thread (a
/// shard thread included) can take the signal and `wait` reads it. Dropping it restores the
/// previous handlers.
struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

impl SignalPipe {
    fn install() -> Result<SignalPipe, ServeError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(signals_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The handler must never block: a full pipe drops the byte (one is enough).
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(signals_error());
        }
        if SIGNAL_PIPE
            .compare_exchange(-1, write.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(ServeError::AlreadyServing);
        }
        let mut pipe = SignalPipe {
            read,
            _write: write,
            previous: Vec::new(),
        };
        for sig in SIGNALS {
            // SAFETY: a zeroed sigaction is a valid value to fill; the handler is an
            // `extern "C" fn(c_int)` as sa_sigaction expects without SA_SIGINFO.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) != 0 {
                    return Err(signals_error()); // `pipe`'s drop restores the others
                }
                pipe.previous.push((sig, old));
            }
            // A signal blocked in this thread (as `quark serve` used to block them) would
            // never reach the handler here: unblock ours.
            // SAFETY: a sigset initialized by sigemptyset/sigaddset.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
        Ok(pipe)
    }

    /// Blocks until a handled signal arrives; returns its number.
    fn wait(&self) -> i32 {
        loop {
            let mut byte = 0u8;
            // SAFETY: reads at most one byte into `byte` from a descriptor we own.
            let n = unsafe { libc::read(self.read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                return i32::from(byte);
            }
            let err = std::io::Error::last_os_error();
            if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The pipe cannot close while we hold its write end; any other error means we
            // cannot wait for signals any more: stop as if asked to.
            tracing::error!(error = %err, "reading the signal pipe failed: stopping");
            return libc::SIGTERM;
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: `old` is what sigaction returned for `sig`.
            unsafe {
                libc::sigaction(sig, &old, std::ptr::null_mut());
            }
        }
        SIGNAL_PIPE.store(-1, Ordering::SeqCst);
    }
}

fn signals_error() -> ServeError {
    ServeError::Signals {
        source: std::io::Error::last_os_error(),
    }
}
