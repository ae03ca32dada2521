//! Process-wide metrics in Prometheus text format, on `prometheus-client`.
//!
//! Per topic and method (recorded by [`MetricsLayer`](crate::layer::metrics::MetricsLayer)
//! around the dispatcher): requests, errors by class, requests in flight
//! and a latency histogram. Per process: AMQP reconnects, messages
//! rejected as malformed, and (from `nova-core`) report-loop failures.
//! [`render`] gives the text a `/metrics` endpoint serves.

use std::sync::{Mutex, OnceLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of the per-method families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The topic served.
    pub topic: String,
    /// The method.
    pub method: String,
}

/// Labels of the error family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The topic served.
    pub topic: String,
    /// The method.
    pub method: String,
    /// The error class (`NoSuchMethod`, `InvalidArgument`, a remote class…).
    pub class: String,
}

/// Labels of the per-topic malformed counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The topic served.
    pub topic: String,
}

/// Labels of the per-queue gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue.
    pub queue: String,
}

/// Labels of the autoscaler's decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// The topic scaled.
    pub topic: String,
    /// `up` or `down`.
    pub action: String,
}

/// Every metric nova-rs records.
#[derive(Debug)]
pub struct Metrics {
    /// Requests dispatched.
    pub requests: Family<MethodLabels, Counter>,
    /// Requests that failed, by error class.
    pub errors: Family<ErrorLabels, Counter>,
    /// Requests running now.
    pub in_flight: Family<MethodLabels, Gauge>,
    /// Time from dispatch to result, in seconds.
    pub latency: Family<MethodLabels, Histogram>,
    /// AMQP connections re-established after a loss.
    pub reconnects: Counter,
    /// Consumers the broker cancelled (a queue deleted, its node lost, a
    /// leader moved); each is consumed again.
    pub consumer_cancels: Counter,
    /// Times the broker blocked a connection (`connection.blocked`: a memory or disk alarm).
    pub connection_blocked: Counter,
    /// Times the broker unblocked a connection.
    pub connection_unblocked: Counter,
    /// Publishes the broker refused (`basic.nack`), each retried after a backoff.
    pub publish_nacks: Counter,
    /// Messages refused as malformed or oversized.
    pub malformed: Family<TopicLabels, Counter>,
    /// Report-loop rounds that could not reach the database.
    pub report_failures: Counter,
    /// Messages ready in a queue, as last read ([`record_queues`]).
    pub queue_messages: Family<QueueLabels, Gauge>,
    /// Consumers of a queue, as last read.
    pub queue_consumers: Family<QueueLabels, Gauge>,
    /// Workers an autoscaler runs, per topic.
    pub autoscale_workers: Family<TopicLabels, Gauge>,
    /// Scaling decisions taken, per topic and direction.
    pub autoscale_decisions: Family<ScaleLabels, Counter>,
    registry: Mutex<Registry>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// The process's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("nova");
        let m = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            in_flight: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            reconnects: Counter::default(),
            consumer_cancels: Counter::default(),
            connection_blocked: Counter::default(),
            connection_unblocked: Counter::default(),
            publish_nacks: Counter::default(),
            malformed: Family::default(),
            report_failures: Counter::default(),
            queue_messages: Family::default(),
            queue_consumers: Family::default(),
            autoscale_workers: Family::default(),
            autoscale_decisions: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        registry.register("rpc_requests", "RPC requests dispatched, by topic and method", m.requests.clone());
        registry.register("rpc_errors", "RPC requests that failed, by topic, method and error class", m.errors.clone());
        registry.register("rpc_in_flight", "RPC requests running now", m.in_flight.clone());
        registry.register("rpc_request_duration_seconds", "Time to serve an RPC request", m.latency.clone());
        registry.register("amqp_reconnects", "AMQP connections re-established after a loss", m.reconnects.clone());
        registry.register(
            "consumer_cancels",
            "Consumers the broker cancelled, each consumed again",
            m.consumer_cancels.clone(),
        );
        registry.register(
            "amqp_connection_blocked",
            "Times the broker blocked a connection (memory or disk alarm)",
            m.connection_blocked.clone(),
        );
        registry.register(
            "amqp_connection_unblocked",
            "Times the broker unblocked a connection",
            m.connection_unblocked.clone(),
        );
        registry.register(
            "amqp_publish_nacks",
            "Publishes the broker refused, retried after a backoff",
            m.publish_nacks.clone(),
        );
        registry.register("rpc_malformed_messages", "Messages refused as malformed or oversized", m.malformed.clone());
        registry.register(
            "report_failures",
            "Report-loop rounds that could not reach the database",
            m.report_failures.clone(),
        );
        registry.register("queue_messages", "Messages ready in a queue (its backlog)", m.queue_messages.clone());
        registry.register("queue_consumers", "Consumers of a queue", m.queue_consumers.clone());
        registry.register("autoscale_workers", "Workers the autoscaler runs, per topic", m.autoscale_workers.clone());
        registry.register(
            "autoscale_decisions",
            "Scaling decisions the autoscaler took, per topic and direction",
            m.autoscale_decisions.clone(),
        );
        *crate::lock(&m.registry) = registry;
        m
    })
}

/// Register a family that another module or crate counts (named without
/// the `nova_` prefix, which every family gets), so each part of nova-rs
/// keeps its own metrics beside the code that counts them and they all
/// appear in [`render`].
pub fn register(name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
    crate::lock(&metrics().registry).register(name, help, metric);
}

/// Set the queue gauges to `stats`; queues no longer listed disappear.
pub fn record_queues(stats: &[crate::transport::QueueStats]) {
    let m = metrics();
    m.queue_messages.clear();
    m.queue_consumers.clear();
    for q in stats {
        let labels = QueueLabels { queue: q.queue.clone() };
        m.queue_messages.get_or_create(&labels).set(i64::try_from(q.messages).unwrap_or(i64::MAX));
        m.queue_consumers.get_or_create(&labels).set(i64::from(q.consumers));
    }
}

/// Every metric in Prometheus text format.
///
/// ```
/// nova_rpc::metrics::metrics().reconnects.inc();
/// assert!(nova_rpc::metrics::render().contains("nova_amqp_reconnects_total"));
/// ```
pub fn render() -> String {
    let mut out = String::new();
    let registry = crate::lock(&metrics().registry);
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}
