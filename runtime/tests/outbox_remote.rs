//! Cross-node deliveries are batched: the messages of one delivery batch to a receiver on
//! another node cross as one wire request and are applied there once each.

use std::path::Path;
use std::time::Duration;

use quark::outbox::OutboxConfig;
use quark::{block_on, Node, NodeConfig};

mod outbox_common;
use outbox_common::*;

mod ports;
use ports::free_addrs;

const WITHIN: Duration = Duration::from_secs(20);

fn node(id: u64, members: &str, dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n\
         [cluster]\ncluster_id = \"obx\"\nnode_id = {id}\n{members}",
        dir.to_str().expect("UTF-8 temp dir")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "outbox-remote.toml").unwrap())
        .register(quark::outbox::durable_state::<Account>())
        .outbox(OutboxConfig {
            attempts_max: 100_000,
            ..fast_retries()
        })
        .durable::<Account, Credit>()
        .start()
        .unwrap()
}

/// Wire requests node `n` received (every shard).
fn requests_in(n: &Node) -> u64 {
    n.stats()
        .unwrap()
        .iter()
        .filter_map(|s| s.net.as_ref().map(|x| x.requests_in))
        .sum()
}

#[test]
fn a_batch_to_another_node_is_one_request_and_applied_once() {
    let addrs = free_addrs(2);
    let members: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    const SENDERS: usize = 100;
    // Node 1 alone: 100 senders each commit one credit to one receiver that node 2 owns. They
    // wait in node 1's outbox (node 2 is down).
    let n1 = node(1, &members, dirs[0].path());
    let receiver = (0..10_000u64)
        .find(|k| n1.actor_ref::<Account>(*k).remote_node() == Some(2))
        .expect("a key on node 2");
    let senders: Vec<u64> = (10_000..)
        .filter(|k| n1.actor_ref::<Account>(*k).remote_node().is_none())
        .take(SENDERS)
        .collect();
    for &s in &senders {
        block_on(n1.actor_ref::<Account>(s).ask(Transfer {
            to: receiver,
            amount: 1,
            count: 1,
            panic_before_commit: false,
        }))
        .unwrap()
        .unwrap();
    }
    n1.shutdown();
    // Node 2 first, then node 1: its dispatchers recover all 100 before they deliver, so each
    // shard's messages to the receiver form one delivery batch.
    let n2 = node(2, &members, dirs[1].path());
    let before = requests_in(&n2);
    let n1 = node(1, &members, dirs[0].path());
    let got = eventually("100 credits applied on node 2", WITHIN, || {
        let acc = get(&n2, receiver);
        (acc.applied.len() >= SENDERS).then_some(acc)
    });
    eventually("every acknowledgement counted on node 1", WITHIN, || {
        (stats_sum(&n1).pending == 0).then_some(())
    });
    let requests = requests_in(&n2) - before;
    assert_eq!(got.balance, SENDERS as i64);
    let mut ids = got.applied.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), SENDERS, "each message applied once");
    // One request per node-1 shard holding senders (2), and a few for retries if a link
    // was not up yet; one per message (100) before batching.
    assert!(
        requests <= 8,
        "{requests} wire requests for {SENDERS} messages: not batched"
    );
    assert_eq!(stats_sum(&n1).delivered, SENDERS as u64);
    n1.shutdown();
    n2.shutdown();
}
