//! Tasks as a resource: every route of the gateway's tasks API, the
//! `nova-rpc task` commands, the FUSE mount, and queue depth on the API and
//! on /metrics; all against `nova-all` (one compute, memory://, SQLite).

use std::{path::Path, time::Duration};

use nova_tests::{bin_path, eventually, http, NovaAll, NovaAllSetup, Proc};
use serde_json::Value;

fn url(all: &NovaAll) -> String {
    format!("http://127.0.0.1:{}", all.port)
}

/// `nova-all` as host `h1`, running two tasks at once from a short allow-list.
async fn nova_all() -> NovaAll {
    let config = "[compute]\nmax_tasks = 2\nallowed_commands = sh = /bin/sh -c, sleep = /bin/sleep, echo = /bin/echo\n";
    NovaAll::start_with(NovaAllSetup { args: &["--host", "h1"], config: Some(config), ..NovaAllSetup::default() }).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The body of a chunked response.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        raw = &rest[n + 2..];
    }
    out
}

async fn task_when(port: u16, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually("the task gets there", Duration::from_secs(30), || async {
        let (status, _, body) = http("GET", port, &format!("/v1/tasks/{id}"), &[], b"").expect("the gateway answers");
        let t = json(&body);
        (status == 200 && done(&t)).then_some(t)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_tasks_api() {
    let all = nova_all().await;
    let port = all.port;
    let post = |body: &str| http("POST", port, "/v1/tasks", &[], body.as_bytes()).expect("the gateway answers");

    // Bad bodies name the field.
    let (status, _, body) = post(r#"{"nmae": "echo"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nmae"), "{body}");
    let (status, _, body) = post(r#"{"args": []}"#);
    assert!(status == 400 && body.contains("name"), "{body}");
    let (status, _, body) = post(r#"{"name": "echo", "task_id": "no spaces"}"#);
    assert!(status == 400 && body.contains("task_id"), "{body}");
    let (status, _, body) = post("[1]");
    assert_eq!(status, 400, "{body}");

    // Submit: 202 and a Location; the same id again runs nothing new.
    let script = r#"{"name": "sh", "args": ["echo one; sleep 1; echo two; echo oops >&2"], "task_id": "t1"}"#;
    let (status, headers, body) = post(script);
    assert_eq!(status, 202, "{body}");
    assert_eq!(header(&headers, "location"), Some("/v1/tasks/t1"));
    let (status, headers, _) = post(script);
    assert_eq!((status, header(&headers, "location")), (202, Some("/v1/tasks/t1")));

    // A followed stdout streams until the task ends.
    let (status, headers, raw) =
        http("GET", port, "/v1/tasks/t1/stdout?follow=true", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(dechunk(&raw), "one\ntwo\n");
    let t1 = task_when(port, "t1", |t| t["status"] == "succeeded").await;
    assert_eq!(t1["host"], "h1", "{t1}");
    let (_, _, stderr) = http("GET", port, "/v1/tasks/t1/stderr", &[], b"").expect("the gateway answers");
    assert_eq!(stderr, "oops\n");
    let (status, _, _) = http("GET", port, "/v1/tasks/t1/stdin", &[], b"").expect("the gateway answers");
    assert_eq!(status, 404);

    // Listing, with filters.
    let (status, _, body) =
        http("GET", port, "/v1/tasks?status=succeeded&host=h1", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    let ids: Vec<_> = json(&body).as_array().unwrap().iter().map(|t| t["task_id"].clone()).collect();
    assert_eq!(ids, [Value::from("t1")], "ran once: {body}");
    let (status, _, body) = http("GET", port, "/v1/tasks?status=bogus", &[], b"").expect("the gateway answers");
    assert!(status == 400 && body.contains("status"), "{body}");
    let (status, _, body) = http("GET", port, "/v1/tasks?host=elsewhere", &[], b"").expect("the gateway answers");
    assert_eq!((status, json(&body)), (200, Value::Array(vec![])));

    // Bad ids are not found.
    for path in ["/v1/tasks/nope", "/v1/tasks/bad%20id", "/v1/tasks/nope/stdout"] {
        let (status, _, body) = http("GET", port, path, &[], b"").expect("the gateway answers");
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(json(&body)["error"]["class"], "TaskNotFound", "{path}");
    }
    let (status, _, _) = http("DELETE", port, "/v1/tasks/nope", &[], b"").expect("the gateway answers");
    assert_eq!(status, 404);

    // Kill a running task.
    let (status, _, _) = post(r#"{"name": "sleep", "args": ["30"], "task_id": "t2"}"#);
    assert_eq!(status, 202);
    task_when(port, "t2", |t| t["status"] == "running").await;
    let (status, _, body) = http("DELETE", port, "/v1/tasks/t2", &[], b"").expect("the gateway answers");
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("killed")), "{body}");

    // Queue depth on the API and on /metrics.
    let (status, _, body) = http("GET", port, "/v1/queues", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let compute = json(&body).as_array().unwrap().iter().find(|q| q["queue"] == "compute").cloned();
    let compute = compute.unwrap_or_else(|| panic!("the compute queue is listed: {body}"));
    assert_eq!(compute["messages"], 0, "{compute}");
    let (_, _, metrics) = http("GET", port, "/metrics", &[], b"").expect("the gateway answers");
    assert!(metrics.contains("nova_queue_messages{queue=\"compute\"} 0"), "{metrics}");
    assert!(metrics.contains("nova_queue_consumers{queue=\"compute\"}"), "{metrics}");
}

fn nova_rpc(all: &NovaAll, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin_path("nova-rpc"))
        .args(args)
        .env("NOVA_API", url(all))
        .env("NOVA_STATE_PATH", all.dir.path())
        .output()
        .expect("run nova-rpc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_commands() {
    let all = nova_all().await;
    let (code, out, err) = nova_rpc(&all, &["task", "submit", "--id", "c1", "--wait", "sh", "echo hello; echo there"]);
    assert_eq!((code, out.as_str()), (0, "hello\nthere\n"), "{err}");
    let (code, out, _) = nova_rpc(&all, &["task", "list", "--status", "succeeded"]);
    assert!(code == 0 && out.lines().any(|l| l.starts_with("c1") && l.contains("succeeded")), "{out}");
    let (code, out, _) = nova_rpc(&all, &["task", "logs", "c1"]);
    assert_eq!((code, out.as_str()), (0, "hello\nthere\n"));
    let (code, out, _) = nova_rpc(&all, &["task", "show", "c1"]);
    assert_eq!((code, json(&out)["status"].as_str()), (0, Some("succeeded")));
    let (code, id, _) = nova_rpc(&all, &["task", "submit", "sleep", "30"]);
    assert_eq!(code, 0);
    let id = id.trim().to_owned();
    task_when(all.port, &id, |t| t["status"] == "running").await;
    let (code, out, _) = nova_rpc(&all, &["task", "kill", &id]);
    assert_eq!((code, json(&out)["status"].as_str()), (0, Some("killed")));
    let (code, _, err) = nova_rpc(&all, &["task", "show", "missing"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("TaskNotFound"), "{err}");
    let (code, _, err) = nova_rpc(&all, &["task", "submit", "--wait", "rm", "-rf", "/"]);
    assert_eq!(code, 1, "a refused command fails: {err}");
}

fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_mounted_as_files() {
    let all = nova_all().await;
    let mnt = all.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let url = url(&all);
    let mut mount = Proc::spawn("nova-rpc", &["mount", "--api", &url, mnt.to_str().unwrap()], all.dir.path());
    eventually("the tasks are mounted", Duration::from_secs(20), || async { mounted(&mnt).then_some(()) }).await;

    std::fs::write(mnt.join("ctl"), r#"{"name": "sh", "args": ["echo from a file"], "task_id": "m1"}"#).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("ctl")).unwrap(), "m1\n");
    let status = eventually("the task succeeded", Duration::from_secs(30), || async {
        std::fs::read_to_string(mnt.join("m1/status")).ok().filter(|s| s == "succeeded\n")
    })
    .await;
    assert_eq!(status, "succeeded\n");
    assert_eq!(std::fs::read_to_string(mnt.join("m1/stdout")).unwrap(), "from a file\n");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(mnt.join("m1/info")).unwrap()).unwrap();
    assert_eq!(info["host"], "h1");
    let listed: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(listed.contains(&"m1".to_owned()) && listed.contains(&"ctl".to_owned()), "{listed:?}");

    // Kill through a task's ctl; a bad task is refused at close.
    std::fs::write(mnt.join("ctl"), r#"{"name": "sleep", "args": ["30"], "task_id": "m2"}"#).unwrap();
    eventually("m2 runs", Duration::from_secs(30), || async {
        std::fs::read_to_string(mnt.join("m2/status")).ok().filter(|s| s == "running\n")
    })
    .await;
    std::fs::write(mnt.join("m2/ctl"), "kill\n").unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("m2/status")).unwrap(), "killed\n");
    let refused = std::fs::write(mnt.join("ctl"), "not json");
    assert!(refused.is_err(), "a bad task is refused");
    assert!(std::fs::read_to_string(mnt.join("missing/status")).is_err());

    mount.signal("TERM");
    mount.wait_exit(Duration::from_secs(20)).expect("the mount exits on SIGTERM");
    assert!(!mounted(&mnt), "unmounted on SIGTERM");
}

/// The console's tasks page in headless Chromium: the tasks with status
/// and host, one task's output, live while something runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_page_in_a_real_browser() {
    let all = nova_all().await;
    let port = all.port;
    let post = |body: &str| http("POST", port, "/v1/tasks", &[], body.as_bytes()).expect("the gateway answers");
    assert_eq!(post(r#"{"name": "sh", "args": ["echo page-output"], "task_id": "p1"}"#).0, 202);
    task_when(port, "p1", |t| t["status"] == "succeeded").await;
    assert_eq!(post(r#"{"name": "sleep", "args": ["30"], "task_id": "p2"}"#).0, 202);
    task_when(port, "p2", |t| t["status"] == "running").await;
    let url = format!("http://127.0.0.1:{port}/tasks?id=p1");
    let script = r#"JSON.stringify({
        rows: [...document.querySelectorAll('#tasks tr[data-status]')].map((r) => [r.cells[0].innerText, r.dataset.status, r.cells[2].innerText]),
        chosen: document.getElementById('task').dataset.status,
        stdout: document.getElementById('stdout').innerText,
        live: document.getElementById('live').dataset.live})"#;
    let page = tokio::task::spawn_blocking(move || nova_tests::browser(&url, script, "console-tasks")).await.unwrap();
    let page: Value = serde_json::from_str(page.trim()).unwrap_or_else(|e| panic!("{e}: {page}"));
    let rows = page["rows"].as_array().unwrap();
    assert!(rows.contains(&serde_json::json!(["p1", "succeeded", "h1"])), "{page}");
    assert!(rows.contains(&serde_json::json!(["p2", "running", "h1"])), "{page}");
    assert_eq!(
        (page["chosen"].as_str(), page["stdout"].as_str()),
        (Some("succeeded"), Some("page-output\n")),
        "{page}"
    );
    assert_eq!(page["live"], "true", "a running task keeps the page reloading: {page}");
    let (status, headers, _) = http("GET", port, "/tasks", &[], b"").expect("the gateway answers");
    assert_eq!((status, header(&headers, "refresh")), (200, Some("2")));
    let (status, _, _) = http("DELETE", port, "/v1/tasks/p2", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    // Once the kill is saved, nothing runs: the page stops reloading.
    eventually("the page stops reloading", Duration::from_secs(30), || async {
        let (_, headers, _) = http("GET", port, "/tasks", &[], b"").expect("the gateway answers");
        header(&headers, "refresh").is_none().then_some(())
    })
    .await;
}

/// The console's tasks page filters by status and host, and pages through
/// many tasks (50 at a time, newest first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_page_filters_and_pages() {
    let all = nova_all().await;
    let port = all.port;
    let post = |body: String| http("POST", port, "/v1/tasks", &[], body.as_bytes()).expect("the gateway answers");
    for i in 0..55 {
        assert_eq!(post(format!(r#"{{"name": "echo", "args": ["{i}"], "task_id": "many-{i:02}"}}"#)).0, 202);
    }
    assert_eq!(post(r#"{"name": "sh", "args": ["exit 3"], "task_id": "the-failure"}"#.into()).0, 202);
    eventually("every task ended", Duration::from_secs(120), || async {
        let (_, _, body) = http("GET", port, "/v1/tasks", &[], b"").ok()?;
        let tasks = json(&body);
        let tasks = tasks.as_array()?;
        (tasks.len() == 56 && tasks.iter().all(|t| t["status"] == "succeeded" || t["status"] == "failed")).then_some(())
    })
    .await;
    let page = |query: &str| {
        let (status, _, body) = http("GET", port, &format!("/tasks{query}"), &[], b"").expect("the gateway answers");
        (status, body.matches("<tr data-status=").count(), body)
    };
    let (status, rows, body) = page("");
    assert_eq!((status, rows), (200, 50), "{body}");
    assert!(
        body.contains("tasks 1–50 of 56") && body.contains("id=\"older\"") && !body.contains("id=\"newer\""),
        "{body}"
    );
    let (_, rows, body) = page("?page=2");
    assert_eq!(rows, 6, "{body}");
    assert!(
        body.contains("tasks 51–56 of 56") && body.contains("id=\"newer\"") && !body.contains("id=\"older\""),
        "{body}"
    );
    let (_, rows, body) = page("?status=failed");
    assert_eq!(rows, 1, "{body}");
    assert!(body.contains("the-failure") && body.contains("of 1,"), "{body}");
    let (_, rows, _) = page("?status=succeeded&host=h1");
    assert_eq!(rows, 50, "the first page of 55 on h1");
    let (_, rows, body) = page("?host=elsewhere");
    assert_eq!(rows, 0, "{body}");
    assert!(body.contains("no task"), "{body}");
    assert_eq!(page("?status=lost").0, 400);
    assert_eq!(page("?page=0").0, 400);
}

/// The console's work-queue panel in Chromium: a backlog builds while the
/// host's two slots are busy (8 tasks of 2 s: it lasts 6 s, longer than
/// the panel's 2 s between samples) and drains as they free; the panel charts
/// backlog, work in flight, workers and consumers over time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_panel_follows_a_backlog() {
    let all = nova_all().await;
    let port = all.port;
    let url = format!("http://127.0.0.1:{port}/");
    // The page samples from when it opens: submit once it has a first sample.
    let script = r#"new Promise((done) => {
        let submitted = false, peak = 0, busy = 0;
        const look = setInterval(async () => {
            const chart = document.querySelector('#work .chart[data-queue="compute_work"]');
            if (!chart) return;
            if (!submitted) {
                submitted = true;
                for (let i = 0; i < 8; i++) {
                    await fetch('/v1/tasks', {method: 'POST', headers: {'Content-Type': 'application/json'},
                        body: JSON.stringify({name: 'sleep', args: ['2'], task_id: 'panel-' + i})});
                }
                return;
            }
            peak = Math.max(peak, Number(chart.dataset.peakBacklog));
            const legend = [...chart.querySelectorAll('.legend .item')].map((i) => i.textContent);
            if (legend[1].includes('(now 2)')) busy += 1;
            if (peak > 0 && chart.dataset.backlog === '0' && legend[1].includes('(now 0)')) {
                clearInterval(look);
                done(JSON.stringify({peak, busy, legend, lines: chart.querySelectorAll('polyline').length,
                    units: [...chart.querySelectorAll('text.unit')].map((t) => t.textContent)}));
            }
        }, 250);
    })"#;
    let page = tokio::task::spawn_blocking(move || nova_tests::browser(&url, script, "console-work")).await.unwrap();
    let page = json(page.trim());
    assert!(page["peak"].as_u64().unwrap_or(0) >= 1, "a backlog was charted: {page}");
    assert!(page["busy"].as_u64().unwrap_or(0) >= 1, "both slots were seen busy: {page}");
    assert_eq!(page["lines"], 4, "backlog, in flight, workers, consumers: {page}");
    assert_eq!(page["units"], serde_json::json!(["tasks", "workers"]), "{page}");
    let legend: Vec<&str> = page["legend"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(legend[0].starts_with("backlog") && legend[2] == "workers (now 1)", "{page}");
    let (status, _, body) = http("GET", port, "/v1/work", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let work = json(&body);
    assert_eq!(work[0]["queue"], "compute_work", "{work}");
    assert_eq!((work[0]["slots"].as_u64(), work[0]["workers"].as_u64()), (Some(2), Some(1)), "{work}");
}
