//! Quark: a thread-per-core, shared-nothing virtual-actor runtime.
//!
//! A [`Node`] runs one shard per core; each shard owns its actors, timers and (with the
//! persistence features) its log. Actors are *virtual*: address one by type and key with an
//! [`ActorRef`] and it is activated on its owning shard when a message arrives. See
//! `docs/ARCHITECTURE.md` for the design and `docs/CONFIG.md` for every setting.
#![deny(missing_docs)]

pub mod admin;
pub mod builtin;
mod client;
mod cluster;
mod config;
pub mod journal;
mod node;
mod serve;

pub use admin::{AdminConfig, AdminError};
pub use client::{probe, Client, ClientBuilder, ClientError};
pub use cluster::ClusterSettings;
pub use config::{ActorTypeConfig, ConfigError, NodeConfig};
pub use node::{Node, NodeBuilder, NodeError};
/// The rkyv version wire types are archived with. Derive a wire type through it, with no
/// direct rkyv dependency:
/// `#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]` and
/// `#[rkyv(crate = quark::rkyv)]`, then `impl quark::WireMessage for T { const WIRE_NAME: ... }`.
pub use quark_net::rkyv;
pub use quark_net::{
    ClusterSecret, HandshakeConfig, PeerRole, RemoteError, SecretError, WireMessage, WireOwned,
};
pub use quark_shard::{
    allowed_cores, block_on, Actor, ActorId, ActorKey, ActorRef, ActorType, CallError, Context,
    EngineConfig, EngineHandle, ErrorChain, Handler, IoDriver, JoinError, LinkDown, Message,
    Pinning, ShardId, ShardInfo, ShardSpec, ShardStatsSnapshot, ShutdownReport, SpawnHandle,
    StartError, StatsError, Tell, TimerId,
};
pub use quark_shard::{NetConfig, NetStatsSnapshot};
pub use serve::{serve, ServeError, ServeOptions};
