//! Observability: a request through the gateway → scheduler → compute is
//! one trace of three hops with the right parent links (on memory:// in
//! `nova-all`, and across processes on RabbitMQ, read back over HTTP and
//! with `nova-rpc trace`); a Python oslo hop in the middle keeps the trace;
//! metrics move with calls and errors, also at a service's
//! `--metrics-listen`; the log level changes at run time and a bad filter is
//! refused; and with no collector running, calls are neither slowed nor failed.

use std::{sync::Arc, time::Duration};

use nova_core::{testing::TestBus, ManagerHandle, Service};
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    layer::{
        metrics::MetricsLayer,
        trace::{Sampler, Span, TraceLayer, Tracer, TRACE_ID, TRACE_PARENT, TRACE_TOPIC},
    },
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_services::trace::{Limits, TraceCollector};
use nova_tests::{
    eventually, free_port, http, interop::PyPeer, unique, NovaAll, NovaAllSetup, Proc, TempDir, TestDb, TestVhost,
};
use serde_json::{json, Value};

fn spans_of(trace: &Value) -> Vec<Span> {
    serde_json::from_value(trace["spans"].clone()).unwrap_or_default()
}

/// Schedule a task through the gateway on `port`; the trace read back.
async fn traced_request(port: u16) -> (String, Value) {
    traced_request_explained(port, String::new).await
}

/// [`traced_request`], saying `explain()` (the services' logs) if the trace never completes.
async fn traced_request_explained(port: u16, explain: impl Fn() -> String) -> (String, Value) {
    let (status, headers, body) =
        http("POST", port, "/v1/call/scheduler/schedule_task", &[], br#"{"name": "echo", "args": ["traced"]}"#)
            .expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let rid = headers.iter().find(|(k, _)| k == "x-openstack-request-id").map(|(_, v)| v.clone()).expect("request id");
    let trace = nova_tests::eventually_explained(
        "the trace has three hops",
        Duration::from_secs(30),
        || async {
            let (status, _, body) =
                http("GET", port, &format!("/v1/traces/{rid}"), &[], b"").expect("the gateway answers");
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && spans_of(&v).len() == 3).then_some(v)
        },
        explain,
    )
    .await;
    (rid, trace)
}

fn check_three_hops(rid: &str, trace: &Value) {
    let spans = spans_of(trace);
    let by =
        |service: &str| spans.iter().find(|s| s.service == service).unwrap_or_else(|| panic!("{service}: {spans:?}"));
    let (gw, sched, comp) = (by("nova-gateway"), by("nova-scheduler"), by("nova-compute"));
    assert!(spans.iter().all(|s| s.trace_id == rid), "one trace, named by the request id");
    assert_eq!(gw.parent_id, None);
    assert_eq!(sched.parent_id.as_deref(), Some(gw.span_id.as_str()), "scheduler is the gateway's child");
    assert_eq!(comp.parent_id.as_deref(), Some(sched.span_id.as_str()), "compute is the scheduler's child");
    assert_eq!((sched.method.as_str(), comp.method.as_str()), ("schedule_task", "run_task"));
    assert!(sched.start_ms >= gw.start_ms && comp.start_ms >= sched.start_ms, "children start after parents");
    assert!(sched.duration_ms <= gw.duration_ms, "the call inside takes no longer than the request around it");
    assert!(spans.iter().all(|s| s.outcome == "ok" && s.duration_ms > 0.0));
    let tree = &trace["tree"];
    assert_eq!(tree[0]["service"], "nova-gateway");
    assert_eq!(tree[0]["children"][0]["service"], "nova-scheduler");
    assert_eq!(tree[0]["children"][0]["children"][0]["service"], "nova-compute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_of_three_hops_on_memory() {
    let env = [("NOVA_TRACE__SAMPLE_RATIO", "1")];
    let all = NovaAll::start_with(NovaAllSetup { env: &env, ..NovaAllSetup::default() }).await;
    let port = all.port;
    let (rid, trace) = traced_request(port).await;
    check_three_hops(&rid, &trace);
    // The console shows it as a timeline.
    let (status, _, page) = http("GET", port, &format!("/traces/{rid}"), &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    assert!(page.contains("id=\"timeline\"") && page.matches("class=\"span").count() == 3, "{page}");
    // In a real browser: three rows, each bar inside the timeline, nested in time.
    let url = format!("http://127.0.0.1:{port}/traces/{rid}");
    let script = r#"JSON.stringify([...document.querySelectorAll('#timeline .bar span')].map((b) => {
        const r = b.getBoundingClientRect(), p = b.parentElement.getBoundingClientRect();
        return [r.left - p.left, r.width, p.width];
    }))"#;
    let bars = tokio::task::spawn_blocking(move || nova_tests::browser(&url, script, "trace-timeline")).await.unwrap();
    let bars: Vec<(f64, f64, f64)> = serde_json::from_str(bars.trim()).unwrap_or_else(|e| panic!("{e}: {bars}"));
    assert_eq!(bars.len(), 3, "{bars:?}");
    for (left, width, whole) in &bars {
        assert!(*left >= 0.0 && *width > 0.0 && left + width <= whole + 1.0, "a bar inside its row: {bars:?}");
    }
    assert!(bars[1].0 >= bars[0].0 && bars[2].0 >= bars[1].0, "children start after their parents: {bars:?}");
    // And the gateway's metrics count the requests.
    let (_, _, metrics) = http("GET", port, "/metrics", &[], b"").expect("the gateway answers");
    assert!(metrics.contains(r#"nova_rpc_requests_total{topic="scheduler",method="schedule_task"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_of_three_hops_across_processes_on_rabbitmq() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("trace");
    let exchange = unique("nova");
    let port = free_port();
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\ncontrol_exchange = {exchange}\nreport_interval = 0.5\nperiodic_fuzzy_delay = 0\n\
             state_path = {}\n[database]\nconnection = {}\n[compute]\ncapacity_report_interval = 0.3\n[api]\nlisten = 127.0.0.1:{port}\n\
             [trace]\nsample_ratio = 1\n",
            vhost.url(),
            dir.path().display(),
            db.url
        ),
    );
    let conf = conf.to_str().unwrap().to_owned();
    let procs: Vec<Proc> = ["nova-trace", "nova-scheduler", "nova-compute", "nova-gateway"]
        .iter()
        .map(|bin| Proc::spawn(bin, &["--config-file", &conf, "--host", "h1"], dir.path()))
        .collect();
    eventually("the compute reported to the scheduler", Duration::from_secs(30), || async {
        let r = http("POST", port, "/v1/call/scheduler/list_host_states", &[], b"{}").ok()?;
        (r.0 == 200 && r.2.contains("h1")).then_some(())
    })
    .await;
    let logs = || procs.iter().map(Proc::output).collect::<Vec<_>>().join("\n----\n");
    let (rid, trace) = traced_request_explained(port, logs).await;
    check_three_hops(&rid, &trace);
    // The same trace in the terminal, as an indented tree.
    let out = std::process::Command::new(nova_tests::bin_path("nova-rpc"))
        .args(["--config-file", &conf, "trace", &rid])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("scheduler.POST /v1/call/scheduler/schedule_task  nova-gateway"), "{text}");
    assert!(lines[1].starts_with("  scheduler.schedule_task  nova-scheduler on h1"), "{text}");
    assert!(lines[2].starts_with("    compute.run_task  nova-compute on h1") && lines[2].ends_with(" ms"), "{text}");
    drop(procs);
}

fn echo_api() -> Dispatcher {
    let r = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) })
        .method("fail", |_ctx: RequestContext, _v: Value| async move {
            Err::<Value, _>(RpcError::remote("Oops", "tests", "failed on purpose"))
        });
    Dispatcher::new(vec![Arc::new(r)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_hop_in_the_middle_keeps_the_trace() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("trace");
    let exchange = unique("nova");
    let t =
        transport::connect(TransportOptions::new(vhost.url()).with_control_exchange(exchange.clone())).await.unwrap();
    // A collector and a traced Rust service behind a Python relay.
    let db = TestDb::sqlite();
    let database = nova_core::db::Database::connect(&db.url).await.unwrap();
    database.migrate(nova_services::trace::MIGRATIONS).await.unwrap();
    let collector = TraceCollector::new(database, Limits::default());
    let collector = Service::create(t.clone(), ManagerHandle::new(Arc::new(collector))).topic(TRACE_TOPIC).host("c1");
    let collector = collector.start().await.unwrap();
    let server = RpcServer::new(t.clone(), Target::new("rust-end").with_server("r1"), echo_api())
        .with_layer(Arc::new(TraceLayer::new(Tracer::new(t.clone(), "rust-end", "r1").with_sampler(Sampler::always()))))
        .start()
        .await
        .unwrap();
    let _py = PyPeer::server(&vhost.url(), &exchange, "pymiddle", "p1", &[], dir.path());
    let mut ctx = RequestContext::new();
    ctx.extra.insert(TRACE_ID.into(), json!("trace-through-python"));
    ctx.extra.insert(TRACE_PARENT.into(), json!("0123456789abcdef"));
    let client =
        RpcClient::new(t.clone(), Target::new("pymiddle").with_version("1.3")).with_timeout(Duration::from_secs(15));
    let args = json!({"topic": "rust-end", "method": "echo", "args": {"via": "python"}});
    assert_eq!(client.call(&ctx, "relay", args).await.unwrap(), json!({"via": "python"}));
    let traces = RpcClient::new(t.clone(), Target::new(TRACE_TOPIC));
    let spans: Vec<Span> = eventually("the Rust hop behind Python was traced", Duration::from_secs(10), || async {
        let s: Vec<Span> = traces
            .call_as(&RequestContext::new(), "get_trace", json!({"trace_id": "trace-through-python"}))
            .await
            .ok()?;
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(
        spans[0].parent_id.as_deref(),
        Some("0123456789abcdef"),
        "Python passed the trace keys through: {spans:?}"
    );
    assert_eq!((spans[0].topic.as_str(), spans[0].method.as_str()), ("rust-end", "echo"));
    server.stop(Duration::from_secs(5)).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_and_errors() {
    let bus = TestBus::new().await;
    let topic = unique("metered");
    let server = RpcServer::new(bus.transport(), Target::new(&topic).with_server("m1"), echo_api())
        .with_layer(Arc::new(MetricsLayer))
        .start()
        .await
        .unwrap();
    let client = bus.client(Target::new(&topic));
    for _ in 0..3 {
        client.call(&RequestContext::new(), "echo", json!({})).await.unwrap();
    }
    client.call(&RequestContext::new(), "fail", json!({})).await.unwrap_err();
    // Names nobody declared share one series, so callers cannot grow the metrics.
    for i in 0..20 {
        client.call(&RequestContext::new(), &format!("nope_{i}"), json!({})).await.unwrap_err();
    }
    let too_new = client.with_version("9.0");
    too_new.call(&RequestContext::new(), "nope_versioned", json!({})).await.unwrap_err();
    let text = nova_rpc::metrics::render();
    let line = |needle: String| text.lines().any(|l| l == needle);
    assert!(line(format!(r#"nova_rpc_requests_total{{topic="{topic}",method="echo"}} 3"#)), "{text}");
    assert!(line(format!(r#"nova_rpc_errors_total{{topic="{topic}",method="fail",class="Oops"}} 1"#)), "{text}");
    assert!(
        line(format!(r#"nova_rpc_errors_total{{topic="{topic}",method="unknown",class="NoSuchMethod"}} 20"#)),
        "{text}"
    );
    assert!(!text.contains("nope_"), "no series names an undeclared method: {text}");
    assert!(line(format!(r#"nova_rpc_in_flight{{topic="{topic}",method="echo"}} 0"#)), "{text}");
    assert!(line(format!(r#"nova_rpc_request_duration_seconds_count{{topic="{topic}",method="echo"}} 3"#)), "{text}");
    server.stop(Duration::from_secs(5)).await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_serves_metrics_and_changes_its_log_level_at_run_time() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("loglevel");
    let exchange = unique("nova");
    let port = free_port();
    let state = dir.path().join("state");
    let args = [
        "--transport-url",
        &vhost.url(),
        "--control-exchange",
        &exchange,
        "--host",
        "c1",
        "--state-path",
        state.to_str().unwrap(),
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ];
    let compute = Proc::spawn("nova-compute", &args, dir.path());
    let t =
        transport::connect(TransportOptions::new(vhost.url()).with_control_exchange(exchange.clone())).await.unwrap();
    let base = RpcClient::new(t, Target::new("compute").with_namespace("baseapi").with_version("1.1"))
        .with_timeout(Duration::from_secs(3));
    let ctx = RequestContext::new();
    eventually("compute serves", Duration::from_secs(30), || async {
        base.call(&ctx, "ping", json!({"arg": 0})).await.ok()
    })
    .await;
    let (status, _, metrics) = http("GET", port, "/metrics", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"nova_rpc_requests_total{topic="compute",method="ping"}"#), "{metrics}");

    let before = base.call(&ctx, "get_log_level", json!({})).await.unwrap();
    assert!(before.as_str().is_some_and(|f| f.contains("info")), "{before}");
    let quiet = compute.output();
    assert!(!quiet.contains("DEBUG"), "not in debug mode yet");
    base.call(&ctx, "set_log_level", json!({"filter": "info,nova_rpc=debug"})).await.unwrap();
    base.call(&ctx, "ping", json!({"arg": "after"})).await.unwrap();
    eventually("the next call logs at debug", Duration::from_secs(5), || async {
        compute.output().lines().any(|l| l.contains("DEBUG") && l.contains("nova_rpc")).then_some(())
    })
    .await;
    match base.call(&ctx, "set_log_level", json!({"filter": "nova_rpc=loudest"})).await {
        Err(RpcError::Remote(f)) => assert!(f.message.contains("loudest"), "{f:?}"),
        other => panic!("a bad filter is refused, got {other:?}"),
    }
    let kept = base.call(&ctx, "get_log_level", json!({})).await.unwrap();
    assert!(kept.as_str().is_some_and(|f| f.contains("nova_rpc=debug")), "the old filter stays: {kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_never_fails_or_holds_up_a_call() {
    let bus = TestBus::new().await;
    let server = RpcServer::new(bus.transport(), Target::new("untraced").with_server("u1"), echo_api())
        .with_layer(Arc::new(TraceLayer::new(
            Tracer::new(bus.transport(), "svc", "u1").with_sampler(Sampler::always()),
        )))
        .start()
        .await
        .unwrap();
    let client = bus.client(Target::new("untraced")).with_timeout(Duration::from_secs(2));
    for i in 0..500 {
        let started = std::time::Instant::now();
        assert_eq!(client.call(&RequestContext::new(), "echo", json!({"i": i})).await.unwrap(), json!({"i": i}));
        assert!(started.elapsed() < Duration::from_secs(1), "call {i} was held up");
    }
    server.stop(Duration::from_secs(5)).await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_opentelemetry_collector_as_otlp() {
    let (port, bodies) = nova_core::testing::http_receiver();
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::trace::MIGRATIONS).await.unwrap();
    let collector =
        TraceCollector::new(bus.database().clone(), Limits::default()).with_otlp(format!("http://127.0.0.1:{port}"));
    bus.serve(TRACE_TOPIC, "c1", Arc::new(collector)).await;
    let server = RpcServer::new(bus.transport(), Target::new("otel").with_server("o1"), echo_api())
        .with_layer(Arc::new(TraceLayer::new(
            Tracer::new(bus.transport(), "nova-otel", "o1").with_sampler(Sampler::always()),
        )))
        .start()
        .await
        .unwrap();
    let ctx = RequestContext { request_id: "req-0b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11".into(), ..RequestContext::new() };
    bus.client(Target::new("otel")).call(&ctx, "echo", json!({"token": "t0ken-value-xyz", "n": 1})).await.unwrap();
    let nova_core::testing::HttpRequest { path, body, .. } =
        tokio::task::spawn_blocking(move || bodies.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("an OTLP export");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(path, "/v1/traces");
    let rs = &body["resourceSpans"][0];
    let service = rs["resource"]["attributes"].as_array().unwrap().iter().find(|a| a["key"] == "service.name").unwrap();
    assert_eq!(service["value"]["stringValue"], "nova-otel");
    let span = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "0b4f7f2e3c6a4b559f445a0e2d9c8e11", "the request id's uuid is the trace id");
    assert_eq!(span["name"], "otel.echo");
    assert_eq!(span["status"]["code"], 1);
    assert_eq!(span["spanId"].as_str().map(str::len), Some(16));
    let text = span.to_string();
    assert!(text.contains(r#"\"token\":\"***\""#) && !text.contains("t0ken-value-xyz"), "secrets are masked: {text}");
    server.stop(Duration::from_secs(5)).await;
    bus.stop().await;
}

/// Holds its `after_reply` hook until the test has the reply in hand: if
/// hooks ran before the reply was sent, the call could never complete.
struct WaitsForTheReply(Arc<std::sync::atomic::AtomicBool>, Arc<std::sync::atomic::AtomicBool>);

#[async_trait::async_trait]
impl nova_rpc::layer::Layer for WaitsForTheReply {
    async fn handle(
        &self,
        call: nova_rpc::layer::Call,
        next: nova_rpc::layer::Next,
    ) -> Result<nova_rpc::Payload, RpcError> {
        let (replied, saw_reply) = (self.0.clone(), self.1.clone());
        call.after_reply.push(move || {
            // Wait off the worker (its queued tasks move on), as a slow hook would.
            tokio::task::block_in_place(|| {
                let until = std::time::Instant::now() + Duration::from_secs(5);
                while !replied.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            saw_reply.store(replied.load(std::sync::atomic::Ordering::SeqCst), std::sync::atomic::Ordering::SeqCst);
        });
        next.run(call).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_record_after_the_reply_is_sent() {
    let bus = TestBus::new().await;
    let (replied, saw_reply) = (Arc::default(), Arc::default());
    let server = RpcServer::new(bus.transport(), Target::new("after").with_server("a1"), echo_api())
        .with_layer(Arc::new(WaitsForTheReply(Arc::clone(&replied), Arc::clone(&saw_reply))))
        .start()
        .await
        .unwrap();
    let client = bus.client(Target::new("after")).with_timeout(Duration::from_secs(3));
    assert_eq!(client.call(&RequestContext::new(), "echo", json!({"x": 1})).await.unwrap(), json!({"x": 1}));
    replied.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("the hook ran after the reply", Duration::from_secs(6), || async {
        saw_reply.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    bus.stop().await;
}
