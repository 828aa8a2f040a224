//! The cluster transport of a shard: its connections to the other nodes (one dialed link per
//! peer node), the connections it accepted, and the registry of message types that cross nodes.
//!
//! The protocol itself (frames, handshake, payloads) is `quark-net`, sans-IO; this module drives
//! it with the executor's sockets (`crate::rt::tcp`). See `docs/ARCHITECTURE.md` ("Across
//! nodes") and `docs/PROTOCOL.md`.

mod conn;
mod members;
mod migrate;
mod remote;
mod stream;

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use quark_net::{
    BackoffConfig, ClusterSecret, DetectorConfig, EncodeError, FrameHead, Membership, OutBuf,
    PeerCounters, PeerRole, RemoteError, RequestEnvelope, WireError, WireOwned,
};
use quark_placement::{ActorKey, NodeId};
use rustc_hash::FxHashMap;

use crate::actor::{Handler, Message};
use crate::shard::Shard;

pub(crate) use conn::{close_all, start, Link};
pub use members::MemberUpdate;
pub(crate) use members::{announce_blocking, place_new, MemberView, NewPlace, DRAINING, LEFT};
pub(crate) use members::{released_to, set_fenced, set_members, view_epoch};
pub(crate) use migrate::{
    forward_node, home_node_of, send_arrive, send_gone, send_pause, send_release, send_timers,
};
pub(crate) use remote::{ask_remote, tell_remote, tell_remote_now};

/// Cluster settings of an engine: who it is, who the members are, and the transport's bounds
/// (the `[cluster]` table of `quark.toml`; see `docs/CONFIG.md`).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// This engine's node id. A member's id is in `membership`; a client's is not.
    pub node_id: NodeId,
    /// `Member` for a node of the cluster, `Client` for an external client (hosts no actors,
    /// only dials).
    pub role: PeerRole,
    /// The static membership: every node's id and address (with `dynamic_members`, the
    /// members known at start; the provider adds and removes members later).
    pub membership: Membership,
    /// The member set changes at run time (membership on etcd: docs/CLUSTER.md, "Membership on
    /// etcd"): peers are added with [`crate::EngineHandle::set_members`], and a connection from
    /// a member id not in `membership` is accepted (the secret or TLS authenticates it).
    pub dynamic_members: bool,
    /// The listening socket (bound before the engine starts, so that its address is known and
    /// bind errors fail start-up). Shard 0 accepts on it. `None`: do not listen.
    pub listener: Option<std::sync::Arc<std::net::TcpListener>>,
    /// The cluster secret (`None`: unauthenticated, loopback only).
    pub secret: Option<ClusterSecret>,
    /// TLS on every connection this engine dials or accepts (`None`: plaintext). See
    /// `quark_net::tls` and `[cluster.tls]` in `docs/CONFIG.md`.
    pub tls: Option<std::sync::Arc<quark_net::tls::TlsContext>>,
    /// Largest frame sent or accepted, header and padding included.
    pub frame_bytes_max: u32,
    /// Bytes a connection's outgoing buffer may hold before senders wait. A connection that
    /// sends requests is not read while its outgoing bytes (queued and being written) are at
    /// or over this bound: the peer must read its replies before it may send more.
    pub out_bytes_max: usize,
    /// How long a connection's outgoing bytes may stay at or over `out_bytes_max` (the peer
    /// reads less than that in this time) before the connection is closed
    /// (`CloseReason::OutStalled`). Default 5 s.
    pub out_stall_timeout: Duration,
    /// Requests from one connection served at once; the connection is not read while this
    /// many replies are outstanding (backpressure onto the peer through TCP).
    pub requests_inflight_max: usize,
    /// Heartbeats and failure detection.
    pub detector: DetectorConfig,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// Deadline of one handshake.
    pub handshake_timeout: Duration,
    /// At most one "dropped tell" log line per peer per this interval.
    pub drop_log_interval: Duration,
}

impl NetConfig {
    /// Settings with the documented defaults for node `node_id` of `membership`.
    pub fn new(node_id: NodeId, role: PeerRole, membership: Membership) -> NetConfig {
        NetConfig {
            node_id,
            role,
            membership,
            dynamic_members: false,
            listener: None,
            secret: None,
            tls: None,
            frame_bytes_max: quark_net::DEFAULT_FRAME_BYTES_MAX,
            out_bytes_max: 4 << 20,
            out_stall_timeout: Duration::from_secs(5),
            requests_inflight_max: 4096,
            detector: DetectorConfig::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_millis(1000),
            handshake_timeout: Duration::from_millis(1000),
            drop_log_interval: Duration::from_secs(1),
        }
    }
}

/// How one message type is written to the wire by a sender (any shard of any engine that
/// registered it).
pub(crate) struct WireCodec {
    pub(crate) wire_name: &'static str,
    pub(crate) encode: EncodeFn,
    pub(crate) decode_reply: DecodeFn,
}

pub(crate) type DecodeFn = fn(&[u8]) -> Result<Box<dyn Any + Send>, WireError>;

type EncodeFn =
    fn(&dyn Any, &mut OutBuf, FrameHead, &RequestEnvelope<'_>, u32) -> Result<u32, EncodeError>;

/// Handles a request that arrived from the network for one (actor type, message type): decodes
/// the body and starts the call on this node. Arguments: `(shard, key, body, timeout, reply
/// sink, sent on by the actor's home (the `quark.home/` marker))`.
pub(crate) type RemoteHandler =
    fn(&Rc<Shard>, ActorKey, &[u8], Duration, remote::ReplySink, bool) -> Result<(), RemoteError>;

/// The node's wire registry: codecs by message type, handlers by (actor type, wire name).
#[derive(Default)]
pub(crate) struct Registry {
    codecs: FxHashMap<TypeId, WireCodec>,
    handlers: FxHashMap<String, FxHashMap<String, RemoteHandler>>,
    /// Timers moving between nodes (`migrate::timers`): a message's bytes by message type,
    /// and by actor type the functions that arm them again.
    pub(crate) timers: crate::migrate::TimerRegistry,
}

fn encode_typed<M: WireOwned + 'static>(
    msg: &dyn Any,
    out: &mut OutBuf,
    head: FrameHead,
    env: &RequestEnvelope<'_>,
    max: u32,
) -> Result<u32, EncodeError> {
    let msg = msg
        .downcast_ref::<M>()
        .expect("a codec is looked up by the TypeId of the message it encodes");
    quark_net::encode_request(out, head, env, msg, max)
}

fn decode_typed<R: WireOwned + Send + 'static>(
    bytes: &[u8],
) -> Result<Box<dyn Any + Send>, WireError> {
    Ok(Box::new(R::from_wire(bytes)?))
}

impl Registry {
    /// Lets `M` be sent to actors on other nodes (its reply comes back typed).
    pub(crate) fn add_codec<M>(&mut self)
    where
        M: Message + WireOwned,
        M::Reply: WireOwned,
    {
        self.codecs.entry(TypeId::of::<M>()).or_insert(WireCodec {
            wire_name: M::WIRE_NAME,
            encode: encode_typed::<M>,
            decode_reply: decode_typed::<M::Reply>,
        });
        self.timers.add_codec::<M>();
    }

    /// Lets actors of type `A` on this node receive `M` from the network.
    pub(crate) fn add_handler<A, M>(&mut self)
    where
        A: Handler<M>,
        M: Message + WireOwned,
        M::Reply: WireOwned,
    {
        self.add_codec::<M>();
        self.timers.add_handler::<A, M>();
        self.handlers
            .entry(A::TYPE_NAME.to_owned())
            .or_default()
            .insert(M::WIRE_NAME.to_owned(), remote::handle::<A, M>);
    }

    pub(crate) fn codec<M: 'static>(&self) -> Option<&WireCodec> {
        self.codecs.get(&TypeId::of::<M>())
    }

    fn handler(&self, actor_type: &str, wire_name: &str) -> Option<&RemoteHandler> {
        self.handlers.get(actor_type)?.get(wire_name)
    }

    fn handles_type(&self, actor_type: &str) -> bool {
        self.handlers.contains_key(actor_type)
    }
}

/// Counters of one shard's transport (plain cells, read through the shard's stats).
#[derive(Default)]
pub(crate) struct NetStats {
    pub(crate) peers: RefCell<PeerCounters>,
    pub(crate) requests_in: Cell<u64>,
    pub(crate) requests_refused: Cell<u64>,
    pub(crate) asks_unavailable: Cell<u64>,
    pub(crate) tells_dropped: Cell<u64>,
    pub(crate) replies_lost: Cell<u64>,
}

/// A snapshot of one shard's transport counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    /// Frames, bytes, connections and closes (by reason) of every connection of the shard.
    pub peers: PeerCounters,
    /// Requests (asks and tells) received from the network.
    pub requests_in: u64,
    /// Requests answered with an error without running (unknown actor or message type, bad
    /// payload, shutting down).
    pub requests_refused: u64,
    /// Asks failed with `NodeUnavailable` (owner node unreachable when sent, or the connection
    /// dropped before the reply).
    pub asks_unavailable: u64,
    /// Tells not sent because their owner node was unreachable.
    pub tells_dropped: u64,
    /// Replies that could not be sent because the requester's connection had closed.
    pub replies_lost: u64,
    /// Peer nodes whose dialed link is up now.
    pub links_up: u64,
    /// Those peers, by node id (ascending).
    pub peers_up: Vec<NodeId>,
    /// Round-trip time to each peer whose dialed link is up, by node id.
    pub peer_rtt: Vec<PeerRtt>,
}

/// The round-trip time of one shard's connection to a peer: the kernel's smoothed estimate
/// (`TCP_INFO`), from the acknowledgements of the frames sent (heartbeats included), read when
/// the snapshot is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerRtt {
    /// The peer node.
    pub node: NodeId,
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// Its mean deviation, µs.
    pub rttvar_us: u32,
}

/// The shard's dialed links, one per peer node. Peers are added at run time when the
/// membership is dynamic (never removed: a member that left may come back, and its link then
/// redials with backoff meanwhile).
#[derive(Default)]
pub(crate) struct Links {
    map: RefCell<FxHashMap<NodeId, Rc<Link>>>,
}

impl Links {
    pub(crate) fn get(&self, node: &NodeId) -> Option<Rc<Link>> {
        self.map.borrow().get(node).cloned()
    }

    pub(crate) fn values(&self) -> Vec<Rc<Link>> {
        self.map.borrow().values().cloned().collect()
    }

    pub(crate) fn keys(&self) -> Vec<NodeId> {
        self.map.borrow().keys().copied().collect()
    }

    pub(crate) fn insert(&self, link: Rc<Link>) {
        self.map.borrow_mut().insert(link.peer, link);
    }
}

/// One shard's transport state.
pub(crate) struct NetShard {
    pub(crate) cfg: NetConfig,
    pub(crate) links: Links,
    pub(crate) stats: NetStats,
    /// Accepted connections' outgoing sides, to close at shutdown.
    pub(crate) accepted: RefCell<Vec<std::rc::Weak<conn::Outbound>>>,
}

impl NetShard {
    pub(crate) fn new(cfg: &NetConfig) -> NetShard {
        let links = Links::default();
        for (id, addr) in cfg.membership.nodes().filter(|(id, _)| *id != cfg.node_id) {
            links.insert(Rc::new(Link::new(id, addr)));
        }
        NetShard {
            cfg: cfg.clone(),
            links,
            stats: NetStats::default(),
            accepted: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn snapshot(&self) -> NetStatsSnapshot {
        let s = &self.stats;
        NetStatsSnapshot {
            peers: s.peers.borrow().clone(),
            requests_in: s.requests_in.get(),
            requests_refused: s.requests_refused.get(),
            asks_unavailable: s.asks_unavailable.get(),
            tells_dropped: s.tells_dropped.get(),
            replies_lost: s.replies_lost.get(),
            links_up: self.links.values().iter().filter(|l| l.is_up()).count() as u64,
            peers_up: {
                let mut v: Vec<NodeId> = self
                    .links
                    .values()
                    .iter()
                    .filter(|l| l.is_up())
                    .map(|l| l.peer)
                    .collect();
                v.sort_unstable();
                v
            },
            peer_rtt: {
                let mut v: Vec<PeerRtt> = self
                    .links
                    .values()
                    .iter()
                    .filter_map(|l| {
                        let (rtt_us, rttvar_us) = l.tcp_rtt_us()?;
                        Some(PeerRtt {
                            node: l.peer,
                            rtt_us,
                            rttvar_us,
                        })
                    })
                    .collect();
                v.sort_by_key(|p| p.node);
                v
            },
        }
    }
}

/// The sorted member ids of a membership (the input of `node_for`).
pub(crate) fn member_ids(m: &Membership) -> Vec<NodeId> {
    m.nodes().map(|(id, _)| id).collect()
}

/// Rate limiter for log lines about one peer.
pub(crate) fn log_due(last: &Cell<Option<Instant>>, now: Instant, every: Duration) -> bool {
    match last.get() {
        Some(t) if now.duration_since(t) < every => false,
        _ => {
            last.set(Some(now));
            true
        }
    }
}
