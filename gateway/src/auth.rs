//! Who may call what through the gateway, and from where.
//!
//! Every request first passes [`guard`]:
//!
//! * its `Host` must name this gateway (its listen address, a loopback name
//!   when it listens on loopback, or one of `[api] allowed_hosts`), so a
//!   DNS-rebound page cannot reach it;
//! * a cross-origin `Origin` is refused, so a page open in the operator's
//!   browser cannot drive it;
//! * a `POST` must say `Content-Type: application/json` (else 415): a form
//!   or `text/plain` post from any page cannot reach it without a CORS
//!   preflight, which the gateway never grants;
//! * with `[api] auth_strategy = token`, `X-Auth-Token` (or, for the
//!   console's pages, the `nova_token` cookie) must match a hash in
//!   `[api] token_file`; the token's user, project and roles go into the
//!   RPC context.
//!
//! Then each handler asks the [`Policy`] whether the caller may reach its
//! target: `<topic>.<method>` for calls and casts, `api:services`,
//! `api:traces` and `api:console` for the rest. Rules are shaped like
//! oslo.policy's: `@` (anyone), `!` (no one), `role:<name>`,
//! `user:<id>`, `project:<id>`, joined with `or` / `and`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use nova_core::config::{Config, ConfigError, OptSpec};
use nova_rpc::RequestContext;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiError;

/// `[api]`, each option declared once.
pub mod opts {
    use std::{net::SocketAddr, path::PathBuf, time::Duration};

    use nova_core::config::{parse, Invalid, Opt};

    /// `[api] listen`.
    pub const LISTEN: Opt<SocketAddr> =
        Opt::new("api", "listen", "127.0.0.1:8774", "Address of the HTTP gateway and console.", parse::number);
    /// `[api] auth_strategy`: whether tokens are asked for.
    pub const AUTH_STRATEGY: Opt<bool> = Opt::new(
        "api",
        "auth_strategy",
        "noauth",
        "noauth (anyone who reaches the gateway; refused off loopback unless --insecure) or token (X-Auth-Token).",
        token_auth,
    );
    /// `[api] token_file`.
    pub const TOKEN_FILE: Opt<Option<PathBuf>> = Opt::new(
        "api",
        "token_file",
        "",
        "JSON file of tokens: {\"tokens\": [{\"sha256\", \"user_id\", \"project_id\", \"roles\"}]}; re-read on SIGHUP.",
        parse::optional_path,
    );
    /// `[api] policy_file`.
    pub const POLICY_FILE: Opt<Option<PathBuf>> = Opt::new(
        "api",
        "policy_file",
        "",
        "JSON file of rules per target (\"compute.run_task\": \"role:admin\", \"default\": \"@\"); re-read on SIGHUP.",
        parse::optional_path,
    );
    /// `[api] allowed_hosts`.
    pub const ALLOWED_HOSTS: Opt<Vec<String>> = Opt::new(
        "api",
        "allowed_hosts",
        "",
        "Comma-separated Host names (host or host:port) the gateway answers besides its own.",
        host_names,
    );
    /// `[api] request_timeout`.
    pub const REQUEST_TIMEOUT: Opt<Duration> = Opt::new(
        "api",
        "request_timeout",
        "120",
        "Seconds a request may take, body included, before it gets 408.",
        timeout,
    );
    /// `[api] header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Opt<Duration> = Opt::new(
        "api",
        "header_read_timeout",
        "10",
        "Seconds a client has to send its request headers (slowloris guard).",
        timeout,
    );
    /// `[api] body_read_timeout`.
    pub const BODY_READ_TIMEOUT: Opt<Duration> = Opt::new(
        "api",
        "body_read_timeout",
        "10",
        "Seconds a client has to send a request's body once its headers are in (slow bodies get 408).",
        timeout,
    );
    /// `[api] max_connections`.
    pub const MAX_CONNECTIONS: Opt<usize> = Opt::new(
        "api",
        "max_connections",
        "512",
        "Connections served at once; more wait to be accepted.",
        at_least_one,
    );
    /// `[api] max_connections_per_client`.
    pub const MAX_CONNECTIONS_PER_CLIENT: Opt<usize> = Opt::new(
        "api",
        "max_connections_per_client",
        "64",
        "Connections one client address may hold at once; more are closed as they arrive.",
        at_least_one,
    );
    /// `[api] rabbit_management_url`.
    pub const RABBIT_MANAGEMENT_URL: Opt<Option<String>> = Opt::new(
        "api",
        "rabbit_management_url",
        "",
        "RabbitMQ's management API (http://user:pass@host:15672), read for the age of each queue's oldest message; empty: ages are not shown.",
        parse::optional_text,
    );

    fn token_auth(v: &str) -> Result<bool, Invalid> {
        match v {
            "noauth" => Ok(false),
            "token" => Ok(true),
            _ => Err("expected noauth or token".into()),
        }
    }

    fn host_names(v: &str) -> Result<Vec<String>, Invalid> {
        Ok(v.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
    }

    /// From a tenth of a second to a day.
    fn timeout(v: &str) -> Result<Duration, Invalid> {
        parse::seconds(v).map(|d| d.clamp(Duration::from_millis(100), Duration::from_secs(86_400)))
    }

    fn at_least_one(v: &str) -> Result<usize, Invalid> {
        parse::number::<usize>(v).map(|n| n.max(1))
    }
}

/// The gateway's options, `[api]`.
pub const API_OPTIONS: &[OptSpec] = &[
    opts::LISTEN.spec,
    opts::AUTH_STRATEGY.spec,
    opts::TOKEN_FILE.spec,
    opts::POLICY_FILE.spec,
    opts::ALLOWED_HOSTS.spec,
    opts::REQUEST_TIMEOUT.spec,
    opts::HEADER_READ_TIMEOUT.spec,
    opts::BODY_READ_TIMEOUT.spec,
    opts::MAX_CONNECTIONS.spec,
    opts::MAX_CONNECTIONS_PER_CLIENT.spec,
    opts::RABBIT_MANAGEMENT_URL.spec,
];

/// How the gateway is reached and guarded.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Where it listens.
    pub listen: SocketAddr,
    /// `token` on, or `noauth`.
    pub token_auth: bool,
    /// The token file, with `token`.
    pub token_file: Option<PathBuf>,
    /// The policy file; none: every target allows any authenticated caller.
    pub policy_file: Option<PathBuf>,
    /// Further accepted `Host` names.
    pub allowed_hosts: Vec<String>,
    /// Longest request.
    pub request_timeout: Duration,
    /// Longest wait for request headers.
    pub header_read_timeout: Duration,
    /// Longest wait for a request's body, once its headers are in.
    pub body_read_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_client: usize,
    /// RabbitMQ's management API, for the age of queues' oldest messages.
    pub rabbit_management_url: Option<String>,
}

impl ApiOptions {
    /// Read `[api]`; `listen` overrides `[api] listen`. `noauth` off loopback
    /// is refused unless `insecure`.
    pub fn from_config(c: &Config, listen: Option<SocketAddr>, insecure: bool) -> Result<Self, ConfigError> {
        let listen = match listen {
            Some(l) => l,
            None => c.value(&opts::LISTEN)?,
        };
        let token_auth = c.value(&opts::AUTH_STRATEGY)?;
        if !token_auth && !listen.ip().is_loopback() && !insecure {
            return Err(c.invalid(
                "api",
                "auth_strategy",
                format!("noauth lets anyone who reaches {listen} call any method; use token, listen on loopback, or pass --insecure"),
            ));
        }
        let token_file = c.value(&opts::TOKEN_FILE)?;
        if token_auth && token_file.is_none() {
            return Err(c.invalid("api", "token_file", "auth_strategy = token needs a token_file"));
        }
        Ok(Self {
            listen,
            token_auth,
            token_file,
            policy_file: c.value(&opts::POLICY_FILE)?,
            allowed_hosts: c.value(&opts::ALLOWED_HOSTS)?,
            request_timeout: c.value(&opts::REQUEST_TIMEOUT)?,
            header_read_timeout: c.value(&opts::HEADER_READ_TIMEOUT)?,
            body_read_timeout: c.value(&opts::BODY_READ_TIMEOUT)?,
            max_connections: c.value(&opts::MAX_CONNECTIONS)?,
            max_connections_per_client: c.value(&opts::MAX_CONNECTIONS_PER_CLIENT)?,
            rabbit_management_url: c.value(&opts::RABBIT_MANAGEMENT_URL)?,
        })
    }

    /// Read `[api]` and load the files it names; see [`ApiOptions::from_config`].
    pub fn auth(c: &Config, listen: Option<SocketAddr>, insecure: bool) -> Result<Auth, ConfigError> {
        let options = Self::from_config(c, listen, insecure)?;
        Auth::load(options).map_err(|e| c.invalid("api", e.option(), e.to_string()))
    }

    /// Options for a gateway on `listen` with no authentication (tests, `nova-all`'s defaults).
    pub fn noauth(listen: SocketAddr) -> Self {
        Self {
            listen,
            token_auth: false,
            token_file: None,
            policy_file: None,
            allowed_hosts: Vec::new(),
            request_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_client: 64,
            rabbit_management_url: None,
        }
    }

    /// Whether `host` (a `Host` header, lower-cased) names this gateway.
    fn host_allowed(&self, host: &str) -> bool {
        let port = self.listen.port();
        let own = [self.listen.to_string(), format!("{}:{port}", self.listen.ip())];
        let loopback = ["127.0.0.1", "localhost", "[::1]"].map(|h| format!("{h}:{port}"));
        own.iter().any(|h| h == host)
            || (self.listen.ip().is_loopback() || self.listen.ip().is_unspecified())
                && loopback.iter().any(|h| h == host)
            || self.allowed_hosts.iter().any(|h| h == host || format!("{h}:{port}") == host)
    }
}

/// Who is calling: from a token, or nobody in particular under `noauth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The token's user.
    pub user_id: Option<String>,
    /// The token's project.
    pub project_id: Option<String>,
    /// The token's roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// The request context of this caller's request `request_id`: its
    /// user, project and roles travel with every call it makes.
    pub fn context(&self, request_id: String) -> RequestContext {
        RequestContext {
            request_id,
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone(),
            roles: self.roles.clone(),
            ..RequestContext::default()
        }
    }

    /// Whoever reaches a gateway without authentication (on loopback, or
    /// with `--insecure`): an admin, as Nova's `noauth2` makes its caller.
    pub fn noauth() -> Self {
        Self { roles: vec!["admin".into()], ..Self::default() }
    }
}

#[derive(Debug, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    user_id: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// A rule, parsed: alternatives of conjunctions of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule(Vec<Vec<Check>>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Always,
    Never,
    Role(String),
    User(String),
    Project(String),
}

impl Rule {
    fn parse(text: &str) -> Result<Self, String> {
        let mut any = Vec::new();
        for alternative in text.split(" or ") {
            let mut all = Vec::new();
            for check in alternative.split(" and ") {
                all.push(match check.trim() {
                    "@" | "" => Check::Always,
                    "!" => Check::Never,
                    c => match c.split_once(':') {
                        Some(("role", r)) => Check::Role(r.to_owned()),
                        Some(("user", u)) => Check::User(u.to_owned()),
                        Some(("project", p)) => Check::Project(p.to_owned()),
                        _ => return Err(format!("unknown check {c:?} (expected @, !, role:, user: or project:)")),
                    },
                });
            }
            any.push(all);
        }
        Ok(Self(any))
    }

    fn allows(&self, caller: &Caller) -> bool {
        self.0.iter().any(|all| {
            all.iter().all(|check| match check {
                Check::Always => true,
                Check::Never => false,
                Check::Role(r) => caller.roles.iter().any(|have| have == r),
                Check::User(u) => caller.user_id.as_deref() == Some(u),
                Check::Project(p) => caller.project_id.as_deref() == Some(p),
            })
        })
    }
}

/// The methods every service serves that change the service itself (the
/// base API's log level): their targets default to the `admin_api` rule,
/// as Nova's policy defaults do, unless a rule names the target itself.
pub const ADMIN_METHODS: &[&str] = &["set_log_level"];

/// The rule of `admin_api` unless the policy file sets one.
pub const ADMIN_API_RULE: &str = "role:admin";

/// The targets the gateway asks about besides `<topic>.<method>`, with
/// what each guards: the default policy's own entries.
pub const BUILT_IN_TARGETS: &[(&str, &str)] = &[
    ("api:services", "`GET /v1/services`, `describe`, `GET /v1/queues` and the console's services"),
    ("api:traces", "`GET /v1/traces/{id}` and the console's trace pages"),
    ("api:events", "`GET /v1/events` and the console's events page: every project's notifications"),
];

/// Built-in targets that default to the `admin_api` rule, not `default`:
/// they show every project's data.
pub const ADMIN_TARGETS: &[&str] = &["api:events"];

/// Rules per target, and a default; see the module docs.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<String, Rule>,
    default: Rule,
    admin_api: Rule,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rules: HashMap::new(),
            default: Rule(vec![vec![Check::Always]]),
            admin_api: Rule(vec![vec![Check::Role("admin".into())]]),
        }
    }
}

impl Policy {
    /// Parse a policy document: `{"<target>": "<rule>", …, "default": "<rule>"}`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: HashMap<String, String> =
            serde_json::from_str(text).map_err(|e| PolicyError::NotRules(e.to_string()))?;
        let mut policy = Self::default();
        for (target, rule) in raw {
            let rule = Rule::parse(&rule).map_err(|reason| PolicyError::BadRule { target: target.clone(), reason })?;
            if target == "default" {
                policy.default = rule;
            } else if target == "admin_api" {
                policy.admin_api = rule;
            } else {
                policy.rules.insert(target, rule);
            }
        }
        Ok(policy)
    }

    /// The default policy as Markdown (`nova-manage policy reference`,
    /// `docs/policy.md`): generated from the rules the code applies, so it
    /// cannot drift from them.
    pub fn reference() -> String {
        let mut out = String::from(
            "# The gateway's default policy\n\n\
             Generated by `nova-manage policy reference`. A `policy_file` (`[api]`) overrides any \
             entry; rules are written as oslo.policy writes them (`@`, `!`, `role:`, `user:`, \
             `project:`, `and`, `or`). The gateway asks about `<topic>.<method>` for every call and \
             cast (a topic is one name, never `topic.server`), and about the targets below.\n\n\
             | target | default rule | what it guards |\n| --- | --- | --- |\n",
        );
        out.push_str("| `default` | `@` | every target no rule names: any authenticated caller (under `noauth`, anyone on loopback) |\n");
        out.push_str(&format!(
            "| `admin_api` | `{ADMIN_API_RULE}` | the base API's admin methods of every topic ({}) unless a rule names `<topic>.<method>` |\n",
            ADMIN_METHODS.iter().map(|m| format!("`<topic>.{m}`")).collect::<Vec<_>>().join(", ")
        ));
        for (target, guards) in BUILT_IN_TARGETS {
            let rule = if ADMIN_TARGETS.contains(target) { "(`admin_api`)" } else { "(`default`)" };
            out.push_str(&format!("| `{target}` | {rule} | {guards} |\n"));
        }
        out.push_str(
            "| `compute.submit_task`, `compute.list_tasks`, `compute.get_task`, `compute.kill_task` | (`default`) | \
             the tasks resource `/v1/tasks…`; whatever the rule, a caller sees only its project's tasks \
             unless it holds `admin` |\n\
             | `trace.record_spans` | `!` (fixed) | never through the gateway: spans come from services |\n",
        );
        out
    }

    /// Whether `caller` may reach `target`: its own rule, else `admin_api`
    /// for an [`ADMIN_METHODS`] target, else `default`.
    pub fn allows(&self, target: &str, caller: &Caller) -> bool {
        let admin = ADMIN_TARGETS.contains(&target)
            || target.rsplit_once('.').is_some_and(|(_, method)| ADMIN_METHODS.contains(&method));
        let fallback = if admin { &self.admin_api } else { &self.default };
        self.rules.get(target).unwrap_or(fallback).allows(caller)
    }
}

/// The gateway's tokens and policy, re-read together on SIGHUP.
#[derive(Debug, Clone)]
pub struct Auth {
    options: Arc<ApiOptions>,
    state: Arc<RwLock<(HashMap<String, Caller>, Policy)>>,
}

/// What is wrong with a policy document.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not a JSON object of strings.
    #[error("not a JSON object of rules: {0}")]
    NotRules(String),
    /// A rule that does not parse.
    #[error("{target}: {reason}")]
    BadRule {
        /// The target it guards.
        target: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why the token or policy file was not loaded (the old ones stay).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file cannot be read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        /// The option naming it: `token_file` or `policy_file`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is not what it should be.
    #[error("{}: {reason}", path.display())]
    BadTokens {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The policy file is not a policy.
    #[error("{}: {source}", path.display())]
    BadPolicy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: PolicyError,
    },
}

impl AuthError {
    /// The `[api]` option to blame.
    pub fn option(&self) -> &'static str {
        match self {
            Self::Unreadable { option, .. } => option,
            Self::BadTokens { .. } => "token_file",
            Self::BadPolicy { .. } => "policy_file",
        }
    }
}

fn read(option: &'static str, path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Unreadable { option, path: path.to_owned(), source })
}

impl Auth {
    /// Load the token and policy files `options` name.
    pub fn load(options: ApiOptions) -> Result<Self, AuthError> {
        let auth = Self { options: Arc::new(options), state: Arc::default() };
        auth.reload()?;
        Ok(auth)
    }

    /// The options it guards with.
    pub fn options(&self) -> &ApiOptions {
        &self.options
    }

    /// Read the token and policy files again; on an error, keep the old ones.
    pub fn reload(&self) -> Result<(), AuthError> {
        let mut tokens = HashMap::new();
        if let Some(path) = &self.options.token_file {
            let bad = |reason: String| AuthError::BadTokens { path: path.clone(), reason };
            let file: TokenFile = serde_json::from_str(&read("token_file", path)?).map_err(|e| bad(e.to_string()))?;
            for t in file.tokens {
                let hash = t.sha256.to_ascii_lowercase();
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(format!("sha256 of {} is not 64 hex digits", t.user_id)));
                }
                tokens.insert(hash, Caller { user_id: Some(t.user_id), project_id: t.project_id, roles: t.roles });
            }
        }
        let policy = match &self.options.policy_file {
            Some(path) => Policy::parse(&read("policy_file", path)?)
                .map_err(|source| AuthError::BadPolicy { path: path.clone(), source })?,
            None => Policy::default(),
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = (tokens, policy);
        Ok(())
    }

    /// Whether `token` is one of the token file's.
    pub fn knows(&self, token: &str) -> bool {
        self.caller_of(token).is_some()
    }

    /// The caller a token stands for, if any.
    fn caller_of(&self, token: &str) -> Option<Caller> {
        let hash: String = Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        self.state.read().unwrap_or_else(|p| p.into_inner()).0.get(&hash).cloned()
    }

    /// Refuse with 403 unless `caller` may reach `target`.
    pub fn authorize(&self, target: &str, caller: &Caller) -> Result<(), ApiError> {
        let allowed = self.state.read().unwrap_or_else(|p| p.into_inner()).1.allows(target, caller);
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden", format!("policy does not allow {target}")))
        }
    }

    /// Re-read the files on every SIGHUP, logging the outcome.
    pub fn reload_on_sighup(&self) {
        let auth = self.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match auth.reload() {
                    Ok(()) => tracing::info!("gateway tokens and policy re-read"),
                    Err(e) => {
                        tracing::error!(error = %e, "gateway tokens and policy not re-read; keeping the old ones")
                    }
                }
            }
        });
    }
}

fn refuse(status: StatusCode, class: &str, message: impl Into<String>) -> Response {
    ApiError::new(status, class, message).into_response()
}

/// The console's `nova_token` cookie (percent-encoded by its script).
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("nova_token="))
        .map(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy().into_owned())
}

/// The checks every request passes; see the module docs.
pub async fn guard(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if !auth.options.host_allowed(&host) {
        return refuse(StatusCode::FORBIDDEN, "ForeignHost", format!("this gateway does not answer to Host {host:?}"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}")));
        if !same {
            return refuse(StatusCode::FORBIDDEN, "CrossOrigin", "cross-origin requests are refused");
        }
    }
    if request.method() == Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "send Content-Type: application/json",
            );
        }
    }
    // The console's own files and its sign-in need no token: without its
    // script, a sign-in form would fall back to a GET with the token in its URL.
    let open = matches!(request.uri().path(), "/console.js" | "/console.css" | "/login");
    let caller = if auth.options.token_auth && !open {
        let page = request.method() == Method::GET && !request.uri().path().starts_with("/v1/");
        let token = headers.get("x-auth-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let token = token.or_else(|| if page { cookie_token(headers) } else { None });
        match token.and_then(|t| auth.caller_of(&t)) {
            Some(caller) => caller,
            None if page => return super::console::login().into_response(),
            None => {
                return refuse(StatusCode::UNAUTHORIZED, "Unauthorized", "a valid X-Auth-Token is required");
            }
        }
    } else {
        Caller::noauth()
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str]) -> Caller {
        Caller {
            user_id: Some("alice".into()),
            project_id: Some("p1".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn rules_as_oslo_policy_writes_them() {
        let p = Policy::parse(
            r#"{"default": "role:admin", "compute.ping": "@", "compute.run_task": "role:member and project:p1 or user:bob",
                "compute.kill_task": "!"}"#,
        )
        .unwrap();
        assert!(p.allows("compute.ping", &Caller::default()));
        assert!(p.allows("compute.run_task", &caller(&["member"])));
        assert!(!p.allows("compute.run_task", &caller(&["reader"])));
        assert!(!p.allows("compute.kill_task", &caller(&["admin"])));
        assert!(p.allows("scheduler.anything", &caller(&["admin"])));
        assert!(!p.allows("scheduler.anything", &caller(&["member"])));
        assert!(Policy::parse(r#"{"x.y": "rol:admin"}"#).unwrap_err().to_string().contains("x.y"));
    }

    #[test]
    fn the_policy_reference_is_current() {
        let written =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap_or_default();
        assert_eq!(
            written,
            Policy::reference(),
            "regenerate with: cargo run --bin nova-manage -- policy reference > docs/policy.md"
        );
    }

    #[test]
    fn admin_methods_default_to_admin_api() {
        let open = Policy::default();
        assert!(open.allows("compute.ping", &caller(&["reader"])));
        assert!(!open.allows("compute.set_log_level", &caller(&["reader"])));
        assert!(open.allows("compute.set_log_level", &caller(&["admin"])));
        assert!(open.allows("compute.set_log_level", &Caller::noauth()), "noauth callers are admins");
        let p = Policy::parse(r#"{"admin_api": "role:operator", "trace.set_log_level": "@"}"#).unwrap();
        assert!(p.allows("compute.set_log_level", &caller(&["operator"])));
        assert!(!p.allows("compute.set_log_level", &caller(&["admin"])));
        assert!(p.allows("trace.set_log_level", &caller(&[])), "a rule naming the target wins");
    }

    #[test]
    fn hosts_this_gateway_answers_to() {
        let o = ApiOptions::noauth("127.0.0.1:8774".parse().unwrap());
        for ok in ["127.0.0.1:8774", "localhost:8774", "[::1]:8774"] {
            assert!(o.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8774", "localhost:80", "", "127.0.0.1"] {
            assert!(!o.host_allowed(bad), "{bad}");
        }
        let o = ApiOptions {
            allowed_hosts: vec!["nova.example".into()],
            ..ApiOptions::noauth("10.0.0.5:80".parse().unwrap())
        };
        assert!(o.host_allowed("nova.example") && o.host_allowed("nova.example:80") && o.host_allowed("10.0.0.5:80"));
        assert!(!o.host_allowed("localhost:80"));
    }
}
