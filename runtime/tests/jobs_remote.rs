//! Enqueue from another node and from a `Client`: the job goes to the node that owns its
//! gateway key (its concurrency key), runs there once, and bad input is refused by the owner.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::jobs::remote::{JobGateway, RemoteEnqueue, RemoteEnqueueError};
use quark::jobs::{Job, JobContext, JobFailure, JobOptions, JobTypeConfig};
use quark::{block_on, Client, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Resize {
    image: u64,
}

impl Job for Resize {
    const TYPE_NAME: &'static str = "resize";
}

type Ran = Arc<Mutex<Vec<(u64, u64)>>>;

fn node(id: u64, nodes_toml: &str, dir: &std::path::Path, ran: &Ran) -> Node {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n\
         [cluster]\ncluster_id = \"jobs\"\nnode_id = {id}\n{nodes_toml}",
        dir.to_str().expect("UTF-8 temp dir")
    );
    let config = NodeConfig::from_toml(&text, "jobs-remote.toml").unwrap();
    let ran = Arc::clone(ran);
    Node::builder()
        .config(config)
        .register_job::<Resize, _, _>(JobTypeConfig::default(), move |r: Resize, _: JobContext| {
            ran.lock().unwrap().push((id, r.image));
            async { Ok::<(), JobFailure>(()) }
        })
        .start()
        .unwrap()
}

/// Retries `f` until it returns `Some` (the cluster's links come up), failing after 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn enqueues_from_a_client_and_another_node_run_once_on_the_owner() {
    let addrs = free_addrs(2);
    let nodes_toml: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ran: Ran = Arc::default();
    let n1 = node(1, &nodes_toml, dirs[0].path(), &ran);
    let n2 = node(2, &nodes_toml, dirs[1].path(), &ran);
    let client = Client::builder()
        .cluster_id("jobs")
        .node(1, addrs[0])
        .node(2, addrs[1])
        .message::<RemoteEnqueue>()
        .connect()
        .unwrap();
    // From the client: 20 jobs with 20 concurrency keys (spread over both nodes).
    let mut expected = Vec::new();
    for image in 0..20u64 {
        let msg = RemoteEnqueue::new(
            &Resize { image },
            JobOptions::default().concurrency(format!("customer-{image}"), 1),
        )
        .unwrap();
        let gw = client.actor_ref::<JobGateway>(msg.gateway_key());
        let owner = gw.remote_node().expect("a client has no local node");
        let id = eventually("the enqueue to reach its owner", || {
            block_on(gw.ask(msg.clone())).ok()
        })
        .expect("enqueued");
        assert!(id > 0);
        expected.push((owner, image));
    }
    // From node 1, a job whose key node 2 owns.
    let msg = RemoteEnqueue::new(
        &Resize { image: 100 },
        JobOptions::default().concurrency("far", 1),
    )
    .unwrap();
    let key = (0..10_000)
        .map(|i| format!("far-{i}"))
        .find(|k| n1.actor_ref::<JobGateway>(k.as_str()).remote_node() == Some(2))
        .expect("a key owned by node 2");
    let msg = RemoteEnqueue {
        concurrency: Some((key.clone(), 1)),
        ..msg
    };
    let gw = n1.actor_ref::<JobGateway>(key.as_str());
    eventually("node 1 to reach node 2", || {
        block_on(gw.ask(msg.clone())).ok()
    })
    .expect("enqueued on node 2");
    expected.push((2, 100));
    assert!(
        expected.iter().any(|(n, _)| *n == 1) && expected.iter().any(|(n, _)| *n == 2),
        "the keys are spread over both nodes: {expected:?}"
    );
    // Every job ran exactly once, on its owner.
    eventually("every job to run", || {
        (ran.lock().unwrap().len() >= expected.len()).then_some(())
    });
    let mut got = ran.lock().unwrap().clone();
    got.sort_unstable_by_key(|(_, image)| *image);
    expected.sort_unstable_by_key(|(_, image)| *image);
    assert_eq!(got, expected);
    // Bad input is refused by the owner, with its reason.
    let bad = RemoteEnqueue {
        type_name: "nope".into(),
        ..RemoteEnqueue::new(&Resize { image: 1 }, JobOptions::default()).unwrap()
    };
    let gw = client.actor_ref::<JobGateway>(bad.gateway_key());
    match block_on(gw.ask(bad)).expect("delivered") {
        Err(RemoteEnqueueError::Refused(reason)) => {
            assert!(reason.contains("nope"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let bad = RemoteEnqueue {
        payload_json: "{\"image\": \"not a number\"}".into(),
        ..RemoteEnqueue::new(&Resize { image: 1 }, JobOptions::default()).unwrap()
    };
    let gw = client.actor_ref::<JobGateway>(bad.gateway_key());
    assert!(matches!(
        block_on(gw.ask(bad)).expect("delivered"),
        Err(RemoteEnqueueError::Refused(_))
    ));
    client.shutdown();
    n1.shutdown();
    n2.shutdown();
}
