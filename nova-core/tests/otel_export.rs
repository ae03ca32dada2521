//! With the `otel` feature, the spans of served requests reach an
//! OpenTelemetry collector as OTLP/HTTP JSON, named `topic.method`, with the
//! request id and an error status on failure.

#![allow(unreachable_pub)] // `#[rpc_api]` methods are `pub` by design

use std::time::Duration;

use nova_core::{rpc_api, testing::TestBus, Manager};
use nova_rpc::{RequestContext, RpcError};
use serde_json::{json, Value};

struct Echo;

#[rpc_api]
impl Echo {
    /// Answer with the text.
    pub async fn echo(&self, _ctx: RequestContext, text: String) -> Result<String, RpcError> {
        Ok(text)
    }

    /// Always fail.
    pub async fn refuse(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        Err(RpcError::remote("Refused", "tests.otel", "not today"))
    }
}

impl Manager for Echo {}

/// The string value of attribute `key` of an OTLP JSON span.
fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

#[test]
fn served_requests_are_exported_as_otlp_json() {
    let (port, received) = nova_core::testing::http_receiver();
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("http://127.0.0.1:{port}/v1/traces"));
    std::env::set_var("OTEL_SERVICE_NAME", "otel-test");
    nova_core::logging::init(false, false);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ok_id, failed_id) = rt.block_on(async {
        let bus = TestBus::new().await;
        let client = bus.serve("oteltopic", "host1", std::sync::Arc::new(Echo)).await;
        let ok = RequestContext::new();
        let reply = client.call(&ok, "echo", json!({ "text": "hi" })).await.expect("echo");
        assert_eq!(reply, json!("hi"));
        let failed = RequestContext::new();
        client.call(&failed, "refuse", json!({})).await.expect_err("refuse fails");
        bus.stop().await;
        (ok.request_id, failed.request_id)
    });
    drop(rt);
    // Send the batch now rather than on the processor's timer.
    nova_core::logging::shutdown();

    let mut spans = Vec::new();
    while spans.len() < 2 {
        let request = received.recv_timeout(Duration::from_secs(60)).expect("no OTLP export arrived");
        assert_eq!(request.path, "/v1/traces");
        assert!(request.head.to_ascii_lowercase().contains("content-type: application/json"), "{}", request.head);
        let body: Value = serde_json::from_slice(&request.body).expect("OTLP JSON");
        for resource in body["resourceSpans"].as_array().expect("resourceSpans") {
            let service = resource["resource"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some(json!("otel-test")));
            for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                spans.extend(scope["spans"].as_array().expect("spans").iter().cloned());
            }
        }
    }
    let by_request = |id: &str| {
        spans
            .iter()
            .find(|s| attribute(s, "request_id") == Some(id))
            .unwrap_or_else(|| panic!("no span for {id}: {spans:?}"))
    };
    let ok = by_request(&ok_id);
    assert_eq!(ok["name"], "oteltopic.echo");
    // SPAN_KIND_SERVER is 2.
    assert_eq!(ok["kind"], 2);
    assert_ne!(ok["status"]["code"], 2, "a served call is not an error: {ok}");
    // The trace is named by the request id's uuid.
    let uuid_hex: String = ok_id.trim_start_matches("req-").chars().filter(|c| *c != '-').collect();
    assert_eq!(ok["traceId"].as_str().map(str::to_ascii_lowercase), Some(uuid_hex));
    let failed = by_request(&failed_id);
    assert_eq!(failed["name"], "oteltopic.refuse");
    assert_eq!(failed["status"]["code"], 2, "a failed call has an error status: {failed}");
    assert_eq!(attribute(failed, "error.class"), Some("Refused"));
}
