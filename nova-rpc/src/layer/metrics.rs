//! [`MetricsLayer`]: per topic and method, requests, errors by class,
//! requests in flight and latency, registered with [`crate::metrics`].

use std::{sync::OnceLock, time::Instant};

use async_trait::async_trait;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

use super::{Call, Layer, Next};
use crate::{Payload, Result, RpcError};

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

/// The families the layer records.
#[derive(Debug)]
pub struct MethodMetrics {
    /// Requests dispatched.
    pub requests: Family<MethodLabels, Counter>,
    /// Requests that failed, by error class.
    pub errors: Family<ErrorLabels, Counter>,
    /// Requests running now.
    pub in_flight: Family<MethodLabels, Gauge>,
    /// Time from dispatch to result, in seconds.
    pub latency: Family<MethodLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// The process's per-method families, registered on first use.
pub fn method_metrics() -> &'static MethodMetrics {
    static METRICS: OnceLock<MethodMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = MethodMetrics {
            requests: Family::default(),
            errors: Family::default(),
            in_flight: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        crate::metrics::register("rpc_requests", "RPC requests dispatched, by topic and method", m.requests.clone());
        crate::metrics::register(
            "rpc_errors",
            "RPC requests that failed, by topic, method and error class",
            m.errors.clone(),
        );
        crate::metrics::register("rpc_in_flight", "RPC requests running now", m.in_flight.clone());
        crate::metrics::register("rpc_request_duration_seconds", "Time to serve an RPC request", m.latency.clone());
        m
    })
}

/// Records every request it sees; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsLayer;

#[async_trait]
impl Layer for MetricsLayer {
    async fn handle(&self, call: Call, next: Next) -> Result<Payload> {
        let m = method_metrics();
        let asked = MethodLabels { topic: call.topic.clone(), method: call.method.clone() };
        let in_flight = m.in_flight.get_or_create(&asked).clone();
        in_flight.inc();
        let started = Instant::now();
        let out = next.run(call).await;
        in_flight.dec();
        // Only declared methods name a series: a caller can send any name,
        // and a series per name would grow without end.
        // A wrong version is refused before the method is looked up, so its
        // name may be anything too.
        let labels = if matches!(out, Err(RpcError::NoSuchMethod { .. } | RpcError::UnsupportedVersion { .. })) {
            if in_flight.get() == 0 {
                m.in_flight.remove(&asked);
            }
            MethodLabels { topic: asked.topic, method: UNKNOWN_METHOD.to_owned() }
        } else {
            asked
        };
        m.requests.get_or_create(&labels).inc();
        m.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &out {
            let labels = ErrorLabels { topic: labels.topic, method: labels.method, class: e.class().to_owned() };
            m.errors.get_or_create(&labels).inc();
        }
        out
    }
}

/// The `method` label of requests for a method nobody declared.
pub const UNKNOWN_METHOD: &str = "unknown";
