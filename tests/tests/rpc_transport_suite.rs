//! The transport-generic RPC suite: every case runs on `memory://` and on a
//! real RabbitMQ (127.0.0.1:5672, a private vhost per test).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{Destination, Outgoing, Transport},
    wire, RequestContext, RpcClient, RpcError, RpcServer, RunningServer, Target, Version,
};
use nova_tests::{transport_suite, Bus, Kind};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Default)]
struct Probe {
    records: Mutex<Vec<(String, String)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Value1 {
    value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seconds {
    seconds: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Count {
    count: u32,
}

fn demo_api(host: &str, probe: Arc<Probe>) -> Dispatcher {
    let h = host.to_owned();
    let p = probe.clone();
    let main = Router::new(Version::new(1, 3))
        .method("echo", |_ctx: RequestContext, a: Value1| async move { Ok::<_, RpcError>(json!({"echoed": a.value})) })
        .method("whoami", move |_ctx: RequestContext, _: Value| {
            let h = h.clone();
            async move { Ok::<_, RpcError>(h) }
        })
        .method("record", {
            let host = host.to_owned();
            move |_ctx: RequestContext, a: Value1| {
                let p = p.clone();
                let host = host.clone();
                async move {
                    p.records.lock().unwrap().push((host, a.value.to_string()));
                    Ok::<_, RpcError>(())
                }
            }
        })
        .method("fail", |_ctx: RequestContext, _: Value| async move {
            Err::<(), _>(RpcError::remote("ValueError", "builtins", "bad"))
        })
        .method("needs_count", |_ctx: RequestContext, a: Count| async move { Ok::<_, RpcError>(a.count * 2) })
        .method(
            "context",
            |ctx: RequestContext, _: Value| async move { Ok::<_, RpcError>(Value::Object(ctx.to_map())) },
        )
        .method("slow", move |_ctx: RequestContext, a: Seconds| {
            let p = probe.clone();
            async move {
                let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
                p.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
                p.running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, RpcError>(a.seconds)
            }
        });
    let ns = Router::new(Version::new(1, 0))
        .namespace("demo_ns")
        .method("ns_echo", |_ctx: RequestContext, a: Value1| async move { Ok::<_, RpcError>(a.value) });
    Dispatcher::new(vec![Arc::new(main), Arc::new(ns)])
}

async fn start(t: &Arc<dyn Transport>, topic: &str, host: &str, probe: Arc<Probe>, executor: usize) -> RunningServer {
    RpcServer::new(t.clone(), Target::new(topic).with_server(host), demo_api(host, probe))
        .with_executor_size(executor)
        .start()
        .await
        .expect("server starts")
}

/// Wait (generously) until `f` holds.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    nova_tests::eventually(what, Duration::from_secs(30), || std::future::ready(f().then_some(()))).await
}

fn ctx() -> RequestContext {
    RequestContext::new().with_user("u1", "p1")
}

async fn call_roundtrip_and_context(kind: Kind) {
    let bus = Bus::new(kind);
    let (st, ct) = (bus.transport().await, bus.transport().await);
    let server = start(&st, "demo", "h1", Arc::default(), 8).await;
    let client = RpcClient::new(ct, Target::new("demo").with_version("1.0"));
    let r = client.call(&ctx(), "echo", json!({"value": "hello"})).await.unwrap();
    assert_eq!(r, json!({"echoed": "hello"}));
    let c = ctx().with_roles(["admin"]).with_extra("trace_id", json!("t-1"));
    let seen = client.call(&c, "context", json!({})).await.unwrap();
    assert_eq!(seen["request_id"], json!(c.request_id));
    assert_eq!(seen["user_id"], json!("u1"));
    assert_eq!(seen["roles"], json!(["admin"]));
    assert_eq!(seen["trace_id"], json!("t-1"));
    let text = "héllo ☃ 😀 \u{7f}\"\\\n";
    let r = client.call(&ctx(), "echo", json!({ "value": text })).await.unwrap();
    assert_eq!(r["echoed"], json!(text));
    server.stop(Duration::from_secs(5)).await;
}

async fn cast_arrives_once(kind: Kind) {
    let bus = Bus::new(kind);
    let (st, ct) = (bus.transport().await, bus.transport().await);
    let probe = Arc::new(Probe::default());
    let server = start(&st, "demo", "h1", probe.clone(), 8).await;
    let client = RpcClient::new(ct.clone(), Target::new("demo"));
    for i in 0..5 {
        client.cast(&ctx(), "record", json!({ "value": i })).await.unwrap();
    }
    wait_until("5 casts arrive", || probe.records.lock().unwrap().len() == 5).await;
    // The same message published twice (same _unique_id) is processed once.
    let request = wire::Request::cast("record", json!({"value": "dup"}).as_object().unwrap().clone());
    let body: nova_rpc::transport::Outgoing = Outgoing::new(wire::encode_request(&request).unwrap());
    let dest = Destination::Topic { exchange: bus.exchange.as_str().into(), routing_key: "demo".into() };
    ct.send(&dest, body.clone()).await.unwrap();
    ct.send(&dest, body).await.unwrap();
    client.cast(&ctx(), "record", json!({"value": "after"})).await.unwrap();
    wait_until("the cast after the duplicate arrives", || {
        probe.records.lock().unwrap().iter().any(|r| r.1 == "\"after\"")
    })
    .await;
    // Both copies were taken from the queue before the later cast, so the
    // second copy has been judged a duplicate by now.
    let dups = probe.records.lock().unwrap().iter().filter(|r| r.1 == "\"dup\"").count();
    assert_eq!(dups, 1);
    server.stop(Duration::from_secs(5)).await;
}

async fn fanout_reaches_every_server(kind: Kind) {
    let bus = Bus::new(kind);
    let probe = Arc::new(Probe::default());
    let mut servers = Vec::new();
    for h in ["h1", "h2", "h3"] {
        servers.push(start(&bus.transport().await, "demo", h, probe.clone(), 8).await);
    }
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    client.with_fanout(true).cast(&ctx(), "record", json!({"value": "all"})).await.unwrap();
    wait_until("every server got the fanout", || probe.records.lock().unwrap().len() == 3).await;
    let mut hosts: Vec<_> = probe.records.lock().unwrap().iter().map(|r| r.0.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, ["h1", "h2", "h3"]);
    for s in servers {
        s.stop(Duration::from_secs(5)).await;
    }
}

async fn server_targeted_and_round_robin(kind: Kind) {
    let bus = Bus::new(kind);
    let s1 = start(&bus.transport().await, "demo", "h1", Arc::default(), 8).await;
    let s2 = start(&bus.transport().await, "demo", "h2", Arc::default(), 8).await;
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    for _ in 0..6 {
        let who = client.with_server("h2").call(&ctx(), "whoami", json!({})).await.unwrap();
        assert_eq!(who, json!("h2"));
    }
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let who = client.call(&ctx(), "whoami", json!({})).await.unwrap();
        *seen.entry(who.as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both servers on the topic serve calls: {seen:?}");
    assert!(seen.values().all(|n| *n >= 5), "calls spread across servers: {seen:?}");
    // A stopped server takes nothing more; the other serves every call.
    s1.stop(Duration::from_secs(5)).await;
    for _ in 0..10 {
        assert_eq!(client.call(&ctx(), "whoami", json!({})).await.unwrap(), json!("h2"));
    }
    s2.stop(Duration::from_secs(5)).await;
}

async fn timeouts_leave_nothing_behind(kind: Kind) {
    let bus = Bus::new(kind);
    let probe = Arc::new(Probe::default());
    let server = start(&bus.transport().await, "demo", "h1", probe.clone(), 8).await;
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    let slow = client.with_timeout(Duration::from_millis(300));
    let running = |n| {
        let probe = probe.clone();
        move || std::future::ready((probe.running.load(Ordering::SeqCst) == n).then_some(()))
    };
    let started = std::time::Instant::now();
    let err = slow.call(&ctx(), "slow", json!({"seconds": 1.0})).await.unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(client.pending_calls(), 0);
    // The late reply arrives and is dropped; the next call is unaffected.
    nova_tests::eventually("the slow method has ended", Duration::from_secs(10), running(0)).await;
    assert_eq!(client.call(&ctx(), "echo", json!({"value": 1})).await.unwrap(), json!({"echoed": 1}));
    // No consumer at all on a topic: a clean timeout.
    let nobody =
        RpcClient::new(bus.transport().await, Target::new("nobody-listens")).with_timeout(Duration::from_millis(300));
    assert!(matches!(nobody.call(&ctx(), "echo", json!({"value": 1})).await, Err(RpcError::Timeout { .. })));
    // A short call made while a long one waits still ends on time, and a
    // call-monitor timeout ends a call nobody sends heartbeats for.
    let long = tokio::spawn({
        let c = client.with_timeout(Duration::from_secs(10));
        async move { c.call(&ctx(), "slow", json!({"seconds": 1.5})).await }
    });
    nova_tests::eventually("the long call is in flight", Duration::from_secs(10), running(1)).await;
    for short in [
        nobody.with_timeout(Duration::from_millis(300)),
        nobody.with_timeout(Duration::from_secs(10)).with_call_monitor_timeout(Duration::from_millis(300)),
    ] {
        let started = std::time::Instant::now();
        let err = short.call(&ctx(), "echo", json!({"value": 1})).await.unwrap_err();
        assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(900), "ended after {took:?}");
    }
    assert_eq!(long.await.unwrap().unwrap(), json!(1.5), "the long call is unaffected");
    assert_eq!(client.pending_calls(), 0);
    server.stop(Duration::from_secs(5)).await;
}

async fn remote_errors_versions_and_namespaces(kind: Kind) {
    let bus = Bus::new(kind);
    let server = start(&bus.transport().await, "demo", "h1", Arc::default(), 8).await;
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    match client.call(&ctx(), "fail", json!({})).await {
        Err(RpcError::Remote(f)) => {
            assert_eq!((f.class.as_str(), f.module.as_str(), f.message.as_str()), ("ValueError", "builtins", "bad"))
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(
        matches!(client.call(&ctx(), "no_such", json!({})).await, Err(RpcError::NoSuchMethod { method }) if method == "no_such")
    );
    assert!(matches!(client.call(&ctx(), "_private", json!({})).await, Err(RpcError::NoSuchMethod { .. })));
    assert!(matches!(
        client.with_version("1.4").call(&ctx(), "echo", json!({"value": 1})).await,
        Err(RpcError::UnsupportedVersion { version, method }) if version == "1.4" && method == "echo"
    ));
    assert!(client.with_version("1.2").call(&ctx(), "echo", json!({"value": 1})).await.is_ok());
    assert!(matches!(
        client.with_version("2.0").call(&ctx(), "echo", json!({"value": 1})).await,
        Err(RpcError::UnsupportedVersion { .. })
    ));
    let ns = client.with_namespace("demo_ns");
    assert_eq!(ns.call(&ctx(), "ns_echo", json!({"value": "x"})).await.unwrap(), json!("x"));
    assert!(matches!(ns.call(&ctx(), "echo", json!({"value": 1})).await, Err(RpcError::NoSuchMethod { .. })));
    let capped = client.with_version_cap(Version::new(1, 1));
    assert!(!capped.can_send_version("1.2") && capped.can_send_version("1.1"));
    assert!(matches!(
        capped.with_version("1.2").call(&ctx(), "echo", json!({"value": 1})).await,
        Err(RpcError::VersionCap { .. })
    ));
    assert!(matches!(
        client.with_fanout(true).call(&ctx(), "echo", json!({})).await,
        Err(RpcError::InvalidTarget { .. })
    ));
    // Bad arguments name the argument, and the server keeps serving.
    for (args, name) in
        [(json!({}), "count"), (json!({"count": "x"}), "count"), (json!({"count": 1, "extra": 2}), "extra")]
    {
        match client.call(&ctx(), "needs_count", args).await {
            Err(RpcError::Remote(f)) => assert!(f.class == "InvalidArgument" && f.message.contains(name), "{f:?}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    assert_eq!(client.call(&ctx(), "needs_count", json!({"count": 21})).await.unwrap(), json!(42));
    server.stop(Duration::from_secs(5)).await;
}

async fn concurrency_limit_holds(kind: Kind) {
    let bus = Bus::new(kind);
    let probe = Arc::new(Probe::default());
    let server = start(&bus.transport().await, "demo", "h1", probe.clone(), 4).await;
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call(&ctx(), "slow", json!({"seconds": 0.15})).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(probe.max_running.load(Ordering::SeqCst), 4);
    server.stop(Duration::from_secs(5)).await;
}

async fn big_payloads_and_call_monitor(kind: Kind) {
    let bus = Bus::new(kind);
    let server = start(&bus.transport().await, "demo", "h1", Arc::default(), 8).await;
    let client = RpcClient::new(bus.transport().await, Target::new("demo"));
    let big = "x".repeat(1024 * 1024);
    let r = client.call(&ctx(), "echo", json!({ "value": big })).await.unwrap();
    assert_eq!(r["echoed"].as_str().map(str::len), Some(1024 * 1024));
    // Heartbeats every 0.2 s keep a 1 s call alive past a 0.4 s monitor timeout.
    let monitored = client.with_call_monitor_timeout(Duration::from_millis(400)).with_timeout(Duration::from_secs(5));
    assert_eq!(monitored.call(&ctx(), "slow", json!({"seconds": 1.0})).await.unwrap(), json!(1.0));
    server.stop(Duration::from_secs(5)).await;
}

async fn malformed_messages_do_not_stop_the_server(kind: Kind) {
    let bus = Bus::new(kind);
    let server = start(&bus.transport().await, "demo", "h1", Arc::default(), 8).await;
    let t = bus.transport().await;
    let dest = Destination::Topic { exchange: bus.exchange.as_str().into(), routing_key: "demo".into() };
    let garbage: Vec<&[u8]> = vec![
        b"\xff\xfe not utf-8",
        b"not json",
        b"[1, 2]",
        br#"{"oslo.version": "2.0", "oslo.message": 42}"#,
        br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": 7}"}"#,
        br#"{"oslo.version": "9.0", "oslo.message": "{}"}"#,
    ];
    for g in garbage {
        t.send(&dest, Outgoing::new(g.to_vec())).await.unwrap();
    }
    let client = RpcClient::new(t.clone(), Target::new("demo"));
    // A request whose args are wrong-typed but whose reply address is readable gets a clear error.
    let router_probe = client.call(&ctx(), "echo", json!({"value": "warm-up"})).await.unwrap();
    assert_eq!(router_probe["echoed"], json!("warm-up"));
    assert_eq!(
        client.call(&ctx(), "echo", json!({"value": "still serving"})).await.unwrap()["echoed"],
        json!("still serving")
    );
    server.stop(Duration::from_secs(5)).await;
}

/// A method that casts to itself until its count runs out: every round is
/// served (in-process, without the stack growing with the rounds), and a
/// call through the same server still answers.
async fn self_casting_method_runs_every_round(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let rounds = Arc::new(AtomicUsize::new(0));
    let again = RpcClient::new(t.clone(), Target::new("countdown"));
    let seen = rounds.clone();
    let api = Router::new(Version::new(1, 0))
        .method("countdown", move |ctx: RequestContext, a: Count| {
            let (again, seen) = (again.clone(), seen.clone());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if a.count > 0 {
                    again.cast(&ctx, "countdown", json!({"count": a.count - 1})).await?;
                }
                Ok::<_, RpcError>(())
            }
        })
        .method("rounds", {
            let seen = rounds.clone();
            move |_ctx: RequestContext, _: Value| {
                let n = seen.load(Ordering::SeqCst);
                async move { Ok::<_, RpcError>(n) }
            }
        });
    let server =
        RpcServer::new(t.clone(), Target::new("countdown").with_server("h1"), Dispatcher::new(vec![Arc::new(api)]))
            .start()
            .await
            .expect("server starts");
    let client = RpcClient::new(t, Target::new("countdown"));
    client.cast(&ctx(), "countdown", json!({"count": 5000})).await.unwrap();
    nova_tests::until_count("self-cast rounds", 5001, Duration::from_secs(30), || rounds.load(Ordering::SeqCst) as u64)
        .await;
    assert_eq!(client.call(&ctx(), "rounds", json!({})).await.unwrap(), json!(5001));
    server.stop(Duration::from_secs(5)).await;
}

/// Publishes that nobody takes, sent `mandatory` beside ordinary calls on
/// one transport: once, a broker's return was handed to whichever publish
/// a multiple confirm completed first, and an ordinary call failed as
/// unroutable.
async fn unroutable_returns_fail_only_their_own_publish(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let server = start(&t, "demo", "h1", Arc::default(), 64).await;
    let calls = RpcClient::new(t.clone(), Target::new("demo").with_version("1.0"));
    let lost = RpcClient::new(t.clone(), Target::new("nobody-listens")).with_mandatory(true);
    let mut running = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (calls, lost) = (calls.clone(), lost.clone());
        running.spawn(async move {
            for j in 0..50 {
                let r = calls.call(&ctx(), "echo", json!({"value": i * 100 + j})).await;
                assert_eq!(r.unwrap(), json!({"echoed": i * 100 + j}), "an ordinary call failed");
                if let Err(e) = lost.cast(&ctx(), "anything", json!({})).await {
                    assert!(matches!(e, RpcError::Unroutable { .. }), "{e:?}");
                }
            }
        });
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
    server.stop(Duration::from_secs(5)).await;
}

transport_suite!(
    unroutable_returns_fail_only_their_own_publish,
    call_roundtrip_and_context,
    self_casting_method_runs_every_round,
    cast_arrives_once,
    fanout_reaches_every_server,
    server_targeted_and_round_robin,
    timeouts_leave_nothing_behind,
    remote_errors_versions_and_namespaces,
    concurrency_limit_holds,
    big_payloads_and_call_monitor,
    malformed_messages_do_not_stop_the_server,
);
