//! Managers: the structs that hold a service's logic.
//!
//! A manager is a plain struct with two impls: an inherent impl marked
//! `#[rpc_api]` whose `pub async fn`s are its RPC methods (and whose
//! `#[periodic_task]`s run in the periodic loop), and an `impl Manager`
//! with whichever of Nova's hooks it needs.
//!
//! ```
//! use nova_core::{rpc_api, Manager, RpcApi};
//! use nova_rpc::{RequestContext, RpcError};
//!
//! /// Says hello.
//! #[derive(Default)]
//! pub struct GreeterManager;
//!
//! #[rpc_api(version = "1.1")]
//! impl GreeterManager {
//!     /// Greet `name`, `times` times.
//!     pub async fn greet(&self, _ctx: RequestContext, name: String, times: Option<u32>) -> Result<String, RpcError> {
//!         Ok(format!("hello {name}! ").repeat(times.unwrap_or(1) as usize))
//!     }
//!
//!     #[periodic_task(spacing = 30)]
//!     async fn tidy_up(&self, _ctx: RequestContext) -> Result<(), RpcError> {
//!         Ok(())
//!     }
//! }
//!
//! impl Manager for GreeterManager {}
//!
//! assert_eq!(GreeterManager::API_VERSION, "1.1");
//! // The macro also wrote the typed client, `GreeterManagerClient`.
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use nova_rpc::dispatcher::{Endpoint, Router};

use crate::periodic::PeriodicTask;

/// Errors from hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who the service is: what hooks and periodic tasks are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The node name; servers listen on `topic.host`.
    pub host: String,
    /// The program name, e.g. `nova-compute`.
    pub binary: String,
    /// The RPC topic, e.g. `compute`.
    pub topic: String,
    /// The manager's own background work, waited for when the service
    /// stops (see [`Background`](crate::Background)). A manager built from
    /// [`ManagerDeps`](crate::ManagerDeps) keeps a clone of it.
    pub background: crate::Background,
}

impl ServiceInfo {
    /// A service's identity, with an empty set of background tasks.
    pub fn new(host: impl Into<String>, binary: impl Into<String>, topic: impl Into<String>) -> Self {
        Self { host: host.into(), binary: binary.into(), topic: topic.into(), background: crate::Background::new() }
    }

    /// Run `work` in the background, tracked by the service (see
    /// [`Background`](crate::Background)).
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(work);
    }
}

/// Nova's manager hooks, called by the service in its start and stop order.
///
/// Every hook has a default that does nothing; implement the ones you
/// need with [`async_trait`](crate::async_trait).
///
/// # Errors
///
/// An error from `init_host`, `pre_start_hook` or `post_start_hook` stops
/// the start ([`Service::start`](crate::Service::start) returns it, naming
/// the hook, and the binary exits non-zero). An error from `cleanup_host`
/// is logged; the stop goes on.
///
/// # Cancel safety
///
/// `cleanup_host` is cut off (its future dropped) when it outlives what is
/// left of `graceful_shutdown_timeout`; the others run to their end.
///
/// # Examples
///
/// ```
/// use nova_core::{async_trait, BoxError, Manager, ServiceInfo};
///
/// struct Compute;
///
/// #[async_trait]
/// impl Manager for Compute {
///     async fn init_host(&self, service: &ServiceInfo) -> Result<(), BoxError> {
///         // Look at what the previous process left on this host.
///         let _ = &service.host;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Manager: Send + Sync + 'static {
    /// Before the service record is written and before RPC starts.
    async fn init_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        Ok(())
    }

    /// After the service record exists, before the RPC server starts.
    async fn pre_start_hook(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        Ok(())
    }

    /// After the RPC server is consuming.
    async fn post_start_hook(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        Ok(())
    }

    /// On stop, after in-flight requests are done.
    async fn cleanup_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        Ok(())
    }

    /// On SIGHUP, with the configuration just re-read (before `reset`):
    /// apply what can change at run time.
    async fn reload(&self, _config: &crate::config::Config) {}

    /// On SIGHUP, after the configuration was re-read.
    async fn reset(&self) {}
}

/// An error an RPC method may return and a typed client gives back: it
/// travels as a remote error (`Into<RpcError>`) and is rebuilt from one
/// (`From<RpcError>`). [`RpcError`](nova_rpc::RpcError) is one;
/// `#[derive(RemoteError)]` makes an enum of your own one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an error an RPC method can return",
    label = "this error type cannot travel as a remote error",
    note = "derive it: `#[derive(Debug, nova_core::RemoteError)]` on an enum with a `#[remote(other)] Rpc(RpcError)` variant; or return `nova_rpc::RpcError`"
)]
pub trait RemoteError: Sized {
    /// As it travels: a remote failure of its class, or what it holds.
    fn into_rpc(self) -> nova_rpc::RpcError;
    /// As a typed client gives it back.
    fn from_rpc(e: nova_rpc::RpcError) -> Self;
}

impl RemoteError for nova_rpc::RpcError {
    fn into_rpc(self) -> nova_rpc::RpcError {
        self
    }

    fn from_rpc(e: nova_rpc::RpcError) -> Self {
        e
    }
}

/// The RPC surface of a manager; written by `#[rpc_api]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` serves no RPC API",
    label = "not servable",
    note = "declare its API: `#[rpc_api(version = \"1.0\")] impl {Self} {{ … }}`, or, when it implements an `#[rpc_api]` trait, add `#[rpc_api(serves = TheApi)] impl {Self} {{}}`"
)]
pub trait RpcApi: Send + Sync + Sized + 'static {
    /// The API version, `major.minor`.
    const API_VERSION: &'static str;
    /// The API namespace (`None`: the default namespace).
    const NAMESPACE: Option<&'static str>;
    /// The version of the package that declared it (`-V` of a binary
    /// launched with [`launch_manager`](crate::launch_manager)).
    const PACKAGE_VERSION: &'static str = "";
    /// The endpoint that serves the manager's methods.
    fn rpc_router(self: &Arc<Self>) -> Router;
    /// The manager's periodic tasks.
    fn periodic_tasks(self: &Arc<Self>) -> Vec<PeriodicTask>;
}

/// A manager with its RPC endpoint and periodic tasks, ready for a service.
#[derive(Clone)]
pub struct ManagerHandle {
    /// The registry name (or type name).
    pub name: String,
    /// The hooks.
    pub hooks: Arc<dyn Manager>,
    /// The RPC endpoint.
    pub endpoint: Arc<dyn Endpoint>,
    /// The periodic tasks.
    pub periodic_tasks: Vec<PeriodicTask>,
    /// Methods served from a work queue of their own (see [`WorkQueue`]).
    pub work: Option<WorkQueue>,
    /// The service version its record carries (see [`crate::upgrade`]).
    pub service_version: i64,
}

/// A manager's work queue: a queue of its own (`queue`, `<topic>_work` by
/// default) served as a work queue, each message holding one of `slots`
/// while its method runs, so the broker keeps the backlog and whichever
/// server has a free slot takes the next message (see
/// [`nova_rpc::RpcServer::as_work_queue`]). The topic's own queues serve
/// everything else at once, as oslo does; a work method that arrives there
/// (from a client that predates the work queue) is passed on to the work
/// queue, never run without a slot.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    /// The work queue's topic: clients cast work to it (`compute_work`).
    pub queue: String,
    /// Free capacity; the manager may take slots for work arriving otherwise.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The work methods.
    pub methods: Vec<String>,
    /// At-least-once for the work queue: a message is acknowledged when its
    /// method returns, and dead-lettered after this many deliveries.
    pub max_deliveries: Option<u32>,
}

impl std::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerHandle").field("name", &self.name).finish()
    }
}

impl ManagerHandle {
    /// Wrap a manager.
    pub fn new<M: Manager + RpcApi>(manager: Arc<M>) -> Self {
        Self {
            name: std::any::type_name::<M>().to_owned(),
            endpoint: Arc::new(manager.rpc_router()),
            periodic_tasks: manager.periodic_tasks(),
            hooks: manager,
            work: None,
            service_version: crate::db::services::SERVICE_VERSION,
        }
    }

    /// Serve `work.methods` from a work queue of their own (see [`WorkQueue`]).
    pub fn with_work_queue(mut self, work: WorkQueue) -> Self {
        self.work = Some(work);
        self
    }

    /// Set the name shown in logs and `describe`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// The work queue of `topic`: `[<topic>] work_queue`, or `<topic>_work`.
pub fn work_queue_name(config: &crate::config::Config, topic: &str) -> String {
    match config.raw(topic, "work_queue") {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => format!("{topic}_work"),
    }
}
