//! The autoscaler (`nova-autoscale`, and inside `nova-all` when
//! `[autoscale] topics` is set): keeps `ceil((backlog + in_flight) /
//! target_per_worker)` workers per topic, clamped to `[min_workers,
//! max_workers]`.
//!
//! The backlog is the messages ready in the topic's work queue
//! (`compute_work`, `[<topic>] work_queue`; see
//! [`nova_rpc::transport::Transport::queue_stats`]); the work in flight is
//! the workers' busy slots, from the capacity each reports to the
//! schedulers (at every task's start and end, and periodically). Counting
//! both, a drained queue whose workers are all busy still wants them all:
//! a steady load holds steady. Scaling up starts every worker wanted at
//! once, then waits until they all serve (each reports to the schedulers)
//! or `scale_up_cooldown` has passed, before judging the backlog again;
//! starting `min_workers` is no scale-up, so the first backlog is answered
//! at the next look. Scaling in is
//! stabilised as Kubernetes' HPA does it: down only to the highest number
//! wanted over the last `scale_down_window`, so a dip lets nobody go that
//! the load brings back. A worker being stopped no longer counts.
//! `min_workers = 0` scales to zero when idle.
//!
//! Scaling in is graceful: a worker is sent SIGTERM (or the operator's
//! `down` command), stops consuming, finishes what it holds within its
//! `graceful_shutdown_timeout`, and exits; with `task_delivery =
//! at_least_once` what it cannot finish goes back to the queue. The newest
//! worker goes first.
//!
//! Launchers: `process` spawns `nova-compute --host <prefix>-<topic>-<n>`
//! beside this program, with its configuration files; `command` runs the
//! operator's `command up HOST` / `command down HOST` (a VM, a container,
//! a Kubernetes job…). Every decision is logged and counted in
//! `nova_autoscale_decisions_total{topic, action}`, and the worker count is
//! the gauge `nova_autoscale_workers{topic}`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use nova_core::config::{CommonArgs, Config, ConfigError, OptSpec};
use nova_rpc::transport::Transport;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokio::sync::{watch, Mutex};

/// `[autoscale]` options.
pub const AUTOSCALE_OPTIONS: &[OptSpec] = &[
    opts::TOPICS.spec,
    opts::MIN_WORKERS.spec,
    opts::MAX_WORKERS.spec,
    opts::TARGET_PER_WORKER.spec,
    opts::SCALE_UP_COOLDOWN.spec,
    opts::SCALE_DOWN_WINDOW.spec,
    opts::INTERVAL.spec,
    opts::LAUNCHER.spec,
    opts::COMMAND.spec,
    opts::WORKER_PREFIX.spec,
];

/// `[autoscale]`, each option declared once.
pub mod opts {
    use std::time::Duration;

    use nova_core::config::{parse, Invalid, Opt};

    /// `[autoscale] topics`.
    pub const TOPICS: Opt<Vec<String>> = Opt::new(
        "autoscale",
        "topics",
        "",
        "Topics whose work queue (<topic>_work, or [<topic>] work_queue) is scaled on (comma separated); empty: no autoscaling.",
        parse::list,
    );
    /// `[autoscale] min_workers`.
    pub const MIN_WORKERS: Opt<usize> = Opt::new(
        "autoscale",
        "min_workers",
        "0",
        "Fewest workers per topic (0: scale to zero when idle).",
        parse::number::<usize>,
    );
    /// `[autoscale] max_workers`.
    pub const MAX_WORKERS: Opt<usize> =
        Opt::new("autoscale", "max_workers", "4", "Most workers per topic.", at_least_one);
    /// `[autoscale] target_per_worker`.
    pub const TARGET_PER_WORKER: Opt<usize> = Opt::new(
        "autoscale",
        "target_per_worker",
        "4",
        "Work one worker should face: workers = ceil((backlog + in-flight) / target_per_worker); set it to the workers' max_tasks to keep busy workers.",
        at_least_one,
    );
    /// `[autoscale] scale_up_cooldown`.
    pub const SCALE_UP_COOLDOWN: Opt<Duration> = Opt::new(
        "autoscale",
        "scale_up_cooldown",
        "10",
        "Seconds after a scale-up before the next one, unless its workers all serve sooner (starting min_workers is no scale-up).",
        up_to_a_day,
    );
    /// `[autoscale] scale_down_window`.
    pub const SCALE_DOWN_WINDOW: Opt<Duration> = Opt::new(
        "autoscale",
        "scale_down_window",
        "60",
        "Scale-in stabilisation, as Kubernetes' HPA: workers are stopped only down to the highest number wanted over this many seconds (older name: scale_down_idle).",
        up_to_a_day,
    );
    /// `[autoscale] interval`.
    pub const INTERVAL: Opt<Duration> =
        Opt::new("autoscale", "interval", "2", "Seconds between looks at the backlog.", up_to_a_day);
    /// `[autoscale] launcher`.
    pub const LAUNCHER: Opt<String> = Opt::new(
        "autoscale",
        "launcher",
        "process",
        "process: spawn nova-compute on this machine; command: run `command up|down HOST`.",
        launcher,
    );
    /// `[autoscale] command`.
    pub const COMMAND: Opt<Vec<String>> = Opt::new(
        "autoscale",
        "command",
        "",
        "The command launcher's program (and fixed arguments); it gets `up HOST` or `down HOST`.",
        words,
    );
    /// `[autoscale] worker_prefix`.
    pub const WORKER_PREFIX: Opt<String> =
        Opt::new("autoscale", "worker_prefix", "auto", "Workers are named <worker_prefix>-<topic>-<n>.", parse::text);

    fn at_least_one(v: &str) -> Result<usize, Invalid> {
        match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err("expected a whole number, at least 1".into()),
        }
    }

    /// How `scale_down_window` (and its older name) is read.
    pub(super) const SCALE_DOWN_WINDOW_PARSE: fn(&str) -> Result<Duration, Invalid> = up_to_a_day;

    fn up_to_a_day(v: &str) -> Result<Duration, Invalid> {
        parse::seconds(v).and_then(|d| {
            (d.as_secs_f64() <= 86_400.0).then_some(d).ok_or_else(|| "must be at most 86400 seconds".into())
        })
    }

    fn launcher(v: &str) -> Result<String, Invalid> {
        match v {
            "process" | "command" => Ok(v.to_owned()),
            _ => Err("expected process or command".into()),
        }
    }

    fn words(v: &str) -> Result<Vec<String>, Invalid> {
        Ok(v.split_whitespace().map(str::to_owned).collect())
    }
}

/// Which launcher starts and stops workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LauncherKind {
    /// `nova-compute` processes on this machine.
    Process,
    /// The operator's command, with `up HOST` / `down HOST`.
    Command(Vec<String>),
}

/// The autoscaler's settings; see the module docs.
#[derive(Debug, Clone)]
pub struct AutoscaleOptions {
    /// Topics scaled.
    pub topics: Vec<String>,
    /// Fewest workers per topic.
    pub min_workers: usize,
    /// Most workers per topic.
    pub max_workers: usize,
    /// Backlog per worker.
    pub target_per_worker: usize,
    /// Between scale-ups.
    pub scale_up_cooldown: Duration,
    /// Scale-in stabilisation: the highest recommendation over this window.
    pub scale_down_window: Duration,
    /// Between looks.
    pub interval: Duration,
    /// The launcher.
    pub launcher: LauncherKind,
    /// Worker name prefix.
    pub worker_prefix: String,
    /// The workers serve their topic at-least-once with this many deliveries
    /// (`[compute] task_delivery`): the queue is declared as they declare it.
    pub max_deliveries: Option<u32>,
    /// Each topic's work queue, whose backlog is scaled on
    /// (`[<topic>] work_queue`, or `<topic>_work`).
    pub work_queues: HashMap<String, String>,
}

impl AutoscaleOptions {
    /// The queue `topic`'s work waits in.
    pub fn work_queue(&self, topic: &str) -> String {
        self.work_queues.get(topic).cloned().unwrap_or_else(|| format!("{topic}_work"))
    }
}

impl AutoscaleOptions {
    /// Read `[autoscale]`; a bad value is named, with where it was set.
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        let (min_workers, max_workers) = (c.value(&opts::MIN_WORKERS)?, c.value(&opts::MAX_WORKERS)?);
        if min_workers > max_workers {
            return Err(c.invalid("autoscale", "min_workers", format!("must not exceed max_workers ({max_workers})")));
        }
        let launcher = match c.value(&opts::LAUNCHER)?.as_str() {
            "command" => match c.value(&opts::COMMAND)? {
                command if command.is_empty() => {
                    return Err(c.invalid("autoscale", "launcher", "launcher = command needs [autoscale] command"))
                }
                command => LauncherKind::Command(command),
            },
            _ => LauncherKind::Process,
        };
        let topics = c.value(&opts::TOPICS)?;
        let work_queues =
            topics.iter().map(|t| (t.clone(), nova_core::manager::work_queue_name(c, t))).collect::<HashMap<_, _>>();
        Ok(Self {
            work_queues,
            topics,
            min_workers,
            max_workers,
            target_per_worker: c.value(&opts::TARGET_PER_WORKER)?,
            scale_up_cooldown: c.value(&opts::SCALE_UP_COOLDOWN)?,
            scale_down_window: match c.raw("autoscale", "scale_down_idle") {
                // The option's older name, still read where the new one is unset.
                Some(v) if c.raw("autoscale", "scale_down_window").is_none() => {
                    opts::SCALE_DOWN_WINDOW_PARSE(v).map_err(|e| c.invalid("autoscale", "scale_down_idle", e.0))?
                }
                _ => c.value(&opts::SCALE_DOWN_WINDOW)?,
            },
            interval: c.value(&opts::INTERVAL)?.max(Duration::from_millis(50)),
            launcher,
            worker_prefix: c.value(&opts::WORKER_PREFIX)?,
            max_deliveries: match c.raw("compute", "task_delivery") {
                Some("at_least_once") => {
                    Some(c.raw("compute", "task_max_deliveries").and_then(|v| v.parse().ok()).unwrap_or(3))
                }
                _ => None,
            },
        })
    }
}

/// Why a worker could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The program could not be run.
    #[error("cannot run {program}: {source}")]
    Run {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The operator's command said no.
    #[error("{command} failed ({status}): {stderr}")]
    Refused {
        /// What ran, with its arguments.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// `[autoscale] command` is empty.
    #[error("[autoscale] command is empty")]
    NoCommand,
    /// No worker of that name runs.
    #[error("no worker {0}")]
    NoSuchWorker(String),
}

/// Starts and stops workers.
#[async_trait]
pub trait Launcher: Send + Sync {
    /// Start worker `host` (of `topic`).
    async fn up(&self, topic: &str, host: &str) -> Result<(), WorkerError>;
    /// Stop worker `host` gracefully.
    async fn down(&self, topic: &str, host: &str) -> Result<(), WorkerError>;
    /// Workers that ended by themselves since the last look (a crash).
    async fn ended(&self) -> Vec<String> {
        Vec::new()
    }
    /// Stop every worker this launcher started (the autoscaler stops).
    async fn stop_all(&self) {}
}

/// Spawns `nova-compute` processes on this machine.
pub struct ProcessLauncher {
    program: PathBuf,
    args: Vec<String>,
    children: Mutex<HashMap<String, tokio::process::Child>>,
    stopping: Mutex<Vec<tokio::process::Child>>,
}

impl std::fmt::Debug for ProcessLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessLauncher").field("program", &self.program).finish()
    }
}

impl ProcessLauncher {
    /// Workers run `program` (default: `nova-compute` beside this program)
    /// with `args` (the configuration) and `--host NAME`.
    pub fn new(program: PathBuf, args: Vec<String>) -> Self {
        Self { program, args, children: Mutex::default(), stopping: Mutex::default() }
    }

    /// `nova-compute` beside the running program, given this program's
    /// configuration files and its messaging, database and state flags.
    pub fn beside_me(config: &Config, flags: &CommonArgs) -> Self {
        let program = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("nova-compute")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nova-compute"));
        let mut args = Vec::new();
        for f in config.files() {
            args.extend(["--config-file".to_owned(), f.display().to_string()]);
        }
        let pass = [
            ("--transport-url", flags.transport_url.clone()),
            ("--control-exchange", flags.control_exchange.clone()),
            ("--database-connection", flags.database_connection.clone()),
            ("--state-path", flags.state_path.as_ref().map(|p| p.display().to_string())),
        ];
        for (flag, value) in pass {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v]);
            }
        }
        Self::new(program, args)
    }

    /// Reap workers that stopped, as they stop.
    async fn reap(&self) {
        self.stopping.lock().await.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn up(&self, _topic: &str, host: &str) -> Result<(), WorkerError> {
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args(["--host", host])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| WorkerError::Run { program: self.program.display().to_string(), source })?;
        self.children.lock().await.insert(host.to_owned(), child);
        Ok(())
    }

    async fn down(&self, _topic: &str, host: &str) -> Result<(), WorkerError> {
        self.reap().await;
        let Some(child) = self.children.lock().await.remove(host) else {
            return Err(WorkerError::NoSuchWorker(host.to_owned()));
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        // It finishes what it holds and exits; reaped later.
        self.stopping.lock().await.push(child);
        Ok(())
    }

    async fn ended(&self) -> Vec<String> {
        self.reap().await;
        let mut children = self.children.lock().await;
        let gone: Vec<String> = children
            .iter_mut()
            .filter_map(|(h, c)| matches!(c.try_wait(), Ok(Some(_)) | Err(_)).then(|| h.clone()))
            .collect();
        for h in &gone {
            children.remove(h);
        }
        gone
    }

    async fn stop_all(&self) {
        let hosts: Vec<String> = self.children.lock().await.keys().cloned().collect();
        for h in hosts {
            let _ = self.down("", &h).await;
        }
        let mut stopping = std::mem::take(&mut *self.stopping.lock().await);
        for c in &mut stopping {
            let _ = c.wait().await;
        }
    }
}

/// Runs the operator's command with `up HOST` / `down HOST`.
#[derive(Debug)]
pub struct CommandLauncher {
    argv: Vec<String>,
}

impl CommandLauncher {
    /// `argv[0]` with `argv[1..]`, then `up|down HOST`.
    pub fn new(argv: Vec<String>) -> Self {
        Self { argv }
    }

    async fn run(&self, topic: &str, action: &str, host: &str) -> Result<(), WorkerError> {
        let (program, fixed) = self.argv.split_first().ok_or(WorkerError::NoCommand)?;
        let out = tokio::process::Command::new(program)
            .args(fixed)
            .args([action, host])
            .env("NOVA_AUTOSCALE_TOPIC", topic)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| WorkerError::Run { program: program.clone(), source })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(WorkerError::Refused {
                command: format!("{program} {action} {host}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

#[async_trait]
impl Launcher for CommandLauncher {
    async fn up(&self, topic: &str, host: &str) -> Result<(), WorkerError> {
        self.run(topic, "up", host).await
    }

    async fn down(&self, topic: &str, host: &str) -> Result<(), WorkerError> {
        self.run(topic, "down", host).await
    }
}

/// What to do about one topic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Keep the workers.
    #[default]
    Hold,
    /// Start this many.
    Up(usize),
    /// Stop this many.
    Down(usize),
}

/// One topic's scaling state.
#[derive(Debug, Default)]
pub struct TopicState {
    /// Running workers, oldest first (one being drained is no longer here).
    pub workers: Vec<String>,
    next: usize,
    last_up: Option<Instant>,
    /// Every worker reports to the schedulers (it serves): the workers of
    /// the last scale-up are up, and the cool-down need not run out.
    pub all_serving: bool,
    /// Recommendations over the scale-down window, oldest first.
    recent: std::collections::VecDeque<(Instant, usize)>,
    /// The first look: no scale-in before a whole window was seen.
    since: Option<Instant>,
}

impl TopicState {
    /// Workers were started at `now`, bringing the topic to `to`: the
    /// scale-up cool-down starts, unless they only brought it up to
    /// `min_workers`. That is a start, not an answer to load: the first
    /// backlog must not wait a cool-down for it.
    pub fn started(&mut self, to: usize, o: &AutoscaleOptions, now: Instant) {
        if to > o.min_workers {
            self.last_up = Some(now);
        }
    }

    /// Decide for `backlog` ready messages and `in_flight` ones the workers
    /// hold, at `now`: `ceil((backlog + in_flight) / target_per_worker)`
    /// workers, clamped. Up at once (after the cool-down); down only to
    /// the highest recommendation of the last `scale_down_window`, as
    /// Kubernetes' HPA stabilises scale-in, so a dip never lets a worker
    /// go that the load brings back.
    ///
    /// `in_flight` is `None` when no scheduler could tell it: then the
    /// backlog alone decides, and scale-in is cautious, one worker per
    /// window (a drained queue may only mean every worker is busy).
    pub fn decide(&mut self, backlog: u64, in_flight: Option<u64>, o: &AutoscaleOptions, now: Instant) -> Decision {
        let work = backlog.saturating_add(in_flight.unwrap_or(0));
        let wanted = usize::try_from(work.div_ceil(o.target_per_worker as u64)).unwrap_or(usize::MAX);
        let wanted = wanted.clamp(o.min_workers, o.max_workers);
        while self.recent.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > o.scale_down_window) {
            self.recent.pop_front();
        }
        self.recent.push_back((now, wanted));
        let have = self.workers.len();
        if wanted > have {
            // The cool-down lets new workers come up before the backlog is
            // judged again; once they all serve, it has done its work.
            let cooled = self.all_serving || self.last_up.is_none_or(|t| now.duration_since(t) >= o.scale_up_cooldown);
            return if cooled { Decision::Up(wanted - have) } else { Decision::Hold };
        }
        // Scale-in looks back a whole window, so none before one was seen.
        let since = *self.since.get_or_insert(now);
        let seen_a_window = now.saturating_duration_since(since) >= o.scale_down_window;
        let stable = self.recent.iter().map(|(_, w)| *w).max().unwrap_or(wanted);
        match in_flight {
            _ if stable >= have || !seen_a_window => Decision::Hold,
            Some(_) => Decision::Down(have - stable),
            None => {
                self.since = Some(now);
                Decision::Down(1)
            }
        }
    }
}

/// The autoscaler; see the module docs.
pub struct Autoscaler {
    transport: Arc<dyn Transport>,
    options: AutoscaleOptions,
    launcher: Arc<dyn Launcher>,
    state: Arc<Mutex<HashMap<String, TopicState>>>,
    /// Where the workers' busy slots are read.
    schedulers: nova_rpc::RpcClient,
    /// Whether no scheduler answered the last time.
    no_scheduler: std::sync::atomic::AtomicBool,
    last: Arc<Mutex<Option<Look>>>,
}

/// One look at a topic: what the autoscaler saw, and what it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// The topic.
    pub topic: String,
    /// Ready messages in its work queue.
    pub backlog: u64,
    /// Busy slots of its workers (`None`: no scheduler told).
    pub in_flight: Option<u64>,
    /// Its workers before the decision.
    pub workers: usize,
    /// How many looks came before this one (all topics).
    pub number: u64,
    /// The decision.
    pub decision: Decision,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler").field("options", &self.options).finish()
    }
}

impl Autoscaler {
    /// Scale `options.topics` on `transport`'s queues with `launcher`.
    pub fn new(transport: Arc<dyn Transport>, options: AutoscaleOptions, launcher: Arc<dyn Launcher>) -> Self {
        let schedulers = nova_rpc::RpcClient::new(transport.clone(), nova_rpc::Target::new("scheduler"))
            .with_timeout(Duration::from_secs(2))
            .with_mandatory(true);
        let no_scheduler = std::sync::atomic::AtomicBool::new(false);
        Self { transport, options, launcher, state: Arc::default(), schedulers, no_scheduler, last: Arc::default() }
    }

    /// The launcher the options name: processes beside this program, or the command.
    pub fn launcher_for(options: &AutoscaleOptions, config: &Config, flags: &CommonArgs) -> Arc<dyn Launcher> {
        match &options.launcher {
            LauncherKind::Process => Arc::new(ProcessLauncher::beside_me(config, flags)),
            LauncherKind::Command(argv) => Arc::new(CommandLauncher::new(argv.clone())),
        }
    }

    /// The workers of `topic` now.
    pub async fn workers(&self, topic: &str) -> Vec<String> {
        self.state.lock().await.get(topic).map(|s| s.workers.clone()).unwrap_or_default()
    }

    /// A handle on the workers, to read while [`Autoscaler::run`] runs.
    pub fn watch_workers(&self) -> Arc<Mutex<HashMap<String, TopicState>>> {
        self.state.clone()
    }

    /// Look and act every `interval` until `stop`; then stop the workers
    /// the launcher started (a process launcher's children).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // The queues exist before any worker does (a topic scaled from
        // zero still has a backlog to read), declared as workers declare them.
        let mut declared = Vec::new();
        for topic in &self.options.topics {
            match self.declare(topic).await {
                Ok(l) => declared.push(l),
                Err(e) => {
                    tracing::error!(topic, error = %e, "cannot declare the topic's queue; its backlog reads as empty until a worker declares it")
                }
            }
        }
        tracing::info!(topics = ?self.options.topics, min = self.options.min_workers, max = self.options.max_workers, target = self.options.target_per_worker, "autoscaler started");
        loop {
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(self.options.interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.launcher.stop_all().await;
        drop(declared);
        tracing::info!("autoscaler stopped");
    }

    /// Declare `topic`'s work queue (never consumed: a paused work listener).
    async fn declare(&self, topic: &str) -> nova_rpc::Result<nova_rpc::transport::Listener> {
        let spec = nova_rpc::transport::ListenSpec {
            exchange: self.transport.options().control_exchange.clone(),
            topic: self.options.work_queue(topic),
            server: self.options.worker_prefix.clone(),
            prefetch: 1,
            durable: self.options.max_deliveries.is_some(),
            max_deliveries: self.options.max_deliveries,
            queues: nova_rpc::transport::Queues::Work,
        };
        self.transport.listen(spec).await
    }

    /// The work `workers` hold now: their busy slots, as their capacity
    /// reports to the schedulers say (`max_tasks - free_slots`), and how
    /// many of them report. Without a scheduler to ask, `None` (logged once).
    async fn in_flight(&self, topic: &str, workers: &[String]) -> Option<(u64, usize)> {
        #[derive(serde::Deserialize)]
        struct HostState {
            host: String,
            free_slots: u64,
            max_tasks: u64,
        }
        if workers.is_empty() {
            return Some((0, 0));
        }
        let ctx = nova_rpc::RequestContext::new();
        let asked = self.schedulers.call_as::<Vec<HostState>>(&ctx, "list_host_states", serde_json::json!({})).await;
        let blind = &self.no_scheduler;
        match asked {
            Ok(hosts) => {
                if blind.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!(topic, "reading the workers' busy slots from a scheduler again");
                }
                let ours: Vec<&HostState> = hosts.iter().filter(|h| workers.contains(&h.host)).collect();
                Some((ours.iter().map(|h| h.max_tasks.saturating_sub(h.free_slots)).sum(), ours.len()))
            }
            Err(e) => {
                if !blind.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(topic, error = %e, "no scheduler tells the workers' busy slots; scaling on the backlog alone, in one worker per scale_down_window");
                }
                None
            }
        }
    }

    /// What the last look saw and decided (for the console and the bench).
    pub fn last_look(&self) -> Arc<Mutex<Option<Look>>> {
        self.last.clone()
    }

    /// One look at every topic.
    pub async fn tick(&self) {
        let gone = self.launcher.ended().await;
        let mut state = self.state.lock().await;
        for topic in &self.options.topics {
            let s = state.entry(topic.clone()).or_default();
            s.workers.retain(|w| {
                let alive = !gone.contains(w);
                if !alive {
                    tracing::warn!(topic, worker = %w, "a worker ended by itself");
                }
                alive
            });
            let backlog = match self.transport.queue_stats(&[self.options.work_queue(topic)]).await {
                Ok(stats) => stats.first().map_or(0, |q| q.messages),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot read the backlog; holding");
                    continue;
                }
            };
            let asked = self.in_flight(topic, &s.workers).await;
            s.all_serving = asked.is_some_and(|(_, serving)| serving >= s.workers.len());
            let in_flight = asked.map(|(busy, _)| busy);
            let decision = s.decide(backlog, in_flight, &self.options, Instant::now());
            let mut last = self.last.lock().await;
            let number = last.as_ref().map_or(0, |l| l.number + 1);
            *last = Some(Look { topic: topic.clone(), backlog, in_flight, workers: s.workers.len(), decision, number });
            drop(last);
            match decision {
                Decision::Hold => {}
                Decision::Up(n) => self.scale_up(topic, s, n, backlog, in_flight).await,
                Decision::Down(n) => self.scale_down(topic, s, n, backlog, in_flight).await,
            }
            metrics().workers.get_or_create(&TopicLabels { topic: topic.clone() }).set(s.workers.len() as i64);
        }
    }

    async fn scale_up(&self, topic: &str, s: &mut TopicState, n: usize, backlog: u64, in_flight: Option<u64>) {
        let (from, now) = (s.workers.len(), Instant::now());
        for _ in 0..n {
            s.next += 1;
            let host = format!("{}-{topic}-{}", self.options.worker_prefix, s.next);
            match self.launcher.up(topic, &host).await {
                Ok(()) => s.workers.push(host),
                Err(e) => tracing::error!(topic, worker = %host, error = %e, "cannot start a worker"),
            }
        }
        s.started(s.workers.len(), &self.options, now);
        tracing::info!(topic, backlog, in_flight = ?in_flight, from, to = s.workers.len(), "scaled up");
        count(topic, "up");
    }

    async fn scale_down(&self, topic: &str, s: &mut TopicState, n: usize, backlog: u64, in_flight: Option<u64>) {
        let from = s.workers.len();
        for _ in 0..n {
            let Some(host) = s.workers.pop() else { break };
            if let Err(e) = self.launcher.down(topic, &host).await {
                tracing::error!(topic, worker = %host, error = %e, "cannot stop a worker");
            }
        }
        tracing::info!(topic, backlog, in_flight = ?in_flight, from, to = s.workers.len(), "scaled down");
        count(topic, "down");
    }
}

/// Labels of the workers gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// Labels of the decisions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleLabels {
    topic: String,
    /// `up` or `down`.
    action: String,
}

/// What the autoscaler counts, registered on first use.
struct ScaleMetrics {
    workers: Family<TopicLabels, Gauge>,
    decisions: Family<ScaleLabels, Counter>,
}

fn metrics() -> &'static ScaleMetrics {
    static METRICS: std::sync::OnceLock<ScaleMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let m = ScaleMetrics { workers: Family::default(), decisions: Family::default() };
        nova_rpc::metrics::register("autoscale_workers", "Workers the autoscaler runs, per topic", m.workers.clone());
        nova_rpc::metrics::register(
            "autoscale_decisions",
            "Scaling decisions the autoscaler took, per topic and direction",
            m.decisions.clone(),
        );
        m
    })
}

fn count(topic: &str, action: &str) {
    metrics().decisions.get_or_create(&ScaleLabels { topic: topic.to_owned(), action: action.to_owned() }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<AutoscaleOptions, ConfigError> {
        let mut c = Config::with_defaults(AUTOSCALE_OPTIONS);
        for line in text.lines() {
            let (name, value) = line.split_once(" = ").unwrap();
            c.set("autoscale", name, value.into(), nova_core::config::Origin::Code);
        }
        AutoscaleOptions::from_config(&c)
    }

    #[test]
    fn options_have_their_declared_defaults_and_name_what_is_wrong() {
        let o = read("topics = compute, render").unwrap();
        assert_eq!(o.topics, ["compute", "render"]);
        assert_eq!((o.min_workers, o.max_workers, o.target_per_worker), (0, 4, 4));
        assert_eq!(o.launcher, LauncherKind::Process);
        let blamed = |text: &str| match read(text) {
            Err(ConfigError::BadValue { name, .. }) => name,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(blamed("min_workers = 5\nmax_workers = 2"), "min_workers");
        assert_eq!(blamed("max_workers = 0"), "max_workers");
        assert_eq!(blamed("launcher = command"), "launcher");
        assert_eq!(blamed("interval = 100000"), "interval");
        assert_eq!(
            read("launcher = command\ncommand = ./scale --fast").unwrap().launcher,
            LauncherKind::Command(vec!["./scale".into(), "--fast".into()])
        );
    }

    fn options() -> AutoscaleOptions {
        AutoscaleOptions {
            topics: vec!["compute".into()],
            min_workers: 0,
            max_workers: 6,
            target_per_worker: 4,
            scale_up_cooldown: Duration::from_secs(10),
            scale_down_window: Duration::from_secs(30),
            interval: Duration::from_secs(1),
            launcher: LauncherKind::Process,
            worker_prefix: "auto".into(),
            max_deliveries: None,
            work_queues: HashMap::new(),
        }
    }

    /// `o`'s decisions for `looks`, one a second from `t0`:
    /// (backlog, in flight), applying each to the workers.
    fn run(s: &mut TopicState, o: &AutoscaleOptions, t0: Instant, looks: &[(u64, u64)]) -> Vec<Decision> {
        let mut out = Vec::new();
        for (i, &(backlog, in_flight)) in looks.iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let d = s.decide(backlog, Some(in_flight), o, now);
            match d {
                Decision::Up(n) => {
                    for _ in 0..n {
                        s.workers.push(format!("w{}", s.workers.len()));
                    }
                    s.started(s.workers.len(), o, now);
                }
                Decision::Down(n) => s.workers.truncate(s.workers.len() - n),
                Decision::Hold => {}
            }
            out.push(d);
        }
        out
    }

    #[test]
    fn up_at_once_after_the_cooldown_and_clamped() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        assert_eq!(s.decide(0, Some(0), &o, t0), Decision::Hold);
        assert_eq!(s.decide(9, Some(0), &o, t0), Decision::Up(3));
        s.workers = vec!["a".into(), "b".into(), "c".into()];
        s.last_up = Some(t0);
        assert_eq!(s.decide(40, Some(12), &o, t0 + Duration::from_secs(5)), Decision::Hold, "within the cool-down");
        assert_eq!(s.decide(40, Some(12), &o, t0 + Duration::from_secs(10)), Decision::Up(3), "clamped to max_workers");
    }

    #[test]
    fn starting_the_minimum_does_not_hold_back_the_first_scale_up() {
        let o = AutoscaleOptions { min_workers: 1, ..options() };
        let (mut s, t0) = (TopicState::default(), Instant::now());
        // The first look starts the minimum; a second later a backlog
        // forms behind the first worker's four busy slots: up at once…
        let decisions = run(&mut s, &o, t0, &[(0, 0), (3, 4), (9, 8)]);
        assert_eq!(decisions, [Decision::Up(1), Decision::Up(1), Decision::Hold], "…then the cool-down holds");
        assert_eq!(s.workers.len(), 2);
    }

    #[test]
    fn the_cool_down_ends_once_the_new_workers_serve() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        assert_eq!(run(&mut s, &o, t0, &[(8, 0)]), [Decision::Up(2)]);
        // The backlog keeps growing while the two start: held…
        assert_eq!(s.decide(20, Some(0), &o, t0 + Duration::from_secs(1)), Decision::Hold);
        // …until both report to the schedulers, well within the cool-down.
        s.all_serving = true;
        assert_eq!(s.decide(12, Some(8), &o, t0 + Duration::from_secs(2)), Decision::Up(3));
    }

    #[test]
    fn a_steady_load_holds_while_in_flight_work_covers_the_workers() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        // A burst brings three workers; then a steady load keeps their 12
        // slots busy with the queue drained (what made the old rule let
        // workers go until the backlog came back).
        let mut looks = vec![(12, 0)];
        looks.extend(std::iter::repeat_n((0, 12), 600));
        let decisions = run(&mut s, &o, t0, &looks);
        assert_eq!(decisions[0], Decision::Up(3));
        assert!(decisions[1..].iter().all(|d| *d == Decision::Hold), "{decisions:?}");
        assert_eq!(s.workers.len(), 3);
    }

    #[test]
    fn the_window_smooths_a_dip_and_then_lets_go() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        // Three busy workers for a minute, a 10 s dip to one worker's work,
        // then busy again: nobody goes.
        let mut looks = vec![(12, 0)];
        looks.extend(std::iter::repeat_n((0, 12), 60));
        looks.extend(std::iter::repeat_n((0, 4), 10));
        looks.extend(std::iter::repeat_n((0, 12), 60));
        let decisions = run(&mut s, &o, t0, &looks);
        assert!(decisions[1..].iter().all(|d| *d == Decision::Hold), "a dip shorter than the window: {decisions:?}");
        // Load falls to one worker's for good: after a whole window of it,
        // down to one at once.
        let t1 = t0 + Duration::from_secs(looks.len() as u64);
        let later = run(&mut s, &o, t1, &vec![(0, 4); 40]);
        let first_down = later.iter().position(|d| *d != Decision::Hold).expect("scaled in");
        assert_eq!(later[first_down], Decision::Down(2));
        assert!(first_down as u64 >= o.scale_down_window.as_secs(), "not before the window: {first_down}");
        assert_eq!(s.workers.len(), 1);
    }

    #[test]
    fn without_a_scheduler_one_worker_per_window() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        s.workers = vec!["a".into(), "b".into(), "c".into()];
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut downs = Vec::new();
        for i in 0..100 {
            if let Decision::Down(n) = s.decide(0, None, &o, at(i)) {
                downs.push((i, n));
                s.workers.pop();
            }
        }
        assert_eq!(downs, [(30, 1), (60, 1), (90, 1)], "cautious: one per window");
    }

    #[test]
    fn to_zero_and_back() {
        let o = options();
        let (mut s, t0) = (TopicState::default(), Instant::now());
        let mut looks = vec![(5, 0)];
        looks.extend(std::iter::repeat_n((0, 0), 40));
        let decisions = run(&mut s, &o, t0, &looks);
        assert_eq!(decisions[0], Decision::Up(2));
        assert_eq!(s.workers.len(), 0, "idle for a window: none left");
        let t1 = t0 + Duration::from_secs(41);
        assert_eq!(run(&mut s, &o, t1, &[(1, 0)]), [Decision::Up(1)], "the next task brings one back");
        let floor = AutoscaleOptions { min_workers: 2, ..o };
        let mut s = TopicState::default();
        let decisions = run(&mut s, &floor, t0, &vec![(0, 0); 40]);
        assert_eq!(decisions[0], Decision::Up(2), "min_workers from the start");
        assert_eq!(s.workers.len(), 2);
    }
}
