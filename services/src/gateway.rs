//! The gateway's tasks resource (feature `gateway`): submit, list, read,
//! follow and kill tasks over HTTP, wherever they run, and the console's
//! tasks page. [`resource`] gives it to a [`Gateway`].
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/tasks` | `{"name", "args", "task_id", "callback_url", "notify"}` → 202, `Location`; idempotent on `task_id` |
//! | `GET /v1/tasks?status=&host=` | the tasks, oldest change first |
//! | `GET /v1/tasks/{id}` | one task, with live output while it runs |
//! | `GET /v1/tasks/{id}/stdout` (`/stderr`) | the output's tail; `?follow=true` streams it until the task ends |
//! | `DELETE /v1/tasks/{id}` | kill it (or cancel it while it waits in the queue) |
//! | `GET /tasks[?id=&status=&host=&page=]` | the console's tasks page: filtered by status and host, 50 a page, newest first |
//!
//! A submitted task is recorded `queued` (no host yet) and cast to the
//! work queue (`compute_work`, `[compute] work_queue`) as `submit_task`;
//! the first host with a free slot takes it. The gateway finds a task's host from its record. Policy
//! targets are the compute methods: `compute.submit_task`,
//! `compute.list_tasks`, `compute.get_task`, `compute.kill_task`.
//!
//! A task belongs to the project (and user) that submitted it. A caller
//! lists, reads, follows and kills its own project's tasks only; another
//! project's task is answered 404, as Nova answers for another project's
//! server. Callers with the `admin` role see every project's tasks.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use maud::html;
use nova_gateway::{console::document, request_id, ApiError, Caller, Gateway, Resource, Routes};
use nova_rpc::{RequestContext, RpcClient, RpcError, Target};
use serde::Deserialize;

use crate::{
    api::compute::{ComputeClient, NotifyTarget, TaskInfo, TaskStatus},
    compute::{tasks::TaskStore, ComputePin},
};

/// The topic of the tasks' hosts (and of the policy targets).
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

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "TaskNotFound", format!("task {id} not found"))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn location(id: &str) -> String {
    format!("/v1/tasks/{id}")
}

/// The tasks resource for `gateway`: its routes, OpenAPI paths and console page.
pub fn resource(gateway: &Gateway) -> Resource {
    resource_pinned(gateway, ComputePin::default())
}

/// The tasks resource, its compute client under `pin`: under a pin below
/// 1.1, a submitted task is refused here (409 `UnsupportedVersion`) instead
/// of being cast where an old host would refuse it.
pub fn resource_pinned(gateway: &Gateway, pin: ComputePin) -> Resource {
    let store = TaskStore::new(gateway.records().database().clone());
    let work_queue = gateway.work_queue(TASK_TOPIC);
    let tasks = Tasks { client: gateway.client().clone(), store, pin, work_queue };
    let routes = Routes::new()
        .get("/v1/tasks", list)
        .post("/v1/tasks", submit)
        .get("/v1/tasks/{id}", show)
        .delete("/v1/tasks/{id}", kill)
        .get("/v1/tasks/{id}/{stream}", output_of)
        .get("/tasks", page)
        .with_extension(tasks);
    let openapi = serde_json::from_str(OPENAPI).unwrap_or_default();
    Resource::new(routes).with_openapi(openapi).with_console_link("/tasks", "tasks")
}

/// The resource's part of the gateway's OpenAPI document.
const OPENAPI: &str = include_str!("gateway.openapi.json");

/// What the handlers share: the gateway's client, the task table, the pin.
#[derive(Clone)]
struct Tasks {
    client: RpcClient,
    store: TaskStore,
    pin: ComputePin,
    /// Where submitted tasks are cast.
    work_queue: String,
}

impl Tasks {
    /// The compute client to `target`, under the pin.
    fn pinned(&self, target: Target) -> ComputeClient {
        self.pin.apply(ComputeClient::new(self.client.with_target(target)))
    }

    fn compute(&self, host: &str) -> ComputeClient {
        let target = Target::new(TASK_TOPIC).with_server(host);
        ComputeClient::new(self.pinned(target).rpc_client().with_timeout(Duration::from_secs(3)))
    }

    /// A task as it stands: its record, or, while it runs, its host's live
    /// view (with the output so far).
    async fn task(&self, ctx: &RequestContext, id: &str) -> Result<TaskInfo, ApiError> {
        if !valid_id(id) {
            return Err(not_found(id));
        }
        let record = self
            .store
            .get(id)
            .await
            .map_err(ApiError::database)?
            .filter(|t| t.visible_to(ctx))
            .ok_or_else(|| not_found(id))?;
        if record.status.is_final() || record.host.is_empty() {
            return Ok(record);
        }
        Ok(self.compute(&record.host).get_task(ctx, id.to_owned()).await.unwrap_or(record))
    }

    /// Record and submit a task; an id that exists answers with its task.
    async fn submit(&self, ctx: &RequestContext, body: &[u8]) -> Result<TaskInfo, ApiError> {
        let s: Submit = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body: {e}")))?;
        let id = s.task_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if !valid_id(&id) {
            return Err(ApiError::bad_request(
                "task_id must be 1 to 255 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if s.name.is_empty() {
            return Err(ApiError::bad_request("name must name an allowed command"));
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
        if !self.store.insert(&info).await.map_err(ApiError::database)? {
            // The id is taken: its task, if it is the caller's to see.
            let existing = self.store.get(&id).await.map_err(ApiError::database)?.filter(|t| t.visible_to(ctx));
            return existing
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "TaskExists", format!("task {id} exists already")));
        }
        let queue = self.pinned(Target::new(&self.work_queue));
        if let Err(e) = queue.submit_task(ctx, s.name, s.args, id.clone(), s.notify, s.callback_url).await {
            let mut failed = info;
            failed.status = TaskStatus::Failed;
            failed.error = Some(format!("not submitted: {e}"));
            let _ = self.store.update(&failed).await;
            let mut err = ApiError::from(RpcError::from(e));
            if err.status() == StatusCode::NOT_FOUND {
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
            if self.store.cancel_unclaimed(&killed).await.map_err(ApiError::database)? {
                return Ok(killed);
            }
            // A host took it meanwhile: kill it there.
            let record = self.store.get(id).await.map_err(ApiError::database)?.ok_or_else(|| not_found(id))?;
            return Ok(self.compute(&record.host).kill_task(ctx, id.to_owned()).await.map_err(RpcError::from)?);
        }
        Ok(self.compute(&record.host).kill_task(ctx, id.to_owned()).await.map_err(RpcError::from)?)
    }
}

async fn submit(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.submit_task"), &caller)?;
    let task = tasks.submit(&caller.context(request_id(&headers)), &body).await?;
    let at = location(&task.task_id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, at)], Json(task)).into_response())
}

/// `GET /v1/tasks` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    host: Option<String>,
}

async fn list(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskInfo>>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.list_tasks"), &caller)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<TaskStatus>().map_err(|e| ApiError::bad_request(format!("status: {e}")))?),
        None => None,
    };
    let host = q.host.as_deref().filter(|h| !h.is_empty());
    let ctx = caller.context(request_id(&headers));
    let mut tasks = tasks.store.list(host, status).await.map_err(ApiError::database)?;
    tasks.retain(|t| t.visible_to(&ctx));
    Ok(Json(tasks))
}

async fn show(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.get_task"), &caller)?;
    Ok(Json(tasks.task(&caller.context(request_id(&headers)), &id).await?))
}

async fn kill(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.kill_task"), &caller)?;
    Ok(Json(tasks.kill(&caller.context(request_id(&headers)), &id).await?))
}

/// `?follow=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
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
    (gw, tasks): (Gateway, Tasks),
    caller: Caller,
    headers: HeaderMap,
    id: String,
    q: OutputQuery,
    which: Stream,
) -> Result<Response, ApiError> {
    gw.authorize(&format!("{TASK_TOPIC}.get_task"), &caller)?;
    let ctx = caller.context(request_id(&headers));
    let first = tasks.task(&ctx, &id).await?;
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")];
    if !q.follow {
        return Ok((plain, which.of(&first).0.to_owned()).into_response());
    }
    // Follow: what is there, then what comes, until the task has ended.
    let (tail, total) = which.of(&first);
    let start = (unsent(tail, total, 0), total, first.status.is_final());
    let chunks = futures_util::stream::unfold(Some(start), move |state| {
        let (tasks, ctx, id) = (tasks.clone(), ctx.clone(), id.clone());
        async move {
            let (chunk, mut sent, ended) = state?;
            if !chunk.is_empty() || ended {
                let next = (!ended).then(|| (String::new(), sent, false));
                return Some((Ok::<_, Infallible>(Bytes::from(chunk)), next));
            }
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Ok(t) = tasks.task(&ctx, &id).await else { return None };
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
async fn output_of(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
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
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    output((gw, tasks), caller, headers, id, q, which).await
}

/// `GET /tasks[?id=]`: the console's tasks page, newest first, and one
/// task's output. The page reloads itself every two seconds while something
/// is queued or running, so output shows as it comes.
async fn page(
    State(gw): State<Gateway>,
    Extension(tasks): Extension<Tasks>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = gw.authorize(&format!("{TASK_TOPIC}.list_tasks"), &caller) {
        return e.into_response();
    }
    let ctx = caller.context(request_id(&headers));
    let filter = match PageFilter::of(&q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (mut listed, trouble) = match tasks.store.list(filter.host.as_deref(), filter.status).await {
        Ok(t) => (t, None),
        Err(e) => (Vec::new(), Some(format!("cannot read tasks: {e}"))),
    };
    listed.retain(|t| t.visible_to(&ctx));
    listed.reverse();
    let live = listed.iter().any(|t| !t.status.is_final());
    let total = listed.len();
    let shown: Vec<TaskInfo> = listed.into_iter().skip(filter.first()).take(PAGE_SIZE).collect();
    let chosen = match q.get("id") {
        Some(id) => Some(tasks.task(&ctx, id).await.map_err(|e| e.message().to_owned())),
        None => None,
    };
    let body = page_body(&shown, chosen.as_ref(), trouble, live, &filter, total);
    let mut page = document("nova-rs tasks", body);
    if live {
        page.headers_mut().insert(header::REFRESH, axum::http::HeaderValue::from_static("2"));
    }
    page
}

/// Tasks the console's page shows at once.
pub const PAGE_SIZE: usize = 50;

/// The tasks page's filters and page (`?status=&host=&page=`).
#[derive(Debug, Clone, Default)]
struct PageFilter {
    status: Option<TaskStatus>,
    host: Option<String>,
    /// 1-based.
    page: usize,
}

impl PageFilter {
    fn of(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let status = match q.get("status").map(String::as_str) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<TaskStatus>().map_err(ApiError::bad_request)?),
        };
        let host = q.get("host").filter(|h| !h.is_empty()).cloned();
        let page = match q.get("page") {
            None => 1,
            Some(p) => p
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| ApiError::bad_request("page: a number from 1"))?,
        };
        Ok(Self { status, host, page })
    }

    fn first(&self) -> usize {
        (self.page - 1).saturating_mul(PAGE_SIZE)
    }

    /// This page's link with the same filters, at `page`.
    fn link(&self, page: usize) -> String {
        let mut q = vec![format!("page={page}")];
        if let Some(s) = self.status {
            q.push(format!("status={}", s.as_str()));
        }
        if let Some(h) = &self.host {
            let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
            let host: String =
                h.bytes().map(|b| if safe(b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect();
            q.push(format!("host={host}"));
        }
        format!("/tasks?{}", q.join("&"))
    }
}

/// The tasks page's content: the chosen task's output, then the table.
fn page_body(
    listed: &[TaskInfo],
    chosen: Option<&Result<TaskInfo, String>>,
    trouble: Option<String>,
    live: bool,
    filter: &PageFilter,
    total: usize,
) -> maud::Markup {
    let statuses = ["queued", "running", "succeeded", "failed", "killed"];
    let (first, last) = (filter.first() + 1, filter.first() + listed.len());
    let more = filter.first() + listed.len() < total;
    let when = |t: &Option<chrono::NaiveDateTime>| t.map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_default();
    html! {
        h1 { "Tasks" }
        p { a href="/" { "console" } " · " span #live data-live=(live) { (if live { "live: reloading every 2 s" } else { "all tasks ended" }) } }
        @if let Some(t) = trouble { p.disabled { (t) } }
        @if let Some(chosen) = chosen {
            @match chosen {
                Ok(t) => {
                    h2 #task data-status=(t.status.as_str()) { (t.task_id) " · " (t.status.as_str()) }
                    p { "host " code { (t.host) } " · argv " code { (t.argv.join(" ")) }
                        @if let Some(e) = &t.error { " · " span.err { (e) } } }
                    h3 { "stdout " a href=(format!("/v1/tasks/{}/stdout?follow=true", t.task_id)) { "(follow)" } }
                    pre #stdout { (t.stdout) }
                    h3 { "stderr" }
                    pre #stderr { (t.stderr) }
                }
                Err(e) => p.err { (e) },
            }
        }
        form #task-filter method="get" action="/tasks" {
            label { "status" }
            select name="status" {
                option value="" { "any" }
                @for st in statuses { option value=(st) selected[filter.status.map(|s| s.as_str()) == Some(st)] { (st) } }
            }
            " " label { "host" } input name="host" value=(filter.host.clone().unwrap_or_default()) autocomplete="off";
            " " button type="submit" { "Show" }
        }
        p.note #pager data-total=(total) data-page=(filter.page) {
            @if listed.is_empty() { "no task" } @else { "tasks " (first) "–" (last) " of " (total) ", newest first" }
            @if filter.page > 1 { " · " a #newer href=(filter.link(filter.page - 1)) { "newer" } }
            @if more { " · " a #older href=(filter.link(filter.page + 1)) { "older" } }
        }
        table #tasks {
            tr { th { "Task" } th { "Command" } th { "Host" } th { "Status" } th { "Submitted" } th { "Started" } th { "Finished" } th { "Exit" } }
            @for t in listed {
                tr data-status=(t.status.as_str()) {
                    td { a href=(format!("/tasks?id={}", t.task_id)) { (t.task_id) } }
                    td { code { (t.name) " " (t.args.join(" ")) } }
                    td { (t.host) }
                    td class=(t.status.as_str()) { (t.status.as_str()) }
                    td { (when(&t.submitted_at)) }
                    td { (when(&t.started_at)) }
                    td { (when(&t.finished_at)) }
                    td { (t.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                }
            }
        }
    }
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
