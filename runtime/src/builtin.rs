//! Built-in actors for benchmarks and smoke tests: an echo, a counter and a key-value store.
//! `quark serve` registers them (with [`register_builtin`]) so that `loadgen --target` and
//! the cluster tests have something to drive; every message here crosses nodes (it has a
//! stable wire name).

use std::collections::HashMap;

use quark_net::rkyv;
use quark_net::WireMessage;
use quark_shard::{Actor, ActorType, Context, Handler, Message};

use crate::node::NodeBuilder;

/// Replies with the bytes it got.
#[derive(Default)]
pub struct Echo {
    handled: u64,
}

impl Actor for Echo {
    const TYPE_NAME: &'static str = "echo";
}

/// A payload for [`Echo`] to send back.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Ping(pub Vec<u8>);
impl Message for Ping {
    type Reply = Vec<u8>;
}
impl WireMessage for Ping {
    const WIRE_NAME: &'static str = "quark.builtin.Ping";
}
impl Handler<Ping> for Echo {
    async fn handle(&mut self, msg: Ping, _: &Context<Self>) -> Vec<u8> {
        self.handled += 1;
        msg.0
    }
}

/// A one-way message to [`Echo`] (counted, no reply).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Bump(pub Vec<u8>);
impl Message for Bump {
    type Reply = ();
}
impl WireMessage for Bump {
    const WIRE_NAME: &'static str = "quark.builtin.Bump";
}
impl Handler<Bump> for Echo {
    async fn handle(&mut self, _: Bump, _: &Context<Self>) {
        self.handled += 1;
    }
}

/// A fixed-size message for [`Echo`] (no allocation of its own, for the engine
/// micro-benchmarks): the reply is the value plus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Tiny(pub u64);
impl Message for Tiny {
    type Reply = u64;
}
impl WireMessage for Tiny {
    const WIRE_NAME: &'static str = "quark.builtin.Tiny";
}
impl Handler<Tiny> for Echo {
    async fn handle(&mut self, msg: Tiny, _: &Context<Self>) -> u64 {
        self.handled += 1;
        msg.0.wrapping_add(1)
    }
}

/// Asks an [`Echo`] how many messages it handled.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Handled;
impl Message for Handled {
    type Reply = u64;
}
impl WireMessage for Handled {
    const WIRE_NAME: &'static str = "quark.builtin.Handled";
}
impl Handler<Handled> for Echo {
    async fn handle(&mut self, _: Handled, _: &Context<Self>) -> u64 {
        self.handled
    }
}

/// A counter (state in memory only).
#[derive(Default)]
pub struct Counter {
    value: i64,
}

impl Actor for Counter {
    const TYPE_NAME: &'static str = "counter";
}

/// Adds to a [`Counter`]; replies with the new value.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Add(pub i64);
impl Message for Add {
    type Reply = i64;
}
impl WireMessage for Add {
    const WIRE_NAME: &'static str = "quark.builtin.Add";
}
impl Handler<Add> for Counter {
    async fn handle(&mut self, msg: Add, _: &Context<Self>) -> i64 {
        self.value = self.value.wrapping_add(msg.0);
        self.value
    }
}

/// A counter whose activations may move between nodes (`ActorType::migratable`: its value
/// moves with it, as 8 bytes little-endian), so that a drain or a rolling upgrade keeps it
/// (docs/MIGRATION.md, "Rolling upgrades"). Answers [`Add`] like [`Counter`].
#[derive(Default)]
pub struct Tally {
    value: i64,
}

impl Actor for Tally {
    const TYPE_NAME: &'static str = "tally";
}

impl Handler<Add> for Tally {
    async fn handle(&mut self, msg: Add, _: &Context<Self>) -> i64 {
        self.value = self.value.wrapping_add(msg.0);
        self.value
    }
}

/// A key-value map per actor (state in memory only).
#[derive(Default)]
pub struct Kv {
    map: HashMap<Vec<u8>, Vec<u8>>,
}

impl Actor for Kv {
    const TYPE_NAME: &'static str = "kv";
}

/// Stores `value` under `key`; replies with the previous value.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Put {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}
impl Message for Put {
    type Reply = Option<Vec<u8>>;
}
impl WireMessage for Put {
    const WIRE_NAME: &'static str = "quark.builtin.Put";
}
impl Handler<Put> for Kv {
    async fn handle(&mut self, msg: Put, _: &Context<Self>) -> Option<Vec<u8>> {
        self.map.insert(msg.key, msg.value)
    }
}

/// Reads the value under a key.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct Get(pub Vec<u8>);
impl Message for Get {
    type Reply = Option<Vec<u8>>;
}
impl WireMessage for Get {
    const WIRE_NAME: &'static str = "quark.builtin.Get";
}
impl Handler<Get> for Kv {
    async fn handle(&mut self, msg: Get, _: &Context<Self>) -> Option<Vec<u8>> {
        self.map.get(&msg.0).cloned()
    }
}

/// Registers [`Echo`], [`Counter`], [`Tally`] and [`Kv`] with every message above handled
/// from the network.
pub fn register_builtin(b: NodeBuilder) -> NodeBuilder {
    b.register(ActorType::new(|_| Echo::default()))
        .register(ActorType::new(|_| Counter::default()))
        .register(ActorType::new(|_| Tally::default()).migratable(
            |t: &Tally| t.value.to_le_bytes().to_vec(),
            |_, b| {
                let b: [u8; 8] = b.try_into().map_err(|_| "a tally is 8 bytes")?;
                Ok(Tally {
                    value: i64::from_le_bytes(b),
                })
            },
        ))
        .register(ActorType::new(|_| Kv::default()))
        .remote::<Echo, Ping>()
        .remote::<Echo, Bump>()
        .remote::<Echo, Handled>()
        .remote::<Echo, Tiny>()
        .remote::<Counter, Add>()
        .remote::<Tally, Add>()
        .remote::<Kv, Put>()
        .remote::<Kv, Get>()
}

/// Registers the built-in messages for sending only (for a [`Client`](crate::Client)).
pub fn builtin_messages(b: crate::ClientBuilder) -> crate::ClientBuilder {
    b.message::<Ping>()
        .message::<Bump>()
        .message::<Handled>()
        .message::<Tiny>()
        .message::<Add>()
        .message::<Put>()
        .message::<Get>()
}
