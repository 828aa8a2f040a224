//! Durable messages across nodes: a runtime actor type, the *inbound proxy*, receives them on
//! the owner node (placed there by choosing its key) and runs the local delivery.

use quark_net::rkyv;
use quark_net::WireMessage;
use quark_placement::ActorKey;
use quark_shard::{Actor, ActorType, Context, EngineBuilder, EngineHandle, Handler, Message};

use super::dispatcher::{self, Delivery};
use super::{format, MessageId, Outcome};

/// Proxy keys tried per node when looking for keys the node owns.
const PROXY_SEARCH_MAX: u64 = 1 << 16;
/// Proxy activations per node (deliveries to one node run this many at a time per shard).
const PROXIES_PER_NODE: usize = 32;

/// The runtime's receiver of durable messages from other nodes (registered with the outbox).
pub struct InboundProxy;

impl Actor for InboundProxy {
    const TYPE_NAME: &'static str = "quark.outbox.inbound";
}

/// A durable message crossing nodes.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct DurableWire {
    /// The receiver's type name.
    pub target_type: String,
    /// The receiver's key (the outbox's key encoding).
    pub target_key: Vec<u8>,
    /// The message's durable name.
    pub message: String,
    /// Id stream.
    pub stream: u64,
    /// Id sequence.
    pub seq: u64,
    /// The message (postcard).
    pub data: Vec<u8>,
    /// The attempt's deadline in ms.
    pub timeout_ms: u64,
}

/// The receiver's answer: 0 applied, 1 duplicate, 2 rejected (dead-letter), 3 failed (retry).
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WireOutcome {
    /// The outcome code.
    pub code: u8,
    /// The cause, for codes 2 and 3.
    pub detail: String,
}

impl WireMessage for WireOutcome {
    const WIRE_NAME: &'static str = "quark.outbox.Outcome.v1";
}

impl Message for DurableWire {
    type Reply = WireOutcome;
}

impl WireMessage for DurableWire {
    const WIRE_NAME: &'static str = "quark.outbox.Deliver.v1";
}

fn to_wire(o: Outcome) -> WireOutcome {
    let (code, detail) = match o {
        Outcome::Applied => (0, String::new()),
        Outcome::Duplicate => (1, String::new()),
        Outcome::Rejected(d) => (2, d),
        Outcome::Failed(d) => (3, d),
    };
    WireOutcome { code, detail }
}

fn from_wire(w: WireOutcome) -> Outcome {
    match w.code {
        0 => Outcome::Applied,
        1 => Outcome::Duplicate,
        2 => Outcome::Rejected(w.detail),
        _ => Outcome::Failed(w.detail),
    }
}

impl Handler<DurableWire> for InboundProxy {
    async fn handle(&mut self, m: DurableWire, ctx: &Context<Self>) -> WireOutcome {
        let Some(d) = dispatcher::current() else {
            return to_wire(Outcome::Failed(
                "the receiving node runs no outbox dispatcher".into(),
            ));
        };
        let mut enc = vec![m.target_type.len() as u8];
        enc.extend_from_slice(m.target_type.as_bytes());
        enc.extend_from_slice(&m.target_key);
        let key = match format::decode_actor(&enc) {
            Ok((_, k)) => k,
            Err(e) => return to_wire(Outcome::Rejected(format!("bad receiver key: {e}"))),
        };
        let Some(f) = d.registry_handler(&m.target_type, &m.message) else {
            return to_wire(Outcome::Rejected(format!(
                "no durable handler for message {} on actor type {} on the receiving node",
                m.message, m.target_type
            )));
        };
        let delivery = Delivery {
            id: MessageId {
                stream: m.stream,
                seq: m.seq,
            },
            message: m.message,
            data: m.data,
            timeout: std::time::Duration::from_millis(m.timeout_ms),
        };
        let outcome = f(ctx.engine(), key, vec![delivery]).await.pop();
        to_wire(
            outcome.unwrap_or_else(|| Outcome::Failed("the receiver answered no outcome".into())),
        )
    }
}

/// Registers the proxy type and its wire message.
pub(crate) fn register(builder: EngineBuilder) -> EngineBuilder {
    builder
        .register(ActorType::new(|_| InboundProxy).stateless(8))
        .remote::<InboundProxy, DurableWire>()
}

/// Keys of proxy actors owned by `node`.
pub(crate) fn proxy_keys(engine: &EngineHandle, node: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for k in 0..PROXY_SEARCH_MAX {
        if engine.actor_ref::<InboundProxy>(k).remote_node() == Some(node) {
            out.push(k);
            if out.len() == PROXIES_PER_NODE {
                break;
            }
        }
    }
    out
}

/// Delivers `d` to `(target_type, key)` on `node` through a proxy.
pub(crate) async fn deliver(node: u64, target_type: &str, key: ActorKey, d: Delivery) -> Outcome {
    let Some(pk) = dispatcher::proxy_key(node, d.id.stream) else {
        return Outcome::Failed(format!("no proxy key found for node {node}"));
    };
    let Some(disp) = dispatcher::current() else {
        return Outcome::Failed("no dispatcher on this shard".into());
    };
    let mut enc = Vec::new();
    format::encode_actor(&mut enc, target_type, &key);
    let target_key = enc[1 + target_type.len()..].to_vec();
    let proxy = disp.engine().actor_ref::<InboundProxy>(pk);
    let msg = DurableWire {
        target_type: target_type.to_owned(),
        target_key,
        message: d.message,
        stream: d.id.stream,
        seq: d.id.seq,
        data: d.data,
        timeout_ms: d.timeout.as_millis() as u64,
    };
    // The receiving side's own turn has `timeout`; give the hop a little more.
    match proxy.ask_timeout(msg, d.timeout + d.timeout / 4).await {
        Ok(w) => from_wire(w),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
