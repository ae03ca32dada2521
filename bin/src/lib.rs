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
