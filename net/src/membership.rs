//! Static cluster membership: node id → address, from TOML-shaped config.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// The `[cluster]` table as written in `quark.toml`:
///
/// ```toml
/// [cluster]
/// cluster_id = "prod-eu"
/// nodes = [
///   { id = 1, addr = "10.0.0.1:7100" },
///   { id = 2, addr = "10.0.0.2:7100" },
/// ]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster id every member and client must present in the handshake.
    pub cluster_id: String,
    /// The members.
    pub nodes: Vec<MemberAddr>,
}

/// One `nodes` entry: a member's id and the address it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAddr {
    /// The node's id, unique in the cluster.
    pub id: u64,
    /// `ip:port` the node listens on (a literal address; names are resolved by the caller).
    pub addr: String,
}

/// Why a membership config was refused. Each names the offending entry (its index in
/// `nodes`, counting from 0) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// `cluster_id` is empty or longer than [`CLUSTER_ID_BYTES_MAX`](crate::CLUSTER_ID_BYTES_MAX).
    #[error("cluster.cluster_id must be 1..={max} bytes, got {len}")]
    BadClusterId {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// `nodes` is empty.
    #[error("cluster.nodes is empty: at least one node is required")]
    NoNodes,
    /// Two entries have the same id.
    #[error("cluster.nodes[{index}]: node id {id} already used by cluster.nodes[{first_index}]")]
    DuplicateId {
        /// The id.
        id: u64,
        /// The first entry with it.
        first_index: usize,
        /// The duplicate.
        index: usize,
    },
    /// An address does not parse as `ip:port`.
    #[error(
        "cluster.nodes[{index}] (node {id}): addr {addr:?} is not an ip:port address ({reason})"
    )]
    BadAddr {
        /// The entry.
        index: usize,
        /// Its node id.
        id: u64,
        /// The text.
        addr: String,
        /// The parser's message.
        reason: std::net::AddrParseError,
    },
    /// The port is 0.
    #[error("cluster.nodes[{index}] (node {id}): addr {addr} has port 0")]
    ZeroPort {
        /// The entry.
        index: usize,
        /// Its node id.
        id: u64,
        /// The address.
        addr: SocketAddr,
    },
    /// Two entries have the same address.
    #[error("cluster.nodes[{index}] (node {id}): addr {addr} already used by cluster.nodes[{first_index}]")]
    DuplicateAddr {
        /// The address.
        addr: SocketAddr,
        /// The first entry with it.
        first_index: usize,
        /// The duplicate.
        index: usize,
        /// The duplicate's id.
        id: u64,
    },
}

/// A validated static membership. Iteration is in node id order (identical on every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    cluster_id: String,
    nodes: BTreeMap<u64, SocketAddr>,
}

impl Membership {
    /// Validates a config: non-empty cluster id, at least one node, unique ids, unique
    /// literal `ip:port` addresses with a non-zero port.
    pub fn from_config(cfg: &ClusterConfig) -> Result<Membership, MembershipError> {
        let max = crate::handshake::CLUSTER_ID_BYTES_MAX;
        if cfg.cluster_id.is_empty() || cfg.cluster_id.len() > max {
            return Err(MembershipError::BadClusterId {
                len: cfg.cluster_id.len(),
                max,
            });
        }
        if cfg.nodes.is_empty() {
            return Err(MembershipError::NoNodes);
        }
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        let mut addrs: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (index, n) in cfg.nodes.iter().enumerate() {
            if let Some(&first_index) = ids.get(&n.id) {
                return Err(MembershipError::DuplicateId {
                    id: n.id,
                    first_index,
                    index,
                });
            }
            let addr: SocketAddr =
                n.addr
                    .trim()
                    .parse()
                    .map_err(|reason| MembershipError::BadAddr {
                        index,
                        id: n.id,
                        addr: n.addr.clone(),
                        reason,
                    })?;
            if addr.port() == 0 {
                return Err(MembershipError::ZeroPort {
                    index,
                    id: n.id,
                    addr,
                });
            }
            if let Some(&first_index) = addrs.get(&addr) {
                return Err(MembershipError::DuplicateAddr {
                    addr,
                    first_index,
                    index,
                    id: n.id,
                });
            }
            ids.insert(n.id, index);
            addrs.insert(addr, index);
            nodes.insert(n.id, addr);
        }
        Ok(Membership {
            cluster_id: cfg.cluster_id.clone(),
            nodes,
        })
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The address of node `id`.
    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        self.nodes.get(&id).copied()
    }

    /// True if `id` is a member.
    pub fn contains(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Members in ascending id order.
    pub fn nodes(&self) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
        self.nodes.iter().map(|(&id, &a)| (id, a))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false for a validated membership (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The members other than `me`, in id order: the peers a node connects to.
    pub fn peers_of(&self, me: u64) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
        self.nodes().filter(move |&(id, _)| id != me)
    }
}
