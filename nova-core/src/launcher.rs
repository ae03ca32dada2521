//! From `main` to a running service, and the signals that end it.
//!
//! A per-topic binary is one line:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     nova_core::launch("nova-compute", "Runs tasks on this host.", nova_core::ManagerRegistry::new())
//! }
//! ```
//!
//! [`launch`] parses the common flags, loads the configuration, sets up
//! logging, connects the transport and the database (running migrations),
//! resolves `<topic>_manager`, starts the service and waits for a signal:
//! SIGTERM or Ctrl-C stop it gracefully (a second Ctrl-C exits at once),
//! SIGHUP re-reads the configuration, applies the log level and calls the
//! manager's `reset`.

use std::{process::ExitCode, sync::Arc};

use clap::{Args, FromArgMatches};
use nova_rpc::transport::{self, Transport};

use crate::{
    config::{CommonArgs, Config, ConfigError, CoreOptions, OptSpec, CORE_OPTIONS},
    db::{services::ServiceRecords, Database, DbError},
    logging,
    manager::BoxError,
    registry::{ManagerDeps, ManagerRegistry, UnknownManager},
    service::{RunningService, Service, ServiceError, ServiceOptions},
    ServiceInfo,
};

/// Why a binary could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The transport.
    #[error(transparent)]
    Rpc(#[from] nova_rpc::RpcError),
    /// `<topic>_manager` names no known manager.
    #[error(transparent)]
    UnknownManager(#[from] UnknownManager),
    /// The manager's factory failed.
    #[error("cannot build manager {name}: {error}")]
    Manager {
        /// Manager name.
        name: String,
        /// Its error.
        error: BoxError,
    },
    /// The service failed to start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A program's own settings cannot work together.
    #[error("{0}")]
    Invalid(String),
    /// The database schema lacks migrations this release needs.
    #[error("the database schema is older than this release needs (missing migrations {}): run `nova-manage db sync`", missing.join(", "))]
    SchemaTooOld {
        /// The migrations it lacks.
        missing: Vec<&'static str>,
    },
}

/// Everything a process needs before it starts services: configuration,
/// transport and database.
#[derive(Clone)]
pub struct Bootstrap {
    /// The command-line flags.
    pub args: CommonArgs,
    /// Every declared option.
    pub specs: Vec<OptSpec>,
    /// The merged configuration.
    pub config: Arc<Config>,
    /// The framework's options.
    pub options: CoreOptions,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// The database (migrated).
    pub db: Database,
    /// The managers this process knows.
    pub registry: ManagerRegistry,
    /// Notifications (`[oslo_messaging_notifications]`, `[notifications]`).
    pub notifications: crate::notifications::Notifications,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap").field("host", &self.options.host).finish()
    }
}

/// Load the configuration for `args` (defaults < files < env < flags).
pub fn load_config(args: &CommonArgs, specs: &[OptSpec]) -> Result<Config, ConfigError> {
    Config::load(specs, &args.config_file, args.config_dir.as_deref(), &args.overrides()?)
}

/// What a client-only program (a CLI, a script's helper) needs: its
/// configuration and a connected transport, and no database.
#[derive(Debug)]
pub struct ClientSetup {
    /// The loaded configuration.
    pub config: Config,
    /// The framework's options read from it.
    pub options: CoreOptions,
    /// The transport `transport_url` names, with `[oslo_messaging_rabbit]` and `[rpc]` applied.
    pub transport: Arc<dyn Transport>,
}

/// Load the configuration as a service would (defaults < files <
/// `NOVA_…` environment < flags), start logging, and connect the
/// transport; `extra` declares the program's own options.
///
/// # Errors
/// A bad option (named, with where it was set) or an unusable transport URL.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), nova_core::LaunchError> {
/// use clap::Parser;
/// use nova_core::config::CommonArgs;
/// use nova_rpc::{RequestContext, RpcClient, Target};
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     common: CommonArgs,
/// }
/// let setup = nova_core::launcher::connect_client(&Cli::parse().common, &[]).await?;
/// let compute = RpcClient::new(setup.transport, Target::new("compute"));
/// let tasks = compute.call(&RequestContext::new(), "list_tasks", serde_json::json!({})).await?;
/// # Ok(()) }
/// ```
pub async fn connect_client(args: &CommonArgs, extra: &[OptSpec]) -> Result<ClientSetup, LaunchError> {
    let mut specs = CORE_OPTIONS.to_vec();
    specs.extend_from_slice(extra);
    let config = load_config(args, &specs)?;
    let options = CoreOptions::from_config(&config)?;
    logging::init(options.debug, options.log_json);
    for unknown in config.unknown() {
        tracing::warn!(option = %unknown, "ignoring unknown option");
    }
    let transport = transport::connect(options.transport.clone()).await?;
    Ok(ClientSetup { config, options, transport })
}

/// Every migration a registry's services need, the service records' first.
pub fn migrations(registry: &ManagerRegistry) -> Vec<crate::db::Migration> {
    let mut migrations = crate::db::services::MIGRATIONS.to_vec();
    for e in registry.entries() {
        migrations.extend_from_slice(e.migrations);
    }
    migrations
}

/// Bring the schema to what `registry` needs (`auto_migrate`), or check
/// that it is there. A schema a newer release migrated is logged and used:
/// within a release pair, migrations only add.
async fn schema(db: &Database, registry: &ManagerRegistry, auto_migrate: bool) -> Result<(), LaunchError> {
    let migrations = migrations(registry);
    let state = db.schema(&migrations).await?;
    if !state.unknown.is_empty() {
        tracing::warn!(
            unknown = ?state.unknown,
            "the database schema is newer than this release knows (a newer release migrated it); running on it"
        );
    }
    if auto_migrate {
        db.migrate(&migrations).await?;
    } else if !state.missing.is_empty() {
        return Err(LaunchError::SchemaTooOld { missing: state.missing });
    }
    Ok(())
}

impl Bootstrap {
    /// Load config, start logging, connect transport and database, migrate.
    pub async fn new(args: CommonArgs, registry: ManagerRegistry, extra: &[OptSpec]) -> Result<Self, LaunchError> {
        let mut specs = CORE_OPTIONS.to_vec();
        specs.extend(registry.option_specs());
        specs.extend_from_slice(extra);
        let config = load_config(&args, &specs)?;
        let options = CoreOptions::from_config(&config)?;
        logging::init(options.debug, options.log_json);
        for unknown in config.unknown() {
            tracing::warn!(option = %unknown, "ignoring unknown option");
        }
        let db = Database::connect(&options.database_connection).await?;
        schema(&db, &registry, options.auto_migrate).await?;
        let transport = transport::connect(options.transport.clone()).await?;
        let notifications = crate::notifications::Notifications::from_config(&config, transport.clone()).await?;
        Ok(Self { args, specs, config: Arc::new(config), options, transport, db, registry, notifications })
    }

    /// Serve `/metrics` on `metrics_listen`, when it is set.
    pub async fn serve_metrics(&self) -> Result<(), LaunchError> {
        if let Some(addr) = self.options.metrics_listen {
            crate::metrics_listen::serve(addr).await.map_err(|e| {
                LaunchError::from(nova_rpc::RpcError::Transport(format!("cannot serve metrics on {addr}: {e}")))
            })?;
        }
        Ok(())
    }

    /// Build the service for `binary` (topic = binary without `nova-`),
    /// with the manager named by `--manager` or `[DEFAULT] <topic>_manager`.
    pub async fn service(&self, binary: &str, manager_override: Option<&str>) -> Result<Service, LaunchError> {
        let topic = binary.strip_prefix("nova-").unwrap_or(binary).to_owned();
        let option = format!("{topic}_manager");
        let name = match manager_override {
            Some(m) => m.to_owned(),
            None => self
                .config
                .raw("DEFAULT", &option)
                .map(str::to_owned)
                .or_else(|| self.registry.default_for(&topic).map(str::to_owned))
                .ok_or_else(|| ConfigError::Missing { section: "DEFAULT".into(), name: option.clone() })?,
        };
        let entry = self.registry.resolve(&name)?;
        let info = ServiceInfo::new(&self.options.host, binary, &topic);
        let notifier = self.notifications.prepare(&format!("{binary}:{}", self.options.host));
        let deps = ManagerDeps {
            notifier: notifier.clone(),
            service: info.clone(),
            config: self.config.clone(),
            options: self.options.clone(),
            transport: self.transport.clone(),
            db: self.db.clone(),
        };
        let manager = entry.build(deps).await.map_err(|error| LaunchError::Manager { name: name.clone(), error })?;
        Ok(Service::create(self.transport.clone(), manager)
            .info(info)
            .records(ServiceRecords::new(self.db.clone()))
            .notifications(notifier)
            .options(ServiceOptions::from(&self.options)))
    }

    /// SIGHUP: re-read the configuration files and apply what can change at
    /// run time (the log level), then call every manager's `reset`.
    pub async fn reload(&self, running: &[RunningService]) {
        let loaded = load_config(&self.args, &self.specs).and_then(|c| CoreOptions::from_config(&c).map(|o| (c, o)));
        let config = match loaded {
            Ok((config, options)) => {
                let filter = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
                    if options.debug {
                        "debug,lapin=info,sqlx=info".into()
                    } else {
                        logging::DEFAULT_FILTER.into()
                    }
                });
                if let Err(e) = logging::set_filter(&filter) {
                    tracing::warn!(error = %e, "cannot apply the log level");
                }
                tracing::info!("configuration reloaded");
                Some(config)
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; keeping the old one");
                None
            }
        };
        for s in running {
            if let Some(c) = &config {
                s.manager().hooks.reload(c).await;
            }
            s.manager().hooks.reset().await;
        }
    }
}

/// Wait for SIGTERM, Ctrl-C or SIGHUP; reload on SIGHUP. Returns when the
/// process should stop. A second Ctrl-C after that exits at once.
pub async fn wait_for_stop_signal(bootstrap: &Bootstrap, running: &[RunningService]) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received; stopping gracefully"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt received; stopping gracefully (again to exit now)"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP received; reloading"); bootstrap.reload(running).await; }
        }
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second interrupt: exiting now");
            std::process::exit(130);
        }
    });
}

/// Stop every service, in reverse start order.
pub async fn stop_all(running: Vec<RunningService>) {
    for s in running.into_iter().rev() {
        s.stop().await;
    }
}

/// Stop every service and close the transport, giving up after
/// `graceful_shutdown_timeout` even while the broker is blocked or gone.
pub async fn shutdown(bootstrap: &Bootstrap, running: Vec<RunningService>) {
    let limit = bootstrap.options.graceful_shutdown_timeout;
    let stop = async {
        stop_all(running).await;
        bootstrap.transport.close().await;
    };
    if tokio::time::timeout(limit, stop).await.is_err() {
        tracing::warn!(
            "shutdown took longer than graceful_shutdown_timeout; abandoning the requests, periodic tasks and hooks still running"
        );
    }
}

/// Run `main` on the [`runtime`], then leave without waiting for work that
/// never ends (a `#[rpc(blocking)]` method stuck in a system call would
/// otherwise hold the process forever).
pub fn run<F: std::future::Future>(main: F) -> std::io::Result<F::Output> {
    let rt = runtime()?;
    let out = rt.block_on(main);
    rt.shutdown_timeout(std::time::Duration::from_millis(250));
    logging::shutdown();
    Ok(out)
}

/// Parse the common flags for `binary`, with `about` as its help text and
/// `version` as what `-V` prints.
pub fn parse_args(binary: &'static str, about: impl Into<String>, version: impl Into<String>) -> CommonArgs {
    // Once per process: clap keeps its version as a `&'static str`.
    let version: &'static str = Box::leak(version.into().into_boxed_str());
    // The flags' own doc would otherwise stand as the command's about.
    let command = CommonArgs::augment_args(clap::Command::new(binary)).about(about.into()).version(version);
    let matches = command.get_matches();
    CommonArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// What `-V` of a binary built on nova-rs says: its package's version
/// (when known) and the framework's.
fn version_line(package: &str) -> String {
    let framework = concat!("nova-rs ", env!("CARGO_PKG_VERSION"));
    if package.is_empty() {
        format!("({framework})")
    } else {
        format!("{package} ({framework})")
    }
}

/// The tokio runtime every binary runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Run a per-topic service binary; see the module docs.
pub fn launch(binary: &'static str, about: &'static str, registry: ManagerRegistry) -> ExitCode {
    launch_with(binary, parse_args(binary, about, version_line("")), registry)
}

/// Run `binary` serving the one manager `make` builds: its topic is the
/// binary's name without `nova-` (`nova-greeter` serves `greeter`), and
/// `-V` prints the version of the manager's package.
///
/// ```no_run
/// use nova_core::prelude::*;
///
/// #[derive(Default)]
/// struct Greeter;
///
/// #[rpc_api(version = "1.0")]
/// impl Greeter {
///     pub async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
///         Ok(format!("Hello, {name}!"))
///     }
/// }
///
/// impl Manager for Greeter {}
///
/// fn main() -> std::process::ExitCode {
///     nova_core::launch_manager("nova-greeter", Greeter::default)
/// }
/// ```
pub fn launch_manager<M, F>(binary: &'static str, make: F) -> ExitCode
where
    M: crate::Manager + crate::RpcApi,
    F: Fn() -> M + Send + Sync + 'static,
{
    let topic = binary.strip_prefix("nova-").unwrap_or(binary);
    let name = std::any::type_name::<M>();
    let make = Arc::new(make);
    let entry = crate::ManagerEntry::new(name, move |_deps| {
        let make = make.clone();
        async move { Ok::<_, BoxError>(crate::ManagerHandle::new(Arc::new(make()))) }
    });
    let about = format!("Serves the {topic} API ({name}) over RPC.");
    let args = parse_args(binary, about, version_line(M::PACKAGE_VERSION));
    launch_with(binary, args, ManagerRegistry::new().register(entry.default_for(topic)))
}

fn launch_with(binary: &'static str, args: CommonArgs, registry: ManagerRegistry) -> ExitCode {
    let outcome = run(async move {
        let manager = args.manager.clone();
        let bootstrap = Bootstrap::new(args, registry, &[]).await?;
        bootstrap.serve_metrics().await?;
        let service = bootstrap.service(binary, manager.as_deref()).await?;
        let running = vec![service.start().await?];
        wait_for_stop_signal(&bootstrap, &running).await;
        shutdown(&bootstrap, running).await;
        Ok::<_, LaunchError>(())
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("{binary}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{binary} failed to start");
            eprintln!("{binary}: {e}");
            ExitCode::FAILURE
        }
    }
}
