//! `/quark/status`: the node's state as JSON, and the type `quark status` reads it into.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Shared;

/// The JSON document `/quark/status` serves.
///
/// Fields the node does not know are `null` (a standalone node has no `node_id`; the driver
/// a shard runs is not reported by the engine yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The node's id in its cluster (`None`: standalone).
    pub node_id: Option<u64>,
    /// The quark version the node runs.
    pub version: String,
    /// `"starting"` (log recovery), `"ready"` or `"draining"` (shutdown began).
    pub state: String,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Seconds since the node's admin endpoint started.
    pub uptime_seconds: f64,
    /// Where the node accepts cluster connections (`None`: standalone).
    pub cluster_listen: Option<SocketAddr>,
    /// Whether shard threads are pinned to their cores.
    pub pinned: bool,
    /// How long an idle shard spins before it parks, µs.
    pub idle_spin_us: u64,
    /// One entry per shard (empty while starting or draining: the shards do not answer then).
    pub shards: Vec<ShardStatus>,
    /// The other members of the cluster, from the membership.
    pub peers: Vec<PeerStatus>,
}

/// One shard in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub shard: u16,
    /// The core the shard runs on.
    pub core: Option<usize>,
    /// The I/O driver: `"io_uring"` or `"epoll"`. The engine does not report the driver each
    /// shard ended up with yet: this is the one the configuration asks for.
    pub driver: String,
    /// Whether the shard answered the stats request (false: the counters below are zero).
    pub answered: bool,
    /// Activations alive now.
    pub live_activations: u64,
    /// Activations created since start.
    pub activations: u64,
    /// Deactivations completed since start.
    pub deactivations: u64,
    /// Tasks alive on the shard's scheduler.
    pub tasks: u64,
    /// Calls awaiting a reply.
    pub calls_in_flight: u64,
    /// Handler panics since start.
    pub panics: u64,
    /// The shard log's next LSN (`None`: no log).
    pub log_next_lsn: Option<u64>,
    /// Bytes of the shard log's segment files (`None`: no log).
    pub log_disk_bytes: Option<u64>,
    /// Peer links dialed by this shard that are up (`None`: standalone).
    pub links_up: Option<u64>,
}

/// A member of the cluster other than this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerStatus {
    /// Its node id.
    pub node_id: u64,
    /// Its cluster address.
    pub addr: SocketAddr,
    /// Shards whose link to it is up: not reported per peer by the transport yet (`None`).
    pub links_up: Option<u64>,
}

/// The status now.
pub(crate) fn build(shared: &Shared) -> Status {
    let phase = shared.phase();
    let info = shared.info.get();
    let snaps = shared.stats().unwrap_or_default();
    let shards = snaps
        .iter()
        .enumerate()
        .map(|(i, s)| ShardStatus {
            shard: i as u16,
            core: info.and_then(|n| n.cores.get(i).copied()),
            driver: info.map_or("io_uring", |n| n.driver_requested).to_owned(),
            answered: super::metrics::answered(i, s),
            live_activations: s.live_activations,
            activations: s.activations,
            deactivations: s.deactivations,
            tasks: s.tasks,
            calls_in_flight: s.calls_in_flight,
            panics: s.panics,
            log_next_lsn: s.log_next_lsn,
            log_disk_bytes: s.log_disk_bytes,
            links_up: s.net.as_ref().map(|n| n.links_up),
        })
        .collect();
    Status {
        node_id: info.and_then(|n| n.node_id),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: phase.name().to_owned(),
        ready: phase == super::Phase::Ready,
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        cluster_listen: info.and_then(|n| n.cluster_listen),
        pinned: info.is_some_and(|n| n.pinned),
        idle_spin_us: info.map_or(0, |n| n.idle_spin_us),
        shards,
        peers: info
            .map(|n| {
                n.peers
                    .iter()
                    .map(|&(node_id, addr)| PeerStatus {
                        node_id,
                        addr,
                        links_up: None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}
