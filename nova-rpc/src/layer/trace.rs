//! Request traces: where a request went and how long each hop took.
//!
//! A trace id travels in the request context (`_context_trace_id`, which
//! oslo.messaging services pass through untouched) together with the span
//! id of the hop that made the request (`_context_trace_parent`) and
//! whether the trace is sampled (`_context_trace_sampled`). The
//! [`TraceLayer`] around a server's dispatcher gives each hop a span id,
//! hands the method a context whose `trace_parent` is that span — so calls
//! the method makes with its context become its children — and, once the
//! reply has been sent, records a [`Span`]: service, host, topic, method, a
//! size-capped summary of the arguments with secrets masked, start,
//! duration and outcome. A request with no trace id starts a trace named
//! by its `request_id`.
//!
//! # Sampling
//!
//! Whether a trace is kept is decided once, where the request enters (the
//! gateway, `nova-rpc call --trace`, or the first service it reaches), by
//! the [`Sampler`]'s ratio (`[trace] sample_ratio`), and the decision
//! travels with the context, so a sampled request is recorded at every
//! hop and an unsampled one at none: OpenTelemetry's parent-based
//! sampling. A hop that fails, or takes longer than `[trace]
//! always_slower_than`, is recorded whatever the decision, so errors and
//! slow requests are never lost to sampling.
//!
//! # Bounds
//!
//! Spans leave the hot path at once: they go into a bounded queue (full →
//! dropped and counted, never waited for) that a [`Tracer`] task ships in
//! batches of at most [`BATCH`] as calls of `record_spans` to the `trace`
//! topic, one batch at a time. A collector that is slow therefore slows
//! only the shipping, and what cannot wait is dropped here, where it is
//! counted (`nova_trace_spans_dropped_total`), rather than piling up in a
//! queue. No collector, or a broker that refuses, costs the caller nothing.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
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
/// Context key of the sampling decision (`true` or `false`).
pub const TRACE_SAMPLED: &str = "trace_sampled";
/// Spans a tracer holds before it drops new ones.
pub const SPAN_QUEUE: usize = 4096;
/// Spans in one `record_spans` call.
pub const BATCH: usize = 256;
/// How long one `record_spans` call may take before its spans are dropped.
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// `[trace] sample_ratio` unless configured: one request in a hundred.
/// Failed and slow ones are kept besides; see the module docs.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// `[trace] always_slower_than` unless configured.
pub const DEFAULT_ALWAYS_SLOWER_THAN: Duration = Duration::from_secs(1);

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

/// The trace a request belongs to, as its context carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (the `request_id` of a request that carries none).
    pub trace_id: String,
    /// The span of the hop that made the request, if any.
    pub parent_id: Option<String>,
    /// Whether the trace is kept, as decided where the request entered;
    /// `None` when nobody has decided yet (this hop is the entry point).
    pub sampled: Option<bool>,
}

/// The trace `ctx` belongs to ([`TraceContext`]).
///
/// ```
/// use nova_rpc::{layer::trace::{enter, trace_of}, RequestContext};
/// let mut ctx = RequestContext::new();
/// assert_eq!(trace_of(&ctx).trace_id, ctx.request_id);
/// assert_eq!(trace_of(&ctx).sampled, None);
/// enter(&mut ctx, "t1", "s1", true);
/// let t = trace_of(&ctx);
/// assert_eq!((t.trace_id.as_str(), t.parent_id.as_deref(), t.sampled), ("t1", Some("s1"), Some(true)));
/// ```
pub fn trace_of(ctx: &RequestContext) -> TraceContext {
    let text = |key: &str| ctx.extra.get(key).and_then(Value::as_str);
    TraceContext {
        trace_id: text(TRACE_ID).unwrap_or(&ctx.request_id).to_owned(),
        parent_id: text(TRACE_PARENT).map(str::to_owned),
        sampled: ctx.extra.get(TRACE_SAMPLED).and_then(Value::as_bool),
    }
}

/// Mark `ctx` as made inside span `span_id` of trace `trace_id`, kept or
/// not as `sampled` says.
pub fn enter(ctx: &mut RequestContext, trace_id: &str, span_id: &str, sampled: bool) {
    ctx.extra.insert(TRACE_ID.into(), trace_id.into());
    ctx.extra.insert(TRACE_PARENT.into(), span_id.into());
    ctx.extra.insert(TRACE_SAMPLED.into(), sampled.into());
}

/// Which requests are traced; see the module docs.
///
/// ```
/// use std::time::Duration;
/// use nova_rpc::layer::trace::Sampler;
/// let s = Sampler::new(0.0, Duration::from_secs(1));
/// assert!(!s.sample());
/// assert!(!s.keeps(false, false, Duration::from_millis(5)));
/// assert!(s.keeps(false, true, Duration::from_millis(5)), "a failure is kept");
/// assert!(s.keeps(false, false, Duration::from_secs(2)), "a slow hop is kept");
/// assert!(Sampler::always().sample());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    ratio: f64,
    always_slower_than: Duration,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new(DEFAULT_SAMPLE_RATIO, DEFAULT_ALWAYS_SLOWER_THAN)
    }
}

impl Sampler {
    /// Keep `ratio` (0 to 1) of the requests that enter here, and every hop
    /// that fails or takes at least `always_slower_than`.
    pub fn new(ratio: f64, always_slower_than: Duration) -> Self {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1.0) };
        Self { ratio, always_slower_than }
    }

    /// Keep every request.
    pub fn always() -> Self {
        Self::new(1.0, DEFAULT_ALWAYS_SLOWER_THAN)
    }

    /// The share of requests kept.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Decide for a request that enters here.
    pub fn sample(&self) -> bool {
        self.ratio >= 1.0 || (self.ratio > 0.0 && fastrand::f64() < self.ratio)
    }

    /// Whether a hop is recorded: its trace is sampled, it failed, or it was slow.
    pub fn keeps(&self, sampled: bool, failed: bool, took: Duration) -> bool {
        sampled || failed || took >= self.always_slower_than
    }
}

const SUMMARY_MAX: usize = 256;

/// The arguments as short JSON: secrets masked ([`crate::mask`]), cut at 256 bytes.
///
/// ```
/// let args = serde_json::json!({"user": "ada", "password": "hunter2", "args": ["--token=t0p", "x"]});
/// let s = nova_rpc::layer::trace::summarize(&nova_rpc::Args::of(&args).unwrap());
/// assert!(s.contains(r#""password":"***""#) && s.contains(r#""user":"ada""#) && !s.contains("hunter2"));
/// assert!(s.contains("--token=***") && !s.contains("t0p"));
/// ```
pub fn summarize(args: &Args) -> String {
    let mut s = match args.to_map() {
        Ok(map) => crate::mask::mask_value(&Value::Object(map)).to_string(),
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

/// The tracer's own counts, shared with its shipping task.
#[derive(Debug, Default)]
struct Counts {
    /// Spans queued or in the batch being shipped.
    held: AtomicUsize,
    dropped: AtomicU64,
    shipped: AtomicU64,
}

/// The process-wide counters of every tracer, registered with
/// [`crate::metrics`] on first use.
struct TraceMetrics {
    dropped: prometheus_client::metrics::family::Family<StageLabels, prometheus_client::metrics::counter::Counter>,
    shipped: prometheus_client::metrics::counter::Counter,
}

/// Where a span was dropped: `queue` (the tracer's queue was full) or
/// `ship` (the collector did not take its batch).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

fn trace_metrics() -> &'static TraceMetrics {
    static METRICS: std::sync::OnceLock<TraceMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let m = TraceMetrics { dropped: Default::default(), shipped: Default::default() };
        crate::metrics::register("trace_spans_dropped", "Spans a tracer dropped, by stage", m.dropped.clone());
        crate::metrics::register("trace_spans_shipped", "Spans a tracer handed to a collector", m.shipped.clone());
        m
    })
}

/// Ships spans to the collectors in batches, off the hot path.
#[derive(Debug, Clone)]
pub struct Tracer {
    spans: mpsc::Sender<Span>,
    service: String,
    host: String,
    sampler: Sampler,
    counts: Arc<Counts>,
}

impl Tracer {
    /// A tracer for `service` on `host`, shipping batches over `transport`
    /// and holding at most [`SPAN_QUEUE`] spans besides the batch in flight.
    pub fn new(transport: Arc<dyn Transport>, service: &str, host: &str) -> Self {
        Self::with_capacity(transport, service, host, SPAN_QUEUE)
    }

    /// The same, holding at most `capacity` spans besides the batch in flight.
    pub fn with_capacity(transport: Arc<dyn Transport>, service: &str, host: &str, capacity: usize) -> Self {
        let (spans, rx) = mpsc::channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let client = RpcClient::new(transport, Target::new(TRACE_TOPIC)).with_retry(Some(0)).with_timeout(SHIP_TIMEOUT);
        tokio::spawn(ship(client, rx, counts.clone()));
        Self { spans, service: service.to_owned(), host: host.to_owned(), sampler: Sampler::default(), counts }
    }

    /// Sample with `sampler` (the default is [`Sampler::default`]).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Which requests it records.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Who records the spans.
    pub fn service(&self) -> (&str, &str) {
        (&self.service, &self.host)
    }

    /// Queue a span; when the queue is full it is dropped and counted, never waited for.
    pub fn record(&self, span: Span) {
        if self.spans.try_send(span).is_ok() {
            self.counts.held.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            trace_metrics().dropped.get_or_create(&StageLabels { stage: "queue" }).inc();
        }
    }

    /// Spans held now: queued, or in the batch being shipped.
    pub fn held(&self) -> usize {
        self.counts.held.load(Ordering::Relaxed)
    }

    /// The most spans it ever holds: its queue and one batch.
    pub fn max_held(&self) -> usize {
        self.spans.max_capacity() + BATCH
    }

    /// Spans dropped so far (queue full, or the collector did not take them).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Spans a collector took so far.
    pub fn shipped(&self) -> u64 {
        self.counts.shipped.load(Ordering::Relaxed)
    }
}

/// The arguments of `record_spans`.
#[derive(Serialize)]
struct Batch<'a> {
    spans: &'a [Span],
}

/// Take spans off the queue and hand them to a collector, a batch at a
/// time: the next batch waits until the collector has taken this one.
async fn ship(client: RpcClient, mut rx: mpsc::Receiver<Span>, counts: Arc<Counts>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let until = Instant::now() + Duration::from_millis(100);
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(until.into(), rx.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let n = batch.len();
        let outcome = client.call_payload(&RequestContext::default(), "record_spans", Batch { spans: &batch }).await;
        batch.clear();
        counts.held.fetch_sub(n, Ordering::Relaxed);
        let count = n as u64;
        match outcome {
            Ok(_) => {
                counts.shipped.fetch_add(count, Ordering::Relaxed);
                trace_metrics().shipped.inc_by(count);
            }
            Err(e) => {
                counts.dropped.fetch_add(count, Ordering::Relaxed);
                trace_metrics().dropped.get_or_create(&StageLabels { stage: "ship" }).inc_by(count);
                tracing::debug!(error = %e, spans = n, "trace spans not shipped");
            }
        }
    }
}

/// Traces the requests a server dispatches; see the module docs.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    tracer: Tracer,
}

impl TraceLayer {
    /// A layer recording through `tracer`, sampling with its [`Sampler`].
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
        let parent = trace_of(&call.ctx);
        let sampled = parent.sampled.unwrap_or_else(|| self.tracer.sampler.sample());
        let span_id = new_span_id();
        enter(&mut call.ctx, &parent.trace_id, &span_id, sampled);
        let (topic, method, args) = (call.topic.clone(), call.method.clone(), call.args.clone());
        let after_reply = call.after_reply.clone();
        let (start_ms, started) = (now_ms(), Instant::now());
        let out = next.run(call).await;
        let took = started.elapsed();
        if !self.tracer.sampler.keeps(sampled, out.is_err(), took) {
            return out;
        }
        let (service, host) = self.tracer.service();
        let (service, host) = (service.to_owned(), host.to_owned());
        let outcome = out.as_ref().map_or_else(|e| e.class().to_owned(), |_| "ok".to_owned());
        let tracer = self.tracer.clone();
        // Recorded once the reply is on its way, never before it.
        after_reply.push(move || {
            tracer.record(Span {
                trace_id: parent.trace_id,
                span_id,
                parent_id: parent.parent_id,
                service,
                host,
                topic,
                method,
                args: summarize(&args),
                start_ms,
                duration_ms: took.as_secs_f64() * 1e3,
                outcome,
            })
        });
        out
    }
}

/// A trace's spans depth-first, each with its depth: roots (spans whose
/// parent is not in the trace) first, children under their parent, each
/// level by start time. What the CLI, the gateway and the console show.
///
/// It takes O(n log n) time and no recursion, whatever the depth: a trace
/// is data from the network.
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
    let mut by_start: Vec<&Span> = spans.iter().collect();
    by_start.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut roots = Vec::new();
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    for s in by_start {
        match s.parent_id.as_deref().filter(|p| ids.contains(p) && *p != s.span_id) {
            Some(parent) => children.entry(parent).or_default().push(s),
            None => roots.push(s),
        }
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &Span)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    while let Some((depth, s)) = stack.pop() {
        out.push((depth, s));
        // Taking a span's children out of the index visits each once, so
        // a cycle in bad data ends the walk rather than looping.
        if let Some(kids) = children.remove(s.span_id.as_str()) {
            stack.extend(kids.into_iter().rev().map(|c| (depth + 1, c)));
        }
    }
    out
}
