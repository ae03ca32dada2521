//! Bad input on both transports: each kind of garbage is settled with one
//! log line and the server keeps serving; callers whose reply address can
//! be read get a clear error (malformed envelope, message over
//! `max_message_size`, mistyped argument); a reply whose reply queue is
//! gone is retried briefly, then dropped with one log line.

use std::{sync::Arc, time::Duration};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{Destination, Outgoing, Transport},
    wire, RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{eventually, logged, transport_suite, unique, Bus, Kind};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

fn api() -> Dispatcher {
    let r = Router::new(Version::new(1, 0))
        .method("add", |_ctx: RequestContext, x: AddArgs| async move { Ok::<_, RpcError>(x.a + x.b) })
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) });
    Dispatcher::new(vec![Arc::new(r)])
}

/// Lines logged about `topic` that contain `what`.
fn lines_about(topic: &str, what: &str) -> usize {
    logged().lines().filter(|l| l.contains(what) && l.contains(&format!("topic={topic}"))).count()
}

fn envelope(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": message})).unwrap()
}

async fn send(t: &Arc<dyn Transport>, exchange: &str, topic: &str, body: Vec<u8>) {
    let dest = Destination::Topic { exchange: exchange.into(), routing_key: topic.into() };
    t.send(&dest, Outgoing::new(body)).await.unwrap();
}

async fn garbage_is_settled_and_callers_told(kind: Kind) {
    nova_tests::log_capture();
    let bus = Bus::new(kind);
    let topic = unique("bad");
    let mut small = bus.options();
    small.max_message_size = 64 * 1024;
    let server_t = bus.transport_with(small).await;
    let server = RpcServer::new(server_t.clone(), Target::new(&topic).with_server("s1"), api()).start().await.unwrap();
    let t = bus.transport().await;
    let garbage: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00 not utf-8".to_vec(),
        b"not json at all".to_vec(),
        b"[1, 2, 3]".to_vec(),
        br#"{"oslo.message": "{}"}"#.to_vec(),
        br#"{"oslo.version": "2.0", "oslo.message": 42}"#.to_vec(),
        envelope(r#"{"method": 7, "args": {}}"#),
        envelope(r#"{"method": "add", "args": [1, 2]}"#),
        envelope("{not json inside"),
    ];
    let n = garbage.len();
    for g in garbage {
        send(&t, &bus.exchange, &topic, g).await;
    }
    let client = RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(10));
    assert_eq!(client.call(&RequestContext::new(), "add", json!({"a": 2, "b": 3})).await.unwrap(), 5, "still serving");
    eventually("one line per bad message", Duration::from_secs(5), || async {
        (lines_about(&topic, "rejecting malformed message") == n).then_some(())
    })
    .await;

    // A mistyped argument: a remote error naming it.
    match client.call(&RequestContext::new(), "add", json!({"a": "two", "b": 3})).await {
        Err(RpcError::Remote(f)) => {
            assert_eq!(f.class, "InvalidArgument", "{f:?}");
            assert!(f.message.contains('a') && f.message.contains("two"), "names the argument: {f:?}");
        }
        Err(RpcError::InvalidArgument { argument, .. }) => assert_eq!(argument, "a"),
        other => panic!("a mistyped argument is refused, got {other:?}"),
    }
    // Over max_message_size: refused, and the caller told why.
    let big = json!({"blob": "x".repeat(100 * 1024)});
    match client.call(&RequestContext::new(), "echo", big).await {
        Err(RpcError::Remote(f)) => assert_eq!(f.class, "MessageTooLarge", "{f:?}"),
        other => panic!("an oversized message is refused with a reply, got {other:?}"),
    }
    assert_eq!(lines_about(&topic, "larger than max_message_size"), 1);
    // A malformed message whose reply address is readable gets an answer.
    let reply_q = format!("reply_{}", nova_rpc::id::new_id());
    let (replied, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let sink = std::sync::Arc::new(move |body: bytes::Bytes| {
        let _ = replied.send(body);
    });
    let reply_queue = t.listen_replies(&reply_q, sink).await.unwrap();
    let msg_id = nova_rpc::id::new_id();
    send(
        &t,
        &bus.exchange,
        &topic,
        envelope(&json!({"method": 7, "_msg_id": msg_id, "_reply_q": reply_q}).to_string()),
    )
    .await;
    let body =
        tokio::time::timeout(Duration::from_secs(10), replies.recv()).await.expect("an answer").expect("a reply");
    let reply = wire::decode_reply(&body).unwrap();
    assert_eq!(reply.msg_id, msg_id);
    assert_eq!(reply.failure.map(|f| f.class), Some("MalformedMessage".to_owned()));
    drop(reply_queue);
    assert_eq!(client.call(&RequestContext::new(), "add", json!({"a": 1, "b": 1})).await.unwrap(), 2, "still serving");
    server.stop(Duration::from_secs(5)).await;
}

async fn replies_to_a_vanished_queue_are_dropped_once(kind: Kind) {
    nova_tests::log_capture();
    let bus = Bus::new(kind);
    let topic = unique("gone");
    let mut options = bus.options();
    options.rabbit.kombu_missing_consumer_retry_timeout = Duration::from_millis(800);
    let server_t = bus.transport_with(options).await;
    let server = RpcServer::new(server_t.clone(), Target::new(&topic).with_server("s1"), api()).start().await.unwrap();
    let t = bus.transport().await;
    let gone = format!("reply_{}", nova_rpc::id::new_id());
    let request =
        json!({"method": "add", "args": {"a": 1, "b": 2}, "_msg_id": nova_rpc::id::new_id(), "_reply_q": gone});
    send(&t, &bus.exchange, &topic, envelope(&request.to_string())).await;
    eventually("the reply is given up on", Duration::from_secs(10), || async {
        logged().lines().any(|l| l.contains("dropping reply") && l.contains(&gone)).then_some(())
    })
    .await;
    // A call served after it is the sentinel: nothing more is logged for the lost reply.
    let client = RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(10));
    assert_eq!(client.call(&RequestContext::new(), "add", json!({"a": 2, "b": 2})).await.unwrap(), 4, "still serving");
    assert_eq!(logged().lines().filter(|l| l.contains(&gone)).count(), 1, "one line, not one per retry");
    server.stop(Duration::from_secs(5)).await;
}

transport_suite!(garbage_is_settled_and_callers_told, replies_to_a_vanished_queue_are_dropped_once);
