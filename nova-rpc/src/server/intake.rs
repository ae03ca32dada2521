//! Taking a request in: refuse what is too large, badly signed or
//! malformed (telling the caller when its reply address can be read),
//! drop duplicates, dead-letter what failed too often, and settle
//! deliveries.

use std::time::Instant;

use super::{reply::send_reply, ServerState};
use crate::signing::Binding;
pub(super) use crate::transport::Settle;
use crate::{
    transport::{Acked, Acknowledge, Delivery},
    wire::{self, Request},
    RemoteFailure,
};

/// A request let in, with what settles its delivery (`None`: acknowledged
/// already, at-most-once).
pub(super) struct Admitted {
    pub(super) request: Request,
    pub(super) acker: Option<Box<dyn Acknowledge>>,
    pub(super) deadline: Option<Instant>,
    pub(super) delivery_count: u32,
}

/// What becomes of a delivery. Decided without waiting for anything; what
/// is left to wait for is handed back, so the future of a request that is
/// served makes no room for the (boxed) futures of one that is not.
pub(super) struct Admission<'a> {
    /// The request to serve, if it is served.
    pub(super) admitted: Option<Admitted>,
    /// What to wait for first: acknowledging (at-most-once, before the
    /// method runs, then [`acknowledged`]), or settling one that is not served.
    pub(super) waiting: Option<BoxFuture<'a>>,
}

impl<'a> Admission<'a> {
    fn settled(waiting: Option<BoxFuture<'a>>) -> Self {
        Self { admitted: None, waiting }
    }
}

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Acked> + Send + 'a>>;

/// Decode and check a delivery.
pub(super) fn admit(shared: &ServerState, delivery: Delivery) -> Admission<'_> {
    let (deadline, delivery_count) = (delivery.deadline, delivery.delivery_count);
    let (body, acker) = delivery.into_parts();
    let request = match check(shared, &body) {
        Ok(request) => request,
        Err((failure, reply_to)) => {
            return Admission::settled(Some(Box::pin(refuse(shared, acker, failure, reply_to, deadline))));
        }
    };
    // At-most-once records the id once acknowledged, as the method starts.
    // At-least-once records it only once the method succeeded, so a failed
    // attempt can be tried again, and
    // meanwhile holds it as in flight so concurrent copies run once: a copy
    // that arrives while the original runs (redelivered after a reconnect)
    // is settled with the original's outcome, so neither is lost.
    let Some(acker) = intake(shared, &request.unique_id, acker) else { return Admission::settled(None) };
    // At-least-once: handed back more than `max_deliveries` times (the
    // broker's x-delivery-count, which RabbitMQ 3.x and 4.x both keep), a
    // message is dead-lettered unrun.
    if let Some(max) = shared.max_deliveries.filter(|max| delivery_count > *max) {
        tracing::warn!(topic = %shared.topic, unique_id = %request.unique_id, attempts = delivery_count, max, "dead-lettering a message that failed too often");
        let unique_id = request.unique_id;
        return Admission::settled(Some(Box::pin(async move {
            settle_in_flight(shared, &unique_id, Settle::Reject, acker).await;
            Acked::Done
        })));
    }
    // oslo's default is at-most-once: acknowledge before dispatching.
    let (acker, waiting) = if shared.at_least_once { (Some(acker), None) } else { (None, Some(acker.ack())) };
    Admission { admitted: Some(Admitted { request, acker, deadline, delivery_count }), waiting }
}

/// Reject a refused request, and tell the caller why when its reply
/// address could be read.
async fn refuse(
    shared: &ServerState,
    acker: Box<dyn Acknowledge>,
    failure: RemoteFailure,
    reply_to: ReplyTo,
    deadline: Option<Instant>,
) -> Acked {
    malformed(&shared.topic);
    acker.reject().await;
    if let Some((msg_id, reply_q)) = reply_to {
        send_reply(shared, &reply_q, &msg_id, Err(failure), deadline, false).await;
    }
    Acked::Done
}

/// At-most-once, once the acknowledgement is through: whether the request
/// is served. Its id is recorded only now, when it is about to run, not on
/// receipt: a copy whose acknowledgement failed (its connection died) is
/// not served, and the broker's redelivery of it is not a duplicate. The
/// one copy that records the id first is served; when an acknowledgement
/// got no answer, the copy is served (once), as the broker may have it.
pub(super) fn acknowledged(shared: &ServerState, id: &str, acked: Acked) -> bool {
    match acked {
        Acked::Failed => {
            tracing::debug!(topic = %shared.topic, unique_id = %id, "not serving a message whose acknowledgement failed; the broker hands it out again");
            false
        }
        Acked::Done | Acked::Unknown => {
            let first = id.is_empty() || crate::lock(&shared.seen).insert(id);
            if !first {
                tracing::info!(topic = %shared.topic, unique_id = %id, "dropping duplicate message");
            }
            first
        }
    }
}

/// Who to tell about a refused request: its `msg_id` and `reply_q`.
type ReplyTo = Option<(String, String)>;

/// The request in `body`, or why it is refused and whom to tell.
fn check(shared: &ServerState, body: &[u8]) -> Result<Request, (RemoteFailure, ReplyTo)> {
    let max = shared.transport.options().max_message_size;
    if body.len() > max {
        tracing::warn!(topic = %shared.topic, size = body.len(), max, "rejecting message larger than max_message_size");
        let reply_to = match wire::decode_request(body) {
            Ok(r) => r.msg_id.zip(r.reply_q),
            Err(bad) => bad.msg_id.zip(bad.reply_q),
        };
        let reason = format!("message of {} bytes is larger than max_message_size ({max})", body.len());
        return Err((RemoteFailure::new("MessageTooLarge", "nova_rpc.server", reason), reply_to));
    }
    let verified = match verify_signature(shared, body) {
        Ok(verified) => verified,
        Err(e) => {
            tracing::warn!(topic = %shared.topic, error = %e, "refusing a request whose signature does not verify");
            let reply_to = wire::decode_request(body).ok().and_then(|r| r.msg_id.zip(r.reply_q));
            return Err((RemoteFailure::new(e.class(), "nova_rpc.signing", e.to_string()), reply_to));
        }
    };
    // On a signed topic only what the signature vouches for is served.
    let decoded = match &verified {
        None => wire::decode_request(body),
        Some(v) => wire::decode_request_message(&v.message),
    };
    let mut request = match decoded {
        Ok(request) => request,
        Err(bad) => {
            tracing::warn!(topic = %shared.topic, error = %bad, "rejecting malformed message");
            let reply_to = bad.msg_id.zip(bad.reply_q);
            return Err((RemoteFailure::new("MalformedMessage", "nova_rpc.wire", bad.reason), reply_to));
        }
    };
    if let Some(v) = verified {
        if let Err(e) = remember_signed(shared, &request, v.timestamp_ms) {
            tracing::warn!(topic = %shared.topic, error = %e, "refusing a signed request");
            let reply_to = request.msg_id.take().zip(request.reply_q.take());
            return Err((RemoteFailure::new(e.class(), "nova_rpc.signing", e.to_string()), reply_to));
        }
        request.context.signed_by = Some(v.key_id);
    }
    Ok(request)
}

/// A signed request's `_unique_id`, accepted once ([`crate::signing::Signing::remember`]).
fn remember_signed(
    shared: &ServerState,
    request: &wire::Request,
    timestamp_ms: i64,
) -> Result<(), crate::signing::SignatureError> {
    match &shared.transport.options().signing {
        Some(s) => s.remember(&format!("{}.{}", shared.topic, shared.server), &request.unique_id, timestamp_ms),
        None => Ok(()),
    }
}

/// Take a request in: `None` when it is a duplicate, already settled or
/// held beside its running original.
fn intake(shared: &ServerState, id: &str, acker: Box<dyn Acknowledge>) -> Option<Box<dyn Acknowledge>> {
    // At-most-once: a duplicate is found once acknowledged (`acknowledged`),
    // where the id is recorded: one look at the window per message.
    if id.is_empty() || !shared.at_least_once {
        return Some(acker);
    }
    let seen = crate::lock(&shared.seen);
    if !seen.contains(id) {
        match crate::lock(&shared.in_flight).entry(id.to_owned()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Vec::new());
                return Some(acker);
            }
            std::collections::hash_map::Entry::Occupied(mut running) => {
                tracing::info!(topic = %shared.topic, unique_id = %id, "a copy of a running message arrived; it ends as the original does");
                running.get_mut().push(acker);
                return None;
            }
        }
    }
    drop(seen);
    tracing::info!(topic = %shared.topic, unique_id = %id, "dropping duplicate message");
    let settle = acker.ack();
    tokio::spawn(settle);
    None
}

/// Settle an at-least-once message and every copy held beside it, and
/// remember its id as done unless it goes back to the queue.
pub(super) async fn settle_in_flight(shared: &ServerState, id: &str, how: Settle, acker: Box<dyn Acknowledge>) {
    let mut ackers = vec![acker];
    if !id.is_empty() {
        ackers.extend(crate::lock(&shared.in_flight).remove(id).unwrap_or_default());
        if !matches!(how, Settle::Requeue) {
            crate::lock(&shared.seen).insert(id);
        }
    }
    // The newest copy is the one a live channel holds (an older one may sit
    // on a connection that is gone): it carries the verdict, the others are acked.
    for (i, a) in ackers.into_iter().rev().enumerate() {
        match how {
            Settle::Requeue if i == 0 => a.requeue().await,
            Settle::Reject if i == 0 => a.reject().await,
            // The method ran: a redelivery after a failed ack is a duplicate.
            _ => {
                a.ack().await;
            }
        }
    }
}

/// On a signed topic, what `body`'s signature vouches for (sent to this
/// server's topic, its own queue or the topic's fanout); elsewhere `None`.
fn verify_signature(
    shared: &ServerState,
    body: &[u8],
) -> Result<Option<crate::signing::Verified>, crate::signing::SignatureError> {
    match &shared.transport.options().signing {
        Some(s) if s.applies_to(&shared.topic) => {
            s.verify(body, &Binding::served(&shared.exchange, &shared.topic, &shared.server)).map(Some)
        }
        _ => Ok(None),
    }
}

/// Labels of the malformed counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// Count a message refused as malformed or oversized on `topic`.
fn malformed(topic: &str) {
    type Malformed =
        prometheus_client::metrics::family::Family<TopicLabels, prometheus_client::metrics::counter::Counter>;
    static MALFORMED: std::sync::OnceLock<Malformed> = std::sync::OnceLock::new();
    let family = MALFORMED.get_or_init(|| {
        let family = Malformed::default();
        crate::metrics::register(
            "rpc_malformed_messages",
            "Messages refused as malformed or oversized",
            family.clone(),
        );
        family
    });
    family.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
}
