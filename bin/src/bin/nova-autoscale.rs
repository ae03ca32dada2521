//! `nova-autoscale`: keep enough workers for the backlog of the configured
//! topics (`[autoscale]`), starting and stopping them with a launcher.

use std::process::ExitCode;

use clap::Parser;
use nova_autoscale::{AutoscaleOptions, Autoscaler, AUTOSCALE_OPTIONS};
use nova_core::config::CommonArgs;

/// Scale workers on the backlog of their topics' queues.
#[derive(Parser)]
#[command(name = "nova-autoscale", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

async fn run(cli: Cli) -> Result<(), String> {
    let setup = nova_core::connect_client(&cli.common, AUTOSCALE_OPTIONS).await.map_err(|e| e.to_string())?;
    let options = AutoscaleOptions::from_config(&setup.config).map_err(|e| e.to_string())?;
    if options.topics.is_empty() {
        return Err("[autoscale] topics is empty: nothing to scale".into());
    }
    if setup.transport.options().transport_url.starts_with("memory:") {
        return Err("memory:// is in-process only: workers of another process cannot share it".into());
    }
    if let Some(addr) = setup.options.metrics_listen {
        nova_core::metrics_listen::serve(addr).await.map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    }
    let launcher = Autoscaler::launcher_for(&options, &setup.config, &cli.common);
    let scaler = Autoscaler::new(setup.transport.clone(), options, launcher);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scaler.run(stopped));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot wait for SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: workers finish what they hold");
    stop.send_replace(true);
    let _ = running.await;
    setup.transport.close().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match nova_core::launcher::runtime() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nova-autoscale: {e}");
            ExitCode::FAILURE
        }
    }
}
