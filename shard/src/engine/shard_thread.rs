//! The body of a shard thread: pins it, builds its runtime, registers its doorbell, opens its
//! log, takes the listening socket (shard 0), builds its inbound rings and joins the start-up
//! exchange, then runs its pump (`crate::shard::pump`) until the node stops.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::{mpsc, Arc};

use quark_placement::ShardId;

use super::config::StartStep;
use super::events::{ShardEvent, StartFailure};
use super::info::{IoDriver, Pinning, ShardInfo};
use super::shared::{set_current, NodeShared};
use crate::affinity::{current_cpu, numa_node_of, pin_current_thread};
use crate::envelope::CrossMsg;
use crate::ring::{ring, Consumer, Producer};
use crate::rt::{BellReceiver, Runtime};
use crate::shard::Shard;

/// Sends [`ShardEvent::Exited`] when a shard thread ends, however it ends (a panic too), so
/// that the start-up exchange never waits for a thread that is gone.
struct ExitNotice {
    shard: ShardId,
    events: mpsc::Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited(self.shard));
    }
}

fn pin_shard(id: ShardId, core_id: usize, pin: bool) -> Pinning {
    if !pin {
        return Pinning::Off;
    }
    match pin_current_thread(core_id) {
        Ok(()) => Pinning::Pinned,
        Err(e) => {
            tracing::warn!(shard = id, core = core_id, error = %crate::ErrorChain(&e), "could not pin the shard thread; it runs unpinned");
            let os_error = match &e {
                crate::affinity::PinError::Refused { source, .. } => source.raw_os_error(),
                _ => None,
            };
            Pinning::Failed { os_error }
        }
    }
}

/// Runs shard `id` on the calling (new) thread: its start-up steps, reported to the engine on
/// `events`, then its pump.
pub(super) fn shard_main(
    id: ShardId,
    core_id: usize,
    shared: Arc<NodeShared>,
    bell_rx: crate::rt::BellEnd,
    events: mpsc::Sender<ShardEvent>,
    producers_rx: mpsc::Receiver<Vec<Option<Producer<CrossMsg>>>>,
) {
    let _exit = ExitNotice {
        shard: id,
        events: events.clone(),
    };
    let n = shared.shards.len();
    let fault = shared
        .config
        .start_fault
        .filter(|f| f.shard == id)
        .map(|f| f.step);
    let fail = |cause: StartFailure| {
        let _ = events.send(ShardEvent::Failed(id, cause));
    };
    crate::trace::set_thread_sink(shared.config.span_sink.clone());
    let pinning = pin_shard(id, core_id, shared.config.pin_threads);
    let running_on = current_cpu();
    let (mut rt, driver) = match build_runtime(id, core_id, &shared, fault) {
        Ok(built) => built,
        Err(cause) => return fail(cause),
    };
    // The doorbell is registered before the shard reports ready: a shard that could not be
    // woken would look started and never take a message.
    let bell = match register_doorbell(&mut rt, id, bell_rx, fault) {
        Ok(b) => b,
        Err(cause) => return fail(cause),
    };
    // The durable log: recovered before the shard takes any message.
    let log = match open_shard_log(&mut rt, id, &shared) {
        Ok(log) => log,
        Err(e) => {
            let _ = events.send(ShardEvent::LogFailed(id, e));
            return;
        }
    };
    let listener = match take_listener(id, &shared) {
        Ok(l) => l,
        Err(cause) => return fail(cause),
    };
    let (consumers, producers) = inbound_rings(id, n, shared.config.ring_capacity);
    if events.send(ShardEvent::Ready(id, producers)).is_err() {
        return;
    }
    // A closed channel: another shard failed to start; this one exits.
    let Ok(outgoing) = producers_rx.recv() else {
        return;
    };
    if fault == Some(StartStep::PanicAfterReady) {
        panic!("shard {id}: injected panic after the ready exchange (test hook)");
    }
    let core = Rc::new(Shard::new(id, shared.clone(), outgoing, consumers, log));
    set_current(core.clone());
    let info = ShardInfo {
        shard: id,
        core: core_id,
        running_on,
        pinning,
        driver,
        idle_spin: shared.config.idle_spin,
    };
    rt.block_on(async move {
        crate::net::start(&core, listener);
        if events.send(ShardEvent::Started(info)).is_err() {
            return;
        }
        let pump = crate::rt::spawn_joined(crate::pump::pump(core, bell, events));
        pump.await;
    });
}

/// Builds the shard's runtime (io_uring, or the epoll fallback).
fn build_runtime(
    id: ShardId,
    core_id: usize,
    shared: &NodeShared,
    fault: Option<StartStep>,
) -> Result<(Runtime, IoDriver), StartFailure> {
    let built = if fault == Some(StartStep::Runtime) {
        Err(std::io::Error::other(
            "injected runtime failure (test hook)",
        ))
    } else {
        crate::rt::build_runtime(
            shared.config.uring_entries,
            shared.config.force_legacy_driver,
        )
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot build the shard's runtime");
            return Err(StartFailure::Runtime(e));
        }
    };
    let driver = if crate::rt::is_uring(&rt) {
        IoDriver::IoUring
    } else {
        IoDriver::Epoll
    };
    tracing::info!(
        shard = id,
        core = core_id,
        numa_node = ?numa_node_of(core_id),
        io_uring = crate::rt::is_uring(&rt),
        "shard started"
    );
    Ok((rt, driver))
}

/// Registers the shard's doorbell with its runtime.
fn register_doorbell(
    rt: &mut Runtime,
    id: ShardId,
    bell_rx: crate::rt::BellEnd,
    fault: Option<StartStep>,
) -> Result<BellReceiver, StartFailure> {
    let bell = rt.block_on(async {
        if fault == Some(StartStep::Doorbell) {
            return Err(std::io::Error::other(
                "injected doorbell failure (test hook)",
            ));
        }
        BellReceiver::new(bell_rx)
    });
    bell.map_err(|e| {
        tracing::error!(shard = id, error = %e, "cannot register the doorbell");
        StartFailure::Doorbell(e)
    })
}

/// Opens and recovers the shard's log (`dir/shard-<id>`), if the node has one.
fn open_shard_log(
    rt: &mut Runtime,
    id: ShardId,
    shared: &NodeShared,
) -> Result<Option<crate::ShardLog>, quark_persist::OpenError> {
    let Some(template) = &shared.config.log else {
        return Ok(None);
    };
    let mut config = template.clone();
    config.dir = template.dir.join(format!("shard-{id}"));
    config.shard_id = u32::from(id);
    match rt.block_on(crate::rt::log_io::open_log(config)) {
        Ok((log, report)) => {
            tracing::info!(
                shard = id,
                segments = report.segments,
                batches = report.batches,
                records = report.records,
                bytes_read = report.bytes_read,
                truncated_tails = report.truncated.len(),
                quarantined = report.quarantined.len(),
                "log recovered"
            );
            Ok(Some(Rc::new(log)))
        }
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot open the shard's log");
            Err(e)
        }
    }
}

/// Shard 0 accepts the node's incoming connections: its own handle on the listening socket.
fn take_listener(id: ShardId, shared: &NodeShared) -> Result<Option<TcpListener>, StartFailure> {
    match shared.config.net.as_ref().and_then(|n| n.listener.as_ref()) {
        Some(l) if id == 0 => match l.try_clone() {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot take the listening socket");
                Err(StartFailure::Listener(e))
            }
        },
        _ => Ok(None),
    }
}

/// The shard's inbound rings, one from each other shard, and their producer ends (for the
/// start-up exchange). Allocated here, after pinning: first touch by the consumer.
fn inbound_rings(
    id: ShardId,
    n: usize,
    cap: usize,
) -> (Vec<Consumer<CrossMsg>>, Vec<Producer<CrossMsg>>) {
    let mut consumers: Vec<Consumer<CrossMsg>> = Vec::with_capacity(n.saturating_sub(1));
    let mut producers = Vec::with_capacity(n.saturating_sub(1));
    for from in 0..n {
        if from != usize::from(id) {
            let (p, c) = ring::<CrossMsg>(cap);
            producers.push(p);
            consumers.push(c);
        }
    }
    (consumers, producers)
}
