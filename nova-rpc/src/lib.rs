//! Nova-style RPC over AMQP, on oslo.messaging's wire format.
//!
//! The path of one call, a module per arrow:
//!
//! ```text
//! RpcClient::call(ctx, "method", args)          client
//!   → Request {method, args, _context_*, …}     wire (oslo envelope 2.0)
//!   → Transport::send                           transport::{amqp, memory}
//!   → RpcServer consumes topic | topic.host     server
//!   → Dispatcher (namespace, version, method)   dispatcher
//!   → Reply (result | failure, ending)          wire
//!   → ReplyRouter matches _msg_id → caller      reply
//! ```
//!
//! A Rust service and a Python oslo.messaging service on the same broker
//! can call each other: the envelope, properties and topology are oslo's.
//!
//! Arguments travel by name, as a JSON object, and a method reads them
//! into a struct of its own; `#[rpc_api]` in `nova-core` writes these
//! structs and routers from plain method signatures.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//!
//! use nova_rpc::{dispatcher::{Dispatcher, Router}, transport, RequestContext, RpcClient, RpcError, RpcServer, Target, Version};
//!
//! #[derive(serde::Deserialize)]
//! struct Add {
//!     a: i64,
//!     b: i64,
//! }
//!
//! let t = transport::connect(transport::TransportOptions::new("memory://lib-doc")).await?;
//! let api = Router::new(Version::new(1, 0))
//!     .method("add", |_ctx: RequestContext, Add { a, b }: Add| async move { Ok::<_, RpcError>(a + b) });
//! let server = RpcServer::new(t.clone(), Target::new("calc").with_server("h1"), Dispatcher::new(vec![Arc::new(api)]))
//!     .start().await?;
//! let client = RpcClient::new(t, Target::new("calc"));
//! let sum = client.call(&RequestContext::new(), "add", serde_json::json!({"a": 2, "b": 3})).await?;
//! assert_eq!(sum, 5);
//! server.stop(std::time::Duration::from_secs(1)).await;
//! # Ok::<(), RpcError>(()) }).unwrap();
//! ```

pub mod client;
pub mod context;
pub mod dedupe;
pub mod dispatcher;
pub mod error;
pub mod id;
pub mod layer;
pub mod mask;
pub mod metrics;
pub mod notify;
pub mod payload;
pub mod pyjson;
pub mod reply;
pub mod server;
pub mod signing;
pub mod target;
pub mod transport;
pub mod wire;

/// Lock `m`, going on with its data if a holder panicked: every lock here
/// guards bookkeeping that stays valid between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use client::RpcClient;
pub use context::RequestContext;
pub use error::{RemoteFailure, Result, RpcError};
pub use payload::{Args, Payload};
pub use server::{RpcServer, RunningServer, StopReport};
pub use target::{Target, Version};
