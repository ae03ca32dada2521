//! Nova's service framework in Rust.
//!
//! Write a manager (see [`manager`]), register it under a name, and launch
//! a per-topic binary with [`launch`]. The framework reads flags and
//! `nova.conf` ([`config`]), keeps the service record in a database
//! ([`db`]), serves the manager over `nova-rpc` together with Nova's base
//! API ([`baseapi`]), and runs the report and periodic loops
//! ([`service`], [`periodic`]) until a signal stops it ([`launcher`]).

pub mod baseapi;
pub mod config;
pub mod db;
pub mod launcher;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod periodic;
pub mod registry;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

pub use launcher::{launch, Bootstrap, LaunchError};
pub use manager::{BoxError, Manager, ManagerHandle, RpcApi, ServiceInfo};
pub use nova_macros::rpc_api;
pub use periodic::PeriodicTask;
pub use registry::{ManagerDeps, ManagerEntry, ManagerRegistry};
pub use service::{RunningService, Service, ServiceOptions};

/// What `#[rpc_api]` expands to refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::periodic::PeriodicTask;
    pub use nova_rpc::{dispatcher::BoxFuture, dispatcher::Router, RequestContext, RpcClient, RpcError, Version};
    pub use serde;
    pub use serde_json;

    /// Parse a version literal from the macro (checked at start-up).
    pub fn version(v: &str) -> Version {
        v.parse().unwrap_or_else(|e| panic!("#[rpc_api(version = {v:?})]: {e}"))
    }
}
