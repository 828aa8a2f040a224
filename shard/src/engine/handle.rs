//! [`EngineHandle`]: the `Send + Clone` handle to a node's shards.

use std::future::Future;
use std::sync::Arc;

use quark_placement::{ActorKey, ShardId};

use super::shared::{NodeShared, Phase};
use crate::actor::Actor;
use crate::actor_ref::ActorRef;

use crate::scheduler::SpawnHandle;

/// A `Send + Clone` handle to a node's shards, usable from any thread (from [`Engine::handle`](super::Engine::handle)
/// or [`crate::Context::engine`]): runs work on a chosen shard, where that shard's actors and
/// log live.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<NodeShared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineHandle({} shards)", self.shared.shard_count())
    }
}

impl EngineHandle {
    /// Replaces the member set of a node whose membership is dynamic (`NetConfig::
    /// dynamic_members`; a membership provider such as etcd calls it on every change): `seats`
    /// (every member that ever registered) place the actors that are not movable; the `live`
    /// members rank for movable actors as their state says, and are dialed if new; every other
    /// member is out of the movable placement. No effect on a standalone engine.
    pub fn set_members(&self, seats: Vec<quark_placement::NodeId>, live: Vec<crate::MemberUpdate>) {
        crate::net::set_members(&self.shared, 0, seats, live);
    }

    /// [`set_members`](Self::set_members) from a provider that numbers its member sets:
    /// `epoch` is the set's revision (etcd's `mod_revision` of its last change), the same
    /// number for the same set on every node, increasing with every change. Joins and
    /// hand-overs carry it (docs/CLUSTER.md, "Concurrent joins"); 0 is "none".
    pub fn set_members_at(
        &self,
        epoch: u64,
        seats: Vec<quark_placement::NodeId>,
        live: Vec<crate::MemberUpdate>,
    ) {
        crate::net::set_members(&self.shared, epoch, seats, live);
    }

    /// The split-brain fence of a dynamic membership: while `true` (the node lost its
    /// membership provider past its lease), first messages of movable actors are held, not
    /// activated; `false` releases them.
    pub fn set_fenced(&self, fenced: bool) {
        crate::net::set_fenced(&self.shared, fenced);
    }

    /// The node's view of the cluster's members now, as [`Engine::members`](super::Engine::members)
    /// (the live set with a dynamic membership: states, versions, addresses and zone labels;
    /// `None`: standalone). For a member's zone: `handle.members()?.zone(node)`.
    pub fn members(&self) -> Option<quark_placement::LiveMembers> {
        self.shared.net.as_ref().map(|n| n.view.now())
    }

    /// Deactivates `actor` on this node, wherever its activation lives: a normal deactivation
    /// once its mailbox is empty (the turn in progress and the queued messages run first,
    /// then `on_deactivate`); its next message activates it again (a loaded type reloads its
    /// state). Resolves once the shard holding it was asked (not when it finished). Usable
    /// from any thread; on a shard, await it. See `evict.rs` and docs/MEMORY.md.
    pub fn deactivate(
        &self,
        actor: &quark_placement::ActorId,
    ) -> impl Future<Output = Result<crate::Deactivation, crate::DeactivateError>> + Send + 'static
    {
        crate::evict::deactivate(&self.shared, actor)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.shared.shard_count()
    }

    /// True until the node starts shutting down (background tasks stop when it turns false).
    pub fn is_running(&self) -> bool {
        self.shared.phase() == Phase::Running
    }

    /// This node's id in its cluster (0 without a cluster).
    pub fn node_id(&self) -> quark_placement::NodeId {
        crate::migrate::this_node(&self.shared)
    }

    /// The shard of this node that owns `id` (the placement function).
    pub fn shard_of(&self, id: &quark_placement::ActorId) -> ShardId {
        quark_placement::shard_for(id, self.shared.shard_count())
    }

    /// A reference to actor `(A, key)`.
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        ActorRef::new(self.shared.clone(), key.into())
    }

    /// Runs `make()` on shard `shard` and spawns the future it returns there; the returned
    /// handle resolves with its output, or a [`JoinError`](crate::JoinError) if it panicked
    /// (`make` or the future) or the shard stopped first. `make` runs on
    /// the shard's thread, so the future need not be `Send` (it may use
    /// [`current_shard_log`](super::current_shard_log)).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        // Called from a traced turn, the task runs in a child span of it.
        let trace = crate::trace::current();
        self.shared.inject(
            shard,
            crate::envelope::CrossMsg::run_on(move |core| {
                let task = crate::scheduler::run_caught(make, tx);
                match trace {
                    // Untraced: the task as it is (a wrapper layer costs its polls ~80
                    // instructions each in the sequential-ask benchmark, by lost inlining).
                    None => core.sched.spawn(task),
                    Some(_) => {
                        let node = core.node.net.as_ref().map(|n| n.node_id);
                        core.sched
                            .spawn(crate::trace::task(trace, core.id, node, task));
                    }
                }
            }),
        );
        SpawnHandle::new(shard, rx)
    }
}
