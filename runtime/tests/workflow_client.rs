//! Workflows from a `Client`: instances started on a two-node cluster land on the node that
//! owns their id, run there, take events and cancellations from the client, and report their
//! output and history as JSON; bad input is refused by the owner with its reason.

use std::time::Duration;

mod ports;
use ports::free_addrs;

use quark::workflow::{InstanceState, StepError, WorkflowContext, WorkflowError};
use quark::{block_on, Client, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    items: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Approval {
    by: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Receipt {
    id: u64,
    items: u32,
    approved_by: String,
    /// The node that ran the orchestration (from its instance id's owner).
    node: u64,
}

fn node(id: u64, nodes_toml: &str, dir: &std::path::Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n\
         [cluster]\ncluster_id = \"wfc\"\nnode_id = {id}\n{nodes_toml}",
        dir.to_str().expect("UTF-8 temp dir")
    );
    let config = NodeConfig::from_toml(&text, "workflow-client.toml").unwrap();
    Node::builder()
        .config(config)
        .register_workflow(
            "order",
            1,
            move |ctx: WorkflowContext, o: Order| async move {
                let a: Approval = ctx.wait_event("approve").await?;
                Ok::<_, StepError>(Receipt {
                    id: o.id,
                    items: o.items,
                    approved_by: a.by,
                    node: id,
                })
            },
        )
        .register_workflow_event::<Approval>("approve")
        .start()
        .unwrap()
}

/// Retries `f` until it returns `Ok` (the links come up), failing after 10 s.
fn until_linked<T>(what: &str, mut f: impl FnMut() -> Result<T, WorkflowError>) -> T {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(v) => return v,
            Err(WorkflowError::Call { .. }) if std::time::Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn a_client_starts_signals_waits_for_cancels_and_purges_instances_on_their_owners() {
    let addrs = free_addrs(2);
    let nodes_toml: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let n1 = node(1, &nodes_toml, dirs[0].path());
    let n2 = node(2, &nodes_toml, dirs[1].path());
    let client = Client::builder()
        .cluster_id("wfc")
        .node(1, addrs[0])
        .node(2, addrs[1])
        .connect()
        .unwrap();
    let wf = client.workflows();
    const WAIT: Duration = Duration::from_secs(20);

    // Ten instances, spread over both nodes by their ids.
    let mut owners = Vec::new();
    for i in 0..10u64 {
        let id = format!("order-{i}");
        let owner = client
            .actor_ref::<quark::workflow::WorkflowInstance>(id.clone())
            .remote_node()
            .expect("a client has no local node");
        let out = until_linked("start", || {
            block_on(wf.start("order", &id, &Order { id: i, items: 3 }))
        });
        assert!(!out.existed);
        assert_eq!((out.name.as_str(), out.version), ("order", 1));
        owners.push(owner);
        let st = block_on(wf.status(&id)).unwrap();
        assert_eq!(st.state(), Some(InstanceState::Running));
    }
    assert!(
        owners.contains(&1) && owners.contains(&2),
        "the ids are spread over both nodes: {owners:?}"
    );
    // A second start of an existing id starts nothing.
    let again = block_on(wf.start("order", "order-0", &Order { id: 0, items: 9 })).unwrap();
    assert!(again.existed);

    // Approve the even ones, cancel the odd ones.
    for i in 0..10u64 {
        let id = format!("order-{i}");
        if i % 2 == 0 {
            block_on(wf.raise_event(&id, "approve", &Approval { by: "ann".into() })).unwrap();
        } else {
            let st = block_on(wf.cancel(&id)).unwrap();
            assert_eq!(st.state(), Some(InstanceState::Cancelled));
        }
    }
    for i in 0..10u64 {
        let id = format!("order-{i}");
        if i % 2 == 0 {
            let r: Receipt = block_on(wf.result(&id, WAIT)).unwrap();
            assert_eq!(
                r,
                Receipt {
                    id: i,
                    items: 3,
                    approved_by: "ann".into(),
                    node: owners[i as usize],
                },
                "ran once, on the node that owns {id}"
            );
            // The history, as JSON lines: started, the event, finished.
            let h = block_on(wf.history_json(&id)).unwrap();
            let lines: Vec<&str> = h.lines().collect();
            assert!(lines.first().is_some_and(|l| l.contains("Started")), "{h}");
            assert!(h.contains("EventRaised"), "{h}");
            assert!(lines.last().is_some_and(|l| l.contains("Finished")), "{h}");
        } else {
            match block_on(wf.result::<Receipt>(&id, WAIT)) {
                Err(WorkflowError::Failed { state, .. }) => {
                    assert_eq!(state, InstanceState::Cancelled)
                }
                other => panic!("{id}: expected a cancelled instance, got {other:?}"),
            }
            // A finished instance takes no event.
            match block_on(wf.raise_event(&id, "approve", &Approval { by: "bob".into() })) {
                Err(WorkflowError::Finished { state, .. }) => {
                    assert_eq!(state, InstanceState::Cancelled)
                }
                other => panic!("{id}: expected Finished, got {other:?}"),
            }
        }
    }

    // Purge: the history goes, and the id can be started again.
    block_on(wf.purge("order-0")).unwrap();
    assert!(matches!(
        block_on(wf.status("order-0")),
        Err(WorkflowError::NotFound { .. })
    ));
    let out = block_on(wf.start("order", "order-0", &Order { id: 0, items: 1 })).unwrap();
    assert!(!out.existed);

    // Refusals, with the owner's reason.
    match block_on(wf.start("nope", "x-1", &Order { id: 1, items: 1 })) {
        Err(WorkflowError::UnknownOrchestration {
            name, registered, ..
        }) => {
            assert_eq!(name, "nope");
            assert!(registered.contains("order v1"), "{registered}");
        }
        other => panic!("expected UnknownOrchestration, got {other:?}"),
    }
    match block_on(wf.start_json("order", None, "x-2", "{\"id\": \"seven\"}")) {
        Err(WorkflowError::Remote { detail, .. }) => {
            assert!(detail.contains("converting the JSON input"), "{detail}")
        }
        other => panic!("expected a refused input, got {other:?}"),
    }
    match block_on(wf.raise_event_json("order-0", "ship", "{}")) {
        Err(WorkflowError::Remote { detail, .. }) => {
            assert!(detail.contains("no payload type"), "{detail}")
        }
        other => panic!("expected an unknown event type, got {other:?}"),
    }
    match block_on(wf.wait("order-0", Duration::from_millis(50))) {
        Err(WorkflowError::WaitTimeout { .. }) => {}
        other => panic!("expected a wait timeout on a running instance, got {other:?}"),
    }
    client.shutdown();
    n1.shutdown();
    n2.shutdown();
}
