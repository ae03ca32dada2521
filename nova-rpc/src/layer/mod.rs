//! Middleware: layers around the dispatcher (server side) and the client.
//!
//! A [`Layer`] sees each request as a [`Call`] — context, target, method,
//! arguments — and decides what happens next: pass it on with
//! [`Next::run`], change it, refuse it, or time it. Layers stack in the
//! order they are added, the first added outermost, like tower's
//! `ServiceBuilder`. [`RpcServer::with_layer`](crate::RpcServer::with_layer)
//! wraps the dispatcher; [`RpcClient::with_layer`](crate::RpcClient::with_layer)
//! wraps calls and casts before they are encoded and sent.
//!
//! Built in: [`trace::TraceLayer`] (request traces) and
//! [`metrics::MetricsLayer`] (Prometheus metrics); services switch them on
//! from configuration (`trace_enabled`, `metrics_enabled`).
//!
//! Writing one takes a few lines. An auth check that refuses calls from
//! callers without a role:
//!
//! ```
//! use async_trait::async_trait;
//! use nova_rpc::{layer::{Call, Layer, Next}, RpcError};
//! use serde_json::Value;
//!
//! struct RequireRole(&'static str);
//!
//! #[async_trait]
//! impl Layer for RequireRole {
//!     async fn handle(&self, call: Call, next: Next<'_>) -> Result<Value, RpcError> {
//!         if !call.ctx.roles.iter().any(|r| r == self.0) {
//!             return Err(RpcError::remote("Forbidden", "auth", format!("{} needs role {}", call.method, self.0)));
//!         }
//!         next.run(call).await
//!     }
//! }
//! ```

pub mod metrics;
pub mod trace;

use std::{future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{RequestContext, Result};

/// Whether a request expects a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A call: the caller waits for the result.
    Call,
    /// A cast (or fanout cast): nobody waits.
    Cast,
}

/// One request, as a layer sees it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request context; layers may add keys (they travel as `_context_*`).
    pub ctx: RequestContext,
    /// The topic.
    pub topic: String,
    /// The server, when the request is addressed to one (client side) or
    /// the server handling it (server side).
    pub server: Option<String>,
    /// The API namespace.
    pub namespace: Option<String>,
    /// The requested version.
    pub version: Option<String>,
    /// The method.
    pub method: String,
    /// Its keyword arguments.
    pub args: Map<String, Value>,
    /// Call or cast.
    pub kind: CallKind,
}

/// A boxed future borrowing for `'a`.
pub type LayerFuture<'a> = Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;

/// What a stack of layers ends in: the dispatcher, or the client's send.
pub type Endpoint<'a> = &'a (dyn Fn(Call) -> LayerFuture<'a> + Send + Sync);

/// The rest of the stack after the current layer.
pub struct Next<'a> {
    layers: &'a [Arc<dyn Layer>],
    end: Endpoint<'a>,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("layers_left", &self.layers.len()).finish()
    }
}

impl<'a> Next<'a> {
    /// Run the remaining layers, then the endpoint.
    pub fn run(self, call: Call) -> LayerFuture<'a> {
        match self.layers.split_first() {
            Some((layer, rest)) => {
                let next = Next { layers: rest, end: self.end };
                let layer = layer.clone();
                Box::pin(async move { layer.handle(call, next).await })
            }
            None => (self.end)(call),
        }
    }
}

/// A middleware layer; see the module docs.
#[async_trait]
pub trait Layer: Send + Sync + 'static {
    /// Handle `call`, usually by passing it to `next`.
    async fn handle(&self, call: Call, next: Next<'_>) -> Result<Value>;
}

/// An ordered stack of layers, cheap to clone.
#[derive(Clone, Default)]
pub struct Layers(Arc<Vec<Arc<dyn Layer>>>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Layers({})", self.0.len())
    }
}

impl Layers {
    /// The stack with `layer` added innermost.
    pub fn with(&self, layer: Arc<dyn Layer>) -> Self {
        let mut v = self.0.as_ref().clone();
        v.push(layer);
        Self(Arc::new(v))
    }

    /// The layers, outermost first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Layer>> {
        self.0.iter()
    }

    /// Whether there are no layers (the fast path skips them entirely).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Run `call` through the stack into `end`.
    pub fn run<'a>(&'a self, call: Call, end: Endpoint<'a>) -> LayerFuture<'a> {
        Next { layers: &self.0, end }.run(call)
    }
}
