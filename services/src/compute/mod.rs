//! The compute service (`nova-compute`, one per host, addressed as
//! `compute.<host>`): runs tasks as supervised OS processes.
//!
//! Only commands named in `[compute] allowed_commands` (name → argv, see
//! [`commands`]) can run, and a task's arguments are appended to that argv
//! — never passed through a shell. At most `max_tasks` run at once; free
//! capacity is cast to every scheduler (fanout) every
//! `capacity_report_interval` seconds.
//!
//! Two ways in:
//!
//! * `submit_task`, cast to the `compute_work` queue (`[compute]
//!   work_queue`), is a work queue (the pull model): a host takes a message
//!   only when it has a free slot, so
//!   the backlog stays in the broker, where any free host (or one an
//!   autoscaler adds) takes the next task, and where its depth can be read.
//!   With `task_delivery = at_least_once` the message is acknowledged when
//!   the task ends, so a host that dies mid-task gives it back.
//! * `run_task`, cast to `compute.<host>` (Nova-style placement by the
//!   scheduler): it waits on the host for a free slot, shown as `queued`.
//!
//! At capacity a task never fails; it waits. Everything else sent to
//! `compute` (a `ping`, `list_tasks`) is served at once, however busy the
//! slots are.
//! A finished task is cast to its `notify` target and POSTed to its
//! `callback_url`. Tasks live in the database, so a restarted compute still
//! answers for them, and marks the ones that were running as failed.

pub mod cgroup;
pub mod commands;
pub mod tasks;

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_core::notifications::{Notifications, VersionedPayload};
use nova_core::{
    config::OptSpec, db::Database, rpc_api, upgrade::ServiceVersions, BoxError, Manager, ManagerDeps, ManagerEntry,
    ManagerHandle, ServiceInfo, WorkQueue,
};
use nova_rpc::{notify::Priority, RequestContext, RpcClient, RpcError, Target};
use tokio::sync::{oneshot, Mutex, OwnedSemaphorePermit, Semaphore};

use self::commands::Commands;

pub use self::tasks::TaskLimits;
use self::tasks::{RunningTask, TaskStore};
pub use crate::api::compute::{
    ComputeApi, ComputeClient, ComputeError, NotifyTarget, RunOutcome, TaskInfo, TaskStatus,
};
use crate::api::scheduler::SchedulerClient;
use crate::outbound::HttpClient;

/// Where submitted tasks wait unless `[compute] work_queue` says otherwise.
pub const WORK_QUEUE: &str = "compute_work";

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
    OptSpec { section: "compute", name: "max_tasks", default: "4", help: "Tasks this host runs at once (also how many submitted tasks it takes from the work queue at once)." },
    OptSpec {
        section: "compute",
        name: "work_queue",
        default: "compute_work",
        help: "The queue submitted tasks wait in, served by every compute host with a free slot (the topic's own queue serves everything else at once).",
    },
    OptSpec {
        section: "compute",
        name: "task_delivery",
        default: "at_most_once",
        help: "Submitted tasks (the work queue, compute_work): at_most_once acknowledges a task when it starts; at_least_once when it ends, so a host that dies mid-task gives it back to the queue (which becomes a quorum queue: every compute must agree).",
    },
    OptSpec {
        section: "compute",
        name: "task_max_deliveries",
        default: "3",
        help: "at_least_once: deliveries of a submitted task before it is dead-lettered to compute.dead.",
    },
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
        name: "callback_proxy",
        default: "",
        help: "Send callbacks through this HTTP proxy (http://host:port), trusted to refuse internal destinations itself; proxy variables of the environment are never used.",
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
    OptSpec {
        section: "compute",
        name: "command_args",
        default: "",
        help: "What callers may append to each command, 'name: rule' entries separated by ';': any (the default), none, or regex PATTERN (each argument matches whole); a leading -- puts -- before the arguments.",
    },
    OptSpec {
        section: "compute",
        name: "task_cgroups",
        default: "auto",
        help: "auto: run each task in a cgroup of its own where cgroup v2 lets this process (ending a task then ends every process it started); off: process groups and the subreaper only.",
    },
    OptSpec {
        section: "compute",
        name: "task_user",
        default: "",
        help: "Run tasks as this user (name or uid), with its group and no other (needs util-linux's setpriv); empty: the service's own user.",
    },
    OptSpec {
        section: "compute",
        name: "task_rlimits",
        default: "",
        help: "Resource limits of every task, name=value comma separated, as prlimit names them: cpu (s), as, fsize, data, stack, rss, memlock (bytes), nofile, nproc, core.",
    },
];

/// `[compute] allowed_commands` with `[compute] command_args`.
fn allow_list(c: &nova_core::config::Config) -> Result<Commands, String> {
    let entries = c.get_dict("compute", "allowed_commands").map_err(|e| e.to_string())?.unwrap_or_default();
    let rules = c.get::<String>("compute", "command_args").map_err(|e| e.to_string())?.unwrap_or_default();
    Commands::parse(entries).map_err(|e| e.to_string())?.with_arg_rules(&rules).map_err(|e| e.to_string())
}

/// `[compute] task_*`: what every task runs under.
fn task_limits(c: &nova_core::config::Config) -> Result<TaskLimits, BoxError> {
    let seconds = |name: &str| -> Result<Duration, BoxError> {
        let s: f64 = c.require("compute", name)?;
        Ok(Duration::from_secs_f64(s.clamp(0.0, 1e7)))
    };
    let text = |name: &str| -> Result<String, BoxError> { Ok(c.get::<String>("compute", name)?.unwrap_or_default()) };
    Ok(TaskLimits {
        env: TaskLimits::env_from(&text("task_env")?),
        kill_grace: seconds("task_kill_grace")?,
        timeout: Some(seconds("task_timeout")?).filter(|t| !t.is_zero()),
        user: TaskLimits::user_from(&text("task_user")?)?,
        rlimits: TaskLimits::rlimits_from(&text("task_rlimits")?)?,
        cgroups: match text("task_cgroups")?.as_str() {
            "off" => None,
            "auto" | "" => cgroup::TaskCgroups::detect().map(Arc::new),
            other => return Err(format!("[compute] task_cgroups: {other:?} is not auto or off").into()),
        },
    })
}

/// `[compute] callback_*`: the client callbacks are posted with.
fn callbacks(c: &nova_core::config::Config) -> Result<HttpClient, BoxError> {
    let allowed_hosts: Vec<String> = c
        .get::<String>("compute", "callback_allowed_hosts")?
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    let callback_ca =
        c.get::<String>("compute", "callback_ca_file")?.filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let callback_proxy = c.get::<String>("compute", "callback_proxy")?.filter(|p| !p.is_empty());
    Ok(HttpClient::guarded_via(&allowed_hosts, callback_ca.as_deref(), callback_proxy.as_deref())?)
}

/// `wait_task`s one host lets wait at once. A wait holds no request slot
/// (see `wait_task`), so this, not `executor_thread_pool_size`, bounds them.
pub const MAX_WAITERS: usize = 1024;

/// Runs tasks on this host; see the module docs.
pub struct ComputeManager {
    host: String,
    allowed: std::sync::RwLock<Arc<Commands>>,
    max_tasks: usize,
    /// Free task slots: taken by a submitted task before its message leaves
    /// the broker, and by a placed task before it starts.
    slots: Arc<Semaphore>,
    at_least_once: Option<u32>,
    /// Woken whenever a task starts, is queued or refused here.
    started: tokio::sync::Notify,
    /// Tasks whose `run_task` or `submit_task` has arrived and is being
    /// recorded: a `wait_task` right behind the cast waits for them rather
    /// than answering "not found".
    arriving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Placed tasks waiting for a slot, with the switch that cancels them.
    queued: Mutex<HashMap<String, oneshot::Sender<Killed>>>,
    capacity_report_interval: f64,
    callback_attempts: u32,
    callbacks: HttpClient,
    limits: TaskLimits,
    store: TaskStore,
    running: Mutex<HashMap<String, Arc<RunningTask>>>,
    /// `wait_task`s waiting without a request slot; past [`MAX_WAITERS`]
    /// a wait is refused rather than starve the host's other requests.
    waiters: Arc<Semaphore>,
    schedulers: SchedulerClient,
    rpc: RpcClient,
    /// `task.run.start`, `.end` and `.error`.
    notifier: Notifications,
    /// Where submitted tasks wait (`[compute] work_queue`).
    work_queue: String,
}

/// The payload of `task.run.start`, `task.run.end` and `task.run.error`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskRunPayload {
    /// The caller's id for it.
    pub task_id: String,
    /// The allow-listed command.
    pub name: String,
    /// The compute host running it.
    pub host: String,
    /// Where it stands: running, succeeded, failed, killed.
    pub status: TaskStatus,
    /// Its exit code, once it exited normally.
    pub exit_code: Option<i32>,
    /// Accepted (UTC, ISO 8601).
    pub submitted_at: Option<String>,
    /// Started.
    pub started_at: Option<String>,
    /// Ended.
    pub finished_at: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl VersionedPayload for TaskRunPayload {
    const NAME: &'static str = "TaskRunPayload";
    const VERSION: &'static str = "1.0";
    const NAMESPACE: &'static str = "nova-rs";
}

impl TaskRunPayload {
    fn of(info: &TaskInfo) -> Self {
        let time = |t: Option<chrono::NaiveDateTime>| t.map(|t| t.and_utc().to_rfc3339());
        Self {
            task_id: info.task_id.clone(),
            name: info.name.clone(),
            host: info.host.clone(),
            status: info.status,
            exit_code: info.exit_code,
            submitted_at: time(info.submitted_at),
            started_at: time(info.started_at),
            finished_at: time(info.finished_at),
            error: info.error.clone(),
        }
    }
}

impl std::fmt::Debug for ComputeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeManager").field("host", &self.host).field("max_tasks", &self.max_tasks).finish()
    }
}

/// The registry entry: `nova_services::compute::ComputeManager`, default for `compute`.
pub fn entry() -> ManagerEntry {
    ManagerEntry::new(NAME, |deps: ManagerDeps| async move {
        let m = Arc::new(ComputeManager::from_deps(&deps)?);
        let work = m.work_queue();
        Ok::<_, BoxError>(ManagerHandle::new(m).with_work_queue(work))
    })
    .options(OPTIONS)
    .migrations(tasks::MIGRATIONS)
    .default_for("compute")
    .service_versions(VERSIONS)
}

/// The pin of a compute client, `[upgrade_levels] compute` (see
/// [`nova_core::upgrade`]): worked out at start and on SIGHUP by whoever
/// owns it (the scheduler, the gateway), read by every call.
#[derive(Debug, Clone, Default)]
pub struct ComputePin(Arc<std::sync::RwLock<Option<nova_rpc::Version>>>);

impl ComputePin {
    /// Work the pin out again from `config` and the service records.
    pub async fn refresh(
        &self,
        config: &nova_core::config::Config,
        records: &nova_core::db::services::ServiceRecords,
        down_after: Duration,
    ) -> Result<Option<nova_rpc::Version>, nova_core::upgrade::UpgradeError> {
        let pin = nova_core::upgrade::pin(config, "compute", &VERSIONS, records, down_after).await?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = pin;
        Ok(pin)
    }

    /// `client`, under the pin in force.
    pub fn apply(&self, client: ComputeClient) -> ComputeClient {
        match *self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Some(v) => client.with_version_cap(v),
            None => client,
        }
    }
}

/// `nova-compute`'s service versions: 2 serves the compute API 1.1 (the
/// work queue's `submit_task`); 1 and older records (0) serve 1.0.
pub const VERSIONS: ServiceVersions = ServiceVersions {
    current: 2,
    history: &[(0, "1.0"), (1, "1.0"), (2, "1.1")],
    releases: crate::api::compute::ComputeClient::RELEASES,
};

impl ComputeManager {
    /// Build from the service's configuration, database and transport.
    pub fn from_deps(deps: &ManagerDeps) -> Result<Self, BoxError> {
        let c = &deps.config;
        let commands = allow_list(c)?;
        let at_least_once = match c.require::<String>("compute", "task_delivery")?.as_str() {
            "at_most_once" => None,
            "at_least_once" => Some(c.require::<u32>("compute", "task_max_deliveries")?),
            other => {
                return Err(
                    format!("[compute] task_delivery: {other:?} is neither at_most_once nor at_least_once").into()
                )
            }
        };
        let limits = task_limits(c)?;
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
        .with_at_least_once(at_least_once)
        .with_callbacks(callbacks(c)?)
        .with_notifications(deps.notifier.clone())
        .with_work_queue(nova_core::manager::work_queue_name(c, "compute")))
    }

    /// Submitted tasks acknowledged when they end, and dead-lettered after
    /// `max_deliveries` (`None`: acknowledged when they start).
    pub fn with_at_least_once(mut self, max_deliveries: Option<u32>) -> Self {
        self.at_least_once = max_deliveries;
        self
    }

    /// The work queue a service serves `submit_task` from, on this host's slots.
    pub fn work_queue(&self) -> WorkQueue {
        WorkQueue {
            queue: self.work_queue.clone(),
            slots: self.slots.clone(),
            methods: vec!["submit_task".into()],
            max_deliveries: self.at_least_once,
        }
    }

    /// The task as it stands (live while it runs), if it exists and `ctx`
    /// may see it: another project's task is answered as not found, as
    /// Nova answers for another project's server.
    async fn find(&self, ctx: &RequestContext, task_id: &str) -> Result<Option<TaskInfo>, ComputeError> {
        Ok(self.lookup(task_id).await?.filter(|t| t.visible_to(ctx)))
    }

    /// The task as it stands, whoever owns it.
    async fn lookup(&self, task_id: &str) -> Result<Option<TaskInfo>, ComputeError> {
        let running = self.running.lock().await.get(task_id).map(|t| t.snapshot());
        match running {
            Some(t) => Ok(Some(t)),
            None => Ok(self.store.get(task_id).await?),
        }
    }

    /// `wait_task`s waiting now.
    pub fn waiting(&self) -> usize {
        MAX_WAITERS - self.waiters.available_permits()
    }

    /// Replace the allow-list (SIGHUP): running tasks keep their argv.
    pub fn set_commands(&self, commands: Commands) {
        *self.allowed.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(commands);
    }

    fn commands(&self) -> Arc<Commands> {
        self.allowed.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A manager for `host` with an explicit allow-list.
    pub fn new(
        host: &str,
        allowed: impl Into<Commands>,
        max_tasks: usize,
        capacity_report_interval: f64,
        callback_attempts: u32,
        db: Database,
        rpc: RpcClient,
    ) -> Self {
        let max_tasks = max_tasks.max(1);
        Self {
            host: host.to_owned(),
            allowed: std::sync::RwLock::new(Arc::new(allowed.into())),
            max_tasks,
            slots: Arc::new(Semaphore::new(max_tasks)),
            at_least_once: None,
            started: tokio::sync::Notify::new(),
            arriving: std::sync::Mutex::default(),
            queued: Mutex::default(),
            capacity_report_interval,
            callback_attempts,
            callbacks: HttpClient::guarded(&[], None).unwrap_or_else(|_| HttpClient::open()),
            limits: TaskLimits::default(),
            store: TaskStore::new(db),
            running: Mutex::default(),
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
            schedulers: SchedulerClient::new(rpc.with_target(Target::new("scheduler"))).with_fanout(),
            rpc,
            notifier: Notifications::disabled(),
            work_queue: WORK_QUEUE.into(),
        }
    }

    /// Serve submitted tasks from `queue` (default [`WORK_QUEUE`]).
    pub fn with_work_queue(mut self, queue: impl Into<String>) -> Self {
        self.work_queue = queue.into();
        self
    }

    /// Announce tasks starting and ending through `notifier`.
    pub fn with_notifications(mut self, notifier: Notifications) -> Self {
        self.notifier = notifier;
        self
    }

    /// `task.run.start` for a task that started; `.end` (INFO) or
    /// `.error` (ERROR) for one that ended, by how.
    fn announce(&self, info: &TaskInfo) {
        let (priority, event) = match info.status {
            TaskStatus::Queued => return,
            TaskStatus::Running => (Priority::Info, "task.run.start"),
            TaskStatus::Succeeded | TaskStatus::Killed => (Priority::Info, "task.run.end"),
            TaskStatus::Failed => (Priority::Error, "task.run.error"),
        };
        self.notifier.emit(&RequestContext::new(), priority, event, &TaskRunPayload::of(info));
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

    /// Start `info`'s process (its slot already taken): the allow-list is
    /// read now, so a task runs the argv of the list it starts under.
    async fn start(&self, mut info: TaskInfo) -> Result<Result<Arc<RunningTask>, TaskInfo>, ComputeError> {
        let commands = self.commands();
        let (resolved, line) = match commands.command_line(&info.name, &info.args) {
            Ok(found) => found,
            Err(refused) => {
                info.status = TaskStatus::Failed;
                info.error = Some(ComputeError::from(refused).to_string());
                info.finished_at = Some(chrono::Utc::now().naive_utc());
                self.store.update(&info).await?;
                self.started.notify_waiters();
                self.announce(&info);
                return Ok(Err(info));
            }
        };
        info.name = resolved;
        let mut running = self.running.lock().await;
        match tasks::spawn(info.clone(), &line, &self.limits) {
            Ok(task) => {
                self.store.update(&task.info).await?;
                running.insert(info.task_id.clone(), task.clone());
                drop(running);
                self.started.notify_waiters();
                tracing::info!(task_id = %info.task_id, name = %info.name, "task started");
                self.announce(&task.snapshot());
                Ok(Ok(task))
            }
            Err(e) => {
                info.status = TaskStatus::Failed;
                info.error = Some(e.to_string());
                info.finished_at = Some(chrono::Utc::now().naive_utc());
                self.store.update(&info).await?;
                self.started.notify_waiters();
                self.announce(&info);
                Ok(Err(info))
            }
        }
    }

    /// Record a task arriving here: `Ok(true)` to run it, `Ok(false)` when
    /// it exists already and must not run again. A task recorded as queued
    /// or running elsewhere is taken over only when its host no longer runs
    /// it (the host died and the broker gave the task back, or the gateway
    /// recorded it queued before any host took it).
    async fn claim(&self, info: &TaskInfo, queued_here: bool) -> Result<bool, ComputeError> {
        if self.store.insert(info).await? {
            return Ok(true);
        }
        let Some(existing) = self.store.get(&info.task_id).await? else { return Ok(false) };
        if existing.status.is_final() {
            return Ok(false);
        }
        if existing.host == self.host {
            if queued_here || self.running.lock().await.contains_key(&info.task_id) {
                return Ok(false);
            }
        } else if !existing.host.is_empty() && self.runs_elsewhere(&existing).await {
            return Ok(false);
        }
        if !self.store.take_over(info).await? {
            return Ok(false);
        }
        tracing::warn!(task_id = %info.task_id, previous_host = %existing.host, "taking over a task its host no longer runs");
        Ok(true)
    }

    /// Whether `task`'s host still answers for it as queued or running.
    async fn runs_elsewhere(&self, task: &TaskInfo) -> bool {
        let peer = ComputeClient::new(
            self.rpc.with_target(Target::new("compute").with_server(&task.host)).with_timeout(Duration::from_secs(3)),
        );
        match peer.get_task(&RequestContext::new(), task.task_id.clone()).await {
            Ok(t) => !t.status.is_final(),
            Err(ComputeError::Rpc(RpcError::Timeout { .. })) => false,
            Err(e) => {
                tracing::info!(task_id = %task.task_id, host = %task.host, error = %e, "cannot ask a task's host about it; taking it over");
                false
            }
        }
    }

    async fn finish(self: Arc<Self>, task: Arc<RunningTask>) -> TaskInfo {
        let mut done = task.done.clone();
        let finished = done.wait_for(Option::is_some).await.ok().and_then(|g| g.clone());
        let mut info = finished.unwrap_or_else(|| task.snapshot());
        tracing::info!(task_id = %info.task_id, status = ?info.status, exit_code = ?info.exit_code, "task finished");
        // Saved before it leaves the running set: a reader never finds it in
        // neither place, nor finds the store's stale "running" record.
        if let Err(e) = self.store.update(&info).await {
            tracing::error!(error = %e, task_id = %info.task_id, "cannot save the finished task");
        }
        self.running.lock().await.remove(&info.task_id);
        self.announce(&info);
        self.kill_adopted().await;
        self.deliver_result(&mut info).await;
        info
    }

    /// Kill what tasks left behind outside their groups, now handed to
    /// this process (see [`tasks::become_subreaper`]).
    async fn kill_adopted(&self) {
        let killed = tokio::task::spawn_blocking(tasks::kill_adopted).await.unwrap_or(0);
        if killed > 0 {
            tracing::warn!(killed, "killed processes a task left behind outside its group");
        }
    }

    /// Cast the finished task to its `notify` target and POST it to its `callback_url`.
    async fn deliver_result(&self, info: &mut TaskInfo) {
        // A signed topic trusts its callers' keys: compute does not lend
        // its key to whoever submitted a task.
        let signed = |topic: &str| self.rpc.transport().options().signing.as_ref().is_some_and(|s| s.applies_to(topic));
        if let Some(n) = info.notify.as_ref().filter(|n| signed(&n.topic)) {
            tracing::warn!(task_id = %info.task_id, topic = %n.topic, "not notifying a signed topic on a submitter's behalf");
        } else if let Some(n) = &info.notify {
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
                let e = nova_rpc::mask::mask_password(&e.to_string());
                tracing::warn!(task_id = %info.task_id, error = %e, "the task's callback failed");
                info.callback_error = Some(e);
                if let Err(e) = self.store.update(info).await {
                    tracing::error!(error = %e, "cannot record the callback failure");
                }
            }
        }
    }

    /// Run a placed task once a slot is free (or until it is killed while
    /// queued: then the killer is answered with the task as saved).
    async fn run_when_free(self: Arc<Self>, mut info: TaskInfo, cancel: oneshot::Receiver<Killed>) {
        let slot = tokio::select! {
            s = self.slots.clone().acquire_owned() => s.map_err(|_| None),
            k = cancel => Err(k.ok()),
        };
        self.queued.lock().await.remove(&info.task_id);
        let slot = match slot {
            Ok(slot) => slot,
            Err(killer) => {
                info.status = TaskStatus::Killed;
                info.finished_at = Some(chrono::Utc::now().naive_utc());
                if let Err(e) = self.store.update(&info).await {
                    tracing::error!(error = %e, task_id = %info.task_id, "cannot save a task killed while queued");
                }
                self.started.notify_waiters();
                if let Some(k) = killer {
                    let _ = k.send(info);
                }
                return;
            }
        };
        self.run_holding(info, Some(slot)).await;
    }

    /// Start a task whose slot is `slot` (`None`: the work queue holds it
    /// for the request), and see it to its end.
    async fn run_holding(self: Arc<Self>, info: TaskInfo, slot: Option<OwnedSemaphorePermit>) -> TaskInfo {
        let outcome = match self.start(info.clone()).await {
            Ok(Ok(task)) => {
                self.report_soon();
                self.clone().finish(task).await
            }
            Ok(Err(mut failed)) => {
                self.deliver_result(&mut failed).await;
                failed
            }
            Err(e) => {
                tracing::error!(error = %e, task_id = %info.task_id, "cannot record the task");
                info
            }
        };
        // A work-queue request (no slot of its own here) frees its slot
        // as soon as it returns, just after this report: count it free.
        let releasing = usize::from(slot.is_none());
        drop(slot);
        let _ = self.send_capacity(&RequestContext::new(), releasing).await;
        outcome
    }
}

/// Answers a `kill_task` of a queued task with the task as saved.
type Killed = oneshot::Sender<TaskInfo>;

/// A task id in [`ComputeManager::arriving`] while its request is recorded;
/// waiters look again when it leaves.
struct Arriving<'a> {
    manager: &'a ComputeManager,
    task_id: String,
}

impl<'a> Arriving<'a> {
    fn new(manager: &'a ComputeManager, task_id: &str) -> Self {
        manager.arriving.lock().unwrap_or_else(|p| p.into_inner()).insert(task_id.to_owned());
        Self { manager, task_id: task_id.to_owned() }
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.manager.arriving.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.task_id);
        self.manager.started.notify_waiters();
    }
}

fn check_task_id(task_id: &str) -> Result<(), ComputeError> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 255
        && task_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ComputeError::BadTaskId(task_id.to_owned()))
    }
}

/// How long a `wait_task` waits: no longer than asked (30 s when not
/// said), and short of when its caller stops waiting, so that it hears
/// "still running" rather than a timeout.
fn wait_for(timeout: Option<f64>) -> Duration {
    let asked = Duration::from_secs_f64(timeout.unwrap_or(30.0).clamp(0.0, 3600.0));
    match nova_rpc::server::deadline() {
        Some(caller) => {
            let left = caller.saturating_duration_since(std::time::Instant::now());
            asked.min(left - (left / 10).min(Duration::from_secs(1)))
        }
        None => asked,
    }
}

impl ComputeManager {
    /// A task refused before it ran. Refused arguments are recorded, so a
    /// caller that cast it (the scheduler places tasks by cast) reads why;
    /// a command not allowed is only answered.
    async fn refuse(&self, mut info: TaskInfo, refused: commands::CommandRefused) -> ComputeError {
        if !matches!(refused, commands::CommandRefused::Arguments { .. }) {
            return refused.into();
        }
        let refused = ComputeError::from(refused);
        info.status = TaskStatus::Failed;
        info.error = Some(refused.to_string());
        info.finished_at = Some(chrono::Utc::now().naive_utc());
        if let Err(e) = self.store.insert(&info).await {
            return e.into();
        }
        self.started.notify_waiters();
        refused
    }

    /// Tell every scheduler this host's free slots, `releasing` more than
    /// are free this instant (slots about to be given back), in `ctx` (a
    /// report asked for by a fanout answers in the asker's request).
    async fn send_capacity(&self, ctx: &RequestContext, releasing: usize) -> Result<(), RpcError> {
        let free = (self.slots.available_permits() + releasing).min(self.max_tasks);
        let commands = self.commands().names();
        self.schedulers.update_host_state(ctx, self.host.clone(), free, self.max_tasks, commands).await
    }

    /// Report this host's capacity now, in the background: a slot was
    /// just taken (the schedulers, and the autoscaler through them, see
    /// the work in flight without waiting for the periodic report).
    fn report_soon(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.report_capacity(RequestContext::new()).await;
        });
    }

    /// Start `info` in the free `slot`, which it holds until it ends.
    async fn run_in(self: &Arc<Self>, slot: OwnedSemaphorePermit, info: TaskInfo) -> Result<RunOutcome, ComputeError> {
        Ok(match self.start(info).await? {
            Ok(task) => {
                self.report_soon();
                let me = self.clone();
                tokio::spawn(async move {
                    me.clone().finish(task).await;
                    drop(slot);
                    let _ = me.report_capacity(RequestContext::new()).await;
                });
                RunOutcome { started: true, reason: None }
            }
            Err(failed) => RunOutcome { started: false, reason: failed.error },
        })
    }
}

impl ComputeApi for ComputeManager {
    async fn run_task(
        self: &Arc<Self>,
        ctx: RequestContext,
        name: String,
        args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<RunOutcome, ComputeError> {
        let _arriving = Arriving::new(self, &task_id);
        check_task_id(&task_id)?;
        let checked = self.commands().command_line(&name, &args);
        let info =
            TaskInfo::queued(task_id.clone(), self.host.clone(), name, args, notify, callback_url).owned_by(&ctx);
        if let Err(refused) = checked {
            return Err(self.refuse(info, refused).await);
        }
        // Held until the task is either started or registered as queued, so
        // a kill never finds it in neither place.
        let mut queued = self.queued.lock().await;
        if !self.claim(&info, queued.contains_key(&task_id)).await? {
            tracing::info!(%task_id, "task exists already; not running it again");
            return Ok(RunOutcome { started: false, reason: Some(format!("task {task_id} exists already")) });
        }
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            drop(queued);
            return self.run_in(slot, info).await;
        }
        let (cancel, cancelled) = oneshot::channel();
        queued.insert(task_id.clone(), cancel);
        drop(queued);
        tracing::info!(%task_id, "every slot is busy; the task waits for one");
        tokio::spawn(self.clone().run_when_free(info, cancelled));
        Ok(RunOutcome {
            started: false,
            reason: Some(format!("queued: host {} runs {} tasks", self.host, self.max_tasks)),
        })
    }

    async fn submit_task(
        self: &Arc<Self>,
        ctx: RequestContext,
        name: String,
        args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<TaskInfo, ComputeError> {
        let arriving = Arriving::new(self, &task_id);
        check_task_id(&task_id)?;
        let info =
            TaskInfo::queued(task_id.clone(), self.host.clone(), name, args, notify, callback_url).owned_by(&ctx);
        let queued_here = self.queued.lock().await.contains_key(&task_id);
        let claimed = self.claim(&info, queued_here).await?;
        drop(arriving);
        if !claimed {
            tracing::info!(%task_id, "task exists already; not running it again");
            return self.store.get(&task_id).await?.ok_or(ComputeError::TaskNotFound(task_id));
        }
        // The work queue's slot is this request's; the task runs under it.
        Ok(self.clone().run_holding(info, None).await)
    }

    async fn get_task(&self, ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        self.find(&ctx, &task_id).await?.ok_or(ComputeError::TaskNotFound(task_id))
    }

    async fn wait_task(
        &self,
        ctx: RequestContext,
        task_id: String,
        timeout: Option<f64>,
    ) -> Result<TaskInfo, ComputeError> {
        // Another project's task is as good as absent.
        if self.lookup(&task_id).await?.is_some_and(|t| !t.visible_to(&ctx)) {
            return Err(ComputeError::TaskNotFound(task_id));
        }
        // A wait gives its request slot back: waits must never keep pings,
        // kills and placed tasks out. They are bounded by their own count.
        let _waiter =
            self.waiters.clone().try_acquire_owned().map_err(|_| ComputeError::TooManyWaiters(MAX_WAITERS))?;
        nova_rpc::server::release_slot();
        let wait = wait_for(timeout);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a start in between is not missed.
            let started = self.started.notified();
            let running = self.running.lock().await.get(&task_id).cloned();
            if let Some(t) = running {
                let mut done = t.done.clone();
                let _ = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await;
                return Ok(t.snapshot());
            }
            let arriving = self.arriving.lock().unwrap_or_else(|p| p.into_inner()).contains(&task_id);
            let task = match self.store.get(&task_id).await? {
                Some(t) => t,
                None if arriving => {
                    if tokio::time::timeout_at(deadline, started).await.is_err() {
                        return Err(ComputeError::TaskNotFound(task_id));
                    }
                    continue;
                }
                None => return Err(ComputeError::TaskNotFound(task_id)),
            };
            // Queued here: wait for it to start (or be killed).
            if task.status.is_final() || task.host != self.host {
                return Ok(task);
            }
            if tokio::time::timeout_at(deadline, started).await.is_err() {
                return Ok(self.store.get(&task_id).await?.unwrap_or(task));
            }
        }
    }

    async fn kill_task(&self, ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        if self.find(&ctx, &task_id).await?.is_none() {
            return Err(ComputeError::TaskNotFound(task_id));
        }
        let queued = self.queued.lock().await.remove(&task_id);
        if let Some(cancel) = queued {
            let (killed, saved) = oneshot::channel();
            if cancel.send(killed).is_ok() {
                if let Ok(t) = saved.await {
                    return Ok(t);
                }
            }
        }
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

    async fn list_tasks(&self, ctx: RequestContext) -> Result<Vec<TaskInfo>, ComputeError> {
        let mut all = self.store.list(Some(&self.host), None).await?;
        all.retain(|t| t.visible_to(&ctx));
        let running = self.running.lock().await;
        for t in &mut all {
            if let Some(r) = running.get(&t.task_id) {
                *t = r.snapshot();
            }
        }
        Ok(all)
    }

    async fn report_capacity(&self, ctx: RequestContext) -> Result<(), RpcError> {
        self.send_capacity(&ctx, 0).await
    }
}

#[rpc_api(serves = ComputeApi)]
impl ComputeManager {
    #[periodic_task(spacing = self.capacity_report_interval, run_immediately = true)]
    async fn _report_capacity_periodically(&self, ctx: RequestContext) -> Result<(), RpcError> {
        // Orphans whose parent lived on after their task ended are found here.
        self.kill_adopted().await;
        self.report_capacity(ctx).await
    }
}

#[async_trait::async_trait]
impl Manager for ComputeManager {
    /// Tasks that were running when this host's previous process died are
    /// failed now, and what is left of their process groups is killed.
    async fn init_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        // What a task's processes leave behind comes back here, to be killed.
        tasks::become_subreaper();
        let mut lost = self.store.list(Some(&self.host), Some(TaskStatus::Running)).await?;
        lost.extend(self.store.list(Some(&self.host), Some(TaskStatus::Queued)).await?);
        for mut t in lost {
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

    /// SIGHUP: the new `[compute] allowed_commands` apply to tasks that
    /// start from now on; running tasks keep the argv they started with.
    async fn reload(&self, config: &nova_core::config::Config) {
        let parsed = allow_list(config);
        match parsed {
            Ok(commands) => {
                tracing::info!(commands = ?commands.names(), "allowed_commands reloaded");
                self.set_commands(commands);
            }
            Err(e) => tracing::error!(error = %e, "cannot reload allowed_commands; keeping the old list"),
        }
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
