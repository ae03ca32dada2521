//! `nova-gateway`: the HTTP gateway and console alone, in front of services
//! running elsewhere on the same broker and database.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use nova_bin::gateway::{self, Gateway};
use nova_core::{config::CommonArgs, Bootstrap, LaunchError};

/// Serve JSON-over-HTTP calls into RPC, and the console.
#[derive(Parser)]
#[command(name = "nova-gateway", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Where to listen ([api] listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

async fn run(cli: Cli) -> Result<(), LaunchError> {
    let spec = nova_core::config::OptSpec {
        section: "api",
        name: "listen",
        default: "127.0.0.1:8774",
        help: "Address of the HTTP gateway and console.",
    };
    let bootstrap = Bootstrap::new(cli.common, nova_services::registry(), &[spec]).await?;
    bootstrap.serve_metrics().await?;
    let listen = match cli.listen {
        Some(l) => l,
        None => bootstrap.config.require("api", "listen")?,
    };
    let gw = Gateway::from_bootstrap(&bootstrap);
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
    gateway::serve(gw, listen, stop)
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
