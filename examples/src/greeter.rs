//! The greeter: an API declared as a trait, with errors of its own, served
//! by a manager with a periodic task and a hook.

use std::sync::atomic::{AtomicU64, Ordering};

use nova_core::prelude::*;

/// What a greeter refuses. Python callers see oslo's `RemoteError` with
/// `exc_type = 'EmptyName'`; the typed client gives back this enum.
#[derive(Debug, RemoteError)]
pub enum GreetError {
    /// The name is empty.
    #[remote(message = "a name is required")]
    EmptyName,
    /// Anything else: the transport, a timeout, a class we do not know.
    #[remote(other)]
    Rpc(RpcError),
}

/// What a greeter answers. `#[rpc_api]` writes `GreeterClient` from it.
#[rpc_api(version = "1.0")]
pub trait GreeterApi {
    /// Say hello to `name`.
    async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, GreetError>;

    /// Remember a visit (a cast: the client does not wait).
    #[rpc(cast)]
    async fn visit(&self, ctx: RequestContext, name: String) -> Result<(), GreetError>;
}

/// Greets people, and counts them.
#[derive(Default)]
pub struct Greeter {
    greeted: AtomicU64,
}

impl GreeterApi for Greeter {
    async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, GreetError> {
        if name.is_empty() {
            return Err(GreetError::EmptyName);
        }
        self.greeted.fetch_add(1, Ordering::Relaxed);
        Ok(format!("Hello, {name}!"))
    }

    async fn visit(&self, _ctx: RequestContext, _name: String) -> Result<(), GreetError> {
        self.greeted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Serves `GreeterApi`, and holds the greeter's periodic tasks.
#[rpc_api(serves = GreeterApi)]
impl Greeter {
    /// Every minute: say how many were greeted.
    #[periodic_task(spacing = 60)]
    async fn report(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        println!("greeted {} so far", self.greeted());
        Ok(())
    }
}

impl Greeter {
    /// How many were greeted (or visited).
    pub fn greeted(&self) -> u64 {
        self.greeted.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Manager for Greeter {
    /// Runs once, before the service consumes anything.
    async fn init_host(&self, service: &ServiceInfo) -> Result<(), BoxError> {
        println!("greeter starting on {}", service.host);
        Ok(())
    }
}
