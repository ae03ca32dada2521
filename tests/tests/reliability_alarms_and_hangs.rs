//! What production brings besides a lost node: a memory alarm that blocks
//! publishers (on a private node), a consumer connection closed in the
//! middle of an at-least-once method, and work that never returns at
//! SIGTERM. Nothing hangs past its budget and no message is lost.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{broker::PrivateBroker, eventually, unique, Proc, TempDir, TestVhost};
use serde_json::{json, Value};

/// A service process's flags, with a `nova.conf` giving a short grace and
/// no start-up delay.
fn service_args(dir: &TempDir, url: &str, exchange: &str, host: &str) -> Vec<String> {
    let text = "[DEFAULT]\ngraceful_shutdown_timeout = 3\nperiodic_fuzzy_delay = 0\nreport_interval = 1\n";
    let config = dir.write("nova.conf", text);
    let state = dir.path().join("state");
    let args = [
        "--config-file",
        config.to_str().unwrap(),
        "--transport-url",
        url,
        "--control-exchange",
        exchange,
        "--host",
        host,
        "--state-path",
        state.to_str().unwrap(),
    ];
    args.map(str::to_owned).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_then_service_resumes() {
    nova_tests::log_capture();
    let broker = PrivateBroker::start(false);
    let dir = TempDir::new("alarm");
    let exchange = unique("nova");
    let url = broker.url();
    let args = service_args(&dir, &url, &exchange, "alarmed");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut compute = Proc::spawn("nova-compute", &args, dir.path());
    let options = TransportOptions::new(url.clone()).with_control_exchange(exchange.clone());
    let t = transport::connect(options).await.unwrap();
    let budget = Duration::from_secs(3);
    let ping = RpcClient::new(t.clone(), Target::new("compute").with_namespace("baseapi").with_version("1.1"))
        .with_server("alarmed")
        .with_timeout(budget);
    eventually("the compute answers", Duration::from_secs(60), || async {
        ping.call(&RequestContext::new(), "ping", json!({"arg": 1})).await.ok()
    })
    .await;
    let blocked_before = nova_rpc::transport::amqp::metrics::metrics().connection_blocked.get();
    // A call the compute will answer during the alarm: its reply publish blocks.
    let compute_api = RpcClient::new(t.clone(), Target::new("compute").with_server("alarmed"));
    let task = json!({"name": "sleep", "args": ["4"], "task_id": "alarm-wait"});
    compute_api.cast(&RequestContext::new(), "run_task", task).await.unwrap();
    eventually("the task runs", Duration::from_secs(30), || async {
        let t = compute_api.call(&RequestContext::new(), "get_task", json!({"task_id": "alarm-wait"})).await.ok()?;
        (t["status"] == "running").then_some(())
    })
    .await;
    let waiting = {
        let c = compute_api.with_timeout(Duration::from_secs(20));
        tokio::spawn(async move {
            c.call(&RequestContext::new(), "wait_task", json!({"task_id": "alarm-wait", "timeout": 30})).await
        })
    };

    broker.ctl(&["set_vm_memory_high_watermark", "absolute", "1"]).expect("raise a memory alarm");
    let started = Instant::now();
    let cast = ping.cast(&RequestContext::new(), "ping", json!({"arg": 2})).await;
    let took = started.elapsed();
    assert!(cast.is_err(), "a cast during a memory alarm fails once its budget is spent");
    assert!(took < budget + Duration::from_secs(5), "the cast gave up after {took:?}, its budget being {budget:?}");
    eventually("the block is logged and counted", Duration::from_secs(30), || async {
        let logged = nova_tests::logged().contains("the broker blocked this connection");
        (logged && nova_rpc::transport::amqp::metrics::metrics().connection_blocked.get() > blocked_before)
            .then_some(())
    })
    .await;

    // SIGTERM while the compute's reply waits on the blocked broker: out
    // within the grace (3 s) and a margin.
    eventually("the compute's reply publish is blocked", Duration::from_secs(60), || async {
        compute.output().contains("the broker blocked this connection").then_some(())
    })
    .await;
    let termed = Instant::now();
    compute.signal("TERM");
    let status = compute.wait_exit(Duration::from_secs(30)).expect("the compute exits while the broker is blocked");
    println!("alarm: cast refused after {took:?}; compute exited {:?} after SIGTERM", termed.elapsed());
    assert!(status.success(), "{status:?}: {}", compute.output());
    // graceful_shutdown_timeout is 3 s; a second of margin for a loaded machine.
    assert!(termed.elapsed() < Duration::from_secs(5), "the compute took {:?} to exit", termed.elapsed());
    assert!(waiting.await.unwrap().is_err(), "the blocked reply never reached the caller");

    broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).expect("clear the memory alarm");
    let cleared = Instant::now();
    let mut compute = Proc::spawn("nova-compute", &args, dir.path());
    eventually("service resumes after the alarm", Duration::from_secs(60), || async {
        ping.call(&RequestContext::new(), "ping", json!({"arg": 3})).await.ok()
    })
    .await;
    println!("alarm: serving again {:?} after the alarm cleared", cleared.elapsed());
    assert!(nova_tests::logged().contains("the broker unblocked this connection"), "the unblock is logged");
    assert!(nova_rpc::transport::amqp::metrics::metrics().connection_unblocked.get() > 0, "the unblock is counted");
    compute.signal("TERM");
    compute.wait_exit(Duration::from_secs(30)).expect("the compute exits");
    t.close().await;
}

/// The connections of `vhost` (shared broker) whose client-given name ends
/// in `suffix`, as the Erlang pids `close_connection` takes.
fn connections(vhost: &str, suffix: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "vhost", "client_properties", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl list_connections");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let marker = "{\"connection_name\",\"";
            let name = cols.get(2).and_then(|p| p.split(marker).nth(1)).and_then(|rest| rest.split('"').next());
            let ours = name.is_some_and(|n| n.ends_with(suffix));
            (cols.len() == 3 && cols[1] == vhost && ours).then(|| cols[0].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_survives_a_consumer_reconnect_mid_method() {
    nova_tests::log_capture();
    let vhost = TestVhost::new();
    let exchange = unique("nova");
    let mut options = TransportOptions::new(vhost.url()).with_control_exchange(exchange);
    options.rabbit.rabbit_retry_interval = Duration::from_millis(200);
    options.rabbit.rabbit_retry_backoff = Duration::from_millis(200);
    let t = transport::connect(options).await.unwrap();
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(tokio::sync::Notify::new());
    let (s, f, r) = (started.clone(), finished.clone(), release.clone());
    let api = Router::new(Version::new(1, 0)).method("slow", move |_ctx: RequestContext, _v: Value| {
        let (s, f, r) = (s.clone(), f.clone(), r.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            r.notified().await;
            f.fetch_add(1, Ordering::SeqCst);
            Ok::<_, RpcError>(())
        }
    });
    let server = RpcServer::new(t.clone(), Target::new("alo").with_server("s1"), Dispatcher::new(vec![Arc::new(api)]))
        .with_at_least_once(3)
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("alo")).with_mandatory(true);
    client.cast(&RequestContext::new(), "slow", json!({})).await.unwrap();
    eventually("the method started", Duration::from_secs(10), || async {
        (started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // Close the consumer's connection under the running method.
    let listeners = connections(&vhost.name, ":consume");
    assert_eq!(listeners.len(), 1, "one consuming connection: {listeners:?}");
    let ctl = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &listeners[0], "test: forced reconnect"])
        .status()
        .expect("rabbitmqctl close_connection");
    assert!(ctl.success());
    eventually("the server consumes again on a new connection", Duration::from_secs(30), || async {
        let again = connections(&vhost.name, ":consume");
        (again.len() == 1 && again[0] != listeners[0]).then_some(())
    })
    .await;
    // The broker hands the unacknowledged message to the new consumer: it
    // is held beside the running original, not run again nor acked as a duplicate.
    eventually("the message is redelivered and held", Duration::from_secs(30), || async {
        nova_tests::logged().contains("a copy of a running message arrived").then_some(())
    })
    .await;
    release.notify_one();
    eventually("the method finished once", Duration::from_secs(10), || async {
        (finished.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually("the message is settled on the live channel", Duration::from_secs(30), || async {
        (nova_tests::rabbit_queue_depth(&vhost.name, "alo") == Some(0)).then_some(())
    })
    .await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "the redelivered copy did not run again");
    assert_eq!(nova_tests::rabbit_queue_depth(&vhost.name, "alo.dead"), Some(0), "nothing was dead-lettered");

    // A cast to an at-least-once target nobody consumes is refused, not confirmed and dropped.
    let nobody = RpcClient::new(t.clone(), Target::new(unique("nobody"))).with_mandatory(true);
    let e = nobody.cast(&RequestContext::new(), "slow", json!({})).await.unwrap_err();
    assert!(matches!(e, RpcError::Unroutable { .. }), "{e:?}");
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_on_time_with_work_that_never_returns() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("hang");
    let exchange = unique("nova");
    let url = vhost.url();
    let args = service_args(&dir, &url, &exchange, "h1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut hang = Proc::spawn("nova-hang", &args, dir.path());
    let t = transport::connect(TransportOptions::new(url).with_control_exchange(exchange)).await.unwrap();
    let client = RpcClient::new(t.clone(), Target::new("hang").with_server("h1"));
    eventually("the periodic task is stuck", Duration::from_secs(60), || async {
        hang.output().contains("STUCK").then_some(())
    })
    .await;
    eventually("a blocking method hangs", Duration::from_secs(30), || async {
        client.cast(&RequestContext::new(), "hang", json!({})).await.ok()?;
        hang.output().contains("HANGING").then_some(())
    })
    .await;
    let termed = Instant::now();
    hang.signal("TERM");
    let status = hang.wait_exit(Duration::from_secs(30)).expect("SIGTERM ends the process despite the stuck work");
    println!("hang: exited {:?} after SIGTERM (graceful_shutdown_timeout = 3 s)", termed.elapsed());
    assert!(termed.elapsed() < Duration::from_secs(5), "exited {:?} after SIGTERM", termed.elapsed());
    assert!(status.success(), "{status:?}: {}", hang.output());
    let out = hang.output();
    assert!(out.contains("abandon") || out.contains("cancelled"), "the stuck work is named: {out}");
    t.close().await;
}
