//! Serving one request: admit it, run it through the layers into the
//! dispatcher (with call-monitor heartbeats while it runs), reply, run the
//! work the layers left for after the reply, and settle the delivery.

use std::{future::Future, time::Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use super::{
    intake::{admit, settle_in_flight, Admission, Admitted, Settle},
    reply::{send_reply, spawn_heartbeat},
    ServerState,
};
use crate::{
    layer::{AfterReply, Call, CallKind, LayerFuture},
    transport::{Acknowledge, Delivery},
    wire::Request,
    Payload, Result, RpcError,
};

/// Where a request started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// In the server's loop (or, once it waited, its own task).
    InLoop,
    /// In the task that sent it ([`InlineServing`](crate::transport::InlineServing)).
    InCallersTask,
}

/// Serve one delivery from start to end.
pub(super) async fn handle(shared: &ServerState, delivery: Delivery, served: Served) {
    // Scoped, so the admitted request takes no room in the future while
    // it is served (a binding's storage lasts to the end of its block,
    // even once it is moved out).
    let serving = {
        let Some(admitted) = take_in(shared, delivery).await else { return };
        let request = &admitted.request;
        // A root span: a request served in its caller's task is not part of
        // the caller's. `error.class` is recorded when the method fails.
        let span = tracing::info_span!(parent: None, "rpc", request_id = %request.context.request_id, topic = %shared.topic,
            method = %request.method, error.class = tracing::field::Empty);
        // The method starts inside the span too.
        span.in_scope(|| serve(shared, admitted, served)).instrument(span)
    };
    serving.await;
}

/// The delivery admitted (acknowledged first when at-most-once); `None`
/// when it is not to be served, once it is settled.
async fn take_in(shared: &ServerState, delivery: Delivery) -> Option<Admitted> {
    let Admission { admitted, waiting } = admit(shared, delivery);
    let acked = match waiting {
        Some(waiting) => waiting.await,
        None => return admitted,
    };
    admitted.filter(|a| super::intake::acknowledged(shared, &a.request.unique_id, acked))
}

/// Serve an admitted request. The request is handed to the method before
/// anything is awaited, so the future holds what the reply and the
/// settling need, not the request: every request's future is allocated
/// once per call, and its size counts.
fn serve(shared: &ServerState, admitted: Admitted, served: Served) -> impl Future<Output = ()> + Send + '_ {
    let Admitted { mut request, acker, deadline, delivery_count } = admitted;
    super::slot::set_deadline(deadline);
    // What is needed after the dispatch is taken out of the request, not copied.
    let (msg_id, reply_q) = (request.msg_id.take(), request.reply_q.take());
    let unique_id = std::mem::take(&mut request.unique_id);
    let method = std::mem::take(&mut request.method);
    let started = Instant::now();
    // A signed request's replies are signed too.
    let signed = request.context.signed_by.is_some();
    // Only layers leave work for after the reply.
    let after_reply = if shared.layers.is_empty() { AfterReply::now() } else { AfterReply::deferred() };
    let heartbeat = match (&msg_id, &reply_q, request.monitor_timeout) {
        (Some(msg_id), Some(reply_q), Some(t)) if t > 0.0 => {
            Some(spawn_heartbeat(shared, reply_q.clone(), msg_id.clone(), t, signed))
        }
        _ => None,
    };
    let running = dispatch(shared, request, msg_id.is_some(), &method, after_reply.clone());
    async move {
        // A panicking method is an error, never a dead server.
        let outcome = match std::panic::AssertUnwindSafe(running).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(RpcError::remote("Panic", "nova_rpc.server", format!("method {method} panicked"))),
        };
        if let Some(h) = heartbeat {
            h.abort();
        }
        log_outcome(&outcome, &method, msg_id.is_some(), started);
        let failed_cast = outcome.is_err() && msg_id.is_none();
        if let (Some(msg_id), Some(reply_q)) = (&msg_id, &reply_q) {
            send_reply(shared, reply_q, msg_id, outcome.map_err(|e| e.to_failure()), deadline, signed).await;
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
}

/// The request on its way through the layers into the dispatcher (the
/// call-monitor heartbeats, if asked for, are already running).
fn dispatch(
    shared: &ServerState,
    request: Request,
    is_call: bool,
    method: &str,
    after_reply: AfterReply,
) -> LayerFuture {
    if shared.layers.is_empty() {
        // Nothing to see the request as a `Call`: straight to the method.
        let Request { context, namespace, version, args, .. } = request;
        return shared.dispatcher.dispatch(context, namespace.as_deref(), version.as_deref(), method, args);
    }
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
}

fn log_outcome(outcome: &Result<Payload>, method: &str, is_call: bool, started: Instant) {
    match outcome {
        Ok(_) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "served"),
        // The caller gets the error back.
        Err(e) if is_call => {
            tracing::info!(error = %crate::mask::mask_password(&e.to_string()), class = e.class(), "method failed")
        }
        // Nobody else will ever see this one.
        Err(e) => {
            tracing::warn!(method, class = e.class(), error = %crate::mask::mask_password(&e.to_string()), "cast failed")
        }
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
