//! `Engine::actors`: listing live activations with filters and paging, on real shard threads.
//! Every expected row set is computed from the placement function, so the assertions are
//! exact (which rows, in which order, on which shard).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorCursor, ActorKey, ActorQuery, ActorQueryError, ActorRow, ActorType, Context,
    Engine, EngineBuilder, EngineConfig, Handler, ManualClock, Message, ShardId, ShardSpec,
    ACTOR_QUERY_LIMIT_MAX,
};

const SHARDS: u16 = 3;

fn config() -> EngineConfig {
    EngineConfig {
        shards: ShardSpec::Count(usize::from(SHARDS)),
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(20),
        // Nothing is deactivated by the idle sweep during a test (the idle test moves time
        // forward by an hour).
        idle_timeout: Duration::from_secs(100 * 3600),
        ..EngineConfig::default()
    }
}

struct Cart {
    _items: [u64; 4],
}
impl Actor for Cart {
    const TYPE_NAME: &'static str = "cart";
}
struct User;
impl Actor for User {
    const TYPE_NAME: &'static str = "user";
}
struct Pool;
impl Actor for Pool {
    const TYPE_NAME: &'static str = "pool";
}

/// Activates the actor (a no-op turn).
struct Touch;
impl Message for Touch {
    type Reply = ShardId;
}
/// Deactivates the actor once its mailbox is empty.
struct Leave;
impl Message for Leave {
    type Reply = ();
}
/// Keeps the turn busy for an hour of shard time.
struct Stall;
impl Message for Stall {
    type Reply = ();
}
macro_rules! handlers {
    ($t:ty) => {
        impl Handler<Touch> for $t {
            async fn handle(&mut self, _: Touch, ctx: &Context<Self>) -> ShardId {
                ctx.shard()
            }
        }
        impl Handler<Leave> for $t {
            async fn handle(&mut self, _: Leave, ctx: &Context<Self>) {
                ctx.deactivate_when_idle();
            }
        }
        impl Handler<Stall> for $t {
            async fn handle(&mut self, _: Stall, ctx: &Context<Self>) {
                ctx.sleep(Duration::from_secs(3600)).await;
            }
        }
    };
}
handlers!(Cart);
handlers!(User);
handlers!(Pool);

fn engine_with(config: EngineConfig) -> Engine {
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Cart { _items: [0; 4] }))
        .register(ActorType::new(|_| User))
        .register(ActorType::new(|_| Pool).stateless(2))
        .start()
        .expect("engine starts")
}

fn shard_of(type_name: &'static str, key: &ActorKey) -> ShardId {
    quark_placement::shard_for(
        &quark_placement::ActorId {
            type_name,
            key: key.clone(),
        },
        SHARDS,
    )
}

fn touch<A: Actor + Handler<Touch>>(
    engine: &Engine,
    key: ActorKey,
) -> (ShardId, &'static str, ActorKey) {
    let on = engine
        .actor_ref::<A>(key.clone())
        .ask_blocking(Touch)
        .expect("touch answers");
    assert_eq!(on, shard_of(A::TYPE_NAME, &key), "placed by shard_for");
    (on, A::TYPE_NAME, key)
}

type Id = (ShardId, &'static str, ActorKey);

fn ids(rows: &[ActorRow]) -> Vec<Id> {
    rows.iter()
        .map(|r| (r.shard, r.actor_type, r.key.clone()))
        .collect()
}

/// Every page of `q` (limit `q.limit`), concatenated; asserts each page but the last is full.
fn all_pages(engine: &Engine, mut q: ActorQuery) -> Vec<ActorRow> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = engine.actors(&q).expect("query answers");
        let full = page.rows.len() == q.limit;
        out.extend(page.rows);
        match page.next {
            Some(next) => {
                assert!(full, "a page with a next cursor is full");
                q.after = Some(next);
            }
            None => return out,
        }
    }
    panic!("more than 1000 pages");
}

/// Known activations: 4 number-keyed carts per shard, 12 string-keyed carts, 5 users.
fn populate(engine: &Engine) -> BTreeSet<Id> {
    let mut all = BTreeSet::new();
    for s in 0..SHARDS {
        for k in quark_placement::keys_for_shard("cart", s, SHARDS).take(4) {
            all.insert(touch::<Cart>(engine, ActorKey::U64(k)));
        }
    }
    for i in 1..=12 {
        all.insert(touch::<Cart>(
            engine,
            ActorKey::Str(format!("c-{i}").into()),
        ));
    }
    for i in 0..5u64 {
        all.insert(touch::<User>(engine, ActorKey::U64(i * 1000)));
    }
    all
}

#[test]
fn filters_and_pages_list_exactly_the_matching_activations_in_order() {
    let engine = engine_with(config());
    let all = populate(&engine);
    assert_eq!(all.len(), 12 + 12 + 5);
    // BTreeSet order of (shard, type, key) is the listing's order.
    let expected: Vec<Id> = all.iter().cloned().collect();

    // Everything, in pages of 4 (the last one short), and in one page.
    let rows = all_pages(
        &engine,
        ActorQuery {
            limit: 4,
            ..ActorQuery::default()
        },
    );
    assert_eq!(ids(&rows), expected);
    let one = engine.actors(&ActorQuery::default()).unwrap();
    assert_eq!(ids(&one.rows), expected);
    assert_eq!(one.next, None);
    // Exactly a page's worth: the last page is full and says there is no next.
    let exact = engine
        .actors(&ActorQuery {
            limit: expected.len(),
            ..ActorQuery::default()
        })
        .unwrap();
    assert_eq!(exact.rows.len(), expected.len());
    assert_eq!(exact.next, None);

    // The row contents.
    let cart = rows.iter().find(|r| r.actor_type == "cart").unwrap();
    assert!(!cart.stateless_worker);
    assert_eq!(cart.workers, 1);
    assert_eq!(cart.mailbox_len, 0);
    assert_eq!(cart.state_bytes_shallow, std::mem::size_of::<Cart>());
    assert!(cart.idle.is_some(), "idle between turns");

    // By type.
    let users = all_pages(
        &engine,
        ActorQuery {
            actor_type: Some("user".into()),
            limit: 2,
            ..ActorQuery::default()
        },
    );
    let want: Vec<Id> = expected.iter().filter(|i| i.1 == "user").cloned().collect();
    assert_eq!(ids(&users), want);
    assert_eq!(want.len(), 5);

    // By key prefix (display form): c-1, c-10, c-11, c-12; and numbers by their digits.
    let prefixed = all_pages(
        &engine,
        ActorQuery {
            key_prefix: Some("c-1".into()),
            limit: 3,
            ..ActorQuery::default()
        },
    );
    let want: Vec<Id> = expected
        .iter()
        .filter(|i| matches!(&i.2, ActorKey::Str(s) if s.starts_with("c-1")))
        .cloned()
        .collect();
    assert_eq!(ids(&prefixed), want);
    assert_eq!(want.len(), 4);
    let thousands = all_pages(
        &engine,
        ActorQuery {
            key_prefix: Some("1000".into()),
            ..ActorQuery::default()
        },
    );
    assert_eq!(
        ids(&thousands),
        vec![(
            shard_of("user", &ActorKey::U64(1000)),
            "user",
            ActorKey::U64(1000)
        )]
    );

    // By shard, and every filter at once.
    for s in 0..SHARDS {
        let on = all_pages(
            &engine,
            ActorQuery {
                shard: Some(s),
                limit: 5,
                ..ActorQuery::default()
            },
        );
        let want: Vec<Id> = expected.iter().filter(|i| i.0 == s).cloned().collect();
        assert_eq!(ids(&on), want, "shard {s}");
        assert!(on.iter().all(|r| r.shard == s));
        let both = all_pages(
            &engine,
            ActorQuery {
                shard: Some(s),
                actor_type: Some("cart".into()),
                key_prefix: Some("c-".into()),
                limit: 1,
                ..ActorQuery::default()
            },
        );
        let want: Vec<Id> = expected
            .iter()
            .filter(|i| i.0 == s && i.1 == "cart" && matches!(i.2, ActorKey::Str(_)))
            .cloned()
            .collect();
        assert_eq!(ids(&both), want, "shard {s}, string-keyed carts");
    }

    // A cursor given as text works the same.
    let first = engine
        .actors(&ActorQuery {
            limit: 7,
            ..ActorQuery::default()
        })
        .unwrap();
    let text = first.next.clone().unwrap().to_string();
    let rest = all_pages(
        &engine,
        ActorQuery {
            after: Some(text.parse::<ActorCursor>().unwrap()),
            limit: 100,
            ..ActorQuery::default()
        },
    );
    assert_eq!(ids(&rest), expected[7..].to_vec());
}

#[test]
fn paging_stays_correct_while_activations_come_and_go() {
    let engine = engine_with(config());
    let all = populate(&engine);
    let expected: Vec<Id> = all.iter().cloned().collect();
    let mut q = ActorQuery {
        limit: 6,
        ..ActorQuery::default()
    };
    let first = engine.actors(&q).unwrap();
    assert_eq!(ids(&first.rows), expected[..6].to_vec());
    let cursor = first.next.unwrap();

    // Between pages: one listed row and one not yet listed row leave; a new activation
    // before the cursor and one after it arrive.
    let gone_listed = expected[2].clone();
    let gone_unlisted = expected[10].clone();
    let deactivated_before = engine
        .stats()
        .unwrap()
        .iter()
        .map(|s| s.deactivations)
        .sum::<u64>();
    for (_, ty, key) in [&gone_listed, &gone_unlisted] {
        match *ty {
            "cart" => engine
                .actor_ref::<Cart>(key.clone())
                .ask_blocking(Leave)
                .unwrap(),
            _ => engine
                .actor_ref::<User>(key.clone())
                .ask_blocking(Leave)
                .unwrap(),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine
        .stats()
        .unwrap()
        .iter()
        .map(|s| s.deactivations)
        .sum::<u64>()
        < deactivated_before + 2
    {
        assert!(
            Instant::now() < deadline,
            "the two activations did not deactivate"
        );
        std::thread::yield_now();
    }
    // New keys: a number key smaller than every cart key of shard 0 sorts before the cursor
    // (shard 0 was listed first); the largest string key of the last shard sorts after it.
    let before = (0u64..)
        .find(|k| {
            shard_of("cart", &ActorKey::U64(*k)) == 0
                && !all.contains(&(0, "cart", ActorKey::U64(*k)))
        })
        .unwrap();
    let early = touch::<Cart>(&engine, ActorKey::U64(before));
    assert!(early < cursor_id(&cursor), "sorts before the cursor");
    let after_key = (0u32..)
        .map(|i| ActorKey::Str(format!("zz-{i}").into()))
        .find(|k| shard_of("cart", k) == SHARDS - 1)
        .unwrap();
    let late = touch::<Cart>(&engine, after_key);
    assert!(late > cursor_id(&cursor));

    q.after = Some(cursor);
    let rest = all_pages(&engine, q);
    let mut want: Vec<Id> = expected[6..]
        .iter()
        .filter(|i| **i != gone_unlisted)
        .cloned()
        .collect();
    want.push(late);
    want.sort();
    assert_eq!(ids(&rest), want, "each row present throughout listed once; the new one after the cursor listed; the one before it not");
}

fn cursor_id(c: &ActorCursor) -> Id {
    let ty: &'static str = if c.actor_type == "cart" {
        "cart"
    } else if c.actor_type == "user" {
        "user"
    } else {
        "pool"
    };
    (c.shard, ty, c.key.clone())
}

#[test]
fn idle_filter_uses_shard_time_since_the_last_message_turn() {
    let clock = ManualClock::new();
    let engine = engine_with(EngineConfig {
        clock: clock.clone().into(),
        ..config()
    });
    let all = populate(&engine);
    // An hour passes; then a few actors get a message.
    clock.advance(Duration::from_secs(3600));
    let fresh: BTreeSet<Id> = [
        touch::<Cart>(&engine, ActorKey::Str("c-3".into())),
        touch::<User>(&engine, ActorKey::U64(2000)),
    ]
    .into();
    let idle = all_pages(
        &engine,
        ActorQuery {
            idle_at_least: Some(Duration::from_secs(1800)),
            limit: 5,
            ..ActorQuery::default()
        },
    );
    let want: Vec<Id> = all.difference(&fresh).cloned().collect();
    assert_eq!(ids(&idle), want);
    assert!(idle
        .iter()
        .all(|r| r.idle.unwrap() >= Duration::from_secs(3600)));
    let recent = engine
        .actors(&ActorQuery {
            key_prefix: Some("c-3".into()),
            ..ActorQuery::default()
        })
        .unwrap();
    assert_eq!(recent.rows.len(), 1);
    assert!(
        recent.rows[0].idle.unwrap() < Duration::from_secs(1800),
        "{:?}",
        recent.rows[0].idle
    );
}

#[test]
fn a_busy_activation_reports_its_mailbox_and_no_idle_time_and_workers_are_one_row_per_key() {
    let engine = engine_with(EngineConfig {
        shutdown_timeout: Duration::from_millis(200),
        ..config()
    });
    let busy = engine.actor_ref::<User>(7u64);
    busy.tell_blocking(Stall).unwrap();
    for _ in 0..3 {
        busy.tell_blocking(Touch).unwrap();
    }
    let q = ActorQuery {
        actor_type: Some("user".into()),
        ..ActorQuery::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = engine.actors(&q).unwrap().rows;
        if let Some(r) = rows.into_iter().find(|r| r.mailbox_len == 3) {
            break r;
        }
        assert!(Instant::now() < deadline, "the three tells never queued");
        std::thread::yield_now();
    };
    assert_eq!(row.key, ActorKey::U64(7));
    assert_eq!(row.idle, None, "busy: not idle");
    let idle_only = engine
        .actors(&ActorQuery {
            idle_at_least: Some(Duration::ZERO),
            ..q
        })
        .unwrap();
    assert!(
        idle_only.rows.is_empty(),
        "a busy activation never matches the idle filter"
    );

    // A stateless worker lives on its caller's shard: one row per key.
    let pool = engine.actor_ref::<Pool>(5u64);
    let on = engine
        .spawn_on(2, move || async move { pool.ask(Touch).await })
        .join()
        .unwrap();
    assert_eq!(on, Ok(2));
    let rows = engine
        .actors(&ActorQuery {
            actor_type: Some("pool".into()),
            ..ActorQuery::default()
        })
        .unwrap()
        .rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].shard, rows[0].stateless_worker, rows[0].workers),
        (2, true, 1)
    );
    assert_eq!(rows[0].state_bytes_shallow, 0, "a unit struct");
}

#[test]
fn bad_queries_are_refused_naming_the_problem() {
    let engine = engine_with(config());
    let err = |q: ActorQuery| engine.actors(&q).unwrap_err();
    assert_eq!(
        err(ActorQuery {
            limit: 0,
            ..ActorQuery::default()
        }),
        ActorQueryError::Limit {
            limit: 0,
            max: ACTOR_QUERY_LIMIT_MAX
        }
    );
    assert!(matches!(
        err(ActorQuery {
            limit: ACTOR_QUERY_LIMIT_MAX + 1,
            ..ActorQuery::default()
        }),
        ActorQueryError::Limit { .. }
    ));
    assert_eq!(
        err(ActorQuery {
            shard: Some(SHARDS),
            ..ActorQuery::default()
        }),
        ActorQueryError::UnknownShard {
            shard: SHARDS,
            shards: SHARDS
        }
    );
    let e = err(ActorQuery {
        actor_type: Some("nope".into()),
        ..ActorQuery::default()
    });
    assert_eq!(
        e,
        ActorQueryError::UnknownType {
            name: "nope".into(),
            known: vec!["cart", "user", "pool"]
        }
    );
    assert!(e.to_string().contains("\"nope\""), "{e}");
    // A cursor past the last shard: an empty last page.
    let past = engine
        .actors(&ActorQuery {
            after: Some(ActorCursor {
                shard: SHARDS + 5,
                actor_type: "cart".into(),
                key: ActorKey::U64(0),
            }),
            ..ActorQuery::default()
        })
        .unwrap();
    assert!(past.rows.is_empty() && past.next.is_none());
}

/// A state whose deep size is the bytes it holds.
struct Blob {
    data: Vec<u8>,
}
impl Actor for Blob {
    const TYPE_NAME: &'static str = "blob";
}
/// Makes the blob hold exactly `0` bytes.
struct Fill(usize);
impl Message for Fill {
    type Reply = ();
}
impl Handler<Fill> for Blob {
    async fn handle(&mut self, m: Fill, _: &Context<Self>) {
        self.data = vec![1; m.0];
    }
}

#[test]
fn rows_show_the_deep_size_of_a_type_with_the_hook_and_filter_on_it() {
    let engine = EngineBuilder::new(config())
        .register(ActorType::new(|_| Cart { _items: [0; 4] }))
        .register(ActorType::new(|_| Blob { data: Vec::new() }).memory_size(|b| b.data.capacity()))
        .start()
        .expect("engine starts");
    for (key, size) in [(1u64, 100usize), (2, 70_000), (3, 5_000)] {
        quark_shard::block_on(engine.actor_ref::<Blob>(key).ask(Fill(size))).unwrap();
    }
    quark_shard::block_on(engine.actor_ref::<Cart>(1u64).ask(Touch)).unwrap();
    let rows = engine.actors(&ActorQuery::default()).unwrap().rows;
    let size = |t: &str, k: u64| {
        let r = rows
            .iter()
            .find(|r| r.actor_type == t && r.key == ActorKey::from(k))
            .unwrap_or_else(|| panic!("no {t}/{k} in {rows:?}"));
        (r.state_bytes, r.state_bytes_deep)
    };
    // The hook's deep size for blobs (idle between turns); the shallow size for the cart.
    assert_eq!(size("blob", 1), (100, true));
    assert_eq!(size("blob", 2), (70_000, true));
    assert_eq!(size("blob", 3), (5_000, true));
    assert_eq!(size("cart", 1), (std::mem::size_of::<Cart>(), false));
    // "Memory above": only the rows at or above the bound, deep or shallow alike.
    let big = engine
        .actors(&ActorQuery {
            state_bytes_at_least: Some(5_000),
            ..ActorQuery::default()
        })
        .unwrap()
        .rows;
    let mut keys: Vec<String> = big
        .iter()
        .map(|r| format!("{}/{}", r.actor_type, r.key))
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["blob/2".to_owned(), "blob/3".to_owned()]);
    let small = engine
        .actors(&ActorQuery {
            state_bytes_at_least: Some(1),
            actor_type: Some("cart".into()),
            ..ActorQuery::default()
        })
        .unwrap()
        .rows;
    assert_eq!(small.len(), 1, "the cart's shallow size counts: {small:?}");
    engine.shutdown();
}
