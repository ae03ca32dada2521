//! Nova's base API, served by every service: namespace `baseapi`,
//! version `1.1`.
//!
//! * `ping(arg)` → `{"service": <binary>, "arg": arg}`, as Nova answers it;
//! * `describe()` → the service's methods with their arguments and types,
//!   and its API version (introspection, for the console and `nova-rpc`);
//! * `get_log_level()` / `set_log_level(filter)` → read or change the
//!   running service's `tracing` filter without a restart.

use std::sync::{Arc, OnceLock};

use nova_rpc::{
    dispatcher::{Endpoint, Router},
    RequestContext, RpcError, Version,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{logging, ServiceInfo};

/// The base API's namespace.
pub const NAMESPACE: &str = "baseapi";
/// The base API's version.
pub const VERSION: Version = Version::new(1, 1);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ping {
    arg: Value,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLevel {
    filter: String,
}

/// Whether `ctx` may use an admin method: always without an admin role,
/// else only signed and holding the role.
fn admin(role: Option<&str>, ctx: &RequestContext) -> Result<(), RpcError> {
    let Some(role) = role else { return Ok(()) };
    if ctx.signed_by.is_some() && ctx.roles.iter().any(|r| r == role) {
        return Ok(());
    }
    let why = format!("this method needs a signed request with role {role}");
    tracing::warn!(request_id = %ctx.request_id, "refused an admin method: {why}");
    Err(RpcError::remote("Forbidden", "nova_core.baseapi", why))
}

/// What `describe` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    /// Binary name.
    pub service: String,
    /// Node name.
    pub host: String,
    /// RPC topic.
    pub topic: String,
    /// The manager's name.
    pub manager: String,
    /// Every endpoint: namespace, version, methods.
    pub endpoints: Vec<Value>,
}

/// Build the base API endpoint for a service whose other endpoints are `others`.
///
/// With `admin_role`, the admin methods (`set_log_level`) serve only signed
/// requests ([`nova_rpc::signing`]) whose context carries that role.
pub fn endpoint(info: &ServiceInfo, manager: &str, others: &[Arc<dyn Endpoint>], admin_role: Option<&str>) -> Router {
    let admin_role = admin_role.map(str::to_owned);
    let service = info.binary.clone();
    let description: Arc<OnceLock<Description>> = Arc::default();
    let described = description.clone();
    let router = Router::new(VERSION)
        .namespace(NAMESPACE)
        .method("ping", move |_ctx: RequestContext, a: Ping| {
            let service = service.clone();
            async move { Ok::<_, RpcError>(json!({"service": service, "arg": a.arg})) }
        })
        .describe("ping", &[("arg", "Value")], "Answer {service, arg}: a liveness check.")
        .method("describe", move |_ctx: RequestContext, _: NoArgs| {
            let d = described.get().cloned();
            async move { d.ok_or_else(|| RpcError::remote("NotReady", "nova_core.baseapi", "service is starting")) }
        })
        .describe("describe", &[], "The service's endpoints, methods, arguments and versions.")
        .method("get_log_level", |_ctx: RequestContext, _: NoArgs| async move {
            logging::current_filter().ok_or_else(|| {
                RpcError::remote(
                    "LoggingNotManaged",
                    "nova_core.logging",
                    "logging is not managed by nova-core in this process",
                )
            })
        })
        .describe("get_log_level", &[], "The tracing filter in force.")
        .method("set_log_level", move |ctx: RequestContext, a: SetLevel| {
            let allowed = admin(admin_role.as_deref(), &ctx);
            async move {
                allowed?;
                logging::set_filter(&a.filter)
                    .map_err(|e| RpcError::remote("InvalidLogFilter", "nova_core.logging", e.to_string()))
            }
        })
        .describe("set_log_level", &[("filter", "String")], "Change the tracing filter, e.g. nova_rpc=debug.");
    let endpoint_json = |e: &dyn Endpoint| json!({"namespace": e.namespace(), "version": e.version().to_string(), "methods": e.methods()});
    let mut endpoints: Vec<Value> = others.iter().map(|e| endpoint_json(e.as_ref())).collect();
    endpoints.push(endpoint_json(&router));
    let _ = description.set(Description {
        service: info.binary.clone(),
        host: info.host.clone(),
        topic: info.topic.clone(),
        manager: manager.to_owned(),
        endpoints,
    });
    router
}
