//! Tasks: one OS process each, supervised, with the last 64 KiB of its
//! output kept, and every task kept in the `compute_tasks` table so a
//! restarted compute remembers what it ran.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use nova_core::db::{Database, DbError, Migration};

pub use crate::api::compute::{NotifyTarget, TaskInfo, TaskStatus};
use sqlx::Row;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::{oneshot, watch},
};

/// How much of stdout and stderr a task keeps.
pub const TAIL_BYTES: usize = 64 * 1024;

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

    /// A task that was queued or running (on a host that no longer runs
    /// it) becomes `task`; `false` when it had ended meanwhile.
    pub async fn take_over(&self, task: &TaskInfo) -> Result<bool, DbError> {
        let info = serde_json::to_string(task).unwrap_or_default();
        let sql = "UPDATE compute_tasks SET info = $1, host = $2, status = $3, updated_at = $4 WHERE task_id = $5 AND status IN ('queued', 'running')";
        let now = chrono::Utc::now().naive_utc();
        let done = nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(&info).bind(&task.host).bind(task.status.as_str()).bind(now).bind(&task.task_id).execute(pool).await.map(|r| r.rows_affected()));
        done.map(|n| n > 0).map_err(DbError::sql("taking over a task"))
    }

    /// Kill a task no host has taken yet (`task` holds its killed state);
    /// `false` when a host took it meanwhile.
    pub async fn cancel_unclaimed(&self, task: &TaskInfo) -> Result<bool, DbError> {
        let info = serde_json::to_string(task).unwrap_or_default();
        let sql = "UPDATE compute_tasks SET info = $1, status = $2, updated_at = $3 WHERE task_id = $4 AND host = '' AND status = 'queued'";
        let now = chrono::Utc::now().naive_utc();
        let done = nova_core::with_pool!(&self.db, pool => sqlx::query(sql).bind(&info).bind(task.status.as_str()).bind(now).bind(&task.task_id).execute(pool).await.map(|r| r.rows_affected()));
        done.map(|n| n > 0).map_err(DbError::sql("cancelling a task"))
    }

    /// Every task (of `host`, when given), optionally only those with
    /// `status`, oldest change first.
    pub async fn list(&self, host: Option<&str>, status: Option<TaskStatus>) -> Result<Vec<TaskInfo>, DbError> {
        let sql = "SELECT info FROM compute_tasks WHERE ($1 IS NULL OR host = $1) AND ($2 IS NULL OR status = $2) ORDER BY updated_at";
        let rows: Result<Vec<String>, sqlx::Error> = nova_core::with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(host).bind(status.map(TaskStatus::as_str)).fetch_all(pool).await {
                Ok(rows) => rows.iter().map(|r| r.try_get::<String, _>("info")).collect(),
                Err(e) => Err(e),
            }
        });
        Ok(rows.map_err(DbError::sql("listing tasks"))?.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }
}

/// A bounded tail of a stream, and how much the stream carried in all.
#[derive(Debug, Default)]
struct Tail(Vec<u8>, u64);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.1 += bytes.len() as u64;
        self.0.extend_from_slice(bytes);
        if self.0.len() > TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Whether more was written than is kept.
    fn truncated(&self) -> bool {
        self.1 > self.0.len() as u64
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
        fill_output(&mut info, &self.stdout, &self.stderr);
        info
    }

    /// Ask for the process to be killed; `false` if it was asked already.
    pub fn kill(&self) -> bool {
        self.kill.lock().unwrap_or_else(|p| p.into_inner()).take().is_some_and(|k| k.send(()).is_ok())
    }
}

fn fill_output(info: &mut TaskInfo, stdout: &Mutex<Tail>, stderr: &Mutex<Tail>) {
    let out = stdout.lock().unwrap_or_else(|p| p.into_inner());
    (info.stdout, info.stdout_bytes, info.stdout_truncated) = (out.text(), out.1, out.truncated());
    let err = stderr.lock().unwrap_or_else(|p| p.into_inner());
    (info.stderr, info.stderr_bytes, info.stderr_truncated) = (err.text(), err.1, err.truncated());
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

/// How tasks run: the environment they start with, the user they run as,
/// the resource limits they run under, how long they may take, and how
/// long a stopped task gets between SIGTERM and SIGKILL.
#[derive(Debug, Clone)]
pub struct TaskLimits {
    /// The whole environment of a task (nothing of the service's own is inherited).
    pub env: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL to the task's process group.
    pub kill_grace: Duration,
    /// Longest run; `None`: no limit.
    pub timeout: Option<Duration>,
    /// Run as this user (uid, gid) with no supplementary groups
    /// (`[compute] task_user`); `None`: as the service's own user.
    pub user: Option<(u32, u32)>,
    /// Resource limits, as `prlimit` names them (`cpu`, `as`, `fsize`,
    /// `nofile`, `nproc`, …) with their values (`[compute] task_rlimits`).
    pub rlimits: Vec<(String, u64)>,
    /// Where each task gets a cgroup of its own (`[compute] task_cgroups`);
    /// `None`: process groups and the subreaper only.
    pub cgroups: Option<Arc<super::cgroup::TaskCgroups>>,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            env: Self::env_from("PATH"),
            kill_grace: Duration::from_secs(10),
            timeout: None,
            user: None,
            rlimits: Vec::new(),
            cgroups: None,
        }
    }
}

/// The resource limits `[compute] task_rlimits` may set (`prlimit`'s names).
pub const RLIMITS: &[&str] = &["as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "rss", "stack"];

/// Why `[compute] task_user` or `[compute] task_rlimits` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskLimitsError {
    /// The user does not exist, or cannot be looked up.
    #[error("[compute] task_user: {user}: {why}")]
    User {
        /// The name or uid given.
        user: String,
        /// Why it cannot be used.
        why: String,
    },
    /// An entry of `task_rlimits` is wrong.
    #[error("[compute] task_rlimits: {entry:?}: {why}")]
    Rlimit {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
}

impl TaskLimits {
    /// `[compute] task_user`: a user name or uid, resolved now.
    pub fn user_from(spec: &str) -> Result<Option<(u32, u32)>, TaskLimitsError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(None);
        }
        let user = match spec.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(spec),
        };
        match user {
            Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
            Ok(None) => Err(TaskLimitsError::User { user: spec.to_owned(), why: "no such user".into() }),
            Err(e) => Err(TaskLimitsError::User { user: spec.to_owned(), why: e.to_string() }),
        }
    }

    /// `[compute] task_rlimits`: `name=value` pairs, comma separated.
    pub fn rlimits_from(spec: &str) -> Result<Vec<(String, u64)>, TaskLimitsError> {
        spec.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let bad = |why: String| TaskLimitsError::Rlimit { entry: e.to_owned(), why };
                let (name, value) = e.split_once('=').ok_or_else(|| bad("not name=value".into()))?;
                let name = name.trim().to_ascii_lowercase();
                if !RLIMITS.contains(&name.as_str()) {
                    return Err(bad(format!("{name} is not one of {}", RLIMITS.join(", "))));
                }
                let value = value.trim().parse::<u64>().map_err(|_| bad(format!("{value:?} is not a number")))?;
                Ok((name, value))
            })
            .collect()
    }

    /// `[compute] task_env`: comma-separated names taken from the service's
    /// environment, or `NAME=value` pairs.
    pub fn env_from(spec: &str) -> Vec<(String, String)> {
        spec.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(|e| match e.split_once('=') {
                Some((name, value)) => Some((name.trim().to_owned(), value.trim().to_owned())),
                None => std::env::var(e).ok().map(|v| (e.to_owned(), v)),
            })
            .collect()
    }
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(19)?.parse().ok()
}

/// Signal every process of group `pgid`; `false` when none is left.
fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal).is_ok()
}

/// Kill what is left of a crashed compute's task: its process group, if its
/// leader is still the process that was started (a pid is not reused while
/// its group has members, so a missing leader with a live group is ours).
pub fn kill_orphan(group: (i32, u64)) -> bool {
    let (pgid, started) = group;
    if start_time(pgid).is_some_and(|now| now != started) {
        return false;
    }
    signal_group(pgid, nix::sys::signal::Signal::SIGKILL)
}

/// SIGTERM the group and give it `grace` to finish `exited`, then SIGKILL
/// whatever is left. `true` when `exited` finished within the grace.
async fn stop_group(pgid: i32, grace: Duration, exited: impl std::future::Future) -> bool {
    use nix::sys::signal::Signal;
    if !signal_group(pgid, Signal::SIGTERM) {
        return false;
    }
    if tokio::time::timeout(grace, exited).await.is_ok() {
        return true;
    }
    signal_group(pgid, Signal::SIGKILL);
    false
}

/// How a task's process ended.
enum End {
    Exited,
    Killed,
    TimedOut,
}

/// The variable every task (and so everything it starts) carries: its id,
/// by which compute knows a task's processes that escaped its group.
pub const TASK_MARK: &str = "NOVA_TASK_ID";

/// Make this process the subreaper of everything it starts, so a task's
/// process that leaves its group (`setsid`) and outlives its parent is
/// handed to compute rather than to init ([`kill_adopted`] then ends it).
/// Linux only; elsewhere, or when refused, a warning says what is lost.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper: a task's process that leaves its group may outlive it");
    }
}

/// The first process of every task this process runs, whichever manager
/// started it: its own children that are not orphans it adopted.
static LEADERS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn leaders() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<i32>> {
    LEADERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kill and reap the processes this process adopted from tasks: its
/// children that carry [`TASK_MARK`] but are no task's first process (of
/// any manager in this process). How many it killed.
pub fn kill_adopted() -> usize {
    // Held throughout, so no task starts between the scan and the kill.
    let running = leaders();
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut killed = 0;
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if running.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent's pid is the second field after the command, which is in parentheses.
        let parent = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1));
        if parent != Some(me.as_str()) {
            continue;
        }
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var.starts_with(TASK_MARK.as_bytes())));
        if !marked {
            continue;
        }
        let target = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
            // Reap this one only: tokio waits for the children it started itself.
            let _ = nix::sys::wait::waitpid(target, None);
            killed += 1;
        }
    }
    killed
}

/// util-linux's `setpriv`, through which tasks start where it is installed.
const SETPRIV: &str = "/usr/bin/setpriv";
/// util-linux's `prlimit`, through which tasks start under resource limits,
/// as oslo.concurrency's `prlimit` option runs them.
const PRLIMIT: &str = "/usr/bin/prlimit";

/// The program and arguments that start `line` under `limits`: through
/// `setpriv` (the parent-death signal, and the task's user) and `prlimit`
/// (its resource limits) where they are needed and installed.
fn wrapped(line: &[String], limits: &TaskLimits) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    // The task dies with its compute (a SIGKILLed compute leaves no task
    // running that nobody watches, and whose work another host redoes).
    if Path::new(SETPRIV).exists() {
        out.extend([SETPRIV, "--pdeathsig", "KILL"].map(String::from));
        if let Some((uid, gid)) = limits.user {
            out.extend([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()]);
        }
        out.push("--".into());
    } else if limits.user.is_some() {
        return Err(format!("[compute] task_user needs {SETPRIV} (util-linux)"));
    }
    if !limits.rlimits.is_empty() {
        if !Path::new(PRLIMIT).exists() {
            return Err(format!("[compute] task_rlimits needs {PRLIMIT} (util-linux)"));
        }
        out.push(PRLIMIT.into());
        out.extend(limits.rlimits.iter().map(|(name, value)| format!("--{name}={value}")));
        out.push("--".into());
    }
    out.extend(line.iter().cloned());
    Ok(out)
}

/// Start `line` (the command's argv and the caller's arguments, checked
/// against the command's rule) as a process — argv, never a shell — in a
/// process group of its own with only `limits.env` for environment, as
/// `limits.user` under `limits.rlimits`, and supervise it. Returns the
/// running task, or the reason it could not start.
pub fn spawn(mut info: TaskInfo, line: &[String], limits: &TaskLimits) -> Result<Arc<RunningTask>, SpawnError> {
    let (mut child, pgid, cgroup) = start(&info, line, limits)?;
    info.process_group = start_time(pgid).map(|t| (pgid, t));
    // The record shows what ran, with its secrets masked.
    info.argv = nova_rpc::mask::mask_arg_strings(line);
    info.status = TaskStatus::Running;
    info.started_at = Some(chrono::Utc::now().naive_utc());
    let (stdout, stderr) = (Arc::new(Mutex::new(Tail::default())), Arc::new(Mutex::new(Tail::default())));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(tokio::spawn(drain(s, stdout.clone())));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(tokio::spawn(drain(s, stderr.clone())));
    }
    let (kill_tx, kill_rx) = oneshot::channel();
    let (done_tx, done_rx) = watch::channel(None);
    let task = Arc::new(RunningTask {
        info: info.clone(),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        kill: Mutex::new(Some(kill_tx)),
        done: done_rx,
    });
    let process = Process { child, pgid, cgroup, readers, kill: kill_rx };
    let (grace, timeout) = (limits.kill_grace, limits.timeout);
    tokio::spawn(async move {
        let (status, end) = process.supervise(grace, timeout, (&stdout, &stderr), &mut info).await;
        match (status, end) {
            (Ok(s), end) => {
                info.exit_code = s.code();
                info.status = match end {
                    End::Killed => TaskStatus::Killed,
                    End::TimedOut => {
                        info.error = Some(format!("timed out after {:?} (task_timeout)", timeout.unwrap_or_default()));
                        TaskStatus::Failed
                    }
                    End::Exited if s.success() => TaskStatus::Succeeded,
                    End::Exited => TaskStatus::Failed,
                };
            }
            (Err(e), _) => {
                info.status = TaskStatus::Failed;
                info.error = Some(format!("lost the process: {e}"));
            }
        }
        let _ = done_tx.send(Some(info));
    });
    Ok(task)
}

/// Why a task's process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The allow-list gives the command no program.
    #[error("command {0} has an empty argv")]
    EmptyArgv(String),
    /// The program is not there.
    #[error("cannot start {0}: no such file")]
    NoSuchProgram(String),
    /// The limits cannot be applied (`task_user`, `task_rlimits`).
    #[error("{0}")]
    Limits(String),
    /// The task's cgroup cannot be made.
    #[error("cannot make the task's cgroup: {0}")]
    Cgroup(std::io::Error),
    /// The operating system refused to start it.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It was gone before it could be watched.
    #[error("the task exited at once")]
    ExitedAtOnce,
}

/// Start the task's process in a group of its own (and a cgroup, when
/// tasks get one): the child, its process group, its cgroup.
fn start(
    info: &TaskInfo,
    line: &[String],
    limits: &TaskLimits,
) -> Result<(tokio::process::Child, i32, Option<std::path::PathBuf>), SpawnError> {
    let program = line.first().ok_or_else(|| SpawnError::EmptyArgv(info.name.clone()))?;
    if program.contains('/') && !Path::new(program).is_file() {
        return Err(SpawnError::NoSuchProgram(program.clone()));
    }
    let mut full = wrapped(line, limits).map_err(SpawnError::Limits)?;
    let cgroup = match &limits.cgroups {
        Some(cgroups) => {
            let dir = cgroups.create(&info.task_id).map_err(SpawnError::Cgroup)?;
            full = super::cgroup::TaskCgroups::wrap(&dir, full);
            Some(dir)
        }
        None => None,
    };
    // Registered before anyone can look for adopted processes.
    let mut registry = leaders();
    let child = tokio::process::Command::new(&full[0])
        .args(&full[1..])
        .env_clear()
        .envs(limits.env.iter().map(|(k, v)| (k, v)))
        .env(TASK_MARK, &info.task_id)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError::Start { program: program.clone(), source })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).ok_or(SpawnError::ExitedAtOnce)?;
    registry.insert(pgid);
    Ok((child, pgid, cgroup))
}

/// A started task's process and what reads its output.
struct Process {
    child: tokio::process::Child,
    pgid: i32,
    cgroup: Option<std::path::PathBuf>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    kill: oneshot::Receiver<()>,
}

impl Process {
    /// Wait for the task to end (or be killed, or time out), end its
    /// group and cgroup, and record its output in `info`.
    async fn supervise(
        mut self,
        grace: Duration,
        timeout: Option<Duration>,
        (stdout, stderr): (&Arc<Mutex<Tail>>, &Arc<Mutex<Tail>>),
        info: &mut TaskInfo,
    ) -> (std::io::Result<std::process::ExitStatus>, End) {
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            _ = self.child.wait() => End::Exited,
            _ = &mut self.kill => End::Killed,
            () = deadline => End::TimedOut,
        };
        let pgid = self.pgid;
        if !matches!(end, End::Exited) {
            stop_group(pgid, grace, self.child.wait()).await;
        }
        let status = self.child.wait().await;
        leaders().remove(&pgid);
        // The leader is gone; whatever it left in its group (a background
        // child holding stdout, say) is stopped, so the task ends.
        let readers = &mut self.readers;
        let outputs = async {
            for r in readers.iter_mut() {
                let _ = r.await;
            }
        };
        tokio::pin!(outputs);
        if tokio::time::timeout(Duration::from_millis(200), &mut outputs).await.is_err()
            && !stop_group(pgid, grace, &mut outputs).await
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut outputs).await;
        }
        // Whatever the task started is ended with it, wherever it went.
        if let Some(dir) = &self.cgroup {
            super::cgroup::TaskCgroups::end(dir, pgid).await;
        }
        // Only a process that left the group can still hold the pipes.
        for r in &self.readers {
            r.abort();
        }
        info.finished_at = Some(chrono::Utc::now().naive_utc());
        fill_output(info, stdout, stderr);
        (status, end)
    }
}
