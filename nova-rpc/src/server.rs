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

use std::{
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Waker},
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::{
    dedupe::SeenIds,
    dispatcher::Dispatcher,
    layer::{Call, CallKind, Layer, LayerFuture, Layers},
    transport::{Delivery, Destination, Direct, ListenSpec, Outgoing, Queues, Transport},
    wire::{self, Reply},
    RemoteFailure, Result, RpcError, Target,
};

/// Builds and starts a server; see the module docs.
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

struct Shared {
    transport: Arc<dyn Transport>,
    dispatcher: Dispatcher,
    topic: String,
    seen: Mutex<SeenIds>,
    /// At-least-once: the ids running now, each with the acknowledgers of
    /// copies that arrived meanwhile (a redelivery after a reconnect), which
    /// are settled the way the original is.
    in_flight: Mutex<std::collections::HashMap<String, Vec<Box<dyn crate::transport::Acknowledge>>>>,
    at_least_once: bool,
    max_deliveries: Option<u32>,
    layers: Layers,
    server: String,
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
    pub async fn start(self) -> Result<RunningServer> {
        let server = self.target.server.clone().ok_or_else(|| RpcError::InvalidTarget {
            target: self.target.to_string(),
            reason: "a server needs a server name (host)".into(),
        })?;
        let exchange =
            self.target.exchange.clone().unwrap_or_else(|| self.transport.options().control_exchange.clone());
        let spec = ListenSpec {
            exchange,
            topic: self.target.topic.clone(),
            server: server.clone(),
            prefetch: self.executor_size as u16,
            durable: self.durable,
            max_deliveries: self.max_deliveries,
            queues: self.queues,
        };
        let mut listener = self.transport.listen(spec).await?;
        let health = listener.health();
        let shared = Arc::new(Shared {
            transport: self.transport,
            dispatcher: self.dispatcher,
            topic: self.target.topic,
            seen: Mutex::new(SeenIds::new(4096)),
            in_flight: Mutex::default(),
            at_least_once: self.max_deliveries.is_some(),
            max_deliveries: self.max_deliveries,
            layers: self.layers,
            server,
        });
        let (stop, stopped) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.executor_size));
        if let Some(work) = self.work_slots {
            let done = tokio::spawn(serve_work(shared, listener, work, slots, self.executor_size, stopped));
            return Ok(RunningServer { stop, done, health });
        }
        listener.serve_directly(Arc::new(InPlace {
            shared: shared.clone(),
            slots: slots.clone(),
            stopped: stopped.clone(),
        }));
        let done = tokio::spawn(serve(shared, listener, slots, self.executor_size, stopped));
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
        self.stop.send_replace(true);
        let _ = self.stop.send(true);
        let mut done = self.done;
        let _keep = self.stop;
        match tokio::time::timeout(graceful, &mut done).await {
            Ok(Ok(report)) => report,
            _ => {
                done.abort();
                StopReport { abandoned: usize::MAX, requeued: 0 }
            }
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    mut listener: crate::transport::Listener,
    slots: Arc<Semaphore>,
    limit: usize,
    mut stopped: watch::Receiver<bool>,
) -> StopReport {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            d = listener.recv() => match d { Some(d) => d, None => break },
        };
        let slot = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => {
                delivery.into_parts().1.requeue().await;
                break;
            }
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
        };
        run_request(shared.clone(), delivery, slot, Served::InLoop);
    }
    wind_down(listener, &slots, limit).await
}

/// Hand back what was not taken, then wait for the requests running
/// (each holds one of `running`) to finish.
async fn wind_down(mut listener: crate::transport::Listener, running: &Semaphore, limit: usize) -> StopReport {
    let requeued = listener.stop_and_requeue().await;
    let busy = running.acquire_many(limit as u32).await.map(|p| p.forget());
    drop(listener);
    StopReport { abandoned: usize::from(busy.is_err()), requeued }
}

/// A work queue's loop: wait for a free work slot, take one message, stop
/// consuming, serve it holding a slot (see [`RpcServer::as_work_queue`]).
/// No slot is held while waiting for a message, so work arriving by other
/// paths can take the slots meanwhile; if it takes the last one, the one
/// message received then waits here, unacknowledged, for the next free slot.
/// `running` counts what runs, so a stop can wait for it.
async fn serve_work(
    shared: Arc<Shared>,
    mut listener: crate::transport::Listener,
    work: Arc<Semaphore>,
    running: Arc<Semaphore>,
    limit: usize,
    mut stopped: watch::Receiver<bool>,
) -> StopReport {
    loop {
        tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            free = work.acquire() => if free.is_err() { break },
        }
        let Ok(tracked) = running.clone().acquire_owned().await else { break };
        tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            () = listener.resume() => {}
        }
        let delivery = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            d = listener.recv() => match d { Some(d) => d, None => break },
        };
        // Nothing more comes before the next free slot: the broker keeps it.
        let slot = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => None,
            (_, slot) = async { tokio::join!(listener.pause(), work.clone().acquire_owned()) } => slot.ok(),
        };
        let Some(slot) = slot else {
            delivery.into_parts().1.requeue().await;
            break;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(&shared, delivery, Served::InLoop).await;
            drop((slot, tracked));
        });
    }
    wind_down(listener, &running, limit).await
}

/// Start a request: it is served right here when its method returns
/// without waiting (saving a hand-over to another task), otherwise it goes
/// on in a task of its own. The first poll has no one to wake; the task's
/// first poll registers its wake-ups again, as every future must.
fn run_request(shared: Arc<Shared>, delivery: Delivery, slot: OwnedSemaphorePermit, served: Served) {
    let mut request = Box::pin(async move {
        handle(&shared, delivery, served).await;
        drop(slot);
    });
    if request.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
        tokio::spawn(request);
    }
}

/// Serves requests in the sender's task when the transport offers them
/// (the in-process transport does, to an idle server; see [`Direct`]).
struct InPlace {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
}

impl Direct for InPlace {
    fn reserve(&self) -> Option<Box<dyn FnOnce(Delivery) + Send>> {
        if *self.stopped.borrow() {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let shared = self.shared.clone();
        Some(Box::new(move |delivery| run_request(shared, delivery, slot, Served::InCallersTask)))
    }
}

/// How a delivery ends.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

/// Take a request in: `None` when it is a duplicate, already settled or
/// held beside its running original.
fn intake(
    shared: &Shared,
    id: &str,
    acker: Box<dyn crate::transport::Acknowledge>,
) -> Option<Box<dyn crate::transport::Acknowledge>> {
    if id.is_empty() {
        return Some(acker);
    }
    let mut seen = crate::lock(&shared.seen);
    if !shared.at_least_once {
        if seen.insert(id) {
            return Some(acker);
        }
    } else if !seen.contains(id) {
        match crate::lock(&shared.in_flight).entry(id.to_owned()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Vec::new());
                return Some(acker);
            }
            std::collections::hash_map::Entry::Occupied(mut running) => {
                tracing::info!(topic = %shared.topic, unique_id = %id, "a copy of a running message arrived; it ends as the original does");
                running.get_mut().push(acker);
                return None;
            }
        }
    }
    drop(seen);
    tracing::info!(topic = %shared.topic, unique_id = %id, "dropping duplicate message");
    let settle = acker.ack();
    tokio::spawn(settle);
    None
}

/// Settle an at-least-once message and every copy held beside it, and
/// remember its id as done unless it goes back to the queue.
async fn settle_in_flight(shared: &Shared, id: &str, how: Settle, acker: Box<dyn crate::transport::Acknowledge>) {
    let mut ackers = vec![acker];
    if !id.is_empty() {
        ackers.extend(crate::lock(&shared.in_flight).remove(id).unwrap_or_default());
        if !matches!(how, Settle::Requeue) {
            crate::lock(&shared.seen).insert(id);
        }
    }
    // The newest copy is the one a live channel holds (an older one may sit
    // on a connection that is gone): it carries the verdict, the others are acked.
    for (i, a) in ackers.into_iter().rev().enumerate() {
        match how {
            Settle::Requeue if i == 0 => a.requeue().await,
            Settle::Reject if i == 0 => a.reject().await,
            _ => a.ack().await,
        }
    }
}

/// On a signed topic, the key that verified `body`; elsewhere `None`.
fn verify_signature(shared: &Shared, body: &[u8]) -> Result<Option<String>, crate::signing::SignatureError> {
    match &shared.transport.options().signing {
        Some(s) if s.applies_to(&shared.topic) => s.verify(body).map(Some),
        _ => Ok(None),
    }
}

fn malformed(topic: &str) {
    crate::metrics::metrics().malformed.get_or_create(&crate::metrics::TopicLabels { topic: topic.to_owned() }).inc();
}

async fn handle(shared: &Shared, delivery: Delivery, served: Served) {
    let deadline = delivery.deadline;
    let delivery_count = delivery.delivery_count;
    let (body, acker) = delivery.into_parts();
    let max = shared.transport.options().max_message_size;
    if body.len() > max {
        tracing::warn!(topic = %shared.topic, size = body.len(), max, "rejecting message larger than max_message_size");
        malformed(&shared.topic);
        acker.reject().await;
        // Tell the caller, when its reply address can be read.
        let (msg_id, reply_q) = match wire::decode_request(&body) {
            Ok(r) => (r.msg_id, r.reply_q),
            Err(bad) => (bad.msg_id, bad.reply_q),
        };
        if let (Some(msg_id), Some(reply_q)) = (msg_id, reply_q) {
            let reason = format!("message of {} bytes is larger than max_message_size ({max})", body.len());
            let failure = RemoteFailure::new("MessageTooLarge", "nova_rpc.server", reason);
            send_reply(shared, &reply_q, &msg_id, Err(failure), deadline).await;
        }
        return;
    }
    let signed_by = match verify_signature(shared, &body) {
        Ok(by) => by,
        Err(e) => {
            tracing::warn!(topic = %shared.topic, error = %e, "refusing a request whose signature does not verify");
            malformed(&shared.topic);
            acker.reject().await;
            if let Ok(r) = wire::decode_request(&body) {
                if let (Some(msg_id), Some(reply_q)) = (r.msg_id, r.reply_q) {
                    let failure = RemoteFailure::new(e.class(), "nova_rpc.signing", e.to_string());
                    send_reply(shared, &reply_q, &msg_id, Err(failure), deadline).await;
                }
            }
            return;
        }
    };
    let mut request = match wire::decode_request(&body) {
        Ok(r) => r,
        Err(bad) => {
            tracing::warn!(topic = %shared.topic, error = %bad, "rejecting malformed message");
            malformed(&shared.topic);
            acker.reject().await;
            if let (Some(msg_id), Some(reply_q)) = (bad.msg_id, bad.reply_q) {
                let failure = RemoteFailure::new("MalformedMessage", "nova_rpc.wire", bad.reason);
                send_reply(shared, &reply_q, &msg_id, Err(failure), deadline).await;
            }
            return;
        }
    };
    request.context.signed_by = signed_by;
    // At-most-once records the id on receipt. At-least-once records it only
    // once the method succeeded, so a failed attempt can be tried again, and
    // meanwhile holds it as in flight so concurrent copies run once: a copy
    // that arrives while the original runs (redelivered after a reconnect)
    // is settled with the original's outcome, so neither is lost.
    let Some(acker) = intake(shared, &request.unique_id, acker) else { return };
    // At-least-once: handed back more than `max_deliveries` times (the
    // broker's x-delivery-count, which RabbitMQ 3.x and 4.x both keep), a
    // message is dead-lettered unrun.
    if let Some(max) = shared.max_deliveries.filter(|max| delivery_count > *max) {
        tracing::warn!(topic = %shared.topic, unique_id = %request.unique_id, attempts = delivery_count, max, "dead-lettering a message that failed too often");
        settle_in_flight(shared, &request.unique_id, Settle::Reject, acker).await;
        return;
    }
    // oslo's default is at-most-once: acknowledge before dispatching.
    let mut acker = Some(acker);
    if !shared.at_least_once {
        if let Some(a) = acker.take() {
            a.ack().await;
        }
    }
    // A root span: a request served in its caller's task is not part of the caller's.
    let span = tracing::info_span!(parent: None, "rpc", request_id = %request.context.request_id, topic = %shared.topic, method = %request.method);
    let served = async {
        let started = Instant::now();
        let heartbeat = match (&request.msg_id, &request.reply_q, request.monitor_timeout) {
            (Some(msg_id), Some(reply_q), Some(t)) if t > 0.0 => {
                Some(spawn_heartbeat(shared, reply_q.clone(), msg_id.clone(), t))
            }
            _ => None,
        };
        let end = |c: Call| -> LayerFuture<'_> {
            shared.dispatcher.dispatch(c.ctx, c.namespace.as_deref(), c.version.as_deref(), &c.method, c.args)
        };
        let call = Call {
            ctx: request.context,
            topic: shared.topic.clone(),
            server: Some(shared.server.clone()),
            namespace: request.namespace,
            version: request.version,
            method: request.method.clone(),
            args: request.args,
            kind: if request.msg_id.is_some() { CallKind::Call } else { CallKind::Cast },
        };
        let call = if shared.layers.is_empty() { end(call) } else { shared.layers.run(call, &end) };
        let outcome = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(RpcError::remote("Panic", "nova_rpc.server", format!("method {} panicked", request.method))),
        };
        if let Some(h) = heartbeat {
            h.abort();
        }
        let is_call = request.msg_id.is_some();
        match &outcome {
            Ok(_) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "served"),
            // The caller gets the error back.
            Err(e) if is_call => tracing::info!(error = %e, class = e.class(), "method failed"),
            // Nobody else will ever see this one.
            Err(e) => tracing::warn!(method = %request.method, class = e.class(), error = %e, "cast failed"),
        }
        let failed = outcome.is_err();
        if let (Some(msg_id), Some(reply_q)) = (&request.msg_id, &request.reply_q) {
            send_reply(shared, reply_q, msg_id, outcome.map_err(|e| e.to_failure()), deadline).await;
        }
        if served == Served::InCallersTask && has_after_reply() {
            // The caller's task has its reply: let it go on, and run the
            // hooks in a task of their own.
            tokio::task::yield_now().await;
        }
        run_after_reply();
        if let Some(a) = acker {
            // At-least-once: a failed cast goes back to the queue, or to the
            // dead-letter queue on its last attempt; anything else is done.
            let how = match (failed && !is_call, shared.max_deliveries) {
                (true, Some(max)) if delivery_count >= max => Settle::Reject,
                (true, _) => Settle::Requeue,
                (false, _) => Settle::Ack,
            };
            if matches!(how, Settle::Requeue) {
                tracing::warn!(delivery = delivery_count + 1, "cast failed; handing it back for another attempt");
            }
            settle_in_flight(shared, &request.unique_id, how, a).await;
        }
    }
    .instrument(span);
    AFTER_REPLY.scope(std::cell::RefCell::new(Vec::new()), served).await;
}

tokio::task_local! {
    static AFTER_REPLY: std::cell::RefCell<Vec<Box<dyn FnOnce() + Send>>>;
}

/// Run `f` once the reply to the request being served has been sent (or,
/// for a cast, once its method returned) — how a layer records what it saw
/// without delaying the caller. Outside a server's request it runs at once.
pub fn after_reply(f: impl FnOnce() + Send + 'static) {
    let mut f = Some(Box::new(f) as Box<dyn FnOnce() + Send>);
    let _ = AFTER_REPLY.try_with(|hooks| {
        if let Some(f) = f.take() {
            hooks.borrow_mut().push(f);
        }
    });
    if let Some(f) = f {
        f();
    }
}

/// Where a request started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// In the server's loop (or, once it waited, its own task).
    InLoop,
    /// In the task that sent it ([`Direct`]).
    InCallersTask,
}

fn has_after_reply() -> bool {
    AFTER_REPLY.try_with(|h| !h.borrow().is_empty()).unwrap_or(false)
}

fn run_after_reply() {
    let hooks = AFTER_REPLY.try_with(|h| std::mem::take(&mut *h.borrow_mut())).unwrap_or_default();
    for f in hooks {
        f();
    }
}

fn spawn_heartbeat(shared: &Shared, reply_q: String, msg_id: String, monitor: f64) -> tokio::task::JoinHandle<()> {
    let transport = shared.transport.clone();
    let every = Duration::from_secs_f64((monitor / 2.0).max(0.05));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let beat = Reply {
                result: Value::Null,
                failure: None,
                ending: false,
                msg_id: msg_id.clone(),
                unique_id: wire::new_id(),
            };
            let Ok(body) = wire::encode_reply(&beat) else { return };
            let message = Outgoing { retry: Some(0), ..Outgoing::new(body) };
            if let Err(e) = transport.send(&Destination::Reply { queue: reply_q.clone() }, message).await {
                tracing::debug!(error = %e, "call-monitor heartbeat not sent");
            }
        }
    })
}

async fn send_reply(
    shared: &Shared,
    reply_q: &str,
    msg_id: &str,
    outcome: Result<Value, RemoteFailure>,
    deadline: Option<Instant>,
) {
    let (result, failure) = match outcome {
        Ok(v) => (v, None),
        Err(f) => (Value::Null, Some(f)),
    };
    let reply = Reply { result, failure, ending: true, msg_id: msg_id.to_owned(), unique_id: wire::new_id() };
    let body: bytes::Bytes = match wire::encode_reply(&reply) {
        Ok(b) => b.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode reply");
            return;
        }
    };
    let options = shared.transport.options();
    let give_up = {
        let missing = Instant::now() + options.rabbit.kombu_missing_consumer_retry_timeout;
        deadline.map_or(missing, |d| d.min(missing))
    };
    let destination = Destination::Reply { queue: reply_q.to_owned() };
    let mut pause = Duration::from_millis(50);
    loop {
        let message = Outgoing { retry: Some(3), deadline: Some(give_up), ..Outgoing::new(body.clone()) };
        match shared.transport.send(&destination, message).await {
            Ok(()) => return,
            Err(e) if Instant::now() + pause < give_up => {
                tracing::debug!(error = %e, reply_q, "reply not delivered yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(error = %e, reply_q, msg_id, "dropping reply: reply queue unreachable");
                return;
            }
        }
    }
}
