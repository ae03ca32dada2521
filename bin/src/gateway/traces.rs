//! Traces and metrics in the gateway: the root span of every request that
//! comes in over HTTP, `GET /v1/traces/{request_id}` (the spans and the
//! tree of calls), the console's timeline at `/traces/{request_id}`, and
//! `GET /metrics`.

use std::time::{Duration, Instant};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use maud::{html, Markup};
use nova_rpc::{
    layer::trace::{enter, new_span_id, now_ms, summarize, walk, Span, Tracer, TRACE_TOPIC},
    RequestContext, RpcError, Target,
};
use serde_json::{json, Value};

use super::{console, ApiError, Caller, Gateway};

/// The gateway's own span of one HTTP request, recorded when it finishes.
pub(super) struct Root {
    tracer: Tracer,
    span: Span,
    started: Instant,
}

impl Root {
    /// Start the trace of a request (named by its request id) and mark
    /// `ctx` so the services it reaches record themselves as children.
    pub(super) fn enter(
        tracer: Option<&Tracer>,
        ctx: &mut RequestContext,
        topic: &str,
        method: &str,
        call: bool,
        args: &Value,
    ) -> Option<Self> {
        let tracer = tracer?.clone();
        let span_id = new_span_id();
        enter(ctx, &ctx.request_id.clone(), &span_id);
        let (service, host) = tracer.service();
        let span = Span {
            trace_id: ctx.request_id.clone(),
            span_id,
            parent_id: None,
            service: service.to_owned(),
            host: host.to_owned(),
            topic: topic.to_owned(),
            method: format!("POST /v1/{}/{topic}/{method}", if call { "call" } else { "cast" }),
            args: nova_rpc::Args::of(args).map(|a| summarize(&a)).unwrap_or_default(),
            start_ms: now_ms(),
            duration_ms: 0.0,
            outcome: String::new(),
        };
        Some(Self { tracer, span, started: Instant::now() })
    }

    /// Record the span with its outcome (`Err(class)` on failure).
    pub(super) fn finish(mut self, outcome: Result<(), &str>) {
        self.span.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.span.outcome = outcome.map_or_else(str::to_owned, |()| "ok".to_owned());
        self.tracer.record(self.span);
    }
}

impl Gateway {
    /// The spans of trace `request_id`, from the collector.
    pub async fn trace(&self, request_id: &str) -> Result<Vec<Span>, RpcError> {
        let client = self.client.with_target(Target::new(TRACE_TOPIC)).with_timeout(Duration::from_secs(5));
        client.call_as(&RequestContext::new(), "get_trace", json!({ "trace_id": request_id })).await
    }
}

/// Spans as a nested tree: each node has its span's fields and `children`.
fn tree(spans: &[Span]) -> Vec<Value> {
    fn level(items: &[(usize, &Span)], next: &mut usize, depth: usize) -> Vec<Value> {
        let mut nodes = Vec::new();
        while let Some((d, span)) = items.get(*next).copied().filter(|(d, _)| *d == depth) {
            *next += 1;
            let mut node = serde_json::to_value(span).unwrap_or_default();
            node["children"] = Value::Array(level(items, next, d + 1));
            nodes.push(node);
        }
        nodes
    }
    level(&walk(spans), &mut 0, 0)
}

/// The spans of `request_id` (or why they could not be read), if `caller`
/// may read traces; else the refusal.
async fn spans(gw: &Gateway, caller: &Caller, request_id: &str) -> Result<Result<Vec<Span>, RpcError>, Response> {
    gw.authorize("api:traces", caller).map_err(IntoResponse::into_response)?;
    Ok(gw.trace(request_id).await)
}

pub(super) async fn api(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(request_id): Path<String>,
) -> Response {
    let spans = match spans(&gw, &caller, &request_id).await {
        Ok(spans) => spans,
        Err(refused) => return refused,
    };
    match spans {
        Ok(spans) if spans.is_empty() => {
            let msg = format!("no trace {request_id} (yet: spans arrive within a second)");
            ApiError::new(StatusCode::NOT_FOUND, "TraceNotFound", msg).into_response()
        }
        Ok(spans) => Json(json!({ "trace_id": request_id, "spans": &spans, "tree": tree(&spans) })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn page(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(request_id): Path<String>,
) -> Response {
    let spans = match spans(&gw, &caller, &request_id).await {
        Ok(spans) => spans,
        Err(refused) => return refused,
    };
    let body = match spans {
        Ok(spans) if !spans.is_empty() => timeline(&spans),
        Ok(_) => html! { p { "No spans for this request (yet)." } },
        Err(e) => html! { p.err { (e.to_string()) } },
    };
    console::document(
        &format!("trace {request_id}"),
        html! {
            p { a href="/" { "console" } }
            h1 { "Trace " code { (request_id) } }
            (body)
        },
    )
    .into_response()
}

/// One row per span, indented by depth, with a bar placed on the trace's time axis.
fn timeline(spans: &[Span]) -> Markup {
    let t0 = spans.iter().map(|s| s.start_ms).fold(f64::INFINITY, f64::min);
    let t1 = spans.iter().map(|s| s.start_ms + s.duration_ms).fold(f64::NEG_INFINITY, f64::max);
    let total = (t1 - t0).max(0.001);
    html! {
        p { (spans.len()) " spans over " (format!("{total:.2}")) " ms" }
        table #timeline {
            @for (depth, s) in walk(spans) {
                @let left = (s.start_ms - t0) / total * 100.0;
                @let width = (s.duration_ms / total * 100.0).max(0.3);
                @let class = if s.outcome == "ok" { "" } else { " err" };
                tr class=(format!("span{class}")) {
                    td style=(format!("padding-left:{}em", depth as f64 * 1.5)) {
                        (s.service) " " code { (s.topic) "." (s.method) }
                    }
                    td { (s.host) }
                    td { (format!("{:.2}", s.duration_ms)) " ms" }
                    td class=(format!("bar{class}")) { span style=(format!("left:{left:.2}%;width:{width:.2}%")) {} }
                    td { (s.outcome) }
                }
            }
        }
    }
}

/// `GET /metrics`: the process's metrics, the queue gauges read just now.
pub(super) async fn metrics(axum::extract::State(gw): axum::extract::State<super::Gateway>) -> Response {
    match gw.queues().await {
        Ok(stats) => nova_rpc::metrics::record_queues(&stats),
        Err(e) => tracing::debug!(error = ?e, "cannot read the queues for /metrics"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], nova_rpc::metrics::render()).into_response()
}
