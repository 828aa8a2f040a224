//! The workflow figures on `/metrics`: instances per shard and state, and the history sizes of
//! the running instances (summed and largest), equal to what the instances report themselves,
//! documented in docs/OPERATIONS.md and accepted by `promtool check metrics`.

use std::time::Duration;

use quark::admin::fetch;
use quark::workflow::{InstanceState, StepError, WorkflowContext};
use quark::{block_on, AdminConfig, Node, NodeConfig};

mod admin_common;
use admin_common::{samples, value};

const T: Duration = Duration::from_secs(10);

#[test]
fn instances_by_state_and_history_sizes_are_exported_as_the_instances_report_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.path().to_str().unwrap()
    );
    let mut cfg = NodeConfig::from_toml(&text, "workflow-metrics.toml").unwrap();
    cfg.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    // Waits for `n` "tick" events, then returns how many it got.
    let node = Node::builder()
        .config(cfg)
        .register_workflow("ticks", 1, |ctx: WorkflowContext, n: u32| async move {
            for _ in 0..n {
                let _: u32 = ctx.wait_event("tick").await?;
            }
            Ok::<_, StepError>(n)
        })
        .register_workflow_event::<u32>("tick")
        .start()
        .unwrap();
    let wf = node.workflows();
    // Six instances: two complete, one is cancelled, three keep running with different
    // history lengths (0, 3 and 7 events raised).
    let plan: [(&str, u32, u32); 6] = [
        ("w-done-1", 1, 1),
        ("w-done-2", 2, 2),
        ("w-cancel", 5, 1),
        ("w-run-0", 9, 0),
        ("w-run-3", 9, 3),
        ("w-run-7", 9, 7),
    ];
    for (id, n, raise) in plan {
        block_on(wf.start("ticks", id, &n)).unwrap();
        for i in 0..raise {
            block_on(wf.raise_event(id, "tick", &i)).unwrap();
        }
    }
    block_on(wf.cancel("w-cancel")).unwrap();
    for id in ["w-done-1", "w-done-2"] {
        assert!(block_on(wf.result::<u32>(id)).unwrap() > 0);
    }
    // What the instances report, per shard.
    let h = node.handle();
    let shards = h.shard_count();
    let mut want_events = vec![0u64; shards as usize];
    let mut want_bytes = vec![0u64; shards as usize];
    let mut want_events_max = vec![0u64; shards as usize];
    let mut want_bytes_max = vec![0u64; shards as usize];
    let mut want_state = vec![std::collections::BTreeMap::<&str, u64>::new(); shards as usize];
    for (id, _, _) in plan {
        let st = block_on(wf.status(id)).unwrap();
        let s = h.shard_of(&quark::ActorId::new("quark.wf", id)) as usize;
        *want_state[s].entry(st.state.name()).or_default() += 1;
        if st.state == InstanceState::Running {
            assert!(st.history_events > 0, "{id}: {st:?}");
            want_events[s] += st.history_events;
            want_bytes[s] += st.history_bytes;
            want_events_max[s] = want_events_max[s].max(st.history_events);
            want_bytes_max[s] = want_bytes_max[s].max(st.history_bytes);
        }
    }
    assert!(
        want_events_max.iter().max() > want_events.iter().min(),
        "the instances' histories differ in length: {want_events:?}"
    );
    let addr = node.admin_addr().unwrap();
    let r = fetch(addr, "/metrics", T).unwrap();
    assert_eq!(r.status, 200);
    let s = samples(&r.body);
    for shard in 0..shards {
        let i = shard as usize;
        for state in [
            "running",
            "completed",
            "failed",
            "non_deterministic",
            "cancelled",
            "terminated",
        ] {
            assert_eq!(
                value(&s, "quark_workflow_instances", shard, &[("state", state)]),
                want_state[i].get(state).copied().unwrap_or(0) as f64,
                "shard {shard} state {state}"
            );
        }
        let v = |name| value(&s, name, shard, &[]);
        assert_eq!(v("quark_workflow_history_events"), want_events[i] as f64);
        assert_eq!(v("quark_workflow_history_bytes"), want_bytes[i] as f64);
        assert_eq!(
            v("quark_workflow_history_events_max"),
            want_events_max[i] as f64
        );
        assert_eq!(
            v("quark_workflow_history_bytes_max"),
            want_bytes_max[i] as f64
        );
    }
    // Documented.
    let doc = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md"),
    )
    .unwrap();
    for name in [
        "quark_workflow_instances",
        "quark_workflow_history_events",
        "quark_workflow_history_events_max",
        "quark_workflow_history_bytes",
        "quark_workflow_history_bytes_max",
    ] {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/OPERATIONS.md"
        );
    }
    admin_common::promtool_check_metrics(&r.body);
    node.shutdown();
}
