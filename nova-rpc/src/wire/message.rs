//! The messages oslo.messaging exchanges: a request or cast, a reply, and
//! what is known of a message that could not be read.

use crate::{
    payload::{Args, Payload},
    RemoteFailure, RequestContext,
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
            unique_id: crate::id::new_id(),
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
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), msg_id: None, reply_q: None }
    }
}
