//! Notifications from a nova-rs service: oslo's options, Nova's formats.
//!
//! [`Notifications`] is what a manager holds (from
//! [`ManagerDeps::notifier`](crate::ManagerDeps)) to tell the rest of a
//! cloud what happened, in the formats `[notifications]
//! notification_format` asks for:
//!
//! | format | topic(s) | payload |
//! | --- | --- | --- |
//! | `unversioned` | `[oslo_messaging_notifications] topics` (`notifications`) | the payload's fields |
//! | `versioned` | `[notifications] versioned_notifications_topics` (`versioned_notifications`) | `{"nova_object.name", "nova_object.namespace", "nova_object.version", "nova_object.data"}`, as Nova's |
//! | `both` | both | both |
//!
//! Nothing is sent until `[oslo_messaging_notifications] driver` names a
//! driver, as in oslo. A payload is a struct that says its name and
//! version:
//!
//! ```
//! use nova_core::notifications::{Versioned, VersionedPayload};
//!
//! #[derive(serde::Serialize)]
//! struct ResizePayload {
//!     task_id: String,
//!     flavor: String,
//! }
//!
//! impl VersionedPayload for ResizePayload {
//!     const NAME: &'static str = "ResizePayload";
//!     const VERSION: &'static str = "1.0";
//! }
//!
//! let p = ResizePayload { task_id: "t1".into(), flavor: "m1.small".into() };
//! let wire = serde_json::to_value(Versioned(&p)).unwrap();
//! assert_eq!(wire["nova_object.name"], "ResizePayload");
//! assert_eq!(wire["nova_object.namespace"], "nova");
//! assert_eq!(wire["nova_object.data"]["flavor"], "m1.small");
//! ```

use std::sync::Arc;

use nova_rpc::{
    notify::{Driver, Notifier, NotifierOptions, Priority, RoutingConfig},
    transport::{self, Transport},
    RequestContext,
};
use serde::{ser::SerializeMap, Serialize};

use crate::config::{Config, ConfigError};

/// `[oslo_messaging_notifications]` and `[notifications]`.
pub mod options {
    use crate::config::{parse, Opt};

    /// `[oslo_messaging_notifications] driver`.
    pub const DRIVER: Opt<Vec<String>> = Opt::new(
        "oslo_messaging_notifications",
        "driver",
        "",
        "Where notifications go: messagingv2, messaging, log, noop or routing (a comma-separated list for several); empty: nowhere.",
        parse::list,
    );

    /// `[oslo_messaging_notifications] transport_url`.
    pub const TRANSPORT_URL: Opt<Option<String>> = Opt::new(
        "oslo_messaging_notifications",
        "transport_url",
        "",
        "A broker of their own for notifications; empty: the RPC transport_url.",
        parse::optional_text,
    );

    /// `[oslo_messaging_notifications] topics`.
    pub const TOPICS: Opt<Vec<String>> = Opt::new(
        "oslo_messaging_notifications",
        "topics",
        "notifications",
        "Topics notifications are published on, as <topic>.<priority>.",
        parse::list,
    );

    /// `[oslo_messaging_notifications] retry`.
    pub const RETRY: Opt<i64> = Opt::new(
        "oslo_messaging_notifications",
        "retry",
        "-1",
        "Times to reconnect and resend a notification the broker did not take: 0 none, -1 until it is back (it never blocks the service).",
        super::checks::retry,
    );

    /// `[oslo_messaging_notifications] routing_config`.
    pub const ROUTING_CONFIG: Opt<Option<std::path::PathBuf>> = Opt::new(
        "oslo_messaging_notifications",
        "routing_config",
        "",
        "The routing driver's YAML file: groups of drivers with accepted_events and accepted_priorities.",
        parse::optional_path,
    );

    /// `[notifications] notification_format`.
    pub const NOTIFICATION_FORMAT: Opt<super::Format> = Opt::new(
        "notifications",
        "notification_format",
        "unversioned",
        "unversioned, versioned or both: which of Nova's notification formats are sent.",
        super::checks::format,
    );

    /// `[notifications] versioned_notifications_topics`.
    pub const VERSIONED_NOTIFICATIONS_TOPICS: Opt<Vec<String>> = Opt::new(
        "notifications",
        "versioned_notifications_topics",
        "versioned_notifications",
        "Topics versioned notifications are published on.",
        parse::list,
    );
}

mod checks {
    use crate::config::Invalid;

    pub(super) fn retry(v: &str) -> Result<i64, Invalid> {
        match v.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => Err("expected -1 (until the broker is back), 0, or a number of retries".into()),
        }
    }

    pub(super) fn format(v: &str) -> Result<super::Format, Invalid> {
        match v {
            "unversioned" => Ok(super::Format::Unversioned),
            "versioned" => Ok(super::Format::Versioned),
            "both" => Ok(super::Format::Both),
            _ => Err("expected unversioned, versioned or both".into()),
        }
    }
}

/// Which of Nova's formats are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The payload's fields, on the unversioned topics.
    Unversioned,
    /// `nova_object` payloads, on the versioned topics.
    Versioned,
    /// Both.
    Both,
}

/// A payload with a name and a version, as Nova's versioned notification
/// payloads are (`ServiceStatusPayload` 1.1, …). Bump `VERSION`'s minor
/// when adding a field and its major when changing or removing one, so
/// consumers can tell.
pub trait VersionedPayload: Serialize {
    /// The object's name: `TaskPayload`.
    const NAME: &'static str;
    /// `major.minor`.
    const VERSION: &'static str;
    /// Whose object it is.
    const NAMESPACE: &'static str = "nova";
}

/// A payload as a versioned notification carries it: the fields under
/// `nova_object.data`, with its name, namespace and version beside them.
#[derive(Debug, Clone, Copy)]
pub struct Versioned<'a, T>(pub &'a T);

impl<T: VersionedPayload> Serialize for Versioned<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("nova_object.name", T::NAME)?;
        map.serialize_entry("nova_object.namespace", T::NAMESPACE)?;
        map.serialize_entry("nova_object.version", T::VERSION)?;
        map.serialize_entry("nova_object.data", self.0)?;
        map.end()
    }
}

/// A service's notifier, in the formats the configuration asks for; see
/// the module docs. Cloning is cheap; every clone shares one send queue.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    unversioned: Option<Notifier>,
    versioned: Option<Notifier>,
}

impl Notifications {
    /// Sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// From the configuration, on `transport` unless
    /// `[oslo_messaging_notifications] transport_url` names a broker of
    /// their own.
    ///
    /// # Errors
    ///
    /// An option that cannot be read, an unknown driver, or a routing file
    /// that cannot be read.
    pub async fn from_config(c: &Config, transport: Arc<dyn Transport>) -> Result<Self, ConfigError> {
        Self::from_config_or(c, transport, &[]).await
    }

    /// As [`from_config`](Self::from_config), with `drivers` when the
    /// configuration names none (`nova-all` on its embedded defaults
    /// sends `messagingv2`, so its console has events to show).
    ///
    /// # Errors
    ///
    /// As [`from_config`](Self::from_config).
    pub async fn from_config_or(
        c: &Config,
        transport: Arc<dyn Transport>,
        drivers: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut names = c.value(&options::DRIVER)?;
        if c.raw("oslo_messaging_notifications", "driver").is_none() {
            names = drivers.iter().map(|d| (*d).to_owned()).collect();
        }
        let (format, retry) = (c.value(&options::NOTIFICATION_FORMAT)?, c.value(&options::RETRY)?);
        let (topics, versioned_topics) =
            (c.value(&options::TOPICS)?, c.value(&options::VERSIONED_NOTIFICATIONS_TOPICS)?);
        if names.is_empty() {
            return Ok(Self::disabled());
        }
        let routing = match c.value(&options::ROUTING_CONFIG)? {
            Some(path) => Some(Arc::new(read_routing(&path).map_err(|e| {
                c.invalid("oslo_messaging_notifications", "routing_config", format!("{}: {e}", path.display()))
            })?)),
            None => None,
        };
        let drivers = names
            .iter()
            .map(|n| Driver::named(n, routing.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| c.invalid("oslo_messaging_notifications", "driver", e.to_string()))?;
        let transport = match c.value(&options::TRANSPORT_URL)? {
            Some(url) => {
                let mut o = transport.options().clone();
                o.transport_url = url;
                transport::connect(o)
                    .await
                    .map_err(|e| c.invalid("oslo_messaging_notifications", "transport_url", e.to_string()))?
            }
            None => transport,
        };
        let retry = u32::try_from(retry).ok();
        let notifier = |topics: Vec<String>| {
            let options = NotifierOptions { drivers: drivers.clone(), topics, retry, ..NotifierOptions::default() };
            Notifier::new(transport.clone(), options)
        };
        Ok(Self {
            unversioned: (format != Format::Versioned).then(|| notifier(topics)),
            versioned: (format != Format::Unversioned).then(|| notifier(versioned_topics)),
        })
    }

    /// From notifiers of your own: `unversioned` sends payloads' fields,
    /// `versioned` their `nova_object` form.
    pub fn new(unversioned: Option<Notifier>, versioned: Option<Notifier>) -> Self {
        Self { unversioned, versioned }
    }

    /// The same, sending as `publisher_id` (Nova's `nova-compute:host1`).
    pub fn prepare(&self, publisher_id: &str) -> Self {
        Self {
            unversioned: self.unversioned.as_ref().map(|n| n.prepare(publisher_id)),
            versioned: self.versioned.as_ref().map(|n| n.prepare(publisher_id)),
        }
    }

    /// Whether anything is sent.
    pub fn is_enabled(&self) -> bool {
        self.unversioned.iter().chain(&self.versioned).any(Notifier::is_enabled)
    }

    /// Send `payload` as `event_type` at `priority`, in every configured
    /// format. Never blocks, never fails (see [`Notifier`]).
    pub fn emit<T: VersionedPayload>(&self, ctx: &RequestContext, priority: Priority, event_type: &str, payload: &T) {
        if let Some(n) = &self.unversioned {
            n.notify(ctx, event_type, priority, payload);
        }
        if let Some(n) = &self.versioned {
            n.notify(ctx, event_type, priority, Versioned(payload));
        }
    }

    /// Wait up to `timeout` for what was emitted to be sent or given up.
    pub async fn flush(&self, timeout: std::time::Duration) -> bool {
        let mut all = true;
        for n in self.unversioned.iter().chain(&self.versioned) {
            all &= n.flush(timeout).await;
        }
        all
    }
}

/// `service.update`'s payload: the service record, as Nova's
/// `ServiceStatusPayload` has it, and whether the service is up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatusPayload {
    /// The record's uuid.
    pub uuid: String,
    /// Node name.
    pub host: String,
    /// Program name.
    pub binary: String,
    /// RPC topic.
    pub topic: String,
    /// Heartbeats so far.
    pub report_count: i64,
    /// Disabled by an operator.
    pub disabled: bool,
    /// Why.
    pub disabled_reason: Option<String>,
    /// Forced down by an operator.
    pub forced_down: bool,
    /// Last heartbeat (UTC, ISO 8601).
    pub last_seen_up: Option<String>,
    /// The service version.
    pub version: i64,
    /// Whether it is serving and reporting: `false` once it stops or
    /// cannot consume its queues (nova-rs's addition to Nova's fields).
    pub up: bool,
}

impl VersionedPayload for ServiceStatusPayload {
    const NAME: &'static str = "ServiceStatusPayload";
    const VERSION: &'static str = "1.0";
    const NAMESPACE: &'static str = "nova-rs";
}

impl ServiceStatusPayload {
    /// The payload for `record`.
    pub fn new(record: &crate::db::services::ServiceRecord, up: bool) -> Self {
        Self {
            uuid: record.uuid.clone(),
            host: record.host.clone(),
            binary: record.binary.clone(),
            topic: record.topic.clone(),
            report_count: record.report_count,
            disabled: record.disabled,
            disabled_reason: record.disabled_reason.clone(),
            forced_down: record.forced_down,
            last_seen_up: record.last_seen_up.map(|t| t.and_utc().to_rfc3339()),
            version: record.version,
            up: up && !record.forced_down,
        }
    }

    /// Whether `other` says something different about the service
    /// (heartbeats aside).
    pub fn differs(&self, other: &Self) -> bool {
        (self.disabled, &self.disabled_reason, self.forced_down, self.up, self.version)
            != (other.disabled, &other.disabled_reason, other.forced_down, other.up, other.version)
    }
}

impl Notifications {
    /// `service.update` (INFO) for `record`.
    pub fn service_update(&self, record: &crate::db::services::ServiceRecord, up: bool) {
        self.emit(&RequestContext::new(), Priority::Info, "service.update", &ServiceStatusPayload::new(record, up));
    }
}

/// The routing driver's YAML file, read.
fn read_routing(path: &std::path::Path) -> Result<RoutingConfig, String> {
    let file = config::File::from(path).format(config::FileFormat::Yaml);
    let value: serde_json::Value = config::Config::builder()
        .add_source(file)
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())?;
    RoutingConfig::from_value(&value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_choose_formats_and_drivers() {
        let t = transport::connect(transport::TransportOptions::new("memory://notifications-options")).await.unwrap();
        let config = |pairs: &[(&str, &str, &str)]| {
            let mut c = Config::with_defaults(crate::config::CORE_OPTIONS);
            for (section, name, value) in pairs {
                c.set(section, name, (*value).to_owned(), crate::config::Origin::Code);
            }
            c
        };
        assert!(
            !Notifications::from_config(&config(&[]), t.clone()).await.unwrap().is_enabled(),
            "off by default, as oslo"
        );
        let n = config(&[
            ("oslo_messaging_notifications", "driver", "messagingv2"),
            ("notifications", "notification_format", "both"),
        ]);
        let n = Notifications::from_config(&n, t.clone()).await.unwrap();
        assert!(n.unversioned.is_some() && n.versioned.is_some() && n.is_enabled());
        let bad = config(&[("oslo_messaging_notifications", "driver", "kafka")]);
        let err = Notifications::from_config(&bad, t.clone()).await.unwrap_err().to_string();
        assert!(err.contains("driver") && err.contains("kafka"), "{err}");
        let bad = config(&[("notifications", "notification_format", "xml")]);
        let err = Notifications::from_config(&bad, t.clone()).await.unwrap_err().to_string();
        assert!(err.contains("notification_format"), "checked even while nothing is sent: {err}");
        let bad = config(&[
            ("oslo_messaging_notifications", "driver", "messagingv2"),
            ("oslo_messaging_notifications", "retry", "-2"),
        ]);
        assert!(Notifications::from_config(&bad, t.clone()).await.unwrap_err().to_string().contains("retry"));
        let bad = config(&[("oslo_messaging_notifications", "driver", "routing")]);
        let err = Notifications::from_config(&bad, t).await.unwrap_err().to_string();
        assert!(err.contains("routing_config"), "{err}");
    }
}

#[cfg(test)]
mod own_broker {
    use std::time::Duration;

    use nova_rpc::notify::{handler, NotificationListener, NotificationResult};

    use super::*;

    /// `transport_url` sends notifications to a broker of their own, not
    /// the RPC one; a routing file chooses drivers per event.
    #[tokio::test]
    async fn transport_url_and_routing_config() {
        let rpc = transport::connect(transport::TransportOptions::new("memory://notify-rpc-bus")).await.unwrap();
        let own = transport::connect(transport::TransportOptions::new("memory://notify-own-bus")).await.unwrap();
        let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let listening =
            |t: Arc<dyn Transport>, tx: tokio::sync::mpsc::UnboundedSender<(String, String)>, bus: &'static str| {
                NotificationListener::new(t, ["notifications"])
                    .endpoint(handler(move |n| {
                        let _ = tx.send((bus.to_owned(), n.event_type));
                        async { NotificationResult::Handled }
                    }))
                    .start()
            };
        let on_rpc = listening(rpc.clone(), tx.clone(), "rpc").await.unwrap();
        let on_own = listening(own, tx, "own").await.unwrap();
        let dir = std::env::temp_dir().join(format!("nova-routing-{}", nova_rpc::id::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let routing = dir.join("routing.yaml");
        std::fs::write(&routing, "group_1:\n  messagingv2:\n    accepted_events: ['task.*']\n").unwrap();
        let mut c = Config::with_defaults(crate::config::CORE_OPTIONS);
        for (name, value) in [
            ("driver", "routing".to_owned()),
            ("routing_config", routing.display().to_string()),
            ("transport_url", "memory://notify-own-bus".to_owned()),
        ] {
            c.set("oslo_messaging_notifications", name, value, crate::config::Origin::Code);
        }
        let n = Notifications::from_config(&c, rpc).await.unwrap().prepare("nova-test:h1");
        #[derive(Serialize)]
        struct P {
            n: u32,
        }
        impl VersionedPayload for P {
            const NAME: &'static str = "P";
            const VERSION: &'static str = "1.0";
        }
        n.emit(&RequestContext::new(), Priority::Info, "service.update", &P { n: 1 });
        n.emit(&RequestContext::new(), Priority::Info, "task.run.end", &P { n: 2 });
        let first = tokio::time::timeout(Duration::from_secs(5), got.recv()).await.unwrap().unwrap();
        assert_eq!(first, ("own".to_owned(), "task.run.end".to_owned()), "routed, and on the broker of their own");
        assert!(n.flush(Duration::from_secs(5)).await);
        assert!(got.try_recv().is_err(), "service.update matched no route");
        on_rpc.stop().await;
        on_own.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
