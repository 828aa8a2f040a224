//! [`Client`]: an external, non-member handle to a cluster. It hosts no actors; it dials every
//! node (handshake role `Client`) and sends to actors by id with the cluster's placement
//! function, straight to the owner node.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_net::tls::{TlsBlocking, TlsContext, TlsIoError, TlsSessionError};

use quark_net::{
    ClusterSecret, DriveError, HandshakeConfig, HandshakeDriver, HandshakeError, Initiator,
    Membership, OutBuf, PeerInfo, PeerRole, HANDSHAKE_FRAME_BYTES_MAX, PROTOCOL_VERSION,
};
use quark_shard::{
    Actor, ActorKey, ActorRef, Engine, EngineBuilder, EngineConfig, NetConfig, ShardId, ShardSpec,
    ShardStatsSnapshot, ShutdownReport, SpawnHandle, StartError,
};

/// Why a [`Client`] could not be built, or a [`probe`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No node address was given.
    #[error("a client needs at least one node address")]
    NoNodes,
    /// The member set could not be read from etcd ([`ClientBuilder::etcd`]).
    #[cfg(feature = "etcd")]
    #[error("reading the members from etcd")]
    Etcd(#[source] crate::etcd::EtcdError),
    /// A node could not be reached.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake with a node failed (the cause names both sides' claims).
    #[error("handshake with {addr}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: HandshakeError,
    },
    /// The node closed the connection or sent an invalid frame during the handshake.
    #[error("handshake with {addr}: the peer closed the connection or sent an invalid frame")]
    HandshakeBroken {
        /// The address.
        addr: SocketAddr,
    },
    /// The node at `addr` answered with another node id than the one it was listed with.
    #[error("node at {addr} is node {found}, but it was listed as node {expected}")]
    WrongNode {
        /// The address.
        addr: SocketAddr,
        /// The id it was listed with ([`ClientBuilder::node`]).
        expected: u64,
        /// The id it presented.
        found: u64,
    },
    /// TLS with a node failed (the cause says which side refused what: an untrusted or
    /// expired certificate, no certificate, a node without TLS).
    #[error("TLS with {addr}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: TlsSessionError,
    },
    /// The node answered with TLS records but this client has no TLS configured
    /// ([`ClientBuilder::tls`]).
    #[error("handshake with {addr}: the node speaks TLS and this client has no TLS configured")]
    TlsRequired {
        /// The address.
        addr: SocketAddr,
    },
    /// The client's TLS files could not be loaded (the source names the file).
    #[error("client TLS files")]
    TlsFiles(#[source] quark_net::tls::TlsError),
    /// The cluster secret could not be read (e.g. [`ClientBuilder::secret_env`] names a
    /// variable that is not set).
    #[error("cluster secret")]
    Secret(#[source] quark_net::SecretError),
    /// The nodes' ids do not form a valid membership (e.g. two addresses answered with the
    /// same node id).
    #[error(transparent)]
    Membership(#[from] quark_net::MembershipError),
    /// The client's engine could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Dials `addr` and runs the handshake as `cfg` says, blocking, within `timeout`; returns the
/// node's identity. Used by [`ClientBuilder::connect`] to learn node ids from addresses, and
/// to check a node's settings (cluster id, secret, version) from tools and tests.
pub fn probe(
    addr: SocketAddr,
    cfg: HandshakeConfig,
    timeout: Duration,
) -> Result<PeerInfo, ClientError> {
    probe_with(addr, cfg, None, timeout)
}

/// [`probe`] over TLS when `tls` is given (the TLS handshake first, then the Quark one inside
/// it, as the nodes' connections do).
pub fn probe_with(
    addr: SocketAddr,
    cfg: HandshakeConfig,
    tls: Option<&TlsContext>,
    timeout: Duration,
) -> Result<PeerInfo, ClientError> {
    let connect = |source| ClientError::Connect { addr, source };
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
    let deadline = Instant::now() + timeout;
    let mut s = match tls {
        None => ProbeIo::Plain(s),
        Some(ctx) => {
            s.set_read_timeout(Some(timeout)).map_err(connect)?;
            let sess = ctx
                .client_session(addr.ip())
                .map_err(|source| ClientError::Tls { addr, source })?;
            let mut t = TlsBlocking::new(sess, s);
            t.handshake().map_err(|e| tls_io_error(addr, e))?;
            ProbeIo::Tls(Box::new(t))
        }
    };
    let init = Initiator::new(cfg, rand::random(), None);
    // The same driver the nodes' connections use; here over a blocking socket.
    let mut hs = HandshakeDriver::dial(init, HANDSHAKE_FRAME_BYTES_MAX)
        .map_err(|e| handshake_error(addr, e))?;
    let mut buf = [0u8; 4096];
    let mut first = true;
    loop {
        s.flush(hs.out()).map_err(|e| tls_io_error(addr, e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let source = hs.on_timeout();
            let _ = s.flush(hs.out());
            return Err(ClientError::Handshake { addr, source });
        }
        s.stream().set_read_timeout(Some(left)).map_err(connect)?;
        let n = match s.read(&mut buf) {
            Ok(0) => return Err(ClientError::HandshakeBroken { addr }),
            Ok(n) => n,
            Err(TlsIoError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(tls_io_error(addr, e)),
        };
        if std::mem::take(&mut first)
            && matches!(s, ProbeIo::Plain(_))
            && quark_net::tls::looks_like_tls(&buf[..n])
        {
            return Err(ClientError::TlsRequired { addr });
        }
        let done = hs.on_bytes(&buf[..n]);
        if !matches!(done, Ok(None)) {
            // Best effort: the last frame (a Welcome's answer, or a Reject saying why).
            let _ = s.flush(hs.out());
        }
        match done {
            Ok(None) => {}
            Ok(Some(peer)) => return Ok(peer),
            Err(e) => return Err(handshake_error(addr, e)),
        }
    }
}

/// The probe's connection: plain TCP or TLS over it.
enum ProbeIo {
    Plain(TcpStream),
    Tls(Box<TlsBlocking<TcpStream>>),
}

impl ProbeIo {
    /// Writes what the handshake has to send.
    fn flush(&mut self, out: &mut OutBuf) -> Result<(), TlsIoError> {
        if !out.is_empty() {
            match self {
                ProbeIo::Plain(s) => s.write_all(out.pending())?,
                ProbeIo::Tls(t) => t.write_all(out.pending())?,
            }
            out.clear();
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsIoError> {
        match self {
            ProbeIo::Plain(s) => Ok(s.read(buf)?),
            ProbeIo::Tls(t) => t.read(buf),
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        match self {
            ProbeIo::Plain(s) => s,
            ProbeIo::Tls(t) => t.get_mut(),
        }
    }
}

fn tls_io_error(addr: SocketAddr, e: TlsIoError) -> ClientError {
    match e {
        TlsIoError::Io(source) => ClientError::Connect { addr, source },
        TlsIoError::Tls(source) => ClientError::Tls { addr, source },
        _ => ClientError::HandshakeBroken { addr },
    }
}

fn handshake_error(addr: SocketAddr, e: DriveError) -> ClientError {
    match e {
        DriveError::Handshake(source) => ClientError::Handshake { addr, source },
        // An invalid frame: not a Quark node, or a broken stream.
        _ => ClientError::HandshakeBroken { addr },
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    cluster_id: String,
    secret: Option<ClusterSecret>,
    secret_env: Option<String>,
    tls: Option<Arc<TlsContext>>,
    tls_files: Option<quark_net::tls::TlsFiles>,
    require_all_nodes: bool,
    nodes: Vec<(Option<u64>, SocketAddr)>,
    engine: EngineConfig,
    net: Box<dyn FnOnce(&mut NetConfig)>,
    wire: Vec<Box<dyn FnOnce(EngineBuilder) -> EngineBuilder>>,
    probe_timeout: Duration,
    #[cfg(feature = "etcd")]
    etcd: Option<crate::cluster::EtcdSettings>,
}

impl ClientBuilder {
    /// The cluster id the nodes expect.
    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = id.into();
        self
    }

    /// The cluster secret (`None`: the nodes have none; loopback only).
    pub fn secret(mut self, secret: Option<ClusterSecret>) -> Self {
        self.secret = secret;
        self.secret_env = None;
        self
    }

    /// Reads the cluster secret from environment variable `var` at
    /// [`connect`](Self::connect); the variable must be set (unset or empty:
    /// [`ClientError::Secret`]), as for a node's `cluster.secret_env`.
    pub fn secret_env(mut self, var: impl Into<String>) -> Self {
        self.secret_env = Some(var.into());
        self
    }

    /// Connects over TLS 1.3 with this certificate, key and CA (mutual TLS: the nodes must
    /// have `[cluster.tls]` with the same CA). Replaces [`tls_files`](Self::tls_files).
    pub fn tls(mut self, ctx: Arc<TlsContext>) -> Self {
        self.tls = Some(ctx);
        self.tls_files = None;
        self
    }

    /// Like [`tls`](Self::tls), loading the files at [`connect`](Self::connect) (an invalid
    /// file fails it with [`ClientError::TlsFiles`], naming the file). The files are checked
    /// for changes as a node's are (new connections use a rotated certificate).
    pub fn tls_files(mut self, files: quark_net::tls::TlsFiles) -> Self {
        self.tls_files = Some(files);
        self.tls = None;
        self
    }

    /// `true`: [`connect`](Self::connect) fails unless the handshake succeeds with every
    /// listed node. `false` (default): at least one node must complete it, and none may
    /// refuse it.
    pub fn require_all_nodes(mut self, yes: bool) -> Self {
        self.require_all_nodes = yes;
        self
    }

    /// A node by id and address (as in the nodes' `[[cluster.nodes]]`).
    pub fn node(mut self, id: u64, addr: SocketAddr) -> Self {
        self.nodes.push((Some(id), addr));
        self
    }

    /// A node by address only: its id is learned with a handshake at
    /// [`connect`](Self::connect) (the node must be up then). List every node of the
    /// cluster: placement is computed over the listed nodes.
    pub fn target(mut self, addr: SocketAddr) -> Self {
        self.nodes.push((None, addr));
        self
    }

    /// Reads the members from etcd (`endpoints`; `prefix` default
    /// `/quark/<cluster_id>/members/`, as the nodes' `[cluster.membership]`) at
    /// [`connect`](Self::connect), in addition to the listed nodes, and follows the member set
    /// from then on (a side thread watches it): placement agrees with the nodes' as they join
    /// and leave. Cargo feature `etcd`.
    #[cfg(feature = "etcd")]
    pub fn etcd(mut self, endpoints: Vec<String>, prefix: Option<String>) -> Self {
        self.etcd = Some(crate::cluster::EtcdSettings {
            endpoints,
            prefix: prefix.unwrap_or_default(),
            lease_ttl_s: crate::cluster::ETCD_LEASE_TTL_S_DEFAULT,
            zone: String::new(),
            advertise: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls: None,
            auth: None,
        });
        self
    }

    /// TLS (and mutual TLS) to etcd for [`etcd`](Self::etcd) (call after it): the CA that
    /// signs etcd's certificate, and optionally this client's certificate and key. The
    /// endpoints must be `https://`.
    #[cfg(feature = "etcd")]
    pub fn etcd_tls(mut self, tls: crate::cluster::EtcdTls) -> Self {
        if let Some(e) = self.etcd.as_mut() {
            e.tls = Some(tls);
        }
        self
    }

    /// etcd authentication for [`etcd`](Self::etcd) (call after it).
    #[cfg(feature = "etcd")]
    pub fn etcd_auth(mut self, auth: crate::cluster::EtcdAuth) -> Self {
        if let Some(e) = self.etcd.as_mut() {
            e.auth = Some(auth);
        }
        self
    }

    /// Lets the client send `M` (and read its reply).
    pub fn message<M>(mut self) -> Self
    where
        M: quark_shard::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.wire.push(Box::new(|b| b.wire_message::<M>()));
        self
    }

    /// Changes the client's engine settings (by default one unpinned shard that parks when
    /// idle).
    pub fn engine(mut self, f: impl FnOnce(&mut EngineConfig)) -> Self {
        f(&mut self.engine);
        self
    }

    /// Changes the transport settings (heartbeats, backoff, bounds).
    pub fn transport(mut self, f: impl FnOnce(&mut NetConfig) + 'static) -> Self {
        self.net = Box::new(f);
        self
    }

    /// Starts the client. First it runs one handshake with every listed node (in parallel,
    /// each within the probe timeout, 2 s), which checks the cluster id, the secret, the
    /// protocol version and the node id, and learns the ids of nodes given by address only:
    ///
    /// - a node that refuses the handshake (or answers with another node id) fails `connect`
    ///   with that node's cause ([`ClientError::Handshake`] names what differs, e.g. the
    ///   secrets or the cluster ids);
    /// - a node that cannot be reached is tolerated if it was listed with its id and at least
    ///   one node completed the handshake (unless [`require_all_nodes`](Self::require_all_nodes));
    ///   calls to its actors fail with `CallError::NodeUnavailable`, whose `source()` is the
    ///   connection error, until it is up;
    /// - no node reached: the first node's connection error.
    ///
    /// Then it starts the client's engine, which dials every node from its shard(s); links come
    /// up in the background (asks sent meanwhile wait for them, within their deadline).
    // `mut`: the etcd feature adds the members it reads to `nodes`.
    #[cfg_attr(not(feature = "etcd"), allow(unused_mut))]
    pub fn connect(mut self) -> Result<Client, ClientError> {
        #[cfg(feature = "etcd")]
        let etcd = match self.etcd.take() {
            Some(mut cfg) => {
                if cfg.prefix.is_empty() {
                    cfg.prefix = format!("/quark/{}/members/", self.cluster_id);
                }
                let m = crate::etcd::EtcdMembership::watch(cfg).map_err(ClientError::Etcd)?;
                for r in m.view().live.values() {
                    let Ok(addr) = r.addr.parse::<SocketAddr>() else {
                        continue;
                    };
                    if !self
                        .nodes
                        .iter()
                        .any(|(id, a)| *id == Some(r.id) || *a == addr)
                    {
                        self.nodes.push((Some(r.id), addr));
                    }
                }
                Some(m)
            }
            None => None,
        };
        if self.nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let secret = match &self.secret_env {
            Some(var) => Some(ClusterSecret::require_env(var).map_err(ClientError::Secret)?),
            None => self.secret.clone(),
        };
        let tls = match self.tls_files.clone() {
            Some(f) => Some(TlsContext::load(f).map_err(ClientError::TlsFiles)?),
            None => self.tls.clone(),
        };
        let client_id: u64 = rand::random::<u64>() | (1 << 63);
        let hs = HandshakeConfig {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: client_id,
            role: PeerRole::Client,
            secret: secret.clone(),
            shard: 0,
            app_version: String::new(),
        };
        let timeout = self.probe_timeout;
        let probes: Vec<Result<PeerInfo, ClientError>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .nodes
                .iter()
                .map(|&(_, addr)| {
                    let cfg = hs.clone();
                    let tls = tls.as_deref();
                    s.spawn(move || probe_with(addr, cfg, tls, timeout))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a probe thread does not panic"))
                .collect()
        });
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut first_unreachable = None;
        let mut reached = 0;
        for (&(id, addr), probe) in self.nodes.iter().zip(probes) {
            let id = match (id, probe) {
                (Some(expected), Ok(peer)) if peer.node_id != expected => {
                    return Err(ClientError::WrongNode {
                        addr,
                        expected,
                        found: peer.node_id,
                    })
                }
                (_, Ok(peer)) => {
                    reached += 1;
                    peer.node_id
                }
                (Some(id), Err(e @ ClientError::Connect { .. })) => {
                    first_unreachable.get_or_insert(e);
                    id
                }
                (_, Err(e)) => return Err(e),
            };
            nodes.push(quark_net::MemberAddr {
                id,
                addr: addr.to_string(),
            });
        }
        if let Some(e) = first_unreachable {
            if reached == 0 || self.require_all_nodes {
                return Err(e);
            }
            tracing::warn!(error = %quark_shard::ErrorChain(&e),
                "a node is unreachable; the client starts with the others");
        }
        let membership = Membership::from_config(&quark_net::ClusterConfig {
            cluster_id: self.cluster_id,
            nodes,
        })?;
        let members = membership.nodes().map(|(id, _)| id).collect();
        let mut net = NetConfig::new(client_id, PeerRole::Client, membership);
        net.secret = secret;
        net.tls = tls;
        #[cfg(feature = "etcd")]
        {
            net.dynamic_members = etcd.is_some();
        }
        (self.net)(&mut net);
        let mut engine = self.engine;
        engine.net = Some(net);
        let mut b = EngineBuilder::new(engine);
        for w in self.wire {
            b = w(b);
        }
        // The job gateway's messages, for `Client::jobs`.
        {
            use crate::jobs::remote as r;
            b = b
                .wire_message::<r::RemoteEnqueue>()
                .wire_message::<r::RemoteJobStatus>()
                .wire_message::<r::RemoteJobCancel>()
                .wire_message::<r::RemoteJobList>()
                .wire_message::<r::RemoteJobPause>();
        }
        // The workflow instances' messages, for `Client::workflows`.
        {
            use crate::workflow::remote as w;
            b = b
                .wire_message::<w::WfStart>()
                .wire_message::<w::WfStatusQuery>()
                .wire_message::<w::WfRaise>()
                .wire_message::<w::WfStop>()
                .wire_message::<w::WfHistoryQuery>()
                .wire_message::<w::WfPurge>();
        }
        let engine = b.start()?;
        #[cfg(feature = "etcd")]
        if let Some(m) = &etcd {
            m.attach(engine.handle());
        }
        Ok(Client {
            engine,
            members,
            #[cfg(feature = "etcd")]
            etcd,
        })
    }
}

/// An external handle to a cluster: it hosts no actors and is not a member; it holds one
/// connection per node (per client shard) and sends each message straight to the node that
/// owns the actor, computed with the same placement function as the nodes.
///
/// ```no_run
/// use quark::builtin::{Counter, Add};
/// let client = quark::Client::builder()
///     .cluster_id("local")
///     .target("127.0.0.1:7100".parse().unwrap())
///     .message::<Add>()
///     .connect()
///     .unwrap();
/// let c = client.actor_ref::<Counter>("visits");
/// let n = quark::block_on(c.ask(Add(1))).unwrap();
/// assert!(n >= 1);
/// client.shutdown();
/// ```
pub struct Client {
    engine: Engine,
    /// The cluster's node ids.
    members: Vec<u64>,
    /// The etcd watch of the member set ([`ClientBuilder::etcd`]).
    #[cfg(feature = "etcd")]
    etcd: Option<crate::etcd::EtcdMembership>,
}

impl Client {
    /// A builder with cluster id `"local"`, no secret and no nodes.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            cluster_id: "local".into(),
            secret: None,
            secret_env: None,
            tls: None,
            tls_files: None,
            require_all_nodes: false,
            nodes: Vec::new(),
            engine: EngineConfig {
                shards: ShardSpec::Count(1),
                pin_threads: false,
                idle_spin: Duration::ZERO,
                ..EngineConfig::default()
            },
            net: Box::new(|_| {}),
            wire: Vec::new(),
            probe_timeout: Duration::from_secs(2),
            #[cfg(feature = "etcd")]
            etcd: None,
        }
    }

    /// A reference to actor `(A, key)` on its owner node. `ask`/`tell` fail with
    /// `NodeUnavailable` while the owner is unreachable, and with `NotWireMessage` for a
    /// message type not registered with [`ClientBuilder::message`].
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        self.engine.actor_ref(key)
    }

    /// A handle that makes references from any thread (`Send + Sync`, cheap to clone). A
    /// reference picks its node when it is made (by the live member set: docs/MIGRATION.md,
    /// "Rolling upgrades"): make a new one per call, or after the cluster changed.
    pub fn handle(&self) -> quark_shard::EngineHandle {
        self.engine.handle()
    }

    /// Runs `make()` on one of the client's shards and spawns its future there: sends made
    /// from it go straight onto the shard's connections (no cross-thread hop per message).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.engine.spawn_on(shard, make)
    }

    /// The cluster's jobs: enqueue, status, cancel, list and pause on any node (see
    /// [`crate::jobs::cluster`]; the client knows the job gateway's messages already).
    pub fn jobs(&self) -> crate::jobs::cluster::ClusterJobs {
        crate::jobs::cluster::ClusterJobs::new(self.engine.handle(), None, self.members.clone())
    }

    /// The cluster's workflow instances: start, status, wait, events, cancel, history and
    /// purge, each on the node that owns the instance (see [`crate::workflow::remote`]).
    pub fn workflows(&self) -> crate::workflow::RemoteWorkflows {
        crate::workflow::RemoteWorkflows::new(self.engine.handle())
    }

    /// Number of client shards.
    pub fn shard_count(&self) -> u16 {
        self.engine.shard_count()
    }

    /// The client's counters (per shard, with the transport's).
    /// Fails naming the first shard that did not answer within one second (see
    /// [`quark_shard::Engine::stats`]).
    pub fn stats(&self) -> Result<Vec<ShardStatsSnapshot>, quark_shard::StatsError> {
        self.engine.stats()
    }

    /// Closes the connections and stops the client's threads.
    pub fn shutdown(self) -> ShutdownReport {
        let report = self.engine.shutdown();
        #[cfg(feature = "etcd")]
        if let Some(m) = self.etcd {
            m.stop(false);
        }
        report
    }

    /// The etcd view of the member set (`None`: no [`ClientBuilder::etcd`]).
    #[cfg(feature = "etcd")]
    pub fn etcd_view(&self) -> Option<crate::etcd::EtcdView> {
        self.etcd.as_ref().map(crate::etcd::EtcdMembership::view)
    }
}
