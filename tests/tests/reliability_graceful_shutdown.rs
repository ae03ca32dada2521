//! Graceful shutdown under load, on RabbitMQ: a server SIGTERMed with
//! calls in flight answers every one of them, takes nothing new, hands the
//! messages it had not dispatched back to the broker — where the next
//! server answers them — and exits in time.

use std::{collections::HashMap, time::Duration};

use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_tests::{eventually, unique, TempDir, TestVhost};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_and_requeues_the_rest() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("graceful");
    let exchange = unique("nova");
    let url = vhost.url();
    let worker = |host: &str, work_ms: &str| {
        nova_tests::bench_worker(&url, &exchange, "jobs", host, work_ms, &["--executor", "2"], dir.path())
    };
    let mut first = worker("first", "1500");
    eventually("the first server is up", Duration::from_secs(20), || async {
        first.output().contains("READY").then_some(())
    })
    .await;
    let t = transport::connect(transport::TransportOptions::new(url.clone()).with_control_exchange(exchange.clone()))
        .await
        .unwrap();
    let client = RpcClient::new(t, Target::new("jobs")).with_timeout(Duration::from_secs(30));
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call(&RequestContext::new(), "work", json!({})).await })
        })
        .collect();
    eventually("the first server is busy", Duration::from_secs(10), || async {
        first.output().contains("FIRST").then_some(())
    })
    .await;
    // All ten sent: two taken by the first server (its executor's size), eight waiting.
    eventually("eight calls wait in the queue", Duration::from_secs(10), || async {
        (nova_tests::rabbit_queue_depth(&vhost.name, "jobs") == Some(8)).then_some(())
    })
    .await;
    first.signal("TERM");
    let _next = worker("next", "0");
    let mut served: HashMap<String, usize> = HashMap::new();
    for c in calls {
        let host = c.await.unwrap().expect("every call is answered");
        *served.entry(host.as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(
        served.get("first"),
        Some(&2),
        "the first server finished its 2 in-flight calls and took no more: {served:?}"
    );
    assert_eq!(served.get("next"), Some(&8), "the rest went to the next server: {served:?}");
    let status = first.wait_exit(Duration::from_secs(10)).expect("exits within its graceful timeout");
    assert!(status.success(), "{status:?}: {}", first.output());
    assert!(first.output().contains("STOPPED requeued="), "{}", first.output());
}
