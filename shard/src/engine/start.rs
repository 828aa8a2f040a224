//! [`Engine`]'s start-up: checks the configuration, assigns cores, locks the data directory,
//! builds the shared state, spawns the shard threads and runs the ring exchange with them.
//! A failed start stops and joins every shard thread it started before it returns.

use std::any::TypeId;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use quark_placement::ShardId;
use rustc_hash::FxHashMap;

use super::config::{EngineConfig, ShardSpec};
use super::events::ShardEvent;
use super::info::ShardInfo;
use super::shard_thread::shard_main;
use super::shared::{NetPlacement, NodeShared, Phase, ShardHandle};
use super::{Engine, StartError};
use crate::activation::ErasedType;
use crate::affinity::allowed_cores;
use crate::envelope::CrossMsg;
use crate::ring::Producer;

const MAX_SHARDS: usize = 256;

/// The registered actor types: in registration order, and by `TypeId`.
type TypeTable = (Vec<Arc<dyn ErasedType>>, FxHashMap<TypeId, u16>);

impl Engine {
    /// Starts a node: returns once every shard reported that it runs, or with the first
    /// failure (every shard thread started by then is stopped and joined).
    pub(super) fn start(
        config: EngineConfig,
        types: Vec<(TypeId, Arc<dyn ErasedType>)>,
        registry: crate::net::Registry,
    ) -> Result<Engine, StartError> {
        check_net_config(&config)?;
        let cores = resolve_cores(&config.shards)?;
        let mut config = config;
        no_spin_on_shared_cores(&mut config, &cores);
        if cores.len() > MAX_SHARDS {
            return Err(StartError::TooManyShards {
                count: cores.len(),
                max: MAX_SHARDS,
            });
        }
        // Before any shard touches the data directory: lock it and check its manifest.
        let data_dir = match &config.log {
            Some(log) => Some(crate::data_dir::DataDir::open_for_node(
                &log.dir,
                cores.len() as u16,
                config.net.as_ref().map(|n| n.node_id),
            )?),
            None => None,
        };
        let types = type_table(types)?;
        let (shared, bell_rx) = shared_state(config, types, registry, cores.len())?;
        let (event_tx, event_rx) = mpsc::channel::<ShardEvent>();
        let (threads, producer_txs) = spawn_shards(&shared, &cores, bell_rx, event_tx)?;
        let mut start = Startup {
            events: &event_rx,
            threads,
            producer_txs,
        };
        let info = match start.exchange(cores.len()) {
            Ok(info) => info,
            Err(e) => {
                let Startup {
                    threads,
                    producer_txs,
                    ..
                } = start;
                drop(producer_txs);
                self_stop(&shared, threads);
                return Err(e);
            }
        };
        let threads = start.threads;
        Ok(Engine {
            shared,
            threads,
            events: event_rx,
            cores,
            _data_dir: data_dir,
            info,
        })
    }
}

/// Rejects inconsistent cluster settings.
fn check_net_config(config: &EngineConfig) -> Result<(), StartError> {
    if let Some(net) = &config.net {
        let d = net.detector;
        if !(d.heartbeat_interval < d.suspect_after && d.suspect_after <= d.dead_after) {
            return Err(StartError::NetConfig {
                reason: "needs heartbeat_interval < suspect_after <= dead_after",
            });
        }
        if net.frame_bytes_max < quark_net::HANDSHAKE_FRAME_BYTES_MAX {
            return Err(StartError::NetConfig {
                reason: "frame_bytes_max must be at least 4096",
            });
        }
    }
    Ok(())
}

/// The core of each shard (index = shard id), from the spec and the process's affinity mask.
fn resolve_cores(spec: &ShardSpec) -> Result<Vec<usize>, StartError> {
    let allowed = allowed_cores();
    let cores: Vec<usize> = match spec {
        ShardSpec::Auto => allowed.clone(),
        ShardSpec::Count(n) => (0..*n).map(|i| allowed[i % allowed.len()]).collect(),
        ShardSpec::Cores(list) => {
            for &c in list {
                if !allowed.contains(&c) {
                    return Err(StartError::CoreUnavailable {
                        core: c,
                        allowed: allowed.clone(),
                    });
                }
            }
            list.clone()
        }
    };
    if cores.is_empty() {
        return Err(StartError::NoShards);
    }
    Ok(cores)
}

/// Turns idle spinning off when shards share cores.
fn no_spin_on_shared_cores(config: &mut EngineConfig, cores: &[usize]) {
    let mut distinct = cores.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < cores.len() && !config.idle_spin.is_zero() {
        // Spinning shards that share a core steal each other's time slices: a message to
        // the other shard then waits for the scheduler. Park at once instead.
        tracing::warn!(
            shards = cores.len(),
            cores = distinct.len(),
            "more shards than cores: idle spinning disabled (idle_spin_us = 0)"
        );
        config.idle_spin = Duration::ZERO;
    }
}

/// Numbers the registered types; a type name registered twice is an error.
fn type_table(types: Vec<(TypeId, Arc<dyn ErasedType>)>) -> Result<TypeTable, StartError> {
    let mut type_index = FxHashMap::default();
    let mut type_registry = Vec::new();
    for (tid, t) in types {
        if type_registry
            .iter()
            .any(|r: &Arc<dyn ErasedType>| r.name() == t.name())
        {
            return Err(StartError::DuplicateType { name: t.name() });
        }
        type_index.insert(tid, type_registry.len() as u16);
        type_registry.push(t);
    }
    Ok((type_registry, type_index))
}

/// The node's shared state for `n` shards, and the receiving end of each shard's doorbell
/// (index = shard id).
fn shared_state(
    config: EngineConfig,
    (types, type_index): TypeTable,
    registry: crate::net::Registry,
    n: usize,
) -> Result<(Arc<NodeShared>, Vec<crate::rt::BellEnd>), StartError> {
    let mut handles = Vec::with_capacity(n);
    let mut bell_rx = Vec::with_capacity(n);
    for shard in 0..n {
        let (bell, rx) = crate::rt::bell_pair().map_err(|source| StartError::Shard {
            shard: shard as ShardId,
            source,
        })?;
        handles.push(ShardHandle {
            bell,
            inject: crate::admission::Injector::new(
                config.external_queue_capacity,
                config.external_inflight_max,
            ),
        });
        bell_rx.push(rx);
    }
    let net = config.net.as_ref().map(|c| NetPlacement {
        node_id: c.node_id,
        members: crate::net::member_ids(&c.membership),
        view: crate::net::MemberView::new(
            c.node_id,
            crate::net::member_ids(&c.membership),
            &config.app_version,
            c.role == quark_net::PeerRole::Member,
        ),
    });
    let shared = NodeShared::new(config, types, type_index, handles, registry, net);
    Ok((Arc::new(shared), bell_rx))
}

/// The sending end of the channel that hands a shard its outbound rings.
type ProducersTx = mpsc::Sender<Vec<Option<Producer<CrossMsg>>>>;

/// Spawns one thread per shard. If a thread cannot be spawned, the ones already spawned are
/// stopped and joined before the error is returned.
fn spawn_shards(
    shared: &Arc<NodeShared>,
    cores: &[usize],
    bell_rx: Vec<crate::rt::BellEnd>,
    event_tx: mpsc::Sender<ShardEvent>,
) -> Result<(Vec<JoinHandle<()>>, Vec<ProducersTx>), StartError> {
    let n = cores.len();
    let mut producer_txs = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for (shard, rx) in bell_rx.into_iter().enumerate() {
        let (ptx, prx) = mpsc::channel::<Vec<Option<Producer<CrossMsg>>>>();
        producer_txs.push(ptx);
        let shared2 = shared.clone();
        let events = event_tx.clone();
        let core_id = cores[shard];
        let spawned = std::thread::Builder::new()
            .name(format!("quark-shard-{shard}"))
            .spawn(move || shard_main(shard as ShardId, core_id, shared2, rx, events, prx));
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(source) => {
                drop(producer_txs);
                self_stop(shared, threads);
                return Err(StartError::Shard {
                    shard: shard as ShardId,
                    source,
                });
            }
        }
    }
    Ok((threads, producer_txs))
}

/// The start-up exchange with the shard threads (see [`Engine::start`]).
struct Startup<'a> {
    events: &'a mpsc::Receiver<ShardEvent>,
    threads: Vec<JoinHandle<()>>,
    producer_txs: Vec<ProducersTx>,
}

impl Startup<'_> {
    /// Two rounds: each shard builds its inbound rings (first touch by the consumer) and sends
    /// the producer ends, which go to their sending shards; then each shard reports that it
    /// runs. Every shard thread reports a failure, or at least its exit (a drop guard), so this
    /// never waits for a shard that is gone: the first failure ends the start.
    fn exchange(&mut self, n: usize) -> Result<Vec<ShardInfo>, StartError> {
        let mut outgoing: Vec<Vec<Option<Producer<CrossMsg>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut ready = 0;
        while ready < n {
            match self.next_event()? {
                ShardEvent::Ready(consumer_shard, producers) => {
                    // producers[j] is the producer for ring j -> consumer_shard (skipping self).
                    let mut it = producers.into_iter();
                    for (from, out) in outgoing.iter_mut().enumerate() {
                        if from != usize::from(consumer_shard) {
                            out[usize::from(consumer_shard)] =
                                Some(it.next().expect("one producer per other shard"));
                        }
                    }
                    ready += 1;
                }
                ShardEvent::Started(_) => unreachable!("a shard starts after the exchange"),
                _ => {}
            }
        }
        for (shard, (tx, out)) in self.producer_txs.drain(..).zip(outgoing).enumerate() {
            if tx.send(out).is_err() {
                return Err(StartError::ShardExited {
                    shard: shard as ShardId,
                });
            }
        }
        let mut info: Vec<Option<ShardInfo>> = (0..n).map(|_| None).collect();
        let mut started = 0;
        while started < n {
            if let ShardEvent::Started(i) = self.next_event()? {
                let slot = &mut info[usize::from(i.shard)];
                assert!(slot.is_none(), "a shard starts once");
                *slot = Some(i);
                started += 1;
            }
        }
        Ok(info
            .into_iter()
            .map(|i| i.expect("every shard reported"))
            .collect())
    }

    /// The next event, or the start-up error a failure or an exit stands for.
    fn next_event(&self) -> Result<ShardEvent, StartError> {
        match self.events.recv() {
            Ok(ShardEvent::LogFailed(shard, source)) => Err(StartError::Log { shard, source }),
            Ok(ShardEvent::Failed(shard, cause)) => Err(cause.into_error(shard)),
            Ok(ShardEvent::Exited(shard)) => Err(StartError::ShardExited { shard }),
            Ok(e) => Ok(e),
            // Every thread exited (each sends `Exited` first, so this is not reached in
            // practice).
            Err(mpsc::RecvError) => Err(StartError::ShardExited { shard: 0 }),
        }
    }
}

/// Stops the shards of a node whose start failed, and waits for them.
fn self_stop(shared: &Arc<NodeShared>, threads: Vec<JoinHandle<()>>) {
    shared.set_phase(Phase::Stopped);
    for t in threads {
        let _ = t.join();
    }
}
