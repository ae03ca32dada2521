//! Notifications: oslo.messaging's other half, on the same wire.
//!
//! A [`Notifier`] tells whoever listens that something happened (a task
//! started, a service went down); a [`NotificationListener`] hands the
//! notifications it is interested in to endpoints. Ceilometer, billing
//! systems and operators' own listeners consume Nova's this way, and both
//! halves here speak oslo.messaging 18.3.1's wire:
//!
//! | | where |
//! | --- | --- |
//! | message | `message_id`, `publisher_id`, `event_type`, `priority`, `payload`, `timestamp`, `_unique_id`, then the context's `_context_*` keys, in the 2.0 envelope (`messagingv2`) or bare (`messaging`) |
//! | published to | the control exchange (a topic exchange), routing key `<topic>.<priority>`, e.g. `notifications.info` |
//! | kept for listeners | a queue named after the routing key, declared by the notifier before it publishes, so nothing is lost before the first listener comes |
//! | pools | a listener in pool `P` reads queue `P`, bound with every routing key it wants: each pool gets every notification, a pool's listeners share them |
//!
//! Sending is best-effort and never blocks the caller: a notification is
//! queued and published in the background, retried `retry` times while
//! the broker is away (forever by default, as oslo's `-1`), and otherwise
//! dropped with a log line and a count in `nova_notifications_total`.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//!
//! use nova_rpc::notify::{handler, NotificationListener, NotificationResult, Notifier, NotifierOptions, Priority};
//! use nova_rpc::{transport, RequestContext};
//!
//! let t = transport::connect(transport::TransportOptions::new("memory://notify-doc")).await?;
//! let (seen, mut events) = tokio::sync::mpsc::unbounded_channel();
//! let listener = NotificationListener::new(t.clone(), ["notifications"])
//!     .endpoint(handler(move |n| {
//!         let seen = seen.clone();
//!         async move {
//!             let _ = seen.send(n);
//!             NotificationResult::Handled
//!         }
//!     }).priorities([Priority::Info]))
//!     .start()
//!     .await?;
//!
//! let notifier = Notifier::new(t, NotifierOptions::default()).prepare("compute.host1");
//! notifier.info(&RequestContext::new(), "task.run.end", serde_json::json!({"task_id": "t1"}));
//! let n = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
//! assert_eq!((n.publisher_id.as_str(), n.event_type.as_str()), ("compute.host1", "task.run.end"));
//! assert_eq!(n.payload["task_id"], "t1");
//! listener.stop().await;
//! # Ok::<(), nova_rpc::RpcError>(()) }).unwrap();
//! ```

mod filter;
mod listener;
mod message;
mod notifier;
mod routing;

use serde_json::{Map, Value};

pub use self::{
    filter::NotificationFilter,
    listener::{
        handler, Handler, NotificationEndpoint, NotificationListener, NotificationResult, NotificationTarget,
        RunningListener,
    },
    message::{decode, encode, utc_timestamp, NotificationRef},
    notifier::{metrics, Driver, DriverError, NotificationMetrics, Notifier, NotifierOptions},
    routing::{fnmatch, RoutingConfig, RoutingError, RoutingRule},
};

/// How much a notification matters, as oslo names it. The message says it
/// in capitals (`INFO`); the routing key in lower case (`notifications.info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// An audit record.
    Audit,
    /// Debugging detail.
    Debug,
    /// Something happened (most notifications).
    Info,
    /// Something went wrong but was handled.
    Warn,
    /// Something failed.
    Error,
    /// Something failed badly.
    Critical,
    /// A measurement (Ceilometer's samples).
    Sample,
}

impl Priority {
    /// Every priority, in oslo's order.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// As the message says it: `INFO`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }

    /// As the routing key says it: `info`.
    pub fn routing_name(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }

    /// Read a priority in any case; `warning` is `WARN`, as in oslo.
    pub fn parse(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower == "warning" {
            return Some(Priority::Warn);
        }
        Self::ALL.into_iter().find(|p| p.routing_name() == lower)
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A notification as a listener receives it: what oslo's listener hands
/// its endpoints (`ctxt, publisher_id, event_type, payload, metadata`) and
/// the priority it came with. Serialized, it is one JSON object with
/// those keys (what `nova-rpc listen` prints).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notification {
    /// The priority.
    pub priority: Priority,
    /// Who sent it (`nova-compute:host1`, `compute.host1`).
    pub publisher_id: String,
    /// What happened (`task.run.end`).
    pub event_type: String,
    /// What the sender said about it.
    pub payload: Value,
    /// `message_id` and `timestamp`.
    pub metadata: Metadata,
    /// The sender's request context, as a dictionary (`{}` when it sent none).
    pub ctxt: Map<String, Value>,
}

/// A notification's `message_id` and `timestamp`, as oslo's listener
/// passes them in `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// A UUID, with dashes.
    pub message_id: String,
    /// When it was sent, in UTC, as Python prints a datetime: `2026-12-07 08:30:00.123456`.
    pub timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::Priority;

    #[test]
    fn priorities_read_as_oslo_writes_them() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
            assert_eq!(Priority::parse(p.routing_name()), Some(p));
        }
        assert_eq!(Priority::parse("warning"), Some(Priority::Warn));
        assert_eq!(Priority::parse("loud"), None);
    }
}
