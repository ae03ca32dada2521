//! Every message captured from oslo.messaging 18.3.1
//! (`tests/fixtures/oslo-wire/messages`)
//! decodes, and re-encodes to exactly the bytes oslo put on the wire.

use std::path::PathBuf;

use nova_rpc::wire;
use serde_json::Value;

fn captures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/oslo-wire/messages");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the captures must be at {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((path.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).unwrap()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 20, "expected the full capture set, found {}", out.len());
    out
}

#[test]
fn every_capture_round_trips_byte_for_byte() {
    for (name, capture) in captures() {
        let raw = capture["body_raw"].as_str().unwrap();
        let role = capture["role"].as_str().unwrap();
        let reencoded = if role.starts_with("reply") {
            let reply = wire::decode_reply(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(reply.ending, role != "reply-heartbeat", "{name}");
            wire::encode_reply(&reply).unwrap()
        } else {
            let request = wire::decode_request(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(request.context.request_id, "req-123", "{name}");
            assert_eq!(request.context.user_id.as_deref(), Some("u1"), "{name}");
            assert_eq!(request.msg_id.is_some(), role == "call-request", "{name}");
            wire::encode_request(&request).unwrap()
        };
        assert_eq!(String::from_utf8(reencoded).unwrap(), raw, "{name} re-encodes differently");
    }
}

#[test]
fn failures_decode_to_their_oslo_classes() {
    for (name, capture) in captures() {
        if capture["role"] != "reply-failure" {
            continue;
        }
        let reply = wire::decode_reply(capture["body_raw"].as_str().unwrap().as_bytes()).unwrap();
        let failure = reply.failure.unwrap_or_else(|| panic!("{name} has a failure"));
        let err = nova_rpc::RpcError::from_failure(failure.clone());
        match failure.class.as_str() {
            "ValueError" => assert!(
                matches!(err, nova_rpc::RpcError::Remote(ref f) if f.module == "builtins" && f.message == "bad" && !f.tb.is_empty())
            ),
            "NoSuchMethod" => {
                assert!(matches!(err, nova_rpc::RpcError::NoSuchMethod { ref method } if method == "no_such_method"))
            }
            "UnsupportedVersion" => {
                assert!(
                    matches!(err, nova_rpc::RpcError::UnsupportedVersion { ref version, ref method } if version == "1.3" && method == "echo")
                )
            }
            other => panic!("{name}: unexpected class {other}"),
        }
        // Our own encoding of the same error carries oslo's class, module and message.
        let ours = err.to_failure();
        assert_eq!(
            (ours.class.as_str(), ours.module.as_str(), ours.message.as_str()),
            (failure.class.as_str(), failure.module.as_str(), failure.message.as_str()),
            "{name}"
        );
        assert_eq!(ours.args, failure.args, "{name}");
    }
}

#[test]
fn python_json_escapes() {
    let out = nova_rpc::pyjson::to_string(&serde_json::json!({"a": ["é", "😀", "\u{7f}", "\n"], "b": 1.5})).unwrap();
    assert_eq!(out, r#"{"a": ["\u00e9", "\ud83d\ude00", "\u007f", "\n"], "b": 1.5}"#);
}

#[test]
fn ids_look_like_oslos_and_do_not_repeat() {
    // oslo makes ids with uuid4().hex: 32 lowercase hex digits, version 4.
    let ids: Vec<String> = (0..4)
        .map(|_| std::thread::spawn(|| (0..10_000).map(|_| nova_rpc::id::new_id()).collect::<Vec<_>>()))
        .flat_map(|t| t.join().unwrap())
        .collect();
    for id in &ids[..100] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 4, "{id}");
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids from four threads never repeat");
}
