//! Receiving notifications: [`NotificationListener`] and its endpoints.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::{sync::watch, task::JoinHandle};

use super::{decode, Notification, NotificationFilter, Priority};
use crate::{
    transport::{Delivery, Health, Listener, NotificationQueue, NotificationSpec, Transport},
    Result,
};

/// What an endpoint did with a notification, as oslo's `NotificationResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationResult {
    /// Done: acknowledged.
    Handled,
    /// Not now: back to the queue, for this or another listener of the pool.
    Requeue,
}

/// Receives the notifications of its priorities that pass its filter.
///
/// An endpoint that panics has its notification requeued, as oslo
/// requeues when an endpoint raises.
#[async_trait]
pub trait NotificationEndpoint: Send + Sync + 'static {
    /// The priorities it wants (what the listener subscribes to): all by default.
    fn priorities(&self) -> Vec<Priority> {
        Priority::ALL.to_vec()
    }

    /// Which notifications it wants; `None`: all of its priorities.
    fn filter(&self) -> Option<&NotificationFilter> {
        None
    }

    /// One notification.
    async fn notify(&self, notification: Notification) -> NotificationResult;

    /// A batch, when the listener batches ([`NotificationListener::batch`]):
    /// by default one at a time, stopping at the first requeue (which
    /// requeues the whole batch).
    async fn notify_batch(&self, batch: Vec<Notification>) -> NotificationResult {
        for n in batch {
            if self.notify(n).await == NotificationResult::Requeue {
                return NotificationResult::Requeue;
            }
        }
        NotificationResult::Handled
    }
}

/// An endpoint from a closure; see [`handler`].
pub struct Handler<F> {
    f: F,
    priorities: Vec<Priority>,
    filter: Option<NotificationFilter>,
}

/// An endpoint that calls `f` for every notification, of every priority
/// until narrowed with [`Handler::priorities`] and [`Handler::filter`].
pub fn handler<F, Fut>(f: F) -> Handler<F>
where
    F: Fn(Notification) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = NotificationResult> + Send + 'static,
{
    Handler { f, priorities: Priority::ALL.to_vec(), filter: None }
}

impl<F> Handler<F> {
    /// Only these priorities.
    pub fn priorities(mut self, priorities: impl IntoIterator<Item = Priority>) -> Self {
        self.priorities = priorities.into_iter().collect();
        self
    }

    /// Only what passes `filter`.
    pub fn filter(mut self, filter: NotificationFilter) -> Self {
        self.filter = Some(filter);
        self
    }
}

#[async_trait]
impl<F, Fut> NotificationEndpoint for Handler<F>
where
    F: Fn(Notification) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = NotificationResult> + Send + 'static,
{
    fn priorities(&self) -> Vec<Priority> {
        self.priorities.clone()
    }

    fn filter(&self) -> Option<&NotificationFilter> {
        self.filter.as_ref()
    }

    async fn notify(&self, notification: Notification) -> NotificationResult {
        (self.f)(notification).await
    }
}

/// Where notifications are read from: a topic, on an exchange (the
/// transport's `control_exchange` unless named), as oslo's `Target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationTarget {
    /// `notifications`, `versioned_notifications`, …
    pub topic: String,
    /// The exchange; `None`: the control exchange.
    pub exchange: Option<String>,
}

impl NotificationTarget {
    /// `topic` on the control exchange.
    pub fn new(topic: impl Into<String>) -> Self {
        Self { topic: topic.into(), exchange: None }
    }

    /// `topic` on `exchange` (Neutron's, Glance's, …).
    pub fn on_exchange(topic: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self { topic: topic.into(), exchange: Some(exchange.into()) }
    }
}

impl From<&str> for NotificationTarget {
    fn from(topic: &str) -> Self {
        Self::new(topic)
    }
}

/// Listens to notifications and hands them to endpoints; see the
/// [module docs](super).
///
/// Notifications are handled one at a time, in the order they arrive
/// (or a batch at a time), and each is acknowledged once every endpoint
/// has handled it, or requeued as soon as one asks.
pub struct NotificationListener {
    transport: Arc<dyn Transport>,
    targets: Vec<NotificationTarget>,
    queue: NotificationQueue,
    endpoints: Vec<Arc<dyn NotificationEndpoint>>,
    batch: Option<(usize, Duration)>,
    prefetch: u16,
}

impl std::fmt::Debug for NotificationListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationListener").field("targets", &self.targets).field("queue", &self.queue).finish()
    }
}

impl NotificationListener {
    /// A listener for `targets`, reading oslo's shared queues until given a pool.
    pub fn new<T: Into<NotificationTarget>>(
        transport: Arc<dyn Transport>,
        targets: impl IntoIterator<Item = T>,
    ) -> Self {
        Self {
            transport,
            targets: targets.into_iter().map(Into::into).collect(),
            queue: NotificationQueue::Shared,
            endpoints: Vec::new(),
            batch: None,
            prefetch: 64,
        }
    }

    /// Read from pool `name`'s queue: every pool gets every notification,
    /// and the listeners of one pool share them.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.queue = NotificationQueue::Pool(name.into());
        self
    }

    /// Read from a queue of this listener's own, deleted when it stops:
    /// everything from now on, taking nothing from anybody else.
    pub fn private(mut self) -> Self {
        self.queue = NotificationQueue::Private;
        self
    }

    /// Add an endpoint.
    pub fn endpoint(mut self, endpoint: impl NotificationEndpoint) -> Self {
        self.endpoints.push(Arc::new(endpoint));
        self
    }

    /// Hand endpoints batches of up to `size`, or what came within
    /// `timeout` of a batch's first notification.
    pub fn batch(mut self, size: usize, timeout: Duration) -> Self {
        self.batch = Some((size.max(1), timeout));
        self
    }

    /// Declare and consume the queues, and start handling.
    ///
    /// # Errors
    ///
    /// No endpoint, no target, or what the transport says.
    pub async fn start(self) -> Result<RunningListener> {
        if self.endpoints.is_empty() || self.targets.is_empty() {
            return Err(crate::RpcError::Transport("a notification listener needs a target and an endpoint".into()));
        }
        let mut priorities: Vec<Priority> = self.endpoints.iter().flat_map(|e| e.priorities()).collect();
        priorities.sort();
        priorities.dedup();
        let control = &self.transport.options().control_exchange;
        let bindings = self
            .targets
            .iter()
            .flat_map(|t| {
                let exchange = t.exchange.clone().unwrap_or_else(|| control.clone());
                priorities.iter().map(move |p| (exchange.clone(), format!("{}.{}", t.topic, p.routing_name())))
            })
            .collect();
        let batch =
            self.batch.map_or(self.prefetch, |(size, _)| self.prefetch.max(u16::try_from(size).unwrap_or(u16::MAX)));
        let spec = NotificationSpec { bindings, queue: self.queue, prefetch: batch };
        let listener = self.transport.listen_notifications(spec).await?;
        let health = listener.health();
        let (stop, stopped) = watch::channel(false);
        let dispatch = Dispatch { endpoints: self.endpoints };
        let task = tokio::spawn(dispatch.run(listener, stopped, self.batch));
        Ok(RunningListener { stop, task, health })
    }
}

/// A started [`NotificationListener`].
#[derive(Debug)]
pub struct RunningListener {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    health: Health,
}

impl RunningListener {
    /// Which of its queues it is failing to consume (see [`Health`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Stop consuming, finish what is being handled, and give back what
    /// was received but not handled.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

struct Dispatch {
    endpoints: Vec<Arc<dyn NotificationEndpoint>>,
}

impl Dispatch {
    async fn run(self, mut listener: Listener, mut stopped: watch::Receiver<bool>, batch: Option<(usize, Duration)>) {
        loop {
            let first = tokio::select! {
                d = listener.recv() => d,
                _ = crate::transport::stopped(&mut stopped) => None,
            };
            let Some(first) = first else { break };
            let mut deliveries = vec![first];
            if let Some((size, timeout)) = batch {
                let until = tokio::time::Instant::now() + timeout;
                while deliveries.len() < size {
                    match tokio::time::timeout_at(until, listener.recv()).await {
                        Ok(Some(d)) => deliveries.push(d),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            self.handle(deliveries, batch.is_some()).await;
        }
        let given_back = listener.stop_and_requeue().await;
        tracing::debug!(given_back, "notification listener stopped");
    }

    /// Decode, hand to the endpoints by priority, and settle each delivery.
    async fn handle(&self, deliveries: Vec<Delivery>, batched: bool) {
        let mut groups: Vec<(Priority, Vec<(Notification, Delivery)>)> = Vec::new();
        for d in deliveries {
            match decode(&d.body) {
                Ok(n) => match groups.iter_mut().find(|(p, _)| *p == n.priority) {
                    Some((_, group)) => group.push((n, d)),
                    None => groups.push((n.priority, vec![(n, d)])),
                },
                Err(e) => {
                    tracing::warn!(reason = %e.reason, len = d.body.len(), "dropped a message that is not a notification");
                    super::metrics().count_malformed();
                    let (_, acker) = d.into_parts();
                    acker.reject().await;
                }
            }
        }
        for (priority, group) in groups {
            let (notifications, deliveries): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let result = self.dispatch(priority, notifications, batched).await;
            for d in deliveries {
                let (_, acker) = d.into_parts();
                match result {
                    // Not acknowledged (the connection is gone): it comes back.
                    NotificationResult::Handled => {
                        acker.ack().await;
                    }
                    NotificationResult::Requeue => acker.requeue().await,
                }
            }
        }
    }

    /// Every endpoint of `priority`, each with what passes its filter,
    /// until one asks for a requeue.
    async fn dispatch(&self, priority: Priority, batch: Vec<Notification>, batched: bool) -> NotificationResult {
        let endpoints: Vec<_> = self.endpoints.iter().filter(|e| e.priorities().contains(&priority)).collect();
        let mut batch = Some(batch);
        for (i, endpoint) in endpoints.iter().enumerate() {
            // The last endpoint takes the batch; the others see copies.
            let all = if i + 1 == endpoints.len() {
                batch.take().unwrap_or_default()
            } else {
                batch.clone().unwrap_or_default()
            };
            let wanted: Vec<Notification> = match endpoint.filter() {
                Some(f) => all.into_iter().filter(|n| f.matches(n)).collect(),
                None => all,
            };
            if wanted.is_empty() {
                continue;
            }
            let call = async {
                let mut wanted = wanted;
                match wanted.pop() {
                    Some(one) if !batched && wanted.is_empty() => endpoint.notify(one).await,
                    Some(last) => {
                        wanted.push(last);
                        endpoint.notify_batch(wanted).await
                    }
                    None => NotificationResult::Handled,
                }
            };
            let result = AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|_| {
                tracing::error!(%priority, "a notification endpoint panicked; the notification goes back to the queue");
                NotificationResult::Requeue
            });
            if result == NotificationResult::Requeue {
                return NotificationResult::Requeue;
            }
        }
        NotificationResult::Handled
    }
}
