//! The AMQP 0-9-1 transport (RabbitMQ), on lapin, speaking oslo.messaging's
//! rabbit driver topology ([`topology`] has it as data):
//!
//! * a topic exchange named `control_exchange`, with per topic a shared queue
//!   `topic` and a per-server queue `topic.host`;
//! * a fanout exchange `topic_fanout` (auto-delete) with one
//!   `topic_fanout_<uuid>` queue per server (`x-expires`), or one
//!   `topic_fanout` stream per topic with `rabbit_stream_fanout`;
//! * one `reply_<uuid>` queue per client (`x-expires`), replies published to
//!   the default exchange with `mandatory`.
//!
//! Publishing and consuming use separate connections, as oslo does, so a
//! slow consumer never blocks a publish and a throttled publisher never
//! slows a consumer: two per transport, every listener (servers, work
//! queues, notification listeners, reply queues) consuming on channels of
//! its own on the one consuming connection. Both re-establish themselves
//! after the broker returns (see [`connector`](self) and the listener task).

mod connector;
mod listener;
pub mod metrics;
mod publisher;
pub mod topology;

use std::sync::Arc;

use async_trait::async_trait;

use self::{connector::Connector, listener::Plan, publisher::Publisher, topology::Topology};
use super::{
    Destination, ListenSpec, Listener, NotificationSpec, Outgoing, QueueStats, ReplyQueue, ReplySink, Transport,
    TransportOptions, TransportUrl,
};
use crate::{Result, RpcError};

/// The AMQP transport; see the module docs.
pub struct AmqpTransport {
    url: TransportUrl,
    options: TransportOptions,
    connector: Arc<Connector>,
    publisher: Publisher,
    topology: Arc<Topology>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AmqpTransport({})", self.url)
    }
}

impl AmqpTransport {
    /// A transport for `url`. Nothing connects until the first send or
    /// listen. Options oslo.messaging refuses together are refused here too.
    pub fn new(url: TransportUrl, options: TransportOptions) -> Result<Self> {
        // The counters show (at zero) from the first connection on.
        metrics::metrics();
        options.rabbit.validate().map_err(|e| RpcError::Transport(e.to_string()))?;
        let connector = Arc::new(Connector::new(url.clone(), options.rabbit.clone())?);
        let topology = Arc::new(Topology::new(&options.rabbit));
        Ok(Self { url, publisher: Publisher::new(connector.clone(), topology.clone()), connector, options, topology })
    }

    /// The prefetch of a consumer: `rabbit_qos_prefetch_count` when set,
    /// else what the listener asked for (a server's free capacity).
    fn prefetch(&self, asked: u16) -> u16 {
        match self.options.rabbit.rabbit_qos_prefetch_count {
            0 => asked,
            n => n,
        }
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn send(&self, destination: &Destination<'_>, message: Outgoing) -> Result<()> {
        if message.body.len() > self.options.max_message_size {
            return Err(RpcError::MessageTooLarge { size: message.body.len(), max: self.options.max_message_size });
        }
        self.publisher.publish(destination, &message).await
    }

    async fn listen(&self, spec: ListenSpec) -> Result<Listener> {
        let server = self.topology.server(&spec);
        let work = spec.queues == crate::transport::Queues::Work;
        let plan = Plan {
            purpose: if work { "work" } else { "listen" },
            // A work queue takes one message at a time, between a resume and a pause.
            prefetch: if work { 1 } else { self.prefetch(spec.prefetch) },
            prelude: server.dead_letter.into_iter().collect(),
            subscriptions: server.subscriptions,
            work,
        };
        listener::start(self.connector.clone(), plan).await
    }

    async fn listen_notifications(&self, spec: NotificationSpec) -> Result<Listener> {
        let plan = Plan {
            purpose: "notifications",
            prefetch: self.prefetch(spec.prefetch),
            prelude: Vec::new(),
            subscriptions: self.topology.notifications(&spec),
            work: false,
        };
        listener::start(self.connector.clone(), plan).await
    }

    fn reply_queue_name(&self) -> String {
        self.topology.reply_queue_name()
    }

    async fn listen_replies(&self, queue: &str, sink: ReplySink) -> Result<ReplyQueue> {
        let plan = Plan {
            purpose: "reply",
            prefetch: self.prefetch(0),
            prelude: Vec::new(),
            subscriptions: vec![self.topology.reply(queue)],
            work: false,
        };
        listener::start_replies(self.connector.clone(), plan, sink).await
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }

    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>> {
        self.publisher.queue_stats(queues).await
    }

    async fn close(&self) {
        self.publisher.close().await;
        self.connector.close_consuming().await;
    }
}
