//! The AMQP 0-9-1 transport (RabbitMQ), on lapin, speaking oslo.messaging's
//! rabbit driver topology:
//!
//! * a topic exchange named `control_exchange`, with per topic a shared queue
//!   `topic` and a per-server queue `topic.host`;
//! * a fanout exchange `topic_fanout` (auto-delete) with one
//!   `topic_fanout_<uuid>` queue per server (`x-expires`);
//! * one `reply_<uuid>` queue per client (`x-expires`), replies published to
//!   the default exchange with `mandatory`.
//!
//! Publishing and consuming use separate connections, as oslo does, so a
//! slow consumer never blocks a publish. Both re-establish themselves
//! after the broker returns (see [`connector`](self) and the listener task).

mod connector;
mod listener;
mod publisher;

use std::sync::Arc;

use async_trait::async_trait;
use lapin::{
    types::{AMQPValue, FieldTable},
    ExchangeKind,
};

use self::{
    connector::Connector,
    listener::{Declare, Plan},
    publisher::Publisher,
};
use super::{
    dead_letter_queue, Destination, ListenSpec, Listener, Outgoing, ReplyQueue, ReplySink, Transport, TransportOptions,
    TransportUrl,
};
use crate::{Result, RpcError};

/// The AMQP transport; see the module docs.
pub struct AmqpTransport {
    url: TransportUrl,
    options: TransportOptions,
    connector: Arc<Connector>,
    publisher: Publisher,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AmqpTransport({})", self.url)
    }
}

impl AmqpTransport {
    /// A transport for `url`. Nothing connects until the first send or listen.
    pub fn new(url: TransportUrl, options: TransportOptions) -> Result<Self> {
        let connector = Arc::new(Connector::new(url.clone(), options.rabbit.clone())?);
        Ok(Self { url, publisher: Publisher::new(connector.clone()), connector, options })
    }

    fn transient_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let ms = self.options.rabbit.rabbit_transient_queues_ttl.as_millis();
        args.insert("x-expires".into(), AMQPValue::LongInt(i32::try_from(ms).unwrap_or(i32::MAX)));
        args
    }

    /// Flags and arguments of the shared `topic` and `topic.server` queues.
    fn topic_queue(&self, name: String, spec: &ListenSpec) -> Declare {
        let r = &self.options.rabbit;
        let mut arguments = FieldTable::default();
        // At-least-once targets are quorum queues: the broker counts
        // deliveries and dead-letters a message past the limit.
        let quorum = r.rabbit_quorum_queue || spec.max_deliveries.is_some();
        if quorum {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            let limit = spec.max_deliveries.unwrap_or(r.rabbit_quorum_delivery_limit);
            if limit > 0 {
                arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit as i32));
            }
        }
        if spec.max_deliveries.is_some() {
            arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(dead_letter_queue(&spec.topic).into()),
            );
        }
        Declare::Queue { name, durable: r.topic_durable() || spec.durable, auto_delete: r.amqp_auto_delete, arguments }
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn send(&self, destination: &Destination, message: Outgoing) -> Result<()> {
        if message.body.len() > self.options.max_message_size {
            return Err(RpcError::MessageTooLarge { size: message.body.len(), max: self.options.max_message_size });
        }
        self.publisher.publish(destination, &message).await
    }

    async fn listen(&self, spec: ListenSpec) -> Result<Listener> {
        let r = &self.options.rabbit;
        let exchange = Declare::Exchange {
            name: spec.exchange.clone(),
            kind: ExchangeKind::Topic,
            // The exchange is shared by every topic and declared by every
            // publisher: its flags follow the transport options only (an
            // at-least-once target makes its queues durable, not the exchange).
            durable: r.topic_durable(),
            auto_delete: r.amqp_auto_delete,
        };
        let server_key = format!("{}.{}", spec.topic, spec.server);
        let fanout_exchange = format!("{}_fanout", spec.topic);
        let fanout_queue = format!("{}_fanout_{}", spec.topic, crate::wire::new_id());
        let mut declare = Vec::new();
        if spec.max_deliveries.is_some() {
            let name = dead_letter_queue(&spec.topic);
            declare.push(Declare::Queue { name, durable: true, auto_delete: false, arguments: FieldTable::default() });
        }
        for key in [spec.topic.clone(), server_key.clone()] {
            declare.push(exchange.clone());
            declare.push(self.topic_queue(key.clone(), &spec));
            declare.push(Declare::Bind { queue: key.clone(), exchange: spec.exchange.clone(), routing_key: key });
        }
        declare.push(Declare::Exchange {
            name: fanout_exchange.clone(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: true,
        });
        declare.push(Declare::Queue {
            name: fanout_queue.clone(),
            durable: false,
            auto_delete: false,
            arguments: self.transient_arguments(),
        });
        declare.push(Declare::Bind {
            queue: fanout_queue.clone(),
            exchange: fanout_exchange,
            routing_key: spec.topic.clone(),
        });
        let plan = Plan {
            purpose: "listen",
            prefetch: spec.prefetch,
            declare,
            consume: vec![spec.topic.clone(), server_key, fanout_queue.clone()],
            delete_on_stop: vec![fanout_queue],
        };
        listener::start(self.connector.clone(), plan).await
    }

    async fn listen_replies(&self, queue: &str, sink: ReplySink) -> Result<ReplyQueue> {
        let plan = Plan {
            purpose: "reply",
            prefetch: 0,
            declare: vec![Declare::Queue {
                name: queue.to_owned(),
                durable: false,
                auto_delete: false,
                arguments: self.transient_arguments(),
            }],
            consume: vec![queue.to_owned()],
            delete_on_stop: vec![queue.to_owned()],
        };
        listener::start_replies(self.connector.clone(), plan, sink).await
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }

    async fn close(&self) {
        self.publisher.close().await;
    }
}
