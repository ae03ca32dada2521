//! tower middleware around dispatch (the `tower` feature).
//!
//! A [`TowerLayer`] is a nova [`Layer`] made of a tower service stack that
//! ends in [`Dispatch`], which runs the rest of the nova stack. So tower's
//! `Timeout`, `ConcurrencyLimit`, `RateLimit` and the rest wrap
//! the manager's methods as they wrap an axum or tonic handler. The stack
//! is one instance shared by every request (a concurrency limit counts all
//! of them), driven to readiness before each request.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::{sync::Arc, time::Duration};
//! use nova_rpc::{
//!     dispatcher::Dispatcher,
//!     layer::tower::{Dispatch, TowerLayer},
//!     transport::{self, TransportOptions},
//!     RpcServer, Target,
//! };
//! use tower::ServiceBuilder;
//!
//! // At most 8 requests at once, each cut off after 30 s with a `Timeout` error.
//! let limits = TowerLayer::new(
//!     ServiceBuilder::new()
//!         .concurrency_limit(8)
//!         .timeout(Duration::from_secs(30))
//!         .service(Dispatch),
//! );
//! let transport = transport::connect(TransportOptions::new("memory://tower-doc")).await.unwrap();
//! let server = RpcServer::new(transport, Target::new("compute").with_server("h1"), Dispatcher::default())
//!     .with_layer(Arc::new(limits))
//!     .start()
//!     .await
//!     .unwrap();
//! server.stop(Duration::from_secs(5)).await;
//! # });
//! ```
//!
//! The small [`Layer`] trait stays the way to write a layer of a few lines.

use std::task::{Context, Poll};

use async_trait::async_trait;
use tower::{Service, ServiceExt};

use super::{Call, Layer, LayerFuture, Next};
use crate::{Payload, Result, RpcError};

/// A request on its way through a tower stack: the call and the rest of
/// the nova stack it continues into.
#[derive(Debug)]
pub struct Routed {
    /// The request.
    pub call: Call,
    /// What runs it once the tower stack lets it through.
    pub next: Next,
}

/// The innermost tower service: runs the rest of the nova stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dispatch;

impl Service<Routed> for Dispatch {
    type Response = Payload;
    type Error = RpcError;
    type Future = LayerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, routed: Routed) -> LayerFuture {
        routed.next.run(routed.call)
    }
}

/// A tower service stack as a nova [`Layer`]; see the [module docs](self).
#[derive(Debug)]
pub struct TowerLayer<S> {
    service: tokio::sync::Mutex<S>,
}

impl<S> TowerLayer<S> {
    /// Wrap `service`, a tower stack ending in [`Dispatch`].
    pub fn new(service: S) -> Self {
        Self { service: tokio::sync::Mutex::new(service) }
    }
}

#[async_trait]
impl<S> Layer for TowerLayer<S>
where
    S: Service<Routed, Response = Payload> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    async fn handle(&self, call: Call, next: Next) -> Result<Payload> {
        let response = {
            // Readiness is awaited in turn: a limit makes requests queue here.
            let mut service = self.service.lock().await;
            let ready = service.ready().await.map_err(into_rpc_error)?;
            ready.call(Routed { call, next })
        };
        response.await.map_err(into_rpc_error)
    }
}

/// tower's errors as remote errors a caller can tell apart: `Timeout` for
/// tower's timeout, `Unavailable` for the others; an `RpcError` from the
/// stack below passes through.
fn into_rpc_error(e: impl Into<tower::BoxError>) -> RpcError {
    let e = e.into();
    let e = match e.downcast::<RpcError>() {
        Ok(rpc) => return *rpc,
        Err(e) => e,
    };
    let class = if e.is::<tower::timeout::error::Elapsed>() { "Timeout" } else { "Unavailable" };
    RpcError::remote(class, "nova_rpc.layer.tower", e.to_string())
}
