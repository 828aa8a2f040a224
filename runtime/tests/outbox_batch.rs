//! Deliveries batched per receiver: the messages waiting for one receiver are applied in one
//! turn and written in one batch (one inbox record for all of them); a message that fails in
//! the middle of a delivery leaves nothing of its own applied, and the others are applied
//! exactly once; the node's shutdown writes the acknowledgements gathered so far before it
//! returns.

use std::time::Duration;

use quark::outbox::{format, OutboxConfig};
use quark::{block_on, ActorId};

mod outbox_common;
use outbox_common::*;

const WITHIN: Duration = Duration::from_secs(20);

/// `n` account keys on the other shard than `b`.
fn senders_for(node: &quark::Node, b: u64, n: usize) -> Vec<u64> {
    let h = node.handle();
    let shard = |k: u64| h.shard_of(&ActorId::new("acct", k));
    (10_000..)
        .filter(|&k| shard(k) != shard(b))
        .take(n)
        .collect()
}

/// Commits one credit of 1 from each of `senders` to `b` while `b` refuses them, so that all
/// of them are pending in the log; then stops the node.
fn pending_credits(dir: &std::path::Path, b: u64, n: usize) -> Vec<u64> {
    let node = builder(dir, fast_retries()).start().unwrap();
    set_behaviour(b, Some(Behaviour::Retry));
    let senders = senders_for(&node, b, n);
    for &a in &senders {
        block_on(node.actor_ref::<Account>(a).ask(Transfer {
            to: b,
            amount: 1,
            count: 1,
            panic_before_commit: false,
        }))
        .unwrap()
        .unwrap();
    }
    eventually("every credit pending", WITHIN, || {
        (stats_sum(&node).pending == n as u64).then_some(())
    });
    node.shutdown();
    senders
}

/// Live inbox records of `b` in its shard's log.
fn inbox_records(node: &quark::Node, b: u64) -> usize {
    let id = ActorId::new("acct", b);
    let shard = node.handle().shard_of(&id);
    let key = format::actor_key(format::INBOX_PREFIX, &id);
    node.spawn_on(shard, move || async move {
        quark_shard::current_shard_log()
            .expect("a log")
            .key_lsns(&key)
            .len()
    })
    .join()
    .unwrap()
}

#[test]
fn messages_waiting_for_one_receiver_are_applied_in_one_turn_and_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let b = 7;
    let n = 40;
    pending_credits(dir.path(), b, n);
    set_behaviour(b, None);
    // At start-up the dispatcher queues every recovered message before it delivers any: the
    // 40 credits for `b` wait together and go in one delivery.
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let got = eventually("40 credits", WITHIN, || {
        let acc = get(&node, b);
        (acc.applied.len() == n).then_some(acc)
    });
    assert_eq!(got.balance, n as i64);
    let mut ids = got.applied.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no id applied twice");
    assert_eq!(
        inbox_records(&node, b),
        1,
        "the 40 receipts were written as one inbox record (one batch)"
    );
    let mut after = after_commit_ids(b);
    after.sort();
    assert_eq!(
        after, ids,
        "after_commit ran once per message, after the batch"
    );
    node.shutdown();
}

#[test]
fn a_message_failing_in_the_middle_of_a_delivery_leaves_the_others_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = 8;
    let n = 30;
    pending_credits(dir.path(), b, n);
    // The first handler of the delivery adds its credit in memory, then fails: the delivery
    // stops there, nothing of that message is committed, and the activation reloads before
    // the retry (its memory is ahead of the log).
    set_behaviour(b, Some(Behaviour::FailAfterMutate(1)));
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let got = eventually("30 credits", WITHIN, || {
        let acc = get(&node, b);
        (acc.applied.len() == n).then_some(acc)
    });
    eventually("every acknowledgement", WITHIN, || {
        (stats_sum(&node).pending == 0).then_some(())
    });
    assert_eq!(
        got.balance, n as i64,
        "the failed attempt's change in memory was not saved"
    );
    let mut ids = got.applied.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no id applied twice");
    let s = stats_sum(&node);
    assert_eq!(s.delivered, n as u64);
    assert!(s.retries >= 1, "the failed message was retried: {s:?}");
    // `after_commit` ran once per applied message, only for committed attempts (the failed
    // attempt's callback was dropped).
    let mut after = after_commit_ids(b);
    after.sort();
    assert_eq!(after, ids, "after_commit once per applied id");
    node.shutdown();
    // After a restart the state is the same (what was acknowledged is durable).
    set_behaviour(b, None);
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    assert_eq!(get(&node, b), got);
    node.shutdown();
}

#[test]
fn shutdown_writes_the_last_acknowledgements_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic acknowledgement write during the test: only the dispatcher's stop writes
    // them.
    let config = OutboxConfig {
        ack_flush_interval: Duration::from_secs(3600),
        ..fast_retries()
    };
    let (a, b);
    {
        let node = builder(dir.path(), config.clone()).start().unwrap();
        (a, b) = cross_shard_pair(&node, 900);
        block_on(node.actor_ref::<Account>(a).ask(Transfer {
            to: b,
            amount: 2,
            count: 25,
            panic_before_commit: false,
        }))
        .unwrap()
        .unwrap();
        eventually("25 credits acknowledged", WITHIN, || {
            (stats_sum(&node).pending == 0).then_some(())
        });
        assert_eq!(stats_sum(&node).delivered, 25);
        node.shutdown();
    }
    let node = builder(dir.path(), config).start().unwrap();
    let s = stats_sum(&node);
    assert_eq!(
        s.recovered, 0,
        "every acknowledged message's acknowledgement is in the log: nothing to send again"
    );
    assert_eq!(get(&node, b).balance, 50);
    assert_eq!(get(&node, a).balance, -50);
    node.shutdown();
}
