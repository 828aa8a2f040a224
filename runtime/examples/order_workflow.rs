//! Order processing as a durable workflow (docs/WORKFLOWS.md).
//!
//! Each order: validate; then charge the card and reserve the stock in parallel; orders above
//! 500 wait for a human approval (an external event) with a timeout; then ship, and email the
//! customer. When shipping fails the workflow compensates (the saga pattern): it refunds the
//! charge and releases the stock, then tells the customer. Every step is an activity run as a
//! durable job with retries; a crash at any point resumes the order where it was.
//!
//! `cargo run -p quark --example order_workflow`

use std::time::Duration;

use quark::workflow::{ActivityContext, ActivityError, StepError, WorkflowContext};
use quark::{block_on, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Order {
    id: String,
    amount: u64,
    item: String,
    address: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Outcome {
    Shipped { tracking: String, charge: String },
    Rejected { reason: String },
    Refunded { charge: String, reason: String },
}

/// How long a large order waits for its approval (short, for the example).
const APPROVAL_TIMEOUT: Duration = Duration::from_millis(500);

async fn process_order(ctx: WorkflowContext, order: Order) -> Result<Outcome, StepError> {
    let valid: bool = ctx.call_activity("validate", &order).await?;
    if !valid {
        return Ok(Outcome::Rejected {
            reason: "invalid order".into(),
        });
    }
    // In parallel: charge the card and reserve the stock.
    let (charge, reserved) = futures::future::join(
        ctx.call_activity::<_, String>("charge", &order),
        ctx.call_activity::<_, ()>("reserve", &order.item),
    )
    .await;
    let charge = charge?;
    reserved?;
    // Large orders need a human approval, within a deadline.
    if order.amount > 500 {
        let approved = match ctx
            .wait_event_timeout::<bool>("approval", APPROVAL_TIMEOUT)
            .await
        {
            Ok(a) => a,
            Err(StepError::EventTimeout { .. }) => false,
            Err(e) => return Err(e),
        };
        if !approved {
            ctx.call_activity::<_, ()>("refund", &charge).await?;
            ctx.call_activity::<_, ()>("release", &order.item).await?;
            return Ok(Outcome::Rejected {
                reason: "not approved in time".into(),
            });
        }
    }
    match ctx.call_activity::<_, String>("ship", &order).await {
        Ok(tracking) => {
            ctx.call_activity::<_, ()>(
                "email",
                &(order.id.clone(), format!("shipped: {tracking}")),
            )
            .await?;
            Ok(Outcome::Shipped { tracking, charge })
        }
        Err(e) => {
            // Compensation: undo what was done, in reverse order.
            ctx.call_activity::<_, ()>("release", &order.item).await?;
            ctx.call_activity::<_, ()>("refund", &charge).await?;
            ctx.call_activity::<_, ()>("email", &(order.id.clone(), "refunded".to_string()))
                .await?;
            Ok(Outcome::Refunded {
                charge,
                reason: e.to_string(),
            })
        }
    }
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "[node]\nshards = 2\n[log]\ndata_dir = {:?}\nfsync = \"always\"\n",
        dir.path().to_str().expect("temp dir path is UTF-8")
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "example.toml")?)
        .register_workflow("order", 1, process_order)
        .register_activity("validate", |o: Order, _: ActivityContext| async move {
            Ok::<_, ActivityError>(o.amount > 0 && !o.address.is_empty())
        })
        .register_activity("charge", |o: Order, a: ActivityContext| async move {
            // The call's identity is the idempotency key a real payment API would take.
            Ok::<_, ActivityError>(format!("ch-{}-{}-{}", o.id, a.run, a.seq))
        })
        .register_activity("reserve", |_item: String, _: ActivityContext| async move {
            Ok::<_, ActivityError>(())
        })
        .register_activity("release", |item: String, _: ActivityContext| async move {
            println!("  released {item}");
            Ok::<_, ActivityError>(())
        })
        .register_activity("refund", |charge: String, _: ActivityContext| async move {
            println!("  refunded {charge}");
            Ok::<_, ActivityError>(())
        })
        .register_activity("ship", |o: Order, _: ActivityContext| async move {
            if o.address.contains("Atlantis") {
                // No retry helps: fail the step at once.
                return Err(ActivityError::fatal(format!(
                    "no carrier delivers to {}",
                    o.address
                )));
            }
            Ok(format!("TRK-{}", o.id))
        })
        .register_activity(
            "email",
            |(id, text): (String, String), _: ActivityContext| async move {
                println!("  email for order {id}: {text}");
                Ok::<_, ActivityError>(())
            },
        )
        .start()?;
    let wf = node.workflows();
    let orders = [
        ("o-1", 120, "Paris"),
        ("o-2", 900, "Lyon"),    // approved
        ("o-3", 80, "Atlantis"), // shipping fails: compensation
        ("o-4", 1500, "Nantes"), // nobody approves: times out
    ];
    for (id, amount, address) in orders {
        let order = Order {
            id: id.into(),
            amount,
            item: format!("item-{id}"),
            address: address.into(),
        };
        block_on(wf.start("order", id, &order))?;
    }
    // A human approves o-2 (the event is kept if it arrives before the wait starts).
    block_on(wf.raise_event("o-2", "approval", &true))?;
    for (id, ..) in orders {
        let outcome: Outcome = block_on(wf.result(id))?;
        let st = block_on(wf.status(id))?;
        println!("{id}: {outcome:?} ({} history records)", st.history_events);
    }
    let o2: Outcome = block_on(wf.result("o-2"))?;
    assert!(matches!(o2, Outcome::Shipped { .. }));
    let o3: Outcome = block_on(wf.result("o-3"))?;
    assert!(matches!(o3, Outcome::Refunded { .. }));
    let o4: Outcome = block_on(wf.result("o-4"))?;
    assert!(matches!(o4, Outcome::Rejected { .. }));
    println!(
        "history of o-3 (JSON lines):\n{}",
        block_on(wf.history_json("o-3"))?
    );
    node.shutdown();
    Ok(())
}
