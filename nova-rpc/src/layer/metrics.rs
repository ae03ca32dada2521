//! [`MetricsLayer`]: per topic and method, requests, errors by class,
//! requests in flight and latency, into [`crate::metrics`].

use std::time::Instant;

use async_trait::async_trait;

use super::{Call, Layer, Next};
use crate::{
    metrics::{metrics, ErrorLabels, MethodLabels},
    Payload, Result, RpcError,
};

/// Records every request it sees; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsLayer;

#[async_trait]
impl Layer for MetricsLayer {
    async fn handle(&self, call: Call, next: Next) -> Result<Payload> {
        let m = metrics();
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
