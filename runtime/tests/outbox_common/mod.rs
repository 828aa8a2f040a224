//! Actors and helpers shared by the outbox tests: accounts with durable state that move money
//! with durable messages.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quark::outbox::{
    Durable, DurableHandler, DurableMessage, DurableState, MessageId, OutboxConfig, Retry, Save,
};
use quark::{Actor, ActorKey, Context, Handler, Message, Node, NodeBuilder, NodeConfig};
use serde::{Deserialize, Serialize};

/// How the receiver of a credit behaves (per account key), set by a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Ask for a retry (nothing applied).
    Retry,
    /// Panic this many more times.
    Panic(u32),
    /// Apply the credit in memory, then ask for a retry, this many more times.
    FailAfterMutate(u32),
}

pub static BEHAVIOUR: Mutex<Option<HashMap<u64, Behaviour>>> = Mutex::new(None);

pub fn set_behaviour(key: u64, b: Option<Behaviour>) {
    let mut g = BEHAVIOUR.lock().unwrap();
    let m = g.get_or_insert_with(HashMap::new);
    match b {
        Some(b) => m.insert(key, b),
        None => m.remove(&key),
    };
}

fn behaviour(key: u64) -> Option<Behaviour> {
    let mut g = BEHAVIOUR.lock().unwrap();
    let m = g.get_or_insert_with(HashMap::new);
    let b = m.get(&key).copied();
    match b {
        Some(Behaviour::Panic(n)) if n > 1 => {
            m.insert(key, Behaviour::Panic(n - 1));
        }
        Some(Behaviour::FailAfterMutate(n)) if n > 1 => {
            m.insert(key, Behaviour::FailAfterMutate(n - 1));
        }
        Some(Behaviour::Panic(_) | Behaviour::FailAfterMutate(_)) => {
            m.remove(&key);
        }
        _ => {}
    }
    b
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Account {
    pub balance: i64,
    /// Ids of the credits applied, in order.
    pub applied: Vec<MessageId>,
    /// The `seq` field of the credits applied, in order.
    pub seqs: Vec<u64>,
}

impl Actor for Account {
    const TYPE_NAME: &'static str = "acct";
}

impl DurableState for Account {
    fn initial(_key: &ActorKey) -> Self {
        Account::default()
    }
}

fn key_u64(ctx: &Context<Account>) -> u64 {
    match ctx.id().key {
        ActorKey::U64(k) => k,
        _ => u64::MAX,
    }
}

/// Adds to the balance and saves.
pub struct Deposit(pub i64);
impl Message for Deposit {
    type Reply = Result<u64, String>;
}
impl Handler<Deposit> for Account {
    async fn handle(&mut self, m: Deposit, ctx: &Context<Self>) -> Result<u64, String> {
        self.balance += m.0;
        ctx.save(self).await.map_err(|e| e.to_string())
    }
}

/// Debits `amount` per message and sends `count` credits to `to`, committed in one save;
/// with `panic_before_commit` the turn panics after staging.
pub struct Transfer {
    pub to: u64,
    pub amount: i64,
    pub count: u64,
    pub panic_before_commit: bool,
}
impl Message for Transfer {
    type Reply = Result<u64, String>;
}
impl Handler<Transfer> for Account {
    async fn handle(&mut self, m: Transfer, ctx: &Context<Self>) -> Result<u64, String> {
        for seq in 0..m.count {
            ctx.send_durable::<Account, Credit>(
                m.to,
                Credit {
                    amount: m.amount,
                    seq,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        // Change the state only once every send was staged (a refused send leaves it as it was).
        self.balance -= m.amount * m.count as i64;
        if m.panic_before_commit {
            panic!("crash before commit");
        }
        ctx.save(self).await.map_err(|e| e.to_string())
    }
}

/// The state.
pub struct Get;
impl Message for Get {
    type Reply = Account;
}
impl Handler<Get> for Account {
    async fn handle(&mut self, _: Get, _ctx: &Context<Self>) -> Account {
        self.clone()
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Credit {
    pub amount: i64,
    pub seq: u64,
}
impl DurableMessage for Credit {
    const NAME: &'static str = "test.Credit";
}
/// (receiver key, id) of every credit whose `after_commit` callback ran.
pub static AFTER_COMMIT: Mutex<Vec<(u64, MessageId)>> = Mutex::new(Vec::new());

/// Ids whose `after_commit` callback ran at receiver `key`, in order.
pub fn after_commit_ids(key: u64) -> Vec<MessageId> {
    AFTER_COMMIT
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, id)| *id)
        .collect()
}

impl DurableHandler<Credit> for Account {
    async fn handle_durable(&mut self, m: Credit, ctx: &Context<Self>) -> Result<(), Retry> {
        // Registered first, so that a failing attempt has one to drop.
        let (key, id) = (key_u64(ctx), ctx.message_id().expect("a durable turn"));
        ctx.after_commit(move || AFTER_COMMIT.lock().unwrap().push((key, id)));
        let b = behaviour(key_u64(ctx));
        match b {
            Some(Behaviour::Retry) => {
                return Err(Retry {
                    reason: "receiver paused".into(),
                })
            }
            Some(Behaviour::Panic(_)) => panic!("receiver crashed while handling a credit"),
            _ => {}
        }
        self.balance += m.amount;
        self.applied
            .push(ctx.message_id().expect("a durable turn has an id"));
        self.seqs.push(m.seq);
        if let Some(Behaviour::FailAfterMutate(_)) = b {
            return Err(Retry {
                reason: "failed after changing the state in memory".into(),
            });
        }
        ctx.save(self).await.map_err(|e| Retry {
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// A message no node registers a durable handler for.
#[derive(Serialize, Deserialize, Debug)]
pub struct Unrouted;
impl DurableMessage for Unrouted {
    const NAME: &'static str = "test.Unrouted";
}
impl DurableHandler<Unrouted> for Account {
    async fn handle_durable(&mut self, _: Unrouted, _ctx: &Context<Self>) -> Result<(), Retry> {
        Ok(())
    }
}

/// Sends one `Unrouted` and commits.
pub struct SendUnrouted(pub u64);
impl Message for SendUnrouted {
    type Reply = Result<(), String>;
}
impl Handler<SendUnrouted> for Account {
    async fn handle(&mut self, m: SendUnrouted, ctx: &Context<Self>) -> Result<(), String> {
        ctx.send_durable::<Account, Unrouted>(m.0, Unrouted)
            .await
            .map_err(|e| e.to_string())?;
        ctx.commit().await.map_err(|e| e.to_string())
    }
}

pub fn config(dir: &Path) -> NodeConfig {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().unwrap()
    );
    NodeConfig::from_toml(&text, "outbox-test.toml").unwrap()
}

pub fn builder(dir: &Path, outbox: OutboxConfig) -> NodeBuilder {
    Node::builder()
        .config(config(dir))
        .register(quark::outbox::durable_state::<Account>())
        .outbox(outbox)
        .durable::<Account, Credit>()
}

pub fn fast_retries() -> OutboxConfig {
    OutboxConfig {
        retry_initial: Duration::from_millis(2),
        retry_max: Duration::from_millis(20),
        delivery_timeout: Duration::from_secs(5),
        ..OutboxConfig::default()
    }
}

/// Two account keys owned by different shards.
pub fn cross_shard_pair(node: &Node, from: u64) -> (u64, u64) {
    let h = node.handle();
    let shard = |k: u64| h.shard_of(&quark::ActorId::new("acct", k));
    let b = (from + 1..from + 1000)
        .find(|&k| shard(k) != shard(from))
        .expect("two shards");
    (from, b)
}

pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The account's state; retried while the activation is being replaced after a panic.
pub fn get(node: &Node, key: u64) -> Account {
    eventually("a read of the account", Duration::from_secs(10), || {
        quark::block_on(node.actor_ref::<Account>(key).ask(Get)).ok()
    })
}

pub fn stats_sum(node: &Node) -> quark::outbox::OutboxStats {
    let all = quark::block_on(quark::outbox::Outbox::new(node.handle()).stats()).unwrap();
    let mut s = quark::outbox::OutboxStats::default();
    for x in all {
        s.delivered += x.delivered;
        s.duplicates += x.duplicates;
        s.retries += x.retries;
        s.dead_lettered += x.dead_lettered;
        s.pending += x.pending;
        s.pending_bytes += x.pending_bytes;
        s.recovered += x.recovered;
        s.dead_letters += x.dead_letters;
        s.inbox_evicted += x.inbox_evicted;
    }
    s
}
