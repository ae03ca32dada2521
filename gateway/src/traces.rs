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

/// The gateway's own span of one HTTP request, recorded when it finishes
/// if the request is sampled, failed or was slow.
pub(super) struct Root {
    tracer: Tracer,
    span: Span,
    sampled: bool,
    started: Instant,
}

impl Root {
    /// Start the trace of a request (named by its request id), decide
    /// whether it is sampled, and mark `ctx` so the services it reaches
    /// record themselves as children, or not at all.
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
        let sampled = tracer.sampler().sample();
        enter(ctx, &ctx.request_id.clone(), &span_id, sampled);
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
        Some(Self { tracer, span, sampled, started: Instant::now() })
    }

    /// Record the span with its outcome (`Err(class)` on failure), if the
    /// sampler keeps it.
    pub(super) fn finish(mut self, outcome: Result<(), &str>) {
        let took = self.started.elapsed();
        if !self.tracer.sampler().keeps(self.sampled, outcome.is_err(), took) {
            return;
        }
        self.span.duration_ms = took.as_secs_f64() * 1e3;
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

/// How deep the tree of a trace is nested in JSON; deeper spans hang at
/// this depth. The collector caps depth itself (`[trace] max_depth`); this
/// keeps the gateway safe from spans recorded before that cap.
const MAX_TREE_DEPTH: usize = 50;

/// Spans as a nested tree: each node has its span's fields and `children`.
/// Built without recursion, and nested at most [`MAX_TREE_DEPTH`] deep, so
/// no trace can exhaust the stack of the code that builds, writes or drops it.
fn tree(spans: &[Span]) -> Vec<Value> {
    // `open[d]` holds the node at depth d whose children are still coming.
    let mut open: Vec<Value> = Vec::new();
    let close = |open: &mut Vec<Value>, to: usize| {
        while open.len() > to {
            let done = open.pop().unwrap_or_default();
            if let Some(children) = open.last_mut().and_then(|p| p["children"].as_array_mut()) {
                children.push(done);
            }
        }
    };
    // A virtual root holds the top level.
    open.push(json!({ "children": [] }));
    for (depth, span) in walk(spans) {
        let depth = depth.min(MAX_TREE_DEPTH);
        close(&mut open, depth + 1);
        let mut node = serde_json::to_value(span).unwrap_or_default();
        node["children"] = json!([]);
        open.push(node);
    }
    close(&mut open, 1);
    match open.pop() {
        Some(Value::Object(mut root)) => match root.remove("children") {
            Some(Value::Array(top)) => top,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
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
            let msg = format!(
                "no trace {request_id}: it was not sampled ([trace] sample_ratio), or its spans have not arrived yet (they do within a second)"
            );
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
        Ok(stats) => super::queues::record(&stats),
        Err(e) => tracing::debug!(error = ?e, "cannot read the queues for /metrics"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], nova_rpc::metrics::render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<Span> {
        (0..n)
            .map(|i| Span {
                trace_id: "deep".into(),
                span_id: format!("{i:016x}"),
                parent_id: (i > 0).then(|| format!("{:016x}", i - 1)),
                service: "s".into(),
                host: "h".into(),
                topic: "t".into(),
                method: "m".into(),
                args: "{}".into(),
                start_ms: i as f64,
                duration_ms: 1.0,
                outcome: "ok".into(),
            })
            .collect()
    }

    /// Once, a chain this deep overflowed the stack of the gateway (and
    /// killed every service in its process) when its tree was built.
    #[test]
    fn a_chain_of_20000_spans_makes_a_tree_nested_at_most_the_cap() {
        let spans = chain(20_000);
        let tree = tree(&spans);
        let text = serde_json::to_string(&tree).unwrap();
        let mut node = &tree[0];
        let mut depth = 0;
        while let Some(child) = node["children"].get(0) {
            node = child;
            depth += 1;
        }
        assert_eq!(depth, MAX_TREE_DEPTH, "nested down to the cap");
        assert_eq!(node["span_id"], format!("{:016x}", MAX_TREE_DEPTH));
        let at_cap = tree_level(&tree, MAX_TREE_DEPTH - 1);
        assert_eq!(at_cap.len(), 20_000 - MAX_TREE_DEPTH, "deeper spans hang at the cap, in order");
        // A client's JSON parser (serde_json's default limit is 128) reads it.
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Value::Array(tree));
    }

    /// The children of the first node at `depth`.
    fn tree_level(tree: &[Value], depth: usize) -> Vec<Value> {
        let mut node = &tree[0];
        for _ in 0..depth {
            node = &node["children"][0];
        }
        node["children"].as_array().cloned().unwrap_or_default()
    }

    #[test]
    fn a_tree_keeps_siblings_and_order() {
        let mut spans = chain(3);
        spans.push(Span {
            span_id: "b".into(),
            parent_id: Some(format!("{:016x}", 0)),
            start_ms: 5.0,
            ..spans[0].clone()
        });
        let tree = tree(&spans);
        assert_eq!(tree.len(), 1);
        let kids: Vec<&Value> = tree[0]["children"].as_array().unwrap().iter().map(|c| &c["span_id"]).collect();
        assert_eq!(kids, [&json!(format!("{:016x}", 1)), &json!("b")]);
        assert_eq!(tree[0]["children"][0]["children"][0]["span_id"], format!("{:016x}", 2));
    }
}
