//! Encoding and decoding together: round trips, both decoding paths, and
//! the errors a malformed message gets.

use serde_json::{Map, Value};

use super::*;
use crate::{id::new_id, pyjson::envelope::open_exact, Payload};

fn awkward_request() -> Request {
    let mut args = Map::new();
    args.insert("quote\"key\\".into(), Value::from("back\\slash \"quoted\" \n\t\u{1} é 😀 </tag>"));
    args.insert("nested".into(), serde_json::json!({"list": ["\"", "\\", 1.5, null, true]}));
    let mut request = Request::cast("method\"name", args);
    request.context = request.context.with_extra("extra\\key", Value::from("v\"alue"));
    request
}

#[test]
fn the_envelope_is_the_inner_json_quoted_once() {
    let request = awkward_request();
    let body = encode_request(&request).unwrap();
    // What oslo does: the inner message, then json.dumps of it as a string.
    let inner = String::from_utf8(RequestRef::from(&request).write(false).unwrap()).unwrap();
    assert!(inner.is_ascii());
    let quoted = serde_json::to_string(&inner).unwrap();
    let expected = format!(r#"{{"oslo.version": "2.0", "oslo.message": {quoted}}}"#);
    assert_eq!(String::from_utf8(body).unwrap(), expected);
}

#[test]
fn json_text_with_whitespace_and_escapes_travels_intact() {
    let result = Payload::from_json("{\n\t\"a\": \"x\\\"y\\\\\",\r \"b\": [1, \"\\u00e9\"]}").unwrap();
    let reply = Reply { result, failure: None, ending: true, msg_id: new_id(), unique_id: new_id() };
    let body = encode_reply(&reply).unwrap();
    let outer: Value = serde_json::from_slice(&body).expect("the envelope is JSON");
    assert!(outer["oslo.message"].is_string());
    assert!(open_exact(&body).is_none(), "a newline escaped for the envelope takes the general path");
    let back = decode_reply(&body).unwrap();
    assert_eq!(back.result.as_str(), reply.result.as_str(), "the text is kept as it was");
    assert_eq!(back, reply);
}

#[test]
fn both_decoding_paths_read_the_same_request() {
    let request = awkward_request();
    let body = encode_request(&request).unwrap();
    assert!(open_exact(&body).is_some(), "our own envelope takes the fast path");
    let fast = decode_request(&body).unwrap();
    // The same message with the keys the other way round takes the general path.
    let outer: Map<String, Value> = serde_json::from_slice(&body).unwrap();
    let reordered = serde_json::json!({"oslo.message": outer["oslo.message"], "oslo.version": "2.0"});
    let body2 = serde_json::to_vec(&reordered).unwrap();
    assert!(open_exact(&body2).is_none());
    let general = decode_request(&body2).unwrap();
    assert_eq!(fast, general);
    assert_eq!(fast, request);
}

#[test]
fn a_field_of_the_wrong_type_is_named_with_the_type_it_has() {
    let enveloped = |inner: &Value| {
        let text = serde_json::to_string(inner).unwrap();
        serde_json::to_vec(&serde_json::json!({"oslo.version": "2.0", "oslo.message": text})).unwrap()
    };
    let kinds = [
        (Value::Null, "null"),
        (Value::Bool(true), "boolean"),
        (serde_json::json!(-1), "number"),
        (serde_json::json!(1.5), "number"),
        (serde_json::json!([1, [2], {"a": 3}]), "array"),
        (serde_json::json!({"a": [1, {"b": 2}]}), "object"),
    ];
    for (bad, kind) in kinds {
        let mut request = serde_json::json!({"method": "m", "args": {}, "_msg_id": "id1", "_reply_q": "q1"});
        request["method"] = bad.clone();
        let e = decode_request(&enveloped(&request)).unwrap_err();
        assert_eq!(e.reason, format!("method must be a string, not {kind}"));
        assert_eq!((e.msg_id.as_deref(), e.reply_q.as_deref()), (Some("id1"), Some("q1")), "the caller can be told");
        for key in ["namespace", "version", "_unique_id"] {
            let mut request = serde_json::json!({"method": "m", "args": {}});
            request[key] = bad.clone();
            match decode_request(&enveloped(&request)) {
                // Absent and null are the same.
                Ok(r) => assert!(kind == "null" && r.namespace.is_none() && r.version.is_none(), "{key}"),
                Err(e) => assert_eq!(e.reason, format!("{key} must be a string, not {kind}")),
            }
        }
        let mut reply = serde_json::json!({"result": 1, "failure": null, "ending": true, "_msg_id": "id1"});
        reply["_msg_id"] = bad.clone();
        let e = decode_reply(&enveloped(&reply)).unwrap_err();
        let expected = if kind == "null" {
            "reply has no _msg_id".to_owned()
        } else {
            format!("_msg_id must be a string, not {kind}")
        };
        assert_eq!(e.reason, expected);
    }
    // A string with escapes is read in full.
    let request = serde_json::json!({"method": "m\"é\n", "args": {}, "_msg_id": "a\\b"});
    let r = decode_request(&enveloped(&request)).unwrap();
    assert_eq!((r.method.as_str(), r.msg_id.as_deref()), ("m\"é\n", Some("a\\b")));
}

#[test]
fn a_body_that_only_looks_like_the_envelope_is_read_in_full() {
    // An unescaped quote ends the string early: not the exact envelope,
    // and the general path says what is wrong.
    let body = br#"{"oslo.version": "2.0", "oslo.message": "{}", "x": "1"}"#;
    assert!(open_exact(body).is_none());
    assert!(decode_message(body).unwrap().is_empty());
    let bad = br#"{"oslo.version": "2.0", "oslo.message": "[1]"}"#;
    assert_eq!(decode_message(bad).unwrap_err().reason, "oslo.message is not a JSON object");
    let broken = br#"{"oslo.version": "2.0", "oslo.message": "{\"a\": "}"#;
    assert!(decode_message(broken).unwrap_err().reason.starts_with("oslo.message is not JSON"));
}
