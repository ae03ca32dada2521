//! A service: one manager served on its topic, with its report and
//! periodic loops, in Nova's start order:
//!
//! look up record → `init_host` → create/update record → `pre_start_hook`
//! → RPC server → `post_start_hook` → report loop → periodic loop.
//!
//! Stopping reverses it: the RPC server stops consuming and lets in-flight
//! requests finish (up to `graceful_shutdown_timeout`), the loops stop, the
//! manager's background work ([`ServiceInfo::spawn`]) finishes or is
//! cancelled, and `cleanup_host` runs.

use std::{sync::Arc, time::Duration};

use nova_rpc::{
    dispatcher::Dispatcher,
    layer::{
        metrics::MetricsLayer,
        trace::{Sampler, TraceLayer, Tracer},
        Layer, Layers,
    },
    notify::Priority,
    transport::Transport,
    RequestContext, RpcClient, RpcServer, RunningServer, StopReport, Target,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    baseapi,
    config::CoreOptions,
    db::{services::ServiceRecords, DbError},
    manager::{BoxError, ManagerHandle, ServiceInfo},
    notifications::{Notifications, ServiceStatusPayload},
    periodic,
};

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A hook failed.
    #[error("{hook} failed: {error}")]
    Hook {
        /// Which hook.
        hook: &'static str,
        /// Its error.
        error: BoxError,
    },
    /// The service record could not be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The RPC server could not start.
    #[error(transparent)]
    Rpc(#[from] nova_rpc::RpcError),
    /// `[rpc] signed_topics` lists the topic but not its work queue.
    #[error("[rpc] signed_topics lists {topic} but not its work queue {queue}: add {queue}, or work would be accepted unsigned")]
    UnsignedWorkQueue {
        /// The topic.
        topic: String,
        /// Its work queue.
        queue: String,
    },
}

/// The loop timings and limits of a service (Nova's defaults).
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Seconds between heartbeats (`report_interval`, 10).
    pub report_interval: Duration,
    /// Run periodic tasks (`periodic_enable`).
    pub periodic_enable: bool,
    /// First periodic run delay, random up to this (`periodic_fuzzy_delay`, 60).
    pub periodic_fuzzy_delay: Duration,
    /// Longest periodic sleep (`periodic_interval_max`, 60).
    pub periodic_interval_max: Duration,
    /// In-flight grace on stop (`graceful_shutdown_timeout`, 60).
    pub graceful_shutdown_timeout: Duration,
    /// A service that cannot consume one of its queues for this long stops
    /// reporting itself up (`service_down_time`, 60).
    pub service_down_time: Duration,
    /// Concurrent requests (`executor_thread_pool_size`, 64).
    pub executor_thread_pool_size: usize,
    /// Record request traces (`trace_enabled`, on).
    pub trace: bool,
    /// Which requests are traced (`[trace] sample_ratio`, `always_slower_than`).
    pub trace_sampler: Sampler,
    /// Record per-method metrics (`metrics_enabled`, on).
    pub metrics: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(10),
            periodic_enable: true,
            periodic_fuzzy_delay: Duration::from_secs(60),
            periodic_interval_max: Duration::from_secs(60),
            graceful_shutdown_timeout: Duration::from_secs(60),
            service_down_time: Duration::from_secs(60),
            executor_thread_pool_size: 64,
            trace: true,
            trace_sampler: Sampler::default(),
            metrics: true,
        }
    }
}

impl From<&CoreOptions> for ServiceOptions {
    fn from(o: &CoreOptions) -> Self {
        Self {
            report_interval: o.report_interval,
            periodic_enable: o.periodic_enable,
            periodic_fuzzy_delay: o.periodic_fuzzy_delay,
            periodic_interval_max: o.periodic_interval_max,
            graceful_shutdown_timeout: o.graceful_shutdown_timeout,
            service_down_time: o.service_down_time,
            executor_thread_pool_size: o.executor_thread_pool_size,
            trace: o.trace_enabled,
            trace_sampler: o.trace_sampler,
            metrics: o.metrics_enabled,
        }
    }
}

/// The program name of this process, e.g. `nova-compute`.
pub fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "nova-service".into())
}

/// A service ready to start; see the module docs.
#[derive(Debug)]
pub struct Service {
    info: ServiceInfo,
    manager: ManagerHandle,
    transport: Arc<dyn Transport>,
    records: Option<ServiceRecords>,
    notifications: Notifications,
    options: ServiceOptions,
    layers: Layers,
}

impl Service {
    /// Nova's `Service.create`: host = the hostname, binary = the program
    /// name, topic = the binary without `nova-`; change them with the setters.
    pub fn create(transport: Arc<dyn Transport>, manager: ManagerHandle) -> Self {
        let binary = program_name();
        let topic = binary.strip_prefix("nova-").unwrap_or(&binary).to_owned();
        let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into());
        Self {
            info: ServiceInfo::new(host, binary, topic),
            manager,
            transport,
            records: None,
            notifications: Notifications::disabled(),
            options: ServiceOptions::default(),
            layers: Layers::default(),
        }
    }

    /// Add a dispatcher layer (inside the built-in metrics and trace
    /// layers); see [`nova_rpc::layer`].
    pub fn layer(mut self, layer: Arc<dyn Layer>) -> Self {
        self.layers = self.layers.with(layer);
        self
    }

    /// Set the host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.info.host = host.into();
        self
    }

    /// Set the binary (and, unless set after, the topic derived from it).
    pub fn binary(mut self, binary: impl Into<String>) -> Self {
        self.info.binary = binary.into();
        self.info.topic = self.info.binary.strip_prefix("nova-").unwrap_or(&self.info.binary).to_owned();
        self
    }

    /// Set the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.info.topic = topic.into();
        self
    }

    /// Set who the service is at once (host, binary, topic and the
    /// background set the manager was given in
    /// [`ManagerDeps`](crate::ManagerDeps)).
    pub fn info(mut self, info: ServiceInfo) -> Self {
        self.info = info;
        self
    }

    /// Keep the service record in this database.
    pub fn records(mut self, records: ServiceRecords) -> Self {
        self.records = Some(records);
        self
    }

    /// Announce record changes (`service.update`: up, down, disabled,
    /// forced down) through `notifications`.
    pub fn notifications(mut self, notifications: Notifications) -> Self {
        self.notifications = notifications;
        self
    }

    /// Timings and limits.
    pub fn options(mut self, options: ServiceOptions) -> Self {
        self.options = options;
        self
    }

    /// `report_interval`.
    pub fn report_interval(mut self, d: Duration) -> Self {
        self.options.report_interval = d;
        self
    }

    /// `periodic_enable`.
    pub fn periodic_enable(mut self, on: bool) -> Self {
        self.options.periodic_enable = on;
        self
    }

    /// `periodic_fuzzy_delay`.
    pub fn periodic_fuzzy_delay(mut self, d: Duration) -> Self {
        self.options.periodic_fuzzy_delay = d;
        self
    }

    /// `periodic_interval_max`.
    pub fn periodic_interval_max(mut self, d: Duration) -> Self {
        self.options.periodic_interval_max = d;
        self
    }

    /// Who the service is.
    pub fn service_info(&self) -> &ServiceInfo {
        &self.info
    }

    /// Start, in Nova's order (see the module docs).
    ///
    /// # Errors
    ///
    /// A hook that failed (`init_host`, `pre_start_hook`,
    /// `post_start_hook`: [`ServiceError::Hook`] names it), the service
    /// record's database, or the RPC server's start. What was started is
    /// stopped again before the error returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use nova_core::{rpc_api, Manager, ManagerHandle, Service};
    /// use nova_rpc::{transport, RequestContext, RpcError};
    ///
    /// struct Pinger;
    /// #[rpc_api]
    /// impl Pinger {
    ///     /// Answer.
    ///     pub async fn ping(&self, _ctx: RequestContext) -> Result<String, RpcError> { Ok("pong".into()) }
    /// }
    /// impl Manager for Pinger {}
    ///
    /// let t = transport::connect(transport::TransportOptions::new("memory://service-doc")).await.unwrap();
    /// let running = Service::create(t.clone(), ManagerHandle::new(Arc::new(Pinger)))
    ///     .topic("pinger")
    ///     .host("h1")
    ///     .start()
    ///     .await
    ///     .unwrap();
    /// let pinger = PingerClient::new(nova_rpc::RpcClient::new(t, nova_rpc::Target::new("pinger")));
    /// assert_eq!(pinger.ping(&RequestContext::new()).await.unwrap(), "pong");
    /// running.stop().await;
    /// # });
    /// ```
    pub async fn start(self) -> Result<RunningService, ServiceError> {
        let hooks = self.manager.hooks.clone();
        let hook = |hook: &'static str| move |error| ServiceError::Hook { hook, error };
        let (info, records) = (&self.info, &self.records);
        if let Some(r) = records {
            match r.get(&info.host, &info.binary).await? {
                Some(existing) => tracing::debug!(id = existing.id, "found existing service record"),
                None => tracing::debug!("no service record yet"),
            }
        }
        hooks.init_host(info).await.map_err(hook("init_host"))?;
        let record = match records {
            Some(r) => {
                let version = self.manager.service_version;
                Some(r.create_or_update(&info.host, &info.binary, &info.topic, version).await?)
            }
            None => None,
        };
        hooks.pre_start_hook(info).await.map_err(hook("pre_start_hook"))?;
        let grace = self.options.graceful_shutdown_timeout;
        let (main, work) = self.servers()?;
        let servers = start_servers(main, work, grace).await?;
        if let Err(e) = hooks.post_start_hook(info).await {
            servers.stop(grace).await;
            return Err(hook("post_start_hook")(e));
        }
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(std::sync::Mutex::new(record.as_ref().map(|r| ServiceStatusPayload::new(r, true))));
        let loops = self.loops(record.map(|r| r.id), &status, &servers, stopped);
        if let Some(up) = lock(&status).as_ref() {
            self.notifications.emit(&RequestContext::new(), Priority::Info, "service.update", up);
        }
        let Service { info, manager, notifications, .. } = self;
        tracing::info!(host = %info.host, binary = %info.binary, topic = %info.topic, manager = %manager.name, "service started");
        Ok(RunningService { info, manager, servers, stop, loops, graceful: grace, notifications, status })
    }

    /// `server` with the service's layers: metrics, tracing, then its own.
    fn layered(&self, mut server: RpcServer) -> RpcServer {
        let (options, info) = (&self.options, &self.info);
        if options.metrics {
            server = server.with_layer(Arc::new(MetricsLayer));
        }
        if options.trace {
            let tracer =
                Tracer::new(self.transport.clone(), &info.binary, &info.host).with_sampler(options.trace_sampler);
            server = server.with_layer(Arc::new(TraceLayer::new(tracer)));
        }
        for layer in self.layers.iter() {
            server = server.with_layer(layer.clone());
        }
        server
    }

    /// The service's servers: its own (`topic`, `topic.host`, the fanout)
    /// and, for a manager with a work queue, the work server on that queue,
    /// which serves every method, each holding a slot while it runs. The
    /// service's own queues serve the rest at once; a work method arriving
    /// there is passed on to the work queue.
    fn servers(&self) -> Result<(RpcServer, Option<RpcServer>), ServiceError> {
        let (info, manager, transport) = (&self.info, &self.manager, &self.transport);
        let admin_role = transport.options().signing.as_ref().and_then(|s| s.admin_role().map(str::to_owned));
        let base =
            baseapi::endpoint(info, &manager.name, std::slice::from_ref(&manager.endpoint), admin_role.as_deref());
        let base: Arc<dyn nova_rpc::dispatcher::Endpoint> = Arc::new(base);
        let target = Target::new(&info.topic).with_server(&info.host);
        let (endpoint, work) = match &manager.work {
            None => (manager.endpoint.clone(), None),
            Some(w) => {
                if let Some(s) = transport.options().signing.as_ref() {
                    if s.applies_to(&info.topic) && !s.applies_to(&w.queue) {
                        return Err(ServiceError::UnsignedWorkQueue {
                            topic: info.topic.clone(),
                            queue: w.queue.clone(),
                        });
                    }
                }
                let dispatcher = Dispatcher::new(vec![manager.endpoint.clone(), base.clone()]);
                let mut server =
                    RpcServer::new(transport.clone(), Target::new(&w.queue).with_server(&info.host), dispatcher)
                        .as_work_queue(w.slots.clone())
                        .with_executor_size(w.slots.available_permits());
                if let Some(max) = w.max_deliveries {
                    server = server.with_at_least_once(max);
                }
                let forward = RpcClient::new(transport.clone(), Target::new(&w.queue)).with_mandatory(true);
                let own: Arc<dyn nova_rpc::dispatcher::Endpoint> = Arc::new(WorkPassedOn {
                    inner: manager.endpoint.clone(),
                    names: w.methods.clone(),
                    forward,
                    told: std::sync::atomic::AtomicBool::new(false),
                });
                (own, Some(self.layered(server)))
            }
        };
        let server = RpcServer::new(transport.clone(), target, Dispatcher::new(vec![endpoint, base]))
            .with_executor_size(self.options.executor_thread_pool_size);
        Ok((self.layered(server), work))
    }

    /// The report loop (with a record to report into) and the periodic
    /// loop, as the options say.
    fn loops(
        &self,
        record_id: Option<i64>,
        status: &Arc<std::sync::Mutex<Option<ServiceStatusPayload>>>,
        servers: &Servers,
        stopped: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let options = &self.options;
        let mut loops = Vec::new();
        if let (Some(r), Some(id)) = (&self.records, record_id) {
            if !options.report_interval.is_zero() {
                let report = Report {
                    records: r.clone(),
                    id,
                    notifications: self.notifications.clone(),
                    status: status.clone(),
                    version: self.manager.service_version,
                    info: self.info.clone(),
                    every: options.report_interval,
                    health: servers.health(),
                    deaf_limit: options.service_down_time,
                };
                loops.push(tokio::spawn(report.run(stopped.clone())));
            }
        }
        if options.periodic_enable {
            loops.push(tokio::spawn(periodic::run_periodic_tasks(
                self.manager.periodic_tasks.clone(),
                options.periodic_fuzzy_delay,
                options.periodic_interval_max,
                stopped,
            )));
        }
        loops
    }
}

/// Start the main server and the work server together: they declare
/// different queues, connect and declare at the same time, and if either
/// fails the other stops.
async fn start_servers(main: RpcServer, work: Option<RpcServer>, grace: Duration) -> Result<Servers, ServiceError> {
    let work = async {
        match work {
            Some(w) => w.start().await.map(Some),
            None => Ok(None),
        }
    };
    match tokio::join!(main.start(), work) {
        (Ok(main), Ok(work)) => Ok(Servers { main, work }),
        (Err(e), Ok(Some(work))) => {
            work.stop(grace).await;
            Err(e.into())
        }
        (Ok(main), Err(e)) => {
            main.stop(grace).await;
            Err(e.into())
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// A manager's endpoint on the service's own queues: its work methods are
/// passed on to the work queue (cast there, with the same context and
/// arguments), so a client that still sends work to the bare topic loses
/// nothing and no work runs without a slot.
struct WorkPassedOn {
    inner: Arc<dyn nova_rpc::dispatcher::Endpoint>,
    names: Vec<String>,
    forward: RpcClient,
    /// Whether the first pass was logged.
    told: std::sync::atomic::AtomicBool,
}

impl nova_rpc::dispatcher::Endpoint for WorkPassedOn {
    fn namespace(&self) -> Option<&str> {
        self.inner.namespace()
    }

    fn version(&self) -> nova_rpc::Version {
        self.inner.version()
    }

    fn has_method(&self, method: &str) -> bool {
        self.inner.has_method(method)
    }

    fn call(
        &self,
        ctx: nova_rpc::RequestContext,
        method: &str,
        args: nova_rpc::Args,
    ) -> nova_rpc::dispatcher::BoxFuture<nova_rpc::Result<nova_rpc::Payload>> {
        if !self.names.iter().any(|n| n == method) {
            return self.inner.call(ctx, method, args);
        }
        let to = self.forward.target().topic.clone();
        if !self.told.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(method, work_queue = %to, "work arrived on the topic's own queue; passing it on to the work queue (send it there)");
        }
        let mut forward = self.forward.clone();
        if let Some(ns) = self.inner.namespace() {
            forward = forward.with_target(Target::new(&to).with_namespace(ns));
        }
        let (method, version) = (method.to_owned(), self.inner.version().to_string());
        Box::pin(async move {
            let args: serde_json::Value =
                serde_json::from_str(args.as_str()).map_err(|e| nova_rpc::RpcError::Serialization(e.to_string()))?;
            forward.with_version(&version).cast(&ctx, &method, args).await?;
            Ok(nova_rpc::Payload::null())
        })
    }

    fn methods(&self) -> Vec<nova_rpc::dispatcher::MethodInfo> {
        self.inner.methods()
    }
}

/// The RPC servers of a service: its own, and its work queue's.
#[derive(Debug)]
struct Servers {
    main: RunningServer,
    work: Option<RunningServer>,
}

impl Servers {
    fn health(&self) -> Vec<nova_rpc::transport::Health> {
        std::iter::once(&self.main).chain(&self.work).map(RunningServer::health).collect()
    }

    /// Stop both together: the work queue's requests get the same grace.
    async fn stop(self, graceful: Duration) -> StopReport {
        let work = async {
            match self.work {
                Some(w) => Some(w.stop(graceful).await),
                None => None,
            }
        };
        let (main, work) = tokio::join!(self.main.stop(graceful), work);
        match work {
            Some(w) => StopReport {
                abandoned: main.abandoned.saturating_add(w.abandoned),
                requeued: main.requeued + w.requeued,
            },
            None => main,
        }
    }
}

/// Heartbeats into the service record. A database outage is logged once,
/// and its end once; RPC is served all along. A service that has not been
/// able to consume one of its queues for `service_down_time` stops
/// reporting, so it shows as down, and says why.
struct Report {
    records: ServiceRecords,
    id: i64,
    /// Where a change of the record (or of being up) is announced.
    notifications: Notifications,
    /// What was last announced.
    status: Arc<std::sync::Mutex<Option<ServiceStatusPayload>>>,
    /// The service version the record carries.
    version: i64,
    info: ServiceInfo,
    every: Duration,
    health: Vec<nova_rpc::transport::Health>,
    deaf_limit: Duration,
}

impl Report {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let (mut lost, mut deaf) = (false, false);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let deafest = self.health.iter().filter_map(|h| h.longest_deaf()).max_by_key(|(_, for_, _)| *for_);
            match deafest.filter(|(_, for_, _)| *for_ >= self.deaf_limit) {
                Some((queue, for_, why)) => {
                    if !deaf {
                        tracing::error!(queue, seconds = for_.as_secs(), reason = why, "cannot consume a queue for longer than service_down_time; no longer reporting this service up");
                        deaf = true;
                        self.announce(|s| s.up = false);
                    }
                    continue;
                }
                None if deaf => {
                    tracing::info!("consuming every queue again; reporting this service up");
                    deaf = false;
                }
                None => {}
            }
            lost = self.report(lost).await;
            if !lost {
                self.notice_changes().await;
            }
        }
    }

    /// Announce the status `change` makes, if it changes anything.
    fn announce(&self, change: impl FnOnce(&mut ServiceStatusPayload)) {
        let mut status = lock(&self.status);
        if let Some(s) = status.as_mut() {
            let before = s.clone();
            change(s);
            if s.differs(&before) {
                self.notifications.emit(&RequestContext::new(), Priority::Info, "service.update", &*s);
            }
        }
    }

    /// Read the record back and announce what an operator changed
    /// (disabled, forced down), or that the service is up again.
    async fn notice_changes(&self) {
        if !self.notifications.is_enabled() {
            return;
        }
        match self.records.get(&self.info.host, &self.info.binary).await {
            Ok(Some(record)) => self.announce(|s| *s = ServiceStatusPayload::new(&record, true)),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the service record back"),
        }
    }

    /// One heartbeat; whether the database is (still) unreachable.
    async fn report(&mut self, lost: bool) -> bool {
        let info = &self.info;
        let outcome = match self.records.report(self.id).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(host = %info.host, binary = %info.binary, "service record was deleted; creating it again");
                let version = self.version;
                self.records
                    .create_or_update(&info.host, &info.binary, &info.topic, version)
                    .await
                    .map(|r| self.id = r.id)
            }
            Err(e) => Err(e),
        };
        match (outcome, lost) {
            (Ok(()), true) => {
                tracing::info!("Recovered from being unable to report status.");
                false
            }
            (Ok(()), false) => false,
            (Err(e), false) => {
                report_failures().inc();
                tracing::error!(error = %e, "Lost connection to the database for reporting service status; still serving RPC.");
                true
            }
            (Err(e), true) => {
                report_failures().inc();
                tracing::debug!(error = %e, "still unable to report status");
                true
            }
        }
    }
}

/// A started service.
#[derive(Debug)]
pub struct RunningService {
    info: ServiceInfo,
    manager: ManagerHandle,
    servers: Servers,
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
    graceful: Duration,
    notifications: Notifications,
    /// The service's status as last announced (`None`: it keeps no record).
    status: Arc<std::sync::Mutex<Option<ServiceStatusPayload>>>,
}

impl RunningService {
    /// Who the service is.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// The manager's hooks (for `reset` on SIGHUP).
    pub fn manager(&self) -> &ManagerHandle {
        &self.manager
    }

    /// Stop consuming, finish in-flight requests, stop the loops and run
    /// `cleanup_host`, all within `graceful_shutdown_timeout`: a request, a
    /// periodic task or a hook still running then is abandoned with a log line.
    pub async fn stop(self) -> StopReport {
        let deadline = tokio::time::Instant::now() + self.graceful;
        let report = self.servers.stop(self.graceful).await;
        if report.abandoned > 0 {
            tracing::warn!("requests still running after graceful_shutdown_timeout were abandoned");
        }
        self.stop.send_replace(true);
        for mut l in self.loops {
            if tokio::time::timeout_at(deadline, &mut l).await.is_err() {
                tracing::warn!("a periodic task still running after graceful_shutdown_timeout was cancelled");
                l.abort();
            }
        }
        // The manager's background work gets what is left of the grace.
        self.info.background.shutdown(deadline).await;
        // The hook gets what is left of the grace, and at least a second.
        let left = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(left, self.manager.hooks.cleanup_host(&self.info)).await {
            Ok(Err(e)) => tracing::error!(error = %e, "cleanup_host failed"),
            Err(_) => tracing::warn!("cleanup_host did not finish within graceful_shutdown_timeout"),
            Ok(Ok(())) => {}
        }
        let down = lock(&self.status).take().map(|s| ServiceStatusPayload { up: false, ..s });
        if let Some(down) = down {
            self.notifications.emit(&RequestContext::new(), Priority::Info, "service.update", &down);
            // Notifications wait for no one: a second to say so, then go.
            self.notifications.flush(Duration::from_secs(1)).await;
        }
        tracing::info!(binary = %self.info.binary, requeued = report.requeued, "service stopped");
        report
    }
}
/// Report-loop rounds that could not reach the database, registered on first use.
pub fn report_failures() -> &'static prometheus_client::metrics::counter::Counter {
    static FAILURES: std::sync::OnceLock<prometheus_client::metrics::counter::Counter> = std::sync::OnceLock::new();
    FAILURES.get_or_init(|| {
        let failures = prometheus_client::metrics::counter::Counter::default();
        nova_rpc::metrics::register(
            "report_failures",
            "Report-loop rounds that could not reach the database",
            failures.clone(),
        );
        failures
    })
}
