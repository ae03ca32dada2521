//! Property-based fuzzing of everything a network peer controls: the
//! envelope decoders (raw bytes, and structurally plausible envelopes with
//! random fields) and the dispatcher (random namespaces, versions, method
//! names and arguments against typed methods). Nothing may panic; every
//! input is either decoded or refused with an error.
//!
//! The test command runs a bounded pass; a longer run is
//! `PROPTEST_CASES=200000 cargo test --test fuzz_wire_and_dispatcher`.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    wire, RequestContext, RpcError, Version,
};
use proptest::{prelude::*, test_runner::TestRunner};
use serde::Deserialize;
use serde_json::{json, Map, Value};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys a message might carry: oslo's own, context keys, or anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "method",
            "args",
            "namespace",
            "version",
            "_msg_id",
            "_reply_q",
            "_unique_id",
            "_timeout",
            "_context_request_id",
            "_context_roles",
            "_context_user_id",
            "result",
            "failure",
            "ending",
        ])
        .prop_map(str::to_owned),
        "_context_[a-z_]{0,8}",
        ".{0,8}",
    ]
}

/// An envelope shaped like oslo's, with random contents.
fn envelope() -> impl Strategy<Value = Vec<u8>> {
    let message = prop::collection::btree_map(key(), json_value(), 0..10)
        .prop_map(|m| serde_json::to_string(&Value::Object(m.into_iter().collect())).unwrap_or_default());
    (prop_oneof![Just("2.0".to_owned()), ".{0,4}"], prop_oneof![message.prop_map(Value::from), json_value()])
        .prop_map(|(v, m)| serde_json::to_vec(&json!({"oslo.version": v, "oslo.message": m})).unwrap_or_default())
}

/// An envelope around a message that has a request's two required keys
/// (`method`, a string; `args`, an object) among random others.
fn request_envelope() -> impl Strategy<Value = Vec<u8>> {
    let extra = prop::collection::btree_map(key(), json_value(), 0..8);
    let args = prop::collection::btree_map(".{0,8}", json_value(), 0..6);
    (".{1,16}", args, extra).prop_map(|(method, args, extra)| {
        let mut message: Map<String, Value> = extra.into_iter().collect();
        message.insert("method".into(), Value::from(method));
        message.insert("args".into(), Value::Object(args.into_iter().collect()));
        let inner = serde_json::to_string(&Value::Object(message)).unwrap_or_default();
        serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": inner})).unwrap_or_default()
    })
}

/// Whatever decodes as a request encodes to a message that decodes to the
/// same request; the rest is refused with a reason. Counts both, so a
/// generator that stopped making decodable messages fails here.
#[test]
fn oslo_shaped_envelopes_round_trip_or_are_refused() {
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    let (decoded, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(config.clone());
    let strategy = prop_oneof![envelope(), request_envelope()];
    runner
        .run(&strategy, |body| {
            match wire::decode_request(&body) {
                Ok(request) => {
                    let encoded = wire::encode_request(&request).expect("what decodes encodes");
                    let again = wire::decode_request(&encoded).expect("what was encoded decodes");
                    prop_assert_eq!(again, request);
                    decoded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    prop_assert!(!e.reason.is_empty());
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = wire::decode_reply(&body);
            Ok(())
        })
        .unwrap();
    let (decoded, refused) = (decoded.into_inner(), refused.into_inner());
    println!("{decoded} envelopes round-tripped, {refused} refused");
    assert_eq!(decoded + refused, config.cases as usize, "every case ran");
    assert!(decoded >= config.cases as usize / 4, "too few cases decoded to test the round trip: {decoded}");
    assert!(refused >= config.cases as usize / 10, "too few malformed cases: {refused}");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TypedArgs {
    count: u32,
    name: String,
    tags: Option<Vec<String>>,
}

fn dispatcher() -> Dispatcher {
    let api = Router::new(Version::new(1, 3))
        .method("typed", |_ctx: RequestContext, a: TypedArgs| async move { Ok::<_, RpcError>(a.count) })
        .method("any", |_ctx: RequestContext, a: Map<String, Value>| async move { Ok::<_, RpcError>(a.len()) });
    let base = Router::new(Version::new(1, 1))
        .namespace("baseapi")
        .method("ping", |_ctx: RequestContext, a: Value| async move { Ok::<_, RpcError>(a) });
    Dispatcher::new(vec![Arc::new(api), Arc::new(base)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_request(&body);
        let _ = wire::decode_reply(&body);
    }


    #[test]
    fn dispatch_never_panics(
        namespace in prop::option::of(prop_oneof![Just("baseapi".to_owned()), ".{0,6}"]),
        version in prop::option::of(prop_oneof![Just("1.2".to_owned()), Just("1.1".to_owned()), "[0-9.]{0,5}", ".{0,5}"]),
        method in prop_oneof![Just("typed".to_owned()), Just("any".to_owned()), Just("ping".to_owned()), "_?[a-z]{0,8}"],
        args in prop::collection::btree_map(
            prop_oneof![Just("count".to_owned()), Just("name".to_owned()), Just("tags".to_owned()), Just("arg".to_owned()), ".{0,6}"],
            json_value(),
            0..5,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let d = dispatcher();
        let args: Map<String, Value> = args.into_iter().collect();
        let out = rt.block_on(d.dispatch(RequestContext::new(), namespace.as_deref(), version.as_deref(), &method, args.into()));
        if method.starts_with('_') {
            prop_assert!(out.is_err(), "private names are never callable");
        }
        if let Err(e) = out {
            // Every refusal is one the caller can be told about.
            prop_assert!(!e.class().is_empty());
            prop_assert!(!e.to_failure().message.is_empty());
        }
    }
}
