//! Middleware: layers around the dispatcher (server side) and the client.
//!
//! A [`Layer`] sees each request as a [`Call`] — context, target, method,
//! arguments (as JSON text, [`Args`]; [`Args::to_map`] or [`Args::parse`]
//! read them) — and returns the result as JSON text ([`Payload`]). It decides what happens next: pass it on with
//! [`Next::run`], change it, refuse it, or time it. Layers stack in the
//! order they are added, the first added outermost, like tower's
//! `ServiceBuilder`. [`RpcServer::with_layer`](crate::RpcServer::with_layer)
//! wraps the dispatcher; [`RpcClient::with_layer`](crate::RpcClient::with_layer)
//! wraps calls and casts before they are encoded and sent.
//!
//! A [`Next`] owns what it needs (an `Arc` of the remaining stack and of
//! the end), so a layer may keep it, move it into a task, or hand it to a
//! tower service: with the `tower` feature, [`tower::TowerLayer`] puts
//! tower's `Timeout`, `ConcurrencyLimit`, `RateLimit` and the rest around
//! dispatch.
//!
//! What a layer wants done once the reply has left (recording a span,
//! say) goes in the request's [`AfterReply`]: the server runs it after
//! sending the reply, so the caller never waits for it.
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
//! use nova_rpc::{layer::{Call, Layer, Next}, Payload, RpcError};
//!
//! struct RequireRole(&'static str);
//!
//! #[async_trait]
//! impl Layer for RequireRole {
//!     async fn handle(&self, call: Call, next: Next) -> Result<Payload, RpcError> {
//!         if !call.ctx.roles.iter().any(|r| r == self.0) {
//!             return Err(RpcError::remote("Forbidden", "auth", format!("{} needs role {}", call.method, self.0)));
//!         }
//!         next.run(call).await
//!     }
//! }
//! ```

pub mod metrics;
#[cfg(feature = "tower")]
pub mod tower;
pub mod trace;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use crate::{Args, Payload, RequestContext, Result};
use async_trait::async_trait;

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
    pub args: Args,
    /// Call or cast.
    pub kind: CallKind,
    /// What runs once the reply is sent; see [`AfterReply`].
    pub after_reply: AfterReply,
}

type Hook = Box<dyn FnOnce() + Send>;

/// Work a layer leaves for after the reply: a server runs it once the
/// reply is sent (or, for a cast, once the method returned), so the caller
/// does not wait for it. Clones share the list, so a layer keeps a clone
/// before passing the [`Call`] on.
///
/// A client's calls carry [`AfterReply::now`]: there is no reply to wait
/// for, so work added runs at once.
#[derive(Clone, Default)]
pub struct AfterReply(Option<Arc<Mutex<Vec<Hook>>>>);

impl std::fmt::Debug for AfterReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterReply").field("deferred", &self.0.is_some()).finish()
    }
}

impl AfterReply {
    /// A list whose work waits for [`AfterReply::run`].
    pub fn deferred() -> Self {
        Self(Some(Arc::default()))
    }

    /// No list: work added runs at once.
    pub fn now() -> Self {
        Self(None)
    }

    /// Add work (or run it now, when nothing defers it).
    pub fn push(&self, work: impl FnOnce() + Send + 'static) {
        match &self.0 {
            Some(list) => crate::lock(list).push(Box::new(work)),
            None => work(),
        }
    }

    /// Whether work is waiting.
    pub fn is_pending(&self) -> bool {
        self.0.as_ref().is_some_and(|list| !crate::lock(list).is_empty())
    }

    /// Run the work waiting, in the order it was added.
    pub fn run(&self) {
        let Some(list) = &self.0 else { return };
        let hooks = std::mem::take(&mut *crate::lock(list));
        for hook in hooks {
            hook();
        }
    }
}

/// A boxed request future, owning what it uses.
pub type LayerFuture = Pin<Box<dyn Future<Output = Result<Payload>> + Send + 'static>>;

/// What a stack of layers ends in: the dispatcher, or the client's send.
pub type Inner = Arc<dyn Fn(Call) -> LayerFuture + Send + Sync>;

/// The rest of the stack after the current layer. It owns its parts, so
/// it can be kept, moved into a task or handed to a tower service.
#[derive(Clone)]
pub struct Next {
    layers: Layers,
    index: usize,
    end: Inner,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("layers_left", &(self.layers.0.len() - self.index)).finish()
    }
}

impl Next {
    /// Run the remaining layers, then the endpoint.
    pub fn run(self, call: Call) -> LayerFuture {
        match self.layers.0.get(self.index).cloned() {
            Some(layer) => {
                let next = Next { index: self.index + 1, ..self };
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
    async fn handle(&self, call: Call, next: Next) -> Result<Payload>;
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
    pub fn run(&self, call: Call, end: Inner) -> LayerFuture {
        Next { layers: self.clone(), index: 0, end }.run(call)
    }
}
