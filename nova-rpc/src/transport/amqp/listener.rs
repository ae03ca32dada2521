//! Consuming on AMQP. One task per listener owns a connection and one
//! channel per consumed queue, declares what the [`topology`](super::topology)
//! says, and forwards deliveries into a bounded channel (a server's) or
//! straight to a reply sink (a client's).
//!
//! Nothing makes it silently deaf:
//!
//! * a consumer the broker cancels (its queue deleted, its node lost, a
//!   quorum leader moved) is declared and consumed again on a fresh channel
//!   after `kombu_reconnect_delay`, retrying while the queue's node is down,
//!   without disturbing the other queues' consumers; it is logged once and
//!   counted in `nova_consumer_cancels_total`;
//! * a lost connection is re-established with backoff and everything is
//!   declared again;
//! * while a queue is not consumed, [`Health`] says since when, so the
//!   service can stop reporting itself up.
//!
//! When told to stop it cancels its consumers and keeps the channels open
//! until the last delivery it handed out has been settled, so unsettled
//! messages go back to the queue.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures_util::{
    stream::{self, BoxStream, FuturesUnordered, SelectAll},
    FutureExt, StreamExt,
};
use lapin::{
    message::Delivery as AmqpDelivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
    Acker, Channel, Connection,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    connector::Connector,
    metrics,
    topology::{Arg, Binding, Exchange, ExchangeKind, Queue, Subscription},
};
use crate::{
    transport::{Acked, Acknowledge, Delivery, Flow, Health, Listener, ReplyQueue, ReplySink, Settle},
    Result, RpcError,
};

/// What a listener declares and consumes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) purpose: &'static str,
    pub(crate) prefetch: u16,
    /// Declared once per connection before the subscriptions, not consumed.
    pub(crate) prelude: Vec<Queue>,
    pub(crate) subscriptions: Vec<Subscription>,
    /// A work queue: consumed only while the server says so (see
    /// [`Queues::Work`](crate::transport::Queues::Work)).
    pub(crate) work: bool,
}

/// Where a listener task puts what it receives.
enum Output {
    /// Into a bounded channel, to be settled by whoever takes it.
    Channel(mpsc::Sender<Delivery>),
    /// Acknowledged, and the body handed to a reply sink.
    Sink(ReplySink),
}

/// Start a listener task; returns once the first topology declaration and
/// consume succeeded (or failed for a reason reconnecting cannot fix).
pub(crate) async fn start(connector: Arc<Connector>, plan: Plan) -> Result<Listener> {
    let capacity = if plan.prefetch == 0 { 1024 } else { usize::from(plan.prefetch) };
    let (tx, rx) = mpsc::channel(capacity);
    let health = Health::default();
    if plan.work {
        let (flow_tx, flow_rx) = mpsc::unbounded_channel();
        let stop = spawn(connector, plan, Output::Channel(tx), health.clone(), Some(flow_rx)).await?;
        return Ok(Listener::with_flow(rx, stop, flow_tx).with_health(health));
    }
    let stop = spawn(connector, plan, Output::Channel(tx), health.clone(), None).await?;
    Ok(Listener::new(rx, stop).with_health(health))
}

/// Start a reply listener task that hands every body to `sink`.
pub(crate) async fn start_replies(connector: Arc<Connector>, plan: Plan, sink: ReplySink) -> Result<ReplyQueue> {
    let stop = spawn(connector, plan, Output::Sink(sink), Health::default(), None).await?;
    Ok(ReplyQueue::new(move || {
        stop.send_replace(true);
    }))
}

async fn spawn(
    connector: Arc<Connector>,
    plan: Plan,
    output: Output,
    health: Health,
    flow: Option<mpsc::UnboundedReceiver<Flow>>,
) -> Result<watch::Sender<bool>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let flow = FlowControl { consuming: !plan.work, commands: flow };
    let offsets = plan.subscriptions.iter().map(|_| Arc::new(AtomicI64::new(-1))).collect();
    let consume = ConsumeLoop { offsets, health, plan };
    tokio::spawn(consume.run(connector, output, stop_rx, ready_tx, flow));
    match ready_rx.await {
        Ok(Ok(())) => Ok(stop_tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RpcError::Transport("listener stopped before it was ready".into())),
    }
}

fn field_table(args: &[(String, Arg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let value = match value {
            Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
            Arg::Int(n) => match i32::try_from(*n) {
                Ok(n) => AMQPValue::LongInt(n),
                Err(_) => AMQPValue::LongLongInt(*n),
            },
            Arg::Bool(b) => AMQPValue::Boolean(*b),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

pub(crate) async fn declare_exchange(channel: &Channel, e: &Exchange) -> Result<()> {
    let kind = match e.kind {
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
    };
    let options = ExchangeDeclareOptions { durable: e.durable, auto_delete: e.auto_delete, ..Default::default() };
    channel.exchange_declare(e.name.as_str().into(), kind, options, FieldTable::default()).await?;
    Ok(())
}

async fn declare_queue(channel: &Channel, q: &Queue) -> Result<()> {
    let options = QueueDeclareOptions { durable: q.durable, auto_delete: q.auto_delete, ..Default::default() };
    channel.queue_declare(q.name.as_str().into(), options, field_table(&q.arguments)).await?;
    Ok(())
}

/// Declare a queue the listener does not consume (a dead-letter queue),
/// on a channel of its own. One that exists with other arguments (a
/// dead-letter queue an earlier version declared classic) is kept as it
/// is, with a warning: it still takes what is dead-lettered.
async fn declare_prelude(conn: &Connection, q: &Queue) -> Result<()> {
    let channel = conn.create_channel().await?;
    let declared = declare_queue(&channel, q).await;
    if let Err(e) = &declared {
        if e.to_string().contains("PRECONDITION_FAILED") {
            tracing::warn!(queue = %q.name, error = %e, "keeping this queue as it was declared before; delete it to have it declared anew");
            let passive = conn.create_channel().await?;
            let options = QueueDeclareOptions { passive: true, ..Default::default() };
            passive.queue_declare(q.name.as_str().into(), options, FieldTable::default()).await?;
            let _ = passive.close(200, "declared".into()).await;
            return Ok(());
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    declared
}

/// Declare `queue`, and each binding's exchange and the binding.
pub(crate) async fn declare_bound_queue(channel: &Channel, queue: &Queue, bindings: &[Binding]) -> Result<()> {
    for b in bindings {
        declare_exchange(channel, &b.exchange).await?;
    }
    declare_queue(channel, queue).await?;
    for b in bindings {
        let (queue, exchange, key) = (queue.name.as_str(), b.exchange.name.as_str(), b.routing_key.as_str());
        channel
            .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

/// One subscription's channel, declared, and consuming when `consume`.
async fn subscribe(
    conn: &Connection,
    sub: &Subscription,
    prefetch: u16,
    offset: &AtomicI64,
    consume: bool,
) -> Result<(Channel, Option<lapin::Consumer>)> {
    let channel = conn.create_channel().await?;
    if prefetch > 0 {
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    }
    declare_bound_queue(&channel, &sub.queue, &sub.bindings).await?;
    if !consume {
        return Ok((channel, None));
    }
    let consumer = start_consumer(&channel, sub, offset, 0).await?;
    Ok((channel, Some(consumer)))
}

/// The consumer tag of `sub`'s consumer of `generation`: the queue's name,
/// then numbered. A work queue's consumers never reuse a tag on their
/// channel: RabbitMQ credits an acknowledgement to the consumer holding
/// the tag it was delivered under, so a reused tag would let the next
/// consumer take one more message than its prefetch.
fn consumer_tag(sub: &Subscription, generation: u64) -> String {
    match generation {
        0 => sub.queue.name.clone(),
        n => format!("{}#{n}", sub.queue.name),
    }
}

/// Consume `sub`'s queue on `channel` as consumer `generation`.
async fn start_consumer(
    channel: &Channel,
    sub: &Subscription,
    offset: &AtomicI64,
    generation: u64,
) -> Result<lapin::Consumer> {
    let mut args = sub.consumer_arguments.clone();
    if sub.queue.is_stream() {
        // Read on from where we were, or only what comes from now on. As
        // in oslo, the offset is a stream consumer's only argument.
        let next = offset.load(Ordering::Relaxed);
        let from = if next < 0 { Arg::Str("next".into()) } else { Arg::Int(next) };
        args = vec![("x-stream-offset".into(), from)];
    }
    let consumer = channel
        .basic_consume(
            sub.queue.name.as_str().into(),
            consumer_tag(sub, generation).as_str().into(),
            BasicConsumeOptions::default(),
            field_table(&args),
        )
        .await?;
    Ok(consumer)
}

enum Ended {
    Stopped,
    Lost(String),
}

/// What subscription `.0`'s consumer of generation `.1` yields: a
/// delivery, an error, or (`None`) its end, which the broker cancelled (or
/// we did, when it is not the subscription's live consumer).
type ConsumerEvent = (usize, u64, Option<lapin::Result<AmqpDelivery>>);

/// One subscription on the current connection: its channel and consumer.
struct Subscribed {
    channel: Channel,
    /// The tag of its consumer now (what a pause or a stop cancels).
    tag: String,
    /// The generation of its live consumer, whose end is the broker's
    /// cancel; `None` once we cancelled it ourselves (a paused work queue),
    /// so that its end, when it comes, is ours.
    live: Option<u64>,
}

/// The consumer streams of one connection. Each consumer has a
/// generation, unique on the connection.
struct ConsumerStreams {
    streams: SelectAll<BoxStream<'static, ConsumerEvent>>,
    next_generation: u64,
}

impl ConsumerStreams {
    /// The streams of `consumers` (one per subscription, `None` where
    /// paused), all of generation 0, with their subscriptions' state.
    fn start(plan: &Plan, subscribed: Vec<(Channel, Option<lapin::Consumer>)>) -> (Self, Vec<Subscribed>) {
        let mut streams = Self { streams: SelectAll::new(), next_generation: 1 };
        let subs = subscribed
            .into_iter()
            .enumerate()
            .map(|(i, (channel, consumer))| {
                let live = consumer.map(|c| streams.watch(i, 0, c));
                Subscribed { channel, tag: consumer_tag(&plan.subscriptions[i], 0), live }
            })
            .collect();
        (streams, subs)
    }

    /// A generation no consumer of this connection had.
    fn next(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation - 1
    }

    /// Follow subscription `i`'s consumer of `generation`.
    fn watch(&mut self, i: usize, generation: u64, consumer: lapin::Consumer) -> u64 {
        let ended = stream::once(async move { (i, generation, None) });
        self.streams.push(consumer.map(move |d| (i, generation, Some(d))).chain(ended).boxed());
        generation
    }
}

async fn next_flow(flow: &mut Option<mpsc::UnboundedReceiver<Flow>>) -> Option<Flow> {
    match flow {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

/// A listener's loop: connect, declare, consume, forward; again after a loss.
struct ConsumeLoop {
    plan: Plan,
    /// Per subscription, the next stream offset to read (-1: none yet).
    offsets: Vec<Arc<AtomicI64>>,
    health: Health,
}

/// Whether the queues are consumed now (a work queue's only when told),
/// and a work queue's consume / pause commands.
struct FlowControl {
    consuming: bool,
    commands: Option<mpsc::UnboundedReceiver<Flow>>,
}

impl ConsumeLoop {
    fn queues(&self) -> impl Iterator<Item = &str> {
        self.plan.subscriptions.iter().map(|s| s.queue.name.as_str())
    }

    /// Declare the plan's queues and subscribe. On a first start every
    /// refusal is the caller's to hear; after a loss, a queue of the
    /// prelude that cannot be declared (its node is down) is logged and
    /// passed over: the prelude is not consumed, and consuming the rest
    /// must not wait for it.
    async fn setup(
        &self,
        conn: &Connection,
        consume: bool,
        first: bool,
    ) -> Result<Vec<(Channel, Option<lapin::Consumer>)>> {
        for q in &self.plan.prelude {
            match declare_prelude(conn, q).await {
                Ok(()) => {}
                Err(e) if first => return Err(e),
                Err(e) => {
                    tracing::warn!(queue = %q.name, error = %e, "cannot declare this queue now; consuming the others")
                }
            }
        }
        let mut subscribed: Vec<(Channel, Option<lapin::Consumer>)> = Vec::new();
        for (sub, offset) in self.plan.subscriptions.iter().zip(&self.offsets) {
            match subscribe(conn, sub, self.plan.prefetch, offset, consume).await {
                Ok(s) => subscribed.push(s),
                Err(e) => {
                    // The connection is shared: close what this attempt opened.
                    for (channel, _) in &subscribed {
                        let _ = channel.close(200, "setup failed".into()).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(subscribed)
    }

    async fn run(
        self,
        connector: Arc<Connector>,
        output: Output,
        stop: watch::Receiver<bool>,
        ready: oneshot::Sender<Result<()>>,
        flow: FlowControl,
    ) {
        connector.hold();
        self.consume(&connector, output, stop, ready, flow).await;
        connector.release().await;
    }

    /// Declare and consume, again after every loss, until stopped (or the
    /// first declaration is refused).
    async fn consume(
        &self,
        connector: &Arc<Connector>,
        output: Output,
        mut stop: watch::Receiver<bool>,
        ready: oneshot::Sender<Result<()>>,
        mut flow: FlowControl,
    ) {
        let mut ready = Some(ready);
        let mut round = 0u32;
        loop {
            let conn = tokio::select! {
                biased;
                _ = crate::transport::stopped(&mut stop) => return,
                c = connector.consuming() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(r) = ready.take() { let _ = r.send(Err(e)); }
                        return;
                    }
                },
            };
            let subscribed = match self.setup(&conn, flow.consuming, ready.is_some()).await {
                Ok(s) => s,
                Err(e) => {
                    if let Some(r) = ready.take() {
                        // The broker answered but refused our topology: retrying cannot help.
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::warn!(error = %e, purpose = self.plan.purpose, "re-declaring topology failed; retrying");
                    tokio::select! {
                        biased;
                        _ = crate::transport::stopped(&mut stop) => return,
                        _ = tokio::time::sleep(connector.options().reconnect_delay(round)) => {}
                    }
                    round += 1;
                    continue;
                }
            };
            self.consuming(ready.take());
            round = 0;
            let (streams, mut subs) = ConsumerStreams::start(&self.plan, subscribed);
            match self.forward((connector, &conn), &mut subs, streams, &output, &mut stop, &mut flow).await {
                Ended::Lost(why) => {
                    for q in self.queues() {
                        self.health.not_consumed(q, &why);
                    }
                    let host = connector.host_of("consume").map(|h| format!("{h:?}")).unwrap_or_default();
                    tracing::warn!(purpose = self.plan.purpose, %host, error = %why, "AMQP connection lost; reconnecting");
                    // The connection is shared: only this listener's channels are ours to close.
                    for sub in &subs {
                        let _ = sub.channel.close(200, "lost".into()).await;
                    }
                }
                Ended::Stopped => return self.stopped(conn, subs, output, stop).await,
            }
        }
    }

    /// Consuming, on a first connection (`ready` is told) or again after a loss.
    fn consuming(&self, ready: Option<oneshot::Sender<Result<()>>>) {
        if let Some(r) = ready {
            let _ = r.send(Ok(()));
        } else {
            metrics::metrics().reconnects.inc();
            tracing::info!(purpose = self.plan.purpose, queues = ?self.queues().collect::<Vec<_>>(), "topology re-declared; consuming again");
        }
        for q in self.queues() {
            self.health.consumed(q);
        }
    }

    /// Told to stop: cancel the consumers; deliveries already handed out
    /// are settled on these channels, so let the receiver drain, then keep
    /// them open until the listener is dropped (its stop switch goes away).
    async fn stopped(
        &self,
        conn: Arc<Connection>,
        subs: Vec<Subscribed>,
        output: Output,
        mut stop: watch::Receiver<bool>,
    ) {
        self.stop(&conn, &subs).await;
        drop(output);
        while stop.changed().await.is_ok() {}
        for sub in &subs {
            let _ = sub.channel.close(200, "stopped".into()).await;
        }
    }

    async fn stop(&self, conn: &Connection, subs: &[Subscribed]) {
        for sub in subs {
            let _ = sub.channel.basic_cancel(sub.tag.as_str().into(), BasicCancelOptions::default()).await;
        }
        let deletes: Vec<_> = self.plan.subscriptions.iter().filter(|s| s.delete_on_stop).collect();
        if !deletes.is_empty() {
            if let Ok(channel) = conn.create_channel().await {
                for sub in deletes {
                    let _ = channel.queue_delete(sub.queue.name.as_str().into(), QueueDeleteOptions::default()).await;
                }
            }
        }
    }

    /// Consume until stopped or the connection is lost, consuming again
    /// any queue whose consumer the broker cancels.
    async fn forward(
        &self,
        (connector, conn): (&Connector, &Connection),
        subs: &mut [Subscribed],
        mut streams: ConsumerStreams,
        output: &Output,
        stop: &mut watch::Receiver<bool>,
        flow: &mut FlowControl,
    ) -> Ended {
        let mut again = FuturesUnordered::new();
        // Whatever a consumer stream does when its connection dies, a lost
        // connection is noticed within a second.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = crate::transport::stopped(stop) => return Ended::Stopped,
                _ = watchdog.tick() => if !conn.status().connected() {
                    return Ended::Lost("connection closed".into());
                },
                Some((consume, done)) = next_flow(&mut flow.commands) => {
                    let switched = consume != std::mem::replace(&mut flow.consuming, consume);
                    for i in if switched { self.switch(subs, &mut streams, consume).await } else { Vec::new() } {
                        again.push(self.consume_again(connector, conn, i, true));
                    }
                    let _ = done.send(());
                },
                Some((i, result)) = again.next(), if !again.is_empty() => match result {
                    Ok((channel, consumer)) => {
                        self.consumed_again(i, &mut subs[i], &mut streams, (channel, consumer), flow.consuming).await;
                    }
                    Err(why) => return Ended::Lost(why),
                },
                Some((i, generation, item)) = streams.streams.next(), if !streams.streams.is_empty() => match item {
                    Some(Ok(d)) => {
                        if let Err(ended) = self.deliver(i, d, output, stop).await {
                            return ended;
                        }
                    }
                    // A consumer fails only with its channel or connection,
                    // and a failed lapin consumer may never end: start over.
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None if !conn.status().connected() => return Ended::Lost("connection closed".into()),
                    None if subs[i].live != Some(generation) => {}
                    None => {
                        self.cancelled_by_the_broker(i);
                        again.push(self.consume_again(connector, conn, i, flow.consuming));
                    }
                },
            }
        }
    }

    /// The broker ended subscription `i`'s consumer: counted, and its queue
    /// not consumed until it is declared and consumed again.
    fn cancelled_by_the_broker(&self, i: usize) {
        let queue = &self.plan.subscriptions[i].queue.name;
        metrics::metrics().consumer_cancels.inc();
        self.health.not_consumed(queue, "the broker cancelled its consumer");
        tracing::warn!(queue = %queue, purpose = self.plan.purpose, "the broker cancelled a consumer (queue deleted, its node lost, or its leader moved); declaring and consuming it again");
    }

    /// Consume every subscription (a work queue resumed) or cancel every
    /// consumer (paused); the subscriptions that could not be consumed,
    /// to declare and consume again.
    async fn switch(&self, subs: &mut [Subscribed], streams: &mut ConsumerStreams, consume: bool) -> Vec<usize> {
        let mut failed = Vec::new();
        for (i, sub) in subs.iter_mut().enumerate() {
            if consume {
                let plan = &self.plan.subscriptions[i];
                let generation = streams.next();
                match start_consumer(&sub.channel, plan, &self.offsets[i], generation).await {
                    Ok(c) => {
                        sub.tag = consumer_tag(plan, generation);
                        sub.live = Some(streams.watch(i, generation, c));
                    }
                    Err(_) => failed.push(i),
                }
            } else {
                let _ = sub.channel.basic_cancel(sub.tag.as_str().into(), BasicCancelOptions::default()).await;
                sub.live = None;
            }
        }
        failed
    }

    /// Subscription `i` has a new channel, and a consumer unless it was
    /// declared while paused.
    async fn consumed_again(
        &self,
        i: usize,
        sub: &mut Subscribed,
        streams: &mut ConsumerStreams,
        (channel, consumer): (Channel, Option<lapin::Consumer>),
        consuming: bool,
    ) {
        let queue = &self.plan.subscriptions[i].queue.name;
        // A new channel: its consumer has the first tag.
        sub.tag = consumer_tag(&self.plan.subscriptions[i], 0);
        sub.channel = channel;
        sub.live = None;
        if let Some(consumer) = consumer {
            let generation = streams.next();
            streams.watch(i, generation, consumer);
            if consuming {
                sub.live = Some(generation);
                tracing::info!(queue = %queue, "consuming again after the broker cancelled the consumer");
            } else {
                // Paused meanwhile: its end will be ours.
                let _ = sub.channel.basic_cancel(sub.tag.as_str().into(), BasicCancelOptions::default()).await;
            }
        }
        self.health.consumed(queue);
    }

    /// Declare and consume subscription `i` again, waiting and retrying while
    /// its queue cannot be declared (its node is down). Fails only when
    /// the connection itself is lost.
    async fn consume_again(
        &self,
        connector: &Connector,
        conn: &Connection,
        i: usize,
        consume: bool,
    ) -> (usize, std::result::Result<(Channel, Option<lapin::Consumer>), String>) {
        let sub = &self.plan.subscriptions[i];
        let mut attempt = 0;
        loop {
            tokio::time::sleep(connector.options().reconsume_delay(attempt)).await;
            if !conn.status().connected() {
                return (i, Err("connection closed".into()));
            }
            match subscribe(conn, sub, self.plan.prefetch, &self.offsets[i], consume).await {
                Ok(s) => return (i, Ok(s)),
                Err(e) => {
                    self.health.not_consumed(&sub.queue.name, &e.to_string());
                    if attempt == 0 {
                        tracing::warn!(queue = %sub.queue.name, error = %e, "cannot consume the queue yet; retrying");
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn deliver(
        &self,
        i: usize,
        d: AmqpDelivery,
        output: &Output,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Ended> {
        if let Some(offset) = int_header(&d, "x-stream-offset") {
            self.offsets[i].store(offset + 1, Ordering::Relaxed);
        }
        let tx = match output {
            Output::Channel(tx) => tx,
            Output::Sink(sink) => {
                reply_to(sink, d);
                return Ok(());
            }
        };
        let deadline = d
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let delivery_count = int_header(&d, "x-delivery-count").and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let mut delivery = Delivery::new(d.data.into(), Box::new(AmqpAck(d.acker)));
        delivery.redelivered = d.redelivered;
        delivery.deadline = deadline;
        delivery.delivery_count = delivery_count;
        tokio::select! {
            biased;
            sent = tx.send(delivery) => if let Err(mpsc::error::SendError(d)) = sent {
                d.into_parts().1.requeue().await;
                return Err(Ended::Stopped);
            },
            _ = crate::transport::stopped(stop) => return Err(Ended::Stopped),
        }
        Ok(())
    }
}

/// A whole-number header of a delivery (RabbitMQ's stream offset and
/// delivery count come in several integer types).
fn int_header(d: &AmqpDelivery, name: &str) -> Option<i64> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A reply: to the caller first, then acknowledged to the broker. An ack
/// on a connection that is going away may never complete: it must not hold
/// up the loop that would notice the loss.
fn reply_to(sink: &ReplySink, d: AmqpDelivery) {
    let acker = d.acker;
    sink(d.data.into());
    let mut ack = Box::pin(AmqpAck(acker).settle(Settle::Ack));
    if (&mut ack).now_or_never().is_none() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), ack).await;
        });
    }
}

struct AmqpAck(Acker);

/// How long settling a delivery may take. A settle on a connection that
/// is closing may never complete; the broker then redelivers the message
/// anyway, so waiting longer only holds the request's resources.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

impl AmqpAck {
    async fn settle(self, how: Settle) -> Acked {
        let settling = async {
            match how {
                Settle::Ack => self.0.ack(BasicAckOptions::default()).await,
                Settle::Requeue => self.0.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
                Settle::Reject => self.0.reject(BasicRejectOptions { requeue: false }).await,
            }
        };
        match tokio::time::timeout(SETTLE_LIMIT, settling).await {
            Ok(Ok(_)) => Acked::Done,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "settling a delivery failed; the broker will redeliver it");
                Acked::Failed
            }
            Err(_) => {
                tracing::warn!("settling a delivery got no answer (its connection is gone?)");
                Acked::Unknown
            }
        }
    }
}

#[async_trait]
impl Acknowledge for AmqpAck {
    async fn ack(self: Box<Self>) -> Acked {
        self.settle(Settle::Ack).await
    }

    async fn requeue(self: Box<Self>) {
        self.settle(Settle::Requeue).await;
    }

    async fn reject(self: Box<Self>) {
        self.settle(Settle::Reject).await;
    }
}
