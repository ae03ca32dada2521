//! The trace collector (`nova-trace`, and inside `nova-all`): keeps the
//! spans every service ships to the `trace` topic, so a request can be
//! shown as the tree of calls it caused.
//!
//! Everything it holds is bounded, and what it turns away is counted
//! (`nova_trace_collector_spans_dropped_total`, by reason):
//!
//! * recent traces stay in memory for quick reads, at most `[trace]
//!   max_traces` traces and `[trace] max_spans_held` spans, oldest dropped
//!   first (they are still in the database);
//! * a trace takes at most `[trace] max_spans_per_trace` spans, and a read
//!   returns at most that many, no deeper than `[trace] max_depth`;
//! * every batch is written to the `trace_spans` table in one transaction
//!   while its sender waits, so a slow database slows the senders, whose
//!   own queues then drop ([`nova_rpc::layer::trace`]), instead of a
//!   backlog growing here;
//! * a periodic task deletes spans older than `[trace] retention` and, past
//!   `[trace] max_db_mb`, the oldest spans, in batches of
//!   [`DELETE_BATCH`] rows so that no statement holds the database long;
//!   every eighth of `max_db_mb` written also starts a cut by size in the
//!   background, so a burst does not overshoot until the next run.
//!
//! `get_trace(trace_id)` answers from memory, else from the database. With
//! `[trace] otlp_endpoint` set, every batch is also forwarded to an
//! OpenTelemetry collector ([`otlp`]), so Jaeger or Tempo show the same
//! traces.

pub mod otlp;
mod store;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use nova_core::{config::OptSpec, db::Database, rpc_api, BoxError, Manager, ManagerDeps, ManagerEntry, ManagerHandle};
use nova_rpc::{
    layer::trace::{walk, Span},
    RequestContext, RpcError,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub use store::{DELETE_BATCH, MIGRATIONS};

/// The registry name of this manager.
pub const NAME: &str = "nova_services::trace::TraceCollector";

macro_rules! trace_opt {
    ($name:literal, $default:literal, $help:literal) => {
        OptSpec { section: "trace", name: $name, default: $default, help: $help }
    };
}

/// `[trace]` options of the collector.
pub const OPTIONS: &[OptSpec] = &[
    trace_opt!(
        "max_traces",
        "1000",
        "Traces the collector keeps in memory for quick reads (the database has them all)."
    ),
    trace_opt!("max_spans_held", "20000", "Spans the collector keeps in memory, over all traces."),
    trace_opt!(
        "max_spans_per_trace",
        "1000",
        "Spans one trace may have; more are dropped, and reads return at most this many."
    ),
    trace_opt!("max_depth", "50", "Deepest span a read returns (1 to 50): a chain of calls deeper than this is cut."),
    trace_opt!("retention", "86400", "Seconds spans are kept in the database."),
    trace_opt!(
        "max_db_mb",
        "256",
        "Megabytes of spans kept in the database; past it the oldest are deleted (0: no limit)."
    ),
    trace_opt!(
        "otlp_endpoint",
        "",
        "Also send spans to this OpenTelemetry collector as OTLP/HTTP JSON (e.g. http://127.0.0.1:4318)."
    ),
];

/// What a collector keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Traces in memory.
    pub max_traces: usize,
    /// Spans in memory, over all traces.
    pub max_spans_held: usize,
    /// Spans in one trace.
    pub max_spans_per_trace: usize,
    /// The deepest span a read returns.
    pub max_depth: usize,
    /// How long spans stay in the database.
    pub retention: Duration,
    /// Bytes of spans in the database (`None`: no limit).
    pub max_db_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_traces: 1000,
            max_spans_held: 20_000,
            max_spans_per_trace: 1000,
            max_depth: 50,
            retention: Duration::from_secs(86_400),
            max_db_bytes: Some(256 << 20),
        }
    }
}

impl Limits {
    fn from_config(c: &nova_core::config::Config) -> Result<Self, BoxError> {
        let at_least_one = |name: &str| -> Result<usize, BoxError> { Ok(c.require::<usize>("trace", name)?.max(1)) };
        let retention: f64 = c.require("trace", "retention")?;
        let max_db_mb: u64 = c.require("trace", "max_db_mb")?;
        let max_depth = c.require::<usize>("trace", "max_depth")?;
        if !(1..=50).contains(&max_depth) {
            return Err(c.invalid("trace", "max_depth", "expected a whole number from 1 to 50").into());
        }
        Ok(Self {
            max_traces: at_least_one("max_traces")?,
            max_spans_held: at_least_one("max_spans_held")?,
            max_spans_per_trace: at_least_one("max_spans_per_trace")?,
            max_depth,
            retention: Duration::from_secs_f64(retention.max(0.0)),
            max_db_bytes: (max_db_mb > 0).then_some(max_db_mb << 20),
        })
    }
}

/// Why the collector turned spans away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

struct CollectorMetrics {
    dropped: Family<ReasonLabels, Counter>,
    held: Gauge,
}

fn collector_metrics() -> &'static CollectorMetrics {
    static METRICS: OnceLock<CollectorMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = CollectorMetrics { dropped: Family::default(), held: Gauge::default() };
        nova_rpc::metrics::register(
            "trace_collector_spans_dropped",
            "Spans the trace collector turned away, by reason",
            m.dropped.clone(),
        );
        nova_rpc::metrics::register(
            "trace_collector_spans_held",
            "Spans the trace collector holds in memory",
            m.held.clone(),
        );
        m
    })
}

fn count_dropped(reason: &'static str, n: usize) {
    if n > 0 {
        collector_metrics().dropped.get_or_create(&ReasonLabels { reason }).inc_by(n as u64);
    }
}

/// Recent traces, oldest first.
#[derive(Default)]
struct Recent {
    traces: HashMap<String, Vec<Span>>,
    order: VecDeque<String>,
    /// Spans over all traces.
    spans: usize,
}

impl Recent {
    /// Keep `span` unless its trace is full; whether it was kept.
    fn add(&mut self, span: &Span, limits: &Limits) -> bool {
        let trace = match self.traces.get_mut(&span.trace_id) {
            Some(trace) => trace,
            None => {
                self.order.push_back(span.trace_id.clone());
                self.traces.entry(span.trace_id.clone()).or_default()
            }
        };
        if trace.len() >= limits.max_spans_per_trace {
            return false;
        }
        trace.push(span.clone());
        self.spans += 1;
        while self.order.len() > limits.max_traces || self.spans > limits.max_spans_held {
            let Some(old) = self.order.pop_front() else { break };
            self.spans -= self.traces.remove(&old).map_or(0, |t| t.len());
        }
        true
    }
}

/// What became of a batch of spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Spans kept.
    pub kept: usize,
    /// Spans turned away: malformed, or their trace was full.
    pub dropped: usize,
}

/// Keeps traces; see the module docs.
pub struct TraceCollector {
    recent: Mutex<Recent>,
    limits: Limits,
    db: Database,
    otlp_endpoint: Option<String>,
    /// Exports and deletions in flight, finished before the service stops.
    background: nova_core::Background,
    /// Bytes written since the size was last checked.
    written: AtomicU64,
    /// Whether a deletion by size is running.
    shrinking: Arc<AtomicBool>,
}

impl std::fmt::Debug for TraceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceCollector").field("limits", &self.limits).finish()
    }
}

/// The registry entry: `nova_services::trace::TraceCollector`, default for `trace`.
pub fn entry() -> ManagerEntry {
    ManagerEntry::new(NAME, |deps: ManagerDeps| async move {
        let limits = Limits::from_config(&deps.config)?;
        let mut m = TraceCollector::new(deps.db.clone(), limits).with_background(deps.service.background.clone());
        if let Some(endpoint) = deps.config.get::<String>("trace", "otlp_endpoint")?.filter(|e| !e.is_empty()) {
            m = m.with_otlp(endpoint);
        }
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(m)))
    })
    .options(OPTIONS)
    .migrations(MIGRATIONS)
    .default_for("trace")
}

fn db_error(e: nova_core::db::DbError) -> RpcError {
    RpcError::remote("DatabaseError", "nova_services.trace", e.to_string())
}

/// Whether a span fits the table and the limits of a field: a span comes
/// from the network, and one that does not fit would fail its whole batch.
fn well_formed(s: &Span) -> bool {
    let short = |t: &str| !t.is_empty() && t.len() <= 255;
    short(&s.trace_id)
        && !s.span_id.is_empty()
        && s.span_id.len() <= 32
        && s.parent_id.as_ref().is_none_or(|p| p.len() <= 32)
        && [&s.service, &s.host, &s.topic, &s.method, &s.outcome].iter().all(|f| f.len() <= 255)
        && s.args.len() <= 1024
        && s.start_ms.is_finite()
        && s.duration_ms.is_finite()
}

impl TraceCollector {
    /// A collector over a migrated `db`, keeping what `limits` allow.
    pub fn new(db: Database, limits: Limits) -> Self {
        Self {
            recent: Mutex::default(),
            limits,
            db,
            otlp_endpoint: None,
            background: nova_core::Background::new(),
            written: AtomicU64::new(0),
            shrinking: Arc::default(),
        }
    }

    /// After every eighth of `max_db_mb` written, cut the database back to
    /// its size in the background, so a burst cannot overshoot the limit
    /// until the next periodic run; one cut at a time.
    fn shrink_when_grown(&self, spans: &[Span]) {
        let Some(max) = self.limits.max_db_bytes else { return };
        let bytes: u64 = spans.iter().map(|s| (s.args.len() + s.method.len() + 200) as u64).sum();
        if self.written.fetch_add(bytes, Ordering::Relaxed) + bytes < max / 8 {
            return;
        }
        if self.shrinking.swap(true, Ordering::AcqRel) {
            return;
        }
        self.written.store(0, Ordering::Relaxed);
        let (db, shrinking) = (self.db.clone(), self.shrinking.clone());
        self.background.spawn(async move {
            match store::shrink_to(&db, max).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "deleted the oldest trace spans: the database reached max_db_mb")
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete old trace spans"),
            }
            shrinking.store(false, Ordering::Release);
        });
    }

    /// Track exports in `background` (the service's, so a stop waits for them).
    pub fn with_background(mut self, background: nova_core::Background) -> Self {
        self.background = background;
        self
    }

    /// Also forward every batch to the OpenTelemetry collector at `endpoint`.
    pub fn with_otlp(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Traces and spans held in memory now.
    pub async fn held(&self) -> (usize, usize) {
        let recent = self.recent.lock().await;
        (recent.traces.len(), recent.spans)
    }

    /// The bytes and rows of spans in the database (how `max_db_mb` measures them).
    pub async fn stored(&self) -> Result<(u64, u64), RpcError> {
        store::size(&self.db).await.map_err(db_error)
    }

    /// What it keeps.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Delete spans past their age, then the oldest past the size limit; the
    /// rows deleted.
    pub async fn expire(&self) -> Result<u64, RpcError> {
        let cutoff = nova_rpc::layer::trace::now_ms() - self.limits.retention.as_secs_f64() * 1e3;
        let mut deleted = store::delete_older(&self.db, cutoff).await.map_err(db_error)?;
        if let Some(max) = self.limits.max_db_bytes {
            deleted += store::shrink_to(&self.db, max).await.map_err(db_error)?;
        }
        Ok(deleted)
    }
}

#[rpc_api(version = "1.0")]
impl TraceCollector {
    /// Keep a batch of spans (shipped by every service's trace layer); the
    /// sender waits until they are written.
    pub async fn record_spans(&self, _ctx: RequestContext, spans: Vec<Span>) -> Result<Recorded, RpcError> {
        let total = spans.len();
        let (good, bad): (Vec<Span>, Vec<Span>) = spans.into_iter().partition(well_formed);
        count_dropped("malformed", bad.len());
        let kept: Vec<Span> = {
            let mut recent = self.recent.lock().await;
            let kept = good.into_iter().filter(|s| recent.add(s, &self.limits)).collect::<Vec<_>>();
            collector_metrics().held.set(i64::try_from(recent.spans).unwrap_or(i64::MAX));
            kept
        };
        count_dropped("trace_full", total - bad.len() - kept.len());
        if let Some(endpoint) = self.otlp_endpoint.clone().filter(|_| !kept.is_empty()) {
            let batch = kept.clone();
            self.background.spawn(async move {
                if let Err(e) = otlp::export(&endpoint, &batch).await {
                    tracing::warn!(error = %e, spans = batch.len(), "spans not forwarded to the OpenTelemetry collector");
                }
            });
        }
        if let Err(e) = store::save(&self.db, &kept).await {
            count_dropped("database", kept.len());
            return Err(db_error(e));
        }
        self.shrink_when_grown(&kept);
        Ok(Recorded { kept: kept.len(), dropped: total - kept.len() })
    }

    /// The spans of one trace (its root request's `request_id`), by start
    /// time: at most `max_spans_per_trace`, none deeper than `max_depth`.
    pub async fn get_trace(&self, _ctx: RequestContext, trace_id: String) -> Result<Vec<Span>, RpcError> {
        let held = self.recent.lock().await.traces.get(&trace_id).cloned();
        let spans = match held {
            Some(s) => s,
            None => store::load(&self.db, &trace_id, self.limits.max_spans_per_trace).await.map_err(db_error)?,
        };
        let mut shown: Vec<Span> = walk(&spans)
            .into_iter()
            .filter(|(depth, _)| *depth < self.limits.max_depth)
            .map(|(_, s)| s.clone())
            .collect();
        shown.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        Ok(shown)
    }

    #[periodic_task(spacing = 60, run_immediately = true)]
    async fn _expire(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        let deleted = self.expire().await?;
        if deleted > 0 {
            tracing::info!(deleted, "deleted old trace spans");
        }
        Ok(())
    }
}

impl Manager for TraceCollector {}
