//! Signed messages on the bus (opt-in per topic, nova-rs peers only): a
//! signed topic serves signed requests and refuses unsigned, tampered and
//! wrong-key ones with a clear remote error; unsigned topics stay
//! byte-compatible with Python oslo clients; a captured signature vouches
//! for nothing but its own message, target and moment, and is accepted
//! once; and the base API's admin method can require a role that only a
//! signed request can carry.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use nova_core::{rpc_api, Manager, ManagerHandle, Service};
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    signing::{Binding, Signing},
    transport::{self, Destination, Outgoing, Transport, TransportOptions},
    wire, RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{eventually, interop::PyPeer, unique, TempDir, TestVhost};
use serde_json::{json, Value};

fn key(dir: &TempDir, id: &str, secret: &str) -> PathBuf {
    dir.write(&format!("{id}.key"), secret)
}

async fn transport_with(url: &str, exchange: &str, signing: Option<Signing>) -> Arc<dyn Transport> {
    let mut o = TransportOptions::new(url).with_control_exchange(exchange);
    o.rpc_response_timeout = Duration::from_secs(10);
    o.signing = signing.map(Arc::new);
    transport::connect(o).await.unwrap()
}

/// `whoami` answers which key verified the request; `calls` counts what ran.
fn api(calls: Arc<AtomicUsize>) -> Dispatcher {
    let r = Router::new(Version::new(1, 0)).method("whoami", move |ctx: RequestContext, _: Value| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, RpcError>(json!({ "signed_by": ctx.signed_by })) }
    });
    Dispatcher::new(vec![Arc::new(r)])
}

fn remote_class(e: RpcError) -> String {
    match e {
        RpcError::Remote(f) => f.class,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_topic_serves_only_signed_requests() {
    nova_tests::log_capture();
    let vhost = TestVhost::new();
    let dir = TempDir::new("keys");
    let (url, exchange) = (vhost.url(), unique("nova"));
    let k1 = key(&dir, "k1", "a-secret-of-more-than-16-bytes");
    let signing = |files: &[&PathBuf]| Signing::load(files, vec!["secure".into(), "plain-never-used".into()]).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let server_t = transport_with(&url, &exchange, Some(signing(&[&k1]))).await;
    let secure = RpcServer::new(server_t.clone(), Target::new("secure").with_server("s1"), api(calls.clone()))
        .start()
        .await
        .unwrap();
    let plain = RpcServer::new(server_t.clone(), Target::new("plain").with_server("s1"), api(calls.clone()))
        .start()
        .await
        .unwrap();

    // Signed with a key the server has: served, and the method knows by which key.
    let signed_t = transport_with(&url, &exchange, Some(signing(&[&k1]))).await;
    let signed = RpcClient::new(signed_t.clone(), Target::new("secure"));
    assert_eq!(signed.call(&RequestContext::new(), "whoami", json!({})).await.unwrap(), json!({"signed_by": "k1"}));

    // Unsigned, and signed with a key the server does not have: refused.
    let plain_t = transport_with(&url, &exchange, None).await;
    let e =
        RpcClient::new(plain_t.clone(), Target::new("secure")).call(&RequestContext::new(), "whoami", json!({})).await;
    assert_eq!(remote_class(e.unwrap_err()), "SignatureRequired");
    let k9 = key(&dir, "k9", "another-secret-of-16-bytes-plus");
    let wrong_t = transport_with(&url, &exchange, Some(signing(&[&k9]))).await;
    let e =
        RpcClient::new(wrong_t.clone(), Target::new("secure")).call(&RequestContext::new(), "whoami", json!({})).await;
    assert_eq!(remote_class(e.unwrap_err()), "BadSignature");
    // The right key id with another secret is a mismatch, not an unknown key.
    let forged_dir = TempDir::new("forged");
    let forged = key(&forged_dir, "k1", "not-the-real-secret-at-all!!");
    let forged_t = transport_with(&url, &exchange, Some(signing(&[&forged]))).await;
    let e =
        RpcClient::new(forged_t.clone(), Target::new("secure")).call(&RequestContext::new(), "whoami", json!({})).await;
    assert_eq!(remote_class(e.unwrap_err()), "BadSignature");

    // A signed cast whose message was changed on the way: refused, logged once.
    let request = wire::Request::cast("whoami", serde_json::Map::new());
    let to = Binding { exchange: &exchange, topic: "secure", server: None, fanout: false };
    let body = signing(&[&k1]).sign(&wire::encode_request(&request).unwrap(), &to).unwrap();
    let tampered = String::from_utf8(body).unwrap().replace("whoami", "whoam1");
    let dest = Destination::Topic { exchange: exchange.as_str().into(), routing_key: "secure".into() };
    plain_t.send(&dest, Outgoing::new(tampered.into_bytes())).await.unwrap();
    eventually("the tampered cast is refused with one log line", Duration::from_secs(10), || async {
        let log = nova_tests::logged();
        let refusals = log
            .lines()
            .filter(|l| l.contains("topic=secure") && l.contains("refusing a request whose signature does not verify"))
            .count();
        (refusals == 4).then_some(())
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the signed call ran");

    // A topic that is not signed takes unsigned requests, from nova-rs and from Python oslo alike.
    let r =
        RpcClient::new(plain_t.clone(), Target::new("plain")).call(&RequestContext::new(), "whoami", json!({})).await;
    assert_eq!(r.unwrap(), json!({"signed_by": null}));
    let mut py = PyPeer::client(&url, &exchange, &[], dir.path());
    let a = py.request(json!({"op": "call", "topic": "plain", "method": "whoami", "version": "1.0"}));
    assert_eq!(a["ok"], json!({"signed_by": null}), "{a}");
    secure.stop(Duration::from_secs(5)).await;
    plain.stop(Duration::from_secs(5)).await;
}

/// A manager with nothing of its own: the base API is the point.
#[derive(Default)]
pub struct Quiet;

#[rpc_api(version = "1.0")]
impl Quiet {
    /// Nothing.
    pub async fn nothing(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        Ok(())
    }
}

impl Manager for Quiet {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_log_level_needs_a_signed_request_with_the_admin_role() {
    let dir = TempDir::new("admin-keys");
    let k1 = key(&dir, "k1", "a-secret-of-more-than-16-bytes");
    let bus = format!("memory://{}", unique("admin"));
    let signing = Signing::load(&[&k1], vec!["quiet".into()]).unwrap().with_admin_role(Some("admin".into()));
    let mut o = TransportOptions::new(bus);
    o.signing = Some(Arc::new(signing));
    let t = transport::connect(o).await.unwrap();
    let running = Service::create(t.clone(), ManagerHandle::new(Arc::new(Quiet)))
        .host("q1")
        .topic("quiet")
        .start()
        .await
        .unwrap();
    let base = RpcClient::new(t, Target::new("quiet").with_namespace("baseapi").with_version("1.1"));
    let set = |ctx: RequestContext| {
        let base = base.clone();
        async move { base.call(&ctx, "set_log_level", json!({"filter": "info"})).await }
    };
    let e = set(RequestContext::new().with_roles(["member"])).await.unwrap_err();
    assert_eq!(remote_class(e), "Forbidden", "a signed request without the role");
    let admin = RequestContext::new().with_roles(["admin"]);
    // Past the role check, this test process's logging is not nova's to change.
    match set(admin).await {
        Ok(_) => {}
        Err(RpcError::Remote(f)) => assert_ne!(f.class, "Forbidden", "the role check passed: {f:?}"),
        Err(other) => panic!("{other:?}"),
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_signature_vouches_for_nothing_else() {
    nova_tests::log_capture();
    let vhost = TestVhost::new();
    let dir = TempDir::new("forgery");
    let (url, exchange) = (vhost.url(), unique("nova"));
    let k1 = key(&dir, "k1", "a-secret-of-more-than-16-bytes");
    let signing = || Signing::load(&[&k1], vec!["guarded".into()]).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let server_t = transport_with(&url, &exchange, Some(signing())).await;
    let server =
        RpcServer::new(server_t, Target::new("guarded").with_server("g1"), api(calls.clone())).start().await.unwrap();
    let raw = transport_with(&url, &exchange, None).await;
    let publish = |routing_key: &'static str, body: Vec<u8>| {
        let (raw, exchange) = (raw.clone(), exchange.clone());
        async move {
            let dest = Destination::Topic { exchange: exchange.as_str().into(), routing_key: routing_key.into() };
            raw.send(&dest, Outgoing::new(body)).await.unwrap();
        }
    };
    let refused_since = |before: usize, n: usize| async move {
        eventually(&format!("{n} more refusals"), Duration::from_secs(10), || async {
            let now = nova_tests::logged()
                .lines()
                .filter(|l| l.contains("topic=guarded") && l.contains("refusing a"))
                .count();
            (now >= before + n).then_some(now)
        })
        .await
    };
    let logged_refusals =
        || nova_tests::logged().lines().filter(|l| l.contains("topic=guarded") && l.contains("refusing a")).count();
    // A genuine signed cast, as captured on the vhost.
    let to = Binding { exchange: &exchange, topic: "guarded", server: None, fanout: false };
    let cast = wire::Request::cast("whoami", serde_json::Map::new());
    let genuine = signing().sign(&wire::encode_request(&cast).unwrap(), &to).unwrap();
    publish("guarded", genuine.clone()).await;
    eventually("the genuine cast runs", Duration::from_secs(10), || async {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let before = logged_refusals();
    // Once, dropping oslo.version made the outer object the message: the
    // signature verified the inner text while the outer fields were served.
    let mut outer: serde_json::Map<String, Value> = serde_json::from_slice(&genuine).unwrap();
    outer.remove("oslo.version");
    outer.insert("method".into(), json!("whoami"));
    outer.insert("args".into(), json!({}));
    outer.insert("_context_roles".into(), json!(["admin"]));
    outer.insert("_unique_id".into(), json!("0123456789abcdef0123456789abcdef"));
    publish("guarded", serde_json::to_vec(&outer).unwrap()).await;
    // The same signed bytes again: a replay.
    publish("guarded", genuine.clone()).await;
    // Signed for the topic, sent to one server's queue: still the topic's
    // message, but the replay cache knows it.
    publish("guarded.g1", genuine.clone()).await;
    // Signed for another server, sent to this one.
    let other = Binding { server: Some("g2"), ..to.clone() };
    let cast = wire::Request::cast("whoami", serde_json::Map::new());
    publish("guarded.g1", signing().sign(&wire::encode_request(&cast).unwrap(), &other).unwrap()).await;
    refused_since(before, 4).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing but the genuine cast ran");
    let log = nova_tests::logged();
    assert!(log.contains("replays are refused"), "the replay is named: {log}");
    // A signed call gets a signed reply, which its caller checks.
    let client_t = transport_with(&url, &exchange, Some(signing())).await;
    let reply =
        RpcClient::new(client_t, Target::new("guarded")).call(&RequestContext::new(), "whoami", json!({})).await;
    assert_eq!(reply.unwrap(), json!({"signed_by": "k1"}));
    server.stop(Duration::from_secs(5)).await;
}
