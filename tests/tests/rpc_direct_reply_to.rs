//! `rabbit_direct_reply_to`: calls between nova-rs services that take
//! their replies from RabbitMQ's `amq.rabbitmq.reply-to` pseudo-queue, on
//! the shared broker in a private vhost per test.
//!
//! The first test pins down, live, the broker behaviour the design rests
//! on: the broker rewrites only the `reply-to` property, and it returns
//! every `mandatory` publish to a direct reply-to address even as it
//! delivers it (so servers send those replies without `mandatory`).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties, Confirmation, Connection, ConnectionProperties,
};
use nova_core::testing::eventually;
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions, DIRECT_REPLY_TO},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{Bus, Kind, TestVhost};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

fn lapin_url(vhost: &str) -> String {
    let addr = std::env::var("NOVA_TEST_RABBIT").unwrap_or_else(|_| "127.0.0.1:5672".into());
    format!("amqp://guest:guest@{addr}/{vhost}")
}

async fn next_reply(replies: &mut lapin::Consumer) -> lapin::message::Delivery {
    let next = tokio::time::timeout(Duration::from_secs(10), replies.next()).await;
    next.expect("a reply within 10 s").expect("the consumer is open").expect("a delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_rewrites_reply_to_and_returns_mandatory_direct_replies() {
    let vhost = TestVhost::new();
    let url = lapin_url(&vhost.name);
    let connect = || Connection::connect(&url, ConnectionProperties::default());
    let (caller, server) = (connect().await.expect("caller"), connect().await.expect("server"));

    // The caller consumes the pseudo-queue and publishes its request on
    // the same channel, as RabbitMQ requires.
    let calls = caller.create_channel().await.unwrap();
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut replies =
        calls.basic_consume(DIRECT_REPLY_TO.into(), "".into(), no_ack, FieldTable::default()).await.unwrap();
    calls.queue_declare("requests".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let request = br#"{"_reply_q": "amq.rabbitmq.reply-to"}"#;
    let props = BasicProperties::default().with_reply_to(DIRECT_REPLY_TO.into());
    calls
        .basic_publish("".into(), "requests".into(), BasicPublishOptions::default(), request, props)
        .await
        .unwrap()
        .await
        .unwrap();

    let answers = server.create_channel().await.unwrap();
    answers.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let got = eventually("the request is in its queue", Duration::from_secs(10), || {
        let answers = answers.clone();
        async move { answers.basic_get("requests".into(), BasicGetOptions { no_ack: true }).await.ok().flatten() }
    })
    .await;
    let address = got.properties.reply_to().as_ref().expect("a reply-to property").to_string();
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "the broker rewrote the property: {address}");
    assert_eq!(&got.data[..], request, "the body is untouched: _reply_q still names the pseudo-queue");

    let publish = |mandatory: bool, body: &'static [u8]| {
        let (answers, address) = (answers.clone(), address.clone());
        async move {
            let options = BasicPublishOptions { mandatory, ..Default::default() };
            let confirm = answers
                .basic_publish("".into(), address.as_str().into(), options, body, BasicProperties::default())
                .await
                .unwrap();
            confirm.await.unwrap()
        }
    };
    // With mandatory, the broker delivers the reply and also hands it back
    // as unroutable (the pseudo-queue is not a queue): a publisher that
    // took the return as a failure would send it again and again.
    match publish(true, b"mandatory").await {
        Confirmation::Ack(Some(returned)) => assert_eq!(&returned.data[..], b"mandatory"),
        other => panic!("expected the mandatory reply to be returned, got {other:?}"),
    }
    assert_eq!(&next_reply(&mut replies).await.data[..], b"mandatory", "returned, and delivered all the same");
    // Without it, the reply is delivered and simply confirmed.
    assert!(matches!(publish(false, b"plain").await, Confirmation::Ack(None)));
    assert_eq!(&next_reply(&mut replies).await.data[..], b"plain");

    // And once the caller's channel is gone, a reply to it is dropped
    // (acknowledged, not returned, nowhere stored).
    calls.close(200, "gone".into()).await.unwrap();
    assert!(matches!(publish(false, b"late").await, Confirmation::Ack(None)));
    let _ = caller.close(200, "done".into()).await;
    let _ = server.close(200, "done".into()).await;
}

/// `echo` returns its arguments; `fail` fails; `hold` waits for a permit
/// from the test (counting who holds one); `slow` takes 300 ms (call-monitor
/// heartbeats are sent meanwhile).
fn api(gate: Arc<Semaphore>, holding: Arc<AtomicUsize>) -> Dispatcher {
    let router = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, args: Map<String, Value>| async move {
            Ok::<_, RpcError>(Value::Object(args))
        })
        .method("fail", |_ctx: RequestContext, _args: Map<String, Value>| async move {
            Err::<Value, _>(RpcError::remote("Refused", "tests", "no"))
        })
        .method("hold", move |_ctx: RequestContext, _args: Map<String, Value>| {
            let (gate, holding) = (gate.clone(), holding.clone());
            async move {
                holding.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.map_err(|e| RpcError::remote("Closed", "tests", e.to_string()))?;
                Ok::<_, RpcError>("released")
            }
        })
        .method("slow", |_ctx: RequestContext, _args: Map<String, Value>| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, RpcError>("slow")
        });
    Dispatcher::new(vec![Arc::new(router)])
}

fn direct(bus: &Bus) -> TransportOptions {
    let mut o = bus.options();
    o.rabbit.rabbit_direct_reply_to = true;
    o
}

/// The names of the queues in `vhost`.
fn queues(vhost: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", vhost, "name", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_nova_rs_services_need_no_reply_queue() {
    let bus = Bus::new(Kind::Rabbit);
    let server_side = bus.transport().await;
    let target = Target::new("direct").with_server("h1");
    let server = RpcServer::new(server_side.clone(), target.clone(), api(Arc::new(Semaphore::new(0)), Arc::default()))
        .start()
        .await
        .unwrap();
    let client_side = transport::connect(direct(&bus)).await.unwrap();
    let client = RpcClient::new(client_side.clone(), target.with_version("1.0"));
    let ctx = RequestContext::new();

    assert_eq!(client.call(&ctx, "echo", json!({"n": 1})).await.unwrap(), json!({"n": 1}));
    let e = client.call(&ctx, "fail", json!({})).await.unwrap_err();
    assert!(matches!(&e, RpcError::Remote(f) if f.class == "Refused"), "{e}");
    // Heartbeats reach a monitored call through the same address.
    let monitored = client.with_call_monitor_timeout(Duration::from_millis(100));
    assert_eq!(monitored.call(&ctx, "slow", json!({})).await.unwrap(), json!("slow"));
    // Many at once, each to its own caller.
    let many = (0..64).map(|n| {
        let client = client.clone();
        async move { client.call(&RequestContext::new(), "echo", json!({"n": n})).await }
    });
    for (n, r) in futures_util::future::join_all(many).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({"n": n}));
    }

    let vhost = bus.vhost().expect("a RabbitMQ bus");
    let reply_queues: Vec<_> = queues(vhost).into_iter().filter(|q| q.starts_with("reply_")).collect();
    assert!(reply_queues.is_empty(), "no reply queue was declared: {reply_queues:?}");
    server.stop(Duration::from_secs(5)).await;
    client_side.close().await;
    server_side.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_fast_when_the_reply_channel_is_lost() {
    let bus = Bus::new(Kind::Rabbit);
    let vhost = bus.vhost().expect("a RabbitMQ bus").to_owned();
    let server_side = bus.transport().await;
    let (gate, holding) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
    let target = Target::new("direct").with_server("h1");
    let server =
        RpcServer::new(server_side.clone(), target.clone(), api(gate.clone(), holding.clone())).start().await.unwrap();
    let mut options = direct(&bus);
    options.rpc_response_timeout = Duration::from_secs(120);
    options.rabbit.rabbit_retry_interval = Duration::from_millis(100);
    let client_side = transport::connect(options).await.unwrap();
    let client = RpcClient::new(client_side.clone(), target.with_version("1.0"));
    assert_eq!(client.call(&RequestContext::new(), "echo", json!({})).await.unwrap(), json!({}));

    let held = tokio::spawn({
        let client = client.clone();
        async move { client.call(&RequestContext::new(), "hold", json!({})).await }
    });
    eventually("the server holds the call", Duration::from_secs(10), || {
        let n = holding.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    // Close every connection of the vhost: the client's call channel with them.
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "vhost", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl");
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(pid), Some(v)) = (parts.next(), parts.next()) {
            if v == vhost {
                let _ =
                    std::process::Command::new("rabbitmqctl").args(["-q", "close_connection", pid, "test"]).status();
            }
        }
    }
    let failed = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the call failed well before its 120 s timeout")
        .unwrap();
    let e = failed.unwrap_err();
    assert!(e.to_string().contains("direct replies was lost"), "{e}");
    gate.add_permits(1);

    // The client reconnects on its next call, and calls work again.
    let again = eventually("calls work again", Duration::from_secs(60), || {
        let client = client.with_timeout(Duration::from_secs(5));
        async move { client.call(&RequestContext::new(), "echo", json!({"again": true})).await.ok() }
    })
    .await;
    assert_eq!(again, json!({"again": true}));
    server.stop(Duration::from_secs(5)).await;
    client_side.close().await;
    server_side.close().await;
}
