//! What the composed binaries share: loading the configuration a
//! command-line tool needs, every program's options (for the sample
//! configuration and the reference), and the `nova-rpc` CLI's own modules.

use nova_core::config::{CommonArgs, Config, CoreOptions, CORE_OPTIONS};

pub mod cli;

/// Load the configuration and the framework options for a tool (no
/// services): defaults < files < environment < flags, plus the example
/// services' options so their sections are not reported as unknown.
pub fn tool_options(args: &CommonArgs) -> anyhow::Result<(Config, CoreOptions)> {
    let specs = option_specs();
    let config = nova_core::launcher::load_config(args, &specs)?;
    let options = CoreOptions::from_config(&config)?;
    nova_core::logging::init(options.debug, options.log_json);
    for unknown in config.unknown() {
        tracing::warn!(option = %unknown, "ignoring unknown option");
    }
    Ok((config, options))
}

/// Every option of every nova-rs program: the framework's, the example
/// services', the gateway's and the autoscaler's (what the sample
/// configuration and the reference document).
pub fn option_specs() -> Vec<nova_core::config::OptSpec> {
    let mut specs = CORE_OPTIONS.to_vec();
    specs.extend(nova_services::registry().option_specs());
    specs.extend_from_slice(nova_gateway::API_OPTIONS);
    specs.extend_from_slice(nova_autoscale::AUTOSCALE_OPTIONS);
    specs
}

/// The pin of the gateway's compute client (`[upgrade_levels] compute`):
/// worked out now, and again on every SIGHUP with the configuration read
/// again, for as long as the process runs.
pub async fn compute_pin(
    bootstrap: &nova_core::Bootstrap,
) -> Result<nova_services::compute::ComputePin, nova_core::LaunchError> {
    let pin = nova_services::compute::ComputePin::default();
    let records = nova_core::db::services::ServiceRecords::new(bootstrap.db.clone());
    let down_after = bootstrap.options.service_down_time;
    pin.refresh(&bootstrap.config, &records, down_after)
        .await
        .map_err(|e| nova_core::LaunchError::Invalid(e.to_string()))?;
    let (args, specs, watched) = (bootstrap.args.clone(), bootstrap.specs.clone(), pin.clone());
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| nova_core::LaunchError::Invalid(format!("cannot wait for SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let refreshed = match nova_core::launcher::load_config(&args, &specs) {
                Ok(config) => watched.refresh(&config, &records, down_after).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = refreshed {
                tracing::error!(error = %e, "keeping the gateway's compute pin");
            }
        }
    });
    Ok(pin)
}
