//! The oslo.messaging wire format: envelope 2.0, JSON inside JSON.
//!
//! Every body is `{"oslo.version": "2.0", "oslo.message": "<inner JSON>"}`.
//! The inner message is written the way Python's `json.dumps` writes it
//! (`", "` and `": "` separators, `\uXXXX` escapes for anything outside
//! printable ASCII, keys in insertion order), so a message encoded here is
//! byte-for-byte what oslo would send, and the captures in `tests/fixtures/oslo-wire/`
//! re-encode to themselves. Requests carry the context as `_context_*` keys;
//! replies carry `result`, `failure` (a third level of JSON), `ending`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    context::Entry,
    payload::{Args, Payload},
    pyjson, RemoteFailure, RequestContext,
};

/// A request or cast, decoded from (or about to become) an oslo message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method to call.
    pub method: String,
    /// Keyword arguments, as the JSON text they arrived as.
    pub args: Args,
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
    pub fn cast(method: impl Into<String>, args: impl Into<Args>) -> Self {
        Self {
            method: method.into(),
            args: args.into(),
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
    /// The return value (`null` for failures and heartbeats), as JSON text.
    pub result: Payload,
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

/// A random UUID 4 from the operating system's generator: ids that matter
/// (`_msg_id`, `_unique_id`, reply queues, request ids) must not be
/// predictable, so they come from `getrandom`, read 4 KiB at a time per
/// thread (one system call for 256 ids; each byte is used once), not from
/// a seeded generator whose state an observer could recover.
pub(crate) fn random_uuid() -> uuid::Uuid {
    const POOL: usize = 4096;
    thread_local! {
        static BYTES: std::cell::RefCell<(Box<[u8; POOL]>, usize)> = std::cell::RefCell::new((Box::new([0; POOL]), POOL));
    }
    let mut id = [0u8; 16];
    BYTES.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used + id.len() > POOL {
            if let Err(e) = getrandom::fill(&mut bytes[..]) {
                // Linux's getrandom(2) does not fail once booted; should it,
                // an id from a seeded generator beats no call at all.
                tracing::error!(error = %e, "the operating system's random generator failed");
                bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
            }
            *used = 0;
        }
        id.copy_from_slice(&bytes[*used..*used + 16]);
        *used += 16;
    });
    uuid::Builder::from_random_bytes(id).into_uuid()
}

/// A new 32-hex-digit id (a random UUID 4), as oslo makes `_msg_id` and
/// `_unique_id`.
pub fn new_id() -> String {
    NewId::new().as_str().to_owned()
}

/// A new id kept on the stack, with its 128 bits: what a call needs for
/// its `_msg_id` and `_unique_id` without allocating either.
pub(crate) struct NewId {
    bits: u128,
    text: [u8; 32],
}

impl NewId {
    pub(crate) fn new() -> Self {
        let bits = random_uuid().as_u128();
        // The 32 lower-case hex digits, as `simple()` writes them.
        Self { bits, text: crate::dedupe::hex::encode(bits) }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The id as a set of ids keeps it ([`crate::dedupe::Id::of`] of its text).
    pub(crate) fn id(&self) -> crate::dedupe::Id {
        crate::dedupe::Id::Hex(self.bits)
    }
}

/// Serialise `value` as Python's `json.dumps` would, appending to `out`.
pub fn to_python_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), crate::RpcError> {
    Ok(pyjson::write(value, out, false)?)
}

/// The 2.0 envelope around an inner message: what comes before and after
/// the inner JSON, which is written as a JSON string between them.
const ENVELOPE_HEAD: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": ""#;
const ENVELOPE_TAIL: &[u8] = b"\"}";

/// Writes an inner message key by key, Python style ([`pyjson`]), straight
/// into its buffer. `enveloped`: inside the 2.0 envelope's string, so every
/// `"` and `\` of the inner JSON is written escaped once more as it goes,
/// and nothing is scanned or copied afterwards. Arguments and results are
/// JSON text already ([`Payload`]): they are copied in, escaped for the
/// envelope.
struct InnerWriter {
    out: Vec<u8>,
    enveloped: bool,
    first: bool,
}

impl InnerWriter {
    fn new(capacity: usize, enveloped: bool) -> Self {
        let mut out = Vec::with_capacity(capacity);
        if enveloped {
            out.extend_from_slice(ENVELOPE_HEAD);
        }
        out.push(b'{');
        Self { out, enveloped, first: true }
    }

    /// The JSON writer, on this message's buffer.
    fn json(&mut self) -> pyjson::Writer<'_> {
        pyjson::Writer { out: &mut self.out, enveloped: self.enveloped }
    }

    /// What comes before the next key: `", "` unless it is the first, and its opening quote.
    fn open_key(&mut self) {
        let open: &[u8] = match (std::mem::take(&mut self.first), self.enveloped) {
            (true, true) => b"\\\"",
            (true, false) => b"\"",
            (false, true) => b", \\\"",
            (false, false) => b", \"",
        };
        self.out.extend_from_slice(open);
    }

    /// What comes after a key: its closing quote and `": "`.
    fn close_key(&mut self) -> &mut Self {
        self.out.extend_from_slice(if self.enveloped { b"\\\": " } else { b"\": " });
        self
    }

    /// The next key, one of the message's own (plain ASCII, written as it is).
    fn field(&mut self, key: &'static str) -> &mut Self {
        self.open_key();
        self.out.extend_from_slice(key.as_bytes());
        self.close_key()
    }

    /// The next key: `prefix` (plain ASCII) then `key`, as one JSON string.
    fn key(&mut self, prefix: &'static str, key: &str) -> &mut Self {
        self.open_key();
        self.out.extend_from_slice(prefix.as_bytes());
        self.json().contents(key);
        self.close_key()
    }

    fn string(&mut self, s: &str) {
        self.json().string(s);
    }

    fn opt_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// JSON text, copied in (escaped for the envelope).
    fn raw(&mut self, json: &str) {
        self.json().raw(json);
    }

    /// Any value.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), crate::RpcError> {
        Ok(pyjson::write(value, &mut self.out, self.enveloped)?)
    }

    fn context(&mut self, context: &RequestContext) -> Result<(), crate::RpcError> {
        let mut written = Ok(());
        context.for_each_entry(|k, v| {
            if written.is_err() {
                return;
            }
            let w = self.key("_context_", k);
            match v {
                Entry::Text(s) => w.string(s),
                Entry::Texts(list) => {
                    w.out.push(b'[');
                    for (i, s) in list.iter().enumerate() {
                        if i > 0 {
                            w.out.extend_from_slice(b", ");
                        }
                        w.string(s);
                    }
                    w.out.push(b']');
                }
                Entry::Json(v) => written = w.value(v),
            }
        });
        written
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        if self.enveloped {
            self.out.extend_from_slice(ENVELOPE_TAIL);
        }
        self.out
    }
}

/// A request or cast about to be encoded, borrowing its parts (a client
/// encodes what it holds without copying it into a [`Request`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestRef<'a> {
    /// The method to call.
    pub method: &'a str,
    /// Keyword arguments.
    pub args: &'a Args,
    /// API namespace.
    pub namespace: Option<&'a str>,
    /// Requested API version.
    pub version: Option<&'a str>,
    /// `_msg_id` (calls only).
    pub msg_id: Option<&'a str>,
    /// `_reply_q` (calls only).
    pub reply_q: Option<&'a str>,
    /// `_timeout` (calls only).
    pub monitor_timeout: Option<f64>,
    /// `_unique_id`.
    pub unique_id: &'a str,
    /// The request context.
    pub context: &'a RequestContext,
}

impl<'a> From<&'a Request> for RequestRef<'a> {
    fn from(r: &'a Request) -> Self {
        Self {
            method: &r.method,
            args: &r.args,
            namespace: r.namespace.as_deref(),
            version: r.version.as_deref(),
            msg_id: r.msg_id.as_deref(),
            reply_q: r.reply_q.as_deref(),
            monitor_timeout: r.monitor_timeout,
            unique_id: &r.unique_id,
            context: &r.context,
        }
    }
}

impl RequestRef<'_> {
    /// The inner message, in oslo's key order.
    fn write(&self, enveloped: bool) -> Result<Vec<u8>, crate::RpcError> {
        let r = self;
        let mut w = InnerWriter::new(384 + r.args.as_str().len(), enveloped);
        w.field("method").string(r.method);
        w.field("args").raw(r.args.as_str());
        if let Some(ns) = r.namespace {
            w.field("namespace").string(ns);
        }
        if let Some(v) = r.version {
            w.field("version").string(v);
        }
        if let Some(id) = r.msg_id {
            w.field("_msg_id").string(id);
            w.field("_reply_q").opt_string(r.reply_q);
            w.field("_timeout").value(&r.monitor_timeout.map(python_number))?;
        }
        w.field("_unique_id").string(r.unique_id);
        w.context(r.context)?;
        Ok(w.finish())
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
    encode_request_ref(&RequestRef::from(request))
}

/// Encode a request or cast from borrowed parts; as [`encode_request`].
pub fn encode_request_ref(request: &RequestRef<'_>) -> Result<Vec<u8>, crate::RpcError> {
    request.write(true)
}

/// Encode a reply as an enveloped oslo message.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, crate::RpcError> {
    let Reply { result, failure, ending, msg_id, unique_id } = reply;
    ReplyRef { result, failure: failure.as_ref(), ending: *ending, msg_id, unique_id }.encode()
}

/// A reply about to be encoded, borrowing its parts (a server encodes
/// what it holds without copying it into a [`Reply`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyRef<'a> {
    pub(crate) result: &'a Payload,
    pub(crate) failure: Option<&'a RemoteFailure>,
    pub(crate) ending: bool,
    pub(crate) msg_id: &'a str,
    pub(crate) unique_id: &'a str,
}

impl ReplyRef<'_> {
    /// The enveloped message, in oslo's key order.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, crate::RpcError> {
        let reply = self;
        let mut w = InnerWriter::new(224 + reply.result.as_str().len(), true);
        w.field("result").raw(reply.result.as_str());
        match reply.failure {
            Some(f) => {
                let mut failure = Vec::new();
                to_python_json(f, &mut failure)?;
                let failure = String::from_utf8(failure).map_err(|e| crate::RpcError::Serialization(e.to_string()))?;
                w.field("failure").string(&failure);
            }
            None => w.field("failure").out.extend_from_slice(b"null"),
        }
        w.field("ending").out.extend_from_slice(if reply.ending { b"true" } else { b"false" });
        w.field("_msg_id").string(reply.msg_id);
        w.field("_unique_id").string(reply.unique_id);
        Ok(w.finish())
    }
}

/// Strip the 2.0 envelope (or accept a bare, pre-envelope message) and parse
/// the inner message as a JSON object.
pub fn decode_message(body: &[u8]) -> Result<Map<String, Value>, Malformed> {
    decode::<Map<String, Value>>(body)
}

/// The inner message of `body`, read into `T`: straight from the
/// unescaped inner text for the exact envelope, else through the general path.
fn decode<T: Fields>(body: &[u8]) -> Result<T, Malformed> {
    if let Some(inner) = exact_envelope(body) {
        return serde_json::from_str::<Collect<T>>(&inner).map(|c| c.0).map_err(inner_error);
    }
    let text = std::str::from_utf8(body).map_err(|e| Malformed::new(format!("body is not UTF-8: {e}")))?;
    let outer: Value = serde_json::from_str(text).map_err(|e| Malformed::new(format!("body is not JSON: {e}")))?;
    let Value::Object(mut outer) = outer else {
        return Err(Malformed::new("body is not a JSON object"));
    };
    let Some(version) = outer.get("oslo.version") else {
        // A bare message, from before the envelope: the body is the message.
        return serde_json::from_str::<Collect<T>>(text).map(|c| c.0).map_err(inner_error);
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
    serde_json::from_str::<Collect<T>>(&inner).map(|c| c.0).map_err(inner_error)
}

fn inner_error(e: serde_json::Error) -> Malformed {
    match e.classify() {
        serde_json::error::Category::Data => Malformed::new("oslo.message is not a JSON object"),
        _ => Malformed::new(format!("oslo.message is not JSON: {e}")),
    }
}

/// The inner message of a body that is exactly the envelope as oslo and
/// nova-rs write it (`{"oslo.version": "2.0", "oslo.message": "…"}`), its
/// only escapes the `\"` and `\\` that quoting ASCII JSON makes, unescaped
/// without building the outer object; `None` for any other shape, which
/// the general path then reads.
fn exact_envelope(body: &[u8]) -> Option<String> {
    let head = &ENVELOPE_HEAD[..ENVELOPE_HEAD.len() - 1];
    let quoted = body.strip_prefix(head)?.strip_suffix(b"}")?;
    let rest = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(rest.len() + 8);
    pyjson::scan::copy_runs::<false>(rest, &mut out, |from, out| match from {
        [b'\\', escaped @ (b'"' | b'\\'), ..] => {
            out.push(*escaped);
            Some(2)
        }
        // An unescaped quote ends the string early; a raw control
        // character is not allowed in one.
        _ => None,
    })?;
    String::from_utf8(out).ok()
}

/// What a decoder keeps of an inner message, key by key, as it is read:
/// each key's value is read from `map` in the type its field wants.
trait Fields: Default {
    fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

impl Fields for Map<String, Value> {
    fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        self.insert(key.to_owned(), map.next_value()?);
        Ok(())
    }
}

/// Reads a JSON object into `T` key by key, never building the object.
struct Collect<T>(T);

impl<'de, T: Fields> serde::Deserialize<'de> for Collect<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys<T>(std::marker::PhantomData<T>);
        impl<'de, T: Fields> serde::de::Visitor<'de> for Keys<T> {
            type Value = Collect<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Collect<T>, A::Error> {
                let mut fields = T::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    fields.accept(&key, &mut map)?;
                }
                Ok(Collect(fields))
            }
        }
        d.deserialize_map(Keys(std::marker::PhantomData))
    }
}

/// An object key, borrowed from the input where it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Text)
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

/// A value read where a string belongs: the string, or the JSON type it
/// is instead (a word for the error message). Reading it builds no
/// [`Value`]: a string is read straight into its `String`, anything else
/// is skipped.
enum Text {
    Str(String),
    Other(&'static str),
}

impl Text {
    /// The string; `None` for anything else.
    fn into_string(self) -> Option<String> {
        match self {
            Text::Str(s) => Some(s),
            Text::Other(_) => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = Text;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text::Str(v.to_owned()))
            }

            fn visit_string<E>(self, v: String) -> Result<Text, E> {
                Ok(Text::Str(v))
            }

            fn visit_unit<E>(self) -> Result<Text, E> {
                Ok(Text::Other("null"))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Text, E> {
                Ok(Text::Other("boolean"))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Text, E> {
                Ok(Text::Other("number"))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Text, E> {
                Ok(Text::Other("number"))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Text, E> {
                Ok(Text::Other("number"))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text::Other("array"))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text::Other("object"))
            }
        }
        d.deserialize_any(Any)
    }
}

/// A string, or nothing (absent or `null`); anything else is refused.
fn opt_string(key: &str, v: Option<Text>) -> Result<Option<String>, String> {
    match v {
        None | Some(Text::Other("null")) => Ok(None),
        Some(Text::Str(s)) => Ok(Some(s)),
        Some(Text::Other(kind)) => Err(format!("{key} must be a string, not {kind}")),
    }
}

/// JSON text read as it is, for arguments and results.
fn raw<'de, A: serde::de::MapAccess<'de>>(map: &mut A) -> Result<Option<Payload>, A::Error> {
    Ok(Some(Payload::from(map.next_value::<Box<serde_json::value::RawValue>>()?)))
}

/// A request's keys as read, checked once all are in.
#[derive(Default)]
struct RequestFields {
    method: Option<Text>,
    args: Option<Payload>,
    namespace: Option<Text>,
    version: Option<Text>,
    msg_id: Option<Text>,
    reply_q: Option<Text>,
    timeout: Option<Value>,
    unique_id: Option<Text>,
    context: crate::context::ContextFields,
}

impl Fields for RequestFields {
    fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let slot = match key {
            "args" => {
                self.args = raw(map)?;
                return Ok(());
            }
            "_timeout" => {
                self.timeout = Some(map.next_value()?);
                return Ok(());
            }
            "method" => &mut self.method,
            "namespace" => &mut self.namespace,
            "version" => &mut self.version,
            "_msg_id" => &mut self.msg_id,
            "_reply_q" => &mut self.reply_q,
            "_unique_id" => &mut self.unique_id,
            other => {
                match other.strip_prefix("_context_") {
                    Some(key) => self.context.accept(key, map.next_value()?),
                    None => drop(map.next_value::<serde::de::IgnoredAny>()?),
                }
                return Ok(());
            }
        };
        *slot = Some(map.next_value()?);
        Ok(())
    }
}

/// Decode a request or cast from a message body.
pub fn decode_request(body: &[u8]) -> Result<Request, Malformed> {
    request_of(decode::<RequestFields>(body)?)
}

/// Decode a request or cast from the inner message text itself (the
/// `oslo.message` a signature vouched for; see [`crate::signing`]).
pub fn decode_request_message(message: &str) -> Result<Request, Malformed> {
    request_of(serde_json::from_str::<Collect<RequestFields>>(message).map(|c| c.0).map_err(inner_error)?)
}

fn request_of(f: RequestFields) -> Result<Request, Malformed> {
    let (msg_id, reply_q) = (f.msg_id.and_then(Text::into_string), f.reply_q.and_then(Text::into_string));
    let with_address = |reason: String| Malformed { reason, msg_id: msg_id.clone(), reply_q: reply_q.clone() };
    let method = match f.method {
        Some(Text::Str(s)) => s,
        Some(Text::Other(kind)) => return Err(with_address(format!("method must be a string, not {kind}"))),
        None => return Err(with_address("message has no method".into())),
    };
    let args = match f.args {
        None => Args::default(),
        Some(p) => Args::try_from(p).map_err(|kind| with_address(format!("args must be an object, not {kind}")))?,
    };
    let namespace = opt_string("namespace", f.namespace).map_err(&with_address)?;
    let version = opt_string("version", f.version).map_err(&with_address)?;
    let monitor_timeout = match f.timeout {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => return Err(with_address(format!("_timeout must be a number, not {}", json_type(&other)))),
    };
    let unique_id = opt_string("_unique_id", f.unique_id).map_err(&with_address)?.unwrap_or_default();
    Ok(Request {
        method,
        args,
        namespace,
        version,
        msg_id,
        reply_q,
        monitor_timeout,
        unique_id,
        context: f.context.build(),
    })
}

/// A reply's keys as read, checked once all are in.
#[derive(Default)]
struct ReplyFields {
    result: Option<Payload>,
    failure: Option<Value>,
    ending: Option<Value>,
    msg_id: Option<Text>,
    unique_id: Option<Text>,
}

impl Fields for ReplyFields {
    fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let slot = match key {
            "result" => {
                self.result = raw(map)?;
                return Ok(());
            }
            "_msg_id" => &mut self.msg_id,
            "_unique_id" => &mut self.unique_id,
            "failure" => {
                self.failure = Some(map.next_value()?);
                return Ok(());
            }
            "ending" => {
                self.ending = Some(map.next_value()?);
                return Ok(());
            }
            _ => {
                map.next_value::<serde::de::IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = Some(map.next_value()?);
        Ok(())
    }
}

/// Decode a reply from a message body.
pub fn decode_reply(body: &[u8]) -> Result<Reply, Malformed> {
    reply_of(decode::<ReplyFields>(body)?)
}

/// Decode a reply from the inner message text itself (what a signature
/// vouched for).
pub fn decode_reply_message(message: &str) -> Result<Reply, Malformed> {
    reply_of(serde_json::from_str::<Collect<ReplyFields>>(message).map(|c| c.0).map_err(inner_error)?)
}

fn reply_of(f: ReplyFields) -> Result<Reply, Malformed> {
    let msg_id = opt_string("_msg_id", f.msg_id)
        .map_err(Malformed::new)?
        .ok_or_else(|| Malformed::new("reply has no _msg_id"))?;
    let invalid = |e: serde_json::Error| Malformed::new(format!("failure is not a valid failure object: {e}"));
    let failure = match f.failure {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(serde_json::from_str::<RemoteFailure>(&s).map_err(invalid)?),
        Some(obj @ Value::Object(_)) => Some(serde_json::from_value::<RemoteFailure>(obj).map_err(invalid)?),
        Some(other) => return Err(Malformed::new(format!("failure must be a string, not {}", json_type(&other)))),
    };
    let ending = match f.ending {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(other) => return Err(Malformed::new(format!("ending must be a boolean, not {}", json_type(&other)))),
    };
    Ok(Reply {
        result: f.result.unwrap_or_else(Payload::null),
        failure,
        ending,
        msg_id,
        unique_id: opt_string("_unique_id", f.unique_id).map_err(Malformed::new)?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(exact_envelope(&body).is_none(), "a newline escaped for the envelope takes the general path");
        let back = decode_reply(&body).unwrap();
        assert_eq!(back.result.as_str(), reply.result.as_str(), "the text is kept as it was");
        assert_eq!(back, reply);
    }

    #[test]
    fn a_new_id_is_its_bits_in_hex() {
        let id = NewId::new();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(crate::dedupe::Id::of(id.as_str()), id.id());
        assert_ne!(NewId::new().as_str(), id.as_str());
    }

    #[test]
    fn both_decoding_paths_read_the_same_request() {
        let request = awkward_request();
        let body = encode_request(&request).unwrap();
        assert!(exact_envelope(&body).is_some(), "our own envelope takes the fast path");
        let fast = decode_request(&body).unwrap();
        // The same message with the keys the other way round takes the general path.
        let outer: Map<String, Value> = serde_json::from_slice(&body).unwrap();
        let reordered = serde_json::json!({"oslo.message": outer["oslo.message"], "oslo.version": "2.0"});
        let body2 = serde_json::to_vec(&reordered).unwrap();
        assert!(exact_envelope(&body2).is_none());
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
            assert_eq!(
                (e.msg_id.as_deref(), e.reply_q.as_deref()),
                (Some("id1"), Some("q1")),
                "the caller can be told"
            );
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
        assert!(exact_envelope(body).is_none());
        assert!(decode_message(body).unwrap().is_empty());
        let bad = br#"{"oslo.version": "2.0", "oslo.message": "[1]"}"#;
        assert_eq!(decode_message(bad).unwrap_err().reason, "oslo.message is not a JSON object");
        let broken = br#"{"oslo.version": "2.0", "oslo.message": "{\"a\": "}"#;
        assert!(decode_message(broken).unwrap_err().reason.starts_with("oslo.message is not JSON"));
    }
}
