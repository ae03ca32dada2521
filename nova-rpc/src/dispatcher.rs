//! From a decoded request to a method: oslo.messaging's dispatch rules.
//!
//! A server holds one or more [`Endpoint`]s, each with a namespace and an
//! API version. The [`Dispatcher`] picks the first endpoint whose namespace
//! matches the request's and whose version can serve the requested one
//! (same major, endpoint minor ≥ requested minor; a missing version is
//! `1.0`). If such an endpoint lacks the method the caller gets
//! `NoSuchMethod`; if no endpoint is compatible at all, `UnsupportedVersion`
//! — exactly oslo's behaviour. Names starting with `_` are never callable.
//!
//! [`Router`] is the ready-made endpoint: methods with typed, serde
//! deserialised arguments, async by default or `blocking` on tokio's
//! blocking pool. The arguments arrive as JSON text ([`Args`]) and are
//! parsed once, straight into the method's argument type; the result is
//! serialised once into the text the reply carries ([`Payload`]).

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

use crate::{Args, Payload, RequestContext, Result, RpcError, Version};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The description of one method, for introspection (`describe`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodInfo {
    /// The method name.
    pub name: String,
    /// The arguments, in order.
    pub args: Vec<ArgInfo>,
    /// Whether it runs on the blocking pool.
    pub blocking: bool,
    /// Whether its typed client casts it (no answer is awaited).
    pub cast: bool,
    /// The API version that added it (`None`: the API's first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// One line of documentation.
    pub doc: String,
}

/// One argument of a method, for introspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgInfo {
    /// The argument's name (arguments are passed by name).
    pub name: String,
    /// Its Rust type, e.g. `Vec<String>`; `Option<…>` may be left out.
    #[serde(rename = "type")]
    pub ty: String,
}

/// A set of methods callable over RPC under one namespace and version.
pub trait Endpoint: Send + Sync + 'static {
    /// The namespace; `None` is the default namespace.
    fn namespace(&self) -> Option<&str>;
    /// The API version this endpoint implements.
    fn version(&self) -> Version;
    /// Whether `method` is callable here.
    fn has_method(&self, method: &str) -> bool;
    /// Call `method`. Only called when [`Endpoint::has_method`] said yes.
    fn call(&self, ctx: RequestContext, method: &str, args: Args) -> BoxFuture<Result<Payload>>;
    /// The methods, for introspection.
    fn methods(&self) -> Vec<MethodInfo>;
}

/// Chooses the endpoint for each request; see the module docs.
#[derive(Clone, Default)]
pub struct Dispatcher {
    endpoints: Vec<Arc<dyn Endpoint>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let eps: Vec<_> =
            self.endpoints.iter().map(|e| format!("{}@{}", e.namespace().unwrap_or("-"), e.version())).collect();
        f.debug_struct("Dispatcher").field("endpoints", &eps).finish()
    }
}

impl Dispatcher {
    /// A dispatcher over `endpoints`, tried in order.
    pub fn new(endpoints: Vec<Arc<dyn Endpoint>>) -> Self {
        Self { endpoints }
    }

    /// Add an endpoint.
    pub fn push(&mut self, endpoint: Arc<dyn Endpoint>) {
        self.endpoints.push(endpoint);
    }

    /// The endpoints, in dispatch order.
    pub fn endpoints(&self) -> &[Arc<dyn Endpoint>] {
        &self.endpoints
    }

    /// Find the endpoint for a request, or the error oslo would raise.
    pub fn resolve(&self, namespace: Option<&str>, version: Option<&str>, method: &str) -> Result<&Arc<dyn Endpoint>> {
        let requested: Version = match version {
            None => Version::new(1, 0),
            Some(v) => v
                .parse()
                .map_err(|_| RpcError::UnsupportedVersion { version: v.to_owned(), method: method.to_owned() })?,
        };
        let mut found_compatible = false;
        for endpoint in &self.endpoints {
            if endpoint.namespace() != namespace || !endpoint.version().can_serve(&requested) {
                continue;
            }
            if !method.starts_with('_') && endpoint.has_method(method) {
                return Ok(endpoint);
            }
            found_compatible = true;
        }
        if found_compatible {
            Err(RpcError::NoSuchMethod { method: method.to_owned() })
        } else {
            Err(RpcError::UnsupportedVersion {
                version: version.unwrap_or("1.0").to_owned(),
                method: method.to_owned(),
            })
        }
    }

    /// Dispatch one request to its method.
    pub fn dispatch(
        &self,
        ctx: RequestContext,
        namespace: Option<&str>,
        version: Option<&str>,
        method: &str,
        args: Args,
    ) -> BoxFuture<Result<Payload>> {
        match self.resolve(namespace, version, method) {
            Ok(endpoint) => endpoint.call(ctx, method, args),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

type Handler = Arc<dyn Fn(RequestContext, Args) -> BoxFuture<Result<Payload>> + Send + Sync>;

struct Method {
    handler: Handler,
    info: MethodInfo,
}

/// An [`Endpoint`] built from typed handlers.
///
/// ```
/// use nova_rpc::{dispatcher::Router, RequestContext, RpcError, Version};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Echo { value: String }
///
/// let router = Router::new(Version::new(1, 0))
///     .method("echo", |_ctx: RequestContext, a: Echo| async move { Ok::<_, RpcError>(a.value) });
/// # use nova_rpc::dispatcher::Endpoint;
/// assert!(router.has_method("echo"));
/// ```
pub struct Router {
    namespace: Option<String>,
    version: Version,
    methods: BTreeMap<String, Method>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn encode_result<T: Serialize>(value: T) -> Result<Payload> {
    Payload::of(&value).map_err(|e| match e {
        RpcError::Serialization(why) => RpcError::Serialization(format!("cannot encode result: {why}")),
        other => other,
    })
}

impl Router {
    /// An endpoint in the default namespace at `version`.
    pub fn new(version: Version) -> Self {
        Self { namespace: None, version, methods: BTreeMap::new() }
    }

    /// Put the endpoint in `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    fn insert(mut self, name: &str, handler: Handler, blocking: bool) -> Self {
        assert!(!name.starts_with('_'), "RPC method names must not start with `_`: {name}");
        let info = MethodInfo {
            name: name.to_owned(),
            args: Vec::new(),
            blocking,
            cast: false,
            since: None,
            doc: String::new(),
        };
        self.methods.insert(name.to_owned(), Method { handler, info });
        self
    }

    /// Add an async method. `A` is the arguments struct (use
    /// `#[serde(deny_unknown_fields)]` to refuse extra arguments).
    pub fn method<A, T, E, F, Fut>(self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + 'static,
        E: Into<RpcError> + 'static,
        F: Fn(RequestContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |ctx, args| {
            let parsed = args.parse::<A>();
            let f = f.clone();
            Box::pin(async move { f(ctx, parsed?).await.map_err(Into::into).and_then(encode_result) })
        });
        self.insert(name, handler, false)
    }

    /// Add a blocking method: it runs on tokio's blocking pool, so CPU-bound
    /// or blocking code never stalls the reactor.
    pub fn blocking_method<A, T, E, F>(self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<RpcError> + Send + 'static,
        F: Fn(RequestContext, A) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |ctx, args| {
            let parsed = args.parse::<A>();
            let f = f.clone();
            Box::pin(async move {
                let args = parsed?;
                let out = tokio::task::spawn_blocking(move || f(ctx, args).map_err(Into::into))
                    .await
                    .map_err(|e| RpcError::remote("Panic", "nova_rpc.dispatcher", e.to_string()))?;
                out.and_then(encode_result)
            })
        });
        self.insert(name, handler, true)
    }

    /// Describe the last added method: its arguments and a line of docs.
    pub fn describe(mut self, name: &str, args: &[(&str, &str)], doc: &str) -> Self {
        if let Some(m) = self.methods.get_mut(name) {
            m.info.args = args.iter().map(|(n, t)| ArgInfo { name: (*n).to_owned(), ty: (*t).to_owned() }).collect();
            m.info.doc = doc.to_owned();
        }
        self
    }

    /// Record the API version that added `name`.
    pub fn since(mut self, name: &str, version: &str) -> Self {
        if let Some(m) = self.methods.get_mut(name) {
            m.info.since = Some(version.to_owned());
        }
        self
    }

    /// Mark `name` as a cast: its typed client does not wait for an answer.
    pub fn cast(mut self, name: &str) -> Self {
        if let Some(m) = self.methods.get_mut(name) {
            m.info.cast = true;
        }
        self
    }
}

impl Endpoint for Router {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn version(&self) -> Version {
        self.version
    }

    fn has_method(&self, method: &str) -> bool {
        self.methods.contains_key(method)
    }

    fn call(&self, ctx: RequestContext, method: &str, args: Args) -> BoxFuture<Result<Payload>> {
        match self.methods.get(method) {
            Some(m) => (m.handler)(ctx, args),
            None => {
                let method = method.to_owned();
                Box::pin(async move { Err(RpcError::NoSuchMethod { method }) })
            }
        }
    }

    fn methods(&self) -> Vec<MethodInfo> {
        self.methods.values().map(|m| m.info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher() -> Dispatcher {
        let echo = |_: RequestContext, a: serde_json::Value| async move { Ok::<_, RpcError>(a) };
        Dispatcher::new(vec![
            Arc::new(Router::new(Version::new(1, 3)).method("echo", echo)),
            Arc::new(Router::new(Version::new(2, 0)).namespace("ns").method("ns_echo", echo)),
        ])
    }

    #[test]
    fn oslo_version_and_namespace_rules() {
        let d = dispatcher();
        assert!(d.resolve(None, None, "echo").is_ok());
        assert!(d.resolve(None, Some("1.2"), "echo").is_ok());
        assert!(matches!(d.resolve(None, Some("1.4"), "echo"), Err(RpcError::UnsupportedVersion { .. })));
        assert!(matches!(d.resolve(None, Some("2.0"), "echo"), Err(RpcError::UnsupportedVersion { .. })));
        assert!(matches!(d.resolve(None, Some("1.0"), "nope"), Err(RpcError::NoSuchMethod { .. })));
        assert!(matches!(d.resolve(None, None, "_private"), Err(RpcError::NoSuchMethod { .. })));
        assert!(matches!(d.resolve(Some("ns"), None, "ns_echo"), Err(RpcError::UnsupportedVersion { .. })));
        assert!(d.resolve(Some("ns"), Some("2.0"), "ns_echo").is_ok());
        assert!(matches!(d.resolve(Some("other"), Some("2.0"), "ns_echo"), Err(RpcError::UnsupportedVersion { .. })));
    }
}
