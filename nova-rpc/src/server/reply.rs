//! The reply to a call, retried while its queue is briefly missing, and
//! the call-monitor heartbeats sent while a method runs.

use std::time::{Duration, Instant};

use super::ServerState;
use crate::{
    transport::{Destination, Outgoing},
    wire::ReplyRef,
    Payload, RemoteFailure, Result,
};

pub(super) fn spawn_heartbeat(
    shared: &ServerState,
    reply_q: String,
    msg_id: String,
    monitor: f64,
    signed: bool,
) -> tokio::task::JoinHandle<()> {
    let transport = shared.transport.clone();
    let every = Duration::from_secs_f64((monitor / 2.0).max(0.05));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let null = Payload::null();
        loop {
            tick.tick().await;
            let unique_id = crate::id::NewId::new();
            let beat = ReplyRef {
                result: &null,
                failure: None,
                ending: false,
                msg_id: &msg_id,
                unique_id: unique_id.as_str(),
            };
            let Ok(body) = beat.encode() else { return };
            let Some(body) = sign_reply(&*transport, &reply_q, body, signed) else { return };
            let message = Outgoing { retry: Some(0), ..Outgoing::new(body) };
            if let Err(e) = transport.send(&Destination::Reply { queue: reply_q.as_str().into() }, message).await {
                tracing::debug!(error = %e, "call-monitor heartbeat not sent");
            }
        }
    })
}

/// Send the reply to a call, retrying while its queue is briefly missing.
///
/// The reply is encoded before anything is awaited, so the future holds
/// only the encoded body; the retries, with their timer, are a future of
/// their own, made only when the first attempt fails. Every request's
/// future holds this one, so its size counts on each call.
pub(super) fn send_reply<'a>(
    shared: &'a ServerState,
    reply_q: &'a str,
    msg_id: &'a str,
    outcome: Result<Payload, RemoteFailure>,
    deadline: Option<Instant>,
    signed: bool,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    let body = encode_reply(msg_id, &outcome).and_then(|b| sign_reply(&*shared.transport, reply_q, b, signed));
    drop(outcome);
    async move {
        let Some(body) = body else { return };
        let options = shared.transport.options();
        let give_up = {
            let missing = Instant::now() + options.rabbit.kombu_missing_consumer_retry_timeout;
            deadline.map_or(missing, |d| d.min(missing))
        };
        let destination = Destination::Reply { queue: reply_q.into() };
        let message = Outgoing { retry: Some(3), deadline: Some(give_up), ..Outgoing::new(body.clone()) };
        if let Err(e) = shared.transport.send(&destination, message).await {
            Box::pin(retry_reply(shared, reply_q, msg_id, body, give_up, e)).await;
        }
    }
}

/// The reply's body; `None` (logged) when it cannot be encoded.
fn encode_reply(msg_id: &str, outcome: &Result<Payload, RemoteFailure>) -> Option<Vec<u8>> {
    let null;
    let (result, failure) = match outcome {
        Ok(v) => (v, None),
        Err(f) => {
            null = Payload::null();
            (&null, Some(f))
        }
    };
    let unique_id = crate::id::NewId::new();
    let reply = ReplyRef { result, failure, ending: true, msg_id, unique_id: unique_id.as_str() };
    match reply.encode() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode reply");
            None
        }
    }
}

/// The reply `body`, signed for `reply_q` when the request was signed
/// ([`crate::signing`]); `None` (logged) when it cannot be.
fn sign_reply(
    transport: &dyn crate::transport::Transport,
    reply_q: &str,
    body: Vec<u8>,
    signed: bool,
) -> Option<bytes::Bytes> {
    let signing = match &transport.options().signing {
        Some(s) if signed => s,
        _ => return Some(body.into()),
    };
    match signing.sign(&body, &crate::signing::Binding::reply(reply_q)) {
        Ok(b) => Some(b.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign reply");
            None
        }
    }
}

/// Send `body` again, backing off, until `give_up`; `failed` is why the
/// first attempt did not go.
async fn retry_reply(
    shared: &ServerState,
    reply_q: &str,
    msg_id: &str,
    body: bytes::Bytes,
    give_up: Instant,
    mut failed: crate::RpcError,
) {
    let destination = Destination::Reply { queue: reply_q.into() };
    let mut pause = Duration::from_millis(50);
    loop {
        if Instant::now() + pause >= give_up {
            tracing::warn!(error = %failed, reply_q, msg_id, "dropping reply: reply queue unreachable");
            return;
        }
        tracing::debug!(error = %failed, reply_q, "reply not delivered yet; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        let message = Outgoing { retry: Some(3), deadline: Some(give_up), ..Outgoing::new(body.clone()) };
        match shared.transport.send(&destination, message).await {
            Ok(()) => return,
            Err(e) => failed = e,
        }
    }
}
