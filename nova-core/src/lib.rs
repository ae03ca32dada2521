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
pub mod metrics_listen;
pub mod notifications;
#[cfg(feature = "otel")]
pub mod otel;
pub mod periodic;
pub mod prelude;
pub mod registry;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upgrade;

pub use background::Background;
pub use launcher::{connect_client, launch, launch_manager, Bootstrap, ClientSetup, LaunchError};
pub use manager::{BoxError, Manager, ManagerHandle, RemoteError, RpcApi, ServiceInfo, WorkQueue};
/// Hooks (`init_host`, …) are written with it: `async_trait`'s attribute,
/// so a manager crate needs no dependency of its own, which also refuses,
/// with a sentence, the impl of an `#[rpc_api]` trait (written with plain
/// `async fn`s).
pub use nova_macros::async_trait;
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
/// - `#[rpc(cast)]`: the typed client casts it instead of calling it
///   (`#[rpc(cast, callable)]` when it returns a value callers who call it get);
/// - `#[rpc(since = "1.1")]`: added after the API's first version; the
///   typed client sends each method at the oldest version that carries it
///   (raised by an argument marked `#[rpc(since = "1.2")]` that does not
///   hold its default), and refuses locally what its version cap cannot
///   carry;
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
/// Derive [`RemoteError`](trait@RemoteError) for an error enum: each
/// variant a remote class that a typed client turns back into the same
/// variant, fields and all.
///
/// ```
/// use nova_core::RemoteError;
/// use nova_rpc::RpcError;
///
/// #[derive(Debug, RemoteError)]
/// pub enum StockError {
///     /// Python callers see `RemoteError` with `exc_type = 'OutOfStock'`.
///     #[remote(message = "out of stock")]
///     OutOfStock { item: String, wanted: u32 },
///     #[remote(class = "NoSuchItem", message = "no such item")]
///     Unknown(String),
///     /// The transport's errors, and classes this enum does not know.
///     #[remote(other)]
///     Rpc(RpcError),
/// }
///
/// let sent = RpcError::from(StockError::OutOfStock { item: "nut".into(), wanted: 3 });
/// assert_eq!(sent.class(), "OutOfStock");
/// assert!(matches!(StockError::from(sent), StockError::OutOfStock { wanted: 3, .. }));
/// assert!(matches!(StockError::from(RpcError::Transport("down".into())), StockError::Rpc(_)));
/// ```
///
/// A variant's class is its name, or `#[remote(class = "…")]`; its
/// message the enum's `Display`, or `#[remote(message = "…")]`; its fields
/// travel as the failure's `args` (or `kwargs`, named) and must be
/// `Serialize` and `Deserialize`, unless the variant is
/// `#[remote(opaque)]` (it then arrives as the `other` variant). The
/// Python module is the Rust module path, dotted, or `#[remote(module =
/// "…")]` on the enum.
pub use nova_macros::RemoteError;
pub use periodic::PeriodicTask;
pub use registry::{ManagerDeps, ManagerEntry, ManagerRegistry};
pub use service::{RunningService, Service, ServiceOptions};

/// What `#[rpc_api]` expands to refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::periodic::PeriodicTask;
    pub use async_trait::async_trait;
    pub use nova_rpc::{
        dispatcher::BoxFuture, dispatcher::Router, RemoteFailure, RequestContext, RpcClient, RpcError, Target, Version,
    };
    pub use serde;
    pub use serde_json;

    /// Parse a version literal from the macro (checked at start-up).
    pub fn version(v: &str) -> Version {
        v.parse().unwrap_or_else(|e| panic!("#[rpc_api(version = {v:?})]: {e}"))
    }
}
