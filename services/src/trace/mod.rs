//! The trace collector (`nova-trace`, and inside `nova-all`): keeps the
//! spans every service casts to the `trace` topic, so a request can be
//! shown as the tree of calls it caused.
//!
//! Recent traces stay in memory (at most `[trace] max_traces`, oldest
//! dropped first) and every span is written to the `trace_spans` table; a
//! periodic task deletes spans older than `[trace] retention`.
//! `get_trace(trace_id)` answers from memory, else from the database. With
//! `[trace] otlp_endpoint` set, every batch is also forwarded to an
//! OpenTelemetry collector ([`otlp`]), so Jaeger or Tempo show the same
//! traces.

pub mod otlp;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use nova_core::{
    config::OptSpec,
    db::{Database, DbError, Migration},
    rpc_api, BoxError, Manager, ManagerDeps, ManagerEntry, ManagerHandle,
};
use nova_rpc::{layer::trace::Span, RequestContext, RpcError};
use sqlx::Row;
use tokio::sync::Mutex;

/// The registry name of this manager.
pub const NAME: &str = "nova_services::trace::TraceCollector";

/// `[trace]` options.
pub const OPTIONS: &[OptSpec] = &[
    OptSpec { section: "trace", name: "max_traces", default: "10000", help: "Traces kept in memory." },
    OptSpec { section: "trace", name: "retention", default: "86400", help: "Seconds spans are kept in the database." },
    OptSpec {
        section: "trace",
        name: "otlp_endpoint",
        default: "",
        help: "Also send spans to this OpenTelemetry collector as OTLP/HTTP JSON (e.g. http://127.0.0.1:4318).",
    },
];

/// The `trace_spans` table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "0201_trace_spans",
    sqlite: "CREATE TABLE IF NOT EXISTS trace_spans (trace_id VARCHAR(255) NOT NULL, span_id VARCHAR(32) NOT NULL, start_ms DOUBLE PRECISION NOT NULL, span TEXT NOT NULL, PRIMARY KEY (trace_id, span_id));
CREATE INDEX IF NOT EXISTS trace_spans_start_idx ON trace_spans (start_ms);",
    postgres: "CREATE TABLE IF NOT EXISTS trace_spans (trace_id VARCHAR(255) NOT NULL, span_id VARCHAR(32) NOT NULL, start_ms DOUBLE PRECISION NOT NULL, span TEXT NOT NULL, PRIMARY KEY (trace_id, span_id));
CREATE INDEX IF NOT EXISTS trace_spans_start_idx ON trace_spans (start_ms);",
}];

#[derive(Default)]
struct Recent {
    traces: HashMap<String, Vec<Span>>,
    order: VecDeque<String>,
}

/// Keeps traces; see the module docs.
pub struct TraceCollector {
    recent: Mutex<Recent>,
    max_traces: usize,
    retention: Duration,
    db: Database,
    otlp_endpoint: Option<String>,
    /// Exports in flight, finished before the service stops.
    background: nova_core::Background,
}

impl std::fmt::Debug for TraceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceCollector").field("max_traces", &self.max_traces).finish()
    }
}

/// The registry entry: `nova_services::trace::TraceCollector`, default for `trace`.
pub fn entry() -> ManagerEntry {
    ManagerEntry::new(NAME, |deps: ManagerDeps| async move {
        let max: usize = deps.config.require("trace", "max_traces")?;
        let retention: f64 = deps.config.require("trace", "retention")?;
        let mut m = TraceCollector::new(deps.db.clone(), max, Duration::from_secs_f64(retention))
            .with_background(deps.service.background.clone());
        if let Some(endpoint) = deps.config.get::<String>("trace", "otlp_endpoint")?.filter(|e| !e.is_empty()) {
            m = m.with_otlp(endpoint);
        }
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(m)))
    })
    .options(OPTIONS)
    .migrations(MIGRATIONS)
    .default_for("trace")
}

fn db_error(e: DbError) -> RpcError {
    RpcError::remote("DatabaseError", "nova_services.trace", e.to_string())
}

impl TraceCollector {
    /// A collector over a migrated `db`.
    pub fn new(db: Database, max_traces: usize, retention: Duration) -> Self {
        Self {
            recent: Mutex::default(),
            max_traces: max_traces.max(1),
            retention,
            db,
            otlp_endpoint: None,
            background: nova_core::Background::new(),
        }
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

    async fn save(&self, spans: &[Span]) -> Result<(), DbError> {
        let sql = "INSERT INTO trace_spans (trace_id, span_id, start_ms, span) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        for s in spans {
            let text = serde_json::to_string(s).unwrap_or_default();
            nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(&s.trace_id).bind(&s.span_id).bind(s.start_ms).bind(&text).execute(pool).await.map(|_| ()))
                .map_err(DbError::sql("saving trace spans"))?;
        }
        Ok(())
    }

    async fn load(&self, trace_id: &str) -> Result<Vec<Span>, DbError> {
        let sql = "SELECT span FROM trace_spans WHERE trace_id = $1 ORDER BY start_ms";
        let rows: Result<Vec<String>, sqlx::Error> = nova_core::with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(trace_id).fetch_all(pool).await {
                Ok(rows) => rows.iter().map(|r| r.try_get::<String, _>("span")).collect(),
                Err(e) => Err(e),
            }
        });
        Ok(rows.map_err(DbError::sql("reading a trace"))?.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }
}

#[rpc_api(version = "1.0")]
impl TraceCollector {
    /// Keep a batch of spans (cast by every service's trace layer).
    #[rpc(cast)]
    pub async fn record_spans(&self, _ctx: RequestContext, spans: Vec<Span>) -> Result<(), RpcError> {
        {
            let mut recent = self.recent.lock().await;
            for s in &spans {
                if !recent.traces.contains_key(&s.trace_id) {
                    recent.order.push_back(s.trace_id.clone());
                    while recent.order.len() > self.max_traces {
                        if let Some(old) = recent.order.pop_front() {
                            recent.traces.remove(&old);
                        }
                    }
                }
                recent.traces.entry(s.trace_id.clone()).or_default().push(s.clone());
            }
        }
        if let Some(endpoint) = self.otlp_endpoint.clone() {
            let batch = spans.clone();
            self.background.spawn(async move {
                if let Err(e) = otlp::export(&endpoint, &batch).await {
                    tracing::warn!(error = %e, spans = batch.len(), "spans not forwarded to the OpenTelemetry collector");
                }
            });
        }
        self.save(&spans).await.map_err(db_error)
    }

    /// The spans of one trace (its root request's `request_id`), by start time.
    pub async fn get_trace(&self, _ctx: RequestContext, trace_id: String) -> Result<Vec<Span>, RpcError> {
        let mut spans = match self.recent.lock().await.traces.get(&trace_id) {
            Some(s) => s.clone(),
            None => self.load(&trace_id).await.map_err(db_error)?,
        };
        spans.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        Ok(spans)
    }

    #[periodic_task(spacing = 3600, run_immediately = true)]
    async fn _expire(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        let cutoff = nova_rpc::layer::trace::now_ms() - self.retention.as_secs_f64() * 1e3;
        let sql = "DELETE FROM trace_spans WHERE start_ms < $1";
        let deleted = nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(cutoff).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(|e| db_error(DbError::sql("expiring trace spans")(e)))?;
        if deleted > 0 {
            tracing::info!(deleted, "expired old trace spans");
        }
        Ok(())
    }
}

impl Manager for TraceCollector {}
