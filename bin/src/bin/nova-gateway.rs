//! `nova-gateway`: the HTTP gateway and console alone, in front of services
//! running elsewhere on the same broker and database.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use nova_core::{config::CommonArgs, Bootstrap, LaunchError};
use nova_gateway::{self as gateway, Gateway};

/// Serve JSON-over-HTTP calls into RPC, and the console.
#[derive(Parser)]
#[command(name = "nova-gateway", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Where to listen ([api] listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Allow auth_strategy = noauth on a non-loopback address.
    #[arg(long)]
    insecure: bool,
}

async fn run(cli: Cli) -> Result<(), LaunchError> {
    let bootstrap = Bootstrap::new(cli.common, nova_services::registry(), gateway::API_OPTIONS).await?;
    let auth = gateway::ApiOptions::auth(&bootstrap.config, cli.listen, cli.insecure)?;
    let listen = auth.options().listen;
    bootstrap.serve_metrics().await?;
    let gw = Gateway::from_bootstrap(&bootstrap, auth);
    let pin = nova_bin::compute_pin(&bootstrap).await?;
    let gw = gw.clone().with_resource(nova_services::gateway::resource_pinned(&gw, pin));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        if let Ok(mut t) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            t.recv().await;
        }
    };
    let stop = async move {
        tokio::select! { _ = shutdown => {}, _ = term => {} }
    };
    gateway::serve(gw, stop)
        .await
        .map_err(|e| nova_rpc::RpcError::Transport(format!("cannot serve HTTP on {listen}: {e}")))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match nova_core::launcher::runtime() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("nova-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nova-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
