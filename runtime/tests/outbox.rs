//! The outbox's failure cases, each with its outcome asserted: crash before commit, after
//! commit before delivery, after delivery before the acknowledgement, receiver crash,
//! duplicate delivery; order per pair; bad input to the dead-letter list (inspect, replay,
//! purge); backpressure; the dedupe-window start-up rule.

use std::time::Duration;

use quark::outbox::format::{self, OutboxRecord, Target};
use quark::outbox::{FullPolicy, MessageId, Outbox, OutboxConfig, OutboxConfigError};
use quark::{block_on, ActorId, ActorKey, CallError, NodeError};

mod outbox_common;
use outbox_common::*;

const WITHIN: Duration = Duration::from_secs(20);

fn transfer(node: &quark::Node, from: u64, to: u64, amount: i64, count: u64) {
    block_on(node.actor_ref::<Account>(from).ask(Transfer {
        to,
        amount,
        count,
        panic_before_commit: false,
    }))
    .unwrap()
    .unwrap();
}

#[test]
fn a_committed_transfer_is_applied_once_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 10);
    transfer(&node, a, b, 5, 3);
    let got = eventually("3 credits", WITHIN, || {
        let acc = get(&node, b);
        (acc.seqs.len() == 3).then_some(acc)
    });
    assert_eq!(got.balance, 15);
    assert_eq!(got.seqs, vec![0, 1, 2], "order per (sender, receiver) kept");
    assert_eq!(get(&node, a).balance, -15);
    let s = eventually("acks", WITHIN, || {
        let s = stats_sum(&node);
        (s.pending == 0).then_some(s)
    });
    assert_eq!((s.delivered, s.duplicates, s.dead_letters), (3, 0, 0));
    node.shutdown();
}

#[test]
fn crash_before_commit_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 100);
    let r = block_on(node.actor_ref::<Account>(a).ask(Transfer {
        to: b,
        amount: 7,
        count: 2,
        panic_before_commit: true,
    }));
    assert!(matches!(r, Err(CallError::ActorPanicked { .. })), "{r:?}");
    // A later committed message of the same pair arrives; the staged ones never do (order per
    // pair means they would have arrived first).
    transfer(&node, a, b, 1, 1);
    let got = eventually("the committed credit", WITHIN, || {
        let acc = get(&node, b);
        (!acc.seqs.is_empty()).then_some(acc)
    });
    assert_eq!(
        got.balance, 1,
        "the staged credits of the crashed turn were not sent"
    );
    assert_eq!(got.seqs.len(), 1);
    assert_eq!(
        get(&node, a).balance,
        -1,
        "the crashed turn's debit was not saved"
    );
    node.shutdown();
}

#[test]
fn committed_messages_are_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let node = builder(dir.path(), fast_retries()).start().unwrap();
        (a, b) = cross_shard_pair(&node, 200);
        set_behaviour(b, Some(Behaviour::Retry));
        transfer(&node, a, b, 4, 5);
        eventually("a failed attempt", WITHIN, || {
            (stats_sum(&node).retries > 0).then_some(())
        });
        assert_eq!(stats_sum(&node).pending, 5);
        node.shutdown();
    }
    set_behaviour(b, None);
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let s = stats_sum(&node);
    assert_eq!(s.recovered, 5, "the dispatcher resumed from the log");
    let got = eventually("5 credits after restart", WITHIN, || {
        let acc = get(&node, b);
        (acc.seqs.len() == 5).then_some(acc)
    });
    assert_eq!(got.balance, 20);
    assert_eq!(got.seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(get(&node, a).balance, -20);
    node.shutdown();
}

/// Appends an outbox record of `sender` on its shard, as a sender's turn would have.
fn append_outbox(node: &quark::Node, sender: u64, rec: OutboxRecord) -> u64 {
    let id = ActorId::new("acct", sender);
    let shard = node.handle().shard_of(&id);
    let key = format::actor_key(format::OUTBOX_PREFIX, &id);
    let mut payload = Vec::new();
    format::encode_outbox(&mut payload, &rec);
    node.spawn_on(shard, move || async move {
        let log = quark_shard::current_shard_log().expect("a log");
        let mut b = quark_persist::Batch::new();
        b.event(&key, &payload);
        log.append(&b).await.expect("append").first
    })
    .join()
    .unwrap()
}

#[test]
fn redelivery_after_a_lost_ack_is_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 300);
    transfer(&node, a, b, 9, 1);
    let first = eventually("the credit", WITHIN, || {
        let acc = get(&node, b);
        (acc.applied.len() == 1).then_some(acc)
    });
    let id = first.applied[0];
    node.shutdown();
    // The acknowledgement was lost: the same message (same id) is in the outbox again.
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let stream = id.stream;
    append_outbox(
        &node,
        a,
        OutboxRecord {
            created_ms: quark_now(),
            stream,
            id_override: Some((id.stream, id.seq)),
            target: Target::Actor("acct".into(), ActorKey::U64(b)),
            message: "test.Credit".into(),
            data: postcard_credit(9, 0),
        },
    );
    // The dispatcher learns of records at start-up: restart to pick it up.
    node.shutdown();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    // (The original may be redelivered too, if its acknowledgement was not written before
    // the shutdown: also a duplicate.)
    let s = eventually("the duplicate acknowledged", WITHIN, || {
        let s = stats_sum(&node);
        (s.duplicates >= 1 && s.pending == 0).then_some(s)
    });
    assert_eq!(s.delivered, 0, "the redelivery was not applied");
    assert_eq!(get(&node, b), first, "the receiver is unchanged");
    node.shutdown();
}

fn quark_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn postcard_credit(amount: i64, seq: u64) -> Vec<u8> {
    postcard::to_allocvec(&Credit { amount, seq }).unwrap()
}

#[test]
fn a_receiver_that_crashes_applies_the_message_once_after_retry() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 400);
    set_behaviour(b, Some(Behaviour::Panic(2)));
    transfer(&node, a, b, 3, 1);
    let got = eventually("the credit", WITHIN, || {
        let acc = get(&node, b);
        (acc.applied.len() == 1).then_some(acc)
    });
    assert_eq!(got.balance, 3);
    let s = eventually("ack", WITHIN, || {
        let s = stats_sum(&node);
        (s.pending == 0).then_some(s)
    });
    assert!(s.retries >= 2, "two crashed attempts were retried: {s:?}");
    assert_eq!(s.delivered, 1);
    node.shutdown();
}

#[test]
fn a_handler_that_fails_after_changing_memory_is_reloaded_before_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 450);
    set_behaviour(b, Some(Behaviour::FailAfterMutate(2)));
    transfer(&node, a, b, 5, 1);
    eventually("ack", WITHIN, || {
        (stats_sum(&node).delivered == 1).then_some(())
    });
    let got = get(&node, b);
    assert_eq!(
        got.balance, 5,
        "the failed attempts' changes were not saved"
    );
    assert_eq!(got.applied.len(), 1);
    node.shutdown();
}

#[test]
fn many_messages_of_one_pair_arrive_in_order_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 500);
    for _ in 0..20 {
        transfer(&node, a, b, 1, 10);
    }
    let got = eventually("200 credits", WITHIN, || {
        let acc = get(&node, b);
        (acc.applied.len() == 200).then_some(acc)
    });
    let mut ids = got.applied.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no id applied twice");
    let mut sorted = got.applied.clone();
    sorted.sort();
    assert_eq!(got.applied, sorted, "ids applied in send order");
    assert_eq!(got.balance, 200);
    node.shutdown();
}

#[test]
fn bad_input_goes_to_the_dead_letter_list_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 600);
    let (c, _) = cross_shard_pair(&node, 700);
    // A message type the receiver does not know (no durable handler registered).
    block_on(node.actor_ref::<Account>(a).ask(SendUnrouted(b)))
        .unwrap()
        .unwrap();
    // A payload that does not decode, and a receiver type that does not exist.
    append_outbox(
        &node,
        c,
        OutboxRecord {
            created_ms: quark_now(),
            stream: 77,
            id_override: None,
            target: Target::Actor("acct".into(), ActorKey::U64(b)),
            message: "test.Credit".into(),
            data: vec![0xff; 3],
        },
    );
    append_outbox(
        &node,
        c,
        OutboxRecord {
            created_ms: quark_now(),
            stream: 77,
            id_override: None,
            target: Target::Actor("no-such-type".into(), ActorKey::U64(1)),
            message: "test.Credit".into(),
            data: postcard_credit(1, 0),
        },
    );
    node.shutdown();
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    transfer(&node, a, b, 2, 1);
    eventually("the good credit", WITHIN, || {
        (get(&node, b).balance == 2).then_some(())
    });
    let outbox = Outbox::new(node.handle());
    let dead = eventually("3 dead letters", WITHIN, || {
        let d = block_on(outbox.dead_letters()).unwrap();
        (d.len() == 3).then_some(d)
    });
    let cause = |needle: &str| {
        dead.iter()
            .find(|d| d.cause.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter with cause {needle:?}: {dead:#?}"))
            .clone()
    };
    let unrouted = cause("no durable handler for message test.Unrouted");
    assert_eq!(unrouted.target, format!("acct/{b}"));
    let undecodable = cause("did not decode");
    assert_eq!(undecodable.message, "test.Credit");
    let _ = cause("no-such-type");
    assert_eq!(get(&node, b).balance, 2, "no bad message applied anything");
    // Purge one; replay the undecodable one (it fails again and comes back under its replay id).
    block_on(outbox.purge(unrouted.shard, unrouted.id)).unwrap();
    let rid = block_on(outbox.replay(undecodable.shard, undecodable.id)).unwrap();
    assert_ne!(rid, undecodable.id);
    let dead = eventually("the replay dead-lettered again", WITHIN, || {
        let d = block_on(outbox.dead_letters()).unwrap();
        (d.len() == 2 && d.iter().any(|x| x.id == rid)).then_some(d)
    });
    assert!(!dead.iter().any(|x| x.id == unrouted.id), "purged");
    assert!(matches!(
        block_on(outbox.purge(unrouted.shard, unrouted.id)),
        Err(quark::outbox::OutboxError::NoSuchDeadLetter { .. })
    ));
    node.shutdown();
    // The list is durable.
    let node = builder(dir.path(), fast_retries()).start().unwrap();
    let after = block_on(Outbox::new(node.handle()).dead_letters()).unwrap();
    let mut ids: Vec<MessageId> = after.iter().map(|d| d.id).collect();
    let mut want: Vec<MessageId> = dead.iter().map(|d| d.id).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
    node.shutdown();
}

#[test]
fn replaying_a_message_that_failed_applies_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        attempts_max: 3,
        ..fast_retries()
    };
    let node = builder(dir.path(), cfg.clone()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 800);
    set_behaviour(b, Some(Behaviour::Retry));
    transfer(&node, a, b, 6, 1);
    let outbox = Outbox::new(node.handle());
    let dead = eventually("dead-lettered after 3 attempts", WITHIN, || {
        let d = block_on(outbox.dead_letters()).unwrap();
        (d.len() == 1).then_some(d)
    });
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].cause.contains("receiver paused"),
        "{}",
        dead[0].cause
    );
    set_behaviour(b, None);
    let rid = block_on(outbox.replay(dead[0].shard, dead[0].id)).unwrap();
    let got = eventually("the replayed credit", WITHIN, || {
        let acc = get(&node, b);
        (acc.balance == 6).then_some(acc)
    });
    assert_eq!(got.applied, vec![rid]);
    assert!(block_on(outbox.dead_letters()).unwrap().is_empty());
    node.shutdown();
}

#[test]
fn a_full_outbox_fails_or_waits_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        pending_bytes_max: 100,
        full_policy: FullPolicy::Fail,
        ..fast_retries()
    };
    let node = builder(dir.path(), cfg).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 900);
    set_behaviour(b, Some(Behaviour::Retry));
    transfer(&node, a, b, 1, 1);
    let r = block_on(node.actor_ref::<Account>(a).ask(Transfer {
        to: b,
        amount: 1,
        count: 3,
        panic_before_commit: false,
    }))
    .unwrap();
    let err = r.unwrap_err();
    assert!(err.contains("pending bytes"), "{err}");
    assert_eq!(
        get(&node, a).balance,
        -1,
        "the refused turn changed nothing"
    );
    set_behaviour(b, None);
    eventually("the first credit", WITHIN, || {
        (get(&node, b).balance == 1).then_some(())
    });
    node.shutdown();

    // Wait policy: the second transfer waits until the first is delivered, then goes.
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        pending_bytes_max: 100,
        ..fast_retries()
    };
    let node = builder(dir.path(), cfg).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 1000);
    set_behaviour(b, Some(Behaviour::Retry));
    transfer(&node, a, b, 1, 1);
    let r = node.actor_ref::<Account>(a);
    let waiting = std::thread::spawn(move || {
        block_on(r.ask(Transfer {
            to: b,
            amount: 1,
            count: 1,
            panic_before_commit: false,
        }))
    });
    eventually("retries of the first credit", WITHIN, || {
        (stats_sum(&node).retries >= 3).then_some(())
    });
    assert!(!waiting.is_finished(), "the second send waits for room");
    set_behaviour(b, None);
    waiting.join().unwrap().unwrap().unwrap();
    eventually("both credits", WITHIN, || {
        (get(&node, b).balance == 2).then_some(())
    });
    node.shutdown();
}

#[test]
fn a_give_up_age_at_or_past_the_dedupe_window_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        give_up_after: Duration::from_secs(3600),
        dedupe_window: Duration::from_secs(3600),
        ..OutboxConfig::default()
    };
    let err = builder(dir.path(), cfg).start().err().expect("refused");
    assert!(
        matches!(
            err,
            NodeError::Outbox(OutboxConfigError::GiveUpNotBelowWindow { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_receiver_over_dedupe_count_max_forgets_its_oldest_streams_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        dedupe_count_max: 2,
        ..fast_retries()
    };
    let node = builder(dir.path(), cfg).start().unwrap();
    let (_, b) = cross_shard_pair(&node, 1100);
    // Three senders: three streams at one receiver that remembers two.
    for (i, a) in [1200u64, 1201, 1202].into_iter().enumerate() {
        transfer(&node, a, b, 1, 1);
        eventually("the credit", WITHIN, || {
            (get(&node, b).applied.len() == i + 1).then_some(())
        });
    }
    let s = eventually("the eviction counted", WITHIN, || {
        let s = stats_sum(&node);
        (s.inbox_evicted > 0).then_some(s)
    });
    assert_eq!(
        s.inbox_evicted, 1,
        "one stream over the bound was forgotten"
    );
    assert_eq!(get(&node, b).balance, 3);
    node.shutdown();
}

/// A dead letter that was replayed or purged is not delivered again after a restart, even while
/// its original outbox record is still in the log (an older message of the same sender,
/// retrying, keeps the sender's outbox from being truncated past it).
#[test]
fn a_replayed_or_purged_dead_letter_is_not_delivered_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        attempts_max: 100_000,
        ..fast_retries()
    };
    let node = builder(dir.path(), cfg.clone()).start().unwrap();
    let (a, b) = cross_shard_pair(&node, 900);
    let (c, _) = cross_shard_pair(&node, 950);
    // The sender's oldest message keeps failing: its outbox stays live from there on.
    set_behaviour(c, Some(Behaviour::Retry));
    transfer(&node, a, c, 1, 1);
    // Two messages nobody handles yet: dead-lettered at once.
    for _ in 0..2 {
        block_on(node.actor_ref::<Account>(a).ask(SendUnrouted(b)))
            .unwrap()
            .unwrap();
    }
    let outbox = Outbox::new(node.handle());
    let dead = eventually("2 dead letters", WITHIN, || {
        let d = block_on(outbox.dead_letters()).unwrap();
        (d.len() == 2).then_some(d)
    });
    // Replay one (refused again: it comes back under its replay id), purge the other.
    let rid = block_on(outbox.replay(dead[0].shard, dead[0].id)).unwrap();
    block_on(outbox.purge(dead[1].shard, dead[1].id)).unwrap();
    eventually("the replay dead-lettered again", WITHIN, || {
        let d = block_on(outbox.dead_letters()).unwrap();
        (d.len() == 1 && d[0].id == rid).then_some(())
    });
    node.shutdown();

    // Now the message type has a handler. Only the credit to `c` is still to deliver.
    let node = builder(dir.path(), cfg)
        .durable::<Account, quark_outbox_unrouted::Unrouted>()
        .start()
        .unwrap();
    let outbox = Outbox::new(node.handle());
    let recovered = eventually("the outbox recovered", WITHIN, || {
        let all = block_on(outbox.stats()).unwrap();
        let n: u64 = all.iter().map(|s| s.recovered).sum();
        (n > 0).then_some(n)
    });
    assert_eq!(
        recovered, 1,
        "only the retrying credit is pending; the replayed and the purged message are settled"
    );
    let dead = block_on(outbox.dead_letters()).unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![rid],
        "the replay's dead letter stays on the list, once"
    );
    // Replaying it now applies it: exactly one application of the message in all.
    let rid2 = block_on(outbox.replay(dead[0].shard, rid)).unwrap();
    let s = eventually("the replay delivered", WITHIN, || {
        let s = stats_sum(&node);
        (s.delivered >= 1 && s.pending == 1).then_some(s)
    });
    assert_eq!(
        s.delivered, 1,
        "delivered once ({rid2}), not again under the older ids"
    );
    assert!(block_on(outbox.dead_letters()).unwrap().is_empty());
    set_behaviour(c, None);
    eventually("the credit to c", WITHIN, || {
        (get(&node, c).balance == 1).then_some(())
    });
    node.shutdown();
}

mod quark_outbox_unrouted {
    pub use super::outbox_common::Unrouted;
}
