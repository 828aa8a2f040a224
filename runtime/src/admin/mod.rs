//! The admin endpoint: Prometheus metrics, health, readiness and status over HTTP.
//!
//! Off by default. With `[admin] listen = "127.0.0.1:9100"` the node serves, on one small
//! thread of its own (never on a shard, so a scrape cannot delay a turn):
//!
//! - `GET /metrics`: Prometheus text exposition (format 0.0.4), built at scrape time from every
//!   shard's counters ([`crate::Node::stats`]); nothing is counted for it on the hot path.
//! - `GET /healthz`: `200` while the process serves HTTP at all.
//! - `GET /readyz`: `200` while the node accepts work; `503` during start-up (log recovery)
//!   and from the moment shutdown begins (drain).
//! - `GET /quark/status`: a JSON [`Status`] (node id, version, state, shards, peers).
//! - `GET /quark/shards`: a JSON [`ShardsReport`]: every shard's load counters, its log's,
//!   its job queue's and its outbox's figures (read on the shards at request time).
//! - `GET /quark/load`: a JSON [`LoadReport`]: turns and turn durations per actor type, the
//!   busiest actors, the communication graph (between types, shards, nodes), the peers'
//!   round-trip times and the trace exporter's counters.
//! - `GET /quark/actors?type=..&prefix=..&shard=..&idle_ms=..&limit=..&cursor=..`: a page of
//!   live activations ([`ActorsPage`]); `GET /quark/actors/counts`: live activations per type
//!   and shard ([`ActorCounts`]). Both walk the shards at request time.
//! - `/quark/jobs/...`: the durable jobs, listed and operated (`GET` reads, `POST`
//!   operations; see [`JobsPage`] and `docs/JOBS.md`).
//! - `/quark/workflows/...`: the workflow instances, listed and operated with JSON inputs
//!   (`GET` reads, `POST` operations; see [`WorkflowsPage`] and `docs/WORKFLOWS.md`).
//! - `GET /quark/reminders?type=T&key=K`: one actor's durable reminders ([`ActorReminders`]);
//!   without a key, every actor's reminders in the cluster ([`RemindersPage`]);
//!   `POST /quark/reminders/cancel`: cancels one ([`CancelledReminder`]).
//! - `/quark/outbox/dead-letters[/{shard}/{id}/replay|purge]`: the outbox's dead letters,
//!   listed ([`DeadLettersPage`]), replayed or purged ([`DeadLetterDone`]).
//! - `GET /` (or `/dashboard`): the dashboard, a page whose script polls the two JSON
//!   documents above while it is open (and visible); its assets are compiled into the binary.
//!
//! Only a loopback address is accepted unless `allow_remote = true`: the status page shows
//! internals and there is no authentication yet (see `docs/OPERATIONS.md`).
//!
//! The server is a minimal HTTP/1.1 server on `std::net`: one accept thread, at most
//! [`CONNECTIONS_MAX`] requests served at once (each on a short-lived thread; a connection
//! over the limit gets `503` at once), a request head of at most [`REQUEST_BYTES_MAX`] bytes
//! (`431` beyond), read and write deadlines of [`IO_TIMEOUT`], one request per connection
//! (`Connection: close`). It stops, and is joined, when the node shuts down.

mod actors;
mod client;
mod dashboard;
mod http;
mod jobs;
mod load;
mod locality;
mod memory;
mod metrics;
mod outbox;
mod probe;
mod reminders;
mod shards;
mod status;
mod workflows;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quark_shard::{Engine, ShardStatsSnapshot, StatsError};

pub use actors::{
    fetch_actor_counts, fetch_actors, fetch_placement, parse_query, query_string, request_move,
    ActorCounts, ActorEntry, ActorsFetchError, ActorsPage, MoveEntry, MoveTarget, ParamError,
    PlacementEntry, TypeCount, ACTOR_QUERY_PARAMS,
};
pub use client::{fetch, fetch_status, request, set_client_tls, FetchError, Response};
pub use jobs::{
    encode_component, ApiError, JobView, JobsPage, JobsSummary, PauseState, JOBS_PAGE_DEFAULT,
    JOBS_PAGE_MAX,
};
pub use load::{
    quantile_us, EdgeReport, LoadReport, NodeTraffic, OtlpReport, PeerRttReport, TopActorReport,
    TypeReport, LOAD_METRICS, TOP_ACTORS_NODE,
};
pub(crate) use locality::LocalityReader;
pub use locality::{LocalityLoad, PairLoad, LOCALITY_METRICS};
pub(crate) use memory::MemorySource;
pub use memory::{MemoryLoad, ShardMemoryLoad, MEMORY_METRICS};
pub use outbox::{DeadLetterDone, DeadLetterView, DeadLettersPage};
pub(crate) use probe::{journal_persisted, projection_fed};
pub use probe::{JournalFigures, LogFigures, OutboxFigures};
pub use reminders::{
    ActorReminders, CancelledReminder, ListedReminderView, ReminderView, RemindersPage,
};
pub use shards::{CallCounts, ShardLoad, ShardsReport};
pub use status::{PeerStatus, ShardStatus, Status};
pub use workflows::{WorkflowHistory, WorkflowItem, WorkflowStarted, WorkflowView, WorkflowsPage};

/// Requests served at once; a connection beyond it is answered `503` and closed.
pub const CONNECTIONS_MAX: usize = 4;
/// Largest request head (request line and headers) read; a larger one is answered `431`.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Read and write deadline of one connection (a client that stalls is dropped).
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The `[admin]` settings (see `docs/CONFIG.md`). No `[admin]` table: no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the endpoint listens (port 0: any free port, see [`crate::Node::admin_addr`]).
    pub listen: SocketAddr,
    /// Accept a non-loopback `listen` address. Off by default: the endpoint has no
    /// authentication and its status page shows the node's internals.
    pub allow_remote: bool,
    /// Serve HTTPS (`admin.tls`); `None` (the default): plain HTTP.
    pub tls: Option<AdminTls>,
}

impl AdminConfig {
    /// Loopback-only, plain-HTTP settings for `listen`.
    pub fn new(listen: SocketAddr) -> AdminConfig {
        AdminConfig {
            listen,
            allow_remote: false,
            tls: None,
        }
    }
}

/// HTTPS on the admin endpoint (`admin.tls = true`): the node's certificate of
/// `[cluster.tls]` (reloaded with it), TLS 1.3; with `client_cert_required`, a client must
/// present a certificate signed by the cluster's CA (`admin.client_cert_required`).
#[derive(Debug, Clone)]
pub struct AdminTls {
    /// The node's TLS material (`[cluster.tls]`).
    pub context: std::sync::Arc<quark_net::tls::TlsContext>,
    /// Refuse clients without a certificate signed by the CA.
    pub client_cert_required: bool,
}

impl PartialEq for AdminTls {
    fn eq(&self, other: &AdminTls) -> bool {
        std::sync::Arc::ptr_eq(&self.context, &other.context)
            && self.client_cert_required == other.client_cert_required
    }
}

impl Eq for AdminTls {}

/// Why the admin endpoint did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// `listen` is not a loopback address and `allow_remote` is off.
    #[error("admin.listen = {addr} is not a loopback address; set admin.allow_remote = true to expose the admin endpoint (it has no authentication)")]
    RemoteRefused {
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on admin address {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the admin endpoint's thread")]
    Thread(#[source] std::io::Error),
}

/// Checks the loopback rule for `config`.
pub(crate) fn check_listen(config: &AdminConfig) -> Result<(), AdminError> {
    if !config.allow_remote && !config.listen.ip().is_loopback() {
        return Err(AdminError::RemoteRefused {
            addr: config.listen,
        });
    }
    Ok(())
}

/// The node's life as the admin endpoint reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// The shards are starting (log recovery): alive, not ready.
    Starting = 0,
    /// Accepting work.
    Ready = 1,
    /// Shutdown began: draining, then stopping.
    Draining = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// The engine, shared by the node (its own methods) and the admin endpoint (scrapes). `None`
/// before the engine started and once shutdown took it.
pub(crate) type EngineSlot = Arc<Mutex<Option<Engine>>>;

/// What a node knows of itself that does not change while it runs.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub(crate) node_id: Option<u64>,
    pub(crate) cluster_listen: Option<SocketAddr>,
    pub(crate) cores: Vec<usize>,
    /// How each shard runs (core, pinning, driver, idle spin), from `Engine::info`.
    pub(crate) shards: Vec<quark_shard::ShardInfo>,
    pub(crate) peers: Vec<(u64, SocketAddr)>,
    /// `[node] app_version` (empty: not set).
    pub(crate) app_version: String,
}

/// State shared by the node and the server's threads.
pub(crate) struct Shared {
    phase: AtomicU8,
    engine: EngineSlot,
    info: OnceLock<NodeInfo>,
    started: Instant,
    /// The last value exported for each counter (see `metrics::Monotonic`).
    monotonic: Mutex<metrics::Monotonic>,
    /// Where the node's memory report comes from, once the node started.
    memory: OnceLock<MemorySource>,
    /// The locality repartitioner's counters, when it runs.
    locality: OnceLock<LocalityReader>,
    /// The OTLP exporter's counters, once the node started one.
    #[cfg(feature = "otlp")]
    otlp: OnceLock<crate::otlp::OtlpStatsHandle>,
    /// The node's move table: `POST /quark/actors/move` records its moves there, so the
    /// automatic movers leave a just-moved actor alone (`Node::move_cooldown`).
    pub(crate) moves: OnceLock<crate::memory::MoveCooldown>,
}

impl Shared {
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Every shard's counters, or `None` when the engine is not running (starting, or taken
    /// by shutdown). Holds the slot's lock while the shards answer (at most a second).
    fn stats(&self) -> Option<Result<Vec<ShardStatsSnapshot>, StatsError>> {
        let slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|e| e.stats())
    }

    /// The node's view of the members (states, versions), or `None` when the engine is not
    /// running or the node is standalone.
    fn members(&self) -> Option<quark_placement::LiveMembers> {
        let slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().and_then(|e| e.members())
    }

    /// Every shard's figures outside the engine (log, jobs, outbox), or `None` when the
    /// engine is not running. The slot's lock is held only to take a handle.
    fn probe(&self) -> Option<Result<Vec<probe::ShardProbe>, probe::ProbeError>> {
        let handle = {
            let slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().map(|e| e.handle())?
        };
        Some(probe::probe_all(&handle))
    }
}

/// The running endpoint. Dropping it stops and joins it.
pub(crate) struct AdminServer {
    shared: Arc<Shared>,
    server: Option<http::Server>,
}

impl AdminServer {
    /// Binds `config.listen` and starts serving, in [`Phase::Starting`].
    pub(crate) fn start(
        config: &AdminConfig,
        engine: EngineSlot,
    ) -> Result<AdminServer, AdminError> {
        check_listen(config)?;
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(Phase::Starting as u8),
            engine,
            info: OnceLock::new(),
            started: Instant::now(),
            monotonic: Mutex::new(metrics::Monotonic::default()),
            memory: OnceLock::new(),
            locality: OnceLock::new(),
            #[cfg(feature = "otlp")]
            otlp: OnceLock::new(),
            moves: OnceLock::new(),
        });
        let server = http::Server::start(config.listen, config.tls.clone(), shared.clone())?;
        tracing::info!(addr = %server.addr(), "admin endpoint listening");
        Ok(AdminServer {
            shared,
            server: Some(server),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map(|s| s.addr())
            .expect("the server is there until stop consumes the AdminServer")
    }

    /// The engine runs: the node is ready.
    pub(crate) fn set_ready(&self, info: NodeInfo) {
        let _ = self.shared.info.set(info);
        self.set_phase(Phase::Ready);
    }

    /// Shutdown began: not ready any more.
    /// Exports the OTLP exporter's counters from now on.
    #[cfg(feature = "otlp")]
    pub(crate) fn set_otlp(&self, stats: crate::otlp::OtlpStatsHandle) {
        let _ = self.shared.otlp.set(stats);
    }

    /// Exports the node's memory (limit, pressure, levels; the monitor's figures when one
    /// runs) from now on.
    pub(crate) fn set_memory(&self, source: MemorySource) {
        let _ = self.shared.memory.set(source);
    }

    /// Exports the locality repartitioner's counters and last round from now on.
    pub(crate) fn set_locality(&self, reader: LocalityReader) {
        let _ = self.shared.locality.set(reader);
    }

    /// Records the moves of `POST /quark/actors/move` in the node's move table from now on.
    pub(crate) fn set_move_cooldown(&self, moves: crate::memory::MoveCooldown) {
        let _ = self.shared.moves.set(moves);
    }

    pub(crate) fn set_draining(&self) {
        self.set_phase(Phase::Draining);
    }

    fn set_phase(&self, to: Phase) {
        let from = self.shared.phase.swap(to as u8, Ordering::AcqRel);
        // Lifecycle: Starting -> Ready -> Draining, or Starting -> Draining; never back.
        debug_assert!(from <= to as u8, "admin phase goes forward only");
    }

    /// Stops the server and waits for its threads.
    pub(crate) fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> EngineSlot {
        Arc::new(Mutex::new(None))
    }

    #[test]
    fn non_loopback_refused_without_allow_remote() {
        let c = AdminConfig::new("0.0.0.0:0".parse().unwrap());
        assert!(matches!(
            AdminServer::start(&c, slot()),
            Err(AdminError::RemoteRefused { .. })
        ));
        let c = AdminConfig {
            allow_remote: true,
            ..c
        };
        let s = AdminServer::start(&c, slot()).expect("allowed with allow_remote");
        s.stop();
    }

    #[test]
    fn readiness_follows_the_phase() {
        let s =
            AdminServer::start(&AdminConfig::new("127.0.0.1:0".parse().unwrap()), slot()).unwrap();
        let get = |path| fetch(s.addr(), path, IO_TIMEOUT).unwrap().status;
        // Starting (recovery): alive, not ready; no stats to export yet.
        assert_eq!(get("/healthz"), 200);
        assert_eq!(get("/readyz"), 503);
        assert_eq!(get("/metrics"), 200);
        // The dashboard and its JSON answer while starting (no shard figures yet).
        let page = fetch(s.addr(), "/", IO_TIMEOUT).unwrap();
        assert_eq!(page.status, 200);
        assert!(
            page.content_type.starts_with("text/html"),
            "{}",
            page.content_type
        );
        assert!(page.body.contains("/dashboard.js"));
        let js = fetch(s.addr(), "/dashboard.js", IO_TIMEOUT).unwrap();
        assert!(js.content_type.starts_with("text/javascript"));
        let shards = fetch(s.addr(), "/quark/shards", IO_TIMEOUT).unwrap();
        assert_eq!(shards.status, 200);
        let report: ShardsReport = serde_json::from_str(&shards.body).unwrap();
        assert!(report.shards.is_empty() && report.error.is_none());
        s.set_ready(NodeInfo {
            node_id: None,
            cluster_listen: None,
            cores: vec![],
            shards: vec![],
            peers: vec![],
            app_version: String::new(),
        });
        assert_eq!(get("/readyz"), 200);
        s.set_draining();
        assert_eq!(get("/readyz"), 503);
        assert_eq!(get("/healthz"), 200);
        assert_eq!(get("/nope"), 404);
        // HEAD: a GET's head (its length), no body.
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(s.addr()).unwrap();
        c.write_all(b"HEAD /healthz HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Length: 3\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer}");
        drop(c);
        s.stop();
    }
}
