//! Forwarding spans to an OpenTelemetry collector (Jaeger, Tempo, the
//! OpenTelemetry Collector) as OTLP/HTTP JSON, `POST <endpoint>/v1/traces`.
//!
//! Ids map directly: a trace named by a `req-<uuid>` request id becomes the
//! uuid's 32 hex digits (any other trace name is hashed to 128 bits), and
//! span ids are already 16 hex digits. Each span carries the topic,
//! method, host and argument summary as attributes, and an error status
//! with the error class when it failed.

use crate::outbound::HttpClient;
use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
};

use nova_rpc::layer::trace::Span;
use serde_json::{json, Value};

/// 32 hex digits for a trace name.
///
/// ```
/// use nova_services::trace::otlp::trace_id_hex;
/// assert_eq!(trace_id_hex("req-0b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11"), "0b4f7f2e3c6a4b559f445a0e2d9c8e11");
/// assert_eq!(trace_id_hex("anything else").len(), 32);
/// ```
pub fn trace_id_hex(trace_id: &str) -> String {
    let hex: String = trace_id.trim_start_matches("req-").chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return hex.to_ascii_lowercase();
    }
    let half = |seed: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        trace_id.hash(&mut h);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

fn attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn nanos(ms: f64) -> String {
    format!("{:.0}", (ms * 1e6).max(0.0))
}

/// The OTLP JSON body for `spans`, grouped by service and host.
pub fn export_body(spans: &[Span]) -> Value {
    let mut by_resource: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    for s in spans {
        let mut span = json!({
            "traceId": trace_id_hex(&s.trace_id),
            "spanId": s.span_id,
            "name": format!("{}.{}", s.topic, s.method),
            "kind": 2,
            "startTimeUnixNano": nanos(s.start_ms),
            "endTimeUnixNano": nanos(s.start_ms + s.duration_ms),
            "attributes": [
                attr("rpc.system", "oslo.messaging"),
                attr("rpc.service", &s.topic),
                attr("rpc.method", &s.method),
                attr("nova.request_id", &s.trace_id),
                attr("nova.args", &s.args),
            ],
            "status": if s.outcome == "ok" { json!({ "code": 1 }) } else { json!({ "code": 2, "message": s.outcome }) },
        });
        if let Some(p) = &s.parent_id {
            span["parentSpanId"] = p.as_str().into();
        }
        by_resource.entry((s.service.as_str(), s.host.as_str())).or_default().push(span);
    }
    let resource_spans: Vec<Value> = by_resource
        .into_iter()
        .map(|((service, host), spans)| {
            json!({
                "resource": { "attributes": [attr("service.name", service), attr("host.name", host)] },
                "scopeSpans": [{ "scope": { "name": "nova-rs" }, "spans": spans }],
            })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
}

/// POST `spans` to `endpoint` (`http://host:4318` or `https://…`), retried briefly.
pub async fn export(endpoint: &str, spans: &[Span]) -> Result<(), crate::outbound::OutboundError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    // A `Value` always serialises.
    let body = serde_json::to_vec(&export_body(spans)).unwrap_or_default();
    // The collector is the operator's choice, so the destination guard of
    // callbacks does not apply; the client is shared by every export.
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(HttpClient::open).post_json(&url, body, 2, std::time::Duration::from_millis(200)).await
}
