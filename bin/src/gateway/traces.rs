//! Traces and metrics in the gateway: the root span of every request that
//! comes in over HTTP, `GET /v1/traces/{request_id}` (the spans and the
//! tree of calls), the console's timeline at `/traces/{request_id}`, and
//! `GET /metrics`.

use std::time::{Duration, Instant};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use nova_rpc::{
    layer::trace::{enter, new_span_id, now_ms, summarize, walk, Span, Tracer, TRACE_TOPIC},
    RequestContext, RpcError, Target,
};
use serde_json::{json, Value};

use super::{console::esc, ApiError, Gateway};

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
            args: args.as_object().map(summarize).unwrap_or_default(),
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

pub(super) async fn api(State(gw): State<Gateway>, Path(request_id): Path<String>) -> Response {
    match gw.trace(&request_id).await {
        Ok(spans) if spans.is_empty() => {
            let msg = format!("no trace {request_id} (yet: spans arrive within a second)");
            ApiError::new(StatusCode::NOT_FOUND, "TraceNotFound", msg).into_response()
        }
        Ok(spans) => Json(json!({ "trace_id": request_id, "spans": &spans, "tree": tree(&spans) })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn page(State(gw): State<Gateway>, Path(request_id): Path<String>) -> Html<String> {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>trace {0}</title><style>{STYLE}</style></head>\
         <body><p><a href=\"/\">console</a></p><h1>Trace <code>{0}</code></h1>",
        esc(&request_id)
    );
    match gw.trace(&request_id).await {
        Ok(spans) if !spans.is_empty() => html.push_str(&timeline(&spans)),
        Ok(_) => html.push_str("<p>No spans for this request (yet).</p>"),
        Err(e) => html.push_str(&format!("<p class=\"err\">{}</p>", esc(&e.to_string()))),
    }
    html.push_str("</body></html>");
    Html(html)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%}\
td{padding:.2em .5em;border-bottom:1px solid #eee;white-space:nowrap}.bar{position:relative;height:1em;background:#f3f3f3;min-width:30em}\
.bar span{position:absolute;height:100%;background:#3a7bd5}.err span{background:#b32}.err{color:#b32}code{background:#f3f3f3}";

/// One row per span, indented by depth, with a bar placed on the trace's time axis.
fn timeline(spans: &[Span]) -> String {
    let t0 = spans.iter().map(|s| s.start_ms).fold(f64::INFINITY, f64::min);
    let t1 = spans.iter().map(|s| s.start_ms + s.duration_ms).fold(f64::NEG_INFINITY, f64::max);
    let total = (t1 - t0).max(0.001);
    let mut out = format!("<p>{} spans over {total:.2} ms</p><table id=\"timeline\">", spans.len());
    for (depth, s) in walk(spans) {
        let left = (s.start_ms - t0) / total * 100.0;
        let width = (s.duration_ms / total * 100.0).max(0.3);
        let class = if s.outcome == "ok" { "" } else { " err" };
        out.push_str(&format!(
            "<tr class=\"span{class}\"><td style=\"padding-left:{}em\">{} <code>{}.{}</code></td><td>{}</td><td>{:.2} ms</td>\
             <td class=\"bar{class}\"><span style=\"left:{left:.2}%;width:{width:.2}%\"></span></td><td>{}</td></tr>",
            depth as f64 * 1.5,
            esc(&s.service),
            esc(&s.topic),
            esc(&s.method),
            esc(&s.host),
            s.duration_ms,
            esc(&s.outcome),
        ));
    }
    out.push_str("</table>");
    out
}

pub(super) async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], nova_rpc::metrics::render()).into_response()
}
