//! The orchestration's side: [`WorkflowContext`], its step futures, and the executor that
//! replays a run against its history and runs it forward.
//!
//! The executor polls the orchestration's future with a no-op waker: every await in an
//! orchestration is one of the context's steps, which complete only when the instance
//! delivers an input (an activity's result, a timer, an event). After each delivered input the
//! future is polled once, both live and in replay, so replay reproduces every poll of the
//! original run in the same order, and its cost is one poll per input (linear in the history).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::history::{fnv1a, HistoryEvent, StepDesc, StepKind};
use super::{ActivityOptions, NonDeterminism, StepError};

/// What completed a step.
#[derive(Clone, Debug)]
pub(crate) enum Resolved {
    Activity(Result<Vec<u8>, String>),
    Fired,
    Event(Vec<u8>),
    Child(Result<Vec<u8>, String>),
}

/// A step the code asked for, with what launching it needs.
#[derive(Clone, Debug)]
pub(crate) struct Command {
    pub seq: u64,
    pub step: StepDesc,
    pub input: Vec<u8>,
    pub fire_at_ms: Option<u64>,
    pub options: ActivityOptions,
    /// A `call_actor` step: stages its message in the instance's turn.
    pub send: Option<super::call::ActorSend>,
}

/// The state a run's steps share (one per run, on the instance's shard).
pub(crate) struct Core {
    pub instance: String,
    pub run: u64,
    /// The steps the history recorded, by position.
    recorded: Vec<StepDesc>,
    /// Recorded race winners.
    chosen: HashMap<u64, u32>,
    /// Patch ids recorded anywhere in this run's history.
    patches: HashSet<String>,
    /// Results delivered and not yet taken by their step.
    results: HashMap<u64, Resolved>,
    /// Events raised and not yet consumed, per name, in order.
    events: HashMap<String, VecDeque<Vec<u8>>>,
    next_seq: u64,
    now_ms: u64,
    rng: u64,
    /// Records produced by the last poll (new `Scheduled`, `Chosen`, `Patched`), in order.
    pub new_records: Vec<HistoryEvent>,
    /// Commands issued by the last poll (replayed and new).
    pub issued: Vec<Command>,
    /// Steps resolved without an input during the last poll (an event taken from the buffer).
    pub resolved_now: Vec<u64>,
    pub error: Option<NonDeterminism>,
    pub continue_with: Option<Vec<u8>>,
}

impl Core {
    fn issue(
        &mut self,
        step: StepDesc,
        input: Vec<u8>,
        fire_at_ms: Option<u64>,
        options: ActivityOptions,
        send: Option<super::call::ActorSend>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.error.is_some() {
            return seq;
        }
        match self.recorded.get(seq as usize) {
            Some(r) if *r != step => {
                self.error = Some(NonDeterminism {
                    instance: self.instance.clone(),
                    position: seq,
                    recorded: Some(r.clone()),
                    requested: Some(step.clone()),
                });
                return seq;
            }
            Some(_) => {}
            None => self.new_records.push(HistoryEvent::Scheduled {
                seq,
                step: step.clone(),
                input: input.clone(),
                fire_at_ms,
            }),
        }
        if step.kind != StepKind::Select {
            self.issued.push(Command {
                seq,
                step,
                input,
                fire_at_ms,
                options,
                send,
            });
        }
        seq
    }

    fn replaying(&self) -> bool {
        (self.next_seq as usize) < self.recorded.len()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic per (instance, run) and per call order.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What an orchestration's code sees: its steps, deterministic time and randomness, versioning
/// markers. Cheap to clone; not `Send` (it lives on the instance's shard).
///
/// **Determinism rules**: an orchestration must ask for the same steps in the same order every
/// time it runs against the same history. Use only the context for time (`now`), randomness
/// (`random`, `new_id`), waiting (`timer`, `wait_event`) and side effects (`call_activity`,
/// `sub_orchestration`); never await any other future, read the clock, a global, a file or
/// the network directly. See `docs/WORKFLOWS.md`.
#[derive(Clone)]
pub struct WorkflowContext {
    core: Rc<RefCell<Core>>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.core.borrow();
        f.debug_struct("WorkflowContext")
            .field("instance", &c.instance)
            .field("run", &c.run)
            .finish_non_exhaustive()
    }
}

impl WorkflowContext {
    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.core.borrow().instance.clone()
    }

    /// The run number (1, then one more per `continue_as_new`).
    pub fn run(&self) -> u64 {
        self.core.borrow().run
    }

    /// True while the code re-runs steps its history already holds (after an activation);
    /// useful to keep logging quiet during replay.
    pub fn is_replaying(&self) -> bool {
        self.core.borrow().replaying()
    }

    /// Deterministic time, ms since the Unix epoch: the time the run started, then the time of
    /// the last input delivered (activity result, timer, event). The same on every replay.
    pub fn now_ms(&self) -> u64 {
        self.core.borrow().now_ms
    }

    /// Deterministic time as a `SystemTime` (see [`WorkflowContext::now_ms`]).
    pub fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }

    /// A deterministic random number: the same sequence on every replay of this run.
    pub fn random(&self) -> u64 {
        self.core.borrow_mut().next_random()
    }

    /// A deterministic unique id (32 hex digits): the same on every replay of this run,
    /// different per call, run and instance.
    pub fn new_id(&self) -> String {
        let mut c = self.core.borrow_mut();
        let a = c.next_random();
        let b = c.next_random();
        format!("{a:016x}{b:016x}")
    }

    /// Versioning marker. Returns true if the history records patch `id`, or if the code runs
    /// past the end of its history (new code, recorded as a `Patched` marker); false while
    /// replaying a history written before the patch existed. Write
    /// `if ctx.is_patched("x") { new } else { old }` and keep the old branch until no instance
    /// started before the change is running.
    pub fn is_patched(&self, id: &str) -> bool {
        let mut c = self.core.borrow_mut();
        if c.patches.contains(id) {
            return true;
        }
        if c.replaying() {
            return false;
        }
        c.patches.insert(id.to_owned());
        c.new_records
            .push(HistoryEvent::Patched { id: id.to_owned() });
        true
    }

    /// Calls activity `name` with `input` under the default [`ActivityOptions`] (through the
    /// node's durable jobs: retry policy, timeout, dead letters). Resolves with its output,
    /// recorded in the history: a replay returns the recorded output without running it.
    pub fn call_activity<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> impl Future<Output = Result<O, StepError>> + 'static {
        self.call_activity_with(name, input, ActivityOptions::default())
    }

    /// [`WorkflowContext::call_activity`] with explicit options (retry, timeout, local).
    pub fn call_activity_with<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        options: ActivityOptions,
    ) -> impl Future<Output = Result<O, StepError>> + 'static {
        let encoded = postcard::to_allocvec(input).map_err(|e| StepError::Encode {
            step: name.to_owned(),
            detail: e.to_string(),
        });
        let core = Rc::clone(&self.core);
        let name = name.to_owned();
        async move {
            let input = encoded?;
            let step = StepDesc {
                kind: StepKind::Activity,
                name: name.clone(),
                input_hash: fnv1a(&input),
            };
            match (Step::new(core, step, input, None, options)).await {
                Resolved::Activity(Ok(bytes)) => decode_output(&name, &bytes),
                Resolved::Activity(Err(error)) => Err(StepError::ActivityFailed {
                    activity: name,
                    error,
                }),
                other => unreachable!(
                    "invariant: an activity step resolves with an activity result, not {other:?}"
                ),
            }
        }
    }

    /// Sends `msg` to actor `(B, key)` **exactly once** through the outbox and resolves with
    /// its reply, recorded in the history (`ActorReplied`): a replay returns the recorded reply
    /// without sending again.
    ///
    /// The message is an outbox record written in the same log batch as the step's
    /// `Scheduled` record, so it is sent if and only if the step is recorded; the outbox
    /// delivers it until the receiver acknowledges it, and the receiver applies it once per
    /// message id (its inbox), running [`super::ActorCallHandler::handle_call`]. The reply goes
    /// back the same way, as a durable message in the batch of the receiver's effects, and is
    /// recorded once (a reply delivered again finds the step resolved). So a crash anywhere
    /// between the send and the recorded reply neither loses nor repeats the effect. The
    /// receiver's type must be registered with `NodeBuilder::register_actor_call::<B, M>()`
    /// (on every node that sends or receives it); `B` may live on any shard or node.
    ///
    /// Errors: [`StepError::ActorCallFailed`] if the message could not be staged (the
    /// outbox is full or not running) or the reply does not decode.
    pub fn call_actor<B, M>(
        &self,
        key: impl Into<quark_shard::ActorKey>,
        msg: &M,
    ) -> impl Future<Output = Result<M::Reply, StepError>> + 'static
    where
        B: super::ActorCallHandler<M>,
        M: super::ActorCall,
    {
        let key: quark_shard::ActorKey = key.into();
        let name = format!("{}/{:?}/{}", B::TYPE_NAME, key, M::NAME);
        let encoded = postcard::to_allocvec(msg).map_err(|e| StepError::Encode {
            step: name.clone(),
            detail: e.to_string(),
        });
        let core = Rc::clone(&self.core);
        async move {
            let input = encoded?;
            let step = StepDesc {
                kind: StepKind::Actor,
                name: name.clone(),
                input_hash: fnv1a(&input),
            };
            let send = super::call::ActorSend::new::<B, M>(key, input.clone());
            match Step::actor(core, step, input, send).await {
                Resolved::Activity(Ok(bytes)) => {
                    decode_output(&name, &bytes).map_err(|e| StepError::ActorCallFailed {
                        call: name.clone(),
                        error: e.to_string(),
                    })
                }
                Resolved::Activity(Err(error)) => {
                    Err(StepError::ActorCallFailed { call: name, error })
                }
                other => {
                    unreachable!("invariant: an actor call resolves with a reply, not {other:?}")
                }
            }
        }
    }

    /// A durable timer: resolves `after` from [`WorkflowContext::now_ms`], also across a
    /// restart (the fire time is recorded; after a restart the remaining time is waited).
    pub fn timer(&self, after: Duration) -> impl Future<Output = ()> + 'static {
        let core = Rc::clone(&self.core);
        let ms = after.as_millis() as u64;
        let fire_at = core.borrow().now_ms.saturating_add(ms);
        async move {
            let step = StepDesc {
                kind: StepKind::Timer,
                name: "timer".to_owned(),
                input_hash: fnv1a(&ms.to_le_bytes()),
            };
            let _ = Step::new(
                core,
                step,
                Vec::new(),
                Some(fire_at),
                ActivityOptions::default(),
            )
            .await;
        }
    }

    /// Waits for event `name` (raised with `Workflows::raise_event`), and returns its payload.
    /// An event raised before the wait began is kept and delivered to the first wait for its
    /// name; events of one name are delivered in the order they were raised.
    pub fn wait_event<P: DeserializeOwned>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<P, StepError>> + 'static {
        self.wait_event_inner(name, None)
    }

    /// [`WorkflowContext::wait_event`] that gives up after `timeout` (a durable timer) with
    /// [`StepError::EventTimeout`]. Whichever comes first is recorded.
    pub fn wait_event_timeout<P: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<P, StepError>> + 'static {
        self.wait_event_inner(name, Some(timeout))
    }

    fn wait_event_inner<P: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<P, StepError>> + 'static {
        let core = Rc::clone(&self.core);
        let name = name.to_owned();
        let ms = timeout.map(|t| t.as_millis() as u64);
        let fire_at = ms.map(|ms| core.borrow().now_ms.saturating_add(ms));
        async move {
            let step = StepDesc {
                kind: StepKind::Event,
                name: name.clone(),
                input_hash: fnv1a(&ms.unwrap_or(u64::MAX).to_le_bytes()),
            };
            match Step::new(core, step, Vec::new(), fire_at, ActivityOptions::default()).await {
                Resolved::Event(bytes) => decode_output(&name, &bytes),
                Resolved::Fired => Err(StepError::EventTimeout {
                    event: name,
                    after_ms: ms.unwrap_or(0),
                }),
                other => unreachable!(
                    "invariant: an event step resolves with an event or its timeout, not {other:?}"
                ),
            }
        }
    }

    /// Starts orchestration `name` (its newest registered version) as a child instance with
    /// id `<this id>/<run>.<position>` and waits for its output. Cancelling this instance cancels
    /// the child. A replay returns the recorded output without starting it again.
    pub fn sub_orchestration<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> impl Future<Output = Result<O, StepError>> + 'static {
        let encoded = postcard::to_allocvec(input).map_err(|e| StepError::Encode {
            step: name.to_owned(),
            detail: e.to_string(),
        });
        let core = Rc::clone(&self.core);
        let name = name.to_owned();
        async move {
            let input = encoded?;
            let step = StepDesc {
                kind: StepKind::SubOrchestration,
                name: name.clone(),
                input_hash: fnv1a(&input),
            };
            match Step::new(core, step, input, None, ActivityOptions::default()).await {
                Resolved::Child(Ok(bytes)) => decode_output(&name, &bytes),
                Resolved::Child(Err(error)) => Err(StepError::ChildFailed {
                    orchestration: name,
                    error,
                }),
                other => unreachable!(
                    "invariant: a child step resolves with a child result, not {other:?}"
                ),
            }
        }
    }

    /// Waits for every future (steps of any kind, run concurrently) and returns their outputs
    /// in order (fan-out / fan-in).
    pub fn join_all<F: Future>(&self, futures: Vec<F>) -> impl Future<Output = Vec<F::Output>> {
        futures::future::join_all(futures)
    }

    /// Races the futures: resolves with the index and output of the first to finish. The
    /// race takes a history position and its winner is recorded, so a replay that would pick
    /// another winner is reported as non-deterministic. The losers are dropped (an activity
    /// already started still runs; its result is recorded and unused).
    pub fn when_any<F: Future + Unpin>(&self, futures: Vec<F>) -> WhenAny<F> {
        WhenAny {
            core: Rc::clone(&self.core),
            futures,
            seq: None,
        }
    }

    /// Ends this run and starts the next one with `input` and an empty history (the way to
    /// keep a long-lived instance's history bounded). Never resolves: write
    /// `return ctx.continue_as_new(&next).await;`. Steps still pending are abandoned.
    pub fn continue_as_new<I: Serialize, T: 'static>(
        &self,
        input: &I,
    ) -> impl Future<Output = T> + 'static {
        let encoded = postcard::to_allocvec(input).unwrap_or_default();
        self.core.borrow_mut().continue_with = Some(encoded);
        std::future::pending()
    }
}

fn decode_output<O: DeserializeOwned>(step: &str, bytes: &[u8]) -> Result<O, StepError> {
    postcard::from_bytes(bytes).map_err(|e| StepError::Decode {
        step: step.to_owned(),
        detail: e.to_string(),
    })
}

/// One step: issues its command on first poll, then waits for its result.
struct Step {
    core: Rc<RefCell<Core>>,
    #[allow(clippy::type_complexity)]
    issue: Option<(
        StepDesc,
        Vec<u8>,
        Option<u64>,
        ActivityOptions,
        Option<super::call::ActorSend>,
    )>,
    seq: u64,
    event: Option<String>,
}

impl Step {
    fn new(
        core: Rc<RefCell<Core>>,
        step: StepDesc,
        input: Vec<u8>,
        fire_at: Option<u64>,
        options: ActivityOptions,
    ) -> Self {
        let event = (step.kind == StepKind::Event).then(|| step.name.clone());
        Step {
            core,
            issue: Some((step, input, fire_at, options, None)),
            seq: 0,
            event,
        }
    }

    /// A `call_actor` step, with what sends its message.
    pub(crate) fn actor(
        core: Rc<RefCell<Core>>,
        step: StepDesc,
        input: Vec<u8>,
        send: super::call::ActorSend,
    ) -> Self {
        Step {
            core,
            issue: Some((step, input, None, ActivityOptions::default(), Some(send))),
            seq: 0,
            event: None,
        }
    }
}

impl Future for Step {
    type Output = Resolved;
    fn poll(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Resolved> {
        let this = &mut *self;
        let mut c = this.core.borrow_mut();
        if let Some((step, input, fire_at, options, send)) = this.issue.take() {
            this.seq = c.issue(step, input, fire_at, options, send);
        }
        if c.error.is_some() {
            return Poll::Pending;
        }
        if let Some(r) = c.results.remove(&this.seq) {
            return Poll::Ready(r);
        }
        if let Some(name) = &this.event {
            if let Some(payload) = c.events.get_mut(name).and_then(|q| q.pop_front()) {
                let seq = this.seq;
                c.resolved_now.push(seq);
                return Poll::Ready(Resolved::Event(payload));
            }
        }
        Poll::Pending
    }
}

/// The future of [`WorkflowContext::when_any`]: `(index, output)` of the first branch done.
pub struct WhenAny<F> {
    core: Rc<RefCell<Core>>,
    futures: Vec<F>,
    seq: Option<u64>,
}

impl<F: Future + Unpin> Future for WhenAny<F> {
    type Output = (usize, F::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let seq = match this.seq {
            Some(s) => s,
            None => {
                let step = StepDesc {
                    kind: StepKind::Select,
                    name: "when_any".to_owned(),
                    input_hash: fnv1a(&(this.futures.len() as u64).to_le_bytes()),
                };
                let s = this.core.borrow_mut().issue(
                    step,
                    Vec::new(),
                    None,
                    ActivityOptions::default(),
                    None,
                );
                this.seq = Some(s);
                s
            }
        };
        for (i, f) in this.futures.iter_mut().enumerate() {
            if let Poll::Ready(out) = Pin::new(f).poll(cx) {
                let mut c = this.core.borrow_mut();
                match c.chosen.get(&seq).copied() {
                    Some(r) if r as usize != i => {
                        let instance = c.instance.clone();
                        c.error.get_or_insert(NonDeterminism {
                            instance,
                            position: seq,
                            recorded: Some(StepDesc {
                                kind: StepKind::Select,
                                name: format!("when_any won by branch {r}"),
                                input_hash: 0,
                            }),
                            requested: Some(StepDesc {
                                kind: StepKind::Select,
                                name: format!("when_any won by branch {i}"),
                                input_hash: 0,
                            }),
                        });
                        return Poll::Pending;
                    }
                    Some(_) => {}
                    None => {
                        c.chosen.insert(seq, i as u32);
                        c.new_records.push(HistoryEvent::Chosen {
                            seq,
                            index: i as u32,
                        });
                    }
                }
                return Poll::Ready((i, out));
            }
        }
        Poll::Pending
    }
}

/// The type-erased orchestration future: encoded output or error message.
pub(crate) type RunFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>>>>;

/// What a poll of a run produced.
pub(crate) enum Outcome {
    Pending,
    Done(Result<Vec<u8>, String>),
    ContinueAsNew(Vec<u8>),
    NonDeterministic(NonDeterminism),
}

/// A run being executed: the orchestration's future, its core, and the steps issued and not
/// yet resolved.
pub(crate) struct Execution {
    pub core: Rc<RefCell<Core>>,
    fut: RunFuture,
    /// Issued steps waiting for an input, with "launched" (its work was started).
    pub pending: BTreeMap<u64, (Command, bool)>,
    /// The job of each activity step that has one recorded (`ActivityJob`).
    pub jobs: HashMap<u64, u64>,
}

impl Execution {
    /// A run of `instance` whose history (this run's records after `Started`) is `history`.
    pub fn new(
        instance: &str,
        run: u64,
        start_ms: u64,
        history: &[HistoryEvent],
        make: impl FnOnce(WorkflowContext) -> RunFuture,
    ) -> Self {
        let mut recorded = Vec::new();
        let mut chosen = HashMap::new();
        let mut patches = HashSet::new();
        let mut jobs = HashMap::new();
        for e in history {
            match e {
                HistoryEvent::Scheduled { seq, step, .. } => {
                    debug_assert_eq!(*seq as usize, recorded.len(), "positions are dense");
                    recorded.push(step.clone());
                }
                HistoryEvent::Chosen { seq, index } => {
                    chosen.insert(*seq, *index);
                }
                HistoryEvent::Patched { id } => {
                    patches.insert(id.clone());
                }
                HistoryEvent::ActivityJob { seq, job } => {
                    jobs.insert(*seq, *job);
                }
                _ => {}
            }
        }
        let seed = fnv1a(instance.as_bytes()) ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let core = Rc::new(RefCell::new(Core {
            instance: instance.to_owned(),
            run,
            recorded,
            chosen,
            patches,
            results: HashMap::new(),
            events: HashMap::new(),
            next_seq: 0,
            now_ms: start_ms,
            rng: seed,
            new_records: Vec::new(),
            issued: Vec::new(),
            resolved_now: Vec::new(),
            error: None,
            continue_with: None,
        }));
        let fut = make(WorkflowContext {
            core: Rc::clone(&core),
        });
        Execution {
            core,
            fut,
            pending: BTreeMap::new(),
            jobs,
        }
    }

    /// True if `input` is for a step still waiting (or is an event, which is always taken).
    pub fn accepts(&self, input: &HistoryEvent) -> bool {
        match input {
            HistoryEvent::ActivityDone { seq, .. }
            | HistoryEvent::ActorReplied { seq, .. }
            | HistoryEvent::TimerFired { seq, .. }
            | HistoryEvent::ChildDone { seq, .. } => self.pending.contains_key(seq),
            HistoryEvent::EventRaised { .. } => true,
            _ => false,
        }
    }

    /// Makes an input visible to the run (the next poll sees it).
    pub fn deliver(&mut self, input: &HistoryEvent) {
        let mut c = self.core.borrow_mut();
        if let Some(t) = input.time_ms() {
            c.now_ms = c.now_ms.max(t);
        }
        match input {
            HistoryEvent::ActivityDone { seq, result, .. }
            | HistoryEvent::ActorReplied { seq, result, .. } => {
                self.pending.remove(seq);
                c.results.insert(*seq, Resolved::Activity(result.clone()));
            }
            HistoryEvent::TimerFired { seq, .. } => {
                self.pending.remove(seq);
                c.results.insert(*seq, Resolved::Fired);
            }
            HistoryEvent::ChildDone { seq, result, .. } => {
                self.pending.remove(seq);
                c.results.insert(*seq, Resolved::Child(result.clone()));
            }
            HistoryEvent::EventRaised { name, payload, .. } => {
                c.events
                    .entry(name.clone())
                    .or_default()
                    .push_back(payload.clone());
            }
            _ => {}
        }
    }

    /// Polls the run once and collects what it asked for.
    pub fn poll(&mut self) -> Outcome {
        let mut cx = TaskContext::from_waker(Waker::noop());
        let r = self.fut.as_mut().poll(&mut cx);
        let mut c = self.core.borrow_mut();
        for cmd in c.issued.drain(..) {
            self.pending.insert(cmd.seq, (cmd, false));
        }
        for seq in c.resolved_now.drain(..) {
            self.pending.remove(&seq);
        }
        if let Some(e) = c.error.take() {
            return Outcome::NonDeterministic(e);
        }
        if let Some(input) = c.continue_with.take() {
            return Outcome::ContinueAsNew(input);
        }
        match r {
            Poll::Pending => Outcome::Pending,
            Poll::Ready(out) => {
                if let Some(r) = c.recorded.get(c.next_seq as usize) {
                    return Outcome::NonDeterministic(NonDeterminism {
                        instance: c.instance.clone(),
                        position: c.next_seq,
                        recorded: Some(r.clone()),
                        requested: None,
                    });
                }
                Outcome::Done(out)
            }
        }
    }

    /// Steps the code asked for so far in this run.
    pub fn steps_issued(&self) -> u64 {
        self.core.borrow().next_seq
    }

    /// Takes the records the last poll produced.
    pub fn take_records(&mut self) -> Vec<HistoryEvent> {
        std::mem::take(&mut self.core.borrow_mut().new_records)
    }
}
