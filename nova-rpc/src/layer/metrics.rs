//! [`MetricsLayer`]: per topic and method, requests, errors by class,
//! requests in flight and latency, into [`crate::metrics`].

use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;

use super::{Call, Layer, Next};
use crate::{
    metrics::{metrics, ErrorLabels, MethodLabels},
    Result,
};

/// Records every request it sees; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsLayer;

#[async_trait]
impl Layer for MetricsLayer {
    async fn handle(&self, call: Call, next: Next<'_>) -> Result<Value> {
        let m = metrics();
        let labels = MethodLabels { topic: call.topic.clone(), method: call.method.clone() };
        m.requests.get_or_create(&labels).inc();
        let in_flight = m.in_flight.get_or_create(&labels).clone();
        in_flight.inc();
        let started = Instant::now();
        let out = next.run(call).await;
        in_flight.dec();
        m.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &out {
            let labels = ErrorLabels { topic: labels.topic, method: labels.method, class: e.class().to_owned() };
            m.errors.get_or_create(&labels).inc();
        }
        out
    }
}
