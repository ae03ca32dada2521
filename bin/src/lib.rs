//! Shared pieces of the nova-rs binaries: loading the configuration a
//! command-line tool needs, and printing results.

use nova_core::config::{CommonArgs, Config, CoreOptions, CORE_OPTIONS};

/// Load the configuration and the framework options for a tool (no
/// services): defaults < files < environment < flags, plus the example
/// services' options so their sections are not reported as unknown.
pub fn tool_options(args: &CommonArgs) -> anyhow::Result<(Config, CoreOptions)> {
    let mut specs = CORE_OPTIONS.to_vec();
    specs.extend(nova_services::registry().option_specs());
    specs.extend_from_slice(gateway::API_OPTIONS);
    specs.extend_from_slice(autoscale::AUTOSCALE_OPTIONS);
    let config = nova_core::launcher::load_config(args, &specs)?;
    let options = CoreOptions::from_config(&config)?;
    nova_core::logging::init(options.debug, options.log_json);
    for unknown in config.unknown() {
        tracing::warn!(option = %unknown, "ignoring unknown option");
    }
    Ok((config, options))
}

pub mod autoscale;
pub mod bench;
pub mod gateway;
pub mod mount;
pub mod tasks_api;
