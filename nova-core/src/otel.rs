//! OpenTelemetry export of the process's own `tracing` spans (the `otel`
//! cargo feature), through `tracing-opentelemetry` and `opentelemetry-otlp`
//! as OTLP/HTTP JSON.
//!
//! It follows OpenTelemetry's own environment variables, so it is set up
//! the way every OpenTelemetry SDK is:
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL, `…/v1/traces`) or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL) turns it on;
//!   with neither set nothing is exported and nothing is spent;
//! - `OTEL_SERVICE_NAME` names the service (default: the binary's name);
//! - `OTEL_BSP_SCHEDULE_DELAY` and the other batch-processor variables
//!   tune batching (default: a batch every 5 s).
//!
//! Every request a server serves is one span named `topic.method` (kind
//! server), with the `request_id`, and an error status (the error class)
//! when it failed. Its trace id is the request id's uuid, so the spans a
//! request causes in every service (which pass its context on) share one
//! trace, as in the trace collector's own OTLP forwarding.
//! Spans are batched on a thread of their own and sent with a blocking
//! client, so export never runs on the runtime's workers; [`shutdown`]
//! sends what is left when the process ends.
//!
//! This is beside the trace collector's forwarding (`[trace]
//! otlp_endpoint` in `nova-trace`), which sends whole cross-service trees
//! from the spans every service casts to it.

use std::sync::OnceLock;

use std::time::Duration;

use opentelemetry::{
    trace::{SpanContext, SpanKind, Status, TraceId, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor},
    Resource,
};
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The endpoint from the environment, as the exporter will use it.
fn endpoint() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| format!("{}/v1/traces", base.trim_end_matches('/'))))
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        std::env::args()
            .next()
            .and_then(|p| std::path::Path::new(&p).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "nova-rs".to_owned())
    })
}

/// The `tracing` layer that exports spans, when an endpoint is configured.
/// A malformed endpoint is reported on stderr (logging is not up yet) and
/// leaves export off rather than stopping the service.
pub(crate) fn layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let endpoint = endpoint()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint.clone())
        .build();
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OpenTelemetry export is off: cannot export to {endpoint}: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(RpcSpans(BatchSpanProcessor::builder(exporter).build()))
        .with_resource(Resource::builder().with_service_name(service_name()).build())
        .build();
    let tracer = provider.tracer("nova-rs");
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Send the spans still batched, and stop exporting. Call it once, as the
/// process ends ([`crate::launcher::run`] does).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("OpenTelemetry export did not finish: {e}");
        }
    }
}

/// Turns the server's `rpc` spans into what OpenTelemetry expects, before
/// they are batched: named `topic.method`, kind server, an error status
/// from `error.class`, and the request id as the trace id.
#[derive(Debug)]
struct RpcSpans<P>(P);

impl<P: SpanProcessor> SpanProcessor for RpcSpans<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if span.name == "rpc" {
            describe_rpc(&mut span);
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn describe_rpc(span: &mut SpanData) {
    let attribute =
        |key: &str| span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned());
    let (topic, method, class, request_id) =
        (attribute("topic"), attribute("method"), attribute("error.class"), attribute("request_id"));
    if let (Some(topic), Some(method)) = (topic, method) {
        span.name = format!("{topic}.{method}").into();
    }
    span.span_kind = SpanKind::Server;
    if let Some(class) = class {
        span.status = Status::error(class);
    }
    // `req-<uuid>`: the uuid's 32 hex digits.
    let hex: Option<String> =
        request_id.map(|id| id.trim_start_matches("req-").chars().filter(|c| *c != '-').collect());
    if let Some(trace_id) = hex.and_then(|h| TraceId::from_hex(&h).ok()).filter(|t| *t != TraceId::INVALID) {
        let old = &span.span_context;
        span.span_context =
            SpanContext::new(trace_id, old.span_id(), old.trace_flags(), old.is_remote(), old.trace_state().clone());
    }
}
