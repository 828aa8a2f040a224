//! `quark::key_for_shard` / `keys_for_shard`: a key whose actor runs on a chosen shard.

use quark::{block_on, Actor, ActorType, Context, Handler, Message, Node, ShardId, ShardSpec};

struct Where;
impl Actor for Where {
    const TYPE_NAME: &'static str = "placement.where";
}

/// Replies with the shard the handler runs on.
struct WhichShard;
impl Message for WhichShard {
    type Reply = ShardId;
}
impl Handler<WhichShard> for Where {
    async fn handle(&mut self, _: WhichShard, ctx: &Context<Self>) -> ShardId {
        ctx.shard()
    }
}

#[test]
fn keys_for_a_shard_run_on_that_shard() {
    let node = Node::builder()
        .engine(|e| e.shards = ShardSpec::Count(3))
        .register(ActorType::new(|_| Where))
        .start()
        .expect("node starts");
    let n = node.shard_count();
    assert_eq!(n, 3);
    for shard in 0..n {
        let first = quark::key_for_shard::<Where>(shard, n);
        let r = node.actor_ref::<Where>(first);
        assert_eq!(r.owner_shard(), shard);
        assert_eq!(block_on(r.ask(WhichShard)), Ok(shard), "key {first}");
        let keys: Vec<u64> = quark::keys_for_shard::<Where>(shard, n).take(4).collect();
        assert_eq!(keys[0], first);
        for k in keys {
            let ran_on = block_on(node.actor_ref::<Where>(k).ask(WhichShard));
            assert_eq!(ran_on, Ok(shard), "key {k}");
        }
    }
    node.shutdown();
}
