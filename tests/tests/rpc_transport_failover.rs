//! Several brokers in one URL are tried in order: with the first one dead,
//! servers and clients connect to the next and work as usual.

use std::{sync::Arc, time::Duration};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{free_port, unique, TestVhost};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_host_fails_over_to_the_next() {
    let vhost = TestVhost::new();
    let dead = free_port();
    let url = format!("rabbit://guest:guest@127.0.0.1:{dead},guest:guest@127.0.0.1:5672/{}", vhost.name);
    let mut options = TransportOptions::new(url).with_control_exchange(unique("nova"));
    options.rabbit.rabbit_retry_interval = Duration::from_millis(100);
    options.rabbit.failover_shuffle = false;
    let t = transport::connect(options).await.unwrap();
    let api = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) });
    let server =
        RpcServer::new(t.clone(), Target::new("failover").with_server("s1"), Dispatcher::new(vec![Arc::new(api)]))
            .start()
            .await
            .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("failover")).with_timeout(Duration::from_secs(10));
    assert_eq!(client.call(&RequestContext::new(), "echo", json!({"ok": true})).await.unwrap(), json!({"ok": true}));
    server.stop(Duration::from_secs(5)).await;
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_scheme_is_rabbit_too_and_bad_urls_name_the_problem() {
    let vhost = TestVhost::new();
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.name);
    let t = transport::connect(TransportOptions::new(url).with_control_exchange(unique("nova"))).await.unwrap();
    let api = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) });
    let server = RpcServer::new(t.clone(), Target::new("amqp").with_server("s1"), Dispatcher::new(vec![Arc::new(api)]))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("amqp")).with_timeout(Duration::from_secs(10));
    assert_eq!(client.call(&RequestContext::new(), "echo", json!({"n": 1})).await.unwrap(), json!({"n": 1}));
    server.stop(Duration::from_secs(5)).await;
    for (bad, says) in [("kafka://h:9092/", "kafka"), ("rabbit://h:notaport/", "notaport"), ("no-scheme", "no-scheme")]
    {
        let e = transport::connect(TransportOptions::new(bad)).await.unwrap_err();
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}
