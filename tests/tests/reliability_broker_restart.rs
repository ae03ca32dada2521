//! Broker faults on a RabbitMQ node of the test's own: a restart under a
//! steady load of calls and casts, and a broker that goes silent (frozen)
//! being found out by AMQP heartbeats. Nothing hangs past its timeout, and
//! no cast that returned `Ok` is lost.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{broker::PrivateBroker, eventually, unique};
use serde::Deserialize;
use serde_json::{json, Value};

fn fast_reconnect(url: &str, exchange: &str) -> TransportOptions {
    let mut o = nova_tests::fast_reconnect(url, exchange, Duration::from_secs(3));
    // Casts must survive the restart: durable queue, persistent messages.
    o.rabbit.amqp_durable_queues = true;
    o
}

#[derive(Deserialize)]
struct Value1 {
    value: u64,
}

fn api(received: Arc<Mutex<HashSet<u64>>>) -> Dispatcher {
    let r = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) })
        .method("record", move |_ctx: RequestContext, v: Value1| {
            received.lock().unwrap().insert(v.value);
            async { Ok::<_, RpcError>(()) }
        });
    Dispatcher::new(vec![Arc::new(r)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_under_load() {
    nova_tests::log_capture();
    let broker = PrivateBroker::start(false);
    let exchange = unique("nova");
    let options = fast_reconnect(&broker.url(), &exchange);
    let received = Arc::new(Mutex::new(HashSet::new()));
    let server_t = transport::connect(options.clone()).await.unwrap();
    let server = RpcServer::new(server_t.clone(), Target::new("restart").with_server("s1"), api(received.clone()))
        .start()
        .await
        .unwrap();
    let client_t = transport::connect(options).await.unwrap();
    let client = RpcClient::new(client_t.clone(), Target::new("restart")).with_timeout(Duration::from_secs(3));
    client.call(&RequestContext::new(), "echo", json!({"warm": 1})).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Callers: every call ends in a result, a timeout or a transport error, in time.
    let mut callers = Vec::new();
    for _ in 0..3 {
        let (c, stop) = (client.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let r = c.call(&RequestContext::new(), "echo", json!({"n": 1})).await;
                let took = started.elapsed();
                assert!(took < Duration::from_secs(5), "a call took {took:?}: {r:?}");
                outcomes.push((Instant::now(), r.is_ok()));
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            outcomes
        }));
    }
    // A caster: each cast waits for the broker (retry budget) or fails; the
    // ones that returned Ok must all arrive.
    let caster = {
        let (c, stop) = (client.with_retry(Some(20)), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), 0);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                match c.cast(&RequestContext::new(), "record", json!({"value": i})).await {
                    Ok(()) => ok.push(i),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };

    let received_now = || received.lock().unwrap().len();
    eventually("the load is flowing", Duration::from_secs(30), || async { (received_now() > 20).then_some(()) }).await;
    broker.stop_app();
    // While it is down, a cast with no retry budget fails rather than vanishing.
    let no_retry = client.with_retry(Some(0)).cast(&RequestContext::new(), "record", json!({"value": 0})).await;
    assert!(matches!(no_retry, Err(RpcError::Transport(_))), "{no_retry:?}");
    eventually("the server knows it lost the broker", Duration::from_secs(30), || async {
        server.health().longest_deaf().is_some().then_some(())
    })
    .await;
    broker.start_app();
    let back = Instant::now();
    let before = received_now();
    eventually("the load flows again", Duration::from_secs(60), || async {
        let answered = client.call(&RequestContext::new(), "echo", json!({"n": 2})).await.is_ok();
        (answered && received_now() > before + 100).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut first_ok_after = None;
    for c in callers {
        for (at, ok) in c.await.unwrap() {
            if ok && at > back && first_ok_after.is_none_or(|f| at < f) {
                first_ok_after = Some(at);
            }
        }
    }
    let resumed = first_ok_after.expect("calls succeed again after the broker returns") - back;
    assert!(resumed < Duration::from_secs(5), "calls resumed {resumed:?} after the broker came back");
    let (ok, _failed) = caster.await.unwrap();
    assert!(ok.len() > 100, "casts kept flowing: {}", ok.len());
    let missing = || -> Vec<u64> {
        let got = received.lock().unwrap();
        ok.iter().filter(|v| !got.contains(v)).copied().collect()
    };
    // On failure: which values, where they sit among the casts, and the log.
    let explain = || {
        let gone = missing();
        let around: Vec<_> = gone.iter().take(5).map(|v| ok.iter().position(|o| o == v)).collect();
        format!(
            "{} of {} confirmed casts missing, e.g. {:?} (their places among the confirmed: {around:?}); the log:\n{}",
            gone.len(),
            ok.len(),
            &gone[..gone.len().min(5)],
            nova_tests::logged()
        )
    };
    nova_tests::eventually_explained(
        "every confirmed cast arrived",
        Duration::from_secs(15),
        || async { missing().is_empty().then_some(()) },
        explain,
    )
    .await;
    assert!(
        nova_tests::logged().contains("topology re-declared; consuming again"),
        "the server re-declared its topology"
    );
    server.stop(Duration::from_secs(5)).await;
    client_t.close().await;
    server_t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_broker_is_detected_by_heartbeats() {
    nova_tests::log_capture();
    let broker = PrivateBroker::start(false);
    let exchange = unique("nova");
    let mut options = fast_reconnect(&broker.url(), &exchange);
    options.rabbit.heartbeat_timeout_threshold = 2;
    let t = transport::connect(options).await.unwrap();
    let server =
        RpcServer::new(t.clone(), Target::new("silent").with_server("s1"), api(Arc::default())).start().await.unwrap();
    let client = RpcClient::new(t.clone(), Target::new("silent")).with_timeout(Duration::from_secs(2));
    client.call(&RequestContext::new(), "echo", json!({})).await.unwrap();
    let before = nova_tests::logged().matches("AMQP connection lost").count();
    broker.freeze(true).unwrap();
    // A call into the silence times out; it does not hang.
    let started = Instant::now();
    let r = client.call(&RequestContext::new(), "echo", json!({})).await;
    assert!(r.is_err() && started.elapsed() < Duration::from_secs(4), "{r:?} after {:?}", started.elapsed());
    eventually("heartbeats find the silent connection dead", Duration::from_secs(10), || async {
        (nova_tests::logged().matches("AMQP connection lost").count() > before).then_some(())
    })
    .await;
    broker.freeze(false).unwrap();
    eventually("calls work again once the broker answers", Duration::from_secs(20), || async {
        client.call(&RequestContext::new(), "echo", json!({})).await.ok()
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    t.close().await;
}
