//! The oslo.messaging wire format: envelope 2.0, JSON inside JSON.
//!
//! Every body is `{"oslo.version": "2.0", "oslo.message": "<inner JSON>"}`.
//! The inner message is written the way Python's `json.dumps` writes it
//! (`", "` and `": "` separators, `\uXXXX` escapes for anything outside
//! printable ASCII, keys in insertion order, floats as Python's `repr`), so
//! a message encoded here is byte-for-byte what oslo would send (NaN and
//! infinities aside: see [`crate::pyjson`]), and the captures in
//! `tests/fixtures/oslo-wire/` re-encode to themselves. Requests carry the context as `_context_*` keys;
//! replies carry `result`, `failure` (a third level of JSON), `ending`.
//!
//! | module | what |
//! | --- | --- |
//! | [`message`] | the messages: [`Request`], [`Reply`], and [`Malformed`] for what cannot be read |
//! | [`encode`] | a request or reply written key by key, straight into its envelope |
//! | [`decode`] | the envelope opened and the inner message read key by key, never built as a whole |
//!
//! The JSON itself is written by [`crate::pyjson`], envelope quoting included.

pub mod decode;
pub mod encode;
pub mod message;

pub(crate) use self::encode::ReplyRef;
pub use self::{
    decode::{decode_message, decode_reply, decode_reply_message, decode_request, decode_request_message, json_type},
    encode::{encode_reply, encode_request, encode_request_ref, RequestRef},
    message::{Malformed, Reply, Request},
};

#[cfg(test)]
mod tests;
