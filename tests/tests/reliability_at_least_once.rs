//! At-least-once casts (opt-in per target) on both transports: a cast that
//! always fails is tried `max_deliveries + 1` times and then dead-lettered
//! rather than looping; duplicates of one `_unique_id` run once; and on
//! RabbitMQ a server SIGKILLed mid-method hands its message to the next
//! server. The default stays oslo's at-most-once.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{Destination, Outgoing},
    wire::{self, Request},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{eventually, transport_suite, unique, Bus, Kind, Proc, TempDir, TestVhost};
use serde_json::{json, Map, Value};

#[derive(Default)]
struct Counts {
    failing: AtomicUsize,
    ok: AtomicUsize,
}

fn api(counts: Arc<Counts>) -> Dispatcher {
    let (a, b) = (counts.clone(), counts);
    let r = Router::new(Version::new(1, 0))
        .method("always_fails", move |_ctx: RequestContext, _a: Map<String, Value>| {
            a.failing.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(RpcError::remote("Boom", "tests", "this cast always fails")) }
        })
        .method("count", move |_ctx: RequestContext, _a: Map<String, Value>| {
            b.ok.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, RpcError>(()) }
        });
    Dispatcher::new(vec![Arc::new(r)])
}

async fn poison_casts_are_dead_lettered(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let counts = Arc::new(Counts::default());
    let server = RpcServer::new(t.clone(), Target::new("alo").with_server("s1"), api(counts.clone()))
        .with_at_least_once(2)
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("alo"));
    client.cast(&RequestContext::new(), "always_fails", json!({})).await.unwrap();
    client.cast(&RequestContext::new(), "count", json!({})).await.unwrap();
    eventually("the poison cast was tried 3 times", Duration::from_secs(10), || async {
        (counts.failing.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    // A sentinel cast after the third attempt: a fourth would come first.
    client.cast(&RequestContext::new(), "count", json!({})).await.unwrap();
    eventually("the sentinel was served", Duration::from_secs(10), || async {
        (counts.ok.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    assert_eq!(counts.failing.load(Ordering::SeqCst), 3, "then it stops: no endless loop");
    if kind == Kind::Rabbit {
        // A quorum queue: its count shows once its log has taken the message.
        let dead =
            || nova_tests::rabbit_queue_depth(bus.vhost().unwrap(), &nova_rpc::transport::dead_letter_queue("alo"));
        eventually("the poison message waits in the dead-letter queue", Duration::from_secs(10), || async {
            (dead() == Some(1)).then_some(())
        })
        .await;
    }
    server.stop(Duration::from_secs(5)).await;
}

async fn duplicates_run_once(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let counts = Arc::new(Counts::default());
    let server = RpcServer::new(t.clone(), Target::new("alo").with_server("s1"), api(counts.clone()))
        .with_at_least_once(3)
        .start()
        .await
        .unwrap();
    let request = Request::cast("count", serde_json::Map::new());
    let body: bytes::Bytes = wire::encode_request(&request).unwrap().into();
    let dest = Destination::Topic { exchange: bus.exchange.as_str().into(), routing_key: "alo".into() };
    for _ in 0..3 {
        t.send(&dest, Outgoing::new(body.clone())).await.unwrap();
    }
    // Two sentinel casts after the copies: the copies are judged before them.
    let client = RpcClient::new(t.clone(), Target::new("alo"));
    for _ in 0..2 {
        client.cast(&RequestContext::new(), "count", json!({})).await.unwrap();
    }
    eventually("the sentinels were served", Duration::from_secs(10), || async {
        (counts.ok.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert_eq!(counts.ok.load(Ordering::SeqCst), 3, "three copies of one _unique_id ran once");
    server.stop(Duration::from_secs(5)).await;
}

transport_suite!(poison_casts_are_dead_lettered, duplicates_run_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_method_redelivers_to_the_next_server() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("alo");
    let exchange = unique("nova");
    let url = vhost.url();
    let worker = |host: &str, work_ms: &str| {
        nova_tests::bench_worker(&url, &exchange, "jobs", host, work_ms, &["--at-least-once", "5"], dir.path())
    };
    let ready = |p: &Proc| p.output().contains("READY").then_some(());
    let mut slow = worker("slow", "60000");
    eventually("the slow worker is up", Duration::from_secs(20), || async { ready(&slow) }).await;
    let t = nova_rpc::transport::connect(
        nova_rpc::transport::TransportOptions::new(url.clone()).with_control_exchange(exchange.clone()),
    )
    .await
    .unwrap();
    RpcClient::new(t.clone(), Target::new("jobs")).cast(&RequestContext::new(), "work", json!({})).await.unwrap();
    eventually("the slow worker took the job", Duration::from_secs(10), || async {
        slow.output().contains("FIRST").then_some(())
    })
    .await;
    slow.signal("KILL");
    slow.wait_exit(Duration::from_secs(5)).expect("killed");
    let next = worker("next", "0");
    eventually("the job is delivered again to the next server", Duration::from_secs(20), || async {
        next.output().contains("FIRST").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_stays_at_most_once() {
    let bus = Bus::new(Kind::Memory);
    let t = bus.transport().await;
    let counts = Arc::new(Counts::default());
    let server =
        RpcServer::new(t.clone(), Target::new("amo").with_server("s1"), api(counts.clone())).start().await.unwrap();
    RpcClient::new(t.clone(), Target::new("amo"))
        .cast(&RequestContext::new(), "always_fails", json!({}))
        .await
        .unwrap();
    // A sentinel cast after it: a retry would be served before it.
    RpcClient::new(t.clone(), Target::new("amo")).cast(&RequestContext::new(), "count", json!({})).await.unwrap();
    eventually("the sentinel ran", Duration::from_secs(5), || async {
        (counts.ok.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(counts.failing.load(Ordering::SeqCst), 1, "a failed cast is not retried by default");
    server.stop(Duration::from_secs(5)).await;
}
