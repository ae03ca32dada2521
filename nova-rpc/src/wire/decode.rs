//! Decoding: the envelope opened (without building the outer object when
//! it is exactly as oslo writes it) and the inner message read key by key
//! into the fields a request or reply keeps.

use serde_json::{Map, Value};

use super::message::{Malformed, Reply, Request};
use crate::{
    payload::{Args, Payload},
    pyjson::envelope,
    RemoteFailure,
};

/// Strip the 2.0 envelope (or accept a bare, pre-envelope message) and parse
/// the inner message as a JSON object.
pub fn decode_message(body: &[u8]) -> Result<Map<String, Value>, Malformed> {
    decode::<Map<String, Value>>(body)
}

/// The inner message of `body`, read into `T`: straight from the
/// unescaped inner text for the exact envelope, else through the general path.
fn decode<T: Fields>(body: &[u8]) -> Result<T, Malformed> {
    if let Some(inner) = envelope::open_exact(body) {
        return serde_json::from_str::<ReadFields<T>>(&inner).map(|c| c.0).map_err(inner_error);
    }
    let text = std::str::from_utf8(body).map_err(|e| Malformed::new(format!("body is not UTF-8: {e}")))?;
    let outer: Value = serde_json::from_str(text).map_err(|e| Malformed::new(format!("body is not JSON: {e}")))?;
    let Value::Object(mut outer) = outer else {
        return Err(Malformed::new("body is not a JSON object"));
    };
    let Some(version) = outer.get("oslo.version") else {
        // A bare message, from before the envelope: the body is the message.
        return serde_json::from_str::<ReadFields<T>>(text).map(|c| c.0).map_err(inner_error);
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
    serde_json::from_str::<ReadFields<T>>(&inner).map(|c| c.0).map_err(inner_error)
}

fn inner_error(e: serde_json::Error) -> Malformed {
    match e.classify() {
        serde_json::error::Category::Data => Malformed::new("oslo.message is not a JSON object"),
        _ => Malformed::new(format!("oslo.message is not JSON: {e}")),
    }
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
struct ReadFields<T>(T);

impl<'de, T: Fields> serde::Deserialize<'de> for ReadFields<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys<T>(std::marker::PhantomData<T>);
        impl<'de, T: Fields> serde::de::Visitor<'de> for Keys<T> {
            type Value = ReadFields<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ReadFields<T>, A::Error> {
                let mut fields = T::default();
                while let Some(ObjectKey(key)) = map.next_key::<ObjectKey<'de>>()? {
                    fields.accept(&key, &mut map)?;
                }
                Ok(ReadFields(fields))
            }
        }
        d.deserialize_map(Keys(std::marker::PhantomData))
    }
}

/// An object key, borrowed from the input where it has no escapes.
struct ObjectKey<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for ObjectKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = ObjectKey<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<ObjectKey<'de>, E> {
                Ok(ObjectKey(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<ObjectKey<'de>, E> {
                Ok(ObjectKey(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
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
enum StringOrType {
    Str(String),
    Other(&'static str),
}

impl StringOrType {
    /// The string; `None` for anything else.
    fn into_string(self) -> Option<String> {
        match self {
            StringOrType::Str(s) => Some(s),
            StringOrType::Other(_) => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for StringOrType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = StringOrType;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_str<E>(self, v: &str) -> Result<StringOrType, E> {
                Ok(StringOrType::Str(v.to_owned()))
            }

            fn visit_string<E>(self, v: String) -> Result<StringOrType, E> {
                Ok(StringOrType::Str(v))
            }

            fn visit_unit<E>(self) -> Result<StringOrType, E> {
                Ok(StringOrType::Other("null"))
            }

            fn visit_bool<E>(self, _: bool) -> Result<StringOrType, E> {
                Ok(StringOrType::Other("boolean"))
            }

            fn visit_i64<E>(self, _: i64) -> Result<StringOrType, E> {
                Ok(StringOrType::Other("number"))
            }

            fn visit_u64<E>(self, _: u64) -> Result<StringOrType, E> {
                Ok(StringOrType::Other("number"))
            }

            fn visit_f64<E>(self, _: f64) -> Result<StringOrType, E> {
                Ok(StringOrType::Other("number"))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrType, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(StringOrType::Other("array"))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StringOrType, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(StringOrType::Other("object"))
            }
        }
        d.deserialize_any(Any)
    }
}

/// A string, or nothing (absent or `null`); anything else is refused.
fn opt_string(key: &str, v: Option<StringOrType>) -> Result<Option<String>, String> {
    match v {
        None | Some(StringOrType::Other("null")) => Ok(None),
        Some(StringOrType::Str(s)) => Ok(Some(s)),
        Some(StringOrType::Other(kind)) => Err(format!("{key} must be a string, not {kind}")),
    }
}

/// JSON text read as it is, for arguments and results.
fn raw<'de, A: serde::de::MapAccess<'de>>(map: &mut A) -> Result<Option<Payload>, A::Error> {
    Ok(Some(Payload::from(map.next_value::<Box<serde_json::value::RawValue>>()?)))
}

/// A request's keys as read, checked once all are in.
#[derive(Default)]
struct RequestFields {
    method: Option<StringOrType>,
    args: Option<Payload>,
    namespace: Option<StringOrType>,
    version: Option<StringOrType>,
    msg_id: Option<StringOrType>,
    reply_q: Option<StringOrType>,
    timeout: Option<Value>,
    unique_id: Option<StringOrType>,
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
    request_of(serde_json::from_str::<ReadFields<RequestFields>>(message).map(|c| c.0).map_err(inner_error)?)
}

fn request_of(f: RequestFields) -> Result<Request, Malformed> {
    let (msg_id, reply_q) =
        (f.msg_id.and_then(StringOrType::into_string), f.reply_q.and_then(StringOrType::into_string));
    let with_address = |reason: String| Malformed { reason, msg_id: msg_id.clone(), reply_q: reply_q.clone() };
    let method = match f.method {
        Some(StringOrType::Str(s)) => s,
        Some(StringOrType::Other(kind)) => return Err(with_address(format!("method must be a string, not {kind}"))),
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
    // A cast has no reply address nor call-monitor timeout (oslo writes
    // them for calls only); what a peer adds to one is not kept.
    let (reply_q, monitor_timeout) = if msg_id.is_some() { (reply_q, monitor_timeout) } else { (None, None) };
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
    msg_id: Option<StringOrType>,
    unique_id: Option<StringOrType>,
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
    reply_of(serde_json::from_str::<ReadFields<ReplyFields>>(message).map(|c| c.0).map_err(inner_error)?)
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
