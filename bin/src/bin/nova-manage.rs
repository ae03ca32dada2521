//! `nova-manage service list|enable|disable|force-down|delete`: the
//! operator's view of the `services` table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nova_core::{
    config::CommonArgs,
    db::{
        services::{is_up, AdminAction, ServiceRecords, MIGRATIONS},
        Database,
    },
};

/// Manage nova-rs service records.
#[derive(Parser)]
#[command(name = "nova-manage", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Service records.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The gateway's policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The database schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Rolling upgrades.
    #[command(subcommand)]
    Upgrade(UpgradeCommand),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply every migration this release's services need.
    Sync,
    /// Print the schema's migrations: applied, missing, and unknown to this release.
    Version,
}

#[derive(Subcommand)]
enum UpgradeCommand {
    /// Report compute hosts too old for this release, and pins left set
    /// once every host is upgraded (exit 0 fine, 1 warning, 2 failure).
    Check,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the default policy (Markdown): every target, its default rule, what it guards.
    Reference,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a sample nova.conf documenting every option with its default.
    Sample,
    /// Print the configuration reference (Markdown) of every option.
    Reference,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// List services with their state (up/down) and status (enabled/disabled).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Enable scheduling to a service.
    Enable { host: String, binary: String },
    /// Disable scheduling to a service.
    Disable {
        host: String,
        binary: String,
        /// Why (shown in `list`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Mark a service down whatever its heartbeats say (or lift it with --unset).
    ForceDown {
        host: String,
        binary: String,
        /// Lift a forced down.
        #[arg(long)]
        unset: bool,
    },
    /// Soft-delete a service record.
    Delete { host: String, binary: String },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cmd = match cli.command {
        Top::Config(what) => {
            let specs = nova_bin::option_specs();
            match what {
                ConfigCommand::Sample => print!("{}", nova_core::config::Config::sample(&specs)),
                ConfigCommand::Reference => print!("{}", nova_core::config::Config::reference(&specs)),
            }
            return Ok(());
        }
        Top::Policy(PolicyCommand::Reference) => {
            print!("{}", nova_gateway::Policy::reference());
            return Ok(());
        }
        Top::Service(cmd) => cmd,
        Top::Db(cmd) => return db(&cli.common, cmd).await,
        Top::Upgrade(UpgradeCommand::Check) => return upgrade_check(&cli.common).await,
    };
    let (_, options) = nova_bin::tool_options(&cli.common)?;
    let db = Database::connect(&options.database_connection).await?;
    db.migrate(MIGRATIONS).await?;
    let records = ServiceRecords::new(db);
    let (host, binary, action) = match cmd {
        ServiceCommand::List { json, topic } => {
            return list(&records, topic.as_deref(), options.service_down_time, json).await;
        }
        ServiceCommand::Enable { host, binary } => (host, binary, AdminAction::Enable),
        ServiceCommand::Disable { host, binary, reason } => (host, binary, AdminAction::Disable(reason)),
        ServiceCommand::ForceDown { host, binary, unset } => (host, binary, AdminAction::ForceDown(!unset)),
        ServiceCommand::Delete { host, binary } => (host, binary, AdminAction::Delete),
    };
    if !records.admin(&host, &binary, &action).await? {
        anyhow::bail!("no service {binary} on host {host}");
    }
    println!("{action:?}: {binary} on {host}");
    Ok(())
}

/// `nova-manage db sync|version`.
async fn db(common: &CommonArgs, cmd: DbCommand) -> anyhow::Result<()> {
    let (_, options) = nova_bin::tool_options(common)?;
    let db = Database::connect(&options.database_connection).await?;
    let migrations = nova_core::launcher::migrations(&nova_services::registry());
    if let DbCommand::Sync = cmd {
        db.migrate(&migrations).await?;
    }
    let state = db.schema(&migrations).await?;
    println!(
        "schema: {} migration(s) applied, latest {}",
        state.applied.len(),
        state.applied.last().map_or("none", String::as_str)
    );
    if !state.missing.is_empty() {
        println!("missing (run `nova-manage db sync`): {}", state.missing.join(", "));
    }
    if !state.unknown.is_empty() {
        println!("newer than this release: {}", state.unknown.join(", "));
    }
    Ok(())
}

/// `nova-manage upgrade check`, as `nova-status upgrade check` reports.
async fn upgrade_check(common: &CommonArgs) -> anyhow::Result<()> {
    use nova_services::compute::VERSIONS;
    let (config, options) = nova_bin::tool_options(common)?;
    let db = Database::connect(&options.database_connection).await?;
    db.migrate(MIGRATIONS).await?;
    let now = chrono::Utc::now().naive_utc();
    let live: Vec<_> = ServiceRecords::new(db)
        .list(Some("compute"))
        .await?
        .into_iter()
        .filter(|r| r.binary == "nova-compute" && r.deleted == 0 && is_up(r, options.service_down_time, now))
        .collect();
    // As Nova: this release works with hosts one release (service version) behind.
    let too_old: Vec<String> = live
        .iter()
        .filter(|r| r.version < VERSIONS.current - 1)
        .map(|r| format!("{} (service version {})", r.host, r.version))
        .collect();
    let pin = config.raw("upgrade_levels", "compute").unwrap_or("").trim().to_owned();
    let all_current = !live.is_empty() && live.iter().all(|r| r.version >= VERSIONS.current);
    let mut worst = 0;
    if too_old.is_empty() {
        println!("compute hosts: OK ({} live, this release is service version {})", live.len(), VERSIONS.current);
    } else {
        worst = 2;
        println!("compute hosts: Failure: too old for this release (upgrade them first): {}", too_old.join(", "));
    }
    if all_current && !pin.is_empty() && pin != "auto" {
        worst = worst.max(1);
        println!("[upgrade_levels] compute = {pin}: Warning: every live host is at service version {}; remove the pin and SIGHUP the schedulers", VERSIONS.current);
    } else {
        println!("[upgrade_levels] compute: OK ({})", if pin.is_empty() { "not pinned" } else { pin.as_str() });
    }
    if worst > 0 {
        std::process::exit(worst);
    }
    Ok(())
}

/// `nova-manage service list`: a table, or JSON, with each record's state.
async fn list(
    records: &ServiceRecords,
    topic: Option<&str>,
    down_after: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().naive_utc();
    let rows = records.list(topic).await?;
    let state = |r: &nova_core::db::services::ServiceRecord| if is_up(r, down_after, now) { "up" } else { "down" };
    let status = |r: &nova_core::db::services::ServiceRecord| if r.disabled { "disabled" } else { "enabled" };
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["state"] = state(r).into();
                v["status"] = status(r).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<20} {:<16} {:<12} {:<8} {:<6} {:<9} {:<20} Disabled Reason",
        "Id", "Host", "Binary", "Topic", "Version", "State", "Status", "Updated At"
    );
    for r in &rows {
        let updated = r.updated_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        let reason = r.disabled_reason.as_deref().unwrap_or_default();
        let (id, host, binary, topic, version) = (r.id, &r.host, &r.binary, &r.topic, r.version);
        let (state, status) = (state(r), status(r));
        println!(
            "{id:<5} {host:<20} {binary:<16} {topic:<12} {version:<8} {state:<6} {status:<9} {updated:<20} {reason}"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = nova_core::launcher::runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nova-manage: {e:#}");
            ExitCode::FAILURE
        }
    }
}
