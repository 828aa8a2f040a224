//! Benchmark actors.

use quark::{Actor, Context, Handler, Message};

/// Replies with the payload it got (the loadgen and latency benchmarks' target).
pub struct Echo {
    handled: u64,
}

impl Echo {
    /// A fresh echo actor.
    pub fn new() -> Self {
        Echo { handled: 0 }
    }
}

impl Default for Echo {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for Echo {
    const TYPE_NAME: &'static str = "echo";
}

/// A payload to echo back.
pub struct Ping(pub Vec<u8>);
impl Message for Ping {
    type Reply = Vec<u8>;
}
impl Handler<Ping> for Echo {
    async fn handle(&mut self, msg: Ping, _: &Context<Self>) -> Vec<u8> {
        self.handled += 1;
        msg.0
    }
}

/// A fixed-size message (no allocation of its own) for the engine micro-benchmarks.
pub struct Tiny(pub u64);
impl Message for Tiny {
    type Reply = u64;
}
impl Handler<Tiny> for Echo {
    async fn handle(&mut self, msg: Tiny, _: &Context<Self>) -> u64 {
        self.handled += 1;
        msg.0.wrapping_add(1)
    }
}

/// A fire-and-forget message (reply `()`).
pub struct Bump;
impl Message for Bump {
    type Reply = ();
}
impl Handler<Bump> for Echo {
    async fn handle(&mut self, _: Bump, _: &Context<Self>) {
        self.handled += 1;
    }
}

/// Asks how many messages the actor handled.
pub struct Handled;
impl Message for Handled {
    type Reply = u64;
}
impl Handler<Handled> for Echo {
    async fn handle(&mut self, _: Handled, _: &Context<Self>) -> u64 {
        self.handled
    }
}
