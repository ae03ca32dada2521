//! Serving one request: admit it, run it through the layers into the
//! dispatcher (with call-monitor heartbeats while it runs), reply, run the
//! work the layers left for after the reply, and settle the delivery.

use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;

use super::{
    intake::{admit, settle_in_flight, Admitted, Settle},
    reply::{send_reply, spawn_heartbeat},
    serving::Served,
    ServerState,
};
use crate::{
    layer::{AfterReply, Call, CallKind},
    transport::{Acknowledge, Delivery},
    wire::Request,
    Payload, Result, RpcError,
};

/// Serve one delivery from start to end.
pub(super) async fn handle(shared: &ServerState, delivery: Delivery, served: Served) {
    let Some(admitted) = admit(shared, delivery).await else { return };
    let request = &admitted.request;
    // A root span: a request served in its caller's task is not part of the
    // caller's. `error.class` is recorded when the method fails.
    let span = tracing::info_span!(parent: None, "rpc", request_id = %request.context.request_id, topic = %shared.topic,
        method = %request.method, error.class = tracing::field::Empty);
    serve(shared, admitted, served).instrument(span).await;
}

async fn serve(shared: &ServerState, admitted: Admitted, served: Served) {
    let Admitted { mut request, acker, deadline, delivery_count } = admitted;
    // What is needed after the dispatch is taken out of the request, not copied.
    let (msg_id, reply_q) = (request.msg_id.take(), request.reply_q.take());
    let unique_id = std::mem::take(&mut request.unique_id);
    let method = std::mem::take(&mut request.method);
    let started = Instant::now();
    // Only layers leave work for after the reply.
    let after_reply = if shared.layers.is_empty() { AfterReply::now() } else { AfterReply::deferred() };
    let monitor = match (&msg_id, &reply_q, request.monitor_timeout) {
        (Some(msg_id), Some(reply_q), Some(t)) if t > 0.0 => Some((msg_id.as_str(), reply_q.as_str(), t)),
        _ => None,
    };
    let outcome = dispatch(shared, request, msg_id.is_some(), monitor, &method, after_reply.clone()).await;
    log_outcome(&outcome, &method, msg_id.is_some(), started);
    let failed_cast = outcome.is_err() && msg_id.is_none();
    if let (Some(msg_id), Some(reply_q)) = (&msg_id, &reply_q) {
        send_reply(shared, reply_q, msg_id, outcome.map_err(|e| e.to_failure()), deadline).await;
    }
    if served == Served::InCallersTask && after_reply.is_pending() {
        // The caller's task has its reply: let it go on first.
        tokio::task::yield_now().await;
    }
    after_reply.run();
    if let Some(acker) = acker {
        settle(shared, &unique_id, failed_cast, delivery_count, acker).await;
    }
}

/// Run the request through the layers into the dispatcher, sending
/// call-monitor heartbeats meanwhile when the caller asked for them. A
/// panicking method is an error, never a dead server.
///
/// `monitor`: the call's `msg_id`, reply address and call-monitor timeout,
/// when it asked for heartbeats.
async fn dispatch(
    shared: &ServerState,
    request: Request,
    is_call: bool,
    monitor: Option<(&str, &str, f64)>,
    method: &str,
    after_reply: AfterReply,
) -> Result<Payload> {
    let heartbeat =
        monitor.map(|(msg_id, reply_q, t)| spawn_heartbeat(shared, reply_q.to_owned(), msg_id.to_owned(), t));
    let running = if shared.layers.is_empty() {
        // Nothing to see the request as a `Call`: straight to the method.
        let Request { context, namespace, version, args, .. } = request;
        shared.dispatcher.dispatch(context, namespace.as_deref(), version.as_deref(), method, args)
    } else {
        let call = Call {
            kind: if is_call { CallKind::Call } else { CallKind::Cast },
            ctx: request.context,
            topic: shared.topic.clone(),
            server: Some(shared.server.clone()),
            namespace: request.namespace,
            version: request.version,
            method: method.to_owned(),
            args: request.args,
            after_reply,
        };
        shared.layers.run(call, shared.end.clone())
    };
    let outcome = match std::panic::AssertUnwindSafe(running).catch_unwind().await {
        Ok(r) => r,
        Err(_) => Err(RpcError::remote("Panic", "nova_rpc.server", format!("method {method} panicked"))),
    };
    if let Some(h) = heartbeat {
        h.abort();
    }
    outcome
}

fn log_outcome(outcome: &Result<Payload>, method: &str, is_call: bool, started: Instant) {
    match outcome {
        Ok(_) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "served"),
        // The caller gets the error back.
        Err(e) if is_call => tracing::info!(error = %e, class = e.class(), "method failed"),
        // Nobody else will ever see this one.
        Err(e) => tracing::warn!(method, class = e.class(), error = %e, "cast failed"),
    }
    if let Err(e) = outcome {
        tracing::Span::current().record("error.class", e.class());
    }
}

/// At-least-once: a failed cast goes back to the queue, or to the
/// dead-letter queue on its last attempt; anything else is done.
async fn settle(
    shared: &ServerState,
    unique_id: &str,
    failed_cast: bool,
    delivery_count: u32,
    acker: Box<dyn Acknowledge>,
) {
    let how = match (failed_cast, shared.max_deliveries) {
        (true, Some(max)) if delivery_count >= max => Settle::Reject,
        (true, _) => Settle::Requeue,
        (false, _) => Settle::Ack,
    };
    if matches!(how, Settle::Requeue) {
        tracing::warn!(delivery = delivery_count + 1, "cast failed; handing it back for another attempt");
    }
    settle_in_flight(shared, unique_id, how, acker).await;
}
