//! Sagas through the outbox, on two nodes in one process (real sockets, two shards each):
//!
//! 1. a money transfer between accounts on different nodes, and one that the credit side
//!    refuses (a closed account): the debit is compensated (refunded);
//! 2. an order saga (reserve stock, charge, ship) whose charge fails: the stock reservation is
//!    released.
//!
//! Every step, reply and compensation is a durable message (exactly-once effects at the
//! receiver); each actor's state is durable (`durable_state`).
//!
//! Run: `cargo run -p quark --example transfer_saga`

use std::time::{Duration, Instant};

use quark::outbox::saga::{self, SagaDef, SagaPhase, SagaStep, Sagas};
use quark::outbox::{
    Durable, DurableHandler, DurableMessage, DurableState, OutboxConfig, Retry, Save, SendError,
};
use quark::{Actor, ActorKey, Context, Node, NodeBuilder, NodeConfig};
use serde::{Deserialize, Serialize};

// ---- participants -----------------------------------------------------------------------

/// A bank account; keys starting with "closed-" refuse credits.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Account {
    balance: i64,
}
impl Actor for Account {
    const TYPE_NAME: &'static str = "example.account";
}
impl DurableState for Account {
    fn initial(_key: &ActorKey) -> Self {
        Account { balance: 100 }
    }
}

/// Debit (`amount > 0`) or credit (`amount < 0` debits back) an account for a saga step.
#[derive(Serialize, Deserialize)]
pub struct Adjust {
    step: SagaStep,
    amount: i64,
}
impl DurableMessage for Adjust {
    const NAME: &'static str = "example.Adjust";
}

impl DurableHandler<Adjust> for Account {
    async fn handle_durable(&mut self, m: Adjust, ctx: &Context<Self>) -> Result<(), Retry> {
        let closed = matches!(&ctx.id().key, ActorKey::Str(k) if k.starts_with("closed-"));
        let refuse = if m.step.compensation {
            None // compensations always apply
        } else if closed && m.amount > 0 {
            Some("account is closed")
        } else if self.balance + m.amount < 0 {
            Some("insufficient funds")
        } else {
            None
        };
        if refuse.is_none() {
            self.balance += m.amount;
        }
        // The reply commits with this turn's state (one batch).
        saga::reply::<Transfer, _>(ctx, m.step, refuse.is_none(), refuse.unwrap_or(""))
            .await
            .map_err(retry)?;
        ctx.save(self).await.map_err(retry)?;
        Ok(())
    }
}

fn retry(e: impl std::fmt::Display) -> Retry {
    Retry {
        reason: e.to_string(),
    }
}

// ---- the transfer saga --------------------------------------------------------------------

/// Moves `amount` from `from` to `to`: step 0 debits `from`, step 1 credits `to`.
#[derive(Serialize, Deserialize)]
pub struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

impl SagaDef for Transfer {
    const TYPE_NAME: &'static str = "example.transfer";
    const STEP_TIMEOUT: Duration = Duration::from_secs(10);

    fn step_count(&self) -> u32 {
        2
    }

    async fn action(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<saga::SagaActor<Self>>,
    ) -> Result<(), SendError> {
        let (key, amount) = match step {
            0 => (&self.from, -self.amount),
            _ => (&self.to, self.amount),
        };
        ctx.send_durable::<Account, Adjust>(key.as_str(), Adjust { step: info, amount })
            .await
    }

    async fn compensate(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<saga::SagaActor<Self>>,
    ) -> Result<(), SendError> {
        let (key, amount) = match step {
            0 => (&self.from, self.amount),
            _ => (&self.to, -self.amount),
        };
        ctx.send_durable::<Account, Adjust>(key.as_str(), Adjust { step: info, amount })
            .await
    }
}

// ---- the order saga: reserve stock, charge, ship ---------------------------------------------

/// A warehouse's stock of one item.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Stock {
    available: i64,
    reserved: i64,
}
impl Actor for Stock {
    const TYPE_NAME: &'static str = "example.stock";
}
impl DurableState for Stock {
    fn initial(_key: &ActorKey) -> Self {
        Stock {
            available: 10,
            reserved: 0,
        }
    }
}

/// Reserve (or, as a compensation, release) `count` items; ship = take the reservation.
#[derive(Serialize, Deserialize)]
pub struct StockOp {
    step: SagaStep,
    count: i64,
    ship: bool,
}
impl DurableMessage for StockOp {
    const NAME: &'static str = "example.StockOp";
}
impl DurableHandler<StockOp> for Stock {
    async fn handle_durable(&mut self, m: StockOp, ctx: &Context<Self>) -> Result<(), Retry> {
        let ok = if m.ship {
            self.reserved -= m.count;
            true
        } else if m.step.compensation {
            self.available += m.count;
            self.reserved -= m.count;
            true
        } else if self.available >= m.count {
            self.available -= m.count;
            self.reserved += m.count;
            true
        } else {
            false
        };
        saga::reply::<Order, _>(ctx, m.step, ok, if ok { "" } else { "out of stock" })
            .await
            .map_err(retry)?;
        ctx.save(self).await.map_err(retry)?;
        Ok(())
    }
}

/// A payment service that declines cards ending in "0".
pub struct Payments;
impl Actor for Payments {
    const TYPE_NAME: &'static str = "example.payments";
}

#[derive(Serialize, Deserialize)]
pub struct Charge {
    step: SagaStep,
    card: String,
}
impl DurableMessage for Charge {
    const NAME: &'static str = "example.Charge";
}
impl DurableHandler<Charge> for Payments {
    async fn handle_durable(&mut self, m: Charge, ctx: &Context<Self>) -> Result<(), Retry> {
        let ok = m.step.compensation || !m.card.ends_with('0');
        saga::reply::<Order, _>(ctx, m.step, ok, if ok { "" } else { "card declined" })
            .await
            .map_err(retry)?;
        // No state of its own: commit the reply with the inbox receipt.
        ctx.commit().await.map_err(retry)
    }
}

/// Reserve `count` of `item`, charge `card`, ship.
#[derive(Serialize, Deserialize)]
pub struct Order {
    item: String,
    count: i64,
    card: String,
}

impl SagaDef for Order {
    const TYPE_NAME: &'static str = "example.order";

    fn step_count(&self) -> u32 {
        3
    }

    async fn action(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<saga::SagaActor<Self>>,
    ) -> Result<(), SendError> {
        match step {
            0 | 2 => {
                let op = StockOp {
                    step: info,
                    count: self.count,
                    ship: step == 2,
                };
                ctx.send_durable::<Stock, StockOp>(self.item.as_str(), op)
                    .await
            }
            _ => {
                let charge = Charge {
                    step: info,
                    card: self.card.clone(),
                };
                ctx.send_durable::<Payments, Charge>("psp", charge).await
            }
        }
    }

    async fn compensate(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<saga::SagaActor<Self>>,
    ) -> Result<(), SendError> {
        match step {
            0 => {
                let op = StockOp {
                    step: info,
                    count: self.count,
                    ship: false,
                };
                ctx.send_durable::<Stock, StockOp>(self.item.as_str(), op)
                    .await
            }
            // A refund, or un-shipping, would go here; this order never gets that far.
            _ => {
                let charge = Charge {
                    step: info,
                    card: self.card.clone(),
                };
                ctx.send_durable::<Payments, Charge>("psp", charge).await
            }
        }
    }
}

// ---- two nodes ----------------------------------------------------------------------------

fn node(id: u64, addrs: &[std::net::SocketAddr], dir: &std::path::Path) -> Node {
    let mut text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nfsync = \"always\"\n\
         [cluster]\ncluster_id = \"saga-example\"\nnode_id = {id}\n",
        dir.join(format!("node-{id}"))
    );
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let config = NodeConfig::from_toml(&text, "saga-example.toml").expect("valid config");
    let b: NodeBuilder = Node::builder()
        .config(config)
        .register(quark::outbox::durable_state::<Account>())
        .register(quark::outbox::durable_state::<Stock>())
        .register(quark::ActorType::new(|_| Payments))
        .outbox(OutboxConfig::default())
        .durable::<Account, Adjust>()
        .durable::<Stock, StockOp>()
        .durable::<Payments, Charge>();
    saga::register::<Order>(saga::register::<Transfer>(b))
        .start()
        .expect("node starts")
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn wait_done<D: SagaDef>(sagas: &Sagas<D>, key: &str) -> saga::SagaStatus {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = quark::block_on(sagas.status(key)).expect("status");
        if !matches!(s.phase, SagaPhase::Running(_) | SagaPhase::Compensating(_)) {
            return s;
        }
        assert!(Instant::now() < end, "saga {key} did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The node that owns actor `(A, key)` (the helpers below run turns of local actors).
fn owner<'a, A: Actor>(nodes: &'a [Node], key: &str) -> &'a Node {
    nodes
        .iter()
        .find(|n| n.actor_ref::<A>(key).remote_node().is_none())
        .expect("one of the nodes owns every key")
}

fn balance(nodes: &[Node], key: &str) -> i64 {
    let n = owner::<Account>(nodes, key);
    let states = quark::outbox::DurableStates::<Account>::new(n.handle());
    quark::block_on(states.read(key))
        .expect("read")
        .state
        .balance
}

fn run_saga<D: SagaDef>(nodes: &[Node], key: &str, def: D) -> saga::SagaStatus {
    let n = owner::<saga::SagaActor<D>>(nodes, key);
    let sagas = Sagas::<D>::new(n.handle());
    quark::block_on(sagas.start(key, def)).expect("start");
    wait_done(&sagas, key)
}

/// Runs the example (also run by `runtime/tests/saga.rs`).
pub fn main() {
    let dir = std::env::temp_dir().join(format!("quark-saga-example-{}", std::process::id()));
    let addrs = [free_addr(), free_addr()];
    let nodes = [node(1, &addrs, &dir), node(2, &addrs, &dir)];
    let node_of = |k: &str| owner::<Account>(&nodes, k).node_id().unwrap_or(0);
    // Counterparties on the other node than alice's.
    let other = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|k| node_of(k) != node_of("alice"))
            .expect("some key lives on the other node")
    };
    let bob = other("bob");
    let carol = other("closed-carol");
    for k in ["alice", &bob, &carol] {
        println!("account {k} lives on node {}", node_of(k));
    }

    let ok = Transfer {
        from: "alice".into(),
        to: bob.clone(),
        amount: 30,
    };
    let s = run_saga(&nodes, "t-1", ok);
    println!(
        "transfer t-1: {:?}; alice {} bob {}",
        s.phase,
        balance(&nodes, "alice"),
        balance(&nodes, &bob)
    );
    assert_eq!(s.phase, SagaPhase::Completed);

    let refused = Transfer {
        from: "alice".into(),
        to: carol.clone(),
        amount: 50,
    };
    let s = run_saga(&nodes, "t-2", refused);
    println!(
        "transfer t-2: {:?} because {:?}; alice {} (refunded), {carol} {}",
        s.phase,
        s.cause,
        balance(&nodes, "alice"),
        balance(&nodes, &carol)
    );
    assert_eq!(s.phase, SagaPhase::Compensated);
    assert_eq!(
        balance(&nodes, "alice"),
        70,
        "the refused transfer was refunded"
    );

    let order = Order {
        item: "lamp".into(),
        count: 3,
        card: "4111-0000".into(),
    };
    let s = run_saga(&nodes, "o-1", order);
    let n = owner::<Stock>(&nodes, "lamp");
    let stock =
        quark::block_on(quark::outbox::DurableStates::<Stock>::new(n.handle()).read("lamp"))
            .expect("read")
            .state;
    println!(
        "order o-1: {:?} because {:?}; stock {stock:?}",
        s.phase, s.cause
    );
    assert_eq!(s.phase, SagaPhase::Compensated);
    assert_eq!(
        (stock.available, stock.reserved),
        (10, 0),
        "the reservation was released"
    );

    for n in nodes {
        n.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
