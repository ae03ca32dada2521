//! The oslo.messaging wire format: envelope 2.0, JSON inside JSON.
//!
//! Every body is `{"oslo.version": "2.0", "oslo.message": "<inner JSON>"}`.
//! The inner message is written the way Python's `json.dumps` writes it
//! (`", "` and `": "` separators, `\uXXXX` escapes for anything outside
//! printable ASCII, keys in insertion order), so a message encoded here is
//! byte-for-byte what oslo would send, and the captures in `tests/fixtures/oslo-wire/`
//! re-encode to themselves. Requests carry the context as `_context_*` keys;
//! replies carry `result`, `failure` (a third level of JSON), `ending`.

use std::io;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{RemoteFailure, RequestContext};

/// A request or cast, decoded from (or about to become) an oslo message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method to call.
    pub method: String,
    /// Keyword arguments.
    pub args: Map<String, Value>,
    /// API namespace; absent on the wire when `None`.
    pub namespace: Option<String>,
    /// Requested API version; `None` means `1.0`.
    pub version: Option<String>,
    /// `_msg_id` (calls only): the reply is matched on it.
    pub msg_id: Option<String>,
    /// `_reply_q` (calls only): where the reply goes.
    pub reply_q: Option<String>,
    /// `_timeout` (calls only): the call-monitor timeout in seconds, if any.
    pub monitor_timeout: Option<f64>,
    /// `_unique_id`: new for every message, used to drop duplicates.
    pub unique_id: String,
    /// The request context (`_context_*`).
    pub context: RequestContext,
}

impl Request {
    /// A cast of `method` with `args`, a fresh `_unique_id` and a new context.
    ///
    /// ```
    /// let cast = nova_rpc::wire::Request::cast("ping", serde_json::Map::new());
    /// assert!(cast.msg_id.is_none() && !cast.unique_id.is_empty());
    /// ```
    pub fn cast(method: impl Into<String>, args: Map<String, Value>) -> Self {
        Self {
            method: method.into(),
            args,
            namespace: None,
            version: None,
            msg_id: None,
            reply_q: None,
            monitor_timeout: None,
            unique_id: new_id(),
            context: RequestContext::new(),
        }
    }
}

/// A reply to a call: a result, a failure, or a call-monitor heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The return value (`null` for failures and heartbeats).
    pub result: Value,
    /// The failure, when the method raised.
    pub failure: Option<RemoteFailure>,
    /// `false` for call-monitor heartbeats, `true` on the final reply.
    pub ending: bool,
    /// The request's `_msg_id`.
    pub msg_id: String,
    /// A fresh `_unique_id`.
    pub unique_id: String,
}

/// What is wrong with a message that could not be decoded, with whatever
/// reply address could still be read from it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    /// What is wrong.
    pub reason: String,
    /// `_msg_id`, when readable.
    pub msg_id: Option<String>,
    /// `_reply_q`, when readable.
    pub reply_q: Option<String>,
}

impl Malformed {
    fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), msg_id: None, reply_q: None }
    }
}

/// A new 32-hex-digit id (a random UUID 4), as oslo makes `_msg_id` and
/// `_unique_id`.
///
/// Each thread draws from its own generator, seeded once from the operating
/// system: a call needs three ids, and asking the kernel for each was a
/// measurable share of a `memory://` call.
pub fn new_id() -> String {
    thread_local! {
        static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(fastrand::Rng::with_seed(
            u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes")),
        ));
    }
    let bits = RNG.with(|rng| rng.borrow_mut().u128(..));
    uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid().simple().to_string()
}

/// Python `json.dumps` style: `", "` / `": "` separators, ASCII-only output.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        let bytes = fragment.as_bytes();
        if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
            return w.write_all(bytes);
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..'\u{7f}').contains(&c) {
                continue;
            }
            w.write_all(&bytes[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&bytes[start..])
    }
}

/// Serialise `value` as Python's `json.dumps` would, appending to `out`.
pub fn to_python_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), crate::RpcError> {
    let mut ser = serde_json::Serializer::with_formatter(out, PyFormatter);
    value.serialize(&mut ser).map_err(|e| crate::RpcError::Serialization(e.to_string()))
}

/// Wrap an inner message (Python-style JSON, ASCII only) in the 2.0 envelope.
fn envelope(inner: &[u8]) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": ""#;
    let extra = inner.iter().filter(|b| matches!(b, b'"' | b'\\')).count();
    let mut out = Vec::with_capacity(HEAD.len() + inner.len() + extra + 2);
    out.extend_from_slice(HEAD);
    let mut start = 0;
    for (i, b) in inner.iter().enumerate() {
        if matches!(b, b'"' | b'\\') {
            out.extend_from_slice(&inner[start..i]);
            out.push(b'\\');
            start = i;
        }
    }
    out.extend_from_slice(&inner[start..]);
    out.extend_from_slice(b"\"}");
    out
}

struct RequestBody<'a>(&'a Request);

impl Serialize for RequestBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("method", &r.method)?;
        m.serialize_entry("args", &r.args)?;
        if let Some(ns) = &r.namespace {
            m.serialize_entry("namespace", ns)?;
        }
        if let Some(v) = &r.version {
            m.serialize_entry("version", v)?;
        }
        if let Some(id) = &r.msg_id {
            m.serialize_entry("_msg_id", id)?;
            m.serialize_entry("_reply_q", &r.reply_q)?;
            m.serialize_entry("_timeout", &r.monitor_timeout.map(python_number))?;
        }
        m.serialize_entry("_unique_id", &r.unique_id)?;
        let mut result = Ok(());
        r.context.for_each_entry(|k, v| {
            if result.is_ok() {
                result = m.serialize_entry(&format_args!("_context_{k}"), v);
            }
        });
        result?;
        m.end()
    }
}

/// `2.0` → `2`, as Python would write an int the caller passed.
fn python_number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Value::from(f)
    }
}

/// Encode a request or cast as an enveloped oslo message.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, crate::RpcError> {
    let mut inner = Vec::with_capacity(256);
    to_python_json(&RequestBody(request), &mut inner)?;
    Ok(envelope(&inner))
}

/// Encode a reply as an enveloped oslo message.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, crate::RpcError> {
    #[derive(Serialize)]
    struct Body<'a> {
        result: &'a Value,
        failure: Option<String>,
        ending: bool,
        _msg_id: &'a str,
        _unique_id: &'a str,
    }
    let failure = match &reply.failure {
        Some(f) => {
            let mut buf = Vec::new();
            to_python_json(f, &mut buf)?;
            Some(String::from_utf8(buf).map_err(|e| crate::RpcError::Serialization(e.to_string()))?)
        }
        None => None,
    };
    let mut inner = Vec::with_capacity(128);
    to_python_json(
        &Body {
            result: &reply.result,
            failure,
            ending: reply.ending,
            _msg_id: &reply.msg_id,
            _unique_id: &reply.unique_id,
        },
        &mut inner,
    )?;
    Ok(envelope(&inner))
}

/// Strip the 2.0 envelope (or accept a bare, pre-envelope message) and parse
/// the inner message as a JSON object.
pub fn decode_message(body: &[u8]) -> Result<Map<String, Value>, Malformed> {
    let text = std::str::from_utf8(body).map_err(|e| Malformed::new(format!("body is not UTF-8: {e}")))?;
    let outer: Value = serde_json::from_str(text).map_err(|e| Malformed::new(format!("body is not JSON: {e}")))?;
    let Value::Object(mut outer) = outer else {
        return Err(Malformed::new("body is not a JSON object"));
    };
    let Some(version) = outer.get("oslo.version") else {
        return Ok(outer);
    };
    let major = version.as_str().and_then(|v| v.split('.').next()).unwrap_or("");
    if major != "2" {
        return Err(Malformed::new(format!("unsupported envelope oslo.version {version}")));
    }
    let inner = match outer.remove("oslo.message") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(Malformed::new("oslo.message is not a string")),
        None => return Err(Malformed::new("envelope has no oslo.message")),
    };
    match serde_json::from_str(&inner) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Malformed::new("oslo.message is not a JSON object")),
        Err(e) => Err(Malformed::new(format!("oslo.message is not JSON: {e}"))),
    }
}

fn take_opt_string(m: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} must be a string, not {}", json_type(&other))),
    }
}

/// The JSON type of a value, as a word for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Decode a request or cast from a message body.
pub fn decode_request(body: &[u8]) -> Result<Request, Malformed> {
    let mut m = decode_message(body)?;
    let msg_id = m.get("_msg_id").and_then(Value::as_str).map(str::to_owned);
    let reply_q = m.get("_reply_q").and_then(Value::as_str).map(str::to_owned);
    let with_address = |reason: String| Malformed { reason, msg_id: msg_id.clone(), reply_q: reply_q.clone() };
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(with_address(format!("method must be a string, not {}", json_type(&other)))),
        None => return Err(with_address("message has no method".into())),
    };
    let args = match m.remove("args") {
        Some(Value::Object(a)) => a,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(with_address(format!("args must be an object, not {}", json_type(&other)))),
    };
    let namespace = take_opt_string(&mut m, "namespace").map_err(&with_address)?;
    let version = take_opt_string(&mut m, "version").map_err(&with_address)?;
    m.remove("_msg_id");
    m.remove("_reply_q");
    let monitor_timeout = match m.remove("_timeout") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => return Err(with_address(format!("_timeout must be a number, not {}", json_type(&other)))),
    };
    let unique_id = take_opt_string(&mut m, "_unique_id").map_err(&with_address)?.unwrap_or_default();
    let mut ctx = Map::new();
    for (k, v) in m {
        if let Some(key) = k.strip_prefix("_context_") {
            ctx.insert(key.to_owned(), v);
        }
    }
    Ok(Request {
        method,
        args,
        namespace,
        version,
        msg_id,
        reply_q,
        monitor_timeout,
        unique_id,
        context: RequestContext::from_map(ctx),
    })
}

/// Decode a reply from a message body.
pub fn decode_reply(body: &[u8]) -> Result<Reply, Malformed> {
    let mut m = decode_message(body)?;
    let msg_id = take_opt_string(&mut m, "_msg_id")
        .map_err(Malformed::new)?
        .ok_or_else(|| Malformed::new("reply has no _msg_id"))?;
    let failure = match m.remove("failure") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            serde_json::from_str::<RemoteFailure>(&s)
                .map_err(|e| Malformed::new(format!("failure is not a valid failure object: {e}")))?,
        ),
        Some(obj @ Value::Object(_)) => Some(
            serde_json::from_value::<RemoteFailure>(obj)
                .map_err(|e| Malformed::new(format!("failure is not a valid failure object: {e}")))?,
        ),
        Some(other) => return Err(Malformed::new(format!("failure must be a string, not {}", json_type(&other)))),
    };
    let ending = match m.remove("ending") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(other) => return Err(Malformed::new(format!("ending must be a boolean, not {}", json_type(&other)))),
    };
    Ok(Reply {
        result: m.remove("result").unwrap_or(Value::Null),
        failure,
        ending,
        msg_id,
        unique_id: take_opt_string(&mut m, "_unique_id").map_err(Malformed::new)?.unwrap_or_default(),
    })
}
