//! tower middleware around dispatch, through `nova_rpc::layer::tower`: a
//! `Timeout` cuts off a method that takes too long, and a
//! `ConcurrencyLimit` shared by every request lets one run at a time.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use nova_core::testing::eventually;
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    layer::{
        tower::{Dispatch, TowerLayer},
        Call, Layer, Next,
    },
    transport::{self, Transport, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, RunningServer, Target, Version,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

#[derive(Deserialize)]
struct NoArgs {}

/// Counts requests as they reach it (outside the tower layer).
#[derive(Default)]
struct Arrivals(AtomicUsize);

#[async_trait]
impl Layer for Arrivals {
    async fn handle(&self, call: Call, next: Next) -> Result<nova_rpc::Payload, RpcError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(call).await
    }
}

/// Serve `router` on `topic.h1` behind `layers` (outermost first).
async fn serve(t: &Arc<dyn Transport>, topic: &str, router: Router, layers: Vec<Arc<dyn Layer>>) -> RunningServer {
    let mut server =
        RpcServer::new(t.clone(), Target::new(topic).with_server("h1"), Dispatcher::new(vec![Arc::new(router)]));
    for layer in layers {
        server = server.with_layer(layer);
    }
    server.start().await.expect("the server starts")
}

#[tokio::test]
async fn a_tower_timeout_cuts_off_a_slow_method() {
    let t = transport::connect(TransportOptions::new("memory://tower-timeout")).await.unwrap();
    let router = Router::new(Version::new(1, 0))
        .method("hang", |_ctx: RequestContext, _a: NoArgs| async {
            std::future::pending::<Result<(), RpcError>>().await
        })
        .method("quick", |_ctx: RequestContext, _a: NoArgs| async { Ok::<_, RpcError>("done") });
    let timeout = TowerLayer::new(ServiceBuilder::new().timeout(Duration::from_millis(200)).service(Dispatch));
    let server = serve(&t, "towered", router, vec![Arc::new(timeout)]).await;
    let client = RpcClient::new(t.clone(), Target::new("towered")).with_timeout(Duration::from_secs(30));
    let ctx = RequestContext::new();
    let e = client.call(&ctx, "hang", json!({})).await.expect_err("the timeout answers");
    assert_eq!(e.class(), "Timeout", "{e:?}");
    assert_eq!(client.call(&ctx, "quick", json!({})).await.unwrap(), json!("done"));
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_tower_concurrency_limit_counts_every_request() {
    let t = transport::connect(TransportOptions::new("memory://tower-limit")).await.unwrap();
    let (running, most, gate) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let (r, m, g) = (running.clone(), most.clone(), gate.clone());
    let router = Router::new(Version::new(1, 0)).method("hold", move |_ctx: RequestContext, _a: NoArgs| {
        let (running, most, gate) = (r.clone(), m.clone(), g.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            gate.acquire().await.expect("gate").forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, RpcError>(())
        }
    });
    let arrivals = Arc::new(Arrivals::default());
    let limit = TowerLayer::new(ServiceBuilder::new().concurrency_limit(1).service(Dispatch));
    let server = serve(&t, "limited", router, vec![arrivals.clone(), Arc::new(limit)]).await;
    let client = RpcClient::new(t.clone(), Target::new("limited")).with_timeout(Duration::from_secs(30));
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call(&RequestContext::new(), "hold", json!({})).await })
        })
        .collect();
    // Both requests have reached the server, and one of them runs.
    eventually("both requests arrived and one runs", Duration::from_secs(30), || async {
        (arrivals.0.load(Ordering::SeqCst) == 2 && running.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    gate.add_permits(2);
    for call in calls {
        call.await.unwrap().expect("each call ends");
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "the limit let one request run at a time");
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_tower_rate_limit_spaces_requests_out() {
    let t = transport::connect(TransportOptions::new("memory://tower-rate")).await.unwrap();
    let router = Router::new(Version::new(1, 0))
        .method("tick", |_ctx: RequestContext, _a: NoArgs| async { Ok::<_, RpcError>("tick") });
    let one_per_ten_seconds =
        TowerLayer::new(ServiceBuilder::new().rate_limit(1, Duration::from_secs(10)).service(Dispatch));
    let server = serve(&t, "rated", router, vec![Arc::new(one_per_ten_seconds)]).await;
    let client = RpcClient::new(t.clone(), Target::new("rated")).with_timeout(Duration::from_secs(120));
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        client.call(&RequestContext::new(), "tick", json!({})).await.expect("each call is served");
    }
    // The second and third wait for the next window each (paused time: no real wait).
    assert!(started.elapsed() >= Duration::from_secs(20), "served after {:?}", started.elapsed());
    server.stop(Duration::from_secs(5)).await;
}
