//! Tasks: one OS process each, supervised, with the last 64 KiB of its
//! output kept, and every task kept in the `compute_tasks` table so a
//! restarted compute remembers what it ran.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
};

use chrono::NaiveDateTime;
use nova_core::db::{Database, DbError, Migration};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::{oneshot, watch},
};

/// How much of stdout and stderr a task keeps.
pub const TAIL_BYTES: usize = 64 * 1024;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Its process runs.
    Running,
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, could not start, or was lost with its compute.
    Failed,
    /// Killed on request.
    Killed,
}

impl TaskStatus {
    fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Killed => "killed",
        }
    }
}

/// Where to cast a finished task's result: `method` on `topic` (optionally one server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// Topic to cast to.
    pub topic: String,
    /// Method to cast; it receives `task`.
    pub method: String,
    /// One server of the topic, if any.
    #[serde(default)]
    pub server: Option<String>,
}

/// Everything known about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The caller's id for it.
    pub task_id: String,
    /// The compute host running it.
    pub host: String,
    /// The allow-listed command name.
    pub name: String,
    /// Extra arguments, passed as argv.
    pub args: Vec<String>,
    /// Where it stands.
    pub status: TaskStatus,
    /// Exit code, once exited normally.
    pub exit_code: Option<i32>,
    /// Start (UTC).
    pub started_at: Option<NaiveDateTime>,
    /// End (UTC).
    pub finished_at: Option<NaiveDateTime>,
    /// Last 64 KiB of stdout.
    pub stdout: String,
    /// Last 64 KiB of stderr.
    pub stderr: String,
    /// Why it failed to start, or was failed.
    pub error: Option<String>,
    /// Where its result is cast.
    pub notify: Option<NotifyTarget>,
    /// Where its result is POSTed.
    pub callback_url: Option<String>,
    /// Why the callback failed, if it did.
    pub callback_error: Option<String>,
}

/// The `compute_tasks` table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "0101_compute_tasks",
    sqlite: "CREATE TABLE IF NOT EXISTS compute_tasks (task_id VARCHAR(255) PRIMARY KEY, host VARCHAR(255) NOT NULL, info TEXT NOT NULL, status VARCHAR(16) NOT NULL, updated_at TIMESTAMP NOT NULL);
CREATE INDEX IF NOT EXISTS compute_tasks_host_idx ON compute_tasks (host, status);",
    postgres: "CREATE TABLE IF NOT EXISTS compute_tasks (task_id VARCHAR(255) PRIMARY KEY, host VARCHAR(255) NOT NULL, info TEXT NOT NULL, status VARCHAR(16) NOT NULL, updated_at TIMESTAMP NOT NULL);
CREATE INDEX IF NOT EXISTS compute_tasks_host_idx ON compute_tasks (host, status);",
}];

/// Persistence of tasks.
#[derive(Debug, Clone)]
pub struct TaskStore {
    db: Database,
}

impl TaskStore {
    /// Over a migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Insert a new task; `false` when the id exists already.
    pub async fn insert(&self, task: &TaskInfo) -> Result<bool, DbError> {
        let info = serde_json::to_string(task).unwrap_or_default();
        let sql = "INSERT INTO compute_tasks (task_id, host, info, status, updated_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
        let now = chrono::Utc::now().naive_utc();
        let done = nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(&task.task_id).bind(&task.host).bind(&info).bind(task.status.as_str()).bind(now).execute(pool).await.map(|r| r.rows_affected()));
        done.map(|n| n > 0).map_err(DbError::sql("recording a task"))
    }

    /// Save a task's new state.
    pub async fn update(&self, task: &TaskInfo) -> Result<(), DbError> {
        let info = serde_json::to_string(task).unwrap_or_default();
        let sql = "UPDATE compute_tasks SET info = $1, status = $2, updated_at = $3 WHERE task_id = $4";
        let now = chrono::Utc::now().naive_utc();
        let done = nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(&info).bind(task.status.as_str()).bind(now).bind(&task.task_id).execute(pool).await.map(|_| ()));
        done.map_err(DbError::sql("saving a task"))
    }

    /// One task by id.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskInfo>, DbError> {
        let sql = "SELECT info FROM compute_tasks WHERE task_id = $1";
        let row: Result<Option<String>, sqlx::Error> = nova_core::with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(task_id).fetch_optional(pool).await {
                Ok(Some(r)) => r.try_get::<String, _>("info").map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        });
        Ok(row.map_err(DbError::sql("reading a task"))?.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Every task of `host`, optionally only those with `status`.
    pub async fn list(&self, host: &str, status: Option<TaskStatus>) -> Result<Vec<TaskInfo>, DbError> {
        let sql = "SELECT info FROM compute_tasks WHERE host = $1 AND ($2 IS NULL OR status = $2) ORDER BY updated_at";
        let rows: Result<Vec<String>, sqlx::Error> = nova_core::with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(host).bind(status.map(TaskStatus::as_str)).fetch_all(pool).await {
                Ok(rows) => rows.iter().map(|r| r.try_get::<String, _>("info")).collect(),
                Err(e) => Err(e),
            }
        });
        Ok(rows.map_err(DbError::sql("listing tasks"))?.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }
}

/// A bounded tail of a stream.
#[derive(Debug, Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// A task whose process runs.
#[derive(Debug)]
pub struct RunningTask {
    /// Its state when it started.
    pub info: TaskInfo,
    stdout: Arc<Mutex<Tail>>,
    stderr: Arc<Mutex<Tail>>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
    /// Becomes `Some(final info)` when the process ends.
    pub done: watch::Receiver<Option<TaskInfo>>,
}

impl RunningTask {
    /// The task with its output so far.
    pub fn snapshot(&self) -> TaskInfo {
        if let Some(done) = self.done.borrow().clone() {
            return done;
        }
        let mut info = self.info.clone();
        info.stdout = self.stdout.lock().unwrap_or_else(|p| p.into_inner()).text();
        info.stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner()).text();
        info
    }

    /// Ask for the process to be killed; `false` if it was asked already.
    pub fn kill(&self) -> bool {
        self.kill.lock().unwrap_or_else(|p| p.into_inner()).take().is_some_and(|k| k.send(()).is_ok())
    }
}

async fn drain(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        into.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
    }
}

/// Start `argv` + `info.args` as a process — argv, never a shell — and
/// supervise it. Returns the running task, or the reason it could not start.
pub fn spawn(mut info: TaskInfo, argv: &[String]) -> Result<Arc<RunningTask>, String> {
    let (program, fixed) = argv.split_first().ok_or_else(|| format!("command {} has an empty argv", info.name))?;
    let mut child = tokio::process::Command::new(program)
        .args(fixed)
        .args(&info.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    info.status = TaskStatus::Running;
    info.started_at = Some(chrono::Utc::now().naive_utc());
    let (stdout, stderr) = (Arc::new(Mutex::new(Tail::default())), Arc::new(Mutex::new(Tail::default())));
    let readers = [
        child.stdout.take().map(|s| tokio::spawn(drain(s, stdout.clone()))),
        child.stderr.take().map(|s| tokio::spawn(drain(s, stderr.clone()))),
    ];
    let (kill_tx, kill_rx) = oneshot::channel();
    let (done_tx, done_rx) = watch::channel(None);
    let task = Arc::new(RunningTask {
        info: info.clone(),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        kill: Mutex::new(Some(kill_tx)),
        done: done_rx,
    });
    tokio::spawn(async move {
        let mut killed = false;
        let status = tokio::select! {
            s = child.wait() => s,
            _ = kill_rx => {
                killed = true;
                let _ = child.start_kill();
                child.wait().await
            }
        };
        for r in readers.into_iter().flatten() {
            let _ = r.await;
        }
        info.finished_at = Some(chrono::Utc::now().naive_utc());
        info.stdout = stdout.lock().unwrap_or_else(|p| p.into_inner()).text();
        info.stderr = stderr.lock().unwrap_or_else(|p| p.into_inner()).text();
        match status {
            Ok(s) => {
                info.exit_code = s.code();
                info.status = if killed {
                    TaskStatus::Killed
                } else if s.success() {
                    TaskStatus::Succeeded
                } else {
                    TaskStatus::Failed
                };
            }
            Err(e) => {
                info.status = TaskStatus::Failed;
                info.error = Some(format!("lost the process: {e}"));
            }
        }
        let _ = done_tx.send(Some(info));
    });
    Ok(task)
}
