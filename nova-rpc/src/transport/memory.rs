//! The in-process transport: `memory://[name]`.
//!
//! A real broker for one process, not a mock: named queues with competing
//! consumers, a topic exchange per `control_exchange` binding `topic` and
//! `topic.server`, one fanout queue per server, reply queues that refuse
//! messages when they are gone (`mandatory`), TTLs on calls, and
//! acknowledgements with requeue. Transports built from the same URL in one
//! process share one bus; a different name (`memory://test-42`) is a
//! separate, isolated bus.
//!
//! Nothing here has a task of its own. A consumer takes messages out of its
//! queues itself; a message for an idle server that serves directly (see
//! [`InlineServing`]) is handed to it in the sender's task, and a reply goes
//! straight to the caller's [`ReplySink`]. A call whose method does not wait
//! is therefore served start to finish without leaving the caller's task.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, OnceLock, Weak},
    time::Instant,
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    Acked, Acknowledge, Delivery, Destination, InlineServing, ListenSpec, Listener, NotificationQueue,
    NotificationSpec, Outgoing, QueueStats, ReplyQueue, ReplySink, Source, Transport, TransportOptions, TransportUrl,
};
use crate::{lock, Result, RpcError};

struct Message {
    body: Bytes,
    deadline: Option<Instant>,
    /// When it was first queued.
    born: Instant,
    /// How often it was handed back.
    returns: u32,
}

/// An at-least-once queue's limit: after `max` returns, to `dead`.
struct DeadLetter {
    max: u32,
    dead: Arc<Queue>,
}

/// A consumer waiting for messages; it is woken by the first queue it
/// waits on that receives one, or serves the message on the spot.
#[derive(Default)]
struct Waiter {
    wake: Notify,
    direct: OnceLock<Arc<dyn InlineServing>>,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Message>,
    /// Consumers listening to it.
    consumers: u32,
    /// Consumers with nothing to do, in the order they started waiting.
    waiting: VecDeque<Arc<Waiter>>,
}

/// A queue whose consumers take messages straight out of it: a push wakes
/// one waiting consumer, which takes the message itself, so a message
/// crosses no task of the transport's own.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    dead_letter: OnceLock<DeadLetter>,
    /// At most this many ready messages, the oldest dropped first (a
    /// notification queue nobody reads must not grow without end here).
    limit: OnceLock<usize>,
}

/// How many notifications a default notification queue keeps for a
/// listener that has not come yet.
pub const NOTIFICATION_BACKLOG: usize = 10_000;

impl Queue {
    /// Take a message back; past the at-least-once limit it goes to the
    /// dead-letter queue instead.
    fn give_back(&self, mut message: Message) {
        message.returns += 1;
        match self.dead_letter.get() {
            Some(dl) if message.returns > dl.max => {
                dl.dead.enqueue(Message { returns: 0, born: Instant::now(), ..message })
            }
            _ => self.enqueue(message),
        }
    }

    /// A new message: served on the spot by an idle consumer that serves
    /// directly and has room, else queued.
    fn offer(self: &Arc<Self>, message: Message) {
        // Inside too many requests served in place (a method that casts to
        // itself, say), queue it rather than grow the stack.
        let Some(_nested) = InlineDepth::enter() else { return self.enqueue(message) };
        let idle = {
            let mut state = lock(&self.state);
            let direct = state.messages.is_empty() && state.waiting.front().is_some_and(|w| w.direct.get().is_some());
            // The consumer stays idle, behind the others: they take turns.
            direct.then(|| state.waiting.pop_front()).flatten().inspect(|w| state.waiting.push_back(w.clone()))
        };
        match idle.and_then(|w| w.direct.get().and_then(|d| d.reserve())) {
            Some(serve) => serve(delivery(self.clone(), message)),
            None => self.enqueue(message),
        }
    }

    /// Queue a message and wake the consumer waiting longest.
    fn enqueue(&self, message: Message) {
        let waiter = {
            let mut state = lock(&self.state);
            state.messages.push_back(message);
            if let Some(&limit) = self.limit.get() {
                while state.messages.len() > limit {
                    state.messages.pop_front();
                }
            }
            state.waiting.pop_front()
        };
        if let Some(w) = waiter {
            w.wake.notify_one();
        }
    }

    /// The next live message, or `me` registered as waiting for one.
    fn take_or_wait(&self, me: &Arc<Waiter>) -> Option<Message> {
        let mut state = lock(&self.state);
        while let Some(m) = state.messages.pop_front() {
            if m.deadline.is_none_or(|d| d > Instant::now()) {
                return Some(m);
            }
        }
        if !state.waiting.iter().any(|w| Arc::ptr_eq(w, me)) {
            state.waiting.push_back(me.clone());
        }
        None
    }

    /// `me` stops waiting here. When a push already picked `me` to take a
    /// message it will not take from this queue, wake the next waiter.
    fn leave(&self, me: &Arc<Waiter>) {
        let next = {
            let mut state = lock(&self.state);
            let before = state.waiting.len();
            state.waiting.retain(|w| !Arc::ptr_eq(w, me));
            let was_waiting = state.waiting.len() < before;
            if was_waiting || state.messages.is_empty() {
                None
            } else {
                state.waiting.pop_front()
            }
        };
        if let Some(w) = next {
            w.wake.notify_one();
        }
    }
}

/// How deep requests served in place are nested on this thread.
struct InlineDepth;

impl InlineDepth {
    const MAX: u32 = 8;

    thread_local! {
        static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    fn enter() -> Option<Self> {
        Self::DEPTH.with(|d| (d.get() < Self::MAX).then(|| d.set(d.get() + 1))).map(|()| InlineDepth)
    }
}

impl Drop for InlineDepth {
    fn drop(&mut self) {
        Self::DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// A map by name. The names are this process's own, looked up a few times
/// per message, so they are hashed with foldhash rather than SipHash.
type Names<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Bus {
    queues: Names<Arc<Queue>>,
    /// Exchange → routing key → the queues bound with it.
    bindings: Names<Names<Vec<String>>>,
    fanout: Names<Vec<String>>,
    replies: Names<ReplySink>,
}

impl Bus {
    /// Declare queue `name` (if new) and bind it to `exchange` with `key`.
    fn bind(&mut self, exchange: &str, key: &str, name: &str) -> Arc<Queue> {
        let queue = self.queues.entry(name.to_owned()).or_default().clone();
        let bound = self.bindings.entry(exchange.to_owned()).or_default().entry(key.to_owned()).or_default();
        if !bound.iter().any(|q| q == name) {
            bound.push(name.to_owned());
        }
        queue
    }

    fn delete_queue(&mut self, name: &str) {
        self.queues.remove(name);
        let bound = self.bindings.values_mut().flat_map(|keys| keys.values_mut());
        for queues in self.fanout.values_mut().chain(bound) {
            queues.retain(|q| q != name);
        }
    }
}

type SharedBus = Arc<Mutex<Bus>>;

fn bus_named(name: &str) -> SharedBus {
    static BUSES: OnceLock<Mutex<HashMap<String, Weak<Mutex<Bus>>>>> = OnceLock::new();
    let mut buses = lock(BUSES.get_or_init(Default::default));
    if let Some(bus) = buses.get(name).and_then(Weak::upgrade) {
        return bus;
    }
    buses.retain(|_, w| w.strong_count() > 0);
    let bus = SharedBus::default();
    buses.insert(name.to_owned(), Arc::downgrade(&bus));
    bus
}

/// The in-process transport; see the module docs.
pub struct MemoryTransport {
    bus: SharedBus,
    name: String,
    options: TransportOptions,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryTransport(memory://{})", self.name)
    }
}

impl MemoryTransport {
    /// Join (or create) the bus named by the URL's host part.
    pub fn new(url: &TransportUrl, options: TransportOptions) -> Self {
        Self { bus: bus_named(&url.vhost), name: url.vhost.clone(), options }
    }

    fn lock(&self) -> MutexGuard<'_, Bus> {
        lock(&self.bus)
    }

    fn declare(&self, name: &str) -> Arc<Queue> {
        self.lock().queues.entry(name.to_owned()).or_default().clone()
    }

    /// A consumer of `queues`, counted on each.
    fn consumer(&self, queues: Vec<Arc<Queue>>, delete_on_stop: Vec<String>) -> Listener {
        for q in &queues {
            lock(&q.state).consumers += 1;
        }
        Listener::from_source(Consumer {
            queues,
            me: Arc::default(),
            turn: 0,
            stopped: false,
            bus: self.bus.clone(),
            delete_on_stop,
        })
    }
}

/// A server's consumer on its queues. It holds nothing back: a message
/// leaves its queue only when [`Source::next`] returns it, so competing
/// consumers share a backlog fairly and stopping hands nothing back.
struct Consumer {
    queues: Vec<Arc<Queue>>,
    me: Arc<Waiter>,
    /// Which queue to look at first, turning so that none starves.
    turn: usize,
    stopped: bool,
    bus: SharedBus,
    delete_on_stop: Vec<String>,
}

impl Consumer {
    fn leave_all(&self) {
        for q in &self.queues {
            q.leave(&self.me);
        }
    }

    fn take(&mut self) -> Option<(Arc<Queue>, Message)> {
        self.turn = (self.turn + 1) % self.queues.len();
        for i in 0..self.queues.len() {
            let queue = &self.queues[(self.turn + i) % self.queues.len()];
            if let Some(m) = queue.take_or_wait(&self.me) {
                return Some((queue.clone(), m));
            }
        }
        None
    }
}

/// A message handed to a consumer, settled through its queue.
fn delivery(queue: Arc<Queue>, message: Message) -> Delivery {
    let (redelivered, delivery_count, deadline) = (message.returns > 0, message.returns, message.deadline);
    let mut delivery = Delivery::new(message.body.clone(), Box::new(MemoryAck { queue, message: Some(message) }));
    delivery.redelivered = redelivered;
    delivery.delivery_count = delivery_count;
    delivery.deadline = deadline;
    delivery
}

#[async_trait]
impl Source for Consumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.stopped {
                return None;
            }
            if let Some((queue, message)) = self.take() {
                self.leave_all();
                return Some(delivery(queue, message));
            }
            self.me.wake.notified().await;
        }
    }

    fn serve_inline(&mut self, direct: Arc<dyn InlineServing>) {
        let _ = self.me.direct.set(direct);
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.leave_all();
        for q in &self.queues {
            let mut state = lock(&q.state);
            state.consumers = state.consumers.saturating_sub(1);
        }
        let mut bus = lock(&self.bus);
        for name in &self.delete_on_stop {
            bus.delete_queue(name);
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settles a message through its queue. Dropped unsettled (its request
/// abandoned at shutdown), it goes back to the queue, as a broker gives back
/// what a closed channel held.
struct MemoryAck {
    queue: Arc<Queue>,
    message: Option<Message>,
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.queue.give_back(message);
        }
    }
}

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn ack(mut self: Box<Self>) -> Acked {
        self.message = None;
        Acked::Done
    }

    async fn requeue(self: Box<Self>) {}

    async fn reject(mut self: Box<Self>) {
        if let (Some(message), Some(dl)) = (self.message.take(), self.queue.dead_letter.get()) {
            dl.dead.enqueue(message);
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn send(&self, destination: &Destination<'_>, message: Outgoing) -> Result<()> {
        if message.body.len() > self.options.max_message_size {
            return Err(RpcError::MessageTooLarge { size: message.body.len(), max: self.options.max_message_size });
        }
        let deadline = message.ttl.map(|t| Instant::now() + t);
        let bus = self.lock();
        if let Destination::Reply { queue } = destination {
            // Straight to the waiting caller, in this task.
            let sink = bus.replies.get(queue.as_ref()).cloned();
            drop(bus);
            return match sink {
                Some(sink) => {
                    sink(message.body);
                    Ok(())
                }
                None => Err(RpcError::Transport(format!("reply queue {queue} does not exist (NO_ROUTE)"))),
            };
        }
        let mut bus = bus;
        if let Destination::Notification { exchange, routing_key } = destination {
            let _ = bus.bind(exchange, routing_key, routing_key).limit.set(NOTIFICATION_BACKLOG);
        }
        let names: &[String] = match destination {
            Destination::Topic { exchange, routing_key } | Destination::Notification { exchange, routing_key } => {
                let bound = bus.bindings.get(exchange.as_ref()).and_then(|keys| keys.get(routing_key.as_ref()));
                bound.map(Vec::as_slice).unwrap_or_default()
            }
            Destination::Fanout { topic } => bus.fanout.get(topic.as_ref()).map(Vec::as_slice).unwrap_or_default(),
            Destination::Reply { .. } => unreachable!("handled above"),
        };
        let queues: Vec<Arc<Queue>> = names.iter().filter_map(|n| bus.queues.get(n).cloned()).collect();
        // Offered outside the bus lock: a server may serve it on the spot and send.
        drop(bus);
        if queues.is_empty() {
            if message.mandatory {
                return Err(RpcError::Unroutable { destination: format!("{destination:?}") });
            }
            tracing::debug!(?destination, "memory transport: message routed to no queue");
        }
        for queue in queues {
            queue.offer(Message { body: message.body.clone(), deadline, born: Instant::now(), returns: 0 });
        }
        Ok(())
    }

    async fn listen(&self, spec: ListenSpec) -> Result<Listener> {
        let server_key = format!("{}.{}", spec.topic, spec.server);
        let fanout_name = format!("{}_fanout_{}", spec.topic, crate::id::new_id());
        let dead = spec.max_deliveries.map(|max| (max, self.declare(&super::dead_letter_queue(&spec.topic))));
        let mut queues = Vec::new();
        let keys = [(&spec.topic, spec.queues.shared()), (&server_key, spec.queues.own())];
        for (key, _) in keys.into_iter().filter(|(_, consumed)| *consumed) {
            let q = self.lock().bind(&spec.exchange, key, key);
            if let Some((max, dead)) = &dead {
                let _ = q.dead_letter.set(DeadLetter { max: *max, dead: dead.clone() });
            }
            queues.push(q);
        }
        let mut delete_on_stop = Vec::new();
        if spec.queues.own() {
            queues.push(self.declare(&fanout_name));
            self.lock().fanout.entry(spec.topic.clone()).or_default().push(fanout_name.clone());
            delete_on_stop.push(fanout_name);
        }
        Ok(self.consumer(queues, delete_on_stop))
    }

    async fn listen_notifications(&self, spec: NotificationSpec) -> Result<Listener> {
        let private = format!("notifications_listen_{}", crate::id::new_id());
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut bus = self.lock();
        for (exchange, key) in &spec.bindings {
            let name = match &spec.queue {
                NotificationQueue::Shared => key,
                NotificationQueue::Pool(pool) => pool,
                NotificationQueue::Private => &private,
            };
            let q = bus.bind(exchange, key, name);
            if spec.queue == NotificationQueue::Shared {
                let _ = q.limit.set(NOTIFICATION_BACKLOG);
            }
            if !queues.iter().any(|known| Arc::ptr_eq(known, &q)) {
                queues.push(q);
            }
        }
        drop(bus);
        let delete_on_stop = if spec.queue == NotificationQueue::Private { vec![private] } else { Vec::new() };
        Ok(self.consumer(queues, delete_on_stop))
    }

    async fn listen_replies(&self, queue: &str, sink: ReplySink) -> Result<ReplyQueue> {
        self.lock().replies.insert(queue.to_owned(), sink);
        let (bus, queue) = (self.bus.clone(), queue.to_owned());
        Ok(ReplyQueue::new(move || {
            lock(&bus).replies.remove(&queue);
        }))
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }

    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>> {
        let bus = self.lock();
        let now = Instant::now();
        Ok(queues
            .iter()
            .filter_map(|name| {
                let state = lock(&bus.queues.get(name)?.state);
                let live = state.messages.iter().filter(|m| m.deadline.is_none_or(|d| d > now));
                let (messages, oldest) =
                    live.fold((0u64, None::<Instant>), |(n, o), m| (n + 1, Some(o.map_or(m.born, |o| o.min(m.born)))));
                Some(QueueStats {
                    queue: name.clone(),
                    messages,
                    consumers: state.consumers,
                    oldest_age_seconds: Some(oldest.map_or(0.0, |o| now.duration_since(o).as_secs_f64())),
                })
            })
            .collect())
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::{ListenSpec, Queues};

    fn bus(name: &str) -> MemoryTransport {
        let url = TransportUrl::parse(&format!("memory://{name}")).expect("url");
        MemoryTransport::new(&url, TransportOptions::new(format!("memory://{name}")))
    }

    fn spec(topic: &str, server: &str) -> ListenSpec {
        ListenSpec {
            exchange: "nova".into(),
            topic: topic.into(),
            server: server.into(),
            prefetch: 8,
            durable: false,
            max_deliveries: None,
            queues: Queues::All,
        }
    }

    fn topic(routing_key: &str) -> Destination<'_> {
        Destination::Topic { exchange: "nova".into(), routing_key: routing_key.into() }
    }

    /// The next message's body, acknowledged.
    async fn next(listener: &mut Listener) -> String {
        let delivery = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a message within 5 s")
            .expect("the listener is open");
        let (body, acker) = delivery.into_parts();
        acker.ack().await;
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn a_server_message_reaches_that_server_only() {
        let t = bus("unit-direct");
        let (mut h1, mut h2) = (t.listen(spec("t", "h1")).await.unwrap(), t.listen(spec("t", "h2")).await.unwrap());
        t.send(&topic("t.h2"), Outgoing::new("for h2")).await.unwrap();
        // A sentinel behind it on h1's own queue: h1 would see "for h2" first.
        t.send(&topic("t.h1"), Outgoing::new("sentinel")).await.unwrap();
        assert_eq!(next(&mut h2).await, "for h2");
        assert_eq!(next(&mut h1).await, "sentinel");
    }

    #[tokio::test]
    async fn topic_messages_are_shared_between_the_topics_servers() {
        let t = bus("unit-shared");
        let (mut h1, mut h2) = (t.listen(spec("t", "h1")).await.unwrap(), t.listen(spec("t", "h2")).await.unwrap());
        for i in 0..4 {
            t.send(&topic("t"), Outgoing::new(format!("m{i}"))).await.unwrap();
        }
        // Each message is taken once, by one of them (competing consumers).
        let stats = t.queue_stats(&["t".into()]).await.unwrap();
        assert_eq!((stats[0].messages, stats[0].consumers), (4, 2));
        let mut got = vec![next(&mut h1).await, next(&mut h2).await, next(&mut h1).await, next(&mut h2).await];
        got.sort();
        assert_eq!(got, ["m0", "m1", "m2", "m3"]);
        assert_eq!(t.queue_stats(&["t".into()]).await.unwrap()[0].messages, 0);
    }

    #[tokio::test]
    async fn fanout_reaches_every_server() {
        let t = bus("unit-fanout");
        let (mut h1, mut h2) = (t.listen(spec("t", "h1")).await.unwrap(), t.listen(spec("t", "h2")).await.unwrap());
        t.send(&Destination::Fanout { topic: "t".into() }, Outgoing::new("all")).await.unwrap();
        assert_eq!((next(&mut h1).await, next(&mut h2).await), ("all".into(), "all".into()));
    }

    #[tokio::test]
    async fn a_message_handed_back_is_delivered_again() {
        let t = bus("unit-requeue");
        let mut h1 = t.listen(spec("t", "h1")).await.unwrap();
        t.send(&topic("t"), Outgoing::new("again")).await.unwrap();
        let delivery = h1.recv().await.expect("delivered");
        delivery.into_parts().1.requeue().await;
        assert_eq!(next(&mut h1).await, "again");
    }

    #[tokio::test]
    async fn unroutable_and_gone_destinations_are_errors() {
        let t = bus("unit-unroutable");
        let mandatory = Outgoing { mandatory: true, ..Outgoing::new("x") };
        let e = t.send(&topic("nobody"), mandatory).await.unwrap_err();
        assert!(matches!(e, RpcError::Unroutable { .. }), "{e:?}");
        // Without `mandatory` it is dropped, as a broker drops it.
        t.send(&topic("nobody"), Outgoing::new("x")).await.unwrap();
        let e = t.send(&Destination::Reply { queue: "reply_gone".into() }, Outgoing::new("x")).await.unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[tokio::test]
    async fn an_expired_message_is_not_delivered() {
        let t = bus("unit-ttl");
        let mut h1 = t.listen(spec("t", "h1")).await.unwrap();
        t.send(&topic("t"), Outgoing::new("kept")).await.unwrap();
        let expired = Outgoing { ttl: Some(Duration::ZERO), ..Outgoing::new("expired") };
        t.send(&topic("t"), expired).await.unwrap();
        t.send(&topic("t"), Outgoing::new("sentinel")).await.unwrap();
        assert_eq!(next(&mut h1).await, "kept");
        assert_eq!(next(&mut h1).await, "sentinel", "the expired message in between was dropped");
    }
}
