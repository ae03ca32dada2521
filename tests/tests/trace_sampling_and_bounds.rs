//! Tracing that costs little and never grows without bound: a sampled
//! request is recorded at every hop and an unsampled one at none, failed
//! and slow hops are kept whatever the sampling, every buffer on the trace
//! path holds at most its cap (dropping and counting, never blocking the
//! request), a trace of 20 000 spans is read back without harm, and a soak
//! of 50 000 requests keeps the collector and the tracers under their caps.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use nova_core::testing::TestBus;
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    layer::trace::{enter, Sampler, Span, TraceLayer, Tracer, TRACE_TOPIC},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_services::trace::{Limits, Recorded, TraceCollector};
use nova_tests::{eventually, unique};
use serde_json::{json, Value};

/// A service `front` whose `relay` calls `back.echo` with its own context,
/// and `back`, each traced by its own tracer with `sampler`.
struct TwoHops {
    bus: TestBus,
    collector: Arc<TraceCollector>,
    tracers: Vec<Tracer>,
    servers: Vec<nova_rpc::server::RunningServer>,
    front: RpcClient,
}

fn api(bus: &TestBus, back: &str) -> Dispatcher {
    let next = bus.client(Target::new(back));
    let r = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) })
        .method("relay", move |ctx: RequestContext, v: Value| {
            let next = next.clone();
            async move { next.call(&ctx, "echo", v).await }
        })
        .method("fail", |_ctx: RequestContext, _v: Value| async move {
            Err::<Value, _>(RpcError::remote("Oops", "tests", "failed on purpose"))
        })
        .method("slow", |_ctx: RequestContext, v: Value| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, RpcError>(v)
        });
    Dispatcher::new(vec![Arc::new(r)])
}

async fn two_hops(sampler: Sampler, limits: Limits) -> TwoHops {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::trace::MIGRATIONS).await.unwrap();
    let collector = Arc::new(TraceCollector::new(bus.database().clone(), limits));
    bus.serve(TRACE_TOPIC, "c1", collector.clone()).await;
    let (front, back) = (unique("front"), unique("back"));
    let mut tracers = Vec::new();
    let mut servers = Vec::new();
    for (topic, host) in [(&front, "f1"), (&back, "b1")] {
        let tracer = Tracer::new(bus.transport(), topic, host).with_sampler(sampler);
        tracers.push(tracer.clone());
        let server = RpcServer::new(bus.transport(), Target::new(topic).with_server(host), api(&bus, &back))
            .with_layer(Arc::new(TraceLayer::new(tracer)))
            .start()
            .await
            .unwrap();
        servers.push(server);
    }
    let front = bus.client(Target::new(&front)).with_timeout(Duration::from_secs(10));
    TwoHops { bus, collector, tracers, servers, front }
}

impl TwoHops {
    async fn trace(&self, id: &str) -> Vec<Span> {
        let traces = self.bus.client(Target::new(TRACE_TOPIC));
        traces.call_as(&RequestContext::new(), "get_trace", json!({"trace_id": id})).await.unwrap()
    }

    /// Wait until the trace `id` has `n` spans.
    async fn spans(&self, id: &str, n: usize) -> Vec<Span> {
        eventually(&format!("trace {id} has {n} spans"), Duration::from_secs(20), || async {
            let spans = self.trace(id).await;
            (spans.len() == n).then_some(spans)
        })
        .await
    }

    /// Wait until every tracer has shipped what it held.
    async fn drained(&self) {
        eventually("the tracers shipped everything", Duration::from_secs(20), || async {
            self.tracers.iter().all(|t| t.held() == 0).then_some(())
        })
        .await
    }

    async fn stop(self) {
        for s in self.servers {
            s.stop(Duration::from_secs(5)).await;
        }
        self.bus.stop().await;
    }
}

fn entering(sampled: Option<bool>) -> RequestContext {
    let mut ctx = RequestContext::new();
    if let Some(sampled) = sampled {
        let id = ctx.request_id.clone();
        enter(&mut ctx, &id, "00000000000000aa", sampled);
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_is_traced_at_every_hop_and_an_unsampled_one_at_none() {
    // The services would sample nothing on their own: the entry point decides.
    let hops = two_hops(Sampler::new(0.0, Duration::from_secs(60)), Limits::default()).await;
    let mut unsampled = Vec::new();
    for i in 0..50 {
        let ctx = entering(Some(false));
        assert_eq!(hops.front.call(&ctx, "relay", json!({"i": i})).await.unwrap(), json!({"i": i}));
        unsampled.push(ctx.request_id);
    }
    let sampled = entering(Some(true));
    hops.front.call(&sampled, "relay", json!({"sampled": true})).await.unwrap();
    let spans = hops.spans(&sampled.request_id, 2).await;
    let relay = spans.iter().find(|s| s.method == "relay").expect("the front hop");
    let echo = spans.iter().find(|s| s.method == "echo").expect("the back hop");
    assert_eq!(relay.parent_id.as_deref(), Some("00000000000000aa"));
    assert_eq!(echo.parent_id.as_deref(), Some(relay.span_id.as_str()), "the decision travelled to the second hop");
    hops.drained().await;
    for id in &unsampled {
        assert!(hops.trace(id).await.is_empty(), "an unsampled request left spans");
    }
    assert_eq!(hops.collector.held().await, (1, 2), "the collector holds the sampled trace only");
    // A request nobody decided for is decided where it enters: here, never.
    let undecided = entering(None);
    hops.front.call(&undecided, "relay", json!({})).await.unwrap();
    hops.drained().await;
    assert!(hops.trace(&undecided.request_id).await.is_empty());
    hops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_slow_hops_are_kept_whatever_the_sampling() {
    let hops = two_hops(Sampler::new(0.0, Duration::from_millis(100)), Limits::default()).await;
    let failed = entering(Some(false));
    let e = hops.front.call(&failed, "fail", json!({"password": "hunter2"})).await.unwrap_err();
    assert_eq!(e.class(), "Oops");
    let spans = hops.spans(&failed.request_id, 1).await;
    assert_eq!(spans[0].outcome, "Oops");
    assert!(!spans[0].args.contains("hunter2"), "secrets are masked: {}", spans[0].args);
    let slow = entering(Some(false));
    hops.front.call(&slow, "slow", json!({})).await.unwrap();
    let spans = hops.spans(&slow.request_id, 1).await;
    assert!(spans[0].duration_ms >= 100.0 && spans[0].outcome == "ok", "{spans:?}");
    hops.stop().await;
}

/// A collector that takes no batch until `release` says so; `entered` says a batch came.
fn stuck_collector(entered: Arc<AtomicBool>, release: tokio::sync::watch::Receiver<bool>) -> Dispatcher {
    let r = Router::new(Version::new(1, 0)).method("record_spans", move |_ctx: RequestContext, _v: Value| {
        let (entered, mut release) = (entered.clone(), release.clone());
        async move {
            entered.store(true, Ordering::SeqCst);
            let _ = release.wait_for(|r| *r).await;
            Ok::<_, RpcError>(Value::Null)
        }
    });
    Dispatcher::new(vec![Arc::new(r)])
}

fn span(trace_id: &str, span_id: String, parent_id: Option<String>, start_ms: f64) -> Span {
    Span {
        trace_id: trace_id.into(),
        span_id,
        parent_id,
        service: "svc".into(),
        host: "h".into(),
        topic: "t".into(),
        method: "m".into(),
        args: "{}".into(),
        start_ms,
        duration_ms: 1.0,
        outcome: "ok".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracer_holds_at_most_its_cap_and_counts_what_it_drops() {
    let bus = TestBus::new().await;
    let entered = Arc::new(AtomicBool::new(false));
    let (release, released) = tokio::sync::watch::channel(false);
    let stuck = stuck_collector(entered.clone(), released);
    let collector =
        RpcServer::new(bus.transport(), Target::new(TRACE_TOPIC).with_server("c1"), stuck).start().await.unwrap();
    let tracer = Tracer::with_capacity(bus.transport(), "svc", "h1", 16);
    assert_eq!(tracer.max_held(), 16 + nova_rpc::layer::trace::BATCH);
    // The first batch goes out and sticks; the queue fills; the rest is dropped.
    tracer.record(span("t", "first".into(), None, 0.0));
    eventually("the first batch is being shipped", Duration::from_secs(10), || async {
        // Shipping takes the span off the queue (its sender gets the room back) but still holds it.
        entered.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    for i in 0..1000 {
        tracer.record(span("t", format!("{i}"), None, 0.0));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "recording never waits");
    assert!(tracer.held() <= tracer.max_held(), "held {} of {}", tracer.held(), tracer.max_held());
    assert_eq!(tracer.held(), 17, "one span in flight and a full queue");
    assert_eq!(tracer.dropped(), 1000 - 16);
    assert!(nova_rpc::metrics::render().contains("nova_trace_spans_dropped_total{stage=\"queue\"}"));
    release.send_replace(true);
    eventually("everything held is shipped", Duration::from_secs(10), || async {
        (tracer.held() == 0 && tracer.shipped() == 17).then_some(())
    })
    .await;
    collector.stop(Duration::from_secs(5)).await;
    bus.stop().await;
    // With no collector at all, batches are refused at once and counted.
    let nobody = TestBus::new().await;
    let tracer = Tracer::new(nobody.transport(), "svc", "h1");
    tracer.record(span("t", "lost".into(), None, 0.0));
    // Nobody answers: the batch is dropped once its call times out.
    eventually("a batch nobody takes is dropped", nova_rpc::layer::trace::SHIP_TIMEOUT * 3, || async {
        (tracer.dropped() == 1 && tracer.held() == 0).then_some(())
    })
    .await;
    nobody.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_caps_traces_spans_and_bad_input() {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::trace::MIGRATIONS).await.unwrap();
    let limits = Limits { max_traces: 3, max_spans_held: 10, max_spans_per_trace: 4, ..Limits::default() };
    let collector = Arc::new(TraceCollector::new(bus.database().clone(), limits));
    let client = bus.serve(TRACE_TOPIC, "c1", collector.clone()).await;
    let record = |spans: Vec<Span>| {
        let client = client.clone();
        async move {
            let r: Result<Recorded, _> =
                client.call_as(&RequestContext::new(), "record_spans", json!({"spans": spans})).await;
            r.unwrap_or_else(|e| panic!("record_spans: {e}"))
        }
    };
    // A trace takes four spans; the fifth and sixth are turned away.
    let one: Vec<Span> = (0..6).map(|i| span("full", format!("s{i}"), None, f64::from(i))).collect();
    assert_eq!(record(one).await, Recorded { kept: 4, dropped: 2 });
    // Malformed spans are refused one by one, the rest of their batch kept.
    let mut bad = span("bad", "x".repeat(33), None, 0.0);
    bad.args = "y".repeat(5000);
    let unnamed = span("ok", String::new(), None, 0.0);
    assert_eq!(record(vec![bad, unnamed, span("ok", "s2".into(), None, 1.0)]).await, Recorded { kept: 1, dropped: 2 });
    // Memory holds at most three traces and ten spans, oldest dropped first.
    for t in 0..10 {
        let spans = (0..3).map(|i| span(&format!("t{t}"), format!("s{i}"), None, f64::from(i))).collect();
        record(spans).await;
        let (traces, spans) = collector.held().await;
        assert!(traces <= 3 && spans <= 10, "held {traces} traces, {spans} spans");
    }
    // What left memory is still read from the database, capped.
    let spans: Vec<Span> =
        client.call_as(&RequestContext::new(), "get_trace", json!({"trace_id": "full"})).await.unwrap();
    assert_eq!(spans.len(), 4);
    let text = nova_rpc::metrics::render();
    assert!(text.contains("nova_trace_collector_spans_dropped_total{reason=\"trace_full\"}"), "{text}");
    assert!(text.contains("nova_trace_collector_spans_dropped_total{reason=\"malformed\"}"), "{text}");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_20000_spans_is_read_back_capped_in_depth() {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::trace::MIGRATIONS).await.unwrap();
    let limits = Limits { max_spans_per_trace: 20_000, max_spans_held: 20_000, ..Limits::default() };
    let collector = Arc::new(TraceCollector::new(bus.database().clone(), limits));
    let client = bus.serve(TRACE_TOPIC, "c1", collector.clone()).await;
    let chain: Vec<Span> = (0..20_000)
        .map(|i| span("deep", format!("{i:016x}"), (i > 0).then(|| format!("{:016x}", i - 1)), f64::from(i)))
        .collect();
    for batch in chain.chunks(2000) {
        client.call(&RequestContext::new(), "record_spans", json!({"spans": batch})).await.unwrap();
    }
    let started = std::time::Instant::now();
    let spans: Vec<Span> =
        client.call_as(&RequestContext::new(), "get_trace", json!({"trace_id": "deep"})).await.unwrap();
    assert_eq!(spans.len(), limits.max_depth, "the chain is cut at max_depth");
    assert!(started.elapsed() < Duration::from_secs(10), "a read is not quadratic");
    let depths: Vec<usize> = nova_rpc::layer::trace::walk(&chain).into_iter().map(|(d, _)| d).collect();
    assert_eq!(depths.len(), 20_000);
    assert_eq!(depths.last(), Some(&19_999), "walking a deep chain needs no recursion");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_of_50000_requests_stays_under_every_cap() {
    let limits = Limits { max_traces: 500, max_spans_held: 2000, max_db_bytes: Some(2 << 20), ..Limits::default() };
    let hops = two_hops(Sampler::always(), limits).await;
    let (requests, concurrency) = (50_000, 32);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let front = hops.front.clone();
        workers.spawn(async move {
            for i in (w..requests).step_by(concurrency) {
                front.call(&RequestContext::new(), "relay", json!({"i": i})).await.unwrap();
            }
        });
    }
    let mut peak = (0, 0, 0);
    while !workers.is_empty() {
        if let Ok(Some(done)) = tokio::time::timeout(Duration::from_millis(50), workers.join_next()).await {
            done.unwrap();
        }
        let (traces, spans) = hops.collector.held().await;
        let held = hops.tracers.iter().map(Tracer::held).max().unwrap_or(0);
        peak = (peak.0.max(traces), peak.1.max(spans), peak.2.max(held));
        assert!(
            traces <= limits.max_traces && spans <= limits.max_spans_held,
            "collector holds {traces} traces, {spans} spans"
        );
        for t in &hops.tracers {
            assert!(t.held() <= t.max_held(), "a tracer holds {} of {}", t.held(), t.max_held());
        }
    }
    hops.drained().await;
    let shipped: u64 = hops.tracers.iter().map(Tracer::shipped).sum();
    let dropped: u64 = hops.tracers.iter().map(Tracer::dropped).sum();
    assert_eq!(shipped + dropped, 2 * requests as u64, "every span is shipped or counted as dropped");
    hops.collector.expire().await.unwrap();
    let (bytes, _) = hops.collector.stored().await.unwrap();
    assert!(bytes <= 2 << 20, "the database is cut to max_db_mb: {bytes} bytes");
    println!(
        "peak: {} traces, {} spans in the collector; {} spans in a tracer; {shipped} shipped, {dropped} dropped",
        peak.0, peak.1, peak.2
    );
    hops.stop().await;
}
