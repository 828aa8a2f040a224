//! The event-sourced test actor shared by the journaling tests: an account.
#![allow(dead_code)] // each test crate uses a part of it

use quark::journal::{EventSourced, JournalEvent, Persist, PersistError};
use quark::{Actor, ActorKey, Context, Handler, Message};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Account {
    pub balance: i64,
    /// Events applied since this activation was built (not part of the state).
    pub applied: u64,
}

impl Actor for Account {
    const TYPE_NAME: &'static str = "account";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: i64, memo: String },
    Withdrew { amount: i64 },
}

impl JournalEvent for AccountEvent {
    fn type_name(&self) -> &'static str {
        match self {
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrew { .. } => "Withdrew",
        }
    }
}

impl EventSourced for Account {
    type Event = AccountEvent;
    type Snapshot = i64;
    fn initial(_key: &ActorKey) -> Self {
        Account::default()
    }
    fn apply(&mut self, e: &AccountEvent) {
        self.applied += 1;
        match e {
            AccountEvent::Deposited { amount, .. } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
    fn snapshot(&self) -> i64 {
        self.balance
    }
    fn restore(_key: &ActorKey, balance: i64) -> Self {
        Account {
            balance,
            applied: 0,
        }
    }
}

/// Deposits an amount with a memo; replies with the new version.
pub struct Deposit(pub i64, pub String);
impl Message for Deposit {
    type Reply = Result<u64, PersistError>;
}
impl Handler<Deposit> for Account {
    async fn handle(&mut self, m: Deposit, ctx: &Context<Self>) -> Result<u64, PersistError> {
        let event = AccountEvent::Deposited {
            amount: m.0,
            memo: m.1,
        };
        Ok(ctx.persist(self, [event]).await?.version)
    }
}

/// Withdraws an amount; replies with the new version.
pub struct Withdraw(pub i64);
impl Message for Withdraw {
    type Reply = Result<u64, PersistError>;
}
impl Handler<Withdraw> for Account {
    async fn handle(&mut self, m: Withdraw, ctx: &Context<Self>) -> Result<u64, PersistError> {
        let event = AccountEvent::Withdrew { amount: m.0 };
        Ok(ctx.persist(self, [event]).await?.version)
    }
}

/// Reply: balance, events applied since activation.
pub struct Get;
impl Message for Get {
    type Reply = (i64, u64);
}
impl Handler<Get> for Account {
    async fn handle(&mut self, _: Get, _: &Context<Self>) -> (i64, u64) {
        (self.balance, self.applied)
    }
}
