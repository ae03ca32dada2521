//! The compute API (`compute`, version 1.1): tasks run as OS processes on
//! a compute host. `ComputeManager` implements it; `ComputeClient` calls it.

use std::sync::Arc;

use chrono::NaiveDateTime;
use nova_core::{db::DbError, rpc_api};
use nova_rpc::{RequestContext, RpcError};
use serde::{Deserialize, Serialize};

/// The compute API; see the [module docs](self).
///
/// 1.1 added `submit_task`.
#[rpc_api(version = "1.1", client = "ComputeClient", releases = "placement=1.0, work-queues=1.1")]
pub trait ComputeApi {
    /// Run task `task_id` on this host (Nova-style placement, cast to
    /// `compute.<host>`): the allow-listed command `name` (or `name@version`)
    /// with `args` appended. It waits here, `queued`, while every slot is
    /// busy. A task id that exists already is not run again. The typed
    /// client casts it; a caller that calls it gets what happened.
    #[rpc(cast, callable)]
    async fn run_task(
        self: &Arc<Self>,
        ctx: RequestContext,
        name: String,
        #[rpc(default)] args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<RunOutcome, ComputeError>;

    /// Run task `task_id` and answer when it ends (the work queue: cast to
    /// `compute_work`, this is taken by whichever host has a
    /// free slot, and the slot is held until the task ends). A task id that
    /// exists already is not run again: its record is returned. New in 1.1
    /// (the work queue); the other methods date from 1.0, and a client
    /// sends each at its own version, so a 1.0 host still serves them.
    #[rpc(cast, callable, since = "1.1")]
    async fn submit_task(
        self: &Arc<Self>,
        ctx: RequestContext,
        name: String,
        #[rpc(default)] args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<TaskInfo, ComputeError>;

    /// The task, with the last 64 KiB of its stdout and stderr.
    async fn get_task(&self, ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError>;

    /// Wait (up to `timeout` seconds, default 30, and no longer than the
    /// caller waits for the answer) until the task ends; returns it. A wait
    /// holds none of the host's request slots.
    async fn wait_task(
        &self,
        ctx: RequestContext,
        task_id: String,
        timeout: Option<f64>,
    ) -> Result<TaskInfo, ComputeError>;

    /// Kill a running task, or cancel a queued one; returns it.
    async fn kill_task(&self, ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError>;

    /// Every task this host ran or runs.
    async fn list_tasks(&self, ctx: RequestContext) -> Result<Vec<TaskInfo>, ComputeError>;

    /// Cast this host's free capacity and commands to every scheduler.
    #[rpc(cast)]
    async fn report_capacity(&self, ctx: RequestContext) -> Result<(), RpcError>;
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Accepted, waiting for a free slot.
    Queued,
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
    /// The status's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Killed => "killed",
        }
    }

    /// Whether the task has ended (it never runs again under its id).
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queued" => Ok(TaskStatus::Queued),
            "running" => Ok(TaskStatus::Running),
            "succeeded" => Ok(TaskStatus::Succeeded),
            "failed" => Ok(TaskStatus::Failed),
            "killed" => Ok(TaskStatus::Killed),
            other => Err(format!("unknown task status {other:?} (queued, running, succeeded, failed, killed)")),
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
    /// The compute host running it (empty while it waits in the work queue).
    pub host: String,
    /// The allow-listed command name (`name@version` once resolved to a version).
    pub name: String,
    /// Extra arguments, passed as argv.
    pub args: Vec<String>,
    /// The whole argv it started with (the allow-list's entry then, plus `args`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Where it stands.
    pub status: TaskStatus,
    /// Exit code, once exited normally.
    pub exit_code: Option<i32>,
    /// When it was accepted (UTC).
    #[serde(default)]
    pub submitted_at: Option<NaiveDateTime>,
    /// Start (UTC).
    pub started_at: Option<NaiveDateTime>,
    /// End (UTC).
    pub finished_at: Option<NaiveDateTime>,
    /// Last 64 KiB of stdout.
    pub stdout: String,
    /// Last 64 KiB of stderr.
    pub stderr: String,
    /// Bytes written to stdout in all (`stdout` holds the last of them).
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Bytes written to stderr in all.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Whether stdout wrote more than the 64 KiB kept (`stdout` is its end).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    /// Whether stderr wrote more than the 64 KiB kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
    /// Why it failed to start, or was failed.
    pub error: Option<String>,
    /// Where its result is cast.
    pub notify: Option<NotifyTarget>,
    /// Where its result is POSTed.
    pub callback_url: Option<String>,
    /// Why the callback failed, if it did.
    pub callback_error: Option<String>,
    /// The task's process group (its leader's pid) and the leader's start
    /// time in clock ticks since boot, so a restarted compute can find and
    /// kill what a crashed one left behind, and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_group: Option<(i32, u64)>,
    /// The project that submitted it (the caller's, from its context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The user that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// The role that sees and kills every project's tasks, as Nova's admins see
/// every project's servers.
pub const ADMIN_ROLE: &str = "admin";

impl TaskInfo {
    /// The same task, owned by the project and user of `ctx`.
    pub fn owned_by(mut self, ctx: &RequestContext) -> Self {
        self.project_id = ctx.project_id.clone();
        self.user_id = ctx.user_id.clone();
        self
    }

    /// Whether `ctx` may see and kill this task: an admin, or a caller of
    /// the project that submitted it (a caller with no project, such as a
    /// service of the deployment, sees the tasks no project owns).
    ///
    /// ```
    /// use nova_rpc::RequestContext;
    /// use nova_services::api::compute::TaskInfo;
    /// let p1 = RequestContext::new().with_user("ada", "p1");
    /// let task = TaskInfo::queued("t".into(), "h".into(), "echo".into(), vec![], None, None).owned_by(&p1);
    /// assert!(task.visible_to(&p1));
    /// assert!(!task.visible_to(&RequestContext::new().with_user("bob", "p2")));
    /// assert!(task.visible_to(&RequestContext::new().with_user("root", "p2").with_roles(["admin"])));
    /// ```
    pub fn visible_to(&self, ctx: &RequestContext) -> bool {
        ctx.has_role(ADMIN_ROLE) || self.project_id == ctx.project_id
    }

    /// A task accepted now, not started: `queued` on `host` (empty while no
    /// host has it).
    pub fn queued(
        task_id: String,
        host: String,
        name: String,
        args: Vec<String>,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Self {
        Self {
            task_id,
            host,
            name,
            args,
            argv: Vec::new(),
            status: TaskStatus::Queued,
            exit_code: None,
            submitted_at: Some(chrono::Utc::now().naive_utc()),
            started_at: None,
            finished_at: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            error: None,
            notify,
            callback_url,
            callback_error: None,
            process_group: None,
            project_id: None,
            user_id: None,
        }
    }
}

/// What a compute refuses, as remote errors: each variant is the class a
/// caller sees (Python's `RemoteError.exc_type`), and what the typed
/// client gives back.
#[derive(Debug, thiserror::Error, nova_core::RemoteError)]
#[remote(module = "nova_services.compute")]
pub enum ComputeError {
    /// The command is not in the allow-list.
    #[error("command {0:?} is not in [compute] allowed_commands")]
    CommandNotAllowed(String),
    /// No such task.
    #[error("task {0} not found")]
    TaskNotFound(String),
    /// A task id that cannot be used.
    #[error("task_id {0:?} must be 1 to 255 characters of letters, digits, '-', '_' or '.'")]
    BadTaskId(String),
    /// The arguments break the command's rule (`[compute] command_args`).
    #[error("{0}")]
    ArgumentsNotAllowed(String),
    /// Too many `wait_task`s wait on this host already.
    #[error("{0} waits are waiting on this host already; try again later")]
    TooManyWaiters(usize),
    /// The database failed.
    #[error(transparent)]
    #[remote(class = "DatabaseError", opaque)]
    Db(#[from] DbError),
    /// What the transport said, or a class this API does not declare.
    #[error(transparent)]
    #[remote(other)]
    Rpc(RpcError),
}

/// What `run_task` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunOutcome {
    /// Whether a process was started.
    pub started: bool,
    /// Why not, when it was not.
    pub reason: Option<String>,
}
