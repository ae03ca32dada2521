//! A fanout to every service of a fleet of fifty, each service with a
//! transport (connections) of its own as separate processes have: with a
//! classic fanout queue per service (oslo's default), and with one stream
//! that every service reads at its own offset (`rabbit_stream_fanout`).
//! Every service gets every fanout, once. Counts, not times: the times are
//! `nova-bench fleet`'s.

use std::{sync::Arc, time::Duration};

use nova_rpc::{
    server::RunningServer,
    transport::{self, Transport, TransportOptions},
    RequestContext, RpcClient, RpcServer, Target,
};
use nova_tests::{
    cluster::{counting_api, Served},
    eventually, unique, TestVhost,
};
use serde_json::json;

const FLEET: usize = 50;
const FANOUTS: u64 = 10;

struct Service {
    transport: Arc<dyn Transport>,
    server: RunningServer,
    served: Served,
}

async fn fanout_reaches_the_whole_fleet(stream: bool) {
    let vhost = TestVhost::new();
    let exchange = unique("nova");
    let options = || {
        let mut o = TransportOptions::new(vhost.url()).with_control_exchange(&exchange);
        if stream {
            // As oslo requires: a prefetch, and quorum transient queues.
            o.rabbit.rabbit_stream_fanout = true;
            o.rabbit.rabbit_qos_prefetch_count = 10;
            o.rabbit.rabbit_transient_quorum_queue = true;
        }
        o
    };
    let mut fleet = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        let transport = transport::connect(options()).await.unwrap();
        let served = Served::default();
        let name = format!("fleet-{i}");
        let server = RpcServer::new(
            transport.clone(),
            Target::new("compute").with_server(&name),
            counting_api(&name, served.clone()),
        )
        .start()
        .await
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        fleet.push(Service { transport, server, served });
    }
    let client_t = transport::connect(options()).await.unwrap();
    let fanout = RpcClient::new(client_t.clone(), Target::new("compute")).with_fanout(true);
    for value in 0..FANOUTS {
        fanout.cast(&RequestContext::new(), "record", json!({"value": value})).await.unwrap();
    }
    let reached = || fleet.iter().filter(|s| s.served.lock().unwrap().len() as u64 == FANOUTS).count();
    eventually(&format!("every fanout reaches all {FLEET} services"), Duration::from_secs(60), || async {
        (reached() == FLEET).then_some(())
    })
    .await;
    for (i, s) in fleet.iter().enumerate() {
        let served = s.served.lock().unwrap();
        assert!(served.values().all(|n| *n == 1), "fleet-{i} got a fanout more than once: {served:?}");
    }
    client_t.close().await;
    for s in fleet {
        s.server.stop(Duration::from_secs(5)).await;
        s.transport.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_reaches_every_service_of_fifty_with_classic_queues() {
    fanout_reaches_the_whole_fleet(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_reaches_every_service_of_fifty_over_one_stream() {
    fanout_reaches_the_whole_fleet(true).await;
}
