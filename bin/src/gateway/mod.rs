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
//! | `GET /traces/{request_id}` | the trace as a timeline in the console |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /` | the console |
//!
//! Errors are `{"error": {"class", "message"}}` with a status that says what
//! happened: bad JSON 400, no such method 404, unsupported version 409,
//! remote error 500, transport trouble 503, timeout 504, too large 413.
//! Every response carries `X-OpenStack-Request-ID`: the client's, when it
//! sent a valid `req-<uuid>`, else a new one; it is the RPC context's
//! `request_id`, so logs and traces line up.

mod console;
mod traces;

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
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
}

impl Gateway {
    /// A gateway over `transport`, reading service records from `records`.
    pub fn new(transport: Arc<dyn Transport>, records: ServiceRecords, service_down_time: Duration) -> Self {
        Self { client: RpcClient::new(transport, Target::new("gateway")), records, service_down_time, tracer: None }
    }

    /// The gateway of a started process: its transport, service records and
    /// options (tracing on when `trace_enabled`).
    pub fn from_bootstrap(b: &nova_core::Bootstrap) -> Self {
        let gw = Self::new(b.transport.clone(), ServiceRecords::new(b.db.clone()), b.options.service_down_time);
        if b.options.trace_enabled {
            gw.with_tracer(Tracer::new(b.transport.clone(), "nova-gateway", &b.options.host))
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

    /// The axum router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(console::page))
            .route("/v1/services", get(services))
            .route("/v1/services/{topic}/describe", get(describe))
            .route("/v1/call/{topic}/{method}", post(call_topic))
            .route("/v1/call/{topic}/{server}/{method}", post(call_server))
            .route("/v1/cast/{topic}/{method}", post(cast_topic))
            .route("/v1/cast/{topic}/{server}/{method}", post(cast_server))
            .route("/v1/traces/{request_id}", get(traces::api))
            .route("/traces/{request_id}", get(traces::page))
            .route("/metrics", get(traces::metrics))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }

    /// Service records with their state, for the API and the console.
    pub async fn service_list(&self) -> Result<Vec<Value>, ApiError> {
        let now = chrono::Utc::now().naive_utc();
        let rows = self
            .records
            .list(None)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "DatabaseError", e.to_string()))?;
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
    fn new(status: StatusCode, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, class: class.into(), message: message.into() }
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        let status = match &e {
            RpcError::NoSuchMethod { .. } => StatusCode::NOT_FOUND,
            RpcError::UnsupportedVersion { .. } => StatusCode::CONFLICT,
            RpcError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RpcError::Remote(f) if f.class == "InvalidArgument" => StatusCode::BAD_REQUEST,
            RpcError::Remote(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RpcError::InvalidTarget { .. }
            | RpcError::VersionCap { .. }
            | RpcError::InvalidArgument { .. }
            | RpcError::Serialization(_) => StatusCode::BAD_REQUEST,
            RpcError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RpcError::Transport(_) | RpcError::Unroutable { .. } | RpcError::InvalidUrl { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let message = match &e {
            RpcError::Remote(f) => f.message.clone(),
            other => other.to_string(),
        };
        Self::new(status, e.class(), message)
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

async fn invoke(gw: &Gateway, headers: &HeaderMap, to: Address, q: CallQuery, body: Bytes) -> Response {
    let Address { topic, server, method, call } = to;
    let id = request_id(headers);
    let outcome = async {
        let args = parse_body(&body)?;
        let topic_name = topic.clone();
        let mut target = Target::new(topic);
        target.server = server;
        target.namespace = q.namespace;
        target.version = q.version;
        let mut client = gw.client.with_target(target);
        if let Some(t) = q.timeout {
            if !(0.001..=3600.0).contains(&t) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "timeout must be between 0.001 and 3600 seconds",
                ));
            }
            client = client.with_timeout(Duration::from_secs_f64(t));
        }
        let mut ctx = RequestContext { request_id: id.clone(), ..RequestContext::default() };
        let span = traces::Root::enter(gw.tracer.as_ref(), &mut ctx, &topic_name, &method, call, &args);
        let outcome = async {
            if call {
                if q.fanout {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "InvalidTarget", "a call cannot be fanned out"));
                }
                Ok((StatusCode::OK, Json(client.call(&ctx, &method, args).await?)).into_response())
            } else {
                client.with_fanout(q.fanout).cast(&ctx, &method, args).await?;
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

type Query2 = Result<Query<CallQuery>, axum::extract::rejection::QueryRejection>;

fn query(q: Query2) -> Result<CallQuery, Response> {
    q.map(|Query(q)| q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.body_text()).into_response())
}

async fn call_topic(
    State(gw): State<Gateway>,
    Path((topic, method)): Path<(String, String)>,
    headers: HeaderMap,
    q: Query2,
    body: Bytes,
) -> Response {
    match query(q) {
        Ok(q) => invoke(&gw, &headers, Address { topic, server: None, method, call: true }, q, body).await,
        Err(r) => r,
    }
}

async fn call_server(
    State(gw): State<Gateway>,
    Path((topic, server, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    q: Query2,
    body: Bytes,
) -> Response {
    match query(q) {
        Ok(q) => invoke(&gw, &headers, Address { topic, server: Some(server), method, call: true }, q, body).await,
        Err(r) => r,
    }
}

async fn cast_topic(
    State(gw): State<Gateway>,
    Path((topic, method)): Path<(String, String)>,
    headers: HeaderMap,
    q: Query2,
    body: Bytes,
) -> Response {
    match query(q) {
        Ok(q) => invoke(&gw, &headers, Address { topic, server: None, method, call: false }, q, body).await,
        Err(r) => r,
    }
}

async fn cast_server(
    State(gw): State<Gateway>,
    Path((topic, server, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    q: Query2,
    body: Bytes,
) -> Response {
    match query(q) {
        Ok(q) => invoke(&gw, &headers, Address { topic, server: Some(server), method, call: false }, q, body).await,
        Err(r) => r,
    }
}

async fn services(State(gw): State<Gateway>) -> Result<Json<Vec<Value>>, ApiError> {
    gw.service_list().await.map(Json)
}

async fn describe(State(gw): State<Gateway>, Path(topic): Path<String>, headers: HeaderMap) -> Response {
    let id = request_id(&headers);
    let ctx = RequestContext { request_id: id.clone(), ..RequestContext::default() };
    let r = match gw.describe(&ctx, &topic).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    with_request_id(r, &id)
}

/// Serve the gateway on `listen` until `shutdown` resolves.
pub async fn serve(
    gateway: Gateway,
    listen: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "HTTP gateway and console listening");
    axum::serve(listener, gateway.router()).with_graceful_shutdown(shutdown).await
}
