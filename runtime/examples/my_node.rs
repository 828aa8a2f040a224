//! Your own actors as a cluster node: what `quark serve` does for the built-in actors, for a
//! type of yours. `quark::serve` reads the config file, starts the node, prints a ready line,
//! and drains and stops on SIGINT/SIGTERM.
//!
//! Run (a one-node cluster on loopback; `RUST_LOG=debug` for more logs):
//!
//! ```sh
//! cargo run -p quark --example my_node -- --config docs/examples/cluster-single.toml
//! ```
//!
//! Then send it `Visit`s from another process with a `quark::Client` that registers the same
//! message (`.message::<Visit>()`), or run three of it with `docs/examples/cluster-3.toml` and
//! `--node-id 1`, `2`, `3`.

use quark::rkyv;
use quark::{Actor, ActorType, Context, Handler, Message, Node, ServeOptions, WireMessage};

/// Counts visits per page (the actor key is the page).
#[derive(Default)]
pub struct Visits {
    count: u64,
}

impl Actor for Visits {
    const TYPE_NAME: &'static str = "my_node.visits";
}

/// One visit; the reply is the page's visit count so far. It crosses nodes, so it has a
/// stable wire name and an rkyv encoding.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
pub struct Visit;

impl Message for Visit {
    type Reply = u64;
}

impl WireMessage for Visit {
    const WIRE_NAME: &'static str = "my_node.Visit";
}

impl Handler<Visit> for Visits {
    async fn handle(&mut self, _: Visit, ctx: &Context<Self>) -> u64 {
        self.count += 1;
        tracing::debug!(actor = %ctx.id(), count = self.count, "visit");
        self.count
    }
}

fn main() -> std::process::ExitCode {
    // Logs: `tracing` events go nowhere until a subscriber is installed. This one prints to
    // stderr at the level RUST_LOG asks for (default: info).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = ServeOptions::from_args(std::env::args().skip(1)).and_then(|options| {
        let builder = Node::builder()
            .register(ActorType::new(|_key| Visits::default()))
            .remote::<Visits, Visit>();
        quark::serve(builder, &options)
    });
    match result {
        Ok(_report) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("my_node: {}", quark::ErrorChain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
