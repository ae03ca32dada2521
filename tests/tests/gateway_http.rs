//! The HTTP gateway and console of `nova-all` on its embedded defaults
//! (memory:// and SQLite in a private state directory): status codes and
//! error bodies, the request-id header, the size limit, the services list
//! and introspection, a task scheduled and read back over HTTP, and the
//! console page driving a call from its form in headless Chromium.

use std::time::Duration;

use nova_tests::{free_port, http, Proc, TempDir};
use serde_json::Value;

struct NovaAll {
    port: u16,
    _proc: Proc,
    _dir: TempDir,
}

/// Start `nova-all` on a free port and wait until both services are listed.
async fn nova_all() -> NovaAll {
    let dir = TempDir::new("gateway");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state");
    let proc = Proc::spawn(
        "nova-all",
        &["--listen", &listen, "--state-path", state.to_str().unwrap(), "--host", "gw1"],
        dir.path(),
    );
    nova_tests::eventually("nova-all lists its three services", Duration::from_secs(30), || async {
        let (status, _, body) = std::panic::catch_unwind(|| http("GET", port, "/v1/services", &[], b"")).ok()?;
        let services: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && services.as_array()?.len() == 3).then_some(())
    })
    .await;
    NovaAll { port, _proc: proc, _dir: dir }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// POST and return the status and the error class (when the body has one).
fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    let (status, _, text) = http("POST", port, path, &[("Content-Type", "application/json")], body.as_bytes());
    (status, if text.is_empty() { Value::Null } else { json(&text) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_and_error_bodies() {
    let all = nova_all().await;
    let port = all.port;
    let class = |v: &Value| v["error"]["class"].as_str().unwrap_or_default().to_owned();

    // A task scheduled and read back over HTTP (the README's quick start).
    let (status, placed) =
        post(port, "/v1/call/scheduler/schedule_task", r#"{"name": "echo", "args": ["hi", "there"]}"#);
    assert_eq!(status, 200, "{placed}");
    let path = format!("/v1/call/compute/{}/wait_task", placed["host"].as_str().unwrap());
    let (status, task) =
        post(port, &path, &format!(r#"{{"task_id": "{}", "timeout": 10}}"#, placed["task_id"].as_str().unwrap()));
    assert_eq!(
        (status, task["status"].as_str(), task["stdout"].as_str()),
        (200, Some("succeeded"), Some("hi there\n")),
        "{task}"
    );

    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", "{not json");
    assert_eq!((status, class(&body).as_str()), (400, "BadRequest"), "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", "[1, 2]");
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", r#"{"name": 5, "args": []}"#);
    assert_eq!(status, 400, "a mistyped argument is the caller's fault: {body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("name"), "names the argument: {body}");
    let (status, body) = post(port, "/v1/call/scheduler/no_such_thing", "{}");
    assert_eq!((status, class(&body).as_str()), (404, "NoSuchMethod"), "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/list_host_states?version=9.0", "{}");
    assert_eq!((status, class(&body).as_str()), (409, "UnsupportedVersion"), "{body}");
    let (status, body) = post(port, "/v1/call/nobody-listens/ping?timeout=0.3", "{}");
    assert_eq!((status, class(&body).as_str()), (504, "MessagingTimeout"), "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", r#"{"name": "rm", "args": ["-rf", "/"]}"#);
    assert_eq!((status, class(&body).as_str()), (500, "CommandNotAllowed"), "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/list_host_states?fanout=true", "{}");
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/list_host_states?bogus=1", "{}");
    assert_eq!(status, 400, "unknown query parameters are refused: {body}");

    let (status, body) = post(port, "/v1/cast/compute/report_capacity", "{}");
    assert_eq!((status, &body), (202, &serde_json::json!({"accepted": true})));
    let (status, _) = post(port, "/v1/cast/compute/report_capacity?fanout=true", "{}");
    assert_eq!(status, 202);

    // Bodies over the limit are refused before any RPC.
    let huge = format!(r#"{{"arg": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let (status, _, _) =
        http("POST", port, "/v1/call/compute/ping?namespace=baseapi&version=1.1", &[], huge.as_bytes());
    assert_eq!(status, 413);

    // The request id: the client's when valid, a fresh req-<uuid> otherwise.
    let mine = "req-0b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11";
    let ping = "/v1/call/compute/ping?namespace=baseapi&version=1.1";
    let (status, headers, body) = http("POST", port, ping, &[("X-OpenStack-Request-ID", mine)], br#"{"arg": 1}"#);
    assert_eq!((status, header(&headers, "x-openstack-request-id")), (200, Some(mine)), "{body}");
    assert_eq!(json(&body), serde_json::json!({"service": "nova-compute", "arg": 1}));
    let (_, headers, _) = http("POST", port, ping, &[("X-OpenStack-Request-ID", "evil\"<id>")], b"{}");
    let fresh = header(&headers, "x-openstack-request-id").expect("a request id");
    assert!(fresh.starts_with("req-") && fresh.len() == 40 && fresh != mine, "{fresh}");

    // Services and introspection.
    let (status, _, body) = http("GET", port, "/v1/services", &[], b"");
    assert_eq!(status, 200);
    let services = json(&body);
    for s in services.as_array().unwrap() {
        assert_eq!(
            (s["host"].as_str(), s["state"].as_str(), s["status"].as_str()),
            (Some("gw1"), Some("up"), Some("enabled")),
            "{s}"
        );
    }
    let (status, _, body) = http("GET", port, "/v1/services/compute/describe", &[], b"");
    assert_eq!(status, 200, "{body}");
    let d = json(&body);
    let methods: Vec<&str> =
        d["endpoints"][0]["methods"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(methods.contains(&"run_task") && methods.contains(&"get_task"), "{methods:?}");
}

/// Load the console in headless Chromium with a call pre-filled and
/// submitted from its form; return the DOM after the page settled.
fn chromium_dump(url: &str, profile: &TempDir) -> String {
    let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let out = std::process::Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=15000", "--dump-dom", url])
        .output()
        .unwrap_or_else(|e| {
            panic!("headless Chromium is required for the console test ({browser}: {e}); ./test.sh installs it")
        });
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_calls_a_method_in_a_real_browser() {
    let all = nova_all().await;
    let profile = TempDir::new("chromium");
    let url = format!(
        "http://127.0.0.1:{}/?mode=call&topic=compute&method=ping&namespace=baseapi&version=1.1&args=%7B%22arg%22%3A%22hello-browser%22%7D&run=1",
        all.port
    );
    let dom = tokio::task::spawn_blocking(move || chromium_dump(&url, &profile)).await.unwrap();
    assert!(dom.contains("<h1>nova-rs console</h1>"), "{dom}");
    assert!(
        dom.contains("nova-scheduler") && dom.contains("nova-compute") && dom.contains(r#"<span class="up">up</span>"#),
        "services with their state: {dom}"
    );
    assert!(dom.contains("schedule_task") && dom.contains("task_id: String"), "methods with their arguments: {dom}");
    let result = dom.split(r#"<pre id="result""#).nth(1).and_then(|r| r.split("</pre>").next()).unwrap_or_default();
    assert!(result.contains(r#"data-status="200""#), "the form's call succeeded: {result}");
    assert!(
        result.contains(r#""arg": "hello-browser""#) && result.contains(r#""service": "nova-compute""#),
        "{result}"
    );
}
