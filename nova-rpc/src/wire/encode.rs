//! Encoding: a request or reply written key by key in oslo's order,
//! Python style, straight into the 2.0 envelope ([`pyjson::envelope`]).

use serde_json::Value;

use super::message::{Reply, Request};
use crate::{
    context::Entry,
    payload::{Args, Payload},
    pyjson::envelope::{Literal, ObjectWriter},
    RemoteFailure, RequestContext,
};

/// The request context, as `_context_*` keys of the message `w` writes;
/// `redacted`: secrets masked, as oslo.context's `redacted_copy` masks them
/// (what a notification carries).
pub(crate) fn write_context(
    w: &mut ObjectWriter,
    context: &RequestContext,
    redacted: bool,
) -> Result<(), crate::RpcError> {
    let mut written = Ok(());
    context.for_each_entry(|k, v| {
        if written.is_err() {
            return;
        }
        let w = w.key("_context_", k);
        match v {
            _ if redacted && crate::mask::is_secret_key(k) => w.string(crate::mask::MASK),
            Entry::Text(s) => w.string(s),
            Entry::Texts(list) => w.strings(list),
            Entry::Json(v) if redacted => written = w.value(&crate::mask::mask_value(v)),
            Entry::Json(v) => written = w.value(v),
        }
    });
    Ok(written?)
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
    pub(super) fn write(&self, enveloped: bool) -> Result<Vec<u8>, crate::RpcError> {
        let r = self;
        let mut w = ObjectWriter::new(384 + r.args.as_str().len(), enveloped);
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
        write_context(&mut w, r.context, false)?;
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
        let mut w = ObjectWriter::new(224 + reply.result.as_str().len(), true);
        w.field("result").raw(reply.result.as_str());
        match reply.failure {
            Some(f) => {
                let mut failure = Vec::new();
                crate::pyjson::write(f, &mut failure, false)?;
                let failure = String::from_utf8(failure).map_err(|e| crate::RpcError::Serialization(e.to_string()))?;
                w.field("failure").string(&failure);
            }
            None => w.field("failure").literal(Literal::Null),
        }
        w.field("ending").literal(reply.ending.into());
        w.field("_msg_id").string(reply.msg_id);
        w.field("_unique_id").string(reply.unique_id);
        Ok(w.finish())
    }
}
