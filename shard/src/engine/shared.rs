//! State every shard thread and every handle of one node share ([`NodeShared`], one
//! [`ShardHandle`] per shard, the node's [`Phase`]), and the thread-local that tells a shard
//! thread its own [`Shard`] (`current_core`, [`current_shard_log`]).

use std::any::TypeId;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use quark_placement::ShardId;
use rustc_hash::FxHashMap;

use super::config::EngineConfig;
use crate::activation::ErasedType;
use crate::envelope::CrossMsg;
use crate::rt::Bell;
use crate::shard::Shard;

/// The node's phase, advanced by [`Engine::shutdown`](super::Engine::shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Running = 0,
    Draining = 1,
    Deactivating = 2,
    Stopped = 3,
}

/// What every thread may touch of a shard: its doorbell and its injection queue (with the
/// admission bound for callers outside the node; `crate::admission`).
pub(crate) struct ShardHandle {
    pub(crate) bell: Bell,
    pub(crate) inject: crate::admission::Injector<CrossMsg>,
}

/// State shared by every shard thread and every handle of one node (read-mostly).
pub(crate) struct NodeShared {
    pub(crate) config: EngineConfig,
    pub(crate) types: Vec<Arc<dyn ErasedType>>,
    pub(crate) type_index: FxHashMap<TypeId, u16>,
    pub(crate) shards: Vec<ShardHandle>,
    phase: AtomicU8,
    /// Message types that cross nodes.
    pub(crate) registry: crate::net::Registry,
    /// This node's id and the members, for placement (`None`: standalone).
    pub(crate) net: Option<NetPlacement>,
}

/// What placement needs of the cluster.
pub(crate) struct NetPlacement {
    pub(crate) node_id: quark_placement::NodeId,
    pub(crate) members: Vec<quark_placement::NodeId>,
    /// The live member set (homes of movable actors; docs/MIGRATION.md, "Rolling upgrades").
    pub(crate) view: crate::net::MemberView,
}

impl NodeShared {
    /// The state of a node that starts running.
    pub(super) fn new(
        config: EngineConfig,
        types: Vec<Arc<dyn ErasedType>>,
        type_index: FxHashMap<TypeId, u16>,
        shards: Vec<ShardHandle>,
        registry: crate::net::Registry,
        net: Option<NetPlacement>,
    ) -> NodeShared {
        NodeShared {
            config,
            types,
            type_index,
            shards,
            phase: AtomicU8::new(Phase::Running as u8),
            registry,
            net,
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Deactivating,
            _ => Phase::Stopped,
        }
    }

    /// Moves the node to `phase` and wakes every shard to see it.
    pub(super) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        for s in &self.shards {
            s.bell.ring();
            s.bell.write();
        }
    }

    pub(crate) fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    /// Pushes `msg` into shard `to`'s injection queue from any thread. Never waits (a full
    /// queue overflows into a list; see `crate::admission`), so a shard's pump never blocks.
    pub(crate) fn inject(&self, to: ShardId, msg: CrossMsg) {
        let handle = &self.shards[usize::from(to)];
        handle.inject.push(msg);
        handle.bell.ring();
    }
}

thread_local! {
    static CURRENT: std::cell::OnceCell<Rc<Shard>> = const { std::cell::OnceCell::new() };
}

/// Makes `core` the calling thread's shard core (once, when a shard thread starts its pump).
pub(super) fn set_current(core: Rc<Shard>) {
    CURRENT.with(|c| {
        let _ = c.set(core);
    });
}

/// The shard core of the calling thread, if it is a shard thread (of any node).
pub(crate) fn current_any() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.get().cloned())
}

/// Runs `f` with the shard core of the calling thread, if it is a shard thread of `node`,
/// without cloning its `Rc` (an increment and a decrement with its zero test per message):
/// for the hot paths that use the core only within one call.
#[inline(always)]
pub(crate) fn with_current_core<R>(
    node: &Arc<NodeShared>,
    f: impl FnOnce(Option<&Rc<Shard>>) -> R,
) -> R {
    CURRENT.with(|c| match c.get() {
        Some(core) if Arc::ptr_eq(&core.node, node) => f(Some(core)),
        _ => f(None),
    })
}

/// The shard core of the calling thread, if it is a shard thread of `node`.
#[inline]
pub(crate) fn current_core(node: &Arc<NodeShared>) -> Option<Rc<Shard>> {
    CURRENT.with(|c| match c.get() {
        Some(core) if Arc::ptr_eq(&core.node, node) => Some(core.clone()),
        _ => None,
    })
}

impl crate::scheduler::WakeRoute for NodeShared {
    #[inline]
    fn wake(&self, shard: ShardId, task: crate::scheduler::TaskRef) {
        let here = CURRENT.with(|c| match c.get() {
            Some(core) if core.id == shard && std::ptr::eq(Arc::as_ptr(&core.node), self) => {
                core.sched.schedule(task);
                core.poke();
                true
            }
            _ => false,
        });
        if !here {
            // Another thread: hand the wake to the owning shard.
            self.inject(
                shard,
                CrossMsg::run_on(move |core| core.sched.schedule(task)),
            );
        }
    }
}

/// The durable log of the shard the calling thread runs, if it is a shard thread of a node
/// with a log (for code spawned with [`EngineHandle::spawn_on`](super::EngineHandle::spawn_on)).
pub fn current_shard_log() -> Option<crate::ShardLog> {
    CURRENT.with(|c| c.get().and_then(|core| core.log.clone()))
}
