//! The serving side: consume, decode, dispatch, reply.
//!
//! An [`RpcServer`] listens on `topic`, `topic.host` and its own fanout
//! queue. Each request runs under a limit of `executor_thread_pool_size`
//! (64) concurrent requests, in its own task once it has to wait (a method
//! that returns without waiting is served in the server's loop); the broker's
//! prefetch is the same number, and a delivery is acknowledged only once a
//! slot is free, so a busy server pushes back on the broker instead of
//! buffering without bound. Requests carrying `_timeout` get call-monitor
//! heartbeats every `_timeout / 2` seconds while they run.
//!
//! Delivery is oslo's at-most-once by default: a message is acknowledged
//! before its method runs. [`RpcServer::with_at_least_once`] opts a target
//! into at-least-once: durable quorum queues, the acknowledgement after the
//! method returned (so a crash mid-method hands the message to the next
//! server), a failed cast given back to the queue, and after
//! `max_deliveries` attempts the message dead-lettered to `<topic>.dead`
//! rather than looping forever. Either way a window of recent `_unique_id`s
//! drops duplicates.
//!
//! Bad input never stops a server: a message that cannot be decoded is
//! logged in one line and settled, and the caller gets a clear failure when
//! its reply address can still be read.

//!
//! The pieces, in the order a request meets them: [`serving`] (the loops
//! that take deliveries, and serving in the sender's task), [`intake`]
//! (decode or reject, deduplicate, settle), [`request`] (dispatch through
//! the layers) and [`reply`] (the reply and the call-monitor heartbeats).

mod intake;
mod reply;
mod request;
mod serving;
mod slot;
#[cfg(test)]
mod tests;

pub use slot::{deadline, release_slot, MAX_WAITING};

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{watch, Semaphore};

use crate::{
    dedupe::SeenIds,
    dispatcher::Dispatcher,
    layer::{Call, Inner, Layer, Layers},
    transport::{ListenSpec, Queues, Transport},
    Result, RpcError, Target,
};

/// Builds and starts a server; see the module docs.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::{sync::Arc, time::Duration};
/// use nova_rpc::{dispatcher::{Dispatcher, Router}, transport, RequestContext, RpcError, RpcServer, Target, Version};
///
/// let t = transport::connect(transport::TransportOptions::new("memory://server-doc")).await.unwrap();
/// let router = Router::new(Version::new(1, 0))
///     .method("ping", |_ctx: RequestContext, _: serde_json::Map<String, serde_json::Value>| async { Ok::<_, RpcError>("pong") });
/// let running = RpcServer::new(t, Target::new("demo").with_server("h1"), Dispatcher::new(vec![Arc::new(router)]))
///     .with_executor_size(16)
///     .start()
///     .await
///     .unwrap();
/// // … serve until told to stop, then let what runs finish:
/// let report = running.stop(Duration::from_secs(60)).await;
/// assert_eq!(report.abandoned, 0);
/// # });
/// ```
#[derive(Debug)]
pub struct RpcServer {
    transport: Arc<dyn Transport>,
    target: Target,
    dispatcher: Dispatcher,
    executor_size: usize,
    durable: bool,
    max_deliveries: Option<u32>,
    layers: Layers,
    queues: Queues,
    work_slots: Option<Arc<Semaphore>>,
}

/// What every request of a server reads.
struct ServerState {
    transport: Arc<dyn Transport>,
    /// The exchange the topic is bound in (what a signature is bound to).
    exchange: String,
    topic: String,
    seen: Mutex<SeenIds>,
    /// At-least-once: the ids running now, each with the acknowledgers of
    /// copies that arrived meanwhile (a redelivery after a reconnect), which
    /// are settled the way the original is.
    in_flight: Mutex<std::collections::HashMap<String, Vec<Box<dyn crate::transport::Acknowledge>>>>,
    at_least_once: bool,
    max_deliveries: Option<u32>,
    layers: Layers,
    /// Where the layers end: the dispatcher.
    end: Inner,
    /// What serves a request when there are no layers.
    dispatcher: Dispatcher,
    server: String,
    /// Requests waiting without a slot ([`release_slot`]).
    waiting: Arc<Semaphore>,
}

impl ServerState {
    fn new(
        transport: Arc<dyn Transport>,
        (exchange, topic, server): (String, String, String),
        dispatcher: Dispatcher,
        layers: Layers,
        max_deliveries: Option<u32>,
    ) -> Self {
        let end: Inner = {
            let dispatcher = dispatcher.clone();
            Arc::new(move |c: Call| {
                dispatcher.dispatch(c.ctx, c.namespace.as_deref(), c.version.as_deref(), &c.method, c.args)
            })
        };
        Self {
            transport,
            exchange,
            end,
            dispatcher,
            topic,
            seen: Mutex::new(SeenIds::new(4096)),
            in_flight: Mutex::default(),
            at_least_once: max_deliveries.is_some(),
            max_deliveries,
            layers,
            server,
            waiting: Arc::new(Semaphore::new(slot::MAX_WAITING as usize)),
        }
    }
}

/// A running server. Dropping it does not stop it; call [`RunningServer::stop`].
#[derive(Debug)]
pub struct RunningServer {
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<StopReport>,
    health: crate::transport::Health,
}

/// How a server's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Requests that were still running when the graceful timeout ran out.
    pub abandoned: usize,
    /// Deliveries handed back to the broker without being dispatched.
    pub requeued: usize,
}

impl RpcServer {
    /// A server for `target` (its `topic` and `server`, which must be set).
    pub fn new(transport: Arc<dyn Transport>, target: Target, dispatcher: Dispatcher) -> Self {
        Self {
            transport,
            target,
            dispatcher,
            executor_size: 64,
            durable: false,
            max_deliveries: None,
            layers: Layers::default(),
            queues: Queues::All,
            work_slots: None,
        }
    }

    /// Serve the topic's shared queue as a work queue: a message is taken
    /// from the broker only once one of `slots` is free, and holds it until
    /// its method returns. What cannot start yet stays in the broker, where
    /// any other server of the topic with a free slot takes it (the pull
    /// model of a work queue), and where its depth shows the backlog.
    ///
    /// `slots` may be shared with the application (a compute's task slots,
    /// say), so that work arriving by other paths counts too. Pair it with
    /// a second server of the same target built with
    /// [`RpcServer::without_shared_queue`] for `topic.server` and fanout.
    pub fn as_work_queue(mut self, slots: Arc<Semaphore>) -> Self {
        self.queues = Queues::Work;
        self.work_slots = Some(slots);
        self
    }

    /// Consume only `topic.server` and the fanout queue: the shared `topic`
    /// queue is left to a work server ([`RpcServer::as_work_queue`]).
    pub fn without_shared_queue(mut self) -> Self {
        self.queues = Queues::Own;
        self
    }

    /// At most `n` requests at once (`executor_thread_pool_size`); also the prefetch.
    pub fn with_executor_size(mut self, n: usize) -> Self {
        self.executor_size = n.clamp(1, usize::from(u16::MAX));
        self
    }

    /// Declare the topic queues durable.
    pub fn with_durable_queues(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Add a middleware layer around the dispatcher (the first added is
    /// outermost); see [`crate::layer`].
    pub fn with_layer(mut self, layer: Arc<dyn Layer>) -> Self {
        self.layers = self.layers.with(layer);
        self
    }

    /// At-least-once delivery for this target (see the module docs): a
    /// message is attempted at most `max_deliveries` times, then
    /// dead-lettered to the `<topic>.dead` queue. Every server of the topic
    /// must agree, since it changes the queues' declaration.
    pub fn with_at_least_once(mut self, max_deliveries: u32) -> Self {
        self.durable = true;
        self.max_deliveries = Some(max_deliveries.max(1));
        self
    }

    /// Declare the topology, start consuming, and serve in the background.
    ///
    /// # Errors
    ///
    /// - [`RpcError::InvalidTarget`] when the target names no server;
    /// - [`RpcError::Transport`] when the broker cannot be reached or
    ///   refuses a declaration (a queue declared by others with other
    ///   arguments, say: the error names it).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it returns leaves nothing consuming;
    /// queues it declared stay, as they would for oslo.
    pub async fn start(self) -> Result<RunningServer> {
        let server = self.target.server.clone().ok_or_else(|| RpcError::InvalidTarget {
            target: self.target.to_string(),
            reason: "a server needs a server name (host)".into(),
        })?;
        let exchange =
            self.target.exchange.clone().unwrap_or_else(|| self.transport.options().control_exchange.clone());
        let spec = ListenSpec {
            exchange: exchange.clone(),
            topic: self.target.topic.clone(),
            server: server.clone(),
            prefetch: self.executor_size as u16,
            durable: self.durable,
            max_deliveries: self.max_deliveries,
            queues: self.queues,
        };
        let mut listener = self.transport.listen(spec).await?;
        let health = listener.health();
        let shared = Arc::new(ServerState::new(
            self.transport,
            (exchange, self.target.topic, server),
            self.dispatcher,
            self.layers,
            self.max_deliveries,
        ));
        let (stop, stopped) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.executor_size));
        if let Some(work) = self.work_slots {
            let done = tokio::spawn(serving::serve_work(shared, listener, work, slots, self.executor_size, stopped));
            return Ok(RunningServer { stop, done, health });
        }
        listener.serve_inline(Arc::new(serving::InlineServer::new(shared.clone(), slots.clone(), stopped.clone())));
        let done = tokio::spawn(serving::serve(shared, listener, slots, self.executor_size, stopped));
        Ok(RunningServer { stop, done, health })
    }
}

impl RunningServer {
    /// Which of the server's queues it is failing to consume, and since when.
    pub fn health(&self) -> crate::transport::Health {
        self.health.clone()
    }

    /// Stop consuming, hand undispatched messages back to the broker, and
    /// wait up to `graceful` for the requests in flight to finish.
    pub async fn stop(self, graceful: Duration) -> StopReport {
        let RunningServer { stop, mut done, .. } = self;
        stop.send_replace(true);
        let report = match tokio::time::timeout(graceful, &mut done).await {
            Ok(Ok(report)) => report,
            _ => {
                done.abort();
                StopReport { abandoned: usize::MAX, requeued: 0 }
            }
        };
        // Dropped only now: the loops see `true`, never a closed channel.
        drop(stop);
        report
    }
}
