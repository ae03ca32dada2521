//! The process's metrics registry, in Prometheus text format, on
//! `prometheus-client`.
//!
//! This module owns the registry and nothing it holds: each part of
//! nova-rs registers its own families beside the code that counts them,
//! the first time it counts. The per-method families are the
//! [`MetricsLayer`](crate::layer::metrics::MetricsLayer)'s, the AMQP
//! counters the [AMQP transport's](crate::transport::amqp::metrics), the
//! tracer's in [`layer::trace`](crate::layer::trace); `nova-core`, the
//! gateway, the autoscaler and the trace collector register theirs the
//! same way. [`render`] gives the text a `/metrics` endpoint serves.
//!
//! ```
//! use prometheus_client::metrics::counter::Counter;
//!
//! let widgets = Counter::<u64>::default();
//! nova_rpc::metrics::register("widgets_made", "Widgets made", widgets.clone());
//! widgets.inc();
//! assert!(nova_rpc::metrics::render().contains("nova_widgets_made_total 1"));
//! ```

use std::sync::{Mutex, OnceLock};

use prometheus_client::registry::{Metric, Registry};

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix("nova")))
}

/// Register a family (named without the `nova_` prefix, which every
/// family gets) so that it appears in [`render`]. Register each family
/// once, typically from the `OnceLock` that holds a module's families.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    crate::lock(registry()).register(name, help, metric);
}

/// Every registered family in Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &crate::lock(registry())).is_err() {
        out.clear();
    }
    out
}
