//! Quark: a thread-per-core, shared-nothing virtual-actor runtime.
//!
//! A [`Node`] runs one shard per core; each shard owns its actors, timers and (with the
//! persistence features) its log. Actors are *virtual*: address one by type and key with an
//! [`ActorRef`] and it is activated on its owning shard when a message arrives. See
//! `docs/ARCHITECTURE.md` for the design and `docs/CONFIG.md` for every setting.
#![deny(missing_docs)]

pub mod builtin;
mod client;
mod cluster;
mod config;
pub mod journal;
mod node;
pub mod outbox;
mod serve;

pub use client::{probe, Client, ClientBuilder, ClientError};
pub use cluster::ClusterSettings;
pub use config::{ActorTypeConfig, ConfigError, NodeConfig};
pub use node::{Node, NodeBuilder, NodeError};
/// The `rkyv` that wire messages derive with (`#[rkyv(crate = quark::rkyv)]`), so that a crate
/// using Quark needs no `rkyv` dependency of its own (see `runtime/examples/my_node.rs`).
pub use quark_net::rkyv;
pub use quark_net::{ClusterSecret, HandshakeConfig, PeerRole, WireMessage, WireOwned};
pub use quark_shard::{
    allowed_cores, block_on, Actor, ActorId, ActorKey, ActorRef, ActorType, CallError, Context,
    EngineConfig, EngineHandle, Handler, Message, ShardId, ShardSpec, ShardStatsSnapshot,
    ShutdownReport, SpawnHandle, StartError, Tell, TimerId,
};
pub use quark_shard::{NetConfig, NetStatsSnapshot};
pub use serve::{serve, ServeError, ServeOptions};
