//! A network partition in a three-node RabbitMQ cluster of this test's own
//! (`pause_minority`, each node on a test host of its own): the network
//! between one node and the other two fails while every node runs and
//! clients still reach all three.
//!
//! Under a steady load of calls and at-least-once casts from clients that
//! start on every node, with the topic queue led from the node that is cut
//! off:
//! - every call ends in a result, a timeout or an error within its timeout;
//! - clients and servers on the minority node move to the majority, and
//!   the minority's clients are served again;
//! - after healing, every server consumes all its queues again;
//! - with quorum queues, every cast confirmed to its sender is served, and
//!   no server serves one twice.
//!
//! Classic durable queues are measured the same way, and what they lose is
//! reported (a classic queue lives on one node: while that node is paused
//! the queue is gone from the cluster). Each test prints one row of the
//! table in docs/rabbitmq.md.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
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
    eventually, unique,
};
use serde_json::json;

/// The node cut off (it leads the topic queue).
const MINORITY: usize = 2;
/// Each call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// AMQP heartbeats: a connection to a silent node is dropped after this.
const HEARTBEAT: u16 = 4;

/// One partition at a time: each test runs a cluster of three nodes.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

#[derive(Clone, Copy, Debug)]
enum Queues {
    Quorum,
    ClassicDurable,
}

fn options(cluster: &Cluster, vhost: &str, exchange: &str, first: usize, queues: Queues) -> TransportOptions {
    let mut o = nova_tests::fast_reconnect(&cluster.url_from(vhost, first), exchange, CALL_TIMEOUT);
    o.rabbit.heartbeat_timeout_threshold = HEARTBEAT;
    match queues {
        Queues::Quorum => o.rabbit.rabbit_quorum_queue = true,
        Queues::ClassicDurable => o.rabbit.amqp_durable_queues = true,
    }
    o
}

struct Server {
    transport: Arc<dyn Transport>,
    running: RunningServer,
    served: Served,
}

async fn server(options: TransportOptions, topic: &str, name: &str) -> Server {
    let transport = transport::connect(options).await.unwrap();
    let served = Served::default();
    let running =
        RpcServer::new(transport.clone(), Target::new(topic).with_server(name), counting_api(name, served.clone()))
            .with_at_least_once(5)
            .start()
            .await
            .unwrap_or_else(|e| panic!("server {name} starts: {e}"));
    Server { transport, running, served }
}

/// What one client saw: the casts the broker confirmed, when calls were
/// answered (shared, so a test can wait on it), and the calls that ended
/// past their timeout.
#[derive(Default)]
struct Seen {
    confirmed: Vec<u64>,
    answered: Arc<Mutex<Vec<Instant>>>,
    late: Vec<(Duration, String)>,
}

/// A client's load until `stop`: casts with values `base + n` from one
/// task; from another, calls to the topic and to the server `s0` by
/// turns (`s0`'s own queue lives on a majority node, so a client that
/// reached the majority is answered even when the topic queue is gone
/// with the minority).
fn load(
    client: RpcClient,
    base: u64,
    answered: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    let casts = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut confirmed, mut n) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if client.cast(&RequestContext::new(), "record", json!({"value": base + n})).await.is_ok() {
                    confirmed.push(base + n);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            confirmed
        })
    };
    let direct = client.with_server("s0");
    tokio::spawn(async move {
        let mut seen = Seen { answered, ..Seen::default() };
        let mut turn = 0u64;
        while !stop.load(Ordering::Relaxed) {
            turn += 1;
            let to = if turn.is_multiple_of(2) { &client } else { &direct };
            let started = Instant::now();
            let r = to.call(&RequestContext::new(), "whoami", json!({})).await;
            if started.elapsed() > CALL_TIMEOUT + Duration::from_secs(2) {
                seen.late.push((started.elapsed(), format!("{r:?}")));
            }
            match r {
                Ok(_) => seen.answered.lock().unwrap().push(Instant::now()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        seen.confirmed = casts.await.unwrap();
        seen
    })
}

/// The longest time without an answered call from `from` until `to`.
fn longest_gap(answered: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in answered.iter().copied().filter(|t| *t > from && *t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to.saturating_duration_since(last))
}

/// One row of the table: see the module docs.
struct Row {
    queues: Queues,
    confirmed: usize,
    lost: usize,
    served_by_two: usize,
    served_twice_by_one: usize,
    late: usize,
    minority_back: Duration,
    recovered: Duration,
}

async fn partition_under_load(queues: Queues) -> Row {
    let cluster = Cluster::partitionable();
    let vhost = cluster.vhost();
    let exchange = unique("nova");
    let topic = unique("compute");
    // The server on the node to be cut off starts first: the topic queue
    // is declared there, so that node leads (quorum) or holds (classic) it.
    let mut servers = Vec::new();
    for i in [MINORITY, 0, 1] {
        servers.push(server(options(&cluster, &vhost, &exchange, i, queues), &topic, &format!("s{i}")).await);
    }
    let holder = cluster.node_of(&vhost, &topic);
    assert_eq!(holder.node, cluster.nodes[MINORITY].node, "the topic queue is on the node to be cut off");
    let stop = Arc::new(AtomicBool::new(false));
    let mut transports = Vec::new();
    let mut loads = Vec::new();
    let minority_answered = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let t = transport::connect(options(&cluster, &vhost, &exchange, i, queues)).await.unwrap();
        let client = RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(CALL_TIMEOUT);
        client.call(&RequestContext::new(), "whoami", json!({})).await.expect("a first call answers");
        let answered = if i == MINORITY { minority_answered.clone() } else { Arc::default() };
        loads.push(load(client, (i as u64 + 1) * 1_000_000_000, answered, stop.clone()));
        transports.push(t);
    }
    let served_count = || servers.iter().map(|s| s.served.lock().unwrap().len()).sum::<usize>();
    eventually("the load is served", Duration::from_secs(30), || async { (served_count() > 50).then_some(()) }).await;

    let cut = Instant::now();
    cluster.partition(MINORITY);
    let majority = |i: usize| {
        let running = cluster.running(i);
        running.len() == 2 && !running.contains(&cluster.nodes[MINORITY].node)
    };
    eventually("the majority sees the minority node gone", Duration::from_secs(60), || async {
        majority(0).then_some(())
    })
    .await;
    let noticed = Instant::now();
    println!("{queues:?}: the majority saw the partition after {:.1} s", (noticed - cut).as_secs_f64());
    // The minority's clients reach the majority and are answered again.
    eventually("the minority's client is answered through the majority", Duration::from_secs(120), || async {
        let answered = minority_answered.lock().unwrap();
        (answered.iter().filter(|t| **t > noticed).count() > 10).then_some(())
    })
    .await;
    // With quorum queues, casts are served through the majority too, the
    // minority's server (which moved) among the servers.
    if matches!(queues, Queues::Quorum) {
        let minority_server = || servers[0].served.lock().unwrap().len();
        let (before, before_minority) = (served_count(), minority_server());
        eventually("casts are served during the partition", Duration::from_secs(60), || async {
            (served_count() > before + 100 && minority_server() > before_minority).then_some(())
        })
        .await;
    }
    let healed = Instant::now();
    cluster.heal(MINORITY);
    eventually("the cluster reports the partition healed", Duration::from_secs(120), || async {
        (0..3).all(|i| cluster.running(i).len() == 3).then_some(())
    })
    .await;
    eventually("every server consumes all its queues again", Duration::from_secs(120), || async {
        let consumers = cluster.consumers(&vhost);
        let all_consumed = servers.iter().all(|s| s.running.health().longest_deaf().is_none());
        (all_consumed && consumers.get(&topic).copied() == Some(3)).then_some(())
    })
    .await;
    let recovered = healed.elapsed();
    // Some more load once whole again, then stop.
    let before = served_count();
    eventually("casts are served after healing", Duration::from_secs(60), || async {
        (served_count() > before + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for l in loads {
        seen.push(l.await.unwrap());
    }
    let minority_back = longest_gap(&seen[MINORITY].answered.lock().unwrap(), cut, healed);
    let late: Vec<_> = seen.iter().flat_map(|s| s.late.iter()).collect();
    let confirmed: Vec<u64> = seen.iter().flat_map(|s| s.confirmed.iter().copied()).collect();
    let served_all = || {
        let mut all: HashMap<u64, usize> = HashMap::new();
        for s in &servers {
            for (v, n) in s.served.lock().unwrap().iter() {
                *all.entry(*v).or_default() += n;
            }
        }
        all
    };
    // Everything confirmed and still held by a queue is served; what is
    // left unserved after this wait is lost.
    let missing = || {
        let all = served_all();
        confirmed.iter().filter(|v| !all.contains_key(v)).count()
    };
    let settled = Instant::now();
    while missing() > 0 && settled.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served_twice_by_one =
        servers.iter().map(|s| s.served.lock().unwrap().values().filter(|n| **n > 1).count()).sum::<usize>();
    let row = Row {
        queues,
        confirmed: confirmed.len(),
        lost: missing(),
        served_by_two: served_all().values().filter(|n| **n > 1).count(),
        served_twice_by_one,
        late: late.len(),
        minority_back,
        recovered,
    };
    println!(
        "| partition (pause_minority) | {:?} | {} | {} | {} | {:.1} | {:.1} | {} |",
        row.queues,
        row.confirmed,
        row.lost,
        row.late,
        row.minority_back.as_secs_f64(),
        row.recovered.as_secs_f64(),
        row.served_by_two,
    );
    assert!(late.is_empty(), "calls past their timeout: {late:?}");
    for t in transports {
        t.close().await;
    }
    for s in servers {
        s.running.stop(Duration::from_secs(5)).await;
        s.transport.close().await;
    }
    row
}

/// What the minority's clients may wait: the partition is noticed
/// (`net_ticktime` of 4 s: under 8 s), the node pauses and closes their
/// connections, or heartbeats give up on them, then they reconnect and
/// their calls time out meanwhile. Generous for a slow machine.
fn minority_bound() -> Duration {
    Duration::from_secs(8) + Duration::from_secs(u64::from(HEARTBEAT) * 2) + CALL_TIMEOUT * 2 + Duration::from_secs(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_lose_nothing_to_a_partition() {
    nova_tests::log_capture();
    let _turn = turn().await;
    let row = partition_under_load(Queues::Quorum).await;
    assert_eq!(row.lost, 0, "{} of {} confirmed casts were never served", row.lost, row.confirmed);
    assert_eq!(row.served_twice_by_one, 0, "no server serves a cast twice");
    assert!(row.minority_back < minority_bound(), "the minority's clients waited {:?}", row.minority_back);
    assert!(nova_tests::logged().contains("connected to AMQP server"), "the reconnection says which node it went to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_through_a_partition() {
    nova_tests::log_capture();
    let _turn = turn().await;
    let row = partition_under_load(Queues::ClassicDurable).await;
    // A classic queue lives on its node: while that node is paused, casts
    // to it have no queue (what they lose is reported, not asserted), but
    // calls still end in time, the minority's clients move, and every
    // server consumes again after healing.
    assert_eq!(row.served_twice_by_one, 0, "no server serves a cast twice");
    assert!(
        row.minority_back < minority_bound() + CALL_TIMEOUT,
        "the minority's clients waited {:?}",
        row.minority_back
    );
}
