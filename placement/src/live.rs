//! The live member set: which members rank for the *home* of a movable actor (the node every
//! sender addresses and where a new activation starts), by state and application version.
//!
//! - A member is `Up` (ranked), `Draining` (still ranked: it coordinates the moves of its
//!   actors away, but a peer does not send it new activations of its own), or `Left` (not
//!   ranked: it announced it stopped, after its drain). With static membership a member that
//!   stops without announcing it (a crash, a cut link) stays `Up`: its ids fail until it is
//!   back (see docs/MIGRATION.md, "Rolling upgrades"); with membership on etcd its expired
//!   lease makes it `Left` (docs/CLUSTER.md, "Membership on etcd").
//! - Version-aware: among the ranked members, only those of the newest application version
//!   rank (an empty version, not configured, is never older or newer: it always ranks).
//! - The home is the rendezvous choice ([`node_for`]) among them, so when a member leaves,
//!   only its ids change home (each to the next node in its rendezvous order), and when it
//!   comes back it takes exactly those back.
//!
//! Pure data: every node and client holding the same `LiveMembers` computes the same homes.
//! Actors that are not movable keep the static placement ([`node_for`] over every member):
//! their journal lives on their node's disk.

use std::cmp::Ordering;

use crate::id::ActorId;
use crate::ring::{node_for, NodeId};

/// A member's state as its peers know it (from its announcements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Ranked (the initial state of every configured member).
    Up,
    /// Announced it drains: still ranked (it is still the home of its ids and forwards what
    /// reaches it), but not sent new activations by its peers.
    Draining,
    /// Announced it stopped after its drain: not ranked until it announces it joined again.
    Left,
}

/// One member of a [`LiveMembers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMember {
    /// The node id.
    pub id: NodeId,
    /// Its state.
    pub state: MemberState,
    /// Its application version (`[node] app_version`; empty: not set or not known yet).
    pub version: String,
    /// Its zone label (`[cluster.membership] zone`, registered in etcd; empty: none, or a
    /// static member). Read it with [`LiveMembers::zone`].
    pub zone: String,
    /// The address it accepts cluster connections on, when a dynamic membership told it
    /// (`None`: a static member, whose address is in the configuration).
    pub addr: Option<std::net::SocketAddr>,
}

/// The members of a cluster with their states and versions; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveMembers {
    members: Vec<LiveMember>,
}

/// Compares application versions: dot-separated parts in order, as numbers where both are
/// numbers, else as text; a missing part is older (`1.2` < `1.2.1`, `2.10` > `2.9`). `None`
/// when either is empty (not configured: never older or newer).
pub fn version_cmp(a: &str, b: &str) -> Option<Ordering> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Some(Ordering::Equal),
            (None, Some(_)) => return Some(Ordering::Less),
            (Some(_), None) => return Some(Ordering::Greater),
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return Some(o);
                }
            }
        }
    }
}

/// True if version `a` is older than `b` ([`version_cmp`]; never for an empty version).
pub fn version_older(a: &str, b: &str) -> bool {
    version_cmp(a, b) == Some(Ordering::Less)
}

impl LiveMembers {
    /// Every node of `ids` `Up`, with no version known.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> LiveMembers {
        let mut members: Vec<LiveMember> = ids
            .into_iter()
            .map(|id| LiveMember {
                id,
                state: MemberState::Up,
                version: String::new(),
                zone: String::new(),
                addr: None,
            })
            .collect();
        members.sort_unstable_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        LiveMembers { members }
    }

    /// The members, by node id.
    pub fn members(&self) -> &[LiveMember] {
        &self.members
    }

    fn get_mut(&mut self, id: NodeId) -> Option<&mut LiveMember> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// A member, if configured.
    pub fn get(&self, id: NodeId) -> Option<&LiveMember> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Sets a member's state (and its version, unless `version` is `None`); false if `id` is
    /// not a member or nothing changed.
    pub fn set(&mut self, id: NodeId, state: MemberState, version: Option<&str>) -> bool {
        let Some(m) = self.get_mut(id) else {
            return false;
        };
        let mut changed = m.state != state;
        m.state = state;
        if let Some(v) = version {
            changed |= m.version != v;
            m.version = v.to_owned();
        }
        changed
    }

    /// Adds `id` with `state` (a member that joined a dynamic membership, e.g. from etcd:
    /// docs/CLUSTER.md, "Membership on etcd"), or sets it if present; true if the set changed.
    pub fn insert(&mut self, id: NodeId, state: MemberState, version: Option<&str>) -> bool {
        if self.get(id).is_some() {
            return self.set(id, state, version);
        }
        let at = self.members.partition_point(|m| m.id < id);
        self.members.insert(
            at,
            LiveMember {
                id,
                state,
                version: version.unwrap_or("").to_owned(),
                zone: String::new(),
                addr: None,
            },
        );
        true
    }

    /// Sets where a member is: its cluster address and its zone label (from a dynamic
    /// membership); false if `id` is not a member or nothing changed.
    pub fn set_place(&mut self, id: NodeId, addr: std::net::SocketAddr, zone: &str) -> bool {
        let Some(m) = self.get_mut(id) else {
            return false;
        };
        let changed = m.addr != Some(addr) || m.zone != zone;
        m.addr = Some(addr);
        if m.zone != zone {
            m.zone = zone.to_owned();
        }
        changed
    }

    /// The zone label of member `id` (`[cluster.membership] zone` as registered in etcd);
    /// `None` if `id` is not a member or has no zone (static membership, or none set). For
    /// locality decisions: `engine.members()?.zone(node)`.
    pub fn zone(&self, id: NodeId) -> Option<&str> {
        self.get(id)
            .map(|m| m.zone.as_str())
            .filter(|z| !z.is_empty())
    }

    /// The members that are not `Left`, by node id (the live member set).
    pub fn present(&self) -> impl Iterator<Item = &LiveMember> + '_ {
        self.members.iter().filter(|m| m.state != MemberState::Left)
    }

    /// The newest version among the members that are not `Left` (`None`: none is known).
    pub fn newest(&self) -> Option<&str> {
        let mut best: Option<&str> = None;
        for m in self.members.iter().filter(|m| m.state != MemberState::Left) {
            if m.version.is_empty() {
                continue;
            }
            best = match best {
                Some(b) if !version_older(b, &m.version) => Some(b),
                _ => Some(&m.version),
            };
        }
        best
    }

    /// The members that rank for homes, by node id: not `Left`, and not older than
    /// [`newest`](Self::newest).
    pub fn ranked(&self) -> Vec<NodeId> {
        let newest = self.newest().unwrap_or("");
        self.members
            .iter()
            .filter(|m| m.state != MemberState::Left && !version_older(&m.version, newest))
            .map(|m| m.id)
            .collect()
    }

    /// The home of `id`: its rendezvous choice among the ranked members (`None`: none ranks).
    pub fn home(&self, id: &ActorId) -> Option<NodeId> {
        node_for(id, &self.ranked())
    }

    /// The home of `id` once `leaving` has left (where a drain of `leaving` moves it).
    pub fn home_without(&self, id: &ActorId, leaving: NodeId) -> Option<NodeId> {
        let mut after = self.clone();
        after.set(leaving, MemberState::Left, None);
        after.home(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ActorKey;

    fn ids(n: u64) -> impl Iterator<Item = ActorId> {
        (0..n).map(|k| ActorId::new("c", ActorKey::U64(k)))
    }

    #[test]
    fn a_members_zone_and_address_are_kept_and_read() {
        let mut m = LiveMembers::new([1, 2]);
        assert_eq!(m.zone(1), None, "no zone until one is set");
        let a: std::net::SocketAddr = "10.0.0.3:7000".parse().unwrap();
        assert!(m.insert(3, MemberState::Up, Some("1")));
        assert!(m.set_place(3, a, "eu-west-1a"));
        assert!(!m.set_place(3, a, "eu-west-1a"), "unchanged");
        assert_eq!(m.zone(3), Some("eu-west-1a"));
        assert_eq!(m.get(3).and_then(|x| x.addr), Some(a));
        assert!(!m.set_place(9, a, "z"), "not a member");
        assert!(m.set(3, MemberState::Left, None));
        assert_eq!(m.present().map(|x| x.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn versions_compare_by_parts() {
        assert!(version_older("1.2", "1.2.1"));
        assert!(version_older("2.9", "2.10"));
        assert!(!version_older("2.10", "2.9"));
        assert!(!version_older("", "1"));
        assert!(!version_older("1", ""));
        assert_eq!(version_cmp("1.0", "1.0"), Some(Ordering::Equal));
    }

    #[test]
    fn all_up_is_the_static_placement() {
        let live = LiveMembers::new([3, 1, 2]);
        for id in ids(1000) {
            assert_eq!(live.home(&id), node_for(&id, &[1, 2, 3]));
        }
    }

    #[test]
    fn a_left_member_gives_exactly_its_ids_to_the_next_in_rendezvous_order() {
        let mut live = LiveMembers::new([1, 2, 3]);
        let before: Vec<_> = ids(3000).map(|id| live.home(&id)).collect();
        live.set(2, MemberState::Left, None);
        let mut moved = 0;
        for (id, b) in ids(3000).zip(&before) {
            let now = live.home(&id);
            assert_ne!(now, Some(2));
            if *b == Some(2) {
                moved += 1;
                assert_eq!(now, node_for(&id, &[1, 3]));
                assert_eq!(now, live.home_without(&id, 2));
            } else {
                assert_eq!(now, *b, "{id}: only the left member's ids move");
            }
        }
        assert!(moved > 800 && moved < 1200, "about a third moved: {moved}");
        // Draining still ranks; coming back takes its ids back.
        live.set(2, MemberState::Draining, None);
        assert_eq!(
            ids(3000).map(|id| live.home(&id)).collect::<Vec<_>>(),
            before
        );
        live.set(2, MemberState::Up, None);
        assert_eq!(
            ids(3000).map(|id| live.home(&id)).collect::<Vec<_>>(),
            before
        );
    }

    #[test]
    fn homes_prefer_the_newest_version() {
        let mut live = LiveMembers::new([1, 2, 3]);
        for n in 1..=3 {
            live.set(n, MemberState::Up, Some("1.9"));
        }
        live.set(2, MemberState::Up, Some("1.10"));
        assert_eq!(live.newest(), Some("1.10"));
        assert_eq!(live.ranked(), vec![2]);
        assert!(ids(100).all(|id| live.home(&id) == Some(2)));
        // A second upgraded node: rendezvous order within the newest group.
        live.set(3, MemberState::Up, Some("1.10"));
        for id in ids(1000) {
            assert_eq!(live.home(&id), node_for(&id, &[2, 3]));
        }
        // A member without a version always ranks; a left one never, whatever its version.
        live.set(1, MemberState::Up, Some(""));
        assert_eq!(live.ranked(), vec![1, 2, 3]);
        live.set(3, MemberState::Left, Some("9"));
        assert_eq!(live.newest(), Some("1.10"));
        assert_eq!(live.ranked(), vec![1, 2]);
    }

    #[test]
    fn set_reports_changes_and_ignores_strangers() {
        let mut live = LiveMembers::new([1, 2]);
        assert!(!live.set(9, MemberState::Left, None));
        assert!(!live.set(1, MemberState::Up, None));
        assert!(live.set(1, MemberState::Up, Some("2")));
        assert!(!live.set(1, MemberState::Up, Some("2")));
        assert!(live.set(1, MemberState::Left, None));
        assert_eq!(live.get(1).map(|m| m.state), Some(MemberState::Left));
    }

    #[test]
    fn an_inserted_member_ranks_in_id_order_and_takes_only_its_share() {
        let mut live = LiveMembers::new([1, 3]);
        let before: Vec<_> = ids(3000).map(|id| live.home(&id)).collect();
        assert!(live.insert(2, MemberState::Up, Some("")));
        assert!(!live.insert(2, MemberState::Up, None));
        assert_eq!(live.ranked(), vec![1, 2, 3]);
        for (id, b) in ids(3000).zip(&before) {
            let now = live.home(&id);
            assert_eq!(now, node_for(&id, &[1, 2, 3]));
            if now != Some(2) {
                assert_eq!(now, *b, "{id}: only the new member's share moves");
            }
        }
    }
}
