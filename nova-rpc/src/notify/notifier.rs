//! Sending notifications: [`Notifier`], oslo's drivers, and what they count.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{encode, routing::RoutingConfig, utc_timestamp, NotificationRef, Priority};
use crate::{
    transport::{Destination, Outgoing, Transport},
    RequestContext,
};

/// How notifications are sent: oslo's `[oslo_messaging_notifications] driver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// On the transport, in the 2.0 envelope (what every current consumer reads).
    MessagingV2,
    /// On the transport, bare (the 1.0 format, for consumers that predate the envelope).
    Messaging,
    /// Written to the log, one JSON object per notification.
    Log,
    /// Dropped.
    Noop,
    /// To the drivers the routing file's rules choose.
    Routing(Arc<RoutingConfig>),
}

impl Driver {
    /// The driver named `name`; `routing` is the routing file, read
    /// (required for `routing`).
    ///
    /// # Errors
    ///
    /// A name oslo does not know, or `routing` without its file.
    pub fn named(name: &str, routing: Option<Arc<RoutingConfig>>) -> Result<Self, DriverError> {
        match name {
            "messagingv2" => Ok(Driver::MessagingV2),
            "messaging" => Ok(Driver::Messaging),
            "log" => Ok(Driver::Log),
            "noop" => Ok(Driver::Noop),
            "routing" => routing.map(Driver::Routing).ok_or(DriverError::RoutingWithoutConfig),
            other => Err(DriverError::Unknown(other.to_owned())),
        }
    }

    fn simple(name: &str) -> Option<Self> {
        Self::named(name, None).ok()
    }
}

/// Why a driver name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// Not one of oslo's drivers.
    #[error("unknown notification driver {0:?} (messagingv2, messaging, log, noop, routing)")]
    Unknown(String),
    /// `routing` needs its rules.
    #[error("the routing driver needs routing_config")]
    RoutingWithoutConfig,
}

/// A notifier's settings; see [`Notifier::new`].
#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Where notifications go; none (oslo's default): nowhere.
    pub drivers: Vec<Driver>,
    /// The topics each is published on (`<topic>.<priority>`).
    pub topics: Vec<String>,
    /// How often to reconnect and try again while the broker is away;
    /// `None` (oslo's `-1`): until it is back.
    pub retry: Option<u32>,
    /// The exchange; `None`: the transport's `control_exchange`.
    pub exchange: Option<String>,
    /// Notifications waiting for the broker beyond this many are dropped
    /// (and logged and counted), so an outage never grows memory without end.
    pub backlog: usize,
}

impl Default for NotifierOptions {
    /// `messagingv2` on `notifications`, retried until the broker is back.
    fn default() -> Self {
        Self {
            drivers: vec![Driver::MessagingV2],
            topics: vec!["notifications".into()],
            retry: None,
            exchange: None,
            backlog: 10_000,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    priority: &'static str,
    outcome: &'static str,
}

/// What notifiers count.
#[derive(Debug, Default)]
pub struct NotificationMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    malformed: Counter,
}

impl NotificationMetrics {
    pub(super) fn count(&self, priority: Priority, outcome: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabels { priority: priority.routing_name(), outcome }).inc();
    }

    pub(super) fn count_malformed(&self) {
        self.malformed.inc();
    }

    /// Messages a listener dropped because they were not notifications.
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }

    /// How many notifications of `priority` ended with `outcome`: `sent`,
    /// `logged`, `dropped` (the backlog was full, or it could not be
    /// encoded) or `failed` (the broker did not take it within `retry`).
    pub fn get(&self, priority: Priority, outcome: &'static str) -> u64 {
        self.outcomes.get_or_create(&OutcomeLabels { priority: priority.routing_name(), outcome }).get()
    }
}

/// The process's notification counters, `nova_notifications_total{priority, outcome}`.
pub fn metrics() -> &'static NotificationMetrics {
    static METRICS: OnceLock<NotificationMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = NotificationMetrics::default();
        crate::metrics::register(
            "notifications",
            "Notifications by priority and outcome (sent, logged, dropped, failed)",
            m.outcomes.clone(),
        );
        crate::metrics::register(
            "notifications_malformed",
            "Messages notification listeners dropped because they were not notifications",
            m.malformed.clone(),
        );
        m
    })
}

/// One publish waiting for the broker.
struct Pending {
    routing_key: String,
    body: Bytes,
    retry: Option<u32>,
    priority: Priority,
    event_type: String,
}

struct Shared {
    drivers: Vec<Driver>,
    topics: Vec<String>,
    queue: mpsc::Sender<Pending>,
    /// Notifications queued and not yet sent or given up.
    outstanding: watch::Sender<usize>,
}

/// Sends notifications; see the [module docs](super).
///
/// Every method returns at once: the notification is encoded, queued and
/// published in the background, in order. A clone (or a
/// [`prepare`](Notifier::prepare)d one) shares the queue.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    publisher_id: Arc<str>,
    retry: Option<u32>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("publisher_id", &self.publisher_id)
            .field("drivers", &self.shared.drivers)
            .finish()
    }
}

impl Notifier {
    /// A notifier on `transport`. Its sender task runs on the current
    /// Tokio runtime until the last clone is dropped and the queue drained.
    pub fn new(transport: Arc<dyn Transport>, options: NotifierOptions) -> Self {
        metrics();
        let (queue, pending) = mpsc::channel(options.backlog.max(1));
        let outstanding = watch::Sender::new(0);
        let exchange = options.exchange.unwrap_or_else(|| transport.options().control_exchange.clone());
        tokio::spawn(send_loop(transport, exchange, pending, outstanding.clone()));
        let shared = Shared { drivers: options.drivers, topics: options.topics, queue, outstanding };
        Self { shared: Arc::new(shared), publisher_id: Arc::from(""), retry: options.retry }
    }

    /// The same notifier, sending as `publisher_id` (`nova-compute:host1`).
    pub fn prepare(&self, publisher_id: impl Into<String>) -> Self {
        Self { publisher_id: Arc::from(publisher_id.into()), ..self.clone() }
    }

    /// The same notifier, with `retry` for what it sends (see [`NotifierOptions::retry`]).
    pub fn with_retry(&self, retry: Option<u32>) -> Self {
        Self { retry, ..self.clone() }
    }

    /// Whether anything is sent at all (some driver other than `noop`):
    /// a caller can skip building a payload nobody will see.
    pub fn is_enabled(&self) -> bool {
        self.shared.drivers.iter().any(|d| *d != Driver::Noop)
    }

    /// The publisher id it sends as.
    pub fn publisher_id(&self) -> &str {
        &self.publisher_id
    }

    /// Send a notification at `priority`. Never blocks and never fails:
    /// what cannot be sent is logged and counted.
    pub fn notify(&self, ctx: &RequestContext, event_type: &str, priority: Priority, payload: impl Serialize) {
        if !self.is_enabled() {
            return;
        }
        let payload = match crate::pyjson::to_string(&payload) {
            Ok(p) => p,
            Err(e) => {
                metrics().count(priority, "dropped");
                tracing::error!(event_type, error = %e, "notification dropped: its payload cannot be written as JSON");
                return;
            }
        };
        let message_id = crate::id::random_uuid().to_string();
        let timestamp = utc_timestamp(SystemTime::now());
        let unique_id = crate::id::new_id();
        let n = NotificationRef {
            message_id: &message_id,
            publisher_id: &self.publisher_id,
            event_type,
            priority,
            payload: &payload,
            timestamp: &timestamp,
            unique_id: &unique_id,
            context: Some(ctx),
        };
        for driver in &self.shared.drivers {
            self.through(driver, &n);
        }
    }

    fn through(&self, driver: &Driver, n: &NotificationRef<'_>) {
        match driver {
            Driver::MessagingV2 | Driver::Messaging => {
                let body = match encode(n, *driver == Driver::MessagingV2) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        metrics().count(n.priority, "dropped");
                        tracing::error!(event_type = n.event_type, error = %e, "notification dropped: cannot encode it");
                        return;
                    }
                };
                for topic in &self.shared.topics {
                    self.enqueue(Pending {
                        routing_key: format!("{topic}.{}", n.priority.routing_name()),
                        body: body.clone(),
                        retry: self.retry,
                        priority: n.priority,
                        event_type: n.event_type.to_owned(),
                    });
                }
            }
            Driver::Log => log(n),
            Driver::Noop => {}
            Driver::Routing(config) => {
                for name in config.drivers_for(n.event_type, n.priority) {
                    tracing::debug!(event_type = n.event_type, driver = name, "routing a notification");
                    if let Some(d) = Driver::simple(name) {
                        self.through(&d, n);
                    }
                }
            }
        }
    }

    fn enqueue(&self, pending: Pending) {
        let (priority, outstanding) = (pending.priority, &self.shared.outstanding);
        outstanding.send_modify(|n| *n += 1);
        if let Err(e) = self.shared.queue.try_send(pending) {
            outstanding.send_modify(|n| *n -= 1);
            metrics().count(priority, "dropped");
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            tracing::warn!(
                event_type = p.event_type,
                routing_key = p.routing_key,
                "notification dropped: the backlog waiting for the broker is full"
            );
        }
    }

    /// Wait until everything queued so far was sent or given up, for at most
    /// `timeout`; whether it all was. For an orderly stop and for tests.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let mut outstanding = self.shared.outstanding.subscribe();
        let drained = tokio::time::timeout(timeout, outstanding.wait_for(|n| *n == 0)).await.is_ok();
        drained
    }

    /// `AUDIT`.
    pub fn audit(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Audit, payload);
    }

    /// `DEBUG`.
    pub fn debug(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Debug, payload);
    }

    /// `INFO`.
    pub fn info(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Info, payload);
    }

    /// `WARN`.
    pub fn warn(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Warn, payload);
    }

    /// `ERROR`.
    pub fn error(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Error, payload);
    }

    /// `CRITICAL`.
    pub fn critical(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Critical, payload);
    }

    /// `SAMPLE`.
    pub fn sample(&self, ctx: &RequestContext, event_type: &str, payload: impl Serialize) {
        self.notify(ctx, event_type, Priority::Sample, payload);
    }
}

/// The `log` driver: the notification as one JSON object, at its priority's level.
fn log(n: &NotificationRef<'_>) {
    let text = match encode(&NotificationRef { context: None, ..*n }, false) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return,
    };
    let event_type = n.event_type;
    match n.priority {
        Priority::Debug => tracing::debug!(target: "nova_rpc::notification", event_type, "{text}"),
        Priority::Warn => tracing::warn!(target: "nova_rpc::notification", event_type, "{text}"),
        Priority::Error | Priority::Critical => tracing::error!(target: "nova_rpc::notification", event_type, "{text}"),
        Priority::Audit | Priority::Info | Priority::Sample => {
            tracing::info!(target: "nova_rpc::notification", event_type, "{text}")
        }
    }
    metrics().count(n.priority, "logged");
}

/// Publish what is queued, in order, each retried as its notifier says.
async fn send_loop(
    transport: Arc<dyn Transport>,
    exchange: String,
    mut pending: mpsc::Receiver<Pending>,
    outstanding: watch::Sender<usize>,
) {
    while let Some(p) = pending.recv().await {
        let to = Destination::Notification {
            exchange: exchange.as_str().into(),
            routing_key: p.routing_key.as_str().into(),
        };
        let message = Outgoing { retry: p.retry, ..Outgoing::new(p.body) };
        match transport.send(&to, message).await {
            Ok(()) => metrics().count(p.priority, "sent"),
            Err(e) => {
                metrics().count(p.priority, "failed");
                tracing::error!(
                    event_type = p.event_type,
                    routing_key = p.routing_key,
                    retry = ?p.retry,
                    error = %e,
                    "notification not sent: the broker did not take it within its retries"
                );
            }
        }
        outstanding.send_modify(|n| *n -= 1);
    }
}
