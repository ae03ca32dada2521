//! The caller's side: `call`, `cast`, fanout, and the reply router.
//!
//! [`RpcClient`] is cheap to clone; `with_*` methods return a prepared copy,
//! like oslo's `client.prepare(server=…, timeout=…)`. All clones made from
//! one client share one reply queue (created on the first `call`) and one
//! [`ReplyRouter`](crate::reply::ReplyRouter) that hands each reply to the caller waiting on its
//! `_msg_id`. A call that times out removes its entry, so nothing is left
//! behind; a reply that arrives later is dropped with a debug log.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::{
    layer::{AfterReply, Call, CallKind, Inner, Layer, Layers},
    reply::ReplyRouter,
    transport::{Destination, Outgoing, Transport},
    wire::{self, RequestRef},
    Args, Payload, RequestContext, Result, RpcError, Target, Version,
};

#[derive(Debug)]
struct ClientState {
    transport: Arc<dyn Transport>,
    replies: OnceCell<ReplyRouter>,
}

/// Sends calls and casts to a [`Target`]; see the module docs.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use nova_rpc::{transport, RpcClient, Target, RequestContext};
/// let t = transport::connect(transport::TransportOptions::new("memory://client-doc")).await.unwrap();
/// let client = RpcClient::new(t, Target::new("compute").with_version("5.0"));
/// let err = client.with_fanout(true).call(&RequestContext::new(), "ping", serde_json::json!({})).await.unwrap_err();
/// assert!(matches!(err, nova_rpc::RpcError::InvalidTarget { .. }));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct RpcClient {
    shared: Arc<ClientState>,
    target: Target,
    timeout: Option<Duration>,
    version_cap: Option<Version>,
    call_monitor_timeout: Option<Duration>,
    retry: Option<u32>,
    mandatory: bool,
    layers: Layers,
}

impl RpcClient {
    /// Connect to the broker at `url` (`rabbit://user:pass@host:5672/`,
    /// `memory://name`, …) with default options, and aim at `target`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use nova_rpc::{RpcClient, Target};
    ///
    /// let client = RpcClient::connect("memory://doc-connect", Target::new("greeter")).await?;
    /// assert_eq!(client.target().topic, "greeter");
    /// # Ok::<(), nova_rpc::RpcError>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// A URL that cannot be read, or a broker that cannot be reached.
    pub async fn connect(url: &str, target: Target) -> crate::Result<Self> {
        let transport = crate::transport::connect(crate::transport::TransportOptions::new(url)).await?;
        Ok(Self::new(transport, target))
    }

    /// A client for `target` over `transport`.
    pub fn new(transport: Arc<dyn Transport>, target: Target) -> Self {
        Self {
            shared: Arc::new(ClientState { transport, replies: OnceCell::new() }),
            target,
            timeout: None,
            version_cap: None,
            call_monitor_timeout: None,
            retry: None,
            mandatory: false,
            layers: Layers::default(),
        }
    }

    /// The target calls go to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.shared.transport
    }

    /// The same client, aimed at another target (sharing the reply queue).
    pub fn with_target(&self, target: Target) -> Self {
        Self { target, ..self.clone() }
    }

    /// Address one server (`topic.server`).
    pub fn with_server(&self, server: impl Into<String>) -> Self {
        self.with_target(self.target.clone().with_server(server))
    }

    /// Address every server of the topic (casts only).
    pub fn with_fanout(&self, fanout: bool) -> Self {
        self.with_target(self.target.clone().with_fanout(fanout))
    }

    /// Ask for another API version.
    pub fn with_version(&self, version: impl Into<String>) -> Self {
        self.with_target(self.target.clone().with_version(version))
    }

    /// Call into another namespace.
    pub fn with_namespace(&self, namespace: impl Into<String>) -> Self {
        self.with_target(self.target.clone().with_namespace(namespace))
    }

    /// Wait this long for replies (default `rpc_response_timeout`).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self.clone() }
    }

    /// Refuse to send versions above `cap`.
    pub fn with_version_cap(&self, cap: Version) -> Self {
        Self { version_cap: Some(cap), ..self.clone() }
    }

    /// Fail a call early when the server sends no heartbeat for this long.
    pub fn with_call_monitor_timeout(&self, timeout: Duration) -> Self {
        Self { call_monitor_timeout: Some(timeout), ..self.clone() }
    }

    /// Reconnect at most `retry` times when sending (`None`: until the broker is back).
    pub fn with_retry(&self, retry: Option<u32>) -> Self {
        Self { retry, ..self.clone() }
    }

    /// Refuse a cast or call that no queue takes ([`RpcError::Unroutable`])
    /// instead of letting the broker drop it: for at-least-once targets,
    /// whose casts must never be confirmed and then lost, and for callers
    /// (the gateway) that would rather hear "no such topic" at once than
    /// wait out a timeout. oslo's casts and calls are not mandatory.
    pub fn with_mandatory(&self, mandatory: bool) -> Self {
        Self { mandatory, ..self.clone() }
    }

    /// Add a middleware layer around every call and cast this client (and
    /// clients prepared from it) makes; see [`crate::layer`].
    pub fn with_layer(&self, layer: Arc<dyn Layer>) -> Self {
        Self { layers: self.layers.with(layer), ..self.clone() }
    }

    /// Whether `version` is within the client's `version_cap` (Nova's `can_send_version`).
    pub fn can_send_version(&self, version: &str) -> bool {
        match (&self.version_cap, version.parse::<Version>()) {
            (None, Ok(_)) => true,
            (Some(cap), Ok(v)) => cap.can_serve(&v),
            (_, Err(_)) => false,
        }
    }

    /// The version to send `method` at, and the arguments to leave out:
    /// the method's own version (`since`, the oldest that carries it),
    /// raised to each newer argument that does not hold its default (`args`:
    /// name, since, whether it holds its default). One at its default is
    /// left out (the server reads it as its default), so it never raises
    /// the version; one the pin cannot carry is refused, as is a method
    /// newer than the pin.
    ///
    /// # Errors
    ///
    /// [`RpcError::PinnedBelow`], naming the method, what it needs and the pin.
    pub fn version_for(
        &self,
        method: &str,
        since: &str,
        args: &[(&'static str, &str, bool)],
    ) -> Result<(String, Vec<&'static str>)> {
        let refuse = |needs: &str| RpcError::PinnedBelow {
            method: method.to_owned(),
            needs: needs.to_owned(),
            pin: self.version_cap.as_ref().map(ToString::to_string).unwrap_or_default(),
        };
        let mut version: Version = since.parse()?;
        let mut dropped = Vec::new();
        for &(name, arg_since, default) in args {
            let needs: Version = arg_since.parse()?;
            if default {
                // The server reads an absent argument as its default.
                dropped.push(name);
            } else if !self.can_send_version(arg_since) {
                return Err(refuse(arg_since));
            } else if needs.major == version.major && needs.minor > version.minor {
                version = needs;
            }
        }
        let version = version.to_string();
        if !self.can_send_version(&version) {
            return Err(refuse(&version));
        }
        Ok((version, dropped))
    }

    fn check_version(&self) -> Result<()> {
        if let (Some(cap), Some(v)) = (&self.version_cap, &self.target.version) {
            if !self.can_send_version(v) {
                return Err(RpcError::VersionCap { version: v.clone(), cap: cap.to_string() });
            }
        }
        Ok(())
    }

    fn layered(&self, ctx: &RequestContext, method: &str, args: Args, kind: CallKind) -> Call {
        Call {
            ctx: ctx.clone(),
            topic: self.target.topic.clone(),
            server: self.target.server.clone(),
            namespace: self.target.namespace.clone(),
            version: self.target.version.clone(),
            method: method.to_owned(),
            args,
            kind,
            after_reply: AfterReply::now(),
        }
    }

    /// The request to encode, borrowing the target's parts; a call adds
    /// its `_msg_id`, reply queue and call-monitor timeout.
    fn request<'a>(
        &'a self,
        ctx: &'a RequestContext,
        method: &'a str,
        args: &'a Args,
        unique_id: &'a str,
    ) -> RequestRef<'a> {
        RequestRef {
            method,
            args,
            namespace: self.target.namespace.as_deref(),
            version: self.target.version.as_deref(),
            msg_id: None,
            reply_q: None,
            monitor_timeout: None,
            unique_id,
            context: ctx,
        }
    }

    fn exchange(&self) -> &str {
        self.target.exchange.as_deref().unwrap_or(&self.shared.transport.options().control_exchange)
    }

    /// Send a one-way message; returns once the broker has confirmed it.
    ///
    /// Nobody answers a cast: what the method does with it, or how it
    /// fails, is the server's to log (at WARN).
    ///
    /// # Errors
    ///
    /// - [`RpcError::Serialization`] when `args` is not a JSON object;
    /// - [`RpcError::VersionCap`] when the target's version is above the cap;
    /// - [`RpcError::Unroutable`] when, with [`with_mandatory`](Self::with_mandatory),
    ///   no queue is bound to the target;
    /// - [`RpcError::MessageTooLarge`] past `max_message_size`;
    /// - [`RpcError::Transport`] when the broker did not confirm it within
    ///   the client's timeout (a broker alarm, say) or the retries ran out.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not have sent the message: it may
    /// already be at the broker, unconfirmed.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use nova_rpc::{transport, RequestContext, RpcClient, Target};
    ///
    /// let t = transport::connect(transport::TransportOptions::new("memory://cast-doc")).await.unwrap();
    /// let compute = RpcClient::new(t, Target::new("compute").with_server("host1"));
    /// // Nobody listens on this bus, and a cast is fire-and-forget: it is dropped.
    /// compute.cast(&RequestContext::new(), "report_capacity", serde_json::json!({})).await.unwrap();
    /// # });
    /// ```
    pub async fn cast(&self, ctx: &RequestContext, method: &str, args: impl Serialize) -> Result<()> {
        let args = Args::of(&args)?;
        if self.layers.is_empty() {
            return self.cast_args(ctx, method, args).await;
        }
        let me = self.clone();
        let end: Inner = Arc::new(move |c: Call| {
            let me = me.clone();
            Box::pin(async move { me.cast_args(&c.ctx, &c.method, c.args).await.map(|()| Payload::null()) })
        });
        self.layers.run(self.layered(ctx, method, args, CallKind::Cast), end).await.map(|_| ())
    }

    async fn cast_args(&self, ctx: &RequestContext, method: &str, args: Args) -> Result<()> {
        self.check_version()?;
        let unique_id = crate::id::NewId::new();
        let request = self.request(ctx, method, &args, unique_id.as_str());
        let destination = if self.target.fanout {
            Destination::Fanout { topic: self.target.topic.as_str().into() }
        } else {
            Destination::Topic { exchange: self.exchange().into(), routing_key: self.target.routing_key() }
        };
        let body = self.sign(wire::encode_request_ref(&request)?)?;
        // A cast gives up once its budget (the client's timeout) is spent,
        // even while the broker is blocked by an alarm.
        let budget = self.timeout.unwrap_or(self.shared.transport.options().rpc_response_timeout);
        let message = Outgoing {
            retry: self.retry,
            deadline: Some(Instant::now() + budget),
            mandatory: self.mandatory,
            ..Outgoing::new(body)
        };
        self.shared.transport.send(&destination, message).await
    }

    /// Sign `body` when the target's topic is signed ([`crate::signing`]),
    /// bound to where it goes.
    fn sign(&self, body: Vec<u8>) -> Result<Vec<u8>> {
        match &self.shared.transport.options().signing {
            Some(s) if s.applies_to(&self.target.topic) => {
                let to = crate::signing::Binding {
                    exchange: self.exchange(),
                    topic: &self.target.topic,
                    server: if self.target.fanout { None } else { self.target.server.as_deref() },
                    fanout: self.target.fanout,
                };
                s.sign(&body, &to).map_err(|e| RpcError::Serialization(e.to_string()))
            }
            _ => Ok(body),
        }
    }

    /// Whether this client's calls are signed, so their replies must be.
    fn signed(&self) -> bool {
        self.shared.transport.options().signing.as_ref().is_some_and(|s| s.applies_to(&self.target.topic))
    }

    /// Call a method and wait for its result.
    ///
    /// The client's reply queue is set up by its first call (within that
    /// call's timeout). With [`with_call_monitor_timeout`](Self::with_call_monitor_timeout)
    /// the server sends heartbeats while the method runs, and the call
    /// fails as soon as they stop.
    ///
    /// # Errors
    ///
    /// - [`RpcError::Remote`] when the method failed: the class, module and
    ///   message the server sent (also `NoSuchMethod` and
    ///   `UnsupportedVersion`, as oslo sends them);
    /// - [`RpcError::Timeout`] when no answer came within the client's
    ///   timeout (`rpc_response_timeout` unless [`with_timeout`](Self::with_timeout)),
    ///   or the heartbeats stopped;
    /// - [`RpcError::InvalidTarget`] for a fanout target (calls are not fanned out);
    /// - the errors of [`cast`](Self::cast), for sending the request.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the call: its waiter is forgotten, and
    /// a reply arriving later is dropped. The request may already be on its
    /// way, so the method may still run.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use nova_rpc::{dispatcher::{Dispatcher, Router}, transport, RequestContext, RpcClient, RpcError, RpcServer, Target, Version};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Add { a: i64, b: i64 }
    ///
    /// let t = transport::connect(transport::TransportOptions::new("memory://call-doc")).await.unwrap();
    /// let router = Router::new(Version::new(1, 0))
    ///     .method("add", |_ctx: RequestContext, x: Add| async move { Ok::<_, RpcError>(x.a + x.b) });
    /// let server = RpcServer::new(t.clone(), Target::new("calc").with_server("h1"), Dispatcher::new(vec![Arc::new(router)]))
    ///     .start()
    ///     .await
    ///     .unwrap();
    ///
    /// let calc = RpcClient::new(t, Target::new("calc"));
    /// let sum = calc.call(&RequestContext::new(), "add", serde_json::json!({"a": 2, "b": 3})).await.unwrap();
    /// assert_eq!(sum, 5);
    /// let e = calc.call(&RequestContext::new(), "add", serde_json::json!({"a": 2})).await.unwrap_err();
    /// assert!(e.to_string().contains("b"), "a missing argument is named: {e}");
    /// server.stop(std::time::Duration::from_secs(5)).await;
    /// # });
    /// ```
    pub async fn call(&self, ctx: &RequestContext, method: &str, args: impl Serialize) -> Result<Value> {
        self.call_payload(ctx, method, args).await?.to_value()
    }

    /// Call a method and keep its result as the JSON text it came as: for
    /// a caller that passes it on (a gateway answering HTTP, say) without
    /// reading it. The errors are [`call`](Self::call)'s.
    pub async fn call_payload(&self, ctx: &RequestContext, method: &str, args: impl Serialize) -> Result<Payload> {
        let args = Args::of(&args)?;
        if self.layers.is_empty() {
            return self.call_args(ctx, method, args).await;
        }
        let me = self.clone();
        let end: Inner = Arc::new(move |c: Call| {
            let me = me.clone();
            Box::pin(async move { me.call_args(&c.ctx, &c.method, c.args).await })
        });
        self.layers.run(self.layered(ctx, method, args, CallKind::Call), end).await
    }

    async fn call_args(&self, ctx: &RequestContext, method: &str, args: Args) -> Result<Payload> {
        self.check_callable()?;
        let timeout = self.timeout.unwrap_or(self.shared.transport.options().rpc_response_timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let timed_out = || RpcError::Timeout {
            topic: self.target.routing_key().into_owned(),
            method: method.to_owned(),
            after: started.elapsed(),
        };
        // Setting up the reply queue counts against the call's timeout too:
        // an unreachable broker never makes a call hang.
        let init = self.shared.replies.get_or_try_init(|| ReplyRouter::start(&self.shared.transport));
        let router = match tokio::time::timeout_at(deadline.into(), init).await {
            Ok(router) => router?,
            Err(_) => return Err(timed_out()),
        };
        let (unique_id, msg_id) = (crate::id::NewId::new(), crate::id::NewId::new());
        let request = RequestRef {
            msg_id: Some(msg_id.as_str()),
            reply_q: Some(router.queue()),
            monitor_timeout: self.call_monitor_timeout.map(|d| d.as_secs_f64()),
            ..self.request(ctx, method, &args, unique_id.as_str())
        };
        let body = self.sign(wire::encode_request_ref(&request)?)?;

        let mut expected = router.expect(msg_id.id(), deadline.into(), self.call_monitor_timeout, self.signed());
        let destination =
            Destination::Topic { exchange: self.exchange().into(), routing_key: self.target.routing_key() };
        let message = Outgoing {
            ttl: Some(timeout),
            retry: self.retry,
            deadline: Some(deadline),
            mandatory: self.mandatory,
            ..Outgoing::new(body)
        };
        match tokio::time::timeout_at(deadline.into(), self.shared.transport.send(&destination, message)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(timed_out()),
        }
        expected.sent();
        // The router closes the inbox once the call is past its deadline
        // (or its call-monitor timeout passed without a heartbeat).
        expected.ending().await.ok_or_else(timed_out)?
    }

    /// A call goes to one server (or the topic), at a version the cap allows.
    fn check_callable(&self) -> Result<()> {
        if self.target.fanout {
            return Err(RpcError::InvalidTarget {
                target: self.target.to_string(),
                reason: "a call cannot be fanned out".into(),
            });
        }
        self.check_version()
    }

    /// Call and deserialise the result into `T`.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        method: &str,
        args: impl Serialize,
    ) -> Result<T> {
        let result = self.call_payload(ctx, method, args).await?;
        result.parse().map_err(|e| RpcError::Serialization(format!("unexpected result of {method}: {e}")))
    }

    /// How many calls from this client (and its clones) await a reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.replies.get().map_or(0, ReplyRouter::pending)
    }
}
