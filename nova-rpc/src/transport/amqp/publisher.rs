//! Publishing on AMQP: one confirming channel on a connection of its own,
//! shared by every sender in the process, re-opened after the broker
//! returns. Exchanges are declared once per connection before the first
//! publish to them, as oslo does, with the flags [`Topology`] gives.
//!
//! A publish never hangs: it gives up at the message's deadline (a call's
//! timeout, a cast's budget) even while the broker is blocked by an alarm
//! or unreachable, and a `basic.nack` is retried after a jittered backoff
//! rather than in a hot loop.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
    BasicProperties, Channel, Confirmation, Connection,
};

use super::{
    connector::Connector,
    listener::{declare_bound_queue, declare_exchange},
    metrics,
    topology::Topology,
};
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
    topology: Arc<Topology>,
    current: RwLock<Option<Arc<PubChannel>>>,
    reconnecting: tokio::sync::Mutex<()>,
}

/// The properties oslo puts on every message, and the time it was sent
/// (`timestamp`, seconds), which RabbitMQ's management API shows as the age
/// of a queue's oldest message.
pub(crate) fn properties(message: &Outgoing) -> BasicProperties {
    let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_timestamp(sent);
    match message.ttl {
        Some(ttl) => props.with_expiration(ttl.as_millis().max(1).to_string().into()),
        None => props,
    }
}

enum Failure {
    /// The connection is gone: reconnect and try again.
    Lost(RpcError),
    /// The broker refused this one message (`basic.nack`): back off and try again.
    Nacked(RpcError),
    /// The broker refused this message for good: do not retry.
    Refused(RpcError),
}

impl Publisher {
    pub(crate) fn new(connector: Arc<Connector>, topology: Arc<Topology>) -> Self {
        Self { connector, topology, current: RwLock::new(None), reconnecting: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<Arc<PubChannel>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|c| c.alive()).cloned()
    }

    async fn channel(&self, retry: Option<u32>) -> Result<Arc<PubChannel>> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // A sender with a retry budget waits for another's reconnecting no
        // longer than its own attempts would take.
        let _guard = match retry {
            None => self.reconnecting.lock().await,
            Some(r) => match tokio::time::timeout(self.connector.retry_budget(r), self.reconnecting.lock()).await {
                Ok(guard) => guard,
                Err(_) => {
                    return Err(RpcError::Transport(format!(
                        "AMQP server unreachable: still reconnecting after the time {} attempt(s) take",
                        r + 1
                    )))
                }
            },
        };
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let had_one = self.current.read().unwrap_or_else(|p| p.into_inner()).is_some();
        let conn = self.connector.connect("send", retry).await?;
        if had_one {
            metrics::metrics().reconnects.inc();
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
    /// Passive declares on the publishing connection: a queue's ready
    /// messages and consumers, without creating or changing it. A missing
    /// queue closes its channel (404) and is left out.
    pub(crate) async fn queue_stats(&self, queues: &[String]) -> Result<Vec<crate::transport::QueueStats>> {
        let pc = self.channel(Some(0)).await?;
        let mut out = Vec::new();
        let mut channel: Option<Channel> = None;
        for name in queues {
            let ch = match channel.take().filter(|c| c.status().connected()) {
                Some(c) => c,
                None => pc.conn.create_channel().await?,
            };
            let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            match ch.queue_declare(name.as_str().into(), passive, FieldTable::default()).await {
                Ok(q) => {
                    out.push(crate::transport::QueueStats {
                        queue: name.clone(),
                        messages: u64::from(q.message_count()),
                        consumers: q.consumer_count(),
                        oldest_age_seconds: None,
                    });
                    channel = Some(ch);
                }
                Err(e) if !pc.conn.status().connected() => return Err(e.into()),
                Err(_) => {}
            }
        }
        if let Some(c) = channel {
            let _ = c.close(200, "inspected".into()).await;
        }
        Ok(out)
    }

    pub(crate) async fn close(&self) {
        let current = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = current {
            let _ = c.conn.close(200, "closing".into()).await;
        }
    }

    /// Publish and wait for the broker's confirm, giving up at the message's
    /// deadline. A lost connection is re-established and the message sent
    /// again, up to `retry` times; a nack is retried after a backoff.
    pub(crate) async fn publish(&self, destination: &Destination<'_>, message: &Outgoing) -> Result<()> {
        let attempt = self.publish_with_retries(destination, message);
        let Some(deadline) = message.deadline else { return attempt.await };
        match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(done) => done,
            Err(_) => Err(RpcError::Transport(format!(
                "the broker did not take the message to {destination:?} in time (blocked by an alarm, or unreachable); \
                 it may still be delivered"
            ))),
        }
    }

    async fn publish_with_retries(&self, destination: &Destination<'_>, message: &Outgoing) -> Result<()> {
        let (mut lost, mut nacks) = (0u32, 0u32);
        loop {
            let pc = self.channel(message.retry).await?;
            match self.publish_on(&pc, destination, message).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Lost(e)) => {
                    lost += 1;
                    let host = self.connector.host_of("send").map(|h| format!("{h:?}")).unwrap_or_default();
                    tracing::warn!(error = %e, %host, ?destination, "publish failed; reconnecting");
                    if message.retry.is_some_and(|r| lost > r) {
                        return Err(e);
                    }
                }
                Err(Failure::Nacked(e)) => {
                    metrics::metrics().publish_nacks.inc();
                    if message.retry.is_some_and(|r| nacks >= r) {
                        return Err(e);
                    }
                    let pause = nack_backoff(nacks);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "broker refused a publish; backing off");
                    if message.deadline.is_some_and(|d| Instant::now() + pause >= d) {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    nacks += 1;
                }
            }
        }
    }

    async fn declare_once(&self, pc: &PubChannel, exchange: &super::topology::Exchange) -> Result<(), Failure> {
        if crate::lock(&pc.declared).contains(&exchange.name) {
            return Ok(());
        }
        if let Err(e) = declare_exchange(&pc.channel, exchange).await {
            return Err(self.classify(pc, e));
        }
        crate::lock(&pc.declared).insert(exchange.name.clone());
        Ok(())
    }

    /// A notification's default queue, declared and bound once per connection.
    async fn declare_default_queue_once(
        &self,
        pc: &PubChannel,
        queue: &super::topology::Queue,
        binding: &super::topology::Binding,
    ) -> Result<(), Failure> {
        let key = format!("{} <- {}", queue.name, binding.exchange.name);
        if crate::lock(&pc.declared).contains(&key) {
            return Ok(());
        }
        if let Err(e) = declare_bound_queue(&pc.channel, queue, std::slice::from_ref(binding)).await {
            return Err(self.classify(pc, e));
        }
        crate::lock(&pc.declared).insert(key);
        Ok(())
    }

    fn classify(&self, pc: &PubChannel, e: RpcError) -> Failure {
        if pc.conn.status().connected() {
            if !pc.channel.status().connected() {
                // A channel-level error (e.g. PRECONDITION_FAILED) closed the
                // channel: drop it so the next publish opens a fresh one.
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if current.as_ref().is_some_and(|c| std::ptr::eq(c.as_ref(), pc)) {
                    *current = None;
                }
            }
            Failure::Refused(e)
        } else {
            Failure::Lost(e)
        }
    }

    async fn publish_on(
        &self,
        pc: &PubChannel,
        destination: &Destination<'_>,
        message: &Outgoing,
    ) -> Result<(), Failure> {
        let route = self.topology.publish(destination);
        if !route.exchange.is_empty() && !crate::lock(&pc.declared).contains(route.exchange.as_ref()) {
            if let Some(exchange) = self.topology.exchange_to_declare(destination) {
                self.declare_once(pc, &exchange).await?;
            }
        }
        if let Some((queue, binding)) = self.topology.notification_default_queue(destination) {
            self.declare_default_queue_once(pc, &queue, &binding).await?;
        }
        let options = BasicPublishOptions { mandatory: route.mandatory || message.mandatory, ..Default::default() };
        let confirm = pc
            .channel
            .basic_publish(
                route.exchange.as_ref().into(),
                route.routing_key.into(),
                options,
                &message.body,
                properties(message),
            )
            .await
            .map_err(|e| self.classify(pc, e.into()))?;
        match confirm.await.map_err(|e| self.classify(pc, e.into()))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            // lapin hands a `basic.return` to the next confirmation it
            // completes, which under a multiple ack may be another
            // publish's: only a return of this message's own route is its.
            Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))
                if !returned_from(&r, &route.exchange, route.routing_key) =>
            {
                tracing::debug!(?destination, returned_to = %r.delivery.routing_key, "a return of another message");
                Ok(())
            }
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(Failure::Refused(RpcError::Unroutable { destination: format!("{destination:?}") }))
            }
            Confirmation::Nack(None) => {
                Err(Failure::Nacked(RpcError::Transport(format!("broker refused (nack) message to {destination:?}"))))
            }
        }
    }
}

/// Whether `returned` is a message sent to `exchange` with `routing_key`.
fn returned_from(returned: &lapin::message::BasicReturnMessage, exchange: &str, routing_key: &str) -> bool {
    returned.delivery.exchange.as_str() == exchange && returned.delivery.routing_key.as_str() == routing_key
}

/// 100 ms doubling to 5 s, each ±50 % so many publishers don't retry in step.
fn nack_backoff(nacks: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << nacks.min(6)).min(Duration::from_secs(5));
    base.mul_f64(0.5 + fastrand::f64())
}
