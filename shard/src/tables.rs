//! A shard's actor tables: one per registered actor type, holding its live activations (keyed
//! actors by key, stateless workers as pools per key), with the walks the shard does over them
//! (idle sweeps, deactivation, shutdown, statistics and actor queries). The activations
//! themselves, and their task, are in `activation`.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey, ShardId};
use rustc_hash::FxHashMap;

use crate::activation::{Activation, ActorType};
use crate::actor::Actor;
use crate::engine::{ActorQuery, ActorRow};
use crate::shard::Shard;

/// The registry's type-erased view of an actor type.
pub(crate) trait ErasedType: Send + Sync {
    fn name(&self) -> &'static str;
    fn make_table(self: Arc<Self>, type_idx: u16, default_idle: Duration) -> Box<dyn ErasedTable>;
    fn stateless(&self) -> bool;
    /// Registered with a mover (`ActorType::movable`/`migratable`), and not stateless.
    fn migratable(&self) -> bool;
    /// Its state moves as bytes (`ActorType::migratable`): it may move to another node.
    fn bytes_mover(&self) -> bool;
    /// Where a first activation goes (`ActorType::placement`).
    fn placement(&self) -> crate::directory::PlacementPolicy;
    /// Its state moves as log records (`ActorType::moves_with_log`).
    fn log_mover(&self) -> bool;
}

pub(crate) struct TypeInfo<A: Actor> {
    pub(crate) spec: ActorType<A>,
}

impl<A: Actor> ErasedType for TypeInfo<A> {
    fn name(&self) -> &'static str {
        A::TYPE_NAME
    }
    fn make_table(self: Arc<Self>, type_idx: u16, default_idle: Duration) -> Box<dyn ErasedTable> {
        let idle = self.spec.idle_timeout.unwrap_or(default_idle);
        Box::new(TypeTable::<A> {
            info: self,
            type_idx,
            idle_timeout: idle,
            actors: RefCell::new(FxHashMap::default()),
            last: RefCell::new(None),
            workers: RefCell::new(FxHashMap::default()),
        })
    }
    fn stateless(&self) -> bool {
        self.spec.stateless_workers.is_some()
    }
    fn migratable(&self) -> bool {
        self.spec.migration.is_some() && self.spec.stateless_workers.is_none()
    }
    fn bytes_mover(&self) -> bool {
        self.migratable() && crate::migrate::moves_as_bytes(&self.spec)
    }
    fn placement(&self) -> crate::directory::PlacementPolicy {
        self.spec.placement
    }
    fn log_mover(&self) -> bool {
        self.migratable() && crate::migrate::moves_with_log(&self.spec)
    }
}

/// A shard's table of one type's activations, seen without its type.
pub(crate) trait ErasedTable {
    fn as_any(&self) -> &dyn Any;
    fn idle_timeout(&self) -> Duration;
    /// Asks idle activations whose idle timeout passed to deactivate.
    fn sweep_idle(&self, now: Instant);
    /// Asks every activation to deactivate once its mailbox is empty.
    fn deactivate_all(&self);
    /// Asks the activation of `key` here, if any, to deactivate once its mailbox is empty
    /// (`evict`); false if there is none.
    fn request_deactivation(&self, key: &ActorKey) -> bool;
    /// True if no activation is running a turn or has mail.
    fn quiescent(&self) -> bool;
    /// Number of live activations.
    fn len(&self) -> usize;
    /// The actor type's name.
    fn name(&self) -> &'static str;
    /// Messages queued in the activations' mailboxes: `(total, longest)`.
    fn mailbox_depth(&self) -> (usize, usize);
    /// The known size of this type's states ([`crate::engine::TypeStateBytes`]).
    fn state_bytes(&self) -> crate::engine::TypeStateBytes;
    /// Drops every activation now, failing queued calls with `ShuttingDown`.
    fn abort_all(&self, core: &Shard);
    /// The (at most `want`) rows with the smallest keys that match `q`'s key and idle filters
    /// and come after `after`, in key order (walks the table: for queries, not the hot path).
    fn rows(
        &self,
        q: &ActorQuery,
        after: Option<&ActorKey>,
        now: Instant,
        want: usize,
        shard: ShardId,
    ) -> Vec<ActorRow>;
    /// Pauses `key`'s activation for a move (`migrate::pause_typed`).
    fn pause_for_move(&self, core: &Rc<Shard>, key: ActorKey, cmd: crate::migrate::Cmd);
    /// Installs a state that arrived from another node (`migrate::install_typed`).
    fn install_bytes(
        &self,
        core: &Rc<Shard>,
        key: ActorKey,
        state: Option<Vec<u8>>,
    ) -> Result<(), crate::migrate::MigrateError>;
}

/// A shard's actor tables, one per registered actor type (indexed by the type's registry
/// index).
pub(crate) struct ActorTables(Vec<Box<dyn ErasedTable>>);

impl ActorTables {
    pub(crate) fn new(types: &[Arc<dyn ErasedType>], default_idle: Duration) -> Self {
        ActorTables(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| t.clone().make_table(i as u16, default_idle))
                .collect(),
        )
    }

    /// The table of actor type `A` (registered at index `type_idx`).
    #[inline]
    pub(crate) fn get<A: Actor>(&self, type_idx: u16) -> &TypeTable<A> {
        let table: &dyn ErasedTable = &*self.0[usize::from(type_idx)];
        debug_assert!(
            table.as_any().is::<TypeTable<A>>(),
            "type index and actor type come from the same registry"
        );
        // SAFETY: the table at `type_idx` was made by `make_table` for the type registered at
        // that index, and every caller's `type_idx` comes from the same registry's lookup of
        // `A` (`NodeShared::type_index`), so it is a `TypeTable<A>`. (Checked in debug builds;
        // unchecked, the downcast's two virtual calls cost ~15 instructions per message.)
        unsafe { &*(table as *const dyn ErasedTable).cast::<TypeTable<A>>() }
    }

    /// The table of the type registered at `type_idx`, seen without its type.
    pub(crate) fn erased(&self, type_idx: u16) -> &dyn ErasedTable {
        &*self.0[usize::from(type_idx)]
    }

    /// Live activations of every type.
    pub(crate) fn live(&self) -> usize {
        self.0.iter().map(|t| t.len()).sum()
    }

    /// Live activations per type, in registration order (for the stats snapshot).
    pub(crate) fn live_per_type(&self) -> Vec<(&'static str, u64)> {
        self.0.iter().map(|t| (t.name(), t.len() as u64)).collect()
    }

    /// The known size of the states per type, in registration order (walks the tables and
    /// calls the `memory_size` hooks: for the stats snapshot, not for the hot path).
    pub(crate) fn state_bytes_per_type(&self) -> Vec<crate::engine::TypeStateBytes> {
        self.0.iter().map(|t| t.state_bytes()).collect()
    }

    /// Messages queued in every mailbox of the shard: `(total, longest)` (walks the tables:
    /// for the stats snapshot, not for the hot path).
    pub(crate) fn mailbox_depth(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(total, max), t| {
            let (n, m) = t.mailbox_depth();
            (total + n as u64, max.max(m as u64))
        })
    }

    /// True if no activation is running a turn or has mail.
    pub(crate) fn quiescent(&self) -> bool {
        self.0.iter().all(|t| t.quiescent())
    }

    /// The first `want` rows of shard `shard` that match `q`, in `(type name, key)` order,
    /// after `q.after` when it points into this shard (none if it points past it).
    /// Memory: at most `want` rows per type while walking.
    pub(crate) fn rows(
        &self,
        q: &ActorQuery,
        shard: ShardId,
        now: Instant,
        want: usize,
    ) -> Vec<ActorRow> {
        let after = match &q.after {
            Some(c) if c.shard > shard => return Vec::new(),
            Some(c) if c.shard == shard => Some(c),
            _ => None,
        };
        let mut out = Vec::new();
        for t in &self.0 {
            if q.actor_type.as_deref().is_some_and(|name| name != t.name()) {
                continue;
            }
            let after_key = match after {
                Some(c) => match t.name().cmp(c.actor_type.as_str()) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => Some(&c.key),
                    std::cmp::Ordering::Greater => None,
                },
                None => None,
            };
            out.extend(t.rows(q, after_key, now, want, shard));
        }
        out.sort_by(|a, b| (a.actor_type, &a.key).cmp(&(b.actor_type, &b.key)));
        out.truncate(want);
        out
    }

    /// Asks idle activations whose idle timeout passed to deactivate.
    pub(crate) fn sweep_idle(&self, now: Instant) {
        self.0.iter().for_each(|t| t.sweep_idle(now));
    }

    /// Asks every activation to deactivate once its mailbox is empty.
    pub(crate) fn deactivate_all(&self) {
        self.0.iter().for_each(|t| t.deactivate_all());
    }

    /// Drops every activation now, failing queued calls with `ShuttingDown`.
    pub(crate) fn abort_all(&self, shard: &Shard) {
        self.0.iter().for_each(|t| t.abort_all(shard));
    }

    /// The shortest idle timeout of any type.
    pub(crate) fn min_idle_timeout(&self) -> Option<Duration> {
        self.0.iter().map(|t| t.idle_timeout()).min()
    }
}

pub(crate) struct TypeTable<A: Actor> {
    pub(crate) info: Arc<TypeInfo<A>>,
    type_idx: u16,
    idle_timeout: Duration,
    pub(crate) actors: RefCell<FxHashMap<ActorKey, Rc<Activation<A>>>>,
    workers: RefCell<FxHashMap<ActorKey, Vec<Rc<Activation<A>>>>>,
    /// The activation [`TypeTable::lookup`] found last: a sender that sends to one actor
    /// again and again pays a key comparison instead of a hash probe (~60 instructions).
    /// Cleared when that activation leaves the table.
    last: RefCell<Option<Rc<Activation<A>>>>,
}

impl<A: Actor> TypeTable<A> {
    /// The live activation of `key` in the table (keyed types), if any.
    #[inline(always)]
    pub(crate) fn lookup(&self, key: &ActorKey) -> Option<Rc<Activation<A>>> {
        // The last-found activation, inlined into the sender (a numeric key compares in a few
        // instructions; the call and its frame cost more than the check); the map out of line.
        if let Some(last) = &*self.last.borrow() {
            if last.ctx.id.key == *key {
                return Some(last.clone());
            }
        }
        self.lookup_map(key)
    }

    /// [`Self::lookup`] past the last-found activation: the map, and remembers what it found.
    #[inline(never)]
    fn lookup_map(&self, key: &ActorKey) -> Option<Rc<Activation<A>>> {
        let act = self.actors.borrow().get(key).cloned()?;
        *self.last.borrow_mut() = Some(act.clone());
        Some(act)
    }

    fn each(&self, mut f: impl FnMut(&Rc<Activation<A>>)) {
        let actors: Vec<_> = self.actors.borrow().values().cloned().collect();
        actors.iter().for_each(&mut f);
        let workers: Vec<_> = self.workers.borrow().values().flatten().cloned().collect();
        workers.iter().for_each(&mut f);
    }

    /// The activation that should get the next message for `key`, activating one if needed;
    /// `None` if the actor lives on another shard or is moving (the placement directory
    /// says so, read only on a table miss): the caller hands the message to
    /// `migrate::divert`.
    #[inline]
    pub(crate) fn route(&self, core: &Rc<Shard>, key: &ActorKey) -> Option<Rc<Activation<A>>> {
        Some(match self.info.spec.stateless_workers {
            None => {
                if let Some(act) = self.actors.borrow().get(key) {
                    return Some(act.clone());
                }
                if core.migration.diverts(core, self.type_idx, key) {
                    return None;
                }
                let act = self.activate(core, key);
                self.actors.borrow_mut().insert(key.clone(), act.clone());
                act
            }
            Some(max) => {
                let mut workers = self.workers.borrow_mut();
                let pool = workers.entry(key.clone()).or_default();
                if let Some(idle) = pool.iter().find(|a| a.is_idle()) {
                    return Some(idle.clone());
                }
                if pool.len() < max {
                    let act = self.activate(core, key);
                    pool.push(act.clone());
                    return Some(act);
                }
                pool.iter()
                    .min_by_key(|a| a.queue_len())
                    .cloned()
                    .expect("a full pool has at least one worker")
            }
        })
    }

    /// Activates `key` here and puts it in the table, without asking the directory (its home
    /// decided, on a first message, that it lives here: `migrate::divert`).
    pub(crate) fn activate_here(&self, core: &Rc<Shard>, key: &ActorKey) -> Rc<Activation<A>> {
        if let Some(act) = self.actors.borrow().get(key) {
            return act.clone();
        }
        let act = self.activate(core, key);
        self.actors.borrow_mut().insert(key.clone(), act.clone());
        act
    }

    fn activate(&self, core: &Rc<Shard>, key: &ActorKey) -> Rc<Activation<A>> {
        let id = ActorId {
            type_name: A::TYPE_NAME,
            key: key.clone(),
        };
        let act = Activation::start(core, id, self.type_idx, self.info.clone());
        core.stats.activations.set(core.stats.activations.get() + 1);
        act
    }

    pub(crate) fn remove(&self, act: &Rc<Activation<A>>) {
        let key = &act.ctx.id.key;
        if self.info.spec.stateless_workers.is_some() {
            let mut workers = self.workers.borrow_mut();
            if let Some(pool) = workers.get_mut(key) {
                pool.retain(|a| !Rc::ptr_eq(a, act));
                if pool.is_empty() {
                    workers.remove(key);
                }
            }
        } else {
            let mut actors = self.actors.borrow_mut();
            if actors.get(key).is_some_and(|a| Rc::ptr_eq(a, act)) {
                actors.remove(key);
            }
            let mut last = self.last.borrow_mut();
            if last.as_ref().is_some_and(|a| Rc::ptr_eq(a, act)) {
                *last = None;
            }
        }
    }
}

impl<A: Actor> ErasedTable for TypeTable<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn sweep_idle(&self, now: Instant) {
        let timeout = self.idle_timeout;
        self.each(|act| {
            if act.is_idle() && act.since_active(now) >= timeout {
                act.request_deactivation();
            }
        });
    }

    fn deactivate_all(&self) {
        self.each(|act| act.request_deactivation());
    }

    fn request_deactivation(&self, key: &ActorKey) -> bool {
        match self.lookup(key) {
            Some(act) if !act.has_ended() => {
                act.request_deactivation();
                true
            }
            _ => false,
        }
    }

    fn quiescent(&self) -> bool {
        let mut quiet = true;
        self.each(|act| quiet &= act.is_idle());
        quiet
    }

    fn len(&self) -> usize {
        self.actors.borrow().len() + self.workers.borrow().values().map(Vec::len).sum::<usize>()
    }

    fn name(&self) -> &'static str {
        A::TYPE_NAME
    }

    fn mailbox_depth(&self) -> (usize, usize) {
        let actors = self.actors.borrow();
        let workers = self.workers.borrow();
        actors
            .values()
            .chain(workers.values().flatten())
            .map(|a| a.queue_len())
            .fold((0, 0), |(total, max), n| (total + n, max.max(n)))
    }

    fn state_bytes(&self) -> crate::engine::TypeStateBytes {
        let actors = self.actors.borrow();
        let workers = self.workers.borrow();
        let shallow = std::mem::size_of::<A>() as u64;
        let hook = self.info.spec.memory_size.as_ref();
        let (mut bytes, mut deep) = (0u64, 0u64);
        for a in actors.values().chain(workers.values().flatten()) {
            if a.is_gone() {
                continue;
            }
            match hook.and_then(|h| a.between_turns_state().map(h)) {
                Some(b) => {
                    bytes = bytes.saturating_add(b as u64);
                    deep += 1;
                }
                None => bytes = bytes.saturating_add(shallow),
            }
        }
        crate::engine::TypeStateBytes {
            type_name: A::TYPE_NAME,
            bytes,
            deep,
        }
    }

    fn rows(
        &self,
        q: &ActorQuery,
        after: Option<&ActorKey>,
        now: Instant,
        want: usize,
        shard: ShardId,
    ) -> Vec<ActorRow> {
        if want == 0 {
            return Vec::new();
        }
        // A max-heap of the `want` smallest keys seen so far.
        let mut best: std::collections::BinaryHeap<ByKey> =
            std::collections::BinaryHeap::with_capacity(want + 1);
        let stateless = self.info.spec.stateless_workers.is_some();
        // The deep size of these activations, if the type has the hook and none is busy.
        let deep_size = |acts: &mut dyn Iterator<Item = &Rc<Activation<A>>>| {
            let hook = self.info.spec.memory_size.as_ref()?;
            let mut sum = 0usize;
            for a in acts {
                sum = sum.saturating_add(hook(a.between_turns_state()?));
            }
            Some(sum)
        };
        let mut consider = |key: &ActorKey, acts: &[Rc<Activation<A>>]| {
            if after.is_some_and(|a| key <= a)
                || acts.iter().all(|a| a.is_gone())
                || q.key_prefix
                    .as_deref()
                    .is_some_and(|p| !key_starts_with(key, p))
                || (best.len() == want && best.peek().is_some_and(|top| key >= &top.0.key))
            {
                return;
            }
            let acts = || acts.iter().filter(|a| !a.is_gone());
            // The least idle worker's idle time; None if any is busy or has mail.
            let idle = acts()
                .map(|a| a.idle_for(now))
                .try_fold(Duration::MAX, |min, i| i.map(|i| min.min(i)));
            if q.idle_at_least
                .is_some_and(|min| idle.is_none_or(|i| i < min))
            {
                return;
            }
            let workers = acts().count();
            let shallow = std::mem::size_of::<A>() * workers;
            let (state_bytes, state_bytes_deep) = match deep_size(&mut acts()) {
                Some(b) => (b, true),
                None => (shallow, false),
            };
            if q.state_bytes_at_least.is_some_and(|min| state_bytes < min) {
                return;
            }
            best.push(ByKey(ActorRow {
                shard,
                actor_type: A::TYPE_NAME,
                key: key.clone(),
                idle,
                mailbox_len: acts().map(|a| a.queue_len()).sum(),
                stateless_worker: stateless,
                workers,
                state_bytes_shallow: shallow,
                state_bytes,
                state_bytes_deep,
            }));
            if best.len() > want {
                best.pop();
            }
        };
        for (key, act) in self.actors.borrow().iter() {
            consider(key, std::slice::from_ref(act));
        }
        for (key, pool) in self.workers.borrow().iter() {
            consider(key, pool);
        }
        best.into_sorted_vec().into_iter().map(|b| b.0).collect()
    }

    fn pause_for_move(&self, core: &Rc<Shard>, key: ActorKey, cmd: crate::migrate::Cmd) {
        crate::migrate::pause_typed(core, self, self.type_idx, key, cmd);
    }

    fn install_bytes(
        &self,
        core: &Rc<Shard>,
        key: ActorKey,
        state: Option<Vec<u8>>,
    ) -> Result<(), crate::migrate::MigrateError> {
        crate::migrate::install_typed(core, self, self.type_idx, key, state)
    }

    fn abort_all(&self, core: &Shard) {
        // The tables are cleared as a whole below (removing one by one would re-borrow them).
        self.each(|act| act.discard_at_shutdown(core));
        self.actors.borrow_mut().clear();
        self.workers.borrow_mut().clear();
        *self.last.borrow_mut() = None;
    }
}

/// Whether `key`'s display form starts with `prefix` (no allocation for string keys).
fn key_starts_with(key: &ActorKey, prefix: &str) -> bool {
    match key {
        ActorKey::Str(s) => s.starts_with(prefix),
        other => other.to_string().starts_with(prefix),
    }
}

/// A row ordered by its key alone (rows of one type table have distinct keys).
struct ByKey(ActorRow);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

/// The deep size of `act`'s state by its type's [`ActorType::memory_size`] hook, at the end of a
/// sampled turn (`None`: the type has no hook). Called only by the runner of the turn that
/// just ended, after its future was dropped or completed, so no other reference to the state
/// is live.
///
/// [`ActorType::memory_size`]: crate::ActorType::memory_size
#[cold]
#[inline(never)]
pub(crate) fn sampled_memory<A: Actor>(core: &Shard, act: &Activation<A>) -> Option<usize> {
    let hook = core
        .table::<A>(act.ctx.type_idx)
        .info
        .spec
        .memory_size
        .as_ref()?;
    // SAFETY: per this function's contract (the turn's runner, its turn over).
    Some(hook(unsafe { act.state_mut() }))
}
