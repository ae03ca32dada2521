//! What nova-rs declares on a RabbitMQ, as data: exchanges, queues with
//! their arguments, bindings and consumer arguments, for a server, a
//! client's reply queue and each kind of publish.
//!
//! Every `[oslo_messaging_rabbit]` option that changes a declaration changes
//! it here exactly as it changes oslo.messaging 18.3.1's rabbit driver
//! (`impl_rabbit.py`: `_get_queue_arguments`, `declare_topic_consumer`,
//! `declare_fanout_consumer`, `declare_direct_consumer`, `topic_send`,
//! `fanout_send`, `direct_send`), so a Python and a Rust service share
//! exchanges and queues under any configuration. The listener and the
//! publisher declare what this module says; the tests read it too.
//!
//! ```
//! use nova_rpc::transport::{amqp::topology::{Arg, Topology}, ListenSpec, Queues, RabbitOptions};
//!
//! let options = RabbitOptions { rabbit_quorum_queue: true, ..RabbitOptions::default() };
//! let spec = ListenSpec {
//!     exchange: "nova".into(), topic: "compute".into(), server: "c1".into(),
//!     prefetch: 64, durable: false, max_deliveries: None, queues: Queues::All,
//! };
//! let server = Topology::new(&options).server(&spec);
//! let topic = &server.subscriptions[0].queue;
//! assert_eq!(topic.name, "compute");
//! assert!(topic.durable);
//! assert_eq!(topic.argument("x-queue-type"), Some(&Arg::Str("quorum".into())));
//! ```

use std::{
    borrow::Cow,
    io::{Read, Seek, Write},
    path::PathBuf,
    sync::Mutex,
};

use crate::transport::{
    dead_letter_queue, Destination, ListenSpec, NotificationQueue, NotificationSpec, RabbitOptions,
};

/// A queue or consumer argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A string (`x-queue-type`, `x-max-age`, `x-stream-offset` as a word).
    Str(String),
    /// A number.
    Int(i64),
    /// A flag (`x-cancel-on-ha-failover`).
    Bool(bool),
}

/// An exchange's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes by routing-key pattern (the `control_exchange`).
    Topic,
    /// Copies to every bound queue (`<topic>_fanout`).
    Fanout,
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
}

/// A queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-…` arguments, in oslo's order.
    pub arguments: Vec<(String, Arg)>,
}

impl Queue {
    /// The value of argument `key`, if set.
    pub fn argument(&self, key: &str) -> Option<&Arg> {
        self.arguments.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A transient queue, in RabbitMQ 4's sense: neither durable nor
    /// exclusive. RabbitMQ 4.3 refuses to declare these (nova-rs never
    /// declares exclusive queues).
    pub fn is_transient_non_exclusive(&self) -> bool {
        !self.durable
    }

    /// Whether this is a stream queue, consumed from an offset.
    pub fn is_stream(&self) -> bool {
        self.argument("x-queue-type") == Some(&Arg::Str("stream".into()))
    }
}

/// A queue's binding to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The exchange, declared before binding.
    pub exchange: Exchange,
    /// The binding's routing key.
    pub routing_key: String,
}

/// One consumed queue: what to declare before consuming it, and how to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The queue.
    pub queue: Queue,
    /// Its bindings (none: only the default exchange reaches it). A
    /// notification pool's queue has one per target and priority.
    pub bindings: Vec<Binding>,
    /// `basic.consume` arguments (`x-cancel-on-ha-failover`; a stream's
    /// `x-stream-offset` is added by the consumer, which tracks the offset).
    pub consumer_arguments: Vec<(String, Arg)>,
    /// Delete the queue when the consumer stops (names nobody reuses).
    pub delete_on_stop: bool,
}

/// Everything a server declares and consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTopology {
    /// Declared first, not consumed: an at-least-once target's `<topic>.dead`.
    pub dead_letter: Option<Queue>,
    /// `topic`, `topic.server`, and the fanout queue, each consumed on its own channel.
    pub subscriptions: Vec<Subscription>,
}

/// Where and how one message is published (borrowed from its
/// destination: nothing is allocated for a topic publish, the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The exchange published to (`""` for the default exchange).
    pub exchange: Cow<'a, str>,
    /// The routing key.
    pub routing_key: &'a str,
    /// Return the message if no queue takes it.
    pub mandatory: bool,
}

/// The topology for one set of options; see the module docs.
#[derive(Debug)]
pub struct Topology {
    options: RabbitOptions,
    names: Option<QueueManager>,
}

impl Topology {
    /// The topology `options` call for.
    pub fn new(options: &RabbitOptions) -> Self {
        let names = options.use_queue_manager.then(|| QueueManager::new(&options.hostname, &options.processname));
        Self { options: options.clone(), names }
    }

    /// oslo's `_get_queue_arguments(rabbit_ha_queues, ttl, quorum, quorum config, stream)`.
    fn queue_arguments(&self, ttl_secs: u64, quorum: bool, stream: bool) -> Vec<(String, Arg)> {
        let o = &self.options;
        if stream {
            let mut args = vec![("x-queue-type".into(), Arg::Str("stream".into()))];
            if ttl_secs > 0 {
                args.push(("x-max-age".into(), Arg::Str(format!("{ttl_secs}s"))));
            }
            return args;
        }
        let mut args = Vec::new();
        if o.rabbit_ha_queues {
            args.push(("x-ha-policy".into(), Arg::Str("all".into())));
        }
        if quorum {
            args.push(("x-queue-type".into(), Arg::Str("quorum".into())));
            for (key, value) in [
                ("x-delivery-limit", u64::from(o.rabbit_quorum_delivery_limit)),
                ("x-max-in-memory-length", u64::from(o.rabbit_quorum_max_memory_length)),
                ("x-max-in-memory-bytes", o.rabbit_quorum_max_memory_bytes),
            ] {
                if value > 0 {
                    args.push((key.into(), Arg::Int(i64::try_from(value).unwrap_or(i64::MAX))));
                }
            }
        }
        if ttl_secs > 0 {
            let ms = ttl_secs.saturating_mul(1000);
            args.push(("x-expires".into(), Arg::Int(i64::try_from(ms).unwrap_or(i64::MAX))));
        }
        args
    }

    fn consumer_arguments(&self) -> Vec<(String, Arg)> {
        if self.options.enable_cancel_on_failover {
            vec![("x-cancel-on-ha-failover".into(), Arg::Bool(true))]
        } else {
            Vec::new()
        }
    }

    fn transient_ttl(&self) -> u64 {
        self.options.rabbit_transient_queues_ttl.as_secs()
    }

    /// The shared topic exchange (`control_exchange`).
    pub fn topic_exchange(&self, name: &str) -> Exchange {
        Exchange {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
            durable: self.options.topic_durable(),
            auto_delete: self.options.amqp_auto_delete,
        }
    }

    /// A topic's fanout exchange: durable with transient quorum queues or streams.
    pub fn fanout_exchange(&self, topic: &str) -> Exchange {
        let o = &self.options;
        Exchange {
            name: format!("{topic}_fanout"),
            kind: ExchangeKind::Fanout,
            durable: o.rabbit_transient_quorum_queue || o.rabbit_stream_fanout,
            auto_delete: true,
        }
    }

    /// A `topic` or `topic.server` queue. An at-least-once target's queues
    /// are quorum queues whose broker-side delivery limit dead-letters to
    /// `<topic>.dead`.
    fn topic_queue(&self, name: String, spec: &ListenSpec) -> Queue {
        let o = &self.options;
        let quorum = o.rabbit_quorum_queue || spec.max_deliveries.is_some();
        let mut arguments = self.queue_arguments(0, quorum, false);
        if let Some(limit) = spec.max_deliveries {
            arguments.retain(|(k, _)| k != "x-delivery-limit");
            arguments.push(("x-delivery-limit".into(), Arg::Int(i64::from(limit))));
            arguments.push(("x-dead-letter-exchange".into(), Arg::Str(String::new())));
            arguments.push(("x-dead-letter-routing-key".into(), Arg::Str(dead_letter_queue(&spec.topic))));
        }
        Queue { name, durable: o.topic_durable() || spec.durable, auto_delete: o.amqp_auto_delete, arguments }
    }

    /// A server's topology: `topic`, `topic.server`, and its fanout queue
    /// (one shared stream per topic with `rabbit_stream_fanout`).
    pub fn server(&self, spec: &ListenSpec) -> ServerTopology {
        let exchange = self.topic_exchange(&spec.exchange);
        let mut subscriptions = Vec::new();
        let keys = [
            (spec.topic.clone(), spec.queues.shared()),
            (format!("{}.{}", spec.topic, spec.server), spec.queues.own()),
        ];
        for (key, _) in keys.into_iter().filter(|(_, consumed)| *consumed) {
            subscriptions.push(Subscription {
                queue: self.topic_queue(key.clone(), spec),
                bindings: vec![Binding { exchange: exchange.clone(), routing_key: key }],
                consumer_arguments: self.consumer_arguments(),
                delete_on_stop: false,
            });
        }
        if spec.queues.own() {
            subscriptions.push(self.fanout_subscription(spec));
        }
        // A quorum queue, as the target's own: it survives the loss of a
        // node, and no server waits for a node to declare it.
        let dead_letter = spec.max_deliveries.map(|_| Queue {
            name: dead_letter_queue(&spec.topic),
            durable: true,
            auto_delete: false,
            arguments: vec![("x-queue-type".into(), Arg::Str("quorum".into()))],
        });
        ServerTopology { dead_letter, subscriptions }
    }

    /// A server's fanout queue (the topic's one stream with `rabbit_stream_fanout`).
    fn fanout_subscription(&self, spec: &ListenSpec) -> Subscription {
        let o = &self.options;
        let stream = o.rabbit_stream_fanout;
        let name = if stream {
            format!("{}_fanout", spec.topic)
        } else {
            format!("{}_fanout_{}", spec.topic, self.unique_suffix())
        };
        Subscription {
            queue: Queue {
                name,
                durable: o.rabbit_transient_quorum_queue || stream,
                auto_delete: false,
                arguments: self.queue_arguments(self.transient_ttl(), o.rabbit_transient_quorum_queue, stream),
            },
            bindings: vec![Binding { exchange: self.fanout_exchange(&spec.topic), routing_key: spec.topic.clone() }],
            consumer_arguments: self.consumer_arguments(),
            // A stream is the topic's, and queue-manager names are reused
            // by the next start; a random name is nobody's once we stop.
            delete_on_stop: !stream && self.names.is_none(),
        }
    }

    /// A notification queue: the one oslo's notifier declares for each
    /// routing key, a pool's, or a listener's own (`private`: transient,
    /// expiring, deleted on stop). Shared and pool queues are declared as
    /// oslo's `declare_topic_consumer` declares them, so Python listeners
    /// and notifiers agree on their flags.
    fn notification_queue(&self, name: String, private: bool) -> Queue {
        let o = &self.options;
        if private {
            let quorum = o.rabbit_transient_quorum_queue;
            let arguments = self.queue_arguments(self.transient_ttl(), quorum, false);
            return Queue { name, durable: quorum, auto_delete: false, arguments };
        }
        let arguments = self.queue_arguments(0, o.rabbit_quorum_queue, false);
        Queue { name, durable: o.topic_durable(), auto_delete: o.amqp_auto_delete, arguments }
    }

    /// What a notification listener declares and consumes: each queue once,
    /// bound with every routing key that leads to it.
    pub fn notifications(&self, spec: &NotificationSpec) -> Vec<Subscription> {
        let mut subscriptions: Vec<Subscription> = Vec::new();
        let private = format!("notifications_listen_{}", self.unique_suffix());
        for (exchange, key) in &spec.bindings {
            let name = match &spec.queue {
                NotificationQueue::Shared => key.clone(),
                NotificationQueue::Pool(pool) => pool.clone(),
                NotificationQueue::Private => private.clone(),
            };
            let binding = Binding { exchange: self.topic_exchange(exchange), routing_key: key.clone() };
            match subscriptions.iter_mut().find(|s| s.queue.name == name) {
                Some(s) if !s.bindings.contains(&binding) => s.bindings.push(binding),
                Some(_) => {}
                None => subscriptions.push(Subscription {
                    queue: self.notification_queue(name, spec.queue == NotificationQueue::Private),
                    bindings: vec![binding],
                    consumer_arguments: self.consumer_arguments(),
                    delete_on_stop: spec.queue == NotificationQueue::Private,
                }),
            }
        }
        subscriptions
    }

    /// The queue a notification to `destination` fills until a listener
    /// comes: named after its routing key, bound to it (oslo's
    /// `_publish_and_creates_default_queue`). `None` for other messages.
    pub fn notification_default_queue(&self, destination: &Destination<'_>) -> Option<(Queue, Binding)> {
        let Destination::Notification { exchange, routing_key } = destination else { return None };
        let queue = self.notification_queue(routing_key.to_string(), false);
        Some((queue, Binding { exchange: self.topic_exchange(exchange), routing_key: routing_key.to_string() }))
    }

    /// A name for a new reply queue: `reply_<uuid>`, or `reply_<host>:<process>:<n>`.
    pub fn reply_queue_name(&self) -> String {
        format!("reply_{}", self.unique_suffix())
    }

    /// A client's reply queue, on the default exchange.
    pub fn reply(&self, queue: &str) -> Subscription {
        let o = &self.options;
        Subscription {
            queue: Queue {
                name: queue.to_owned(),
                durable: o.rabbit_transient_quorum_queue,
                auto_delete: false,
                arguments: self.queue_arguments(self.transient_ttl(), o.rabbit_transient_quorum_queue, false),
            },
            bindings: Vec::new(),
            consumer_arguments: self.consumer_arguments(),
            delete_on_stop: self.names.is_none(),
        }
    }

    /// How a message to `destination` is published. Replies go to the
    /// default exchange, `mandatory` unless `direct_mandatory_flag` is off.
    pub fn publish<'a>(&self, destination: &'a Destination<'_>) -> Publish<'a> {
        match destination {
            Destination::Topic { exchange, routing_key } | Destination::Notification { exchange, routing_key } => {
                Publish { exchange: Cow::Borrowed(exchange), routing_key, mandatory: false }
            }
            Destination::Fanout { topic } => {
                Publish { exchange: Cow::Owned(format!("{topic}_fanout")), routing_key: "", mandatory: false }
            }
            Destination::Reply { queue } => Publish {
                exchange: Cow::Borrowed(""),
                routing_key: queue,
                mandatory: self.options.direct_mandatory_flag,
            },
        }
    }

    /// The exchange a publish to `destination` declares first (once per
    /// connection); `None` for the default exchange.
    pub fn exchange_to_declare(&self, destination: &Destination<'_>) -> Option<Exchange> {
        match destination {
            Destination::Topic { exchange, .. } | Destination::Notification { exchange, .. } => {
                Some(self.topic_exchange(exchange))
            }
            Destination::Fanout { topic } => Some(self.fanout_exchange(topic)),
            Destination::Reply { .. } => None,
        }
    }

    fn unique_suffix(&self) -> String {
        match &self.names {
            Some(names) => names.next(),
            None => crate::id::new_id(),
        }
    }
}

/// oslo's `QManager`: names `<hostname>:<processname>:<n>`, with `n` kept in
/// `/dev/shm/<hostname>_<processname>_qmanager` as `pgrp:n:start_time`, so
/// every process of one service generation (the same process group, started
/// at the same time) takes the next number, and a restarted service starts
/// again at 1 and so reuses its queues.
#[derive(Debug)]
struct QueueManager {
    hostname: String,
    processname: String,
    file: PathBuf,
}

/// When `/dev/shm` cannot be used: this process's own count.
static FALLBACK: Mutex<u64> = Mutex::new(0);

impl QueueManager {
    fn new(hostname: &str, processname: &str) -> Self {
        let hostname = if hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            hostname.to_owned()
        };
        let processname = if processname.is_empty() {
            std::env::args()
                .next()
                .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "nova-rs".into())
        } else {
            processname.to_owned()
        };
        let file = PathBuf::from(format!("/dev/shm/{hostname}_{processname}_qmanager"));
        Self { hostname, processname, file }
    }

    fn next(&self) -> String {
        let n = self.next_shared().unwrap_or_else(|e| {
            tracing::debug!(file = %self.file.display(), error = %e, "queue manager counter kept in-process");
            let mut n = crate::lock(&FALLBACK);
            *n += 1;
            *n
        });
        format!("{}:{}:{n}", self.hostname, self.processname)
    }

    /// Take the next number from the shared counter file, under a file lock.
    fn next_shared(&self) -> std::io::Result<u64> {
        let (pgrp, start) = service_identity()?;
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.file)?;
        f.lock()?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let mut parts = text.trim().split(':').map(|p| p.parse::<u64>().ok());
        let n = match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
            (Some(p), Some(n), Some(s)) if p == pgrp && s == start => n + 1,
            _ => 1,
        };
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{pgrp}:{n}:{start}")?;
        f.unlock()?;
        Ok(n)
    }
}

/// This service generation: the process group and its leader's start time
/// (in clock ticks since boot), read from `/proc` as oslo reads them.
fn service_identity() -> std::io::Result<(u64, u64)> {
    let field = |stat: &str, n: usize| -> Option<u64> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(n - 3)?.parse().ok()
    };
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable /proc stat");
    let own = std::fs::read_to_string("/proc/self/stat")?;
    let pgrp = field(&own, 5).ok_or_else(bad)?;
    // The group's leader may have exited already: then this process stands for it.
    let leader = std::fs::read_to_string(format!("/proc/{pgrp}/stat")).unwrap_or(own);
    Ok((pgrp, field(&leader, 22).ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ListenSpec {
        ListenSpec {
            exchange: "nova".into(),
            topic: "compute".into(),
            server: "c1".into(),
            prefetch: 8,
            durable: false,
            max_deliveries: None,
            queues: crate::transport::Queues::All,
        }
    }

    #[test]
    fn defaults_match_oslo() {
        let t = Topology::new(&RabbitOptions::default());
        let s = t.server(&spec());
        let names: Vec<_> = s.subscriptions.iter().map(|s| s.queue.name.as_str()).collect();
        assert_eq!(names[..2], ["compute", "compute.c1"]);
        assert!(names[2].starts_with("compute_fanout_"));
        assert!(s.subscriptions[..2].iter().all(|s| !s.queue.durable && s.queue.arguments.is_empty()));
        let fanout = &s.subscriptions[2];
        assert_eq!(fanout.queue.arguments, [("x-expires".to_owned(), Arg::Int(1_800_000))]);
        assert!(!fanout.bindings[0].exchange.durable);
        assert!(t.publish(&Destination::Reply { queue: "reply_x".into() }).mandatory);
    }

    #[test]
    fn modern_ha_options_match_oslo() {
        let o = RabbitOptions {
            rabbit_quorum_queue: true,
            rabbit_transient_quorum_queue: true,
            rabbit_stream_fanout: true,
            rabbit_qos_prefetch_count: 10,
            rabbit_quorum_max_memory_length: 100,
            rabbit_quorum_max_memory_bytes: 1 << 20,
            ..RabbitOptions::default()
        };
        o.validate().unwrap();
        let t = Topology::new(&o);
        let s = t.server(&spec());
        let topic = &s.subscriptions[0].queue;
        assert!(topic.durable);
        assert_eq!(
            topic.arguments,
            [
                ("x-queue-type".to_owned(), Arg::Str("quorum".into())),
                ("x-max-in-memory-length".to_owned(), Arg::Int(100)),
                ("x-max-in-memory-bytes".to_owned(), Arg::Int(1 << 20)),
            ]
        );
        let fanout = &s.subscriptions[2];
        assert_eq!(fanout.queue.name, "compute_fanout");
        assert!(fanout.queue.durable && fanout.queue.is_stream() && !fanout.delete_on_stop);
        assert_eq!(fanout.queue.argument("x-max-age"), Some(&Arg::Str("1800s".into())));
        assert!(fanout.bindings[0].exchange.durable);
        let reply = t.reply("reply_x").queue;
        assert!(reply.durable);
        assert_eq!(reply.argument("x-queue-type"), Some(&Arg::Str("quorum".into())));
        assert_eq!(reply.argument("x-expires"), Some(&Arg::Int(1_800_000)));
        assert!(s.subscriptions.iter().all(|s| !s.queue.is_transient_non_exclusive()));
        let fanout = Destination::Fanout { topic: "compute".into() };
        assert_eq!(t.publish(&fanout).exchange, "compute_fanout");
        assert!(t.exchange_to_declare(&fanout).unwrap().durable);
    }

    #[test]
    fn oslo_configuration_errors() {
        use crate::transport::InvalidCombination;

        let stream = RabbitOptions { rabbit_stream_fanout: true, ..RabbitOptions::default() };
        let refused = stream.validate().unwrap_err();
        assert_eq!(refused, InvalidCombination::StreamFanoutWithoutPrefetch);
        assert!(refused.to_string().contains("rabbit_qos_prefetch_count"), "in oslo's words");
        let stream = RabbitOptions { rabbit_qos_prefetch_count: 1, ..stream };
        assert_eq!(stream.validate().unwrap_err(), InvalidCombination::StreamFanoutWithoutTransientQuorum);
        assert_eq!(stream.validate().unwrap_err().option(), "rabbit_stream_fanout");
        let both = RabbitOptions { rabbit_quorum_queue: true, rabbit_ha_queues: true, ..RabbitOptions::default() };
        assert_eq!(both.validate().unwrap_err().option(), "rabbit_ha_queues");
    }

    #[test]
    fn queue_manager_names_count_up_per_generation() {
        let name = format!("nova-rs-test-{}", crate::id::new_id());
        let o = RabbitOptions {
            use_queue_manager: true,
            hostname: "h1".into(),
            processname: name.clone(),
            ..RabbitOptions::default()
        };
        let t = Topology::new(&o);
        assert_eq!(t.reply_queue_name(), format!("reply_h1:{name}:1"));
        assert_eq!(t.server(&spec()).subscriptions[2].queue.name, format!("compute_fanout_h1:{name}:2"));
        // Another transport of the same process continues the count.
        assert_eq!(Topology::new(&o).reply_queue_name(), format!("reply_h1:{name}:3"));
        let _ = std::fs::remove_file(format!("/dev/shm/h1_{name}_qmanager"));
    }
}
