//! The flags every service binary accepts.

use std::path::PathBuf;

/// Common flags of every nova-rs binary. Flatten into a binary's own
/// `clap::Parser` with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Read options from this INI file (repeatable; later files win).
    #[arg(long = "config-file", value_name = "PATH", global = true)]
    pub config_file: Vec<PathBuf>,
    /// Also read every *.conf file in this directory, in name order.
    #[arg(long = "config-dir", value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    /// This node's name ([DEFAULT] host).
    #[arg(long, value_name = "NAME", global = true)]
    pub host: Option<String>,
    /// Messaging transport URL ([DEFAULT] transport_url), e.g. rabbit://user:pass@host:5672/.
    /// A URL with a password shows in the process list: prefer
    /// --transport-url-file, NOVA_TRANSPORT_URL or a config file.
    #[arg(long = "transport-url", value_name = "URL", hide_default_value = true, global = true)]
    pub transport_url: Option<String>,
    /// Read the transport URL from this file (kept out of the process list).
    #[arg(long = "transport-url-file", value_name = "PATH", global = true, conflicts_with = "transport_url")]
    pub transport_url_file: Option<PathBuf>,
    /// Topic exchange name ([DEFAULT] control_exchange).
    #[arg(long = "control-exchange", value_name = "NAME", global = true)]
    pub control_exchange: Option<String>,
    /// Database URL ([database] connection), e.g. postgresql://user@host/nova.
    /// A password in it shows in the process list: prefer
    /// --database-connection-file, NOVA_DATABASE__CONNECTION or a config file.
    #[arg(long = "database-connection", value_name = "URL", global = true)]
    pub database_connection: Option<String>,
    /// Read the database URL from this file (kept out of the process list).
    #[arg(
        long = "database-connection-file",
        value_name = "PATH",
        global = true,
        conflicts_with = "database_connection"
    )]
    pub database_connection_file: Option<PathBuf>,
    /// The manager to run ([DEFAULT] <topic>_manager), e.g. nova_services::compute::ComputeManager.
    #[arg(long, value_name = "NAME", global = true)]
    pub manager: Option<String>,
    /// Directory for local state ([DEFAULT] state_path).
    #[arg(long = "state-path", value_name = "DIR", global = true)]
    pub state_path: Option<PathBuf>,
    /// Serve Prometheus metrics on this address ([DEFAULT] metrics_listen).
    #[arg(long = "metrics-listen", value_name = "ADDR", global = true)]
    pub metrics_listen: Option<String>,
    /// Log at debug level ([DEFAULT] debug).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log one JSON object per line ([DEFAULT] log_json).
    #[arg(long = "log-json", global = true)]
    pub log_json: bool,
}

/// The first line of a secret's file, trimmed.
fn secret_from(path: &std::path::Path) -> Result<String, super::ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| super::ConfigError::Unreadable { file: path.to_owned(), reason: e.to_string() })?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

impl CommonArgs {
    /// The flags that were given, as `(section, option, value, flag)`, with
    /// the secrets named by `--…-file` flags read.
    ///
    /// # Errors
    ///
    /// A secret's file cannot be read.
    pub fn overrides(&self) -> Result<Vec<(&'static str, &'static str, String, &'static str)>, super::ConfigError> {
        let transport_url = match &self.transport_url_file {
            Some(path) => Some(secret_from(path)?),
            None => self.transport_url.clone(),
        };
        let database_connection = match &self.database_connection_file {
            Some(path) => Some(secret_from(path)?),
            None => self.database_connection.clone(),
        };
        let mut out = Vec::new();
        let mut put = |section, name, value: Option<String>, flag| {
            if let Some(v) = value {
                out.push((section, name, v, flag));
            }
        };
        put("DEFAULT", "host", self.host.clone(), "--host");
        put("DEFAULT", "transport_url", transport_url, "--transport-url");
        put("DEFAULT", "control_exchange", self.control_exchange.clone(), "--control-exchange");
        put("database", "connection", database_connection, "--database-connection");
        put("DEFAULT", "state_path", self.state_path.as_ref().map(|p| p.display().to_string()), "--state-path");
        put("DEFAULT", "metrics_listen", self.metrics_listen.clone(), "--metrics-listen");
        put("DEFAULT", "debug", self.debug.then(|| "true".to_owned()), "--debug");
        put("DEFAULT", "log_json", self.log_json.then(|| "true".to_owned()), "--log-json");
        Ok(out)
    }
}
