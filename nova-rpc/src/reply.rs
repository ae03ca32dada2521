//! The reply router: one reply queue per client, each reply handed to the
//! call waiting on its `_msg_id`, and every waiting call's deadline.
//!
//! The transport hands each reply to the router as it arrives (a
//! [`ReplySink`](crate::transport::ReplySink)), and the router hands it on to
//! the caller: no task of its own sits between the reply queue and the
//! caller. Deadlines are kept here too, in order, with one task that sleeps
//! until the earliest: a call arms no timer of its own, so a quick call
//! never wakes the runtime's timer to re-arm it. A call-monitor heartbeat
//! moves its call's deadline on; a call past its deadline is told by its
//! inbox closing.
//!
//! Deadlines are tokio [`Instant`]s, so tests of them run on paused time.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    dedupe::{Id, SeenIds},
    lock,
    transport::{ReplyQueue, Transport},
    wire::{self, Reply},
    Payload, Result, RpcError,
};

/// Where one call's replies wait for it: what a channel does, in one
/// allocation (most calls get exactly one reply, which needs no queue).
/// Closed once its [`Waiter`] is gone.
struct Inbox {
    state: Mutex<Replies>,
    ready: Notify,
}

/// The replies not yet taken, and whether more can come.
#[derive(Default)]
struct Replies {
    first: Option<Reply>,
    more: VecDeque<Reply>,
    closed: bool,
}

impl Inbox {
    fn new() -> Arc<Self> {
        Arc::new(Self { state: Mutex::default(), ready: Notify::new() })
    }

    fn push(&self, reply: Reply) {
        {
            let mut state = lock(&self.state);
            match state.first {
                None if state.more.is_empty() => state.first = Some(reply),
                _ => state.more.push_back(reply),
            }
        }
        self.ready.notify_one();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// The next reply; `None` once closed and empty.
    async fn next(&self) -> Option<Reply> {
        loop {
            {
                let mut state = lock(&self.state);
                if let Some(reply) = state.first.take().or_else(|| state.more.pop_front()) {
                    return Some(reply);
                }
                if state.closed {
                    return None;
                }
            }
            // A push or close in between left a permit: no wake-up is lost.
            self.ready.notified().await;
        }
    }
}

/// One waiting call; dropping it closes its inbox.
struct Waiter {
    inbox: Arc<Inbox>,
    /// When the call gives up unless a heartbeat moves this on.
    due: Instant,
    /// The call's own timeout: no heartbeat moves `due` past it.
    end: Instant,
    /// The call-monitor timeout, when the call asked for heartbeats.
    monitor: Option<Duration>,
    /// Whether its replies must be signed (the call was).
    signed: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// The waiting calls, by `_msg_id` (kept as its 128 bits: the ids are
/// this client's own, so nothing here is allocated per call, and a plain
/// seeded hash is enough).
#[derive(Default)]
struct Pending {
    waiters: HashMap<Id, Waiter, foldhash::fast::RandomState>,
    /// `(due, msg_id)` of every waiter, earliest first.
    due: BTreeSet<(Instant, Id)>,
    /// When the sweeper wakes next (`None`: it waits to be told).
    armed: Option<Instant>,
}

impl Pending {
    fn set_due(&mut self, msg_id: &Id, due: Instant) {
        if let Some(w) = self.waiters.get_mut(msg_id) {
            let old = std::mem::replace(&mut w.due, due);
            self.due.remove(&(old, msg_id.clone()));
            self.due.insert((due, msg_id.clone()));
        }
    }

    fn remove(&mut self, msg_id: &Id) {
        if let Some(w) = self.waiters.remove(msg_id) {
            self.due.remove(&(w.due, msg_id.clone()));
        }
    }

    /// Drop every call due by `now` (closing its inbox); the next due time.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some((due, msg_id)) = self.due.first().cloned() {
            if due > now {
                break;
            }
            self.due.pop_first();
            self.waiters.remove(&msg_id);
        }
        self.armed = self.due.first().map(|(due, _)| *due);
        self.armed
    }
}

struct State {
    /// The reply queue (what a signed reply is bound to).
    queue: String,
    /// The keys that verify signed replies.
    signing: Option<Arc<crate::signing::Signing>>,
    pending: Mutex<Pending>,
    /// Wakes the sweeper when a call is due before it would wake.
    rearm: Notify,
    /// Replies seen, so a duplicate is dropped.
    seen: Mutex<SeenIds>,
}

impl State {
    /// Make sure the sweeper wakes by `due`. The first call of a quiet
    /// client wakes it; later ones, due after it, do not.
    fn arm(&self, pending: &mut Pending, due: Instant) {
        if pending.armed.is_none_or(|armed| due < armed) {
            pending.armed = Some(due);
            self.rearm.notify_one();
        }
    }

    /// Hand one reply to the call waiting for it.
    fn route(&self, body: &[u8]) {
        let reply = match wire::decode_reply(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "dropping malformed reply");
                return;
            }
        };
        if !reply.unique_id.is_empty() && !lock(&self.seen).insert(&reply.unique_id) {
            tracing::debug!(msg_id = %reply.msg_id, "dropping duplicate reply");
            return;
        }
        let id = Id::of(&reply.msg_id);
        let mut pending = lock(&self.pending);
        let Some(waiter) = pending.waiters.get(&id) else {
            drop(pending);
            tracing::debug!(msg_id = %reply.msg_id, "dropping reply nobody waits for (late or unknown)");
            return;
        };
        // A server that refuses the signature cannot sign its refusal: such a
        // failure is taken unsigned (forging one only fails the call).
        let refusal = reply.ending
            && reply.failure.as_ref().is_some_and(|f| {
                f.module == "nova_rpc.signing"
                    && ["SignatureRequired", "BadSignature", "ReplayedRequest"].contains(&f.class.as_str())
            });
        let reply = if waiter.signed && !refusal {
            match self.verified(body, &reply.msg_id) {
                Ok(reply) => reply,
                Err(why) => {
                    drop(pending);
                    tracing::warn!(msg_id = %reply.msg_id, error = %why, "dropping a reply to a signed call that does not verify");
                    return;
                }
            }
        } else {
            reply
        };
        let moved = match (reply.ending, waiter.monitor) {
            // A call-monitor heartbeat: the server is still working on it.
            (false, Some(monitor)) => Some((Instant::now() + monitor).min(waiter.end)),
            _ => None,
        };
        waiter.inbox.push(reply);
        if let Some(due) = moved {
            pending.set_due(&id, due);
        }
    }
}

impl State {
    /// The reply in `body` as its signature vouches for it, if it is signed
    /// for this queue and answers `msg_id`.
    fn verified(&self, body: &[u8], msg_id: &str) -> std::result::Result<Reply, String> {
        let signing = self.signing.as_ref().ok_or("no signing keys here")?;
        let v = signing.verify(body, &[crate::signing::Binding::reply(&self.queue)]).map_err(|e| e.to_string())?;
        let reply = wire::decode_reply_message(&v.message).map_err(|e| e.to_string())?;
        if reply.msg_id != msg_id {
            return Err(format!("the signed reply answers {}", reply.msg_id));
        }
        Ok(reply)
    }
}

/// Routes replies from a client's reply queue to the waiting calls; see the module docs.
pub struct ReplyRouter {
    queue: String,
    state: Arc<State>,
    sweeper: tokio::task::JoinHandle<()>,
    _replies: ReplyQueue,
}

impl std::fmt::Debug for ReplyRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyRouter").field("queue", &self.queue).field("pending", &self.pending()).finish()
    }
}

impl ReplyRouter {
    /// Declare a new `reply_<uuid>` queue and start routing its replies.
    pub(crate) async fn start(transport: &Arc<dyn Transport>) -> Result<Self> {
        let queue = transport.reply_queue_name();
        let state = Arc::new(State {
            queue: queue.clone(),
            signing: transport.options().signing.clone(),
            pending: Mutex::default(),
            rearm: Notify::new(),
            seen: Mutex::new(SeenIds::new(1024)),
        });
        let routed = state.clone();
        let replies = transport.listen_replies(&queue, Arc::new(move |body: bytes::Bytes| routed.route(&body))).await?;
        let sweeper = tokio::spawn(sweep(state.clone()));
        Ok(Self { queue, state, sweeper, _replies: replies })
    }

    /// The reply queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// How many calls are waiting for a reply.
    pub fn pending(&self) -> usize {
        lock(&self.state.pending).waiters.len()
    }

    /// Wait for replies to `msg_id` until `end`, or, with a call-monitor
    /// timeout, until no heartbeat came for that long once the request
    /// was sent ([`Expected::sent`]).
    /// A `signed` call takes only replies signed for this queue.
    pub(crate) fn expect(&self, msg_id: Id, end: Instant, monitor: Option<Duration>, signed: bool) -> Expected<'_> {
        let inbox = Inbox::new();
        let mut pending = lock(&self.state.pending);
        pending.waiters.insert(msg_id.clone(), Waiter { inbox: inbox.clone(), due: end, end, monitor, signed });
        pending.due.insert((end, msg_id.clone()));
        self.state.arm(&mut pending, end);
        Expected { state: &self.state, msg_id, monitor, inbox }
    }
}

impl Drop for ReplyRouter {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// Sleep until the earliest deadline, drop the calls that are due, repeat.
async fn sweep(state: Arc<State>) {
    loop {
        let next = lock(&state.pending).expire(Instant::now());
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = state.rearm.notified() => {}
                }
            }
            None => state.rearm.notified().await,
        }
    }
}

/// The replies to one call; dropping it forgets the call.
pub(crate) struct Expected<'a> {
    state: &'a State,
    msg_id: Id,
    monitor: Option<Duration>,
    inbox: Arc<Inbox>,
}

impl Expected<'_> {
    /// The call's answer: its ending reply's result or failure, the
    /// heartbeats and partial replies before it skipped; `None` once the
    /// inbox closed (the deadline, or a call-monitor timeout, passed).
    pub(crate) async fn ending(&mut self) -> Option<crate::Result<Payload>> {
        loop {
            let reply = self.next().await?;
            if reply.ending {
                return Some(match reply.failure {
                    Some(failure) => Err(RpcError::from_failure(failure)),
                    None => Ok(reply.result),
                });
            }
        }
    }

    /// The request is on its way: a call-monitor timeout starts counting.
    pub(crate) fn sent(&self) {
        if let Some(monitor) = self.monitor {
            let mut pending = lock(&self.state.pending);
            let Some(end) = pending.waiters.get(&self.msg_id).map(|w| w.end) else { return };
            let due = (Instant::now() + monitor).min(end);
            pending.set_due(&self.msg_id, due);
            self.state.arm(&mut pending, due);
        }
    }

    /// The next reply (a heartbeat or the answer); `None` once the call is past its deadline.
    pub(crate) async fn next(&mut self) -> Option<Reply> {
        self.inbox.next().await
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        lock(&self.state.pending).remove(&self.msg_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{self, Destination, Outgoing, TransportOptions};

    fn reply(msg_id: &str, ending: bool) -> Reply {
        Reply {
            result: crate::Payload::of(msg_id).unwrap(),
            failure: None,
            ending,
            msg_id: msg_id.to_owned(),
            unique_id: crate::id::new_id(),
        }
    }

    async fn router(name: &str) -> (Arc<dyn Transport>, ReplyRouter) {
        let t = transport::connect(TransportOptions::new(format!("memory://{name}"))).await.unwrap();
        let router = ReplyRouter::start(&t).await.unwrap();
        (t, router)
    }

    async fn send(t: &Arc<dyn Transport>, router: &ReplyRouter, reply: &Reply) {
        let body = wire::encode_reply(reply).unwrap();
        t.send(&Destination::Reply { queue: router.queue().into() }, Outgoing::new(body)).await.unwrap();
    }

    #[test]
    fn calls_expire_in_deadline_order() {
        let now = Instant::now();
        let mut pending = Pending::default();
        for (i, id) in ["c", "a", "b"].iter().enumerate() {
            let due = now + Duration::from_secs(3 - i as u64);
            pending
                .waiters
                .insert(Id::of(id), Waiter { inbox: Inbox::new(), due, end: due, monitor: None, signed: false });
            pending.due.insert((due, Id::of(id)));
        }
        // Due at +3 (c), +2 (a), +1 (b): at +2, b and a go.
        assert_eq!(pending.expire(now + Duration::from_secs(2)), Some(now + Duration::from_secs(3)));
        assert_eq!(pending.waiters.keys().collect::<Vec<_>>(), [&Id::of("c")]);
        assert_eq!(pending.expire(now + Duration::from_secs(3)), None);
        assert!(pending.waiters.is_empty() && pending.due.is_empty());
    }

    #[tokio::test]
    async fn each_reply_reaches_its_own_call() {
        let (t, router) = router("unit-reply-own").await;
        let end = Instant::now() + Duration::from_secs(30);
        let (mut first, mut second) =
            (router.expect(Id::of("m1"), end, None, false), router.expect(Id::of("m2"), end, None, false));
        assert_eq!(router.pending(), 2);
        send(&t, &router, &reply("m2", true)).await;
        send(&t, &router, &reply("m1", true)).await;
        assert_eq!(first.next().await.map(|r| r.msg_id), Some("m1".into()));
        assert_eq!(second.next().await.map(|r| r.msg_id), Some("m2".into()));
        drop((first, second));
        assert_eq!(router.pending(), 0, "a finished call is forgotten");
    }

    #[tokio::test]
    async fn a_duplicate_reply_is_dropped() {
        let (t, router) = router("unit-reply-dup").await;
        let mut call = router.expect(Id::of("m1"), Instant::now() + Duration::from_secs(30), None, false);
        let heartbeat = reply("m1", false);
        send(&t, &router, &heartbeat).await;
        send(&t, &router, &heartbeat).await;
        // A sentinel behind the copy: the copy would arrive first.
        send(&t, &router, &reply("m1", true)).await;
        assert!(!call.next().await.expect("the heartbeat").ending);
        assert!(call.next().await.expect("the answer").ending, "the copy of the heartbeat was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_sees_its_channel_close() {
        let (_t, router) = router("unit-reply-deadline").await;
        let started = Instant::now();
        let mut call = router.expect(Id::of("m1"), started + Duration::from_millis(100), None, false);
        let next = tokio::time::timeout(Duration::from_secs(10), call.next()).await.expect("the deadline is kept");
        assert!(next.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100), "not before its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_move_a_monitored_call_on_but_never_past_its_end() {
        let (t, router) = router("unit-reply-monitor").await;
        let started = Instant::now();
        let end = started + Duration::from_secs(30);
        let monitor = Duration::from_millis(200);
        let mut call = router.expect(Id::of("m1"), end, Some(monitor), false);
        call.sent();
        // Heartbeats every 100 ms for 600 ms keep the 200 ms monitor from firing.
        for _ in 0..6 {
            send(&t, &router, &reply("m1", false)).await;
            assert!(!call.next().await.expect("the call is alive").ending);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(600));
        // Then silence: the monitor fires, well before the call's own end.
        let next = tokio::time::timeout(Duration::from_secs(10), call.next()).await.expect("the monitor fires");
        assert!(next.is_none() && Instant::now() < end);

        let short_end = Instant::now() + Duration::from_millis(150);
        let mut capped = router.expect(Id::of("m2"), short_end, Some(Duration::from_secs(20)), false);
        capped.sent();
        send(&t, &router, &reply("m2", false)).await;
        assert!(!capped.next().await.expect("the heartbeat").ending);
        // The heartbeat asked for 20 s more; the call's end still holds.
        let next = tokio::time::timeout(Duration::from_secs(10), capped.next()).await.expect("the end holds");
        assert!(next.is_none());
    }
}
