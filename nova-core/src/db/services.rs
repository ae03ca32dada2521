//! Service records: Nova's `services` table.
//!
//! One row per (host, binary): the report loop bumps `report_count` and
//! `last_seen_up`; operators disable, force down or soft-delete rows
//! (`deleted = id`) with `nova-manage service …`; the servicegroup's
//! [`is_up`] decides liveness from `last_seen_up` and `service_down_time`.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::Row;

use super::{Database, DbError, Migration};
use crate::with_pool;

/// The migrations that create the `services` table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "0001_services",
    sqlite: r#"
CREATE TABLE IF NOT EXISTS services (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid VARCHAR(36) NOT NULL,
    host VARCHAR(255) NOT NULL,
    "binary" VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    report_count BIGINT NOT NULL DEFAULT 0,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_reason VARCHAR(255),
    last_seen_up TIMESTAMP,
    forced_down BOOLEAN NOT NULL DEFAULT FALSE,
    version BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP,
    deleted_at TIMESTAMP,
    deleted BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT uniq_services0host0topic0deleted UNIQUE (host, topic, deleted),
    CONSTRAINT uniq_services0host0binary0deleted UNIQUE (host, "binary", deleted)
);
CREATE UNIQUE INDEX IF NOT EXISTS services_uuid_idx ON services (uuid);
"#,
    postgres: r#"
CREATE TABLE IF NOT EXISTS services (
    id BIGSERIAL PRIMARY KEY,
    uuid VARCHAR(36) NOT NULL,
    host VARCHAR(255) NOT NULL,
    "binary" VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    report_count BIGINT NOT NULL DEFAULT 0,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_reason VARCHAR(255),
    last_seen_up TIMESTAMP,
    forced_down BOOLEAN NOT NULL DEFAULT FALSE,
    version BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP,
    deleted_at TIMESTAMP,
    deleted BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT uniq_services0host0topic0deleted UNIQUE (host, topic, deleted),
    CONSTRAINT uniq_services0host0binary0deleted UNIQUE (host, "binary", deleted)
);
CREATE UNIQUE INDEX IF NOT EXISTS services_uuid_idx ON services (uuid);
"#,
}];

/// One row of the `services` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceRecord {
    /// Row id.
    pub id: i64,
    /// Stable uuid.
    pub uuid: String,
    /// Node name.
    pub host: String,
    /// Program name, e.g. `nova-compute`.
    pub binary: String,
    /// RPC topic.
    pub topic: String,
    /// Heartbeats so far.
    pub report_count: i64,
    /// Disabled by an operator (no new work is scheduled to it).
    pub disabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Last heartbeat (UTC).
    pub last_seen_up: Option<NaiveDateTime>,
    /// Forced down by an operator, whatever its heartbeats say.
    pub forced_down: bool,
    /// The service's record version.
    pub version: i64,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Last changed (UTC).
    pub updated_at: Option<NaiveDateTime>,
    /// Soft-deleted at (UTC).
    pub deleted_at: Option<NaiveDateTime>,
    /// 0, or the row's id once soft-deleted.
    pub deleted: i64,
}

/// The service version a binary that declares none writes.
pub const SERVICE_VERSION: i64 = 1;

/// Nova's servicegroup rule: up when not forced down and seen within `down_time`.
pub fn is_up(record: &ServiceRecord, down_time: Duration, now: NaiveDateTime) -> bool {
    if record.forced_down {
        return false;
    }
    let last = record.last_seen_up.unwrap_or(record.created_at);
    let elapsed = (now - last).abs();
    elapsed.to_std().is_ok_and(|e| e <= down_time)
}

const COLUMNS: &str = r#"id, uuid, host, "binary", topic, report_count, disabled, disabled_reason, last_seen_up, forced_down, version, created_at, updated_at, deleted_at, deleted"#;

macro_rules! record {
    ($row:expr) => {{
        let r = $row;
        ServiceRecord {
            id: r.try_get("id")?,
            uuid: r.try_get("uuid")?,
            host: r.try_get("host")?,
            binary: r.try_get("binary")?,
            topic: r.try_get("topic")?,
            report_count: r.try_get("report_count")?,
            disabled: r.try_get("disabled")?,
            disabled_reason: r.try_get("disabled_reason")?,
            last_seen_up: r.try_get("last_seen_up")?,
            forced_down: r.try_get("forced_down")?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            deleted_at: r.try_get("deleted_at")?,
            deleted: r.try_get("deleted")?,
        }
    }};
}

fn now() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// A change an operator makes with `nova-manage service …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// Enable scheduling to it.
    Enable,
    /// Disable, with a reason.
    Disable(Option<String>),
    /// Force down (or lift it).
    ForceDown(bool),
    /// Soft-delete.
    Delete,
}

/// Queries on the `services` table.
#[derive(Debug, Clone)]
pub struct ServiceRecords {
    db: Database,
}

impl ServiceRecords {
    /// Over `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The live record of `host`/`binary`.
    pub async fn get(&self, host: &str, binary: &str) -> Result<Option<ServiceRecord>, DbError> {
        let sql = format!(r#"SELECT {COLUMNS} FROM services WHERE host = $1 AND "binary" = $2 AND deleted = 0"#);
        let fetch = async {
            with_pool!(&self.db, pool => {
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(host).bind(binary).fetch_optional(pool).await?;
                Ok::<_, sqlx::Error>(match row { Some(r) => Some(record!(r)), None => None })
            })
        };
        fetch.await.map_err(DbError::sql(format!("looking up service {binary} on {host}")))
    }

    /// Create the record if absent (safe against a concurrent creator) and
    /// mark it as (re)started; returns it.
    pub async fn create_or_update(
        &self,
        host: &str,
        binary: &str,
        topic: &str,
        version: i64,
    ) -> Result<ServiceRecord, DbError> {
        let t = now();
        let uuid = uuid::Uuid::new_v4().to_string();
        let insert = r#"INSERT INTO services (uuid, host, "binary", topic, report_count, disabled, forced_down, version, created_at, updated_at, deleted)
            VALUES ($1, $2, $3, $4, 0, FALSE, FALSE, $5, $6, $6, 0) ON CONFLICT DO NOTHING"#;
        let update = r#"UPDATE services SET version = $1, topic = $2, updated_at = $3 WHERE host = $4 AND "binary" = $5 AND deleted = 0"#;
        with_pool!(&self.db, pool => {
            sqlx::query(insert).bind(&uuid).bind(host).bind(binary).bind(topic).bind(version).bind(t)
                .execute(pool).await.map_err(DbError::sql("creating the service record"))?;
            sqlx::query(update).bind(version).bind(topic).bind(t).bind(host).bind(binary)
                .execute(pool).await.map_err(DbError::sql("updating the service record"))?;
        });
        self.get(host, binary).await?.ok_or_else(|| DbError::Sql {
            doing: format!("creating service {binary} on {host}"),
            source: sqlx::Error::RowNotFound,
        })
    }

    /// One heartbeat: bump `report_count`, set `last_seen_up`. `false` when the row is gone.
    pub async fn report(&self, id: i64) -> Result<bool, DbError> {
        let t = now();
        let sql = "UPDATE services SET report_count = report_count + 1, last_seen_up = $1, updated_at = $1 WHERE id = $2 AND deleted = 0";
        let done = with_pool!(&self.db, pool => sqlx::query(sql).bind(t).bind(id).execute(pool).await.map(|r| r.rows_affected()));
        done.map(|n| n > 0).map_err(DbError::sql("reporting service state"))
    }

    /// Every live record (optionally only one topic or binary), ordered by id.
    pub async fn list(&self, topic: Option<&str>) -> Result<Vec<ServiceRecord>, DbError> {
        let sql =
            format!("SELECT {COLUMNS} FROM services WHERE deleted = 0 AND ($1 IS NULL OR topic = $1) ORDER BY id");
        let fetch = async {
            with_pool!(&self.db, pool => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(topic).fetch_all(pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(record!(r));
                }
                Ok::<_, sqlx::Error>(out)
            })
        };
        fetch.await.map_err(DbError::sql("listing services"))
    }

    /// Apply an operator's change to `host`/`binary`; `false` when no such live record.
    pub async fn admin(&self, host: &str, binary: &str, action: &AdminAction) -> Result<bool, DbError> {
        const WHERE: &str = r#"WHERE host = $1 AND "binary" = $2 AND deleted = 0"#;
        let t = now();
        let done = with_pool!(&self.db, pool => match action {
            AdminAction::Enable | AdminAction::Disable(_) => {
                let reason = match action { AdminAction::Disable(r) => r.clone(), _ => None };
                let sql = format!("UPDATE services SET disabled = $3, disabled_reason = $4, updated_at = $5 {WHERE}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(host).bind(binary)
                    .bind(matches!(action, AdminAction::Disable(_))).bind(reason).bind(t).execute(pool).await.map(|r| r.rows_affected())
            }
            AdminAction::ForceDown(down) => {
                let sql = format!("UPDATE services SET forced_down = $3, updated_at = $4 {WHERE}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(host).bind(binary).bind(*down).bind(t).execute(pool).await.map(|r| r.rows_affected())
            }
            AdminAction::Delete => {
                let sql = format!("UPDATE services SET deleted = id, deleted_at = $3, updated_at = $3 {WHERE}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(host).bind(binary).bind(t).execute(pool).await.map(|r| r.rows_affected())
            }
        });
        done.map(|n| n > 0).map_err(DbError::sql(format!("changing service {binary} on {host}")))
    }
}
