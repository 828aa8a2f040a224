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
        .register_job::<Barrier, _, _>(
            JobTypeConfig::default(),
            |_: Barrier, _: JobContext| async { Ok::<(), JobFailure>(()) },
        )
        .start()
        .unwrap()
}

/// A no-op job type: its completion shows that the owner's scheduler ran past a point.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Barrier;

impl Job for Barrier {
    const TYPE_NAME: &'static str = "barrier";
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

/// Status, cancel, list (filters, paging) and pause/resume of a type, from a `Client` and from
/// another node, by node-qualified job ids: each call reaches the job's owner, whichever key
/// (or none) placed the job.
#[test]
fn a_client_and_any_node_find_each_jobs_owner() {
    use quark::jobs::cluster::{ClusterJobId, ClusterJobsError, ClusterListQuery};
    use quark::jobs::remote::RemoteJobError;
    use quark::jobs::{JobId, JobState};

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
        .connect()
        .unwrap();
    let cj = client.jobs();
    assert_eq!(cj.members(), vec![1, 2]);
    // Scheduled an hour ahead: they stay queryable and cancellable. Keys picked so that each
    // node owns some; then keyless ones (placed by a spread key the id does not carry).
    let key_on = |node: u64, skip: usize| {
        (0..10_000)
            .map(|i| format!("c-{i}"))
            .filter(|k| {
                client
                    .actor_ref::<JobGateway>(k.as_str())
                    .remote_node()
                    .expect("a client is no member")
                    == node
            })
            .nth(skip)
            .expect("a key for the node")
    };
    let later = JobOptions::default().after(Duration::from_secs(3600));
    let mut ids = Vec::new();
    for (i, node) in [1u64, 2, 1, 2, 1, 2].into_iter().enumerate() {
        let opts = later.clone().concurrency(key_on(node, i), 1);
        let id = eventually("the enqueue to reach its owner", || {
            block_on(cj.enqueue(&Resize { image: i as u64 }, opts.clone())).ok()
        });
        assert_eq!(id.node, node, "the id names the owner");
        ids.push(id);
    }
    for i in 0..6u64 {
        let id = eventually("the enqueue to reach its owner", || {
            block_on(cj.enqueue(&Resize { image: 10 + i }, later.clone())).ok()
        });
        assert!(id.node == 1 || id.node == 2);
        ids.push(id);
    }
    // The id round-trips through its printed form, and each owner knows its jobs.
    for id in &ids {
        let parsed: ClusterJobId = id.to_string().parse().unwrap();
        assert_eq!(parsed, *id);
        let owner = if id.node == 1 { &n1 } else { &n2 };
        let local = block_on(owner.jobs().status(id.job)).expect("the owner knows the job");
        let remote = block_on(cj.status(*id)).unwrap();
        assert_eq!(remote, local);
        assert_eq!(remote.state, JobState::Scheduled);
    }
    // From node 1, a job that node 2 owns.
    let on_2 = ids.iter().find(|id| id.node == 2).copied().unwrap();
    let from_n1 = n1.cluster_jobs();
    let seen_from_n1 = eventually("node 1 to reach node 2", || {
        block_on(from_n1.status(on_2)).ok()
    });
    assert_eq!(seen_from_n1.id, on_2.job, "node 1 reaches node 2's job");
    // Cancel from node 1 and from the client; the owners see it.
    let cancelled = block_on(from_n1.cancel(on_2)).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(
        block_on(n2.jobs().status(on_2.job)).unwrap().state,
        JobState::Cancelled
    );
    let on_1 = ids.iter().find(|id| id.node == 1).copied().unwrap();
    assert_eq!(
        block_on(cj.cancel(on_1)).unwrap().state,
        JobState::Cancelled
    );
    // A finished job cannot be cancelled again; an unknown job or node is named.
    match block_on(cj.cancel(on_1)) {
        Err(ClusterJobsError::Refused {
            node: 1,
            source: RemoteJobError::WrongState(_),
        }) => {}
        other => panic!("expected a wrong-state refusal, got {other:?}"),
    }
    let missing = ClusterJobId {
        node: 2,
        job: JobId(on_2.job.0 + 1_000_000),
    };
    match block_on(cj.status(missing)) {
        Err(ClusterJobsError::Refused {
            node: 2,
            source: RemoteJobError::NotFound(id),
        }) => assert_eq!(id, missing.job.0),
        other => panic!("expected not found, got {other:?}"),
    }
    match block_on(cj.status(ClusterJobId { node: 7, ..missing })) {
        Err(ClusterJobsError::UnknownNode { node: 7, .. }) => {}
        other => panic!("expected an unknown node, got {other:?}"),
    }
    // List: every job once, ordered by (node, id), in pages of 5 over both nodes.
    let mut expected = ids.clone();
    expected.sort();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = block_on(cj.list(ClusterListQuery {
            after,
            limit: 5,
            type_name: Some("resize".into()),
            ..ClusterListQuery::default()
        }))
        .unwrap();
        pages += 1;
        assert!(page.jobs.len() <= 5);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(c) => {
                assert_eq!(
                    Some(c),
                    seen.last().copied(),
                    "the cursor is the page's last id"
                );
                after = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(seen, expected, "paging returns each job once, in order");
    assert_eq!(
        pages, 3,
        "12 jobs in pages of 5: the last page names no cursor"
    );
    // Filters: state and node; an unknown type matches nothing.
    let cancelled_page = block_on(cj.list(ClusterListQuery {
        state: Some(JobState::Cancelled),
        ..ClusterListQuery::default()
    }))
    .unwrap();
    let mut got: Vec<_> = cancelled_page.jobs.iter().map(|j| j.id).collect();
    got.sort();
    let mut want = vec![on_1, on_2];
    want.sort();
    assert_eq!(got, want);
    let node2 = block_on(cj.list(ClusterListQuery {
        node: Some(2),
        ..ClusterListQuery::default()
    }))
    .unwrap();
    assert_eq!(
        node2.jobs.len(),
        ids.iter().filter(|id| id.node == 2).count()
    );
    assert!(node2.jobs.iter().all(|j| j.id.node == 2));
    assert!(block_on(cj.list(ClusterListQuery {
        type_name: Some("other".into()),
        ..ClusterListQuery::default()
    }))
    .unwrap()
    .jobs
    .is_empty());
    // Pause the type on every node from the client: a job enqueued now stays queued on its
    // owner; resuming (from node 2) runs it.
    let switches = block_on(cj.set_paused(Some("resize".into()), true)).unwrap();
    assert_eq!(
        switches,
        vec![
            (1, false, vec!["resize".to_owned()]),
            (2, false, vec!["resize".to_owned()])
        ]
    );
    let held = [
        block_on(cj.enqueue(
            &Resize { image: 50 },
            JobOptions::default().concurrency(key_on(1, 0), 1),
        ))
        .unwrap(),
        block_on(cj.enqueue(
            &Resize { image: 51 },
            JobOptions::default().concurrency(key_on(2, 0), 1),
        ))
        .unwrap(),
    ];
    for (i, id) in held.into_iter().enumerate() {
        // A job of another type behind it on the same shard (same concurrency key) runs to
        // completion: the scheduler went past the paused job and left it queued.
        let barrier = block_on(cj.enqueue(
            &Barrier,
            JobOptions::default().concurrency(key_on(id.node, 0), 1),
        ))
        .unwrap();
        assert_eq!(barrier.node, id.node);
        eventually("the barrier job to complete", || {
            (block_on(cj.status(barrier)).unwrap().state == JobState::Completed).then_some(())
        });
        assert_eq!(
            block_on(cj.status(id)).unwrap().state,
            JobState::Queued,
            "held job {i} stays queued while its type is paused"
        );
    }
    assert!(ran.lock().unwrap().iter().all(|(_, image)| *image < 50));
    match block_on(cj.set_paused(Some("nope".into()), true)) {
        Err(ClusterJobsError::Refused {
            node: 1,
            source: RemoteJobError::UnknownType(t),
        }) => assert_eq!(t, "nope"),
        other => panic!("expected an unknown type, got {other:?}"),
    }
    block_on(n2.cluster_jobs().set_paused(Some("resize".into()), false)).unwrap();
    for id in held {
        eventually("a resumed job to complete", || {
            (block_on(cj.status(id)).unwrap().state == JobState::Completed).then_some(())
        });
    }
    let mut after_resume: Vec<_> = ran.lock().unwrap().clone();
    after_resume.sort_unstable();
    assert_eq!(
        after_resume,
        vec![(1, 50), (2, 51)],
        "each ran once, on its owner"
    );
    client.shutdown();
    n1.shutdown();
    n2.shutdown();
}
