//! A client of the gateway's tasks API (`/v1/tasks`), for `nova-rpc task`
//! and `nova-rpc mount`.

use std::time::Duration;

use nova_services::api::compute::{TaskInfo, TaskStatus};
use serde_json::{json, Value};

/// Why a tasks API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// The gateway answered with an error (`{"error": {"class", "message"}}`).
    #[error("{class}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error class.
        class: String,
        /// What went wrong.
        message: String,
    },
    /// The gateway could not be reached or answered nonsense.
    #[error("{0}")]
    Unreachable(String),
}

/// The gateway's tasks API at `base` (`http://127.0.0.1:8774`).
#[derive(Debug, Clone)]
pub struct TasksApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// What to submit.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// The allow-listed command (`name` or `name@version`).
    pub name: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The id (idempotency key); the gateway makes one when absent.
    pub task_id: Option<String>,
    /// Where the result is POSTed.
    pub callback_url: Option<String>,
}

impl TasksApi {
    /// The API at `base`, sending `token` as `X-Auth-Token` when given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ApiFailure> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiFailure::Unreachable(e.to_string()))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("X-Auth-Token", t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiFailure> {
        let resp = r.send().await.map_err(|e| ApiFailure::Unreachable(format!("{}: {e}", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let text = |k: &str| body["error"][k].as_str().unwrap_or_default().to_owned();
        Err(ApiFailure::Refused { status, class: text("class"), message: text("message") })
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, ApiFailure> {
        let body = self.send(r).await?.bytes().await.map_err(|e| ApiFailure::Unreachable(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| ApiFailure::Unreachable(format!("a bad answer: {e}")))
    }

    /// Submit a task (`POST /v1/tasks`).
    pub async fn submit(&self, t: &NewTask) -> Result<TaskInfo, ApiFailure> {
        let mut body = json!({ "name": t.name, "args": t.args });
        if let Some(id) = &t.task_id {
            body["task_id"] = id.clone().into();
        }
        if let Some(url) = &t.callback_url {
            body["callback_url"] = url.clone().into();
        }
        let post = self
            .request(reqwest::Method::POST, "/v1/tasks")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.json(post).await
    }

    /// The tasks, optionally by status and host.
    pub async fn list(&self, status: Option<TaskStatus>, host: Option<&str>) -> Result<Vec<TaskInfo>, ApiFailure> {
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = status {
            q.push(("status", s.as_str()));
        }
        if let Some(h) = host {
            q.push(("host", h));
        }
        self.json(self.request(reqwest::Method::GET, "/v1/tasks").query(&q)).await
    }

    /// One task.
    pub async fn show(&self, id: &str) -> Result<TaskInfo, ApiFailure> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/tasks/{}", encode(id)))).await
    }

    /// Kill a task.
    pub async fn kill(&self, id: &str) -> Result<TaskInfo, ApiFailure> {
        self.json(self.request(reqwest::Method::DELETE, &format!("/v1/tasks/{}", encode(id)))).await
    }

    /// A task's `stdout` or `stderr`: the tail, or with `follow` every
    /// chunk as it comes, to `each`, until the task ends.
    pub async fn output(
        &self,
        id: &str,
        stream: &str,
        follow: bool,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), ApiFailure> {
        let path = format!("/v1/tasks/{}/{stream}?follow={follow}", encode(id));
        let mut resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| ApiFailure::Unreachable(e.to_string()))? {
            each(&chunk);
        }
        Ok(())
    }
}

fn encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}
