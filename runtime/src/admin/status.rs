//! `/quark/status`: the node's state as JSON, and the type `quark status` reads it into.

use std::net::SocketAddr;

use quark_shard::ShardStatsSnapshot;
use serde::{Deserialize, Serialize};

use super::Shared;

/// The JSON document `/quark/status` serves.
///
/// Fields the node does not know are `null` (a standalone node has no `node_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The node's id in its cluster (`None`: standalone).
    pub node_id: Option<u64>,
    /// The quark version the node runs.
    pub version: String,
    /// The application version the node advertises (`[node] app_version`; `None`: not set).
    #[serde(default)]
    pub app_version: Option<String>,
    /// `"starting"` (log recovery), `"ready"` or `"draining"` (shutdown began).
    pub state: String,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Seconds since the node's admin endpoint started.
    pub uptime_seconds: f64,
    /// Where the node accepts cluster connections (`None`: standalone).
    pub cluster_listen: Option<SocketAddr>,
    /// Why the shards' counters are missing from `shards` (a shard did not answer within a
    /// second: a handler blocks its thread); `None` when they are there.
    pub stats_error: Option<String>,
    /// One entry per shard (empty while starting or draining: the shards do not answer then).
    pub shards: Vec<ShardStatus>,
    /// The other members of the cluster: the configured ones and those a dynamic membership
    /// (etcd) reports now, joined after the node started included.
    pub peers: Vec<PeerStatus>,
    /// This node's zone label (`[cluster.membership] zone`; `None`: not set, or static
    /// membership).
    #[serde(default)]
    pub zone: Option<String>,
    /// Resident set size of the node's process, bytes (`/proc/self/statm`; `None` where it
    /// cannot be read). The whole process: it cannot be split by shard (see
    /// [`ShardStatus::state_bytes`]).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// One shard in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub shard: u16,
    /// The core the shard was assigned.
    pub core: Option<usize>,
    /// The CPU its thread was running on when it started (`None`: unknown).
    pub running_on: Option<usize>,
    /// `"pinned"`, `"off"` (`pin_threads = false`) or `"failed"` (the system refused).
    pub pinning: String,
    /// The I/O driver the shard runs: `"io_uring"` or `"epoll"` (the fallback).
    pub driver: String,
    /// The idle spin in effect, µs (0 when shards share cores, whatever the configuration).
    pub idle_spin_us: Option<u64>,
    /// Whether the counters below are the shard's (false: the stats request failed, they are 0).
    pub answered: bool,
    /// Activations alive now.
    pub live_activations: u64,
    /// The known size of the states of those activations, bytes: the deep size (the type's
    /// `ActorType::memory_size` hook) of each activation between turns, the shallow size
    /// (`size_of`) otherwise and for types without the hook.
    #[serde(default)]
    pub state_bytes: u64,
    /// Activations whose size in `state_bytes` is the hook's deep size.
    #[serde(default)]
    pub state_bytes_deep: u64,
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
    /// This node's shards whose link to it is up now (`None`: the shards' counters are
    /// missing from this status, see [`Status::stats_error`]).
    pub links_up: Option<u64>,
    /// Its state in this node's view of the members: `"up"`, `"draining"` (it announced a
    /// drain: still the home of its actors, sent no new ones) or `"left"` (it announced it
    /// stopped after a drain: its actors are served by the others until it joins again).
    /// A peer that crashed without announcing stays `"up"` with `links_up` 0. See
    /// docs/MIGRATION.md, "Rolling upgrades".
    #[serde(default)]
    pub state: Option<String>,
    /// The application version it advertised in its handshake (`None`: not known yet, or not
    /// set).
    #[serde(default)]
    pub app_version: Option<String>,
    /// Its zone label as registered in etcd (`None`: none, or static membership).
    #[serde(default)]
    pub zone: Option<String>,
}

/// The status now.
pub(crate) fn build(shared: &Shared) -> Status {
    use quark_shard::{IoDriver, Pinning};
    let phase = shared.phase();
    let info = shared.info.get();
    let (snaps, stats_error) = match shared.stats() {
        None => (Vec::new(), None),
        Some(Ok(v)) => (v, None),
        Some(Err(e)) => (Vec::new(), Some(e.to_string())),
    };
    let members = shared.members();
    let shard_ids: Vec<usize> = if stats_error.is_some() {
        (0..info.map_or(0, |n| n.shards.len())).collect()
    } else {
        (0..snaps.len()).collect()
    };
    let shards = shard_ids
        .into_iter()
        .map(|i| {
            let zero = ShardStatsSnapshot::default();
            let s = snaps.get(i).unwrap_or(&zero);
            let si = info.and_then(|n| n.shards.get(i));
            ShardStatus {
                shard: i as u16,
                core: si.map(|x| x.core),
                running_on: si.and_then(|x| x.running_on),
                pinning: match si.map(|x| x.pinning) {
                    Some(Pinning::Pinned) => "pinned",
                    Some(Pinning::Off) => "off",
                    Some(Pinning::Failed { .. }) => "failed",
                    Some(_) | None => "unknown",
                }
                .to_owned(),
                driver: match si.map(|x| x.driver) {
                    Some(IoDriver::IoUring) => "io_uring",
                    Some(IoDriver::Epoll) => "epoll",
                    Some(_) | None => "unknown",
                }
                .to_owned(),
                idle_spin_us: si.map(|x| x.idle_spin.as_micros() as u64),
                answered: snaps.get(i).is_some(),
                live_activations: s.live_activations,
                state_bytes: s.state_bytes_per_type.iter().map(|t| t.bytes).sum(),
                state_bytes_deep: s.state_bytes_per_type.iter().map(|t| t.deep).sum(),
                activations: s.activations,
                deactivations: s.deactivations,
                tasks: s.tasks,
                calls_in_flight: s.calls_in_flight,
                panics: s.panics,
                log_next_lsn: s.log_next_lsn,
                log_disk_bytes: s.log_disk_bytes,
                links_up: s.net.as_ref().map(|n| n.links_up),
            }
        })
        .collect();
    Status {
        node_id: info.and_then(|n| n.node_id),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: phase.name().to_owned(),
        ready: phase == super::Phase::Ready,
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        cluster_listen: info.and_then(|n| n.cluster_listen),
        rss_bytes: resident_bytes(),
        stats_error,
        shards,
        zone: info
            .and_then(|n| n.node_id)
            .and_then(|me| members.as_ref()?.zone(me).map(str::to_owned)),
        peers: info
            .map(|n| {
                peer_list(n.node_id, &n.peers, members.as_ref())
                    .into_iter()
                    .map(|(node_id, addr)| {
                        let member = members.as_ref().and_then(|m| m.get(node_id));
                        PeerStatus {
                            node_id,
                            addr,
                            links_up: (!snaps.is_empty()).then(|| {
                                snaps
                                    .iter()
                                    .filter_map(|s| s.net.as_ref())
                                    .filter(|n| n.peers_up.contains(&node_id))
                                    .count() as u64
                            }),
                            state: member.map(|m| member_state(m.state).to_owned()),
                            app_version: member
                                .map(|m| m.version.clone())
                                .filter(|v| !v.is_empty()),
                            zone: member.map(|m| m.zone.clone()).filter(|z| !z.is_empty()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        app_version: info
            .map(|n| n.app_version.clone())
            .filter(|v| !v.is_empty()),
    }
}

/// The peers to list: the configured ones, and every other member of the live view (a member
/// that joined through etcd after the start), with the address the view has for it; by id.
fn peer_list(
    me: Option<u64>,
    configured: &[(u64, SocketAddr)],
    members: Option<&quark_placement::LiveMembers>,
) -> Vec<(u64, SocketAddr)> {
    let mut out: Vec<(u64, SocketAddr)> = configured.to_vec();
    for m in members.map(|m| m.members()).unwrap_or_default() {
        if Some(m.id) == me {
            continue;
        }
        match (out.iter_mut().find(|p| p.0 == m.id), m.addr) {
            (Some(p), Some(a)) => p.1 = a,
            (None, Some(a)) => out.push((m.id, a)),
            (_, None) => {}
        }
    }
    out.sort_unstable_by_key(|p| p.0);
    out
}

/// The name of a member state in [`PeerStatus::state`].
fn member_state(s: quark_placement::MemberState) -> &'static str {
    match s {
        quark_placement::MemberState::Up => "up",
        quark_placement::MemberState::Draining => "draining",
        quark_placement::MemberState::Left => "left",
    }
}

/// The process's resident set size, bytes, from `/proc/self/statm` (its second field, in
/// pages); `None` where it cannot be read (not Linux).
pub(crate) fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}
