//! Sagas: the example (a transfer across nodes, one refused and compensated; an order whose
//! charge fails and whose stock reservation is released) and a step timeout that compensates
//! the steps before it and the timed-out step itself, in reverse order.

use std::time::{Duration, Instant};

use quark::outbox::saga::{self, SagaActor, SagaDef, SagaPhase, SagaStep, Sagas};
use quark::outbox::{
    Durable, DurableHandler, DurableMessage, DurableState, OutboxConfig, Retry, Save, SendError,
};
use quark::{Actor, ActorKey, Context, Node};
use serde::{Deserialize, Serialize};

#[allow(dead_code)]
#[path = "../examples/transfer_saga.rs"]
mod example;

#[test]
fn the_transfer_saga_example_runs() {
    example::main();
}

/// Records what it was asked; key "mute" never replies to actions.
#[derive(Serialize, Deserialize, Default)]
struct Party {
    /// (step, compensation) in arrival order.
    seen: Vec<(u32, bool)>,
}
impl Actor for Party {
    const TYPE_NAME: &'static str = "saga-test.party";
}
impl DurableState for Party {
    fn initial(_key: &ActorKey) -> Self {
        Party::default()
    }
}

#[derive(Serialize, Deserialize)]
struct Do(SagaStep);
impl DurableMessage for Do {
    const NAME: &'static str = "saga-test.Do";
}
impl DurableHandler<Do> for Party {
    async fn handle_durable(&mut self, m: Do, ctx: &Context<Self>) -> Result<(), Retry> {
        self.seen.push((m.0.step, m.0.compensation));
        let mute = matches!(&ctx.id().key, ActorKey::Str(k) if &**k == "mute");
        if !mute || m.0.compensation {
            saga::reply::<Chain, _>(ctx, m.0, true, "")
                .await
                .map_err(|e| Retry {
                    reason: e.to_string(),
                })?;
        }
        ctx.save(self).await.map_err(|e| Retry {
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// Step i goes to party `parties[i]`.
#[derive(Serialize, Deserialize)]
struct Chain {
    parties: Vec<String>,
}
impl SagaDef for Chain {
    const TYPE_NAME: &'static str = "saga-test.chain";
    const STEP_TIMEOUT: Duration = Duration::from_millis(300);
    fn step_count(&self) -> u32 {
        self.parties.len() as u32
    }
    async fn action(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<SagaActor<Self>>,
    ) -> Result<(), SendError> {
        ctx.send_durable::<Party, Do>(self.parties[step as usize].as_str(), Do(info))
            .await
    }
    async fn compensate(
        &self,
        step: u32,
        info: SagaStep,
        ctx: &Context<SagaActor<Self>>,
    ) -> Result<(), SendError> {
        self.action(step, info, ctx).await
    }
}

fn seen(node: &Node, key: &str) -> Vec<(u32, bool)> {
    let s = quark::outbox::DurableStates::<Party>::new(node.handle());
    quark::block_on(s.read(key)).unwrap().state.seen
}

#[test]
fn a_step_that_times_out_is_compensated_with_the_steps_before_it_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nfsync = \"never\"\n",
        dir.path().to_str().unwrap()
    );
    let config = quark::NodeConfig::from_toml(&text, "saga.toml").unwrap();
    let b = Node::builder()
        .config(config)
        .register(quark::outbox::durable_state::<Party>())
        .outbox(OutboxConfig::default())
        .durable::<Party, Do>();
    let node = saga::register::<Chain>(b).start().unwrap();
    let sagas = Sagas::<Chain>::new(node.handle());
    let chain = Chain {
        parties: vec!["a".into(), "b".into(), "mute".into(), "d".into()],
    };
    let started = Instant::now();
    quark::block_on(sagas.start("s-1", chain)).unwrap();
    let status = loop {
        let s = quark::block_on(sagas.status("s-1")).unwrap();
        if s.phase == SagaPhase::Compensated {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not compensated: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        started.elapsed() >= Chain::STEP_TIMEOUT,
        "compensation waited for the timeout"
    );
    assert!(
        status
            .cause
            .as_deref()
            .unwrap_or("")
            .contains("step 2 timed out"),
        "{status:?}"
    );
    // The timed-out step got its compensation after its action (order per pair); the steps
    // before it were compensated; the step after it never ran.
    assert_eq!(seen(&node, "mute"), vec![(2, false), (2, true)]);
    assert_eq!(seen(&node, "b"), vec![(1, false), (1, true)]);
    assert_eq!(seen(&node, "a"), vec![(0, false), (0, true)]);
    assert!(seen(&node, "d").is_empty());
    // Starting the same saga again changes nothing.
    let again = quark::block_on(sagas.start(
        "s-1",
        Chain {
            parties: vec!["x".into()],
        },
    ))
    .unwrap();
    assert_eq!(again.phase, SagaPhase::Compensated);
    assert!(seen(&node, "x").is_empty());
    node.shutdown();
}
