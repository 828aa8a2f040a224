//! `call_actor`: an exactly-once message from an orchestration to a durable actor through the
//! outbox, its reply recorded in the history; restarts between the send and the reply, and
//! after the reply, neither lose nor repeat the effect, and a replay does not send again.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use quark::outbox::{DurableState, DurableStates, Retry, Save};
use quark::workflow::{
    ActorCall, ActorCallHandler, HistoryEvent, InstanceState, StepError, StepKind, WorkflowContext,
    Workflows,
};
use quark::{block_on, Actor, ActorKey, Context, Node, NodeConfig};
use serde::{Deserialize, Serialize};

/// Executions of the receiver's handler (the first one hangs when `HANG_FIRST` is set).
static CALLS: AtomicU32 = AtomicU32::new(0);
static HANG_FIRST: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Stock {
    reserved: u64,
    /// Every reservation applied, in order (an effect applied twice shows twice).
    applied: Vec<String>,
}
impl Actor for Stock {
    const TYPE_NAME: &'static str = "wfc-stock";
}
impl DurableState for Stock {
    fn initial(_: &ActorKey) -> Self {
        Stock::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Reserve {
    order: String,
    n: u64,
}
impl ActorCall for Reserve {
    const NAME: &'static str = "wfc.Reserve.v1";
    type Reply = u64;
}

impl ActorCallHandler<Reserve> for Stock {
    async fn handle_call(&mut self, m: Reserve, ctx: &Context<Self>) -> Result<u64, Retry> {
        let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 && HANG_FIRST.load(Ordering::SeqCst) == 1 {
            // The node is stopped under this execution: nothing of it is committed.
            std::future::pending::<()>().await;
        }
        self.reserved += m.n;
        self.applied.push(m.order);
        ctx.save(self).await.map_err(|e| Retry {
            reason: e.to_string(),
        })?;
        Ok(self.reserved)
    }
}

async fn order(ctx: WorkflowContext, n: u64) -> Result<u64, StepError> {
    let total = ctx
        .call_actor::<Stock, Reserve>(
            "sku-1",
            &Reserve {
                order: "o-1".into(),
                n,
            },
        )
        .await?;
    let () = ctx.wait_event("go").await?;
    Ok(total)
}

fn node(dir: &Path) -> Node {
    let text = format!(
        // A short shutdown timeout: the first node stops with a turn that never ends.
        "[node]\nshards = 2\nidle_spin_us = 0\nshutdown_timeout_ms = 500\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
        .register(quark::outbox::durable_state::<Stock>())
        .register_actor_call::<Stock, Reserve>()
        .register_workflow("order", 1, order)
        .start()
        .expect("node starts")
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The recorded replies of the instance's current run.
fn replies(wf: &Workflows, id: &str) -> Vec<Result<Vec<u8>, String>> {
    block_on(wf.history(id))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            HistoryEvent::ActorReplied { result, .. } => Some(result),
            _ => None,
        })
        .collect()
}

fn stock(node: &Node) -> Stock {
    block_on(DurableStates::<Stock>::new(node.handle()).read("sku-1"))
        .expect("the stock reads")
        .state
}

/// One test (the counters are process-wide): first a restart between the send and the reply
/// (the receiver's first execution hangs and is lost with the node), then a restart after the
/// reply was recorded (the replay returns it without sending again).
#[test]
fn call_actor_applies_its_effect_once_across_restarts_and_replays_the_recorded_reply() {
    let tmp = tempfile::tempdir().unwrap();
    HANG_FIRST.store(1, Ordering::SeqCst);
    let n = node(tmp.path());
    block_on(n.workflows().start("order", "o-1", &3u64)).unwrap();
    until("the receiver to get the call", || {
        (CALLS.load(Ordering::SeqCst) == 1).then_some(())
    });
    // The step is scheduled and its message committed; no reply yet.
    let h = block_on(n.workflows().history("o-1")).unwrap();
    assert!(h.iter().any(|e| matches!(e,
        HistoryEvent::Scheduled { step, .. } if step.kind == StepKind::Actor)));
    assert!(replies(&n.workflows(), "o-1").is_empty());
    n.shutdown();

    // Restart: the outbox delivers the call again; it is applied once and its reply recorded.
    let n = node(tmp.path());
    let wf = n.workflows();
    let r = until("the reply to be recorded", || {
        let r = replies(&wf, "o-1");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(r, vec![Ok(postcard::to_allocvec(&3u64).unwrap())]);
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        2,
        "the lost execution and one more"
    );
    assert_eq!(
        stock(&n),
        Stock {
            reserved: 3,
            applied: vec!["o-1".into()]
        }
    );
    n.shutdown();

    // Restart after the reply: the replay takes the recorded reply; nothing is sent again.
    let n = node(tmp.path());
    let wf = n.workflows();
    block_on(wf.raise_event("o-1", "go", &())).unwrap();
    let st = until("o-1 to finish", || {
        block_on(wf.status("o-1"))
            .ok()
            .filter(|s| s.state.is_finished())
    });
    assert_eq!(st.state, InstanceState::Completed, "{st:?}");
    assert_eq!(block_on(wf.result::<u64>("o-1")).unwrap(), 3);
    assert_eq!(replies(&wf, "o-1").len(), 1, "one recorded reply");
    assert_eq!(CALLS.load(Ordering::SeqCst), 2, "no call after the reply");
    assert_eq!(stock(&n).applied, vec!["o-1".to_string()]);
    n.shutdown();
}
