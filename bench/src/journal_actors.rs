//! The event-sourced actor the journaling benchmark (`journalbench`) drives: a ledger whose
//! every event is a 100-byte deposit.

use std::time::Instant;

use quark::journal::{EventSourced, JournalEvent, Persist, PersistError};
use quark::{Actor, ActorKey, Context, Handler, Message};
use serde::{Deserialize, Serialize};

/// Bytes of a deposit's memo. An event is stored with postcard as: variant index (1 byte),
/// amount (zigzag varint, 1 byte for amounts below 64), memo length (1 byte), memo: with this
/// memo an event's data is [`EVENT_BYTES`] bytes (the journal adds its own header).
pub const MEMO_BYTES: usize = 97;

/// Encoded size of one [`LedgerEvent::Deposited`] with an amount below 64.
pub const EVENT_BYTES: usize = MEMO_BYTES + 3;

/// An account whose balance is the sum of its deposits.
#[derive(Default)]
pub struct Ledger {
    balance: i64,
    /// Events applied to this activation since it was built (replayed or persisted).
    applied: u64,
}

impl Actor for Ledger {
    const TYPE_NAME: &'static str = "ledger";
}

/// The ledger's only event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// `amount` was added to the balance.
    Deposited {
        /// Amount added.
        amount: i64,
        /// Payload filler to make the event [`EVENT_BYTES`] long.
        memo: Vec<u8>,
    },
}

impl LedgerEvent {
    /// A deposit of `amount` with a [`MEMO_BYTES`] memo.
    pub fn deposit(amount: i64) -> Self {
        debug_assert!((0..64).contains(&amount), "one-byte varint amount");
        LedgerEvent::Deposited {
            amount,
            memo: vec![0x5A; MEMO_BYTES],
        }
    }
}

impl JournalEvent for LedgerEvent {
    fn type_name(&self) -> &'static str {
        "Deposited"
    }
}

impl EventSourced for Ledger {
    type Event = LedgerEvent;
    type Snapshot = i64;
    fn initial(_key: &ActorKey) -> Self {
        Ledger::default()
    }
    fn apply(&mut self, e: &LedgerEvent) {
        let LedgerEvent::Deposited { amount, .. } = e;
        self.balance += amount;
        self.applied += 1;
    }
    fn snapshot(&self) -> i64 {
        self.balance
    }
    fn restore(_key: &ActorKey, balance: i64) -> Self {
        Ledger {
            balance,
            applied: 0,
        }
    }
}

/// Persists one deposit event; the reply carries the version and how long `persist` took
/// inside the handler.
pub struct Deposit(pub i64);

/// What a [`Deposit`] did.
#[derive(Copy, Clone, Debug)]
pub struct Deposited {
    /// The actor's version after the event.
    pub version: u64,
    /// Time spent in `ctx.persist` (append, durable, applied), in ns.
    pub persist_ns: u64,
}

impl Message for Deposit {
    type Reply = Result<Deposited, PersistError>;
}

impl Handler<Deposit> for Ledger {
    async fn handle(&mut self, m: Deposit, ctx: &Context<Self>) -> Result<Deposited, PersistError> {
        let event = LedgerEvent::deposit(m.0);
        let t = Instant::now();
        let p = ctx.persist(self, [event]).await?;
        Ok(Deposited {
            version: p.version,
            persist_ns: t.elapsed().as_nanos() as u64,
        })
    }
}

/// Persists `count` deposits of 1 in one turn (one atomic batch); replies with the version.
pub struct DepositMany(pub u64);

impl Message for DepositMany {
    type Reply = Result<u64, PersistError>;
}

impl Handler<DepositMany> for Ledger {
    async fn handle(&mut self, m: DepositMany, ctx: &Context<Self>) -> Result<u64, PersistError> {
        let events = (0..m.0).map(|_| LedgerEvent::deposit(1));
        Ok(ctx.persist(self, events).await?.version)
    }
}

/// Reads the state: (balance, events applied since this activation was built).
pub struct Balance;

impl Message for Balance {
    type Reply = (i64, u64);
}

impl Handler<Balance> for Ledger {
    async fn handle(&mut self, _: Balance, _: &Context<Self>) -> (i64, u64) {
        (self.balance, self.applied)
    }
}
