//! Durable state for ordinary actors: loaded at activation, saved atomically with the turn's
//! durable messages, written from outside with an expected version; and the outbox with an
//! event-sourced sender (events and messages in one batch).

use std::time::Duration;

use quark::journal::{EventSourced, JournalEvent, JournalPolicy, Persist};
use quark::outbox::{Durable, DurableStates, OutboxConfig, SaveError, StateError, Versioned};
use quark::{block_on, Actor, ActorKey, Context, Handler, Message};
use serde::{Deserialize, Serialize};

mod outbox_common;
use outbox_common::*;

#[test]
fn state_survives_a_restart_and_versions_count_saves() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = builder(dir.path(), OutboxConfig::default())
            .start()
            .unwrap();
        let a = node.actor_ref::<Account>(1u64);
        assert_eq!(block_on(a.ask(Deposit(5))).unwrap(), Ok(1));
        assert_eq!(block_on(a.ask(Deposit(6))).unwrap(), Ok(2));
        node.shutdown();
    }
    let node = builder(dir.path(), OutboxConfig::default())
        .start()
        .unwrap();
    let states = DurableStates::<Account>::new(node.handle());
    let v = block_on(states.read(1u64)).unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(v.state.balance, 11);
    // Never saved: the initial state at version 0.
    let fresh = block_on(states.read(2u64)).unwrap();
    assert_eq!(
        fresh,
        Versioned {
            version: 0,
            state: Account::default()
        }
    );
    node.shutdown();
}

#[test]
fn outside_writes_need_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), OutboxConfig::default())
        .start()
        .unwrap();
    let states = DurableStates::<Account>::new(node.handle());
    block_on(node.actor_ref::<Account>(7u64).ask(Deposit(1)))
        .unwrap()
        .unwrap();
    let new = Account {
        balance: 100,
        ..Account::default()
    };
    let err = block_on(states.write(7u64, 0, new.clone())).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Save(SaveError::VersionConflict {
                expected: 0,
                actual: 1,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(block_on(states.read(7u64)).unwrap().state.balance, 1);
    assert_eq!(block_on(states.write(7u64, 1, new)).unwrap(), 2);
    // The live activation sees the write, and so does a restart.
    assert_eq!(get(&node, 7).balance, 100);
    node.shutdown();
    let node = builder(dir.path(), OutboxConfig::default())
        .start()
        .unwrap();
    let v = block_on(DurableStates::<Account>::new(node.handle()).read(7u64)).unwrap();
    assert_eq!((v.version, v.state.balance), (2, 100));
    node.shutdown();
}

/// An event-sourced account that pays out through the outbox.
#[derive(Default)]
struct Ledger {
    balance: i64,
}
impl Actor for Ledger {
    const TYPE_NAME: &'static str = "ledger";
}
#[derive(Serialize, Deserialize)]
enum LedgerEvent {
    Paid(i64),
}
impl JournalEvent for LedgerEvent {
    fn type_name(&self) -> &'static str {
        "Paid"
    }
}
impl EventSourced for Ledger {
    type Event = LedgerEvent;
    type Snapshot = i64;
    fn initial(_key: &ActorKey) -> Self {
        Ledger::default()
    }
    fn apply(&mut self, e: &LedgerEvent) {
        let LedgerEvent::Paid(n) = e;
        self.balance -= n;
    }
    fn snapshot(&self) -> i64 {
        self.balance
    }
    fn restore(_key: &ActorKey, balance: i64) -> Self {
        Ledger { balance }
    }
}
struct Pay {
    to: u64,
    amount: i64,
}
impl Message for Pay {
    type Reply = Result<i64, String>;
}
impl Handler<Pay> for Ledger {
    async fn handle(&mut self, m: Pay, ctx: &Context<Self>) -> Result<i64, String> {
        ctx.send_durable::<Account, Credit>(
            m.to,
            Credit {
                amount: m.amount,
                seq: 0,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        ctx.persist(self, [LedgerEvent::Paid(m.amount)])
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.balance)
    }
}

#[test]
fn an_event_sourced_sender_commits_events_and_messages_together() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries())
        .register_journaled::<Ledger>(JournalPolicy::default())
        .start()
        .unwrap();
    let l = node.actor_ref::<Ledger>("main");
    assert_eq!(block_on(l.ask(Pay { to: 50, amount: 8 })).unwrap(), Ok(-8));
    let got = eventually("the payout", Duration::from_secs(20), || {
        let a = get(&node, 50);
        (a.balance == 8).then_some(a)
    });
    assert_eq!(got.applied.len(), 1);
    node.shutdown();
}
