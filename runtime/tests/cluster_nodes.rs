//! Three `Node`s in one process, configured from TOML like `quark serve`, with the built-in
//! actors: asks across nodes from every node and from a `Client`, and the same owner seen by
//! all of them.

use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::builtin::{Add, Counter, Get, Kv, Put};
use quark::{Client, Node, NodeConfig};

fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn three_nodes_in_one_process() {
    let addrs = free_addrs(3);
    let mut nodes_toml = String::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes_toml.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let text = format!(
                "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
                 [cluster]\ncluster_id = \"inproc\"\nnode_id = {id}\n{nodes_toml}"
            );
            let config = NodeConfig::from_toml(&text, "inproc.toml").unwrap();
            quark::builtin::register_builtin(Node::builder().config(config))
                .start()
                .unwrap()
        })
        .collect();
    for n in &nodes {
        assert!(n.listen_addr().is_some());
    }
    // Every node adds to every counter; each counter ends at 3 (one owner, found by all).
    for key in 0..20u64 {
        for n in &nodes {
            // Wait with a read (Add(0)), then write once: a retried write could run twice.
            eventually("ask across nodes", Duration::from_secs(10), || {
                quark::block_on(n.actor_ref::<Counter>(key).ask(Add(0))).ok()
            });
            quark::block_on(n.actor_ref::<Counter>(key).ask(Add(1))).unwrap();
        }
    }
    let client = quark::builtin::builtin_messages(
        Client::builder()
            .cluster_id("inproc")
            .target(addrs[0])
            .target(addrs[1])
            .target(addrs[2]),
    )
    .connect()
    .unwrap();
    for key in 0..20u64 {
        let v = eventually("client ask", Duration::from_secs(10), || {
            quark::block_on(client.actor_ref::<Counter>(key).ask(Add(0))).ok()
        });
        assert_eq!(v, 3, "counter {key}");
    }
    // Key-value through one node, read back through another and through the client.
    let kv = nodes[0].actor_ref::<Kv>("users");
    quark::block_on(kv.ask(Put {
        key: b"ann".to_vec(),
        value: b"1".to_vec(),
    }))
    .unwrap();
    let got = quark::block_on(nodes[2].actor_ref::<Kv>("users").ask(Get(b"ann".to_vec()))).unwrap();
    assert_eq!(got, Some(b"1".to_vec()));
    let got = quark::block_on(client.actor_ref::<Kv>("users").ask(Get(b"ann".to_vec()))).unwrap();
    assert_eq!(got, Some(b"1".to_vec()));
    client.shutdown();
    for n in nodes {
        n.shutdown();
    }
}
