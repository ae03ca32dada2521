//! Request traces: where a request went and how long each hop took.
//!
//! A trace id travels in the request context (`_context_trace_id`, which
//! oslo.messaging services pass through untouched) together with the span
//! id of the hop that made the request (`_context_trace_parent`). The
//! [`TraceLayer`] around a server's dispatcher gives each hop a span id,
//! hands the method a context whose `trace_parent` is that span — so calls
//! the method makes with its context become its children — and, once the
//! reply has been sent, records a [`Span`]: service, host, topic, method, a
//! size-capped summary of the arguments with secrets masked, start,
//! duration and outcome. A request with no trace id starts a trace named
//! by its `request_id`.
//!
//! Spans leave the hot path at once: they go into a bounded queue (full →
//! dropped, never waited for) that a [`Tracer`] task ships in batches as
//! casts of `record_spans` to the `trace` topic, where a collector keeps
//! them. No collector, or a broker that refuses, costs the caller nothing.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Call, Layer, Next};
use crate::{transport::Transport, Args, Payload, RequestContext, Result, RpcClient, Target};

/// The topic collectors serve.
pub const TRACE_TOPIC: &str = "trace";
/// Context key of the trace id.
pub const TRACE_ID: &str = "trace_id";
/// Context key of the span that made the request.
pub const TRACE_PARENT: &str = "trace_parent";

/// One hop of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// The trace (the root request's `request_id`).
    pub trace_id: String,
    /// This hop.
    pub span_id: String,
    /// The hop that made this request, if any.
    pub parent_id: Option<String>,
    /// The serving binary (`nova-compute`) or `nova-gateway`.
    pub service: String,
    /// Its host.
    pub host: String,
    /// The topic.
    pub topic: String,
    /// The method (or HTTP route for the gateway).
    pub method: String,
    /// The arguments, size-capped, with secrets masked.
    pub args: String,
    /// Start, in milliseconds since the Unix epoch.
    pub start_ms: f64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// `ok`, or the error class.
    pub outcome: String,
}

/// A new 16-hex-digit span id.
pub fn new_span_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The trace id and parent span a request carries (the trace id defaults
/// to its `request_id`).
pub fn trace_of(ctx: &RequestContext) -> (String, Option<String>) {
    let id = ctx.extra.get(TRACE_ID).and_then(Value::as_str).map_or_else(|| ctx.request_id.clone(), str::to_owned);
    let parent = ctx.extra.get(TRACE_PARENT).and_then(Value::as_str).map(str::to_owned);
    (id, parent)
}

/// Mark `ctx` as made inside span `span_id` of trace `trace_id`.
pub fn enter(ctx: &mut RequestContext, trace_id: &str, span_id: &str) {
    ctx.extra.insert(TRACE_ID.into(), trace_id.into());
    ctx.extra.insert(TRACE_PARENT.into(), span_id.into());
}

const SECRET_KEYS: [&str; 3] = ["password", "token", "secret"];
const SUMMARY_MAX: usize = 256;

fn mask(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let v = if SECRET_KEYS.iter().any(|s| lower.contains(s)) { Value::from("***") } else { mask(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(mask).collect()),
        other => other.clone(),
    }
}

/// The arguments as short JSON: secrets masked, cut at 256 bytes.
///
/// ```
/// let args = nova_rpc::Args::of(&serde_json::json!({"user": "ada", "password": "hunter2"})).unwrap();
/// let s = nova_rpc::layer::trace::summarize(&args);
/// assert!(s.contains(r#""password":"***""#) && s.contains(r#""user":"ada""#) && !s.contains("hunter2"));
/// ```
pub fn summarize(args: &Args) -> String {
    let mut s = match args.to_map() {
        Ok(map) => mask(&Value::Object(map)).to_string(),
        Err(e) => e.to_string(),
    };
    if s.len() > SUMMARY_MAX {
        let mut cut = SUMMARY_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Ships spans to the collectors in batches, off the hot path.
#[derive(Debug, Clone)]
pub struct Tracer {
    spans: mpsc::Sender<Span>,
    service: String,
    host: String,
}

impl Tracer {
    /// A tracer for `service` on `host`, casting batches over `transport`.
    pub fn new(transport: Arc<dyn Transport>, service: &str, host: &str) -> Self {
        let (spans, rx) = mpsc::channel(4096);
        let client = RpcClient::new(transport, Target::new(TRACE_TOPIC)).with_retry(Some(0));
        tokio::spawn(ship(client, rx));
        Self { spans, service: service.to_owned(), host: host.to_owned() }
    }

    /// Who records the spans.
    pub fn service(&self) -> (&str, &str) {
        (&self.service, &self.host)
    }

    /// Queue a span; when the queue is full it is dropped, never waited for.
    pub fn record(&self, span: Span) {
        let _ = self.spans.try_send(span);
    }
}

async fn ship(client: RpcClient, mut rx: mpsc::Receiver<Span>) {
    const BATCH: usize = 256;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = Instant::now() + Duration::from_millis(100);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        let n = batch.len();
        let args = serde_json::json!({ "spans": batch });
        if let Err(e) = client.cast(&RequestContext::default(), "record_spans", args).await {
            tracing::debug!(error = %e, spans = n, "trace spans not shipped");
        }
    }
}

/// Traces every request a server dispatches; see the module docs.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    tracer: Tracer,
}

impl TraceLayer {
    /// A layer recording through `tracer`.
    pub fn new(tracer: Tracer) -> Self {
        Self { tracer }
    }
}

#[async_trait]
impl Layer for TraceLayer {
    async fn handle(&self, mut call: Call, next: Next) -> Result<Payload> {
        if call.topic == TRACE_TOPIC {
            return next.run(call).await;
        }
        let (trace_id, parent_id) = trace_of(&call.ctx);
        let span_id = new_span_id();
        enter(&mut call.ctx, &trace_id, &span_id);
        let (topic, method, args) = (call.topic.clone(), call.method.clone(), summarize(&call.args));
        let after_reply = call.after_reply.clone();
        let (start_ms, started) = (now_ms(), Instant::now());
        let out = next.run(call).await;
        let (service, host) = self.tracer.service();
        let span = Span {
            trace_id,
            span_id,
            parent_id,
            service: service.to_owned(),
            host: host.to_owned(),
            topic,
            method,
            args,
            start_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            outcome: out.as_ref().map_or_else(|e| e.class().to_owned(), |_| "ok".to_owned()),
        };
        // Recorded once the reply is on its way, never before it.
        let tracer = self.tracer.clone();
        after_reply.push(move || tracer.record(span));
        out
    }
}

/// A trace's spans depth-first, each with its depth: roots (spans whose
/// parent is not in the trace) first, children under their parent, each
/// level by start time. What the CLI, the gateway and the console show.
///
/// ```
/// use nova_rpc::layer::trace::{walk, Span};
/// let span = |id: &str, parent: Option<&str>, start: f64| Span {
///     trace_id: "t".into(), span_id: id.into(), parent_id: parent.map(Into::into),
///     service: "s".into(), host: "h".into(), topic: "x".into(), method: "m".into(),
///     args: "{}".into(), start_ms: start, duration_ms: 1.0, outcome: "ok".into(),
/// };
/// let spans = [span("c", Some("a"), 2.0), span("a", None, 0.0), span("b", Some("a"), 1.0)];
/// let order: Vec<(usize, &str)> = walk(&spans).into_iter().map(|(d, s)| (d, s.span_id.as_str())).collect();
/// assert_eq!(order, [(0, "a"), (1, "b"), (1, "c")]);
/// ```
pub fn walk(spans: &[Span]) -> Vec<(usize, &Span)> {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut by_start: Vec<&Span> = spans.iter().collect();
    by_start.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let children = |parent: Option<&str>| -> Vec<&Span> {
        by_start
            .iter()
            .copied()
            .filter(|s| match (parent, s.parent_id.as_deref()) {
                (None, p) => p.is_none_or(|p| !ids.contains(p)),
                (Some(want), Some(p)) => want == p,
                (Some(_), None) => false,
            })
            .collect()
    };
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &Span)> = children(None).into_iter().rev().map(|s| (0, s)).collect();
    while let Some((depth, s)) = stack.pop() {
        out.push((depth, s));
        if out.len() > spans.len() {
            break; // a cycle in bad data: stop rather than loop
        }
        stack.extend(children(Some(&s.span_id)).into_iter().rev().map(|c| (depth + 1, c)));
    }
    out
}
