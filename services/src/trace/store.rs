//! The `trace_spans` table: writing batches, reading a trace, and deleting
//! by age and by size in bounded batches.

use nova_core::db::{Database, DbError, Migration};
use nova_rpc::layer::trace::Span;
use sqlx::Row;

/// The `trace_spans` table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "0201_trace_spans",
    sqlite: "CREATE TABLE IF NOT EXISTS trace_spans (trace_id VARCHAR(255) NOT NULL, span_id VARCHAR(32) NOT NULL, start_ms DOUBLE PRECISION NOT NULL, span TEXT NOT NULL, PRIMARY KEY (trace_id, span_id));
CREATE INDEX IF NOT EXISTS trace_spans_start_idx ON trace_spans (start_ms);",
    postgres: "CREATE TABLE IF NOT EXISTS trace_spans (trace_id VARCHAR(255) NOT NULL, span_id VARCHAR(32) NOT NULL, start_ms DOUBLE PRECISION NOT NULL, span TEXT NOT NULL, PRIMARY KEY (trace_id, span_id));
CREATE INDEX IF NOT EXISTS trace_spans_start_idx ON trace_spans (start_ms);",
}];

/// Rows one deleting statement takes at most.
pub const DELETE_BATCH: i64 = 2000;

/// Batches one expiry deletes at most; the next run goes on.
const MAX_BATCHES: usize = 500;

/// Write `spans` in one transaction.
pub(super) async fn save(db: &Database, spans: &[Span]) -> Result<(), DbError> {
    if spans.is_empty() {
        return Ok(());
    }
    let sql =
        "INSERT INTO trace_spans (trace_id, span_id, start_ms, span) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
    let texts: Vec<String> = spans.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    nova_core::with_pool!(db, pool => async {
        let mut tx = pool.begin().await?;
        for (s, text) in spans.iter().zip(&texts) {
            sqlx::query(sql).bind(&s.trace_id).bind(&s.span_id).bind(s.start_ms).bind(text).execute(&mut *tx).await?;
        }
        tx.commit().await
    }.await)
    .map_err(DbError::sql("saving trace spans"))
}

/// The first `limit` spans of `trace_id`, by start time.
pub(super) async fn load(db: &Database, trace_id: &str, limit: usize) -> Result<Vec<Span>, DbError> {
    let sql = "SELECT span FROM trace_spans WHERE trace_id = $1 ORDER BY start_ms LIMIT $2";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Result<Vec<String>, sqlx::Error> = nova_core::with_pool!(db, pool => {
        match sqlx::query(sql).bind(trace_id).bind(limit).fetch_all(pool).await {
            Ok(rows) => rows.iter().map(|r| r.try_get::<String, _>("span")).collect(),
            Err(e) => Err(e),
        }
    });
    Ok(rows.map_err(DbError::sql("reading a trace"))?.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
}

/// Delete up to [`DELETE_BATCH`] of the oldest spans, those older than
/// `cutoff` (milliseconds since the epoch) when given; the rows deleted.
async fn delete_batch(db: &Database, cutoff: Option<f64>) -> Result<u64, DbError> {
    let sql = "DELETE FROM trace_spans WHERE (trace_id, span_id) IN \
               (SELECT trace_id, span_id FROM trace_spans WHERE start_ms < $1 ORDER BY start_ms LIMIT $2)";
    let cutoff = cutoff.unwrap_or(f64::INFINITY);
    let deleted = nova_core::with_pool!(db, pool => sqlx::query(sql).bind(cutoff).bind(DELETE_BATCH).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(DbError::sql("deleting trace spans"))?;
    // Let requests waiting for the database in between.
    tokio::task::yield_now().await;
    Ok(deleted)
}

/// Delete every span older than `cutoff`, a batch at a time; the rows deleted.
pub(super) async fn delete_older(db: &Database, cutoff: f64) -> Result<u64, DbError> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let n = delete_batch(db, Some(cutoff)).await?;
        total += n;
        if n < DELETE_BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// The bytes the spans take and how many there are. SQLite: the pages in
/// use (the table is most of the file); PostgreSQL: the rows' own size.
pub(super) async fn size(db: &Database) -> Result<(u64, u64), DbError> {
    let doing = DbError::sql("measuring trace spans");
    let (bytes, rows): (i64, i64) = match db {
        Database::Sqlite(pool) => {
            let bytes: i64 = sqlx::query_scalar(
                "SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
            )
            .fetch_one(pool)
            .await
            .map_err(doing)?;
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trace_spans")
                .fetch_one(pool)
                .await
                .map_err(DbError::sql("counting trace spans"))?;
            (bytes, rows)
        }
        Database::Postgres(pool) => {
            sqlx::query_as("SELECT COALESCE(SUM(pg_column_size(t.*)), 0)::BIGINT, COUNT(*) FROM trace_spans t")
                .fetch_one(pool)
                .await
                .map_err(doing)?
        }
    };
    Ok((u64::try_from(bytes).unwrap_or(0), u64::try_from(rows).unwrap_or(0)))
}

/// Delete the oldest spans, a batch at a time, until they take at most
/// `max_bytes`; the rows deleted. The rows to delete are estimated from
/// the average row, then the size is measured again (a few rounds at most).
pub(super) async fn shrink_to(db: &Database, max_bytes: u64) -> Result<u64, DbError> {
    let mut total = 0;
    for _ in 0..3 {
        let (bytes, rows) = size(db).await?;
        if bytes <= max_bytes || rows == 0 {
            break;
        }
        // Go a tenth below the limit, so the next batch of spans does not
        // start the deletion again at once.
        let excess = bytes - max_bytes + max_bytes / 10;
        let want = (u128::from(excess) * u128::from(rows)).div_ceil(u128::from(bytes.max(1)));
        let want = u64::try_from(want).unwrap_or(u64::MAX).min(rows);
        let mut deleted = 0;
        for _ in 0..MAX_BATCHES {
            let n = delete_batch(db, None).await?;
            deleted += n;
            if n == 0 || deleted >= want {
                break;
            }
        }
        total += deleted;
        if deleted == 0 {
            break;
        }
    }
    Ok(total)
}
