//! The compute service (`nova-compute`, one per host, addressed as
//! `compute.<host>`): runs tasks as supervised OS processes.
//!
//! Only commands named in `[compute] allowed_commands` (name → argv) can
//! run, and a task's arguments are appended to that argv — never passed
//! through a shell. At most `max_tasks` run at once; free capacity is cast
//! to every scheduler (fanout) every `capacity_report_interval` seconds.
//! A finished task is cast to its `notify` target and POSTed to its
//! `callback_url`. Tasks live in the database, so a restarted compute still
//! answers for them, and marks the ones that were running as failed.

pub mod tasks;

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_core::{
    config::OptSpec,
    db::{Database, DbError},
    rpc_api, BoxError, Manager, ManagerDeps, ManagerEntry, ManagerHandle, ServiceInfo,
};
use nova_rpc::{RequestContext, RpcClient, RpcError, Target};
use serde::Serialize;
use tokio::sync::Mutex;

pub use self::tasks::TaskLimits;
pub use self::tasks::{NotifyTarget, TaskInfo, TaskStatus};
use self::tasks::{RunningTask, TaskStore};
use crate::outbound::HttpClient;
use crate::scheduler::SchedulerManagerClient;

/// The registry name of this manager.
pub const NAME: &str = "nova_services::compute::ComputeManager";

/// `[compute]` options.
pub const OPTIONS: &[OptSpec] = &[
    OptSpec {
        section: "compute",
        name: "allowed_commands",
        default: "echo = /bin/echo, sleep = /bin/sleep, true = /bin/true, false = /bin/false",
        help: "Commands tasks may run, as name = argv (one per line or comma separated); task args are appended, never through a shell.",
    },
    OptSpec { section: "compute", name: "max_tasks", default: "4", help: "Tasks this host runs at once." },
    OptSpec {
        section: "compute",
        name: "capacity_report_interval",
        default: "10",
        help: "Seconds between capacity reports to the schedulers.",
    },
    OptSpec {
        section: "compute",
        name: "callback_attempts",
        default: "3",
        help: "Tries of a task's callback_url POST (again only after a connection error or a 5xx).",
    },
    OptSpec {
        section: "compute",
        name: "callback_allowed_hosts",
        default: "",
        help: "Hosts a callback_url may name although they are (or resolve to) loopback, private or link-local addresses.",
    },
    OptSpec {
        section: "compute",
        name: "callback_ca_file",
        default: "",
        help: "A CA bundle (PEM) trusted for https:// callbacks beside the system's roots.",
    },
    OptSpec {
        section: "compute",
        name: "task_env",
        default: "PATH",
        help: "A task's whole environment: names passed on from the service's, or NAME=value pairs, comma separated. Nothing else is inherited.",
    },
    OptSpec {
        section: "compute",
        name: "task_kill_grace",
        default: "10",
        help: "Seconds between SIGTERM and SIGKILL when a task's process group is stopped.",
    },
    OptSpec { section: "compute", name: "task_timeout", default: "0", help: "Seconds a task may run before its process group is stopped (0: no limit)." },
];

/// What a compute refuses, as remote errors.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The command is not in the allow-list.
    #[error("command {0:?} is not in [compute] allowed_commands")]
    CommandNotAllowed(String),
    /// No such task.
    #[error("task {0} not found")]
    TaskNotFound(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<ComputeError> for RpcError {
    fn from(e: ComputeError) -> Self {
        let class = match &e {
            ComputeError::CommandNotAllowed(_) => "CommandNotAllowed",
            ComputeError::TaskNotFound(_) => "TaskNotFound",
            ComputeError::Db(_) => "DatabaseError",
        };
        RpcError::remote(class, "nova_services.compute", e.to_string())
    }
}

/// What `run_task` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunOutcome {
    /// Whether a process was started.
    pub started: bool,
    /// Why not, when it was not.
    pub reason: Option<String>,
}

/// Runs tasks on this host; see the module docs.
pub struct ComputeManager {
    host: String,
    allowed: HashMap<String, Vec<String>>,
    max_tasks: usize,
    capacity_report_interval: f64,
    callback_attempts: u32,
    callbacks: HttpClient,
    limits: TaskLimits,
    store: TaskStore,
    running: Mutex<HashMap<String, Arc<RunningTask>>>,
    schedulers: SchedulerManagerClient,
    rpc: RpcClient,
}

impl std::fmt::Debug for ComputeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeManager").field("host", &self.host).field("max_tasks", &self.max_tasks).finish()
    }
}

/// The registry entry: `nova_services::compute::ComputeManager`, default for `compute`.
pub fn entry() -> ManagerEntry {
    ManagerEntry::new(NAME, |deps: ManagerDeps| async move {
        let m = ComputeManager::from_deps(&deps)?;
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(m)))
    })
    .options(OPTIONS)
    .migrations(tasks::MIGRATIONS)
    .default_for("compute")
}

impl ComputeManager {
    /// Build from the service's configuration, database and transport.
    pub fn from_deps(deps: &ManagerDeps) -> Result<Self, BoxError> {
        let c = &deps.config;
        let allowed = c.get_dict("compute", "allowed_commands")?.unwrap_or_default();
        let mut commands = HashMap::new();
        for (name, argv) in allowed {
            let argv: Vec<String> = argv.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(format!("[compute] allowed_commands: {name} has an empty command").into());
            }
            commands.insert(name, argv);
        }
        let seconds = |name: &str| -> Result<Duration, BoxError> {
            let s: f64 = c.require("compute", name)?;
            Ok(Duration::from_secs_f64(s.clamp(0.0, 1e7)))
        };
        let allowed_hosts: Vec<String> = c
            .get::<String>("compute", "callback_allowed_hosts")?
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        let callback_ca =
            c.get::<String>("compute", "callback_ca_file")?.filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
        let limits = TaskLimits {
            env: TaskLimits::env_from(&c.get::<String>("compute", "task_env")?.unwrap_or_default()),
            kill_grace: seconds("task_kill_grace")?,
            timeout: Some(seconds("task_timeout")?).filter(|t| !t.is_zero()),
        };
        Ok(Self::new(
            &deps.service.host,
            commands,
            c.require("compute", "max_tasks")?,
            c.require("compute", "capacity_report_interval")?,
            c.require("compute", "callback_attempts")?,
            deps.db.clone(),
            RpcClient::new(deps.transport.clone(), Target::new("scheduler")),
        )
        .with_task_limits(limits)
        .with_callbacks(HttpClient::guarded(&allowed_hosts, callback_ca.as_deref())?))
    }

    /// A manager for `host` with an explicit allow-list.
    pub fn new(
        host: &str,
        allowed: HashMap<String, Vec<String>>,
        max_tasks: usize,
        capacity_report_interval: f64,
        callback_attempts: u32,
        db: Database,
        rpc: RpcClient,
    ) -> Self {
        Self {
            host: host.to_owned(),
            allowed,
            max_tasks: max_tasks.max(1),
            capacity_report_interval,
            callback_attempts,
            callbacks: HttpClient::guarded(&[], None).unwrap_or_else(|_| HttpClient::open()),
            limits: TaskLimits::default(),
            store: TaskStore::new(db),
            running: Mutex::default(),
            schedulers: SchedulerManagerClient::new(rpc.with_target(Target::new("scheduler"))).with_fanout(),
            rpc,
        }
    }

    /// POST callbacks with `client` (its guard and trusted CAs).
    pub fn with_callbacks(mut self, client: HttpClient) -> Self {
        self.callbacks = client;
        self
    }

    /// Run tasks with `limits` (environment, timeout, kill grace).
    pub fn with_task_limits(mut self, limits: TaskLimits) -> Self {
        self.limits = limits;
        self
    }

    async fn finish(self: Arc<Self>, task: Arc<RunningTask>) {
        let mut done = task.done.clone();
        let finished = done.wait_for(Option::is_some).await.ok().and_then(|g| g.clone());
        let Some(mut info) = finished else { return };
        tracing::info!(task_id = %info.task_id, status = ?info.status, exit_code = ?info.exit_code, "task finished");
        // Saved before it leaves the running set: a reader never finds it in
        // neither place, nor finds the store's stale "running" record.
        if let Err(e) = self.store.update(&info).await {
            tracing::error!(error = %e, task_id = %info.task_id, "cannot save the finished task");
        }
        self.running.lock().await.remove(&info.task_id);
        let _ = self.report_capacity(RequestContext::new()).await;
        if let Some(n) = &info.notify {
            let mut target = Target::new(&n.topic);
            if let Some(s) = &n.server {
                target = target.with_server(s);
            }
            let client = self.rpc.with_target(target);
            if let Err(e) = client.cast(&RequestContext::new(), &n.method, serde_json::json!({ "task": &info })).await {
                tracing::warn!(error = %e, task_id = %info.task_id, "cannot notify the task's owner");
            }
        }
        if let Some(url) = info.callback_url.clone() {
            let body = serde_json::to_vec(&info).unwrap_or_default();
            let posted = self.callbacks.post_json(&url, body, self.callback_attempts, Duration::from_millis(500)).await;
            if let Err(e) = posted {
                tracing::warn!(task_id = %info.task_id, error = %e, "the task's callback failed");
                info.callback_error = Some(e);
                if let Err(e) = self.store.update(&info).await {
                    tracing::error!(error = %e, "cannot record the callback failure");
                }
            }
        }
    }
}

#[rpc_api(version = "1.0")]
impl ComputeManager {
    /// Start task `task_id`: the allow-listed command `name` with `args` appended.
    /// A task id that exists already is not run again.
    #[rpc(cast)]
    pub async fn run_task(
        self: &Arc<Self>,
        _ctx: RequestContext,
        name: String,
        #[rpc(default)] args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<RunOutcome, ComputeError> {
        let argv = self.allowed.get(&name).ok_or_else(|| ComputeError::CommandNotAllowed(name.clone()))?;
        let mut info = TaskInfo {
            task_id: task_id.clone(),
            host: self.host.clone(),
            name,
            args,
            status: TaskStatus::Running,
            exit_code: None,
            started_at: None,
            finished_at: None,
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            notify,
            callback_url,
            callback_error: None,
            process_group: None,
        };
        let mut running = self.running.lock().await;
        if running.len() >= self.max_tasks {
            info.status = TaskStatus::Failed;
            info.error = Some(format!("host {} is at capacity ({} tasks)", self.host, self.max_tasks));
        }
        if !self.store.insert(&info).await? {
            tracing::info!(%task_id, "task exists already; not running it again");
            return Ok(RunOutcome { started: false, reason: Some(format!("task {task_id} exists already")) });
        }
        if info.status == TaskStatus::Failed {
            return Ok(RunOutcome { started: false, reason: info.error });
        }
        match tasks::spawn(info.clone(), argv, &self.limits) {
            Ok(task) => {
                self.store.update(&task.info).await?;
                running.insert(task_id.clone(), task.clone());
                drop(running);
                tracing::info!(%task_id, "task started");
                tokio::spawn(self.clone().finish(task));
                Ok(RunOutcome { started: true, reason: None })
            }
            Err(e) => {
                info.status = TaskStatus::Failed;
                info.error = Some(e.clone());
                self.store.update(&info).await?;
                Ok(RunOutcome { started: false, reason: Some(e) })
            }
        }
    }

    /// The task, with the last 64 KiB of its stdout and stderr.
    pub async fn get_task(&self, _ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        if let Some(t) = self.running.lock().await.get(&task_id) {
            return Ok(t.snapshot());
        }
        self.store.get(&task_id).await?.ok_or(ComputeError::TaskNotFound(task_id))
    }

    /// Wait (up to `timeout` seconds, default 30) until the task ends; returns it.
    pub async fn wait_task(
        &self,
        _ctx: RequestContext,
        task_id: String,
        timeout: Option<f64>,
    ) -> Result<TaskInfo, ComputeError> {
        let running = self.running.lock().await.get(&task_id).cloned();
        if let Some(t) = running {
            let mut done = t.done.clone();
            let wait = Duration::from_secs_f64(timeout.unwrap_or(30.0).clamp(0.0, 3600.0));
            let _ = tokio::time::timeout(wait, done.wait_for(Option::is_some)).await;
            return Ok(t.snapshot());
        }
        self.store.get(&task_id).await?.ok_or(ComputeError::TaskNotFound(task_id))
    }

    /// Kill a running task; returns it.
    pub async fn kill_task(&self, _ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        let running = self.running.lock().await.get(&task_id).cloned();
        match running {
            Some(t) => {
                t.kill();
                let mut done = t.done.clone();
                let grace = self.limits.kill_grace + Duration::from_secs(2);
                let _ = tokio::time::timeout(grace, done.wait_for(Option::is_some)).await;
                Ok(t.snapshot())
            }
            None => self.store.get(&task_id).await?.ok_or(ComputeError::TaskNotFound(task_id)),
        }
    }

    /// Every task this host ran or runs.
    pub async fn list_tasks(&self, _ctx: RequestContext) -> Result<Vec<TaskInfo>, ComputeError> {
        let mut all = self.store.list(&self.host, None).await?;
        let running = self.running.lock().await;
        for t in &mut all {
            if let Some(r) = running.get(&t.task_id) {
                *t = r.snapshot();
            }
        }
        Ok(all)
    }

    /// Cast this host's free capacity and commands to every scheduler.
    #[rpc(cast)]
    pub async fn report_capacity(&self, ctx: RequestContext) -> Result<(), RpcError> {
        let running = self.running.lock().await.len();
        let mut commands: Vec<String> = self.allowed.keys().cloned().collect();
        commands.sort();
        let free = self.max_tasks.saturating_sub(running);
        self.schedulers.update_host_state(&ctx, self.host.clone(), free, self.max_tasks, commands).await
    }

    #[periodic_task(spacing = self.capacity_report_interval, run_immediately = true)]
    async fn _report_capacity_periodically(&self, ctx: RequestContext) -> Result<(), RpcError> {
        self.report_capacity(ctx).await
    }
}

#[async_trait::async_trait]
impl Manager for ComputeManager {
    /// Tasks that were running when this host's previous process died are
    /// failed now, and what is left of their process groups is killed.
    async fn init_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        for mut t in self.store.list(&self.host, Some(TaskStatus::Running)).await? {
            if t.process_group.is_some_and(tasks::kill_orphan) {
                tracing::warn!(task_id = %t.task_id, "killed the processes a crashed compute left running");
            }
            t.status = TaskStatus::Failed;
            t.error = Some("the compute service stopped while the task ran".into());
            t.finished_at = Some(chrono::Utc::now().naive_utc());
            self.store.update(&t).await?;
            tracing::warn!(task_id = %t.task_id, "marked a task lost with the previous process as failed");
        }
        Ok(())
    }

    /// Tell the schedulers about this host right away, not at the first periodic report.
    async fn post_start_hook(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        if let Err(e) = self.report_capacity(RequestContext::new()).await {
            tracing::warn!(error = %e, "first capacity report failed; the periodic report will retry");
        }
        Ok(())
    }

    /// Kill what still runs: a task's life is bounded by its compute's.
    async fn cleanup_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        let running: Vec<_> = self.running.lock().await.values().cloned().collect();
        for t in running {
            t.kill();
            let mut done = t.done.clone();
            let grace = self.limits.kill_grace + Duration::from_secs(2);
            let _ = tokio::time::timeout(grace, done.wait_for(Option::is_some)).await;
            let finished = t.done.borrow().clone();
            if let Some(info) = finished {
                self.store.update(&info).await?;
            }
        }
        Ok(())
    }
}
