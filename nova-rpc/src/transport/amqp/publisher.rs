//! Publishing on AMQP: one confirming channel on a connection of its own,
//! shared by every sender in the process, re-opened after the broker
//! returns. Exchanges are declared once per connection before the first
//! publish to them, as oslo does.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, RwLock},
};

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
};

use super::connector::Connector;
use crate::{
    transport::{Destination, Outgoing},
    Result, RpcError,
};

struct PubChannel {
    conn: Connection,
    channel: Channel,
    declared: Mutex<HashSet<String>>,
}

impl PubChannel {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

/// Publishes messages with confirms and reconnects when the broker goes away.
pub(crate) struct Publisher {
    connector: Arc<Connector>,
    current: RwLock<Option<Arc<PubChannel>>>,
    reconnecting: tokio::sync::Mutex<()>,
    topic_durable: bool,
    topic_auto_delete: bool,
}

/// The properties oslo puts on every message.
pub(crate) fn properties(message: &Outgoing) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0);
    match message.ttl {
        Some(ttl) => props.with_expiration(ttl.as_millis().max(1).to_string().into()),
        None => props,
    }
}

enum Failure {
    /// The connection is gone: reconnect and try again.
    Lost(RpcError),
    /// The broker refused this message: do not retry.
    Refused(RpcError),
}

impl Publisher {
    pub(crate) fn new(connector: Arc<Connector>) -> Self {
        let o = connector.options();
        Self {
            topic_durable: o.topic_durable(),
            topic_auto_delete: o.amqp_auto_delete,
            connector,
            current: RwLock::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<PubChannel>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|c| c.alive()).cloned()
    }

    async fn channel(&self, retry: Option<u32>) -> Result<Arc<PubChannel>> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _guard = self.reconnecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let had_one = self.current.read().unwrap_or_else(|p| p.into_inner()).is_some();
        let conn = self.connector.connect("send", retry).await?;
        if had_one {
            crate::metrics::metrics().reconnects.inc();
        }
        let channel = conn.create_channel().await?;
        if self.connector.options().publisher_confirms {
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        let c = Arc::new(PubChannel { conn, channel, declared: Mutex::new(HashSet::new()) });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Close the sending connection.
    pub(crate) async fn close(&self) {
        let current = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = current {
            let _ = c.conn.close(200, "closing".into()).await;
        }
    }

    /// Publish and wait for the broker's confirm. A lost connection is
    /// re-established and the message sent again, up to `retry` times.
    pub(crate) async fn publish(&self, destination: &Destination, message: &Outgoing) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let pc = self.channel(message.retry).await?;
            match self.publish_on(&pc, destination, message).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Lost(e)) => {
                    failures += 1;
                    tracing::warn!(error = %e, ?destination, "publish failed; reconnecting");
                    if message.retry.is_some_and(|r| failures > r) {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn declare_once(
        &self,
        pc: &PubChannel,
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<(), Failure> {
        if crate::lock(&pc.declared).contains(name) {
            return Ok(());
        }
        let options = ExchangeDeclareOptions { durable, auto_delete, ..ExchangeDeclareOptions::default() };
        pc.channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .map_err(|e| self.classify(pc, e))?;
        crate::lock(&pc.declared).insert(name.to_owned());
        Ok(())
    }

    fn classify(&self, pc: &PubChannel, e: lapin::Error) -> Failure {
        if pc.conn.status().connected() {
            if !pc.channel.status().connected() {
                // A channel-level error (e.g. PRECONDITION_FAILED) closed the
                // channel: drop it so the next publish opens a fresh one.
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if current.as_ref().is_some_and(|c| std::ptr::eq(c.as_ref(), pc)) {
                    *current = None;
                }
            }
            Failure::Refused(e.into())
        } else {
            Failure::Lost(e.into())
        }
    }

    async fn publish_on(&self, pc: &PubChannel, destination: &Destination, message: &Outgoing) -> Result<(), Failure> {
        let (exchange, routing_key, mandatory) = match destination {
            Destination::Topic { exchange, routing_key } => {
                self.declare_once(pc, exchange, ExchangeKind::Topic, self.topic_durable, self.topic_auto_delete)
                    .await?;
                (exchange.as_str(), routing_key.as_str(), false)
            }
            Destination::Fanout { topic } => {
                let name = format!("{topic}_fanout");
                self.declare_once(pc, &name, ExchangeKind::Fanout, false, true).await?;
                return self.send(pc, &name, "", false, message, destination).await;
            }
            Destination::Reply { queue } => ("", queue.as_str(), true),
        };
        self.send(pc, exchange, routing_key, mandatory, message, destination).await
    }

    async fn send(
        &self,
        pc: &PubChannel,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        message: &Outgoing,
        destination: &Destination,
    ) -> Result<(), Failure> {
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        let confirm = pc
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, &message.body, properties(message))
            .await
            .map_err(|e| self.classify(pc, e))?;
        match confirm.await.map_err(|e| self.classify(pc, e))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(Failure::Refused(RpcError::Unroutable { destination: format!("{destination:?}") }))
            }
            Confirmation::Nack(None) => {
                Err(Failure::Lost(RpcError::Transport(format!("broker refused (nack) message to {destination:?}"))))
            }
        }
    }
}
