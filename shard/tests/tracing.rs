//! Trace contexts across shards and nodes: one request's turns on two nodes (real sockets) form
//! one trace, each turn's `quark.call` span a child of the turn that sent its message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quark_net::rkyv;
use quark_net::{ClusterConfig, MemberAddr, Membership, PeerRole, WireMessage};
use quark_placement::{shard_for, ActorId, ActorKey};
use quark_shard::{
    block_on, Actor, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    NetConfig, ShardSpec, TraceContext, TraceFutureExt,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const SHARDS: u16 = 2;

struct Hop;
impl Actor for Hop {
    const TYPE_NAME: &'static str = "hop";
}

/// Handled by asking the first of `rest` with the others; the reply lists, per hop, the
/// handler's `Context::trace()` (`"none"` when untraced), separated by `;`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Chain {
    rest: Vec<u64>,
}
impl Message for Chain {
    type Reply = String;
}
impl WireMessage for Chain {
    const WIRE_NAME: &'static str = "test.Chain";
}
impl Handler<Chain> for Hop {
    async fn handle(&mut self, m: Chain, ctx: &Context<Self>) -> String {
        tracing::info!(hop = %ctx.id(), "hop handled");
        let mut out = ctx
            .trace()
            .map_or_else(|| "none".to_owned(), |t| t.to_string());
        if let Some((next, rest)) = m.rest.split_first() {
            let next = ctx.actor_ref::<Hop>(*next);
            let rest = rest.to_vec();
            match next.ask(Chain { rest }).await {
                Ok(down) => {
                    out.push(';');
                    out.push_str(&down);
                }
                Err(e) => out = format!("error at {}: {e}", ctx.id()),
            }
        }
        out
    }
}

/// A tell; the handler only logs.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Note;
impl Message for Note {
    type Reply = ();
}
impl WireMessage for Note {
    const WIRE_NAME: &'static str = "test.Note";
}
impl Handler<Note> for Hop {
    async fn handle(&mut self, _: Note, ctx: &Context<Self>) {
        tracing::info!(hop = %ctx.id(), "hop handled");
    }
}

/// The fields of one `quark.call` span.
#[derive(Clone, Debug, Default)]
struct SpanRec {
    fields: HashMap<String, String>,
}

impl SpanRec {
    fn get(&self, f: &str) -> &str {
        self.fields
            .get(f)
            .map_or_else(|| panic!("span {self:?} has no field {f}"), String::as_str)
    }
}

impl Visit for SpanRec {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.fields.insert(f.name().to_owned(), v.to_owned());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.fields.insert(f.name().to_owned(), v.to_string());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.fields.insert(f.name().to_owned(), v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.fields.insert(f.name().to_owned(), format!("{v:?}"));
    }
}

/// What the test's layer saw: every `quark.call` span, and every "hop handled" event with the
/// `span_id` of the span it was logged in (`None`: outside any `quark.call` span).
#[derive(Default)]
struct Seen {
    spans: Vec<SpanRec>,
    events: Vec<(String, Option<String>)>,
}

struct Collect(Arc<Mutex<Seen>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collect {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().name() != "quark.call" {
            return;
        }
        let mut rec = SpanRec::default();
        attrs.record(&mut rec);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(rec.clone());
        }
        self.0.lock().unwrap().spans.push(rec);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut rec = SpanRec::default();
        event.record(&mut rec);
        if rec.fields.get("message").map(String::as_str) != Some("hop handled") {
            return;
        }
        let in_span = ctx.event_span(event).and_then(|s| {
            s.extensions()
                .get::<SpanRec>()
                .map(|r| r.get("span_id").to_owned())
        });
        let hop = rec.get("hop").to_owned();
        self.0.lock().unwrap().events.push((hop, in_span));
    }
}

fn seen() -> &'static Arc<Mutex<Seen>> {
    static SEEN: OnceLock<Arc<Mutex<Seen>>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sub = tracing_subscriber::registry().with(Collect(seen.clone()));
        tracing::subscriber::set_global_default(sub).expect("the test's subscriber is the first");
        seen
    })
}

fn start(id: u64, m: &Membership, l: std::net::TcpListener) -> Engine {
    let mut net = NetConfig::new(id, PeerRole::Member, m.clone());
    net.listener = Some(Arc::new(l));
    net.detector.heartbeat_interval = Duration::from_millis(20);
    net.backoff.base = Duration::from_millis(10);
    net.backoff.max = Duration::from_millis(100);
    let config = EngineConfig {
        shards: ShardSpec::Count(usize::from(SHARDS)),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ask_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(2),
        net: Some(net),
        ..EngineConfig::default()
    };
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Hop))
        .remote::<Hop, Chain>()
        .remote::<Hop, Note>()
        .start()
        .expect("engine starts")
}

/// A key of `hop` owned by shard `shard` of node `node` (as `e` places it).
fn key_on(e: &Engine, node: u64, shard: u16, not: &[u64]) -> u64 {
    (0..100_000u64)
        .find(|k| {
            let r = e.actor_ref::<Hop>(*k);
            let id = ActorId {
                type_name: Hop::TYPE_NAME,
                key: ActorKey::from(*k),
            };
            r.remote_node().unwrap_or(e.node_id().unwrap()) == node
                && shard_for(&id, SHARDS) == shard
                && !not.contains(k)
        })
        .expect("some key lands on every shard of every node")
}

#[test]
fn one_trace_follows_a_call_chain_across_shards_and_nodes() {
    let seen = seen();
    let ls: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let m = Membership::from_config(&ClusterConfig {
        cluster_id: "trace".into(),
        nodes: ls
            .iter()
            .enumerate()
            .map(|(i, l)| MemberAddr {
                id: i as u64 + 1,
                addr: l.local_addr().unwrap().to_string(),
            })
            .collect(),
    })
    .unwrap();
    let mut ls = ls.into_iter();
    let n1 = start(1, &m, ls.next().unwrap());
    let n2 = start(2, &m, ls.next().unwrap());

    // A (node 1, shard 0) -> B (node 2, shard 1) -> C (node 1, shard 1) -> D (node 1, shard 0):
    // two network hops and one ring hop.
    let a = key_on(&n1, 1, 0, &[]);
    let b = key_on(&n1, 2, 1, &[]);
    let c = key_on(&n1, 1, 1, &[]);
    let d = key_on(&n1, 1, 0, &[a]);
    let expect = [(a, 1u64, 0u16), (b, 2, 1), (c, 1, 1), (d, 1, 0)];
    let chain = || Chain {
        rest: vec![b, c, d],
    };
    let entry = n1.actor_ref::<Hop>(a);

    // Untraced first (this also waits for both links): no hop sees a trace, no span is made.
    let end = Instant::now() + Duration::from_secs(10);
    let untraced = loop {
        match block_on(entry.ask(chain())) {
            Ok(r) if !r.starts_with("error") => break r,
            other => {
                assert!(Instant::now() < end, "the chain never completed: {other:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert_eq!(untraced, "none;none;none;none");
    {
        let s = seen.lock().unwrap();
        assert!(
            s.spans.is_empty(),
            "untraced calls make no span: {:?}",
            s.spans
        );
    }

    // Traced: continue an incoming `traceparent`.
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let root = TraceContext::parse(incoming).unwrap();
    let reply = block_on(entry.ask(chain()).with_trace(root)).expect("the traced chain");
    let hops: Vec<TraceContext> = reply
        .split(';')
        .map(|t| t.parse().unwrap_or_else(|e| panic!("hop saw {t:?}: {e}")))
        .collect();
    assert_eq!(hops.len(), 4, "{reply}");

    let s = seen.lock().unwrap();
    assert_eq!(s.spans.len(), 4, "one span per hop: {:?}", s.spans);
    // Every turn is a span of its own: five distinct span ids (the caller's and four hops').
    let mut ids: Vec<&str> = s.spans.iter().map(|sp| sp.get("span_id")).collect();
    let root_span = root.span_id_hex();
    ids.push(&root_span);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "span ids are not distinct: {:?}", s.spans);
    let mut parent = root.span_id_hex();
    for (i, (key, node, shard)) in expect.iter().enumerate() {
        let actor = format!("hop/{key}");
        let span = s
            .spans
            .iter()
            .find(|sp| sp.get("actor") == actor)
            .unwrap_or_else(|| panic!("no span for hop {i} ({actor}): {:?}", s.spans));
        assert_eq!(span.get("trace_id"), root.trace_id_hex(), "hop {i}");
        assert_eq!(span.get("parent_span_id"), parent, "hop {i}'s parent");
        assert_eq!(span.get("node"), node.to_string(), "hop {i}'s node");
        assert_eq!(span.get("shard"), shard.to_string(), "hop {i}'s shard");
        assert!(span.get("message").ends_with("Chain"), "{span:?}");
        // The handler's `Context::trace()` is this span's context.
        assert_eq!(hops[i].trace_id(), root.trace_id());
        assert_eq!(hops[i].span_id_hex(), span.get("span_id"), "hop {i}");
        // The handler's log line was written inside this span.
        let logged: Vec<_> = s.events.iter().filter(|(h, _)| *h == actor).collect();
        assert_eq!(logged.len(), 2, "hop {i} logged once untraced, once traced");
        assert_eq!(
            logged[0].1, None,
            "the untraced turn is in no quark.call span"
        );
        assert_eq!(logged[1].1.as_deref(), Some(span.get("span_id")), "hop {i}");
        parent = span.get("span_id").to_owned();
    }
    drop(s);

    // A tell from outside the node to another node carries the trace too.
    let e = key_on(&n1, 2, 0, &[b]);
    let note_root = TraceContext::new_root();
    block_on(n1.actor_ref::<Hop>(e).tell(Note).with_trace(note_root)).expect("the tell is sent");
    let end = Instant::now() + Duration::from_secs(5);
    let span = loop {
        let s = seen.lock().unwrap();
        let found = s
            .spans
            .iter()
            .find(|sp| sp.get("actor") == format!("hop/{e}"));
        if let Some(sp) = found {
            break sp.clone();
        }
        drop(s);
        assert!(Instant::now() < end, "the traced tell's turn made no span");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(span.get("trace_id"), note_root.trace_id_hex());
    assert_eq!(span.get("parent_span_id"), note_root.span_id_hex());
    assert_eq!(span.get("node"), "2");
    assert!(span.get("message").ends_with("Note"), "{span:?}");

    // No trace leaks into later work: an untraced call after the traced one stays untraced.
    assert_eq!(block_on(entry.ask(chain())).unwrap(), "none;none;none;none");
    assert_eq!(
        seen.lock().unwrap().spans.len(),
        5,
        "the untraced ask made a span"
    );
    n1.shutdown();
    n2.shutdown();
}
