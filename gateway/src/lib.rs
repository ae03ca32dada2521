//! The HTTP gateway: JSON in, rpc `call`/`cast` out, plus the services
//! list, introspection and the web console.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/call/{topic}[/{server}]/{method}` | body = args; `?namespace=&version=&timeout=` → 200 with the result |
//! | `POST /v1/cast/{topic}[/{server}]/{method}` | `?fanout=true` too → 202 |
//! | `GET /v1/services` | service records with `state` up/down and `status` |
//! | `GET /v1/services/{topic}/describe` | the topic's methods and arguments |
//! | `GET /v1/traces/{request_id}` | the request's trace: spans, and the tree of calls |
//! | `GET /v1/openapi.json` | this API as an OpenAPI 3 document |
//! | `GET /v1/metrics/history` | per method, rate and p50/p99 latency over the last minutes ([`history`]) |
//! | `GET /v1/queues` | backlog, consumers and oldest message of every topic's queues ([`queues`]) |
//! | `GET /v1/work` | each work queue's backlog, consumers, workers and their busy slots: what the autoscaler scales on ([`queues`]) |
//! | `GET /v1/events` | notifications as they arrive, as Server-Sent Events ([`events`]); the console follows them at `/events` |
//! | what a [`Resource`] adds | e.g. `/v1/tasks…` and the console's `/tasks`, from `nova_services::gateway` |
//! | `GET /traces/{request_id}` | the trace as a timeline in the console |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /` | the console |
//!
//! Errors are `{"error": {"class", "message"}}` with a status that says what
//! happened: bad JSON 400, no token 401, refused by policy, a foreign `Host`
//! or a cross-origin request 403, no such method 404, unsupported version
//! 409, a request slower than `[api] request_timeout` 408, too large 413,
//! not JSON 415, remote error 500, transport trouble 503, timeout 504.
//! [`auth`] says who may call what.
//! Every response carries `X-OpenStack-Request-ID`: the client's, when it
//! sent a valid `req-<uuid>`, else a new one; it is the RPC context's
//! `request_id`, so logs and traces line up.

pub mod auth;
pub mod console;
pub mod events;
pub mod history;
pub mod queues;
mod resource;
mod traces;

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json, Router,
};

pub use self::{
    auth::{ApiOptions, Auth, Caller, Policy, API_OPTIONS},
    resource::{Resource, Routes},
};
use nova_core::db::services::{is_up, ServiceRecords};
use nova_rpc::{layer::trace::Tracer, transport::Transport, RequestContext, RpcClient, RpcError, Target};
use serde::Deserialize;
use serde_json::{json, Value};

/// The request id header OpenStack services use.
pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// Largest request body the gateway accepts (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// What the gateway's handlers share.
#[derive(Clone)]
pub struct Gateway {
    client: RpcClient,
    records: ServiceRecords,
    service_down_time: Duration,
    tracer: Option<Tracer>,
    auth: Auth,
    history: history::History,
    /// What crates added; taken into the router by [`Gateway::router`].
    resources: Vec<Resource>,
    /// The console's links to the resources' pages: (path, label).
    links: Arc<Vec<(&'static str, &'static str)>>,
    /// This API with the resources' paths, as served at `/v1/openapi.json`.
    openapi: Arc<Value>,
    /// Notifications, live ([`events`]).
    events: events::Events,
    /// The process's configuration, when it has one (resources read their
    /// options from it; a work queue's name, say).
    config: Option<Arc<nova_core::config::Config>>,
}

impl Gateway {
    /// A gateway over `transport`, reading service records from `records`,
    /// guarded by `auth`.
    pub fn new(
        transport: Arc<dyn Transport>,
        records: ServiceRecords,
        service_down_time: Duration,
        auth: Auth,
    ) -> Self {
        // Mandatory: a call or cast no queue takes is "not found" at once.
        let client = RpcClient::new(transport, Target::new("gateway")).with_mandatory(true);
        Self {
            client,
            records,
            service_down_time,
            tracer: None,
            auth,
            history: history::History::default(),
            resources: Vec::new(),
            links: Arc::default(),
            openapi: Arc::new(resource::base_openapi()),
            events: events::Events::new(vec!["notifications".into(), "versioned_notifications".into()]),
            config: None,
        }
    }

    /// The process's configuration (from [`Gateway::from_bootstrap`]).
    pub fn config(&self) -> Option<&nova_core::config::Config> {
        self.config.as_deref()
    }

    /// The work queue of `topic` (`[<topic>] work_queue`, or `<topic>_work`).
    pub fn work_queue(&self, topic: &str) -> String {
        match self.config() {
            Some(c) => nova_core::manager::work_queue_name(c, topic),
            None => format!("{topic}_work"),
        }
    }

    /// Follow these notification topics at `/v1/events` (default:
    /// `notifications` and `versioned_notifications`).
    pub fn with_event_topics(mut self, topics: Vec<String>) -> Self {
        self.events = events::Events::new(topics);
        self
    }

    /// The gateway of a started process: its transport, service records and
    /// options (tracing on when `trace_enabled`).
    pub fn from_bootstrap(b: &nova_core::Bootstrap, auth: Auth) -> Self {
        let gw = Self::new(b.transport.clone(), ServiceRecords::new(b.db.clone()), b.options.service_down_time, auth);
        let mut topics = Vec::new();
        for opt in [
            &nova_core::notifications::options::TOPICS,
            &nova_core::notifications::options::VERSIONED_NOTIFICATIONS_TOPICS,
        ] {
            for t in b.config.value(opt).unwrap_or_default() {
                if !topics.contains(&t) {
                    topics.push(t);
                }
            }
        }
        let mut gw = gw.with_event_topics(topics);
        gw.config = Some(b.config.clone());
        if b.options.trace_enabled {
            gw.with_tracer(
                Tracer::new(b.transport.clone(), "nova-gateway", &b.options.host).with_sampler(b.options.trace_sampler),
            )
        } else {
            gw
        }
    }

    /// Record a span for every call and cast through the gateway, the root
    /// of the trace it starts (named by the request id).
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Add a crate's routes (behind the same auth, policy and limits), its
    /// part of the OpenAPI document, and its console link.
    pub fn with_resource(mut self, resource: Resource) -> Self {
        let mut openapi = (*self.openapi).clone();
        resource.describe_into(&mut openapi);
        self.openapi = Arc::new(openapi);
        if let Some(link) = resource.link() {
            Arc::make_mut(&mut self.links).push(link);
        }
        self.resources.push(resource);
        self
    }

    /// The routes of the gateway itself: the services, calls and casts,
    /// traces, queues and the console.
    fn own_routes() -> Routes {
        Routes::new()
            .get("/", console::page)
            .get("/console.js", console::script)
            .get("/console.css", console::style)
            .post("/login", console::sign_in)
            .get("/v1/services", services)
            .get("/v1/services/{topic}/describe", describe)
            .post("/v1/call/{topic}/{method}", call_topic)
            .post("/v1/call/{topic}/{server}/{method}", call_server)
            .post("/v1/cast/{topic}/{method}", cast_topic)
            .post("/v1/cast/{topic}/{server}/{method}", cast_server)
            .get("/v1/traces/{request_id}", traces::api)
            .get("/traces/{request_id}", traces::page)
            .get("/metrics", traces::metrics)
            .get("/v1/openapi.json", openapi)
            .get("/v1/queues", queues::list)
            .get("/v1/work", queues::work)
            .get("/v1/metrics/history", metrics_history)
            .get("/v1/events", events::stream)
            .get("/events", events::page)
            .get("/events/stream", events::stream)
    }

    /// Every route the router serves, its own and the resources', as
    /// `(METHOD, path)`: what the OpenAPI document must describe (those
    /// under `/v1/`).
    pub fn routes(&self) -> Vec<(axum::http::Method, &'static str)> {
        let mut table = Self::own_routes().table().to_vec();
        table.extend(self.resources.iter().flat_map(|r| r.routes().table().iter().cloned()));
        table
    }

    /// This API as an OpenAPI 3 document, with the resources' paths.
    pub fn openapi(&self) -> &Value {
        &self.openapi
    }

    /// The axum router, every route behind [`auth::guard`].
    pub fn router(mut self) -> Router {
        let timeout = self.auth.options().request_timeout;
        let guard = axum::middleware::from_fn_with_state(self.auth.clone(), auth::guard);
        let mut routes = Self::own_routes();
        for resource in std::mem::take(&mut self.resources) {
            routes = routes.merge(resource.into_routes());
        }
        routes
            .into_router()
            .layer(DefaultBodyLimit::max(MAX_BODY))
            // Inside the guard: a body is read only once the caller is known.
            .layer(axum::middleware::from_fn_with_state(self.auth.options().body_read_timeout, read_body))
            .layer(guard)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
            .layer(axum::middleware::map_response(json_errors))
            .with_state(self)
    }

    /// The client the gateway calls and casts with (mandatory routing).
    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// The service records (and through them, the database).
    pub fn records(&self) -> &ServiceRecords {
        &self.records
    }

    /// Refuse with 403 unless `caller` may reach `target`.
    pub fn authorize(&self, target: &str, caller: &Caller) -> Result<(), ApiError> {
        self.auth.authorize(target, caller)
    }

    /// Service records with their state, for the API and the console.
    pub async fn service_list(&self) -> Result<Vec<Value>, ApiError> {
        let now = chrono::Utc::now().naive_utc();
        let rows = self.records.list(None).await.map_err(ApiError::database)?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["state"] = (if is_up(r, self.service_down_time, now) { "up" } else { "down" }).into();
                v["status"] = (if r.disabled { "disabled" } else { "enabled" }).into();
                v
            })
            .collect())
    }

    /// `describe` of a topic.
    pub async fn describe(&self, ctx: &RequestContext, topic: &str) -> Result<Value, RpcError> {
        let target = Target::new(topic).with_namespace("baseapi").with_version("1.1");
        self.client.with_target(target).with_timeout(Duration::from_secs(3)).call(ctx, "describe", json!({})).await
    }
}

/// An error answer: status plus `{"error": {"class", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    class: String,
    message: String,
}

impl ApiError {
    /// An answer with `status`, the error's `class` and a sentence.
    pub fn new(status: StatusCode, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, class: class.into(), message: message.into() }
    }

    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 503 `DatabaseError`: the database could not answer.
    pub fn database(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "DatabaseError", e.to_string())
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The sentence the caller gets.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        let status = match &e {
            RpcError::NoSuchMethod { .. } => StatusCode::NOT_FOUND,
            RpcError::UnsupportedVersion { .. } | RpcError::PinnedBelow { .. } => StatusCode::CONFLICT,
            RpcError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RpcError::Remote(f) => remote_status(&f.class),
            RpcError::InvalidTarget { .. }
            | RpcError::VersionCap { .. }
            | RpcError::InvalidArgument { .. }
            | RpcError::Serialization(_) => StatusCode::BAD_REQUEST,
            RpcError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // The gateway's calls and casts are mandatory: no queue takes this topic or server.
            RpcError::Unroutable { .. } => StatusCode::NOT_FOUND,
            RpcError::Transport(_) | RpcError::InvalidUrl { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &e {
            RpcError::Remote(f) => f.message.clone(),
            other => other.to_string(),
        };
        Self::new(status, e.class(), message)
    }
}

/// Every error answer is `{"error": {"class", "message"}}`, also those made
/// by axum's extractors and tower-http (a bad path, a timeout, a body over
/// the limit), which come as plain text or empty.
async fn json_errors(mut response: Response) -> Response {
    // Never framed by another page, never sniffed into another type.
    let headers = response.headers_mut();
    headers.insert(axum::http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let status = response.status();
    // JSON already, or a page of the console's (its sign-in page is a 401).
    let formed = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || formed {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let class = status.canonical_reason().unwrap_or("Error").replace(' ', "");
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut answer = ApiError::new(status, class, message).into_response();
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(n, _)| *n != axum::http::header::CONTENT_TYPE && *n != axum::http::header::CONTENT_LENGTH)
    {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
}

/// The status of a service's own error, by its class, as Nova's API maps
/// exceptions: what names a missing thing is 404, what refuses the input
/// 400, what refuses the caller 403, what lacks capacity 409; any other
/// failure of the method is 500.
fn remote_status(class: &str) -> StatusCode {
    if class.ends_with("NotFound") {
        StatusCode::NOT_FOUND
    } else if class.starts_with("Invalid") || class.starts_with("Bad") || class == "MalformedMessage" {
        StatusCode::BAD_REQUEST
    } else if class.ends_with("NotAllowed") || class == "Forbidden" || class.starts_with("Signature") {
        StatusCode::FORBIDDEN
    } else if class == "NoValidHost" {
        StatusCode::CONFLICT
    } else if class == "MessageTooLarge" {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"class": self.class, "message": self.message}}))).into_response()
    }
}

/// Query parameters of call and cast.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    namespace: Option<String>,
    version: Option<String>,
    timeout: Option<f64>,
    #[serde(default)]
    fanout: bool,
}

/// The request id to use: the client's when valid (`req-<uuid>`), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.strip_prefix("req-").is_some_and(|u| uuid::Uuid::parse_str(u).is_ok()))
        .map(str::to_owned)
        .unwrap_or_else(nova_rpc::context::generate_request_id)
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "the body must be a JSON object of arguments"))
        }
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", format!("the body is not valid JSON: {e}"))),
    }
}

/// Where a gateway request goes: topic, optional server, method, and
/// whether it is a call (else a cast).
struct Address {
    topic: String,
    server: Option<String>,
    method: String,
    call: bool,
}

async fn invoke(
    gw: &Gateway,
    caller: &Caller,
    headers: &HeaderMap,
    to: Address,
    q: CallQuery,
    body: Bytes,
) -> Response {
    let Address { topic, server, method, call } = to;
    let id = request_id(headers);
    let outcome = async {
        if topic == nova_rpc::layer::trace::TRACE_TOPIC && method == "record_spans" {
            // Spans come from services' tracers, never from HTTP clients,
            // who could otherwise write into anyone's trace.
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden", "trace.record_spans is for services only"));
        }
        gw.authorize(&format!("{topic}.{method}"), caller)?;
        let args = parse_body(&body)?;
        let client = gw.client_for(&topic, server, &q)?;
        let (topic_name, fanout) = (topic, q.fanout);
        let mut ctx = caller.context(id.clone());
        let span = traces::Root::enter(gw.tracer.as_ref(), &mut ctx, &topic_name, &method, call, &args);
        let outcome = async {
            if call {
                if fanout {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "InvalidTarget", "a call cannot be fanned out"));
                }
                Ok((StatusCode::OK, Json(client.call(&ctx, &method, args).await?)).into_response())
            } else {
                client.with_fanout(fanout).cast(&ctx, &method, args).await?;
                Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response())
            }
        }
        .await;
        if let Some(span) = span {
            span.finish(outcome.as_ref().map(|_| ()).map_err(|e: &ApiError| e.class.as_str()));
        }
        outcome
    }
    .await;
    with_request_id(outcome.unwrap_or_else(IntoResponse::into_response), &id)
}

impl Gateway {
    /// The client a request to `topic` (and `server`) uses, with the
    /// namespace, version and timeout its query asks for.
    fn client_for(&self, topic: &str, server: Option<String>, q: &CallQuery) -> Result<RpcClient, ApiError> {
        let mut target = Target::new(topic);
        target.server = server;
        target.namespace = q.namespace.clone();
        target.version = q.version.clone();
        let client = self.client.with_target(target);
        match q.timeout {
            None => Ok(client),
            Some(t) if (0.001..=3600.0).contains(&t) => Ok(client.with_timeout(Duration::from_secs_f64(t))),
            Some(_) => Err(ApiError::bad_request("timeout must be between 0.001 and 3600 seconds")),
        }
    }
}

type MaybeQuery = Result<Query<CallQuery>, axum::extract::rejection::QueryRejection>;

fn query(q: MaybeQuery) -> Result<CallQuery, Response> {
    q.map(|Query(q)| q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.body_text()).into_response())
}

/// The parts every call and cast route takes.
type Invoked = (State<Gateway>, Extension<Caller>, HeaderMap, MaybeQuery, Bytes);

async fn route(parts: Invoked, topic: String, server: Option<String>, method: String, call: bool) -> Response {
    let (State(gw), Extension(caller), headers, q, body) = parts;
    let to = Address { topic, server, method, call };
    match query(q).and_then(|q| to.check(q.namespace.as_deref()).map(|()| q).map_err(IntoResponse::into_response)) {
        Ok(q) => invoke(&gw, &caller, &headers, to, q, body).await,
        Err(r) => r,
    }
}

/// Whether `name` is made of `[A-Za-z0-9_-]` (and `.` where `dotted`),
/// 1 to 255 of them: what oslo's topics, hosts and namespaces are.
fn plain_name(name: &str, dotted: bool) -> bool {
    (1..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (dotted && b == b'.'))
}

impl Address {
    /// Refuse names that would reach another queue than the one the policy
    /// is asked about: a topic is one routing-key segment (`compute.h1`
    /// would be host h1's queue, checked as topic `compute.h1`), a method
    /// an identifier.
    fn check(&self, namespace: Option<&str>) -> Result<(), ApiError> {
        let bad = |what: &str, name: &str, rule: &str| {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidTarget",
                format!("{what} {name:?} is not valid: {rule}"),
            ))
        };
        if !plain_name(&self.topic, false) {
            return bad("topic", &self.topic, "1 to 255 of A-Z a-z 0-9 _ - (no dots: name a server in the path)");
        }
        if let Some(server) = self.server.as_deref().filter(|s| !plain_name(s, true)) {
            return bad("server", server, "1 to 255 of A-Z a-z 0-9 _ - .");
        }
        let identifier = self.method.len() <= 255
            && self.method.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && self.method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !identifier {
            return bad("method", &self.method, "an identifier (A-Z a-z 0-9 _, not starting with a digit)");
        }
        if let Some(ns) = namespace.filter(|ns| !plain_name(ns, true)) {
            return bad("namespace", ns, "1 to 255 of A-Z a-z 0-9 _ - .");
        }
        Ok(())
    }
}

async fn call_topic(
    gw: State<Gateway>,
    caller: Extension<Caller>,
    Path((topic, method)): Path<(String, String)>,
    headers: HeaderMap,
    q: MaybeQuery,
    body: Bytes,
) -> Response {
    route((gw, caller, headers, q, body), topic, None, method, true).await
}

async fn call_server(
    gw: State<Gateway>,
    caller: Extension<Caller>,
    Path((topic, server, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    q: MaybeQuery,
    body: Bytes,
) -> Response {
    route((gw, caller, headers, q, body), topic, Some(server), method, true).await
}

async fn cast_topic(
    gw: State<Gateway>,
    caller: Extension<Caller>,
    Path((topic, method)): Path<(String, String)>,
    headers: HeaderMap,
    q: MaybeQuery,
    body: Bytes,
) -> Response {
    route((gw, caller, headers, q, body), topic, None, method, false).await
}

async fn cast_server(
    gw: State<Gateway>,
    caller: Extension<Caller>,
    Path((topic, server, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    q: MaybeQuery,
    body: Bytes,
) -> Response {
    route((gw, caller, headers, q, body), topic, Some(server), method, false).await
}

/// `GET /v1/metrics/history`: per method, rate and latency over the last minutes.
async fn metrics_history(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<std::collections::BTreeMap<String, Vec<history::Point>>>, ApiError> {
    gw.authorize("api:services", &caller)?;
    Ok(Json(gw.history.series()))
}

/// The API, described: `GET /v1/openapi.json`.
async fn openapi(State(gw): State<Gateway>) -> Json<Value> {
    Json((*gw.openapi).clone())
}

async fn services(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<Value>>, ApiError> {
    gw.authorize("api:services", &caller)?;
    gw.service_list().await.map(Json)
}

async fn describe(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = request_id(&headers);
    let ctx = RequestContext { request_id: id.clone(), ..RequestContext::default() };
    let r = match gw.authorize("api:services", &caller) {
        Err(e) => e.into_response(),
        Ok(()) => match gw.describe(&ctx, &topic).await {
            Ok(d) => Json(d).into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
    };
    with_request_id(r, &id)
}

/// Read a request's body within `within` of its headers (a client that
/// trickles it gets 408 and loses the connection), at most [`MAX_BODY`]
/// bytes (413), before any handler runs.
async fn read_body(
    State(within): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(within, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
        .into_response(),
        Err(_) => {
            let message = format!("the request body did not arrive within {} s", within.as_secs_f64());
            let mut refused = ApiError::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", message).into_response();
            refused.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            refused
        }
    }
}

/// Serve one connection until it ends, or, once `stopped` turns true,
/// until its request in flight is answered.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    service: hyper_util::service::TowerToHyperService<Router>,
    header_read_timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serve the gateway until `shutdown` resolves, then let the requests in
/// flight finish. Each connection has `[api] header_read_timeout` to send
/// its headers (hyper closes it otherwise) and, once the caller is
/// authenticated, `[api] body_read_timeout` for its body; at most `[api]
/// max_connections` are served at once, at most `[api]
/// max_connections_per_client` from one address, and every request ends
/// within `[api] request_timeout`.
pub async fn serve(
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let options = gateway.auth.options().clone();
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    tracing::info!(listen = %options.listen, token_auth = options.token_auth, "HTTP gateway and console listening");
    gateway.auth.reload_on_sighup();
    gateway.history.run();
    let app = gateway.router();
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let clients = nova_core::connections::PerClient::new(options.max_connections_per_client);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One client cannot take every connection: past its share, a new
        // connection is closed at once (its permit goes back).
        let Some(client) = clients.admit(peer.ip()) else {
            tracing::debug!(client = %peer.ip(), "closing a connection past max_connections_per_client");
            continue;
        };
        // A response goes out at once, not held for the client's ack of
        // the last one (Nagle's algorithm).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = serve_connection(stream, service, options.header_read_timeout, stopped.clone());
        tokio::spawn(async move {
            connection.await;
            drop((client, permit));
        });
    }
    stopping.send_replace(true);
    // Every permit back: every connection has ended.
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(options.request_timeout, permits.acquire_many(all)).await;
    Ok(())
}
