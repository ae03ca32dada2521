//! The database: SQLite (embedded default) or PostgreSQL, chosen by
//! `[database] connection`, with migrations run at start.
//!
//! Every query is written once and run on either pool by [`with_pool!`];
//! the SQL sticks to what both understand (`$1` parameters,
//! `ON CONFLICT DO NOTHING`).

pub mod services;

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, sqlite::SqlitePoolOptions, PgPool, SqlitePool};

/// Run `$body` with `$pool` bound to whichever pool `$db` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}

/// A database error, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection URL is not one we know.
    #[error("unsupported database connection {0:?}: use sqlite:///path or postgresql://user@host/db")]
    BadUrl(String),
    /// The database could not be reached or answered with an error.
    #[error("database error while {doing}: {source}")]
    Sql {
        /// What we were doing.
        doing: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl DbError {
    /// Wrap a driver error with what we were doing.
    pub fn sql(doing: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let doing = doing.into();
        move |source| DbError::Sql { doing, source }
    }
}

/// A connection pool to either database.
#[derive(Debug, Clone)]
pub enum Database {
    /// SQLite, the embedded default.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// A schema change, written for both databases. SQLite migrations must be
/// idempotent (`IF NOT EXISTS`): concurrent starts may both run them.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// A unique, ordered id, e.g. `0001_services`.
    pub id: &'static str,
    /// The SQLite statements.
    pub sqlite: &'static str,
    /// The PostgreSQL statements.
    pub postgres: &'static str,
}

/// Turn SQLAlchemy-style URLs (`sqlite:////abs/path`, `postgresql+psycopg2://…`)
/// into what the driver expects.
pub fn normalize_url(url: &str) -> Result<(bool, String), DbError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| DbError::BadUrl(mask(url)))?;
    let base = scheme.split('+').next().unwrap_or(scheme).to_ascii_lowercase();
    match base.as_str() {
        "sqlite" => {
            // sqlite:///relative and sqlite:////absolute, as SQLAlchemy spells them.
            let path = rest.strip_prefix('/').unwrap_or(rest);
            Ok((true, path.to_owned()))
        }
        "postgres" | "postgresql" => Ok((false, format!("postgres://{rest}"))),
        _ => Err(DbError::BadUrl(mask(url))),
    }
}

/// SQLite's `SQLITE_BUSY` ("database is locked"), or one of its extended codes.
fn is_locked(e: &sqlx::Error) -> bool {
    let code = match e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    code.is_some_and(|c| c & 0xff == 5)
}

fn mask(url: &str) -> String {
    nova_rpc::transport::TransportUrl::mask(url)
}

/// The schema as a release sees it (see [`Database::schema`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// Every migration applied, by id, in order.
    pub applied: Vec<String>,
    /// What this release needs that is not applied (run `nova-manage db sync`).
    pub missing: Vec<&'static str>,
    /// Applied by a newer release: the schema is ahead of this code, which
    /// runs on it (migrations only add within a release pair).
    pub unknown: Vec<String>,
}

impl Database {
    /// Connect (creating the SQLite file and its directory when needed),
    /// and log where the database is: SQLite's file as an absolute path,
    /// since `sqlite:///x` (three slashes) is the relative path `x`, as in
    /// SQLAlchemy, and `sqlite:////var/lib/nova/nova.sqlite` the absolute one.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let (sqlite, target) = normalize_url(url)?;
        let doing = format!("connecting to {}", mask(url));
        if sqlite {
            let path = std::path::Path::new(&target);
            let db = Self::connect_sqlite(path, &doing).await?;
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            tracing::info!(path = %absolute.display(), "SQLite database");
            Ok(db)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(Duration::from_secs(3))
                .connect(&target)
                .await
                .map_err(DbError::sql(doing))?;
            tracing::info!(url = %mask(url), "PostgreSQL database");
            Ok(Database::Postgres(pool))
        }
    }

    async fn connect_sqlite(path: &std::path::Path, doing: &str) -> Result<Self, DbError> {
        // State is the service's own: directories it creates are 0700,
        // and the database file (its log and shared memory take its
        // mode) is 0600.
        let io = |e| DbError::Sql { doing: doing.to_owned(), source: sqlx::Error::Io(e) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(io)?;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        // Processes starting together on a new file race to switch it
        // to WAL, and SQLite answers that with "database is locked"
        // without waiting: try again for a while.
        let mut attempt = 0;
        loop {
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await;
            match pool {
                Err(e) if is_locked(&e) && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return Ok(Database::Sqlite(other.map_err(DbError::sql(doing.to_owned()))?)),
            }
        }
    }

    /// `sqlite` or `postgresql`.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgresql",
        }
    }

    /// Apply the migrations not applied yet, in order.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<(), DbError> {
        const TABLE: &str =
            "CREATE TABLE IF NOT EXISTS nova_migrations (id VARCHAR(255) PRIMARY KEY, applied_at TIMESTAMP NOT NULL)";
        let now = chrono::Utc::now().naive_utc();
        // The same steps on either database, through `$on` (a pool, or a
        // transaction re-borrowed at each use), with `$sql` the migration's
        // text for that database.
        macro_rules! apply {
            ($on:expr, $sql:ident) => {
                sqlx::raw_sql(TABLE).execute($on).await.map_err(DbError::sql("creating nova_migrations"))?;
                for m in migrations {
                    let done: Option<(String,)> = sqlx::query_as("SELECT id FROM nova_migrations WHERE id = $1")
                        .bind(m.id)
                        .fetch_optional($on)
                        .await
                        .map_err(DbError::sql("reading nova_migrations"))?;
                    if done.is_some() {
                        continue;
                    }
                    sqlx::raw_sql(m.$sql).execute($on).await.map_err(DbError::sql(format!("migration {}", m.id)))?;
                    sqlx::query("INSERT INTO nova_migrations (id, applied_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(m.id)
                        .bind(now)
                        .execute($on)
                        .await
                        .map_err(DbError::sql("recording a migration"))?;
                    tracing::info!(migration = m.id, "applied migration");
                }
            };
        }
        match self {
            Database::Sqlite(pool) => {
                apply!(pool, sqlite);
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(DbError::sql("starting migrations"))?;
                // One migrator at a time across processes.
                sqlx::query("SELECT pg_advisory_xact_lock(7400281)")
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::sql("locking for migrations"))?;
                apply!(&mut *tx, postgres);
                tx.commit().await.map_err(DbError::sql("committing migrations"))?;
            }
        }
        Ok(())
    }

    /// Which of `migrations` the schema has, which it lacks, and which
    /// applied migrations this code does not know (a newer release ran).
    pub async fn schema(&self, migrations: &[Migration]) -> Result<SchemaState, DbError> {
        let query = "SELECT id FROM nova_migrations ORDER BY id";
        let applied: Vec<(String,)> = match with_pool!(self, pool => sqlx::query_as(query).fetch_all(pool).await) {
            Ok(rows) => rows,
            // No table yet: nothing applied.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(DbError::sql("reading nova_migrations")(e)),
        };
        let applied: Vec<String> = applied.into_iter().map(|(id,)| id).collect();
        let missing = migrations.iter().map(|m| m.id).filter(|id| !applied.iter().any(|a| a == id)).collect();
        let unknown = applied.iter().filter(|a| !migrations.iter().any(|m| m.id == a.as_str())).cloned().collect();
        Ok(SchemaState { applied, missing, unknown })
    }

    /// Close the pool.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}
