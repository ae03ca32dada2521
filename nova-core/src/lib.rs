//! Nova's service framework in Rust.
//!
//! Write a manager (see [`manager`]), register it under a name, and launch
//! a per-topic binary with [`launch`]. The framework reads flags and
//! `nova.conf` ([`config`]), keeps the service record in a database
//! ([`db`]), serves the manager over `nova-rpc` together with Nova's base
//! API ([`baseapi`]), and runs the report and periodic loops
//! ([`service`], [`periodic`]) until a signal stops it ([`launcher`]).

pub mod background;
pub mod baseapi;
pub mod config;
pub mod connections;
pub mod db;
pub mod launcher;
pub mod logging;
pub mod manager;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod periodic;
pub mod registry;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

/// Hooks (`init_host`, …) are written with it: re-exported so a manager
/// crate needs no dependency of its own.
pub use async_trait::async_trait;
pub use background::Background;
pub use launcher::{connect_client, launch, Bootstrap, ClientSetup, LaunchError};
pub use manager::{BoxError, Manager, ManagerHandle, RpcApi, ServiceInfo, WorkQueue};
/// Declare an RPC API: on a trait (an API others implement and call), or
/// on a manager's own `impl` block (the quick way, for one service).
///
/// `#[rpc_api(version = "1.2", namespace = "…", client = "Name")]`: the
/// version is the API's `major.minor` (callers asking for a newer minor or
/// another major get `UnsupportedVersion`); the namespace is optional; the
/// client is named `<Type>Client` (on a trait `FooApi`: `FooClient`)
/// unless `client` says otherwise.
///
/// **On a trait**, every method is part of the API. The managers that
/// implement the trait (with plain `async fn`s), the fakes in tests that
/// implement it too, and the client written from it all share one set of
/// signatures, which the compiler checks. The implementing type then
/// declares `#[rpc_api(serves = FooApi)] impl Type { … }`, holding its
/// periodic tasks (or nothing), which makes it servable:
///
/// ```
/// use std::sync::Arc;
/// use nova_core::{rpc_api, Manager};
/// use nova_rpc::{RequestContext, RpcError};
///
/// /// What a greeter answers (its own module, or crate, in a real project).
/// #[rpc_api(version = "1.0")]
/// pub trait GreeterApi {
///     /// Say hello.
///     async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, RpcError>;
/// }
///
/// pub struct Greeter;
///
/// impl GreeterApi for Greeter {
///     async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
///         Ok(format!("Hello, {name}!"))
///     }
/// }
///
/// #[rpc_api(serves = GreeterApi)]
/// impl Greeter {
///     #[periodic_task(spacing = 60)]
///     async fn tick(&self, _ctx: RequestContext) -> Result<(), RpcError> {
///         Ok(())
///     }
/// }
///
/// impl Manager for Greeter {}
///
/// # async fn call(client: GreeterClient) -> Result<(), RpcError> {
/// let hello = client.greet(&RequestContext::new(), "Ada".into()).await?;
/// # Ok(()) }
/// let _ = nova_core::ManagerHandle::new(Arc::new(Greeter));
/// ```
///
/// **On an inherent impl**, every `pub` method not starting with `_` is
/// callable; a private method that takes a `RequestContext` is a compile
/// error (it would be `NoSuchMethod` to callers), unless marked
/// `#[rpc(skip)]`.
///
/// Either way, an RPC method takes `&self`
/// (or `self: &Arc<Self>`), then `ctx: RequestContext`, then its arguments
/// by name, and returns `Result<T, E>` with `T: Serialize` and
/// `E: Into<RpcError>`. On a method:
///
/// - `#[rpc(cast)]`: the typed client casts it instead of calling it;
/// - `#[rpc(blocking)]`: a plain `fn`, run on tokio's blocking pool;
/// - `#[rpc(skip)]`: a `pub` method kept out of the RPC surface.
///
/// On an argument, `#[rpc(default)]` lets a caller leave it out (it gets
/// `T::default()`); `Option<T>` arguments may always be left out.
///
/// `#[periodic_task(spacing = 60, run_immediately = true, enabled = true)]`
/// on a method `async fn name(&self, ctx: RequestContext) -> Result<(), E>`
/// runs it every `spacing` seconds (the first run after a random
/// `0..periodic_fuzzy_delay`); an error or a panic is logged and the task
/// runs again at its next spacing.
///
/// The hooks (`init_host`, `pre_start_hook`, `post_start_hook`,
/// `cleanup_host`, `reset`) are [`Manager`] methods, written with
/// [`async_trait`]. `README.md`'s "Write your own manager" shows all of it.
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
