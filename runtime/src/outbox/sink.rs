//! External sinks: the outbox delivers to systems outside Quark through [`Sink`], on a side
//! thread per sink (never on a shard thread), batching what queued meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use super::{MessageId, Outcome};

/// Requests queued per sink before deliveries report "busy" and are retried.
const SINK_QUEUE: usize = 8192;
/// Messages per [`Sink::write`] call at most.
const SINK_BATCH_MAX: usize = 1024;

/// One durable message for an external system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkMessage {
    /// The idempotency key: write it with the effect and ignore a second write of it.
    pub id: MessageId,
    /// The sender (`type/key`).
    pub sender: String,
    /// The message's durable name.
    pub message: String,
    /// The message, encoded (postcard).
    pub data: Vec<u8>,
}

/// Why a sink write failed. The whole batch is retried (with backoff) unless `permanent`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink write failed: {detail}")]
pub struct SinkError {
    /// What the external system said.
    pub detail: String,
    /// The messages can never be written (they are dead-lettered).
    pub permanent: bool,
}

/// An external system the outbox writes to, exactly once per message id.
///
/// `write` runs on the sink's own thread with a batch of messages in send order per (sender,
/// sink) pair; it must make the batch's effects durable and *idempotent by
/// [`SinkMessage::id`]* (a message can be written again after a crash before its
/// acknowledgement was recorded), and return `Ok` only once they are durable.
pub trait Sink: Send + 'static {
    /// Writes `batch` durably, ignoring ids already written.
    fn write(&mut self, batch: &[SinkMessage]) -> Result<(), SinkError>;
}

type Reply = futures::channel::oneshot::Sender<Outcome>;

/// The shard-side handle of a sink thread.
pub(crate) struct SinkHandle {
    tx: SyncSender<(SinkMessage, Reply)>,
}

impl SinkHandle {
    pub(crate) fn start(name: &str, mut sink: impl Sink) -> SinkHandle {
        let (tx, rx) = sync_channel::<(SinkMessage, Reply)>(SINK_QUEUE);
        let thread_name = format!("quark-sink-{name}");
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run(&mut sink, rx));
        if let Err(e) = spawned {
            tracing::error!(sink = name, error = %e, "cannot start the sink thread; its messages stay pending");
        }
        SinkHandle { tx }
    }

    pub(crate) fn deliver(&self, m: SinkMessage) -> Pin<Box<dyn Future<Output = Outcome>>> {
        let (reply, rx) = futures::channel::oneshot::channel();
        match self.tx.try_send((m, reply)) {
            Ok(()) => Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Outcome::Failed("the sink thread stopped".into()))
            }),
            Err(TrySendError::Full(_)) => {
                Box::pin(async { Outcome::Failed("the sink's queue is full".into()) })
            }
            Err(TrySendError::Disconnected(_)) => {
                Box::pin(async { Outcome::Failed("the sink thread stopped".into()) })
            }
        }
    }
}

fn run(sink: &mut impl Sink, rx: Receiver<(SinkMessage, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < SINK_BATCH_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let batch: Vec<SinkMessage> = jobs.iter().map(|(m, _)| m.clone()).collect();
        let outcome = match sink.write(&batch) {
            Ok(()) => Outcome::Applied,
            Err(e) if e.permanent => Outcome::Rejected(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        for (_, reply) in jobs {
            let _ = reply.send(outcome.clone());
        }
    }
}
