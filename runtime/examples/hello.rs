//! Embedding Quark: one actor type with state, one message, a node, an ask. Kept in sync with
//! the README. Run: `cargo run -p quark --example hello`
use quark::{Actor, ActorType, Context, Handler, Message, Node};

struct Greeter(u64); // state: greetings given so far
impl Actor for Greeter {
    const TYPE_NAME: &'static str = "greeter";
}

struct Greet(String); // a message, answered with a String
impl Message for Greet {
    type Reply = String;
}
impl Handler<Greet> for Greeter {
    async fn handle(&mut self, msg: Greet, ctx: &Context<Self>) -> String {
        self.0 += 1;
        format!("hello {} from {} (#{})", msg.0, ctx.id(), self.0)
    }
}

fn main() -> anyhow::Result<()> {
    let node = Node::builder() // default config: one shard per core
        .register(ActorType::new(|_key| Greeter(0)))
        .start()?;
    let ann = node.actor_ref::<Greeter>("ann"); // activated on its shard at the first message
    for who in ["bob", "eve"] {
        println!("{}", quark::block_on(ann.ask(Greet(who.into())))?);
    }
    node.shutdown();
    Ok(())
}
