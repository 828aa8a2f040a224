//! Replies that cross nodes without wrapper types: `Result<T, E>`, `Option<T>`, tuples and
//! `Vec<T>` of wire types, with every wire type derived through `quark` alone (no direct rkyv
//! or quark-net dependency). Also: a handler's panic on another node reaches the caller with
//! its message.

use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::{
    Actor, ActorType, CallError, Context, Handler, Message, Node, NodeConfig, WireMessage,
};

#[derive(Default)]
struct Account {
    balance: u64,
    history: Vec<Entry>,
}
impl Actor for Account {
    const TYPE_NAME: &'static str = "account";
}

#[derive(
    Debug, Clone, PartialEq, quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize,
)]
#[rkyv(crate = quark::rkyv)]
struct Entry {
    amount: u64,
    note: String,
}
impl WireMessage for Entry {
    const WIRE_NAME: &'static str = "test.Entry";
}

#[derive(
    Debug, Clone, PartialEq, quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize,
)]
#[rkyv(crate = quark::rkyv)]
enum BankError {
    Insufficient { balance: u64, wanted: u64 },
    Frozen,
}
impl WireMessage for BankError {
    const WIRE_NAME: &'static str = "test.BankError";
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Deposit(Entry);
impl Message for Deposit {
    type Reply = u64;
}
impl WireMessage for Deposit {
    const WIRE_NAME: &'static str = "test.Deposit";
}
impl Handler<Deposit> for Account {
    async fn handle(&mut self, m: Deposit, _: &Context<Self>) -> u64 {
        self.balance += m.0.amount;
        self.history.push(m.0);
        self.balance
    }
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Withdraw(u64);
impl Message for Withdraw {
    type Reply = Result<u64, BankError>;
}
impl WireMessage for Withdraw {
    const WIRE_NAME: &'static str = "test.Withdraw";
}
impl Handler<Withdraw> for Account {
    async fn handle(&mut self, m: Withdraw, _: &Context<Self>) -> Result<u64, BankError> {
        if m.0 == u64::MAX {
            return Err(BankError::Frozen);
        }
        if m.0 > self.balance {
            return Err(BankError::Insufficient {
                balance: self.balance,
                wanted: m.0,
            });
        }
        self.balance -= m.0;
        Ok(self.balance)
    }
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct LastNote;
impl Message for LastNote {
    type Reply = Option<String>;
}
impl WireMessage for LastNote {
    const WIRE_NAME: &'static str = "test.LastNote";
}
impl Handler<LastNote> for Account {
    async fn handle(&mut self, _: LastNote, _: &Context<Self>) -> Option<String> {
        self.history.last().map(|e| e.note.clone())
    }
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Summary;
impl Message for Summary {
    type Reply = (u64, Vec<Entry>, Option<u64>);
}
impl WireMessage for Summary {
    const WIRE_NAME: &'static str = "test.Summary";
}
impl Handler<Summary> for Account {
    async fn handle(&mut self, _: Summary, _: &Context<Self>) -> (u64, Vec<Entry>, Option<u64>) {
        (self.balance, self.history.clone(), None)
    }
}

#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Explode(String);
impl Message for Explode {
    type Reply = ();
}
impl WireMessage for Explode {
    const WIRE_NAME: &'static str = "test.Explode";
}
impl Handler<Explode> for Account {
    async fn handle(&mut self, m: Explode, _: &Context<Self>) {
        panic!("explode: {}", m.0);
    }
}

fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn two_nodes() -> Vec<Node> {
    let addrs = free_addrs(2);
    let mut nodes_toml = String::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes_toml.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    (1..=2)
        .map(|id| {
            let text = format!(
                "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
                 [cluster]\ncluster_id = \"wire\"\nnode_id = {id}\n{nodes_toml}"
            );
            let config = NodeConfig::from_toml(&text, "wire.toml").unwrap();
            Node::builder()
                .config(config)
                .register(ActorType::new(|_| Account::default()))
                .remote::<Account, Deposit>()
                .remote::<Account, Withdraw>()
                .remote::<Account, LastNote>()
                .remote::<Account, Summary>()
                .remote::<Account, Explode>()
                .start()
                .unwrap()
        })
        .collect()
}

/// A string key whose owner is node `owner`, as seen from `n`.
fn key_on(n: &Node, owner: u64) -> String {
    (0..10_000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            n.actor_ref::<Account>(k.as_str())
                .remote_node()
                .unwrap_or(n.node_id().unwrap())
                == owner
        })
        .expect("some key lands on every node")
}

#[test]
fn generated_wire_names_name_their_parts() {
    assert_eq!(
        <Result<u64, BankError> as WireMessage>::WIRE_NAME,
        "result<u64,test.BankError>"
    );
    assert_eq!(<Option<String> as WireMessage>::WIRE_NAME, "option<string>");
    assert_eq!(<Vec<Entry> as WireMessage>::WIRE_NAME, "vec<test.Entry>");
    assert_eq!(
        <(u64, Vec<Entry>, Option<u64>) as WireMessage>::WIRE_NAME,
        "(u64,vec<test.Entry>,option<u64>)"
    );
    assert_eq!(<Vec<u8> as WireMessage>::WIRE_NAME, "bytes");
}

#[test]
fn result_option_tuple_and_vec_replies_cross_nodes() {
    let nodes = two_nodes();
    // "ann" is owned by one of the two nodes; ask it from the other.
    let probe = nodes[0].actor_ref::<Account>("ann");
    let from = if probe.remote_node().is_some() {
        &nodes[0]
    } else {
        &nodes[1]
    };
    let ann = from.actor_ref::<Account>("ann");
    assert!(ann.remote_node().is_some(), "the asks below cross nodes");
    eventually("link up", Duration::from_secs(10), || {
        quark::block_on(ann.ask(LastNote)).ok()
    });

    assert_eq!(quark::block_on(ann.ask(LastNote)).unwrap(), None);
    let entry = Entry {
        amount: 10,
        note: "salary".into(),
    };
    assert_eq!(
        quark::block_on(ann.ask(Deposit(entry.clone()))).unwrap(),
        10
    );
    assert_eq!(
        quark::block_on(ann.ask(LastNote)).unwrap(),
        Some("salary".to_owned())
    );
    assert_eq!(quark::block_on(ann.ask(Withdraw(4))).unwrap(), Ok(6));
    assert_eq!(
        quark::block_on(ann.ask(Withdraw(7))).unwrap(),
        Err(BankError::Insufficient {
            balance: 6,
            wanted: 7
        })
    );
    assert_eq!(
        quark::block_on(ann.ask(Withdraw(u64::MAX))).unwrap(),
        Err(BankError::Frozen)
    );
    let (balance, history, none) = quark::block_on(ann.ask(Summary)).unwrap();
    assert_eq!((balance, history, none), (6, vec![entry], None));
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn a_panic_on_another_node_reaches_the_caller_with_its_message() {
    let nodes = two_nodes();
    let k = key_on(&nodes[0], 2);
    let r = nodes[0].actor_ref::<Account>(k.as_str());
    eventually("link up", Duration::from_secs(10), || {
        quark::block_on(r.ask(LastNote)).ok()
    });
    let e = quark::block_on(r.ask(Explode("overdrawn by 5".into()))).unwrap_err();
    match &e {
        CallError::ActorPanicked { actor, panic } => {
            assert_eq!(actor, r.id());
            assert!(panic.contains("explode: overdrawn by 5"), "{panic}");
            assert!(
                panic.contains("wire_types.rs"),
                "the location where available: {panic}"
            );
            assert!(panic.contains("node 2"), "{panic}");
        }
        other => panic!("expected ActorPanicked, got {other:?}"),
    }
    assert!(e.to_string().contains("overdrawn by 5"), "{e}");
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn tell_now_crosses_nodes_in_order_with_later_asks() {
    let nodes = two_nodes();
    let k = key_on(&nodes[0], 2);
    let r = nodes[0].actor_ref::<Account>(k.as_str());
    eventually("link up", Duration::from_secs(10), || {
        quark::block_on(r.ask(LastNote)).ok()
    });
    // From this thread (outside the node): handed to a local shard, then onto the link.
    for i in 0..3 {
        let e = Entry {
            amount: 1,
            note: format!("t{i}"),
        };
        r.tell_now(Deposit(e)).expect("room to send");
    }
    assert_eq!(
        quark::block_on(r.ask(LastNote)).unwrap(),
        Some("t2".to_owned())
    );
    // From a shard of the node: straight onto the shard's connection.
    let r2 = r.clone();
    let (balance, last) = nodes[0]
        .spawn_on(0, move || async move {
            for i in 3..6 {
                let e = Entry {
                    amount: 1,
                    note: format!("t{i}"),
                };
                r2.tell_now(Deposit(e)).expect("room to send");
            }
            let (balance, history, _) = r2.ask(Summary).await.unwrap();
            (balance, history.last().map(|e| e.note.clone()))
        })
        .join()
        .unwrap();
    assert_eq!((balance, last.as_deref()), (6, Some("t5")));
    for n in nodes {
        n.shutdown();
    }
}
