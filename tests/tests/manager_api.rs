//! Writing a manager: typed methods and errors naming bad arguments, a typed
//! client, blocking methods that do not stall the reactor, casts, private
//! methods, periodic tasks, and Nova's base API — in one process on memory://.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nova_core::{rpc_api, Manager, ManagerHandle, RpcApi, Service};
use nova_rpc::{transport, RequestContext, RpcClient, RpcError, Target, Version};
use serde_json::json;

/// Counts things.
#[derive(Default)]
pub struct CounterManager {
    hits: AtomicUsize,
    ticks: AtomicUsize,
    crunching: AtomicUsize,
}

#[rpc_api(version = "2.3")]
impl CounterManager {
    /// Add two numbers, optionally scaled.
    pub async fn add(&self, _ctx: RequestContext, a: i64, b: i64, scale: Option<i64>) -> Result<i64, RpcError> {
        Ok((a + b) * scale.unwrap_or(1))
    }

    /// Burn a thread for `millis` (blocking code).
    #[rpc(blocking)]
    pub fn crunch(&self, _ctx: RequestContext, millis: u64) -> Result<u64, RpcError> {
        self.crunching.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(millis));
        Ok(millis)
    }

    /// Count a hit.
    #[rpc(cast)]
    pub async fn hit(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Never callable: its name starts with `_`.
    pub async fn _secret(&self, _ctx: RequestContext) -> Result<u32, RpcError> {
        Ok(42)
    }

    #[periodic_task(spacing = 0.1, run_immediately = true)]
    async fn tick(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        self.ticks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Manager for CounterManager {}

async fn start(bus: &str) -> (Arc<CounterManager>, nova_core::RunningService, CounterManagerClient, RpcClient) {
    let t = transport::connect(transport::TransportOptions::new(format!("memory://{bus}"))).await.unwrap();
    let m = Arc::new(CounterManager::default());
    let running = Service::create(t.clone(), ManagerHandle::new(m.clone()))
        .binary("nova-counter")
        .host("h1")
        .periodic_fuzzy_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let raw = RpcClient::new(t, Target::new("counter"));
    (m, running, CounterManagerClient::new(raw.clone()), raw)
}

#[tokio::test]
async fn typed_methods_client_and_argument_errors() {
    let (m, running, client, raw) = start(&nova_tests::unique("api")).await;
    let ctx = RequestContext::new();
    assert_eq!(client.add(&ctx, 2, 3, None).await.unwrap(), 5);
    assert_eq!(client.add(&ctx, 2, 3, Some(10)).await.unwrap(), 50);
    let raw = raw.with_version("2.0");
    for (args, name) in
        [(json!({"a": 1}), "b"), (json!({"a": "x", "b": 1}), "a"), (json!({"a": 1, "b": 2, "c": 3}), "c")]
    {
        match raw.call(&ctx, "add", args).await {
            Err(RpcError::Remote(f)) => assert!(f.class == "InvalidArgument" && f.message.contains(name), "{f:?}"),
            other => panic!("expected an argument error, got {other:?}"),
        }
    }
    assert!(matches!(raw.call(&ctx, "_secret", json!({})).await, Err(RpcError::NoSuchMethod { .. })));
    assert!(
        matches!(raw.call(&ctx, "tick", json!({})).await, Err(RpcError::NoSuchMethod { .. })),
        "periodic tasks are not RPC methods"
    );
    assert!(matches!(
        raw.with_version("2.4").call(&ctx, "add", json!({"a": 1, "b": 1})).await,
        Err(RpcError::UnsupportedVersion { .. })
    ));
    client.hit(&ctx).await.unwrap();
    client.hit(&ctx).await.unwrap();
    nova_tests::eventually("casts arrive", Duration::from_secs(2), || async {
        (m.hits.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let capped = client.with_version_cap(Version::new(2, 2));
    assert!(!capped.can_send_version(CounterManagerClient::VERSION));
    // `add` dates from 2.0 (no `since`): it goes at 2.0, under a 2.2 cap.
    assert_eq!(capped.add(&ctx, 1, 1, None).await.unwrap(), 2);
    let other_major = client.with_version_cap(Version::new(1, 9));
    assert!(matches!(other_major.add(&ctx, 1, 1, None).await, Err(RpcError::PinnedBelow { .. })));
    nova_tests::eventually("periodic task runs at its spacing", Duration::from_secs(3), || async {
        (m.ticks.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;
    // Nova's base API and introspection.
    let base = raw.with_namespace("baseapi").with_version("1.1");
    assert_eq!(
        base.call(&ctx, "ping", json!({"arg": "x"})).await.unwrap(),
        json!({"service": "nova-counter", "arg": "x"})
    );
    let d = base.call(&ctx, "describe", json!({})).await.unwrap();
    assert_eq!(d["endpoints"][0]["version"], json!(CounterManager::API_VERSION));
    let add = d["endpoints"][0]["methods"].as_array().unwrap().iter().find(|m| m["name"] == "add").unwrap().clone();
    assert_eq!(
        add["args"],
        json!([{"name": "a", "type": "i64"}, {"name": "b", "type": "i64"}, {"name": "scale", "type": "Option<i64>"}])
    );
    assert_eq!(add["doc"], json!("Add two numbers, optionally scaled."));
    let cast_of = |name: &str| {
        let methods = d["endpoints"][0]["methods"].as_array().unwrap();
        methods.iter().find(|m| m["name"] == name).map(|m| m["cast"].clone())
    };
    assert_eq!((cast_of("hit"), cast_of("add")), (Some(json!(true)), Some(json!(false))), "describe marks casts");
    running.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_methods_do_not_stall_the_reactor() {
    let (m, running, client, _raw) = start(&nova_tests::unique("api")).await;
    let ctx = RequestContext::new();
    let slow = {
        let c = client.clone();
        tokio::spawn(async move { c.crunch(&RequestContext::new(), 600).await })
    };
    nova_tests::eventually("the blocking method runs", Duration::from_secs(10), || async {
        (m.crunching.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let started = Instant::now();
    assert_eq!(client.add(&ctx, 1, 1, None).await.unwrap(), 2);
    assert!(started.elapsed() < Duration::from_millis(300), "a call is served while a blocking method runs");
    assert_eq!(slow.await.unwrap().unwrap(), 600);
    running.stop().await;
}
