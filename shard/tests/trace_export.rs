//! Span export ([`SpanSink`]) and trace inheritance: a task spawned from a traced turn and the
//! ticks of a timer set in one run in child spans of that turn; a panicking handler's span ends
//! `Panicked`; a sink that does not want a trace gets nothing of it; untraced work makes no
//! record.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark_shard::{
    block_on, Actor, ActorType, Context, EngineBuilder, EngineConfig, Handler, Message, ShardSpec,
    SpanKind, SpanRecord, SpanSink, SpanSinkHandle, SpanStatus, TraceContext, TraceFutureExt,
};

/// Keeps every record; wants a trace unless its id is in `refused`.
#[derive(Default)]
struct Collect {
    spans: Mutex<Vec<SpanRecord>>,
    refused: Mutex<Vec<u128>>,
}

impl SpanSink for Collect {
    fn wants(&self, trace_id: u128) -> bool {
        !self.refused.lock().unwrap().contains(&trace_id)
    }
    fn record(&self, span: SpanRecord) {
        self.spans.lock().unwrap().push(span);
    }
}

impl Collect {
    fn of(&self, trace: u128) -> Vec<SpanRecord> {
        let s = self.spans.lock().unwrap();
        s.iter().filter(|r| r.trace_id == trace).cloned().collect()
    }

    /// Waits (bounded) until `trace` has at least `n` records.
    fn wait_for(&self, trace: u128, n: usize) -> Vec<SpanRecord> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.of(trace);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < end,
                "trace {trace:032x}: {} of {n} spans: {got:#?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct Worker;
impl Actor for Worker {
    const TYPE_NAME: &'static str = "worker";
}

/// Spawns a task (on shard 1) that tells `Leaf` to actor `leaf`; replies with the turn's trace.
struct SpawnThenTell {
    leaf: u64,
}
impl Message for SpawnThenTell {
    type Reply = Option<TraceContext>;
}
impl Handler<SpawnThenTell> for Worker {
    async fn handle(&mut self, m: SpawnThenTell, ctx: &Context<Self>) -> Option<TraceContext> {
        let leaf = ctx.actor_ref::<Worker>(m.leaf);
        drop(ctx.engine().spawn_on(1, move || async move {
            let _ = leaf.tell(Leaf).await;
        }));
        ctx.trace()
    }
}

/// Does nothing.
struct Leaf;
impl Message for Leaf {
    type Reply = ();
}
impl Handler<Leaf> for Worker {
    async fn handle(&mut self, _: Leaf, _: &Context<Self>) {}
}

/// Sets a one-shot timer (`Leaf`) and an interval (`Tick`, every 5 ms, cancelled by its third
/// tick); replies with the turn's trace.
struct SetTimers;
impl Message for SetTimers {
    type Reply = Option<TraceContext>;
}
impl Handler<SetTimers> for Worker {
    async fn handle(&mut self, _: SetTimers, ctx: &Context<Self>) -> Option<TraceContext> {
        ctx.set_timer(Duration::from_millis(1), Leaf);
        let id = ctx.set_interval(Duration::from_millis(5), Tick);
        ctx.extension::<Option<quark_shard::TimerId>, _>(|t| *t = Some(id));
        ctx.trace()
    }
}

#[derive(Clone)]
struct Tick;
impl Message for Tick {
    type Reply = ();
}
impl Handler<Tick> for Worker {
    async fn handle(&mut self, _: Tick, ctx: &Context<Self>) {
        let n = ctx.extension::<u32, _>(|n| {
            *n += 1;
            *n
        });
        if n == 3 {
            if let Some(id) = ctx.extension::<Option<quark_shard::TimerId>, _>(|t| *t) {
                ctx.cancel_timer(id);
            }
        }
    }
}

/// Panics.
struct Boom;
impl Message for Boom {
    type Reply = ();
}
impl Handler<Boom> for Worker {
    async fn handle(&mut self, _: Boom, _: &Context<Self>) {
        panic!("boom (expected by the test)");
    }
}

fn engine(sink: Arc<Collect>) -> quark_shard::Engine {
    let config = EngineConfig {
        shards: ShardSpec::Count(2),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        span_sink: Some(SpanSinkHandle(sink)),
        ..EngineConfig::default()
    };
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Worker))
        .start()
        .expect("engine starts")
}

fn one(spans: &[SpanRecord], what: impl Fn(&SpanRecord) -> bool, name: &str) -> SpanRecord {
    let found: Vec<_> = spans.iter().filter(|r| what(r)).collect();
    assert_eq!(found.len(), 1, "exactly one {name}: {spans:#?}");
    found[0].clone()
}

#[test]
fn a_spawned_task_and_what_it_sends_are_children_of_the_spawning_turn() {
    let sink = Arc::new(Collect::default());
    let e = engine(sink.clone());
    let root = TraceContext::new_root();
    let w = e.actor_ref::<Worker>(1u64);
    let turn_ctx = block_on(w.ask(SpawnThenTell { leaf: 2 }).with_trace(root))
        .expect("the ask")
        .expect("the turn is traced");
    let spans = sink.wait_for(root.trace_id(), 3);
    let turn = one(
        &spans,
        |r| r.kind == SpanKind::Call && r.actor.as_deref() == Some("worker/1"),
        "turn",
    );
    assert_eq!(
        turn.span_id,
        turn_ctx.span_id(),
        "the record has the turn's own span id"
    );
    assert_eq!(turn.parent_span_id, root.span_id());
    assert!(turn.message.ends_with("SpawnThenTell"), "{turn:?}");
    let task = one(&spans, |r| r.kind == SpanKind::Task, "task");
    assert_eq!(
        task.parent_span_id, turn.span_id,
        "the task is a child of the turn"
    );
    assert_eq!(task.shard, 1, "the task ran where it was spawned");
    assert_ne!(task.span_id, turn.span_id);
    let leaf = one(
        &spans,
        |r| r.actor.as_deref() == Some("worker/2"),
        "leaf turn",
    );
    assert_eq!(
        leaf.parent_span_id, task.span_id,
        "the task's tell is its child"
    );
    assert!(
        spans.iter().all(|r| r.status == SpanStatus::Ok),
        "{spans:#?}"
    );
    for r in &spans {
        assert!(
            r.start_unix_ns > 0 && r.end_unix_ns >= r.start_unix_ns,
            "{r:?}"
        );
    }

    // Untraced: the same calls make no record at all.
    let before = sink.spans.lock().unwrap().len();
    assert_eq!(block_on(w.ask(SpawnThenTell { leaf: 3 })).unwrap(), None);
    block_on(e.actor_ref::<Worker>(3u64).ask(Leaf)).unwrap();
    assert_eq!(
        sink.spans.lock().unwrap().len(),
        before,
        "untraced work was recorded"
    );
    e.shutdown();
}

#[test]
fn timer_ticks_are_children_of_the_turn_that_set_the_timer() {
    let sink = Arc::new(Collect::default());
    let e = engine(sink.clone());
    let root = TraceContext::new_root();
    let w = e.actor_ref::<Worker>(10u64);
    let turn_ctx = block_on(w.ask(SetTimers).with_trace(root))
        .unwrap()
        .unwrap();
    // The setting turn, the one-shot tick and three interval ticks.
    let spans = sink.wait_for(root.trace_id(), 5);
    let setter = one(&spans, |r| r.message.ends_with("SetTimers"), "setting turn");
    assert_eq!(setter.span_id, turn_ctx.span_id());
    let oneshot = one(&spans, |r| r.message.ends_with("Leaf"), "one-shot tick");
    assert_eq!(oneshot.parent_span_id, setter.span_id);
    let ticks: Vec<_> = spans
        .iter()
        .filter(|r| r.message.ends_with("Tick"))
        .collect();
    assert_eq!(ticks.len(), 3, "three interval ticks: {spans:#?}");
    let mut ids: Vec<u64> = ticks.iter().map(|r| r.span_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every tick is a span of its own");
    for t in ticks {
        assert_eq!(t.parent_span_id, setter.span_id, "{t:?}");
        assert_eq!(t.actor.as_deref(), Some("worker/10"));
    }
    e.shutdown();
}

#[test]
fn a_panicking_turn_ends_panicked_and_an_unwanted_trace_is_not_recorded() {
    let sink = Arc::new(Collect::default());
    let e = engine(sink.clone());
    let root = TraceContext::new_root();
    let r = block_on(e.actor_ref::<Worker>(20u64).ask(Boom).with_trace(root));
    assert!(r.is_err(), "the panic fails the ask: {r:?}");
    let spans = sink.wait_for(root.trace_id(), 1);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].status, SpanStatus::Panicked);
    assert_eq!(spans[0].parent_span_id, root.span_id());

    // A trace the sink refuses, then one with the sampled flag off, then a wanted one, all to
    // one actor: its turns run in order, so once the wanted one is recorded the other two
    // have ended (and would have been recorded by then).
    let refused = TraceContext::new_root();
    sink.refused.lock().unwrap().push(refused.trace_id());
    let unsampled = TraceContext::from_parts(0xabc, 0xdef, 0).expect("non-zero ids");
    let wanted = TraceContext::new_root();
    let a = e.actor_ref::<Worker>(21u64);
    block_on(a.ask(Leaf).with_trace(refused)).unwrap();
    block_on(a.ask(Leaf).with_trace(unsampled)).unwrap();
    block_on(a.ask(Leaf).with_trace(wanted)).unwrap();
    sink.wait_for(wanted.trace_id(), 1);
    assert!(
        sink.of(refused.trace_id()).is_empty(),
        "a refused trace was recorded"
    );
    assert!(sink.of(0xabc).is_empty(), "an unsampled trace was recorded");
    e.shutdown();
}
