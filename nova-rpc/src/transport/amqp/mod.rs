//! The AMQP 0-9-1 transport (RabbitMQ), on lapin, speaking oslo.messaging's
//! rabbit driver topology ([`topology`] has it as data):
//!
//! * a topic exchange named `control_exchange`, with per topic a shared queue
//!   `topic` and a per-server queue `topic.host`;
//! * a fanout exchange `topic_fanout` (auto-delete) with one
//!   `topic_fanout_<uuid>` queue per server (`x-expires`), or one
//!   `topic_fanout` stream per topic with `rabbit_stream_fanout`;
//! * one `reply_<uuid>` queue per client (`x-expires`), replies published to
//!   the default exchange with `mandatory`; or, with `rabbit_direct_reply_to`,
//!   no reply queue: a client consumes RabbitMQ's `amq.rabbitmq.reply-to`
//!   pseudo-queue on a channel of its own and publishes its calls on it
//!   (between nova-rs peers only: see [`DirectCalls`]).
//!
//! Publishing and consuming use separate connections, as oslo does, so a
//! slow consumer never blocks a publish. Both re-establish themselves
//! after the broker returns (see [`connector`](self) and the listener task).

mod connector;
mod listener;
mod publisher;
pub mod topology;

use std::sync::Arc;

use async_trait::async_trait;

use self::{connector::Connector, listener::Plan, publisher::Publisher, topology::Topology};
use super::{
    CallChannel, Destination, ListenSpec, Listener, LostSink, Outgoing, QueueStats, ReplyQueue, ReplySink, Transport,
    TransportOptions, TransportUrl, DIRECT_REPLY_TO,
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
        options.rabbit.validate().map_err(RpcError::Transport)?;
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

/// Refuse a message larger than `max` before it reaches the broker.
fn check_size(message: &Outgoing, max: usize) -> Result<()> {
    match message.body.len() {
        size if size > max => Err(RpcError::MessageTooLarge { size, max }),
        _ => Ok(()),
    }
}

/// One client's calls and their direct replies (`rabbit_direct_reply_to`):
/// a connection and channel of its own, consuming `amq.rabbitmq.reply-to`.
///
/// The broker rewrites only the AMQP `reply-to` property of a call into the
/// caller's address; the body's `_reply_q` still names the pseudo-queue. A
/// nova-rs server replies to the property; an oslo.messaging server
/// replies to `_reply_q` and cannot answer, so this is for calls between
/// nova-rs services only. Replies are never stored: while the channel is
/// re-established, replies to the calls in flight are lost, and those
/// calls fail at once instead of waiting out their timeout.
pub struct DirectCalls {
    publisher: Publisher,
    max_message_size: usize,
    url: String,
}

impl std::fmt::Debug for DirectCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectCalls({})", self.url)
    }
}

#[async_trait]
impl CallChannel for DirectCalls {
    fn reply_to(&self) -> &str {
        DIRECT_REPLY_TO
    }

    async fn send(&self, destination: &Destination, message: Outgoing) -> Result<()> {
        check_size(&message, self.max_message_size)?;
        self.publisher.publish(destination, &message).await
    }
}

impl Drop for DirectCalls {
    fn drop(&mut self) {
        self.publisher.close_in_background();
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn send(&self, destination: &Destination, message: Outgoing) -> Result<()> {
        check_size(&message, self.options.max_message_size)?;
        self.publisher.publish(destination, &message).await
    }

    async fn call_channel(&self, sink: ReplySink, lost: LostSink) -> Result<Option<Arc<dyn CallChannel>>> {
        if !self.options.rabbit.rabbit_direct_reply_to {
            return Ok(None);
        }
        let publisher =
            Publisher::with_direct_replies(self.connector.clone(), self.topology.clone(), sink, lost).await?;
        Ok(Some(Arc::new(DirectCalls {
            publisher,
            max_message_size: self.options.max_message_size,
            url: self.url.to_string(),
        })))
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
    }
}
