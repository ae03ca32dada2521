//! The HTTP gateway and console of `nova-all` on its embedded defaults
//! (memory:// and SQLite in a private state directory): status codes and
//! error bodies, the request-id header, the size limit, the services list
//! and introspection, a task scheduled and read back over HTTP, and the
//! console page driving a call from its form in headless Chromium, and
//! rendering hostile names as text.

use std::time::Duration;

use nova_tests::{browser, http, NovaAll, NovaAllSetup};
use serde_json::{json, Value};

/// `nova-all` on its defaults, as host `gw1`.
async fn nova_all() -> NovaAll {
    nova_all_with(&[]).await
}

/// `nova-all` with extra flags, as host `gw1`.
async fn nova_all_with(extra: &[&str]) -> NovaAll {
    let mut args = vec!["--host", "gw1"];
    args.extend_from_slice(extra);
    NovaAll::start_with(NovaAllSetup { args: &args, ..NovaAllSetup::default() }).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// POST and return the status and the error class (when the body has one).
fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    let (status, _, text) = http("POST", port, path, &[("Content-Type", "application/json")], body.as_bytes())
        .expect("the gateway answers");
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

    // `args` may be left out: it defaults to [].
    let (status, placed) = post(port, "/v1/call/scheduler/schedule_task", r#"{"name": "true"}"#);
    assert_eq!(status, 200, "{placed}");
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
    assert_eq!((status, class(&body).as_str()), (404, "MessageDeliveryFailure"), "no service takes the topic: {body}");
    let (status, body) = post(port, "/v1/call/compute/nohost/ping?namespace=baseapi&version=1.1", "{}");
    assert_eq!((status, class(&body).as_str()), (404, "MessageDeliveryFailure"), "no such server: {body}");
    let (status, body) =
        post(port, &path.replace("wait_task", "wait_task?timeout=0.3"), r#"{"task_id": "none", "timeout": 5}"#);
    assert_eq!(status, 404, "a task that does not exist: {body}");
    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", r#"{"name": "sleep", "args": ["3"]}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        port,
        &format!("/v1/call/compute/{}/wait_task?timeout=0.3", body["host"].as_str().unwrap()),
        &format!(r#"{{"task_id": "{}", "timeout": 10}}"#, body["task_id"].as_str().unwrap()),
    );
    // A wait answers within its caller's timeout, with the task still running.
    assert_eq!((status, body["status"].as_str()), (200, Some("running")), "{body}");
    let (status, body) = post(port, "/v1/call/scheduler/schedule_task", r#"{"name": "rm", "args": ["-rf", "/"]}"#);
    assert_eq!((status, class(&body).as_str()), (403, "CommandNotAllowed"), "{body}");
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
        http("POST", port, "/v1/call/compute/ping?namespace=baseapi&version=1.1", &[], huge.as_bytes())
            .expect("the gateway answers");
    assert_eq!(status, 413);

    // The request id: the client's when valid, a fresh req-<uuid> otherwise.
    let mine = "req-0b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11";
    let ping = "/v1/call/compute/ping?namespace=baseapi&version=1.1";
    let (status, headers, body) =
        http("POST", port, ping, &[("X-OpenStack-Request-ID", mine)], br#"{"arg": 1}"#).expect("the gateway answers");
    assert_eq!((status, header(&headers, "x-openstack-request-id")), (200, Some(mine)), "{body}");
    assert_eq!(json(&body), serde_json::json!({"service": "nova-compute", "arg": 1}));
    let (_, headers, _) =
        http("POST", port, ping, &[("X-OpenStack-Request-ID", "evil\"<id>")], b"{}").expect("the gateway answers");
    let fresh = header(&headers, "x-openstack-request-id").expect("a request id");
    assert!(fresh.starts_with("req-") && fresh.len() == 40 && fresh != mine, "{fresh}");

    // Services and introspection.
    let (status, _, body) = http("GET", port, "/v1/services", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    let services = json(&body);
    for s in services.as_array().unwrap() {
        assert_eq!(
            (s["host"].as_str(), s["state"].as_str(), s["status"].as_str()),
            (Some("gw1"), Some("up"), Some("enabled")),
            "{s}"
        );
    }
    let (status, _, body) = http("GET", port, "/v1/services/compute/describe", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let d = json(&body);
    let methods: Vec<&str> =
        d["endpoints"][0]["methods"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(methods.contains(&"run_task") && methods.contains(&"get_task"), "{methods:?}");
}

/// Click `use` on baseapi's ping, fill the arguments, send, and wait for the answer.
const CALL_FROM_THE_FORM: &str = r#"(async () => {
  document.querySelector('button.use[data-method="ping"][data-namespace="baseapi"]').click();
  document.getElementById('call').args.value = '{"arg": "hello-browser"}';
  document.getElementById('submit').click();
  for (let i = 0; i < 300; i++) {
    if (document.getElementById('result').dataset.status) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return document.documentElement.outerHTML;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_calls_a_method_in_a_real_browser() {
    let all = nova_all().await;
    let url = format!("http://127.0.0.1:{}/", all.port);
    let dom = tokio::task::spawn_blocking(move || browser(&url, CALL_FROM_THE_FORM, "console")).await.unwrap();
    assert!(dom.contains("<h1>nova-rs console</h1>"), "{dom}");
    assert!(
        dom.contains("nova-scheduler") && dom.contains("nova-compute") && dom.contains(r#"<span class="up">up</span>"#),
        "services with their state: {dom}"
    );
    assert!(dom.contains("schedule_task") && dom.contains("task_id: String"), "methods with their arguments: {dom}");
    assert!(dom.contains("a liveness check"), "method docs are shown: {dom}");
    let result = dom.split(r#"<pre id="result""#).nth(1).and_then(|r| r.split("</pre>").next()).unwrap_or_default();
    assert!(result.contains(r#"data-status="200""#), "the form's call succeeded: {result}");
    assert!(
        result.contains(r#""arg": "hello-browser""#) && result.contains(r#""service": "nova-compute""#),
        "{result}"
    );
}

/// A service that answers `describe` with hostile method names and docs.
fn hostile_describe() -> nova_rpc::dispatcher::Dispatcher {
    use nova_rpc::{dispatcher::Router, RequestContext, RpcError, Version};
    let r = Router::new(Version::new(1, 1)).namespace("baseapi").method(
        "describe",
        |_ctx: RequestContext, _: Value| async {
            let method = json!({"name": "m');window.__pwned=6;('", "doc": "<img src=x onerror=window.__pwned=7>",
                            "args": [{"name": "a\"><script>window.__pwned=8</script>", "type": "String"}]});
            Ok::<_, RpcError>(
                json!({"endpoints": [{"namespace": "x');window.__pwned=9;('", "version": "1.0", "methods": [method]}]}),
            )
        },
    );
    nova_rpc::dispatcher::Dispatcher::new(vec![std::sync::Arc::new(r)])
}

/// Press every `use` button, then report whether any injected script ran and what the page shows.
const PRESS_EVERY_BUTTON: &str = r#"(() => {
  const buttons = [...document.querySelectorAll('button.use')];
  for (const b of buttons) b.click();
  const hostile = buttons.find((b) => b.dataset.method.startsWith("m'"));
  if (hostile) hostile.click();
  return JSON.stringify({pwned: window.__pwned === undefined ? null : window.__pwned,
                         buttons: document.querySelectorAll('button.use').length,
                         method: document.getElementById('call').method.value,
                         text: document.body.innerText});
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_hostile_names_as_text_and_runs_none() {
    // On RabbitMQ, so that a service of the test's own answers `describe`.
    let vhost = nova_tests::TestVhost::new();
    let url = vhost.url();
    let exchange = nova_tests::unique("nova");
    let all = nova_all_with(&["--transport-url", &url, "--control-exchange", &exchange]).await;
    let topic = "evil');window.__pwned=4;('<script>window.__pwned=5</script>";
    let options = nova_rpc::transport::TransportOptions::new(url.clone()).with_control_exchange(exchange.clone());
    let t = nova_rpc::transport::connect(options).await.unwrap();
    let server = nova_rpc::RpcServer::new(t, nova_rpc::Target::new(topic).with_server("e1"), hostile_describe())
        .start()
        .await
        .unwrap();
    // Hostile names in the services table, as any service with database access may write them.
    let evil = [
        ("h1'<script>window.__pwned=1</script>", "nova-x\"><img src=x onerror=\"window.__pwned=2\">"),
        ("h2');window.__pwned=3;('", "nova-y"),
    ];
    let db =
        nova_core::db::Database::connect(&format!("sqlite:///{}", all.dir.path().join("state/nova.sqlite").display()))
            .await
            .unwrap();
    let records = nova_core::db::services::ServiceRecords::new(db);
    for (host, binary) in evil {
        let r = records.create_or_update(host, binary, topic, 1).await.unwrap();
        records.report(r.id).await.unwrap();
    }
    let page_url = format!("http://127.0.0.1:{}/", all.port);
    let out = tokio::task::spawn_blocking(move || browser(&page_url, PRESS_EVERY_BUTTON, "console-hostile-names"))
        .await
        .unwrap();
    let page: Value = json(out.trim());
    assert_eq!(page["pwned"], Value::Null, "no injected script ran: {page}");
    assert!(page["buttons"].as_u64().unwrap_or(0) > 4, "the hostile methods have buttons too: {page}");
    assert_eq!(page["method"], "m');window.__pwned=6;('", "a button hands its method over as data: {page}");
    let text = page["text"].as_str().unwrap_or_default();
    for shown in [evil[0].0, evil[0].1, evil[1].0, topic, "<img src=x onerror=window.__pwned=7>"] {
        assert!(text.contains(shown), "{shown} is shown as text: {text}");
    }
    // The page says what it may run.
    let (_, headers, _) = http("GET", all.port, "/", &[], b"").expect("the gateway answers");
    assert!(
        header(&headers, "content-security-policy").is_some_and(|c| c.contains("script-src 'self'")),
        "{headers:?}"
    );
    server.stop(Duration::from_secs(5)).await;
}

/// Wait until the console has refreshed the services table and drawn a chart with data.
const CHARTS_AND_REFRESH: &str = r#"(async () => {
  for (let i = 0; i < 300; i++) {
    const chart = document.querySelector('#charts .chart[data-method="compute.ping"]');
    if (chart && Number(chart.dataset.peakRate) > 0 && document.getElementById('services').dataset.refreshed) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const chart = document.querySelector('#charts .chart[data-method="compute.ping"]');
  return JSON.stringify({
    peak: chart ? Number(chart.dataset.peakRate) : 0,
    points: chart ? Number(chart.dataset.points) : 0,
    lines: chart ? chart.querySelectorAll('polyline').length : 0,
    legend: chart ? [...chart.querySelectorAll('.legend .item')].map((i) => i.textContent) : [],
    units: chart ? [...chart.querySelectorAll('text.unit')].map((t) => t.textContent) : [],
    times: chart ? [...chart.querySelectorAll('text.tick')].map((t) => t.textContent).filter((t) => t === 'now' || t.endsWith(' s')).length : 0,
    refreshed: !!document.getElementById('services').dataset.refreshed,
    rows: document.querySelectorAll('#services tr').length,
  });
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_charts_a_burst_of_calls_and_refreshes_services() {
    let all = nova_all().await;
    let port = all.port;
    let history = |port| {
        let (status, _, body) = http("GET", port, "/v1/metrics/history", &[], b"").expect("the gateway answers");
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    // A burst of calls, until a sample after it shows them.
    let burst = || {
        for _ in 0..50 {
            let (status, _) = post(port, "/v1/call/compute/ping?namespace=baseapi&version=1.1", r#"{"arg": 1}"#);
            assert_eq!(status, 200);
        }
    };
    let points = nova_tests::eventually("the burst shows in the history", Duration::from_secs(30), || async {
        burst();
        let h = history(port);
        let points = h["compute.ping"].as_array().cloned().unwrap_or_default();
        points.iter().any(|p| p["rate"].as_f64().unwrap_or(0.0) > 0.0 && p["p50_ms"].is_number()).then_some(points)
    })
    .await;
    assert!(points.iter().all(|p| p["p99_ms"].is_null() || p["p99_ms"].as_f64() >= p["p50_ms"].as_f64()), "{points:?}");
    let url = format!("http://127.0.0.1:{port}/");
    let page = tokio::task::spawn_blocking(move || browser(&url, CHARTS_AND_REFRESH, "console-charts")).await.unwrap();
    let page = json(page.trim());
    assert!(page["peak"].as_f64().unwrap_or(0.0) > 0.0, "the chart has data: {page}");
    assert_eq!(page["lines"], 3, "rate, p50 and p99: {page}");
    let legend: Vec<&str> = page["legend"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(
        legend.len() == 3
            && legend[0].starts_with("calls/s")
            && legend[1] == "p50 latency, ms"
            && legend[2] == "p99 latency, ms",
        "{page}"
    );
    assert_eq!(page["units"], serde_json::json!(["calls/s", "ms"]), "each panel's value axis says its unit: {page}");
    assert_eq!(page["times"], 6, "each panel's time axis runs to now: {page}");
    assert_eq!(page["refreshed"], true, "the services table refreshed itself: {page}");
    assert_eq!(page["rows"], 4, "three services and the header: {page}");
}
