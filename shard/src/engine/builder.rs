//! [`EngineBuilder`]: registers actor types and wire messages, then starts an [`Engine`].

use std::any::TypeId;
use std::sync::Arc;

use super::{Engine, EngineConfig, StartError};
use crate::activation::{ActorType, ErasedType, TypeInfo};
use crate::actor::Actor;

/// Registers actor types and starts an [`Engine`].
pub struct EngineBuilder {
    config: EngineConfig,
    types: Vec<(TypeId, Arc<dyn ErasedType>)>,
    registry: crate::net::Registry,
}

impl EngineBuilder {
    /// A builder with `config`.
    pub fn new(config: EngineConfig) -> Self {
        EngineBuilder {
            config,
            types: Vec::new(),
            registry: crate::net::Registry::default(),
        }
    }

    /// Lets actors of type `A` on this node receive `M` from other nodes and clients, and lets
    /// this node send `M` to actors on other nodes. `M` and its reply cross the wire as rkyv
    /// archives under `M::WIRE_NAME`; a request naming a type this node does not handle gets
    /// an error reply.
    pub fn remote<A, M>(mut self) -> Self
    where
        A: crate::Handler<M>,
        M: crate::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.registry.add_handler::<A, M>();
        self
    }

    /// Lets this engine send `M` to actors on other nodes without handling it here (for
    /// clients, and for nodes that do not host the receiving type).
    pub fn wire_message<M>(mut self) -> Self
    where
        M: crate::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.registry.add_codec::<M>();
        self
    }

    /// Registers actor type `A`.
    pub fn register<A: Actor>(mut self, spec: ActorType<A>) -> Self {
        self.types
            .push((TypeId::of::<A>(), Arc::new(TypeInfo { spec })));
        self
    }

    /// Starts the shard threads; returns once every shard is ready to take messages.
    pub fn start(self) -> Result<Engine, StartError> {
        crate::turn::install_panic_location_hook();
        Engine::start(self.config, self.types, self.registry)
    }
}
