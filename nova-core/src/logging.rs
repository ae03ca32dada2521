//! Logging with `tracing`: `RUST_LOG` or `--debug` choose the filter,
//! `--log-json` the format, and the filter can be changed while the
//! service runs (SIGHUP, or the `set_log_level` base API call) without a
//! restart.

use std::sync::OnceLock;

use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter used when neither `RUST_LOG` nor `--debug` says otherwise.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,sqlx=warn";

/// Install the process-wide subscriber. Later calls do nothing.
pub fn init(debug: bool, json: bool) {
    let spec = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        if debug {
            "debug,lapin=info,sqlx=info".to_owned()
        } else {
            DEFAULT_FILTER.to_owned()
        }
    });
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (layer, handle) = reload::Layer::new(filter);
    let json_layer =
        json.then(|| tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr));
    let subscriber = tracing_subscriber::registry().with(layer).with(json_layer).with(text_layer);
    #[cfg(feature = "otel")]
    let subscriber = subscriber.with(crate::otel::layer());
    if subscriber.try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Flush what logging still holds (the OpenTelemetry batch, with the
/// `otel` feature) as the process ends.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    crate::otel::shutdown();
}

/// The filter in force, e.g. `info,nova_rpc=debug`.
pub fn current_filter() -> Option<String> {
    FILTER.get().and_then(|h| h.with_current(|f| f.to_string()).ok())
}

/// Why a log filter was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not a filter `tracing` reads.
    #[error("invalid log filter {spec:?}: {reason}")]
    Invalid {
        /// The filter asked for.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This process's logging was not set up by [`init`].
    #[error("logging is not managed by nova-core in this process")]
    Unmanaged,
    /// The subscriber is gone.
    #[error("cannot apply the filter: {0}")]
    Reload(String),
}

/// Replace the filter. A bad filter is an error and leaves the old one in place.
pub fn set_filter(spec: &str) -> Result<String, FilterError> {
    let filter =
        EnvFilter::try_new(spec).map_err(|e| FilterError::Invalid { spec: spec.to_owned(), reason: e.to_string() })?;
    let handle = FILTER.get().ok_or(FilterError::Unmanaged)?;
    handle.reload(filter).map_err(|e| FilterError::Reload(e.to_string()))?;
    tracing::info!(filter = spec, "log filter changed");
    Ok(spec.to_owned())
}

#[cfg(test)]
mod tests {
    /// Crates that log through `log` (rustls, for one) reach the same subscriber.
    #[test]
    fn log_records_are_forwarded() {
        super::init(false, false);
        assert!(log::max_level() >= log::LevelFilter::Info, "init installs the `log` bridge");
        log::info!(target: "nova_core", "a record from the log crate");
    }
}
