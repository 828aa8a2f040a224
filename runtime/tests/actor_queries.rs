//! Actor queries through `Node::actors` and the admin endpoint's `/quark/actors` and
//! `/quark/actors/counts`: exact rows for known activations, paging, bad input (400 with a
//! message), and the ring occupancy series in `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use quark::admin::{fetch, ActorCounts, ActorsPage};
use quark::builtin::{Add, Counter, Kv, Put};
use quark::{ActorKey, ActorQuery, AdminConfig, Node, NodeConfig, ShardId};

const T: Duration = Duration::from_secs(10);

fn node() -> Node {
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    quark::builtin::register_builtin(Node::builder().config(config))
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(3);
            e.pin_threads = false;
            e.idle_spin = Duration::ZERO;
        })
        .start()
        .unwrap()
}

type Id = (ShardId, &'static str, ActorKey);

/// 10 number-keyed and 6 string-keyed counters, 4 kv stores: every row the node should list,
/// in listing order.
fn populate(node: &Node) -> Vec<Id> {
    let mut all = Vec::new();
    for k in 0..10u64 {
        let r = node.actor_ref::<Counter>(k);
        quark::block_on(r.ask(Add(1))).unwrap();
        all.push((r.owner_shard(), "counter", ActorKey::U64(k)));
    }
    for i in 0..6 {
        let key = format!("acct/{i}");
        let r = node.actor_ref::<Counter>(key.as_str());
        quark::block_on(r.ask(Add(1))).unwrap();
        all.push((r.owner_shard(), "counter", ActorKey::Str(key.into())));
    }
    for i in 0..4 {
        let key = format!("store {i}");
        let r = node.actor_ref::<Kv>(key.as_str());
        quark::block_on(r.ask(Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }))
        .unwrap();
        all.push((r.owner_shard(), "kv", ActorKey::Str(key.into())));
    }
    all.sort();
    all
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = fetch(addr, path, T).expect("the admin endpoint answers");
    (r.status, r.body)
}

fn page(addr: SocketAddr, query: &str) -> ActorsPage {
    let (status, body) = get(addr, &format!("/quark/actors?{query}"));
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"))
}

/// Every page of `query` with `limit`, following `next`.
fn all_pages(addr: SocketAddr, query: &str, limit: usize) -> Vec<(u16, String, String, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let p = page(addr, &q);
        assert!(p.rows.len() <= limit);
        out.extend(p.rows.iter().map(|r| {
            (
                r.shard,
                r.actor_type.clone(),
                r.key.clone(),
                r.key_kind.clone(),
            )
        }));
        match p.next {
            Some(next) => {
                assert_eq!(p.rows.len(), limit, "a page with a next cursor is full");
                cursor = Some(next);
            }
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

fn display(ids: &[Id]) -> Vec<(u16, String, String, String)> {
    ids.iter()
        .map(|(s, t, k)| {
            let kind = match k {
                ActorKey::U64(_) => "u64",
                ActorKey::Str(_) => "str",
                ActorKey::Bytes(_) => "bytes",
            };
            (*s, t.to_string(), k.to_string(), kind.to_owned())
        })
        .collect()
}

#[test]
fn the_endpoint_lists_exactly_the_nodes_activations_with_filters_and_pages() {
    let node = node();
    let addr = node.admin_addr().unwrap();
    let all = populate(&node);
    assert_eq!(all.len(), 20);
    assert!(
        (0..3).all(|s| all.iter().any(|i| i.0 == s)),
        "every shard holds some: {all:?}"
    );

    // Everything, in pages of 3 and in one page; the API gives the same rows.
    assert_eq!(all_pages(addr, "", 3), display(&all));
    let one = page(addr, "");
    assert_eq!(one.next, None);
    let api = node.actors(&ActorQuery::default()).unwrap();
    assert_eq!(
        api.rows
            .iter()
            .map(|r| (r.shard, r.actor_type, r.key.clone()))
            .collect::<Vec<_>>(),
        all
    );
    // The endpoint serves Node::actors' page (idle times aside: they grow between the two).
    let no_idle = |p: &ActorsPage| {
        let mut p = p.clone();
        p.rows.iter_mut().for_each(|r| r.idle_ms = None);
        p
    };
    assert_eq!(no_idle(&ActorsPage::from(&api)), no_idle(&one));
    assert!(one.rows.iter().all(|r| r.state_bytes_shallow
        == if r.actor_type == "kv" {
            std::mem::size_of::<Kv>()
        } else {
            std::mem::size_of::<Counter>()
        }));
    let row = &one.rows[0];
    assert_eq!(row.idle_ms.map(|ms| ms < 3_600_000), Some(true), "{row:?}");
    assert_eq!(
        (row.mailbox_len, row.workers, row.stateless_worker),
        (0, 1, false)
    );

    // Filters, alone and together (a prefix with a space and a slash, percent-encoded).
    let only = |f: &dyn Fn(&Id) -> bool| {
        display(&all.iter().filter(|i| f(i)).cloned().collect::<Vec<_>>())
    };
    assert_eq!(all_pages(addr, "type=kv", 2), only(&|i| i.1 == "kv"));
    assert_eq!(
        all_pages(addr, "prefix=acct%2F", 4),
        only(&|i| matches!(&i.2, ActorKey::Str(s) if s.starts_with("acct/")))
    );
    assert_eq!(all_pages(addr, "prefix=store+", 10), only(&|i| i.1 == "kv"));
    for s in 0..3u16 {
        assert_eq!(
            all_pages(addr, &format!("shard={s}&type=counter"), 2),
            only(&|i| i.0 == s && i.1 == "counter"),
            "shard {s}"
        );
    }
    assert!(
        page(addr, "idle_ms=3600000").rows.is_empty(),
        "nothing is idle for an hour"
    );
    assert_eq!(all_pages(addr, "idle_ms=0", 7), display(&all));

    // Per-type counts: per shard, from the shards' counters.
    let (status, body) = get(addr, "/quark/actors/counts");
    assert_eq!(status, 200, "{body}");
    let counts: ActorCounts = serde_json::from_str(&body).unwrap();
    assert_eq!(counts, node.actor_counts().unwrap());
    for t in &counts.types {
        let want: Vec<u64> = (0..3)
            .map(|s| {
                all.iter()
                    .filter(|i| i.0 == s && i.1 == t.actor_type)
                    .count() as u64
            })
            .collect();
        assert_eq!(t.per_shard, want, "{}", t.actor_type);
        assert_eq!(t.total, want.iter().sum::<u64>());
    }
    let names: Vec<&str> = counts.types.iter().map(|t| t.actor_type.as_str()).collect();
    assert!(
        names.contains(&"counter") && names.contains(&"kv"),
        "{names:?}"
    );

    // Ring occupancy: one gauge per shard (nothing in flight on a quiet node).
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    for s in 0..3 {
        let line = format!("quark_ring_occupancy{{shard=\"{s}\"}} 0");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("# TYPE quark_ring_occupancy gauge"));
    node.shutdown();
}

#[test]
fn bad_queries_are_answered_400_naming_the_problem() {
    let node = node();
    let addr = node.admin_addr().unwrap();
    populate(&node);
    for (query, needle) in [
        ("colour=red", "unknown parameter \"colour\""),
        ("shard=x", "parameter shard=\"x\" is not a shard number"),
        ("shard=1&shard=2", "parameter \"shard\" given twice"),
        ("idle_ms=-5", "is not a number of milliseconds"),
        ("limit=0", "limit 0 is out of range (1 ..= 1000)"),
        ("limit=1001", "limit 1001 is out of range"),
        ("shard=7", "shard 7 does not exist (the node has 3 shards)"),
        ("type=cart", "actor type \"cart\" is not registered"),
        ("cursor=garbage", "bad actor cursor \"garbage\""),
        ("cursor=0.6.u1", "type is malformed"),
        ("prefix=%G1", "bad percent-encoding"),
    ] {
        let (status, body) = get(addr, &format!("/quark/actors?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body:?} lacks {needle:?}");
    }
    // A cursor taken from a page is accepted.
    let first = page(addr, "limit=1");
    let next = first.next.expect("more than one row");
    assert_eq!(page(addr, &format!("limit=1&cursor={next}")).rows.len(), 1);
    node.shutdown();
}

/// A state whose deep size (`ActorType::memory_size`) is the bytes it holds.
struct Blob(Vec<u8>);
impl quark::Actor for Blob {
    const TYPE_NAME: &'static str = "blob";
}
struct Fill(usize);
impl quark::Message for Fill {
    type Reply = ();
}
impl quark::Handler<Fill> for Blob {
    async fn handle(&mut self, m: Fill, _: &quark::Context<Self>) {
        self.0 = vec![1; m.0];
    }
}

/// `min_bytes` keeps the rows whose state is at least that large, by the deep size where the
/// type has the hook; rows carry the size and say whether it is the deep one.
#[test]
fn min_bytes_filters_on_the_deep_size() {
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = Node::builder()
        .config(config)
        .register(quark::ActorType::new(|_| Blob(Vec::new())).memory_size(|b: &Blob| b.0.len()))
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(2);
            e.pin_threads = false;
            e.idle_spin = Duration::ZERO;
        })
        .start()
        .unwrap();
    for (k, n) in [(1u64, 100), (2, 5_000), (3, 20_000)] {
        quark::block_on(node.actor_ref::<Blob>(k).ask(Fill(n))).unwrap();
    }
    let addr = node.admin_addr().unwrap();
    let p = page(addr, "type=blob&min_bytes=4096");
    let mut got: Vec<(String, usize, bool)> = p
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.state_bytes, r.state_bytes_deep))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("2".to_owned(), 5_000, true),
            ("3".to_owned(), 20_000, true)
        ]
    );
    assert!(page(addr, "min_bytes=20001").rows.is_empty());
    let (status, body) = get(addr, "/quark/actors?min_bytes=lots");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a number of bytes"), "{body}");
    node.shutdown();
}
