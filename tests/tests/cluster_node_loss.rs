//! A three-node RabbitMQ cluster of this test binary's own (never the
//! shared node), losing nodes the way production does: servers consume
//! every queue again, calls keep their timeouts, confirmed casts are served
//! exactly once, stream fanout reaches every server, and a deleted queue is
//! consumed again. Tests take turns on the one cluster ([`turn`]), since
//! each stops a node the others would see.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nova_rpc::{
    server::RunningServer,
    transport::{self, Transport, TransportOptions},
    RequestContext, RpcClient, RpcServer, Target,
};
use nova_tests::{
    cluster::{counting_api, Cluster, Served},
    eventually, unique, Proc, TempDir,
};
use serde_json::json;

/// One test at a time on the shared cluster.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

fn options(url: &str, exchange: &str) -> TransportOptions {
    nova_tests::fast_reconnect(url, exchange, Duration::from_secs(5))
}

struct Host {
    transport: Arc<dyn Transport>,
    server: RunningServer,
    served: Served,
}

async fn host(options: TransportOptions, topic: &str, name: &str) -> Host {
    let transport = transport::connect(options).await.unwrap();
    let served = Served::default();
    let server =
        RpcServer::new(transport.clone(), Target::new(topic).with_server(name), counting_api(name, served.clone()))
            .start()
            .await
            .unwrap_or_else(|e| panic!("server {name} starts: {e}"));
    Host { transport, server, served }
}

impl Host {
    async fn stop(self) {
        self.server.stop(Duration::from_secs(5)).await;
        self.transport.close().await;
    }
}

/// Which servers answer `whoami` over `calls` calls to the topic.
async fn answering(client: &RpcClient, calls: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..calls {
        if let Ok(v) = client.call(&RequestContext::new(), "whoami", json!({})).await {
            *seen.entry(v.as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    seen
}

async fn consumers_reach(cluster: &Cluster, vhost: &str, queue: &str, goal: u64) {
    eventually(&format!("{queue} has {goal} consumers"), Duration::from_secs(60), || async {
        (cluster.consumers(vhost).get(queue).copied() == Some(goal)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_durable_queue_node_restart_consumed_again() {
    let _turn = turn().await;
    let cluster = Cluster::shared();
    let vhost = cluster.vhost();
    let exchange = unique("nova");
    let topic = unique("compute");
    // Each host first connects to a different node; the first declares the
    // classic queue `topic`, so it lives on node 0.
    let mut o1 = options(&cluster.url_from(&vhost, 0), &exchange);
    o1.rabbit.amqp_durable_queues = true;
    let mut o2 = options(&cluster.url_from(&vhost, 1), &exchange);
    o2.rabbit.amqp_durable_queues = true;
    let h1 = host(o1.clone(), &topic, "h1").await;
    let h2 = host(o2, &topic, "h2").await;
    let home = cluster.node_of(&vhost, &topic);
    consumers_reach(cluster, &vhost, &topic, 2).await;

    home.stop_app();
    // Both servers know they cannot consume the topic queue now.
    eventually("both servers see the topic queue unconsumed", Duration::from_secs(30), || async {
        let deaf = |h: &Host| h.server.health().longest_deaf().is_some_and(|(q, _, _)| q == topic);
        (deaf(&h1) && deaf(&h2)).then_some(())
    })
    .await;
    home.start_app();
    let back = Instant::now();

    consumers_reach(cluster, &vhost, &topic, 2).await;
    for h in [&h1, &h2] {
        eventually("the server consumes every queue again", Duration::from_secs(30), || async {
            h.server.health().longest_deaf().is_none().then_some(())
        })
        .await;
    }
    println!("classic queue: consumed by both servers {:.1} s after its node returned", back.elapsed().as_secs_f64());
    let client_t = transport::connect(o1).await.unwrap();
    let client = RpcClient::new(client_t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(5));
    let seen = answering(&client, 20).await;
    assert_eq!(seen.len(), 2, "calls round-robin across both hosts again: {seen:?}");
    client_t.close().await;
    h1.stop().await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_lose_a_node_under_load() {
    let _turn = turn().await;
    let cluster = Cluster::shared();
    let vhost = cluster.vhost();
    let exchange = unique("nova");
    let topic = unique("compute");
    let quorum = |first| {
        let mut o = options(&cluster.url_from(&vhost, first), &exchange);
        o.rabbit.rabbit_quorum_queue = true;
        o
    };
    let h1 = host(quorum(0), &topic, "h1").await;
    let h2 = host(quorum(1), &topic, "h2").await;
    consumers_reach(cluster, &vhost, &topic, 2).await;
    let leader = cluster.node_of(&vhost, &topic);
    let client_t = transport::connect(quorum(2)).await.unwrap();
    let timeout = Duration::from_secs(5);
    let client = RpcClient::new(client_t.clone(), Target::new(&topic)).with_timeout(timeout);
    client.call(&RequestContext::new(), "whoami", json!({})).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let casts = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut confirmed, mut refused, mut value) = (Vec::new(), 0, 0u64);
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                match client.cast(&RequestContext::new(), "record", json!({"value": value})).await {
                    Ok(()) => confirmed.push(value),
                    Err(_) => refused += 1,
                }
            }
            (confirmed, refused)
        })
    };
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (client, stop) = (client.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let (mut late, mut successes) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = client.call(&RequestContext::new(), "whoami", json!({})).await;
                // A call ends in a result, a timeout or an error, within its timeout.
                if started.elapsed() > timeout + Duration::from_secs(2) {
                    late.push((started.elapsed(), format!("{r:?}")));
                }
                match r {
                    Ok(_) => successes.push(Instant::now()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            (late, successes)
        }))
    }
    let served_count = || h1.served.lock().unwrap().len() + h2.served.lock().unwrap().len();
    eventually("the load is being served", Duration::from_secs(30), || async { (served_count() > 20).then_some(()) })
        .await;
    let stopped_at = Instant::now();
    leader.stop_app();
    // Serving goes on without the node.
    let before_stop = served_count();
    eventually("casts are served without the lost node", Duration::from_secs(60), || async {
        (served_count() > before_stop + 50).then_some(())
    })
    .await;
    leader.start_app();
    stop.store(true, Ordering::Relaxed);
    let (confirmed, refused) = casts.await.unwrap();
    let mut late = Vec::new();
    let mut gap = Duration::ZERO;
    for c in callers {
        let (l, successes) = c.await.unwrap();
        late.extend(l);
        let after: Vec<_> = successes.into_iter().filter(|t| *t >= stopped_at).collect();
        let resumed = after.first().map_or(Duration::MAX, |t| t.duration_since(stopped_at));
        gap = gap.max(resumed);
        gap = gap.max(after.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default());
    }
    assert!(late.is_empty(), "calls past their timeout: {late:?}");
    assert!(gap < Duration::from_secs(30), "calls resumed {gap:?} after the node stopped");

    let served = || {
        let mut all: HashMap<u64, usize> = HashMap::new();
        for h in [&h1, &h2] {
            for (v, n) in h.served.lock().unwrap().iter() {
                *all.entry(*v).or_default() += n;
            }
        }
        all
    };
    eventually("every confirmed cast is served", Duration::from_secs(60), || async {
        let all = served();
        confirmed.iter().all(|v| all.contains_key(v)).then_some(())
    })
    .await;
    // At-most-once acknowledges on receipt. An ack still on its way when
    // the node dies is lost with it, and the broker hands that message to
    // the other server, which cannot know that it ran (as with oslo). So
    // each server serves a cast at most once, and only the few messages
    // in flight on the lost connection (at most its prefetch) may repeat.
    let twice: Vec<_> = served().into_iter().filter(|(_, n)| *n > 1).collect();
    let each_once = |h: &Host| h.served.lock().unwrap().values().all(|n| *n == 1);
    assert!(each_once(&h1) && each_once(&h2), "no server serves a cast twice");
    assert!(twice.len() <= 64, "only casts in flight on the lost connection repeat: {twice:?}");
    println!(
        "quorum node loss: {} casts confirmed, all served, {} served by both servers, {refused} refused, 0 calls late, longest wait for a call {:.2} s",
        confirmed.len(),
        twice.len(),
        gap.as_secs_f64()
    );
    client_t.close().await;
    h1.stop().await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_fanout_reaches_every_server_across_a_node_stop() {
    let _turn = turn().await;
    let cluster = Cluster::shared();
    let vhost = cluster.vhost();
    let exchange = unique("nova");
    let topic = unique("compute");
    let modern = |first| {
        let mut o = options(&cluster.url_from(&vhost, first), &exchange);
        o.rabbit.rabbit_quorum_queue = true;
        o.rabbit.rabbit_transient_quorum_queue = true;
        o.rabbit.rabbit_stream_fanout = true;
        o.rabbit.rabbit_qos_prefetch_count = 10;
        o
    };
    let h1 = host(modern(0), &topic, "h1").await;
    let h2 = host(modern(1), &topic, "h2").await;
    let stream = format!("{topic}_fanout");
    consumers_reach(cluster, &vhost, &stream, 2).await;
    let client_t = transport::connect(modern(2)).await.unwrap();
    let fanout = RpcClient::new(client_t.clone(), Target::new(&topic)).with_fanout(true);
    let mut sent = HashSet::new();
    let cast = |value: u64| {
        let fanout = fanout.clone();
        async move { fanout.cast(&RequestContext::new(), "record", json!({"value": value})).await.map(|()| value) }
    };
    for v in 0..10 {
        sent.insert(cast(v).await.unwrap());
    }
    let leader = cluster.node_of(&vhost, &stream);
    leader.stop_app();
    for v in 10..30 {
        if let Ok(v) = cast(v).await {
            sent.insert(v);
        }
    }
    leader.start_app();
    for v in 30..40 {
        sent.insert(cast(v).await.unwrap());
    }
    for (name, h) in [("h1", &h1), ("h2", &h2)] {
        eventually(&format!("{name} has every confirmed fanout cast"), Duration::from_secs(60), || async {
            let got: HashSet<u64> = h.served.lock().unwrap().keys().copied().collect();
            sent.is_subset(&got).then_some(())
        })
        .await;
    }
    println!("stream fanout: {} confirmed fanout casts reached both servers across a node stop", sent.len());
    client_t.close().await;
    h1.stop().await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_consumed_again() {
    nova_tests::log_capture();
    let _turn = turn().await;
    let cluster = Cluster::shared();
    let vhost = cluster.vhost();
    let exchange = unique("nova");
    let topic = unique("compute");
    let o = options(&cluster.url_from(&vhost, 0), &exchange);
    let h1 = host(o.clone(), &topic, "h1").await;
    let own = format!("{topic}.h1");
    consumers_reach(cluster, &vhost, &own, 1).await;
    let cancels = nova_rpc::transport::amqp::metrics::metrics().consumer_cancels.get();

    cluster.nodes[0].ctl(&["delete_queue", "-p", &vhost, &own]).expect("delete_queue");
    let deleted = Instant::now();
    consumers_reach(cluster, &vhost, &own, 1).await;
    println!("deleted queue consumed again after {:.2} s", deleted.elapsed().as_secs_f64());
    assert!(nova_rpc::transport::amqp::metrics::metrics().consumer_cancels.get() > cancels, "the cancel is counted");
    assert!(nova_tests::logged().contains("the broker cancelled a consumer"), "the cancel is logged");
    let client_t = transport::connect(o).await.unwrap();
    let client = RpcClient::new(client_t.clone(), Target::new(&topic).with_server("h1"));
    assert_eq!(client.call(&RequestContext::new(), "whoami", json!({})).await.unwrap(), json!("h1"));
    client_t.close().await;
    h1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deaf_service_stops_reporting_itself_up_and_says_why() {
    let _turn = turn().await;
    let cluster = Cluster::shared();
    let vhost = cluster.vhost();
    let dir = TempDir::new("deaf");
    let exchange = unique("nova");
    let url = cluster.url_from(&vhost, 0);
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {url}\ncontrol_exchange = {exchange}\nreport_interval = 0.5\n\
             service_down_time = 3\nstate_path = {}\n[oslo_messaging_rabbit]\namqp_durable_queues = true\n\
             rabbit_retry_interval = 0.5\nrabbit_retry_backoff = 0\nrabbit_interval_max = 1\n",
            dir.path().display()
        ),
    );
    let compute = Proc::spawn("nova-compute", &["--config-file", conf.to_str().unwrap(), "--host", "d1"], dir.path());
    consumers_reach(cluster, &vhost, "compute", 1).await;
    let home = cluster.node_of(&vhost, "compute");
    home.stop_app();
    eventually("the compute stops reporting itself up", Duration::from_secs(60), || async {
        compute.output().contains("no longer reporting this service up").then_some(())
    })
    .await;
    let line = compute.output().lines().find(|l| l.contains("no longer reporting")).unwrap_or_default().to_owned();
    assert!(line.contains("queue=") && line.contains("reason="), "it says which queue and why: {line}");
    home.start_app();
    eventually("the compute reports itself up again", Duration::from_secs(60), || async {
        compute.output().contains("consuming every queue again; reporting this service up").then_some(())
    })
    .await;
    consumers_reach(cluster, &vhost, "compute", 1).await;
}
