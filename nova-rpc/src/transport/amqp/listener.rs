//! Consuming on AMQP: one task per listener owns a connection and a channel,
//! declares its topology, consumes its queues and forwards deliveries into
//! a bounded channel (a server's) or straight to a reply sink (a client's). When the connection drops it reconnects with backoff,
//! declares everything again and resumes consuming; when told to stop it
//! cancels its consumers and waits until the last delivery it handed out
//! has been settled before closing, so unsettled messages go back to the queue.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures_util::{stream::select_all, StreamExt};
use lapin::{
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
    Acker, Channel, Connection, ExchangeKind,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::connector::Connector;
use crate::{
    transport::{Acknowledge, Delivery, Listener, ReplyQueue, ReplySink},
    Result, RpcError,
};

/// One step of declaring a listener's topology.
#[derive(Debug, Clone)]
pub(crate) enum Declare {
    Exchange { name: String, kind: ExchangeKind, durable: bool, auto_delete: bool },
    Queue { name: String, durable: bool, auto_delete: bool, arguments: FieldTable },
    Bind { queue: String, exchange: String, routing_key: String },
}

/// What a listener declares and consumes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) purpose: &'static str,
    pub(crate) prefetch: u16,
    pub(crate) declare: Vec<Declare>,
    pub(crate) consume: Vec<String>,
    pub(crate) delete_on_stop: Vec<String>,
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
    let stop = spawn(connector, plan, Output::Channel(tx)).await?;
    Ok(Listener::new(rx, stop))
}

/// Start a reply listener task that hands every body to `sink`.
pub(crate) async fn start_replies(connector: Arc<Connector>, plan: Plan, sink: ReplySink) -> Result<ReplyQueue> {
    let stop = spawn(connector, plan, Output::Sink(sink)).await?;
    Ok(ReplyQueue::new(move || {
        stop.send_replace(true);
    }))
}

async fn spawn(connector: Arc<Connector>, plan: Plan, output: Output) -> Result<watch::Sender<bool>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(run(connector, plan, output, stop_rx, ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => Ok(stop_tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RpcError::Transport("listener stopped before it was ready".into())),
    }
}

async fn setup(conn: &Connection, plan: &Plan) -> Result<(Channel, Vec<lapin::Consumer>)> {
    let channel = conn.create_channel().await?;
    if plan.prefetch > 0 {
        channel.basic_qos(plan.prefetch, BasicQosOptions::default()).await?;
    }
    for step in &plan.declare {
        match step {
            Declare::Exchange { name, kind, durable, auto_delete } => {
                let options =
                    ExchangeDeclareOptions { durable: *durable, auto_delete: *auto_delete, ..Default::default() };
                channel.exchange_declare(name.as_str().into(), kind.clone(), options, FieldTable::default()).await?;
            }
            Declare::Queue { name, durable, auto_delete, arguments } => {
                let options =
                    QueueDeclareOptions { durable: *durable, auto_delete: *auto_delete, ..Default::default() };
                channel.queue_declare(name.as_str().into(), options, arguments.clone()).await?;
            }
            Declare::Bind { queue, exchange, routing_key } => {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
    }
    let mut consumers = Vec::new();
    for (i, queue) in plan.consume.iter().enumerate() {
        let tag = (i + 1).to_string();
        consumers.push(
            channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }
    Ok((channel, consumers))
}

enum Ended {
    Stopped,
    Lost(String),
}

async fn run(
    connector: Arc<Connector>,
    plan: Plan,
    output: Output,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut round = 0u32;
    loop {
        let conn = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stop) => return,
            c = connector.connect(plan.purpose, None) => match c {
                Ok(c) => c,
                Err(e) => {
                    if let Some(r) = ready.take() { let _ = r.send(Err(e)); }
                    return;
                }
            },
        };
        let (channel, consumers) = match setup(&conn, &plan).await {
            Ok(s) => s,
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                if let Some(r) = ready.take() {
                    // The broker answered but refused our topology: retrying cannot help.
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, purpose = plan.purpose, "re-declaring topology failed; retrying");
                tokio::time::sleep(connector.options().reconnect_delay(round)).await;
                round += 1;
                continue;
            }
        };
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        } else {
            crate::metrics::metrics().reconnects.inc();
            tracing::info!(purpose = plan.purpose, queues = ?plan.consume, "topology re-declared; consuming again");
        }
        round = 0;
        match forward(consumers, &output, &mut stop).await {
            Ended::Lost(why) => {
                tracing::warn!(purpose = plan.purpose, error = %why, "AMQP connection lost; reconnecting");
                continue;
            }
            Ended::Stopped => {
                for (i, _) in plan.consume.iter().enumerate() {
                    let tag = (i + 1).to_string();
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                }
                for queue in &plan.delete_on_stop {
                    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
                }
                // Deliveries already handed out are settled on this channel:
                // let the receiver drain, then keep the channel open until
                // the listener is dropped (its stop switch goes away).
                drop(output);
                while stop.changed().await.is_ok() {}
                let _ = channel.close(200, "stopped".into()).await;
                let _ = conn.close(200, "stopped".into()).await;
                return;
            }
        }
    }
}

async fn forward(consumers: Vec<lapin::Consumer>, output: &Output, stop: &mut watch::Receiver<bool>) -> Ended {
    let mut merged = select_all(consumers);
    loop {
        let next = tokio::select! {
            biased;
            _ = crate::transport::stopped(stop) => return Ended::Stopped,
            d = merged.next() => d,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Ended::Lost(e.to_string()),
            None => return Ended::Lost("consumers cancelled by the broker".into()),
        };
        let tx = match output {
            Output::Channel(tx) => tx,
            Output::Sink(sink) => {
                // A reply: the caller first, then the broker.
                let acker = d.acker;
                sink(d.data.into());
                AmqpAck(acker).settle(Settle::Ack).await;
                continue;
            }
        };
        let deadline = d
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let delivery_count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(n).ok(),
                _ => None,
            })
            .unwrap_or(0);
        let mut delivery = Delivery::new(d.data.into(), Box::new(AmqpAck(d.acker)));
        delivery.redelivered = d.redelivered;
        delivery.deadline = deadline;
        delivery.delivery_count = delivery_count;
        tokio::select! {
            biased;
            sent = tx.send(delivery) => if let Err(mpsc::error::SendError(d)) = sent {
                d.into_parts().1.requeue().await;
                return Ended::Stopped;
            },
            _ = crate::transport::stopped(stop) => return Ended::Stopped,
        }
    }
}

struct AmqpAck(Acker);

enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl AmqpAck {
    async fn settle(self, how: Settle) {
        let done = match how {
            Settle::Ack => self.0.ack(BasicAckOptions::default()).await,
            Settle::Requeue => self.0.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
            Settle::Reject => self.0.reject(BasicRejectOptions { requeue: false }).await,
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "settling a delivery failed; the broker will redeliver it");
        }
    }
}

#[async_trait]
impl Acknowledge for AmqpAck {
    async fn ack(self: Box<Self>) {
        self.settle(Settle::Ack).await;
    }

    async fn requeue(self: Box<Self>) {
        self.settle(Settle::Requeue).await;
    }

    async fn reject(self: Box<Self>) {
        self.settle(Settle::Reject).await;
    }
}
