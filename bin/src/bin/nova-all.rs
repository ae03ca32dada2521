//! `nova-all`: every service in one process, plus the HTTP gateway and
//! console. With nothing configured it runs on the embedded defaults:
//! `memory://` messaging, SQLite under `./nova-state`, and a compute allow-list
//! of harmless commands (`echo`, `sleep`, `true`, `false`), and
//! notifications on (`messagingv2`, shown live on the console's events
//! page) unless `[oslo_messaging_notifications] driver` says otherwise. With
//! `--transport-url`/`--database-connection` it runs the same on RabbitMQ
//! and PostgreSQL.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use nova_autoscale::{self as autoscale, AutoscaleOptions, Autoscaler};
use nova_core::{
    config::CommonArgs,
    launcher::{shutdown, stop_all, wait_for_stop_signal},
    notifications::Notifications,
    Bootstrap, LaunchError,
};
use nova_gateway::{self as gateway, Gateway};

/// Run the scheduler, a compute host, and the HTTP gateway in one process.
#[derive(Parser)]
#[command(name = "nova-all", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Where the gateway listens ([api] listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Allow auth_strategy = noauth on a non-loopback address.
    #[arg(long)]
    insecure: bool,
}

async fn run(cli: Cli) -> Result<(), LaunchError> {
    let own = [gateway::API_OPTIONS, autoscale::AUTOSCALE_OPTIONS].concat();
    let mut bootstrap = Bootstrap::new(cli.common, nova_services::registry(), &own).await?;
    // On its own defaults too, nova-all tells its console what happens.
    bootstrap.notifications =
        Notifications::from_config_or(&bootstrap.config, bootstrap.transport.clone(), &["messagingv2"]).await?;
    let auth = gateway::ApiOptions::auth(&bootstrap.config, cli.listen, cli.insecure)?;
    let listen = auth.options().listen;
    bootstrap.serve_metrics().await?;
    let mut running = Vec::new();
    for binary in ["nova-scheduler", "nova-compute", "nova-trace"] {
        let service = bootstrap.service(binary, None).await?;
        running.push(service.start().await?);
    }
    // The autoscaler, when [autoscale] names topics.
    let scaling = AutoscaleOptions::from_config(&bootstrap.config)?;
    let (stop_scaling, scaling_stopped) = tokio::sync::watch::channel(false);
    let scaler = if scaling.topics.is_empty() {
        None
    } else {
        if bootstrap.transport.options().transport_url.starts_with("memory:")
            && scaling.launcher == autoscale::LauncherKind::Process
        {
            return Err(LaunchError::Invalid(
                "[autoscale] launcher = process needs a broker: workers in other processes cannot share memory://"
                    .into(),
            ));
        }
        let launcher = Autoscaler::launcher_for(&scaling, &bootstrap.config, &bootstrap.args);
        Some(tokio::spawn(Autoscaler::new(bootstrap.transport.clone(), scaling, launcher).run(scaling_stopped)))
    };
    let gw = Gateway::from_bootstrap(&bootstrap, auth);
    let pin = nova_bin::compute_pin(&bootstrap).await?;
    let gw = gw.clone().with_resource(nova_services::gateway::resource_pinned(&gw, pin));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(gateway::serve(gw, async {
        let _ = stop_rx.await;
    }));
    tracing::info!("nova-all is up: console at http://{listen}/");
    tokio::select! {
        _ = wait_for_stop_signal(&bootstrap, &running) => {}
        served = http => {
            stop_all(running).await;
            return match served {
                Ok(Err(e)) => Err(nova_rpc::RpcError::Transport(format!("cannot serve HTTP on {listen}: {e}")).into()),
                _ => Ok(()),
            };
        }
    }
    let _ = stop_tx.send(());
    stop_scaling.send_replace(true);
    if let Some(s) = scaler {
        let _ = s.await;
    }
    shutdown(&bootstrap, running).await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match nova_core::launcher::run(run(cli)) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("nova-all: {e}");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nova-all: {e}");
            ExitCode::FAILURE
        }
    }
}
