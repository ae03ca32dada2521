//! Arguments and results as the JSON text they travel as.
//!
//! A request's keyword arguments reach the server as text inside the oslo
//! message, and a method's result leaves as text inside the reply. Between
//! the two, nothing needs the JSON as a tree: the method wants its own
//! argument type, and the reply wants text. So [`Args`] and [`Payload`]
//! keep the text, taken as a slice of the message when it is decoded and
//! parsed once, straight into the type that asks ([`Args::parse`],
//! [`Payload::parse`]). A result is serialised once, Python style, and
//! written into the reply as it is.
//!
//! Layers and tools that want a tree ask for one ([`Args::to_map`],
//! [`Payload::to_value`]); that costs a parse, paid only by whoever asks.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{value::RawValue, Map, Value};

use crate::{Result, RpcError};

/// A JSON value kept as its text: what a method returned, on its way to
/// the caller. The text is always valid JSON. It is kept as the `String`
/// it was written into: shrinking it to a `Box<str>` cost a reallocation
/// per call, for a value that lives only until the reply is sent.
///
/// ```
/// use nova_rpc::payload::Payload;
/// let p = Payload::of(&serde_json::json!({"a": [1, 2]})).unwrap();
/// assert_eq!(p.as_str(), r#"{"a": [1, 2]}"#);
/// assert_eq!(p.parse::<serde_json::Value>().unwrap()["a"][1], 2);
/// ```
#[derive(Clone)]
pub struct Payload(String);

impl Payload {
    /// `null`: what a method that returns nothing sends.
    pub fn null() -> Self {
        Self("null".into())
    }

    /// `value` serialised as Python's `json.dumps` writes it.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serialization`] when `value` cannot be written as JSON
    /// (a map with non-string keys, say).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let mut out = Vec::with_capacity(128);
        crate::pyjson::write(value, &mut out, false)?;
        // The serialiser writes ASCII only.
        String::from_utf8(out).map(Self).map_err(|e| RpcError::Serialization(e.to_string()))
    }

    /// Text from elsewhere, checked to be one JSON value.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serialization`] when `json` is not valid JSON.
    pub fn from_json(json: impl Into<String>) -> Result<Self> {
        RawValue::from_string(json.into())
            .map(Self::from)
            .map_err(|e| RpcError::Serialization(format!("not JSON: {e}")))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse into `T`.
    ///
    /// # Errors
    ///
    /// serde's error when the JSON does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The value as a tree.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serialization`] for a number JSON allows but `Value`
    /// cannot hold (`1e400`).
    pub fn to_value(&self) -> Result<Value> {
        self.parse().map_err(|e| RpcError::Serialization(format!("cannot read result: {e}")))
    }

    /// The JSON type, as a word for error messages (`object`, `array`, …).
    pub fn json_type(&self) -> &'static str {
        match self.0.trim_start().as_bytes().first() {
            Some(b'{') => "object",
            Some(b'[') => "array",
            Some(b'"') => "string",
            Some(b't' | b'f') => "boolean",
            Some(b'n') => "null",
            _ => "number",
        }
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(Box::<str>::from(raw).into_string())
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        // A `Value` always serialises: its keys are strings, its numbers finite.
        Self::of(value).unwrap_or_else(|_| Self::null())
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Equal when the JSON values are equal, however they are spaced.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().map_err(serde::ser::Error::custom)?.serialize(s)
    }
}

/// A request's keyword arguments: the text of a JSON object, parsed into
/// the method's own type when it is called.
///
/// ```
/// use nova_rpc::payload::Args;
/// #[derive(serde::Deserialize)]
/// struct Resize { flavor: String }
/// let args = Args::of(&serde_json::json!({"flavor": "m1.small"})).unwrap();
/// assert_eq!(args.parse::<Resize>().unwrap().flavor, "m1.small");
/// assert!(Args::of(&[1, 2]).is_err(), "arguments are named");
/// ```
#[derive(Clone, PartialEq)]
pub struct Args(Payload);

impl Default for Args {
    fn default() -> Self {
        Self(Payload("{}".into()))
    }
}

impl Args {
    /// `value` as arguments: it must serialise to a JSON object (`null`,
    /// what `()` and `None` give, means none).
    ///
    /// # Errors
    ///
    /// [`RpcError::Serialization`] when `value` is not an object.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Self::try_from(Payload::of(value)?)
            .map_err(|kind| RpcError::Serialization(format!("arguments must serialize to a JSON object, not {kind}")))
    }

    /// Parse into the method's argument type `A`, naming the argument that
    /// is missing, unknown or of the wrong type.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidArgument`] naming the argument.
    pub fn parse<A: DeserializeOwned>(&self) -> Result<A> {
        // Tracking the path costs an allocation per key, so it is paid only
        // to explain a failure: parsing is deterministic, so the second
        // attempt fails the same way.
        serde_json::from_str(self.as_str()).map_err(|_| self.explain::<A>())
    }

    /// Why the arguments do not parse as `A`, naming the argument.
    fn explain<A: DeserializeOwned>(&self) -> RpcError {
        let mut de = serde_json::Deserializer::from_str(self.as_str());
        let Err(e) = serde_path_to_error::deserialize::<_, A>(&mut de) else {
            return RpcError::InvalidArgument { argument: "args".into(), reason: "cannot be read".into() };
        };
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = strip_position(&inner);
        let argument = if path == "." {
            // Missing and unknown fields are reported at the top level;
            // their name is in serde's message between backquotes.
            reason.split('`').nth(1).unwrap_or("args").to_owned()
        } else {
            path
        };
        RpcError::InvalidArgument { argument, reason }
    }

    /// The arguments as a map.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serialization`] for a number `Value` cannot hold.
    pub fn to_map(&self) -> Result<Map<String, Value>> {
        self.0.parse().map_err(|e| RpcError::Serialization(format!("cannot read arguments: {e}")))
    }

    /// The JSON text of the object.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// serde_json's message without " at line 1 column 17": the position in a
/// message the caller never sees means nothing to them.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => text[..i].to_owned(),
        _ => text,
    }
}

/// Arguments from a payload that is an object (or `null`, for none); the
/// error is the JSON type it is instead.
impl TryFrom<Payload> for Args {
    type Error = &'static str;

    fn try_from(p: Payload) -> std::result::Result<Self, &'static str> {
        match p.json_type() {
            "object" => Ok(Self(p)),
            "null" => Ok(Self::default()),
            other => Err(other),
        }
    }
}

impl From<Map<String, Value>> for Args {
    fn from(map: Map<String, Value>) -> Self {
        Self(Payload::from(&Value::Object(map)))
    }
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Args {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors_name_the_argument() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct A {
            count: u32,
        }
        let args = |v: Value| Args::of(&v).unwrap();
        let e = args(serde_json::json!({})).parse::<A>().unwrap_err();
        assert!(matches!(&e, RpcError::InvalidArgument { argument, .. } if argument == "count"), "{e}");
        let e = args(serde_json::json!({"count": "x"})).parse::<A>().unwrap_err();
        assert!(matches!(&e, RpcError::InvalidArgument { argument, .. } if argument == "count"), "{e}");
        assert!(!e.to_string().contains("line 1"), "no position in the caller's message: {e}");
        let e = args(serde_json::json!({"count": 1, "extra": 1})).parse::<A>().unwrap_err();
        assert!(matches!(&e, RpcError::InvalidArgument { argument, .. } if argument == "extra"), "{e}");
        assert_eq!(args(serde_json::json!({"count": 7})).parse::<A>().unwrap().count, 7);
    }

    #[test]
    fn arguments_are_an_object_or_nothing() {
        assert_eq!(Args::of(&()).unwrap().as_str(), "{}");
        assert_eq!(Args::of(&None::<u8>).unwrap(), Args::default());
        for (bad, kind) in
            [(serde_json::json!([1]), "array"), (serde_json::json!("x"), "string"), (serde_json::json!(1.5), "number")]
        {
            let e = Args::of(&bad).unwrap_err();
            assert!(e.to_string().contains(kind), "{e}");
        }
    }

    #[test]
    fn payloads_compare_as_json_and_refuse_what_is_not() {
        let spaced = Payload::from_json(r#"{"a": [1, 2]}"#).unwrap();
        let tight = Payload::from_json(r#"{"a":[1,2]}"#).unwrap();
        assert_eq!(spaced, tight);
        assert_ne!(spaced, Payload::null());
        assert!(Payload::from_json("{").is_err());
        assert!(Payload::from_json("1 2").is_err());
        assert_eq!(Payload::of("é").unwrap().as_str(), r#""\u00e9""#, "Python's ASCII escapes");
    }
}
