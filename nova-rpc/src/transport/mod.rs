//! Transports: how encoded messages move between clients and servers.
//!
//! A [`Transport`] publishes bytes to a [`Destination`], hands a server a
//! [`Listener`] of [`Delivery`]s, and hands a client's replies to a
//! [`ReplySink`] as they arrive. Two
//! implementations are chosen by the URL's scheme in [`connect`]:
//!
//! * `rabbit://`, `amqp://`, `amqps://` → [`amqp::AmqpTransport`], on lapin,
//!   with oslo.messaging's topology, publisher confirms and reconnects;
//! * `memory://[name]` → [`memory::MemoryTransport`], in-process with the same
//!   routing semantics (topic, `topic.server`, fanout, replies).
//!
//! The transport knows nothing of methods or versions: that is the
//! dispatcher's job, one arrow further along the call path.

pub mod amqp;
pub mod memory;
mod options;
mod url;

use std::{borrow::Cow, sync::Arc, time::Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use self::options::{InvalidCombination, RabbitOptions, TransportOptions};
pub use self::url::{HostAddress, TransportUrl};
use crate::Result;

/// Where a message is published. The names are borrowed where the sender
/// holds them (a call builds none of them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination<'a> {
    /// The topic exchange, routing key `topic` or `topic.server`.
    Topic {
        /// The exchange (`control_exchange` unless the target says otherwise).
        exchange: Cow<'a, str>,
        /// `topic` or `topic.server`.
        routing_key: Cow<'a, str>,
    },
    /// Every server of a topic, through the `topic_fanout` exchange.
    Fanout {
        /// The topic.
        topic: Cow<'a, str>,
    },
    /// A notification: the topic exchange, routing key `<topic>.<priority>`.
    /// A queue of that name is declared and bound first (once per
    /// connection), so notifications wait there until a listener comes, as
    /// oslo's notifier does.
    Notification {
        /// The exchange (`control_exchange` unless the target says otherwise).
        exchange: Cow<'a, str>,
        /// `<topic>.<priority>`.
        routing_key: Cow<'a, str>,
    },
    /// A client's reply queue, through the default exchange, `mandatory`.
    Reply {
        /// The `reply_<uuid>` queue.
        queue: Cow<'a, str>,
    },
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The encoded body.
    pub body: Bytes,
    /// Time to live in the queue (AMQP `expiration`), set on calls.
    pub ttl: Option<std::time::Duration>,
    /// How many times to reconnect and try again before failing; `None` retries
    /// until the broker comes back.
    pub retry: Option<u32>,
    /// When to give up waiting for the broker to take it (a blocked or
    /// unreachable broker); `None`: no limit beyond `retry`.
    pub deadline: Option<Instant>,
    /// Refuse it ([`RpcError::Unroutable`](crate::RpcError::Unroutable)) when
    /// no queue takes it, instead of the broker dropping it (a cast to an
    /// at-least-once target must never be confirmed and then dropped).
    pub mandatory: bool,
}

impl Outgoing {
    /// A message with no TTL, retried until the broker takes it, with no deadline.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self { body: body.into(), ttl: None, retry: None, deadline: None, mandatory: false }
    }
}

/// What a server listens to: `topic`, `topic.server`, and its own fanout queue.
#[derive(Debug, Clone)]
pub struct ListenSpec {
    /// The topic exchange.
    pub exchange: String,
    /// The topic.
    pub topic: String,
    /// This server's name (the `host`).
    pub server: String,
    /// How many unacknowledged messages the broker may hand over at once.
    pub prefetch: u16,
    /// Declare the topic queues durable (at-least-once casts survive a broker restart).
    pub durable: bool,
    /// At-least-once delivery: a message handed back more than this many
    /// times is dead-lettered to [`dead_letter_queue`].
    pub max_deliveries: Option<u32>,
    /// Which of the server's queues to consume.
    pub queues: Queues,
}

/// What a notification listener consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSpec {
    /// `(exchange, <topic>.<priority>)` for each target and priority.
    pub bindings: Vec<(String, String)>,
    /// Which queue they are read from.
    pub queue: NotificationQueue,
    /// How many unacknowledged notifications the broker may hand over at once.
    pub prefetch: u16,
}

/// Where a notification listener reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationQueue {
    /// oslo's default: the queue named after each routing key, shared with
    /// every other listener that names no pool (and filled by the notifier
    /// even before anyone listens).
    Shared,
    /// A named pool: one queue of that name bound to every routing key, so
    /// each pool gets every notification and a pool's listeners share them.
    Pool(String),
    /// A queue of this listener's own, deleted when it stops (and expiring
    /// if it is left behind): it sees every notification from now on and
    /// takes none from anybody else. For watching (`nova-rpc listen`).
    Private,
}

/// Which of a server's queues a listener consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Queues {
    /// `topic`, `topic.server` and the server's fanout queue.
    #[default]
    All,
    /// `topic.server` and the fanout queue: the shared `topic` queue is
    /// consumed by a work listener of the same server.
    Own,
    /// Only the shared `topic` queue, as a work queue: one message at a time
    /// and only between [`Listener::resume`] and [`Listener::pause`], so
    /// what the server cannot start yet stays in the broker for another.
    Work,
}

impl Queues {
    /// Whether the shared `topic` queue is consumed.
    pub fn shared(self) -> bool {
        self != Queues::Own
    }

    /// Whether `topic.server` and the fanout queue are consumed.
    pub fn own(self) -> bool {
        self != Queues::Work
    }
}

/// One received message, to be acknowledged exactly once.
pub struct Delivery {
    /// The raw body.
    pub body: Bytes,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// When the message expires (from its TTL), if it has one.
    pub deadline: Option<Instant>,
    /// How often it was delivered before (quorum queues' `x-delivery-count`).
    pub delivery_count: u32,
    acker: Box<dyn Acknowledge>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("len", &self.body.len()).field("redelivered", &self.redelivered).finish()
    }
}

impl Delivery {
    /// A delivery with its acknowledger.
    pub fn new(body: Bytes, acker: Box<dyn Acknowledge>) -> Self {
        Self { body, redelivered: false, deadline: None, delivery_count: 0, acker }
    }

    /// Split into body and acknowledger.
    pub fn into_parts(self) -> (Bytes, Box<dyn Acknowledge>) {
        (self.body, self.acker)
    }
}

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with it.
    Ack,
    /// Give it back to the queue.
    Requeue,
    /// Drop it (or dead-letter it).
    Reject,
}

/// What became of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// Sent on a live channel: the broker forgets the message.
    Done,
    /// Not sent: the channel or connection is gone, so the broker keeps
    /// the message and hands it out again.
    Failed,
    /// No answer in time: the broker may or may not have it.
    Unknown,
}

/// Settles a delivery with the broker.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    /// Done with it: the broker forgets it (see [`Acked`]).
    async fn ack(self: Box<Self>) -> Acked;
    /// Not processed: give it back to the queue for another consumer.
    async fn requeue(self: Box<Self>);
    /// Unprocessable: drop it (or dead-letter it, where the queue says so).
    async fn reject(self: Box<Self>);
}

/// Where a [`Listener`]'s deliveries come from: each transport has its own.
#[async_trait]
pub trait Source: Send {
    /// The next delivery; `None` once stopped and drained.
    async fn next(&mut self) -> Option<Delivery>;
    /// Stop consuming: nothing new arrives after what was already handed over.
    fn stop(&mut self);
    /// Offer deliveries to `direct` in the sender's task while this
    /// consumer is idle, where the transport can (see [`InlineServing`]).
    fn serve_inline(&mut self, direct: Arc<dyn InlineServing>) {
        let _ = direct;
    }
    /// Work queues: take nothing more from the broker until resumed.
    /// Returns once the transport has stopped consuming. A source that
    /// takes a message only when asked for one has nothing to do.
    async fn pause(&mut self) {}
    /// Work queues: consume again (one message at a time).
    async fn resume(&mut self) {}
}

/// Serves a delivery at once, in the task that sent it.
///
/// A server hands one to its listener ([`Listener::serve_inline`]); the
/// in-process transport then gives a message for an idle server straight to
/// it instead of queueing it and waking the server's task, so a call whose
/// method does not wait runs start to finish in the caller's task. Over a
/// broker there is no sender's task to run in, and this is never used.
pub trait InlineServing: Send + Sync {
    /// Room for one more request now? Then the function that serves it.
    fn reserve(&self) -> Option<Box<dyn FnOnce(Delivery) + Send>>;
}

/// Which of a listener's queues are not being consumed, and since when.
///
/// A transport marks a queue here while it cannot consume it (its
/// consumer was cancelled and its node is down, or the connection is
/// lost), so a service can stop reporting itself up when it has been deaf
/// for too long. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<std::sync::Mutex<std::collections::HashMap<String, (Instant, String)>>>);

impl Health {
    /// `queue` is consumed (again).
    pub fn consumed(&self, queue: &str) {
        crate::lock(&self.0).remove(queue);
    }

    /// `queue` is not consumed, for `why`; the first time counts.
    pub fn not_consumed(&self, queue: &str, why: &str) {
        crate::lock(&self.0).entry(queue.to_owned()).or_insert_with(|| (Instant::now(), why.to_owned()));
    }

    /// The queue deaf the longest: its name, for how long, and why.
    pub fn longest_deaf(&self) -> Option<(String, std::time::Duration, String)> {
        crate::lock(&self.0)
            .iter()
            .min_by_key(|(_, (since, _))| *since)
            .map(|(q, (since, why))| (q.clone(), since.elapsed(), why.clone()))
    }
}

/// A stream of deliveries from one or more queues.
pub struct Listener {
    source: Box<dyn Source>,
    health: Health,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// A source fed through a bounded channel by a consumer task that watches
/// `stop`, and, for a work queue, takes `flow` commands.
struct Channel {
    deliveries: mpsc::Receiver<Delivery>,
    stop: watch::Sender<bool>,
    flow: Option<mpsc::UnboundedSender<Flow>>,
}

/// A work listener's command to its consumer task: consume (`true`) or not,
/// answered once done.
pub type Flow = (bool, tokio::sync::oneshot::Sender<()>);

impl Channel {
    async fn flow(&self, consume: bool) {
        if let Some(flow) = &self.flow {
            let (done, applied) = tokio::sync::oneshot::channel();
            if flow.send((consume, done)).is_ok() {
                let _ = applied.await;
            }
        }
    }
}

#[async_trait]
impl Source for Channel {
    async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    fn stop(&mut self) {
        self.stop.send_replace(true);
    }

    async fn pause(&mut self) {
        self.flow(false).await;
    }

    async fn resume(&mut self) {
        self.flow(true).await;
    }
}

impl Listener {
    /// A listener fed by `deliveries`; the feeder watches `stop`.
    pub fn new(deliveries: mpsc::Receiver<Delivery>, stop: watch::Sender<bool>) -> Self {
        Self::from_source(Channel { deliveries, stop, flow: None })
    }

    /// A work listener fed by `deliveries`, whose feeder consumes only
    /// while told to through `flow`.
    pub fn with_flow(
        deliveries: mpsc::Receiver<Delivery>,
        stop: watch::Sender<bool>,
        flow: mpsc::UnboundedSender<Flow>,
    ) -> Self {
        Self::from_source(Channel { deliveries, stop, flow: Some(flow) })
    }

    /// A listener over a transport's own source.
    pub fn from_source(source: impl Source + 'static) -> Self {
        Self { source: Box::new(source), health: Health::default() }
    }

    /// Report consumption trouble through `health` (see [`Health`]).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Which queues this listener is failing to consume.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The next delivery; `None` once the listener has stopped and drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.source.next().await
    }

    /// Let the transport hand deliveries to `direct` while this listener is
    /// idle (see [`InlineServing`]); those never come out of [`Listener::recv`].
    pub fn serve_inline(&mut self, direct: Arc<dyn InlineServing>) {
        self.source.serve_inline(direct);
    }

    /// A work queue's listener: take nothing more from the broker until
    /// [`Listener::resume`]; returns once consuming has stopped.
    pub async fn pause(&mut self) {
        self.source.pause().await;
    }

    /// A work queue's listener: take the next message from the broker.
    pub async fn resume(&mut self) {
        self.source.resume().await;
    }

    /// Stop consuming: no new messages arrive after the ones already handed over.
    pub fn stop(&mut self) {
        self.source.stop();
    }

    /// Stop, and give every delivery not yet taken back to the broker.
    pub async fn stop_and_requeue(&mut self) -> usize {
        self.stop();
        let mut n = 0;
        while let Some(d) = self.recv().await {
            d.acker.requeue().await;
            n += 1;
        }
        n
    }
}

/// Takes a client's replies as the transport receives them (already
/// acknowledged), in the transport's own task: it must not block.
pub type ReplySink = Arc<dyn Fn(Bytes) + Send + Sync>;

/// A client's reply queue being consumed; dropping it stops the consumer
/// and deletes the queue.
pub struct ReplyQueue {
    close: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ReplyQueue {
    /// A reply queue that runs `close` when dropped.
    pub fn new(close: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self { close: Some(Box::new(close)) }
    }
}

impl std::fmt::Debug for ReplyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyQueue")
    }
}

impl Drop for ReplyQueue {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            close();
        }
    }
}

/// What a queue holds now: its backlog and who consumes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Messages ready to be delivered (the backlog; unacknowledged ones,
    /// which a consumer holds, are not counted).
    pub messages: u64,
    /// Consumers attached.
    pub consumers: u32,
    /// Seconds the oldest ready message has waited, where the transport can
    /// tell (the in-process one can; AMQP 0-9-1 cannot without RabbitMQ's
    /// management plugin).
    pub oldest_age_seconds: Option<f64>,
}

/// Moves encoded messages; see the module docs.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Publish a message. Returns once the broker has taken responsibility
    /// for it (publisher confirm), or with an error.
    async fn send(&self, destination: &Destination<'_>, message: Outgoing) -> Result<()>;

    /// Start consuming a server's queues. Returns once the topology is
    /// declared and the consumers are running.
    async fn listen(&self, spec: ListenSpec) -> Result<Listener>;

    /// Declare and consume a notification listener's queue(s). Returns once
    /// they are declared and consumed; reconnects as [`Transport::listen`] does.
    async fn listen_notifications(&self, spec: NotificationSpec) -> Result<Listener>;

    /// Declare and consume a client's reply queue, handing each reply to
    /// `sink` as it arrives (no task between the transport and the caller).
    async fn listen_replies(&self, queue: &str, sink: ReplySink) -> Result<ReplyQueue>;

    /// A name for a new reply queue: `reply_<uuid>` (the AMQP transport
    /// names it as oslo's queue manager does when `use_queue_manager` is on).
    fn reply_queue_name(&self) -> String {
        format!("reply_{}", crate::id::new_id())
    }

    /// The options this transport was built with.
    fn options(&self) -> &TransportOptions;

    /// What `queues` hold now; a queue that does not exist is left out.
    /// Looking never creates a queue nor changes one.
    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>>;

    /// Close connections. Listeners stop; sends fail afterwards.
    async fn close(&self);
}

/// Build the transport named by `options.transport_url`.
///
/// ```
/// # tokio_test_block_on(async {
/// use nova_rpc::transport::{connect, TransportOptions};
/// let t = connect(TransportOptions::new("memory://doc")).await.unwrap();
/// assert_eq!(t.options().control_exchange, "nova");
/// let err = connect(TransportOptions::new("kafka://x")).await.unwrap_err();
/// assert!(err.to_string().contains("kafka"));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f) }
/// ```
pub async fn connect(options: TransportOptions) -> Result<Arc<dyn Transport>> {
    let url = TransportUrl::parse(&options.transport_url)?;
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(memory::MemoryTransport::new(&url, options))),
        "rabbit" | "amqp" | "amqps" => Ok(Arc::new(amqp::AmqpTransport::new(url, options)?)),
        _ => unreachable!("TransportUrl::parse accepts only known schemes"),
    }
}

/// Where an at-least-once target's messages go once they were handed back
/// more than `max_deliveries` times: `<topic>.dead`.
pub fn dead_letter_queue(topic: &str) -> String {
    format!("{topic}.dead")
}

/// Resolve once `stop` is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
