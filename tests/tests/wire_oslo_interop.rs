//! Live interop with oslo.messaging (the real Python library, rabbit
//! driver) on one RabbitMQ, both directions: a Python client calling
//! `nova-compute` processes, a nova-rs client calling a Python server, and
//! a Python and a Rust server sharing one topic queue — with default
//! options, with `amqp_durable_queues`, with `rabbit_quorum_queue`, and with
//! the options OpenStack deployments set today (`--modern`: quorum queues,
//! transient quorum queues, stream fanout and the queue manager).

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{eventually, interop::PyPeer, unique, Proc, TempDir, TestVhost};
use serde_json::{json, Map, Value};

fn ok(answer: &Value) -> &Value {
    answer.get("ok").unwrap_or_else(|| panic!("the Python client got an error: {answer}"))
}

/// The class of an error the Python client saw: the exception's own class
/// (oslo rebuilds allowed ones), or a `RemoteError`'s `exc_type`.
fn error_class(answer: &Value) -> String {
    let e = answer.get("error").unwrap_or_else(|| panic!("expected an error, got {answer}"));
    e["exc_type"].as_str().or(e["class"].as_str()).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_rust_services() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("interop");
    let exchange = unique("nova");
    let url = vhost.url();
    let spawn = |host: &str| {
        let state = dir.path().join(host);
        let args = [
            "--transport-url",
            url.as_str(),
            "--control-exchange",
            exchange.as_str(),
            "--host",
            host,
            "--state-path",
            state.to_str().unwrap(),
            "--debug",
        ];
        Proc::spawn("nova-compute", &args, dir.path())
    };
    let computes = [spawn("c1"), spawn("c2")];
    let t =
        transport::connect(TransportOptions::new(url.clone()).with_control_exchange(exchange.clone())).await.unwrap();
    let rust = RpcClient::new(t, Target::new("compute").with_namespace("baseapi").with_version("1.1"));
    for host in ["c1", "c2"] {
        let c = rust.with_server(host).with_timeout(Duration::from_secs(2));
        eventually("the compute serves", Duration::from_secs(30), || async {
            c.call(&RequestContext::new(), "ping", json!({"arg": 0})).await.ok()
        })
        .await;
    }

    let mut py = PyPeer::client(&url, &exchange, &[], dir.path());
    let base = json!({"op": "call", "topic": "compute", "namespace": "baseapi", "version": "1.1"});
    let with = |extra: Value| {
        let mut r = base.clone();
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    };

    // Nova's base API, to the topic and to each topic.host.
    let a = py.request(with(json!({"method": "ping", "args": {"arg": "from python"}})));
    assert_eq!(ok(&a), &json!({"service": "nova-compute", "arg": "from python"}));
    for host in ["c1", "c2"] {
        let a = py.request(with(json!({"method": "describe", "server": host})));
        assert_eq!(ok(&a)["host"], host, "{a}");
    }

    // A request id in the context shows up in the serving span's log lines.
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let a = py.request(with(json!({"method": "ping", "args": {"arg": 1}, "context": {"request_id": request_id}})));
    ok(&a);
    let needle = format!("request_id={request_id}");
    eventually("the request id is in a compute's log span", Duration::from_secs(5), || async {
        computes.iter().any(|p| p.output().contains(&needle)).then_some(())
    })
    .await;

    // A cast to one host, and a fanout cast reaching every server.
    let compute = json!({"topic": "compute", "version": "1.0"});
    let task = |op: &str, extra: Value| {
        let mut r = compute.clone();
        r["op"] = op.into();
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    };
    let run = json!({"name": "echo", "args": ["from", "python"], "task_id": "py-cast"});
    ok(&py.request(task("cast", json!({"method": "run_task", "server": "c1", "args": run}))));
    let run = json!({"name": "echo", "args": ["fanned", "out"], "task_id": "py-fanout"});
    ok(&py.request(task("cast", json!({"method": "run_task", "fanout": true, "args": run}))));
    let wait = |host: &str, id: &str| {
        task("call", json!({"method": "wait_task", "server": host, "args": {"task_id": id, "timeout": 10}}))
    };
    let t = py.request(wait("c1", "py-cast"));
    assert_eq!((ok(&t)["status"].as_str(), ok(&t)["stdout"].as_str()), (Some("succeeded"), Some("from python\n")));
    for host in ["c1", "c2"] {
        let t = py.request(wait(host, "py-fanout"));
        assert_eq!(ok(&t)["stdout"], "fanned out\n", "the fanout cast reached {host}: {t}");
    }

    // Errors: a method that raises, an unknown method, a too-new version.
    let e = py.request(task("call", json!({"method": "get_task", "args": {"task_id": "nope"}})));
    assert_eq!(error_class(&e), "TaskNotFound", "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("task nope not found"), "{e}");
    let e = py.request(task("call", json!({"method": "no_such_method"})));
    assert_eq!(error_class(&e), "NoSuchMethod", "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("no_such_method"), "{e}");
    let e = py.request(task("call", json!({"method": "list_tasks", "version": "1.7"})));
    assert_eq!(error_class(&e), "UnsupportedVersion", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_calls_python_server() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("interop");
    let exchange = unique("nova");
    let url = vhost.url();
    let _s1 = PyPeer::server(&url, &exchange, "pyservice", "s1", &[], dir.path());
    let _s2 = PyPeer::server(&url, &exchange, "pyservice", "s2", &[], dir.path());
    let t =
        transport::connect(TransportOptions::new(url.clone()).with_control_exchange(exchange.clone())).await.unwrap();
    let client = RpcClient::new(t, Target::new("pyservice").with_version("1.3")).with_timeout(Duration::from_secs(10));
    let mut ctx = RequestContext::new();
    ctx.user_id = Some("alice".into());
    ctx.project_id = Some("p1".into());
    ctx.roles = vec!["member".into()];
    ctx.extra.insert("custom_key".into(), json!({"kept": true}));

    let r = client.call(&ctx, "echo", json!({"name": "Zoë", "n": [1, 2]})).await.unwrap();
    assert_eq!(r["args"], json!({"name": "Zoë", "n": [1, 2]}));
    assert_eq!(r["request_id"], ctx.request_id.as_str());
    assert_eq!((&r["context"]["user_id"], &r["context"]["roles"]), (&json!("alice"), &json!(["member"])));
    assert_eq!(r["context"]["custom_key"], json!({"kept": true}), "unknown context keys travel untouched");
    for _ in 0..5 {
        let r = client.with_server("s2").call(&ctx, "echo", json!({})).await.unwrap();
        assert_eq!(r["server"], "s2", "a server-targeted call reaches that server");
    }

    client.with_server("s1").cast(&ctx, "record", json!({"value": "direct"})).await.unwrap();
    client.with_fanout(true).cast(&ctx, "record", json!({"value": "fanout"})).await.unwrap();
    for (server, expected) in [("s1", json!(["direct", "fanout"])), ("s2", json!(["fanout"]))] {
        let c = client.with_server(server);
        eventually("the casts arrived", Duration::from_secs(10), || async {
            let got = c.call(&ctx, "recorded", json!({})).await.ok()?;
            (got == expected).then_some(())
        })
        .await;
    }

    match client.call(&ctx, "fail", json!({"message": "boom"})).await {
        Err(RpcError::Remote(f)) => {
            assert_eq!((f.class.as_str(), f.module.as_str()), ("ValueError", "builtins"), "{f:?}");
            assert!(f.message.contains("boom"), "{f:?}");
        }
        other => panic!("a Python exception is a remote error, got {other:?}"),
    }
    let e = client.call(&ctx, "no_such_method", json!({})).await.unwrap_err();
    assert!(matches!(e, RpcError::NoSuchMethod { ref method } if method == "no_such_method"), "{e:?}");
    let e = client.with_version("1.9").call(&ctx, "echo", json!({})).await.unwrap_err();
    assert!(matches!(e, RpcError::UnsupportedVersion { .. }), "{e:?}");

    // Call-monitor heartbeats from the Python server (every 1 s) keep a
    // 5 s call alive past a 2 s monitor timeout.
    let monitored = client.with_call_monitor_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(20));
    let r = monitored.call(&ctx, "slow", json!({"seconds": 5})).await.unwrap();
    assert_eq!(r["slept"], 5);
}

/// The transport options `peer.py` sets for `flags`, on our side.
fn options_for(url: &str, exchange: &str, flags: &[&str]) -> TransportOptions {
    let mut options = TransportOptions::new(url).with_control_exchange(exchange);
    let modern = flags.contains(&"--modern");
    let r = &mut options.rabbit;
    r.amqp_durable_queues = flags.contains(&"--durable");
    r.rabbit_quorum_queue = flags.contains(&"--quorum") || modern;
    if modern {
        r.rabbit_transient_quorum_queue = true;
        r.rabbit_stream_fanout = true;
        r.rabbit_qos_prefetch_count = 10;
        r.use_queue_manager = true;
    }
    options
}

fn rust_echo_server() -> Dispatcher {
    let api =
        Router::new(Version::new(1, 3)).method("echo", |_ctx: RequestContext, args: Map<String, Value>| async move {
            Ok::<_, RpcError>(json!({"server": "rust", "args": args}))
        });
    Dispatcher::new(vec![Arc::new(api)])
}

/// A Python and a Rust server on one topic: both declare the same queue
/// (no PRECONDITION_FAILED) and calls round-robin across them.
async fn mixed_pool(flags: &[&str]) {
    let vhost = TestVhost::new();
    let dir = TempDir::new("interop");
    let exchange = unique("nova");
    let url = vhost.url();
    let t = transport::connect(options_for(&url, &exchange, flags)).await.unwrap();
    // Rust declares first here; the Python server then declares the same
    // exchange and queues and would fail on any difference.
    let rust =
        RpcServer::new(t.clone(), Target::new("mixed").with_server("rs1"), rust_echo_server()).start().await.unwrap();
    let _py = PyPeer::server(&url, &exchange, "mixed", "py1", flags, dir.path());
    let client =
        RpcClient::new(t.clone(), Target::new("mixed").with_version("1.2")).with_timeout(Duration::from_secs(10));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let r = client.call(&RequestContext::new(), "echo", json!({"i": i})).await.unwrap();
        assert_eq!(r["args"]["i"], i);
        *seen.entry(r["server"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "calls reach both servers: {seen:?}");
    assert!(seen.values().all(|n| *n >= 5), "round-robin across the pool: {seen:?}");
    // A Python client sees the same pool.
    let mut py = PyPeer::client(&url, &exchange, flags, dir.path());
    let mut servers = std::collections::HashSet::new();
    for i in 0..10 {
        let a =
            py.request(json!({"op": "call", "topic": "mixed", "method": "echo", "version": "1.0", "args": {"i": i}}));
        servers.insert(ok(&a)["server"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(servers.len(), 2, "{servers:?}");
    rust.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pool_default_options() {
    mixed_pool(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pool_durable_queues() {
    mixed_pool(&["--durable"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pool_quorum_queues() {
    mixed_pool(&["--quorum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pool_modern_options() {
    mixed_pool(&["--modern"]).await;
}

/// A Rust server like `peer.py`'s: `echo`, and `record` / `recorded` for casts.
fn rust_recording_server(casts: Arc<std::sync::Mutex<Vec<Value>>>) -> Dispatcher {
    #[derive(serde::Deserialize)]
    struct Record {
        value: Value,
    }
    let seen = casts.clone();
    let api = Router::new(Version::new(1, 3))
        .method("echo", |_ctx: RequestContext, args: Map<String, Value>| async move {
            Ok::<_, RpcError>(json!({"server": "rust", "args": args}))
        })
        .method("record", move |_ctx: RequestContext, r: Record| {
            casts.lock().unwrap().push(r.value);
            async { Ok::<_, RpcError>(()) }
        })
        .method("recorded", move |_ctx: RequestContext, _: Value| {
            let got = seen.lock().unwrap().clone();
            async move { Ok::<_, RpcError>(got) }
        });
    Dispatcher::new(vec![Arc::new(api)])
}

/// With the modern options on both sides, a Python and a Rust server share
/// one topic; a Python and a Rust client each call and cast to either
/// server by name, and a fanout cast from either reaches both (one stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_options_both_directions() {
    let flags = ["--modern"];
    let vhost = TestVhost::new();
    let dir = TempDir::new("interop");
    let exchange = unique("nova");
    let url = vhost.url();
    let t = transport::connect(options_for(&url, &exchange, &flags)).await.unwrap();
    let casts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rust =
        RpcServer::new(t.clone(), Target::new("modern").with_server("rs1"), rust_recording_server(casts.clone()))
            .start()
            .await
            .unwrap();
    let _py_server = PyPeer::server(&url, &exchange, "modern", "py1", &flags, dir.path());
    let mut py = PyPeer::client(&url, &exchange, &flags, dir.path());
    let client =
        RpcClient::new(t.clone(), Target::new("modern").with_version("1.3")).with_timeout(Duration::from_secs(10));
    let ctx = RequestContext::new();
    let request = |op: &str, extra: Value| {
        let mut r = json!({"op": op, "topic": "modern", "version": "1.3"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    };

    // Calls to each server by name, from each side.
    for (server, name) in [("rs1", "rust"), ("py1", "py1")] {
        let a = py.request(request("call", json!({"method": "echo", "server": server, "args": {"from": "py"}})));
        assert_eq!(ok(&a)["server"], name, "{a}");
        let r = client.with_server(server).call(&ctx, "echo", json!({"from": "rs"})).await.unwrap();
        assert_eq!(r["server"], name, "{r}");
    }
    // Casts to each server by name, and fanout casts, from each side.
    for server in ["rs1", "py1"] {
        ok(&py.request(request("cast", json!({"method": "record", "server": server, "args": {"value": "py-direct"}}))));
        client.with_server(server).cast(&ctx, "record", json!({"value": "rs-direct"})).await.unwrap();
    }
    ok(&py.request(request("cast", json!({"method": "record", "fanout": true, "args": {"value": "py-fanout"}}))));
    client.with_fanout(true).cast(&ctx, "record", json!({"value": "rs-fanout"})).await.unwrap();
    for server in ["rs1", "py1"] {
        let c = client.with_server(server);
        eventually(&format!("{server} got every cast"), Duration::from_secs(20), || async {
            let got = c.call(&ctx, "recorded", json!({})).await.ok()?;
            let got: std::collections::HashSet<&str> = got.as_array()?.iter().filter_map(Value::as_str).collect();
            let want = ["py-direct", "rs-direct", "py-fanout", "rs-fanout"];
            (got.len() == 4 && want.iter().all(|w| got.contains(w))).then_some(())
        })
        .await;
    }
    // RabbitMQ 4.3 refuses transient non-exclusive queues: with
    // rabbit_transient_quorum_queue, neither side declares one.
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", &vhost.name, "name", "durable", "exclusive", "type", "--formatter", "json"])
        .output()
        .expect("rabbitmqctl list_queues");
    let queues: Value = serde_json::from_slice(&out.stdout).expect("list_queues JSON");
    let queues = queues.as_array().expect("a list of queues");
    assert!(queues.iter().any(|q| q["name"].as_str().is_some_and(|n| n.starts_with("reply_"))), "{queues:?}");
    let transient: Vec<_> = queues.iter().filter(|q| q["durable"] != true && q["exclusive"] != true).collect();
    assert!(transient.is_empty(), "transient non-exclusive queues: {transient:?}");
    rust.stop(Duration::from_secs(5)).await;
}
