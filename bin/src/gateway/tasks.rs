//! Tasks as a resource: submit, list, read, follow and kill them over HTTP,
//! wherever they run.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/tasks` | `{"name", "args", "task_id", "callback_url", "notify"}` → 202, `Location`; idempotent on `task_id` |
//! | `GET /v1/tasks?status=&host=` | the tasks, oldest change first |
//! | `GET /v1/tasks/{id}` | one task, with live output while it runs |
//! | `GET /v1/tasks/{id}/stdout` (`/stderr`) | the output's tail; `?follow=true` streams it until the task ends |
//! | `DELETE /v1/tasks/{id}` | kill it (or cancel it while it waits in the queue) |
//! | `GET /v1/queues` | backlog and consumers of every topic's queues |
//!
//! A submitted task is recorded `queued` (no host yet) and cast to the
//! shared `compute` queue as `submit_task`; the first host with a free slot
//! takes it. The gateway finds a task's host from its record. Policy
//! targets are the compute methods: `compute.submit_task`,
//! `compute.list_tasks`, `compute.get_task`, `compute.kill_task`.
//!
//! A task belongs to the project (and user) that submitted it. A caller
//! lists, reads, follows and kills its own project's tasks only; another
//! project's task is answered 404, as Nova answers for another project's
//! server. Callers with the `admin` role see every project's tasks.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use nova_rpc::{transport::QueueStats, RequestContext, Target};
use nova_services::api::compute::{ComputeClient, NotifyTarget, TaskInfo, TaskStatus};
use serde::Deserialize;

use super::{ApiError, Caller, Gateway};

/// The topic whose shared queue takes submitted tasks.
pub const TASK_TOPIC: &str = "compute";

/// How often a followed output is read again while its task runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    task_id: Option<String>,
    callback_url: Option<String>,
    notify: Option<NotifyTarget>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "TaskNotFound", format!("task {id} not found"))
}

fn db_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "DatabaseError", e.to_string())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn location(id: &str) -> String {
    format!("/v1/tasks/{id}")
}

impl Gateway {
    fn compute(&self, host: &str) -> ComputeClient {
        let target = Target::new(TASK_TOPIC).with_server(host);
        ComputeClient::new(self.client.with_target(target).with_timeout(Duration::from_secs(3)))
    }

    /// A task as it stands: its record, or, while it runs, its host's live
    /// view (with the output so far).
    pub async fn task(&self, ctx: &RequestContext, id: &str) -> Result<TaskInfo, ApiError> {
        if !valid_id(id) {
            return Err(not_found(id));
        }
        let record =
            self.tasks.get(id).await.map_err(db_error)?.filter(|t| t.visible_to(ctx)).ok_or_else(|| not_found(id))?;
        if record.status.is_final() || record.host.is_empty() {
            return Ok(record);
        }
        Ok(self.compute(&record.host).get_task(ctx, id.to_owned()).await.unwrap_or(record))
    }

    /// Record and submit a task; an id that exists answers with its task.
    async fn submit(&self, ctx: &RequestContext, body: &[u8]) -> Result<TaskInfo, ApiError> {
        let s: Submit = serde_json::from_slice(body).map_err(|e| bad_request(format!("the body: {e}")))?;
        let id = s.task_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if !valid_id(&id) {
            return Err(bad_request("task_id must be 1 to 255 characters of letters, digits, '-', '_' or '.'"));
        }
        if s.name.is_empty() {
            return Err(bad_request("name must name an allowed command"));
        }
        let info = TaskInfo::queued(
            id.clone(),
            String::new(),
            s.name.clone(),
            s.args.clone(),
            s.notify.clone(),
            s.callback_url.clone(),
        )
        .owned_by(ctx);
        if !self.tasks.insert(&info).await.map_err(db_error)? {
            // The id is taken: its task, if it is the caller's to see.
            let existing = self.tasks.get(&id).await.map_err(db_error)?.filter(|t| t.visible_to(ctx));
            return existing
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "TaskExists", format!("task {id} exists already")));
        }
        let queue = ComputeClient::new(self.client.with_target(Target::new(TASK_TOPIC)));
        if let Err(e) = queue.submit_task(ctx, s.name, s.args, id.clone(), s.notify, s.callback_url).await {
            let mut failed = info;
            failed.status = TaskStatus::Failed;
            failed.error = Some(format!("not submitted: {e}"));
            let _ = self.tasks.update(&failed).await;
            let mut err = ApiError::from(e);
            if err.status == StatusCode::NOT_FOUND {
                err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NoComputeQueue",
                    "no compute host has declared the task queue yet",
                );
            }
            return Err(err);
        }
        Ok(info)
    }

    /// Kill a task where it runs, or cancel it while no host has it.
    async fn kill(&self, ctx: &RequestContext, id: &str) -> Result<TaskInfo, ApiError> {
        let record = self.task(ctx, id).await?;
        if record.status.is_final() {
            return Ok(record);
        }
        if record.host.is_empty() {
            let mut killed = record.clone();
            killed.status = TaskStatus::Killed;
            killed.finished_at = Some(chrono::Utc::now().naive_utc());
            if self.tasks.cancel_unclaimed(&killed).await.map_err(db_error)? {
                return Ok(killed);
            }
            // A host took it meanwhile: kill it there.
            let record = self.tasks.get(id).await.map_err(db_error)?.ok_or_else(|| not_found(id))?;
            return Ok(self.compute(&record.host).kill_task(ctx, id.to_owned()).await?);
        }
        Ok(self.compute(&record.host).kill_task(ctx, id.to_owned()).await?)
    }

    /// Backlog and consumers of each known topic's shared queue and of
    /// each service's own queue.
    pub async fn queues(&self) -> Result<Vec<QueueStats>, ApiError> {
        let services = self.records.list(None).await.map_err(db_error)?;
        let mut names: Vec<String> = Vec::new();
        for s in &services {
            for name in [s.topic.clone(), format!("{}.{}", s.topic, s.host)] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut stats = self.client.transport().queue_stats(&names).await?;
        if let Some(api) = &self.auth.options().rabbit_management_url {
            let transport_url = self.client.transport().options().transport_url.clone();
            if let Err(e) = crate::queue_age::fill(&mut stats, api, &transport_url).await {
                tracing::warn!(error = %e, "cannot read the oldest messages' ages");
            }
        }
        Ok(stats)
    }
}

fn ctx_of(caller: &Caller, headers: &axum::http::HeaderMap) -> RequestContext {
    RequestContext {
        request_id: super::request_id(headers),
        user_id: caller.user_id.clone(),
        project_id: caller.project_id.clone(),
        roles: caller.roles.clone(),
        ..RequestContext::default()
    }
}

pub(super) async fn submit(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.submit_task"), &caller)?;
    let task = gw.submit(&ctx_of(&caller, &headers), &body).await?;
    let at = location(&task.task_id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, at)], Json(task)).into_response())
}

/// `GET /v1/tasks` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    host: Option<String>,
}

pub(super) async fn list(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskInfo>>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.list_tasks"), &caller)?;
    let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<TaskStatus>().map_err(|e| bad_request(format!("status: {e}")))?),
        None => None,
    };
    let host = q.host.as_deref().filter(|h| !h.is_empty());
    let ctx = ctx_of(&caller, &headers);
    let mut tasks = gw.tasks.list(host, status).await.map_err(db_error)?;
    tasks.retain(|t| t.visible_to(&ctx));
    Ok(Json(tasks))
}

pub(super) async fn show(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.get_task"), &caller)?;
    Ok(Json(gw.task(&ctx_of(&caller, &headers), &id).await?))
}

pub(super) async fn kill(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.kill_task"), &caller)?;
    Ok(Json(gw.kill(&ctx_of(&caller, &headers), &id).await?))
}

/// `?follow=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// Which stream of a task.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn of(self, t: &TaskInfo) -> (&str, u64) {
        match self {
            Stream::Stdout => (&t.stdout, t.stdout_bytes),
            Stream::Stderr => (&t.stderr, t.stderr_bytes),
        }
    }
}

/// What of `tail` (the last bytes of a stream that carried `total` bytes)
/// comes after the first `sent` bytes.
fn unsent(tail: &str, total: u64, sent: u64) -> String {
    let new = total.saturating_sub(sent);
    let have = tail.len() as u64;
    if new == 0 {
        return String::new();
    }
    if new > have {
        // More came than the tail keeps.
        return format!("[… {} bytes not kept …]\n{tail}", new - have);
    }
    let start = (have - new) as usize;
    // The tail is text, cut on a character boundary.
    let start = (start..=tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
    tail[start..].to_owned()
}

async fn output(
    gw: Gateway,
    caller: Caller,
    headers: axum::http::HeaderMap,
    id: String,
    q: OutputQuery,
    which: Stream,
) -> Result<Response, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.get_task"), &caller)?;
    let ctx = ctx_of(&caller, &headers);
    let first = gw.task(&ctx, &id).await?;
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")];
    if !q.follow {
        return Ok((plain, which.of(&first).0.to_owned()).into_response());
    }
    // Follow: what is there, then what comes, until the task has ended.
    let (tail, total) = which.of(&first);
    let start = (unsent(tail, total, 0), total, first.status.is_final());
    let chunks = futures_util::stream::unfold(Some(start), move |state| {
        let (gw, ctx, id) = (gw.clone(), ctx.clone(), id.clone());
        async move {
            let (chunk, mut sent, ended) = state?;
            if !chunk.is_empty() || ended {
                let next = (!ended).then(|| (String::new(), sent, false));
                return Some((Ok::<_, Infallible>(Bytes::from(chunk)), next));
            }
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Ok(t) = gw.task(&ctx, &id).await else { return None };
                let (tail, total) = which.of(&t);
                let chunk = unsent(tail, total, sent);
                sent = total.max(sent);
                if !chunk.is_empty() || t.status.is_final() {
                    let next = (!t.status.is_final()).then(|| (String::new(), sent, false));
                    return Some((Ok(Bytes::from(chunk)), next));
                }
            }
        }
    });
    Ok((plain, Body::from_stream(chunks)).into_response())
}

/// `GET /v1/tasks/{id}/stdout` and `/stderr`.
pub(super) async fn output_of(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path((id, stream)): Path<(String, String)>,
    q: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let which = match stream.as_str() {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no {other} of a task: stdout or stderr"),
            ))
        }
    };
    let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
    output(gw, caller, headers, id, q, which).await
}

pub(super) async fn queues(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<QueueStats>>, ApiError> {
    gw.authorize("api:services", &caller)?;
    Ok(Json(gw.queues().await?))
}

#[cfg(test)]
mod tests {
    use super::unsent;

    #[test]
    fn unsent_output() {
        assert_eq!(unsent("abcdef", 6, 0), "abcdef");
        assert_eq!(unsent("abcdef", 6, 4), "ef");
        assert_eq!(unsent("abcdef", 6, 6), "");
        assert_eq!(unsent("cdef", 6, 0), "[… 2 bytes not kept …]\ncdef");
        assert_eq!(unsent("é", 2, 1), "");
    }
}
