//! Durable messages across nodes: a runtime actor type, the *inbound proxy*, receives them on
//! the owner node (placed there by choosing its key) and runs the local delivery.
//!
//! A delivery batch (the messages of one receiver and message type, up to `batch_max`) crosses
//! as **one** wire request, [`DurableWireBatch`] (split only above
//! [`WIRE_BATCH_BYTES_MAX`] of payload), and the receiving node applies it as one turn of the
//! receiver and one log batch, as a local delivery does. [`DurableWire`] (one message per
//! request) is still served, for senders of an older build.

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

/// One message of a [`DurableWireBatch`].
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WireItem {
    /// Id stream.
    pub stream: u64,
    /// Id sequence.
    pub seq: u64,
    /// The message (postcard).
    pub data: Vec<u8>,
}

/// Durable messages to one receiver (one message type) crossing nodes in one request: the
/// receiving node applies them as one turn and one batch. The reply has one outcome per item,
/// in order.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct DurableWireBatch {
    /// The receiver's type name.
    pub target_type: String,
    /// The receiver's key (the outbox's key encoding).
    pub target_key: Vec<u8>,
    /// The messages' durable name.
    pub message: String,
    /// The messages, in the order the receiver applies them.
    pub items: Vec<WireItem>,
    /// The attempt's deadline in ms.
    pub timeout_ms: u64,
}

impl Message for DurableWireBatch {
    type Reply = Vec<WireOutcome>;
}

impl WireMessage for DurableWireBatch {
    const WIRE_NAME: &'static str = "quark.outbox.DeliverBatch.v1";
}

/// Payload bytes of one [`DurableWireBatch`] at most: a larger delivery crosses as several
/// requests (each well under the transport's default 1 MiB frame).
pub const WIRE_BATCH_BYTES_MAX: usize = 256 << 10;

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
        let batch = DurableWireBatch {
            target_type: m.target_type,
            target_key: m.target_key,
            message: m.message,
            items: vec![WireItem {
                stream: m.stream,
                seq: m.seq,
                data: m.data,
            }],
            timeout_ms: m.timeout_ms,
        };
        apply_batch(batch, ctx.engine())
            .await
            .pop()
            .unwrap_or_else(|| to_wire(Outcome::Failed("the receiver answered no outcome".into())))
    }
}

impl Handler<DurableWireBatch> for InboundProxy {
    async fn handle(&mut self, m: DurableWireBatch, ctx: &Context<Self>) -> Vec<WireOutcome> {
        apply_batch(m, ctx.engine()).await
    }
}

/// Applies a batch that arrived from another node with the local delivery (one receiver
/// turn); one outcome per item.
async fn apply_batch(m: DurableWireBatch, engine: EngineHandle) -> Vec<WireOutcome> {
    let n = m.items.len();
    let all = |o: Outcome| vec![to_wire(o); n];
    let Some(d) = dispatcher::current() else {
        return all(Outcome::Failed(
            "the receiving node runs no outbox dispatcher".into(),
        ));
    };
    let mut enc = vec![m.target_type.len() as u8];
    enc.extend_from_slice(m.target_type.as_bytes());
    enc.extend_from_slice(&m.target_key);
    let key = match format::decode_actor(&enc) {
        Ok((_, k)) => k,
        Err(e) => return all(Outcome::Rejected(format!("bad receiver key: {e}"))),
    };
    let Some(f) = d.registry_handler(&m.target_type, &m.message) else {
        return all(Outcome::Rejected(format!(
            "no durable handler for message {} on actor type {} on the receiving node",
            m.message, m.target_type
        )));
    };
    let timeout = std::time::Duration::from_millis(m.timeout_ms);
    let deliveries: Vec<Delivery> = m
        .items
        .into_iter()
        .map(|i| Delivery {
            id: MessageId {
                stream: i.stream,
                seq: i.seq,
            },
            message: m.message.clone(),
            data: i.data,
            timeout,
        })
        .collect();
    let mut outcomes: Vec<WireOutcome> = f(engine, key, deliveries)
        .await
        .into_iter()
        .map(to_wire)
        .collect();
    outcomes.resize_with(n, || {
        to_wire(Outcome::Failed(
            "the receiver answered fewer outcomes than messages".into(),
        ))
    });
    outcomes
}

/// Registers the proxy type and its wire messages.
pub(crate) fn register(builder: EngineBuilder) -> EngineBuilder {
    builder
        .register(ActorType::new(|_| InboundProxy).stateless(8))
        .remote::<InboundProxy, DurableWire>()
        .remote::<InboundProxy, DurableWireBatch>()
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

/// Delivers `ds` (one receiver, one message type) to `(target_type, key)` on `node` through a
/// proxy: one request per [`WIRE_BATCH_BYTES_MAX`] of payload (one for a usual batch), applied
/// there as one turn. One outcome per message, in order.
pub(crate) async fn deliver_batch(
    node: u64,
    target_type: &str,
    key: ActorKey,
    ds: Vec<Delivery>,
) -> Vec<Outcome> {
    let n = ds.len();
    let Some(first) = ds.first() else {
        return Vec::new();
    };
    let Some(pk) = dispatcher::proxy_key(node, first.id.stream) else {
        return vec![Outcome::Failed(format!("no proxy key found for node {node}")); n];
    };
    let Some(disp) = dispatcher::current() else {
        return vec![Outcome::Failed("no dispatcher on this shard".into()); n];
    };
    let timeout = first.timeout;
    let message = first.message.clone();
    let mut enc = Vec::new();
    format::encode_actor(&mut enc, target_type, &key);
    let target_key = enc[1 + target_type.len()..].to_vec();
    let proxy = disp.engine().actor_ref::<InboundProxy>(pk);
    // Split by payload size (a usual batch is one request).
    let mut chunks: Vec<Vec<WireItem>> = vec![Vec::new()];
    let mut bytes = 0;
    for d in ds {
        if bytes + d.data.len() > WIRE_BATCH_BYTES_MAX && !chunks[chunks.len() - 1].is_empty() {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += d.data.len();
        let last = chunks.len() - 1;
        chunks[last].push(WireItem {
            stream: d.id.stream,
            seq: d.id.seq,
            data: d.data,
        });
    }
    let calls = chunks.into_iter().map(|items| {
        let k = items.len();
        let msg = DurableWireBatch {
            target_type: target_type.to_owned(),
            target_key: target_key.clone(),
            message: message.clone(),
            items,
            timeout_ms: timeout.as_millis() as u64,
        };
        let proxy = &proxy;
        async move {
            // The receiving side's own turn has `timeout`; give the hop a little more.
            match proxy.ask_timeout(msg, timeout + timeout / 4).await {
                Ok(w) => {
                    let mut out: Vec<Outcome> = w.into_iter().map(from_wire).collect();
                    out.resize_with(k, || {
                        Outcome::Failed("the receiving node answered fewer outcomes".into())
                    });
                    out
                }
                Err(e) => vec![Outcome::Failed(e.to_string()); k],
            }
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}
