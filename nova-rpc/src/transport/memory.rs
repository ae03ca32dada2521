//! The in-process transport: `memory://[name]`.
//!
//! A real broker for one process, not a mock: named queues with competing
//! consumers, a topic exchange per `control_exchange` binding `topic` and
//! `topic.server`, one fanout queue per server, reply queues that refuse
//! messages when they are gone (`mandatory`), TTLs on calls, and
//! acknowledgements with requeue. Transports built from the same URL in one
//! process share one bus; a different name (`memory://test-42`) is a
//! separate, isolated bus.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Instant,
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    Acknowledge, Delivery, Destination, ListenSpec, Listener, Outgoing, Transport, TransportOptions, TransportUrl,
};
use crate::{Result, RpcError};

struct Message {
    body: Bytes,
    deadline: Option<Instant>,
    /// How often it was handed back.
    returns: u32,
}

/// An at-least-once queue's limit: after `max` returns, to `dead`.
struct DeadLetter {
    max: u32,
    dead: Arc<Queue>,
}

struct Queue {
    tx: mpsc::UnboundedSender<Message>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    dead_letter: OnceLock<DeadLetter>,
}

impl Queue {
    fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Self { tx, rx: tokio::sync::Mutex::new(rx), dead_letter: OnceLock::new() })
    }

    /// Take a message back; past the at-least-once limit it goes to the
    /// dead-letter queue instead.
    fn give_back(&self, mut message: Message) {
        message.returns += 1;
        match self.dead_letter.get() {
            Some(dl) if message.returns > dl.max => dl.dead.push(Message { returns: 0, ..message }),
            _ => self.push(message),
        }
    }

    fn push(&self, message: Message) {
        // The receiver lives inside the queue itself, so this cannot fail.
        let _ = self.tx.send(message);
    }
}

#[derive(Default)]
struct Bus {
    queues: HashMap<String, Arc<Queue>>,
    bindings: HashMap<(String, String), Vec<String>>,
    fanout: HashMap<String, Vec<String>>,
}

type SharedBus = Arc<Mutex<Bus>>;

fn bus_named(name: &str) -> SharedBus {
    static BUSES: OnceLock<Mutex<HashMap<String, Weak<Mutex<Bus>>>>> = OnceLock::new();
    let mut buses = BUSES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Bus> {
        self.bus.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn declare(&self, name: &str) -> Arc<Queue> {
        self.lock().queues.entry(name.to_owned()).or_insert_with(Queue::new).clone()
    }

    fn spawn_pumps(&self, queues: Vec<(String, Arc<Queue>)>, capacity: usize, delete_on_stop: Vec<String>) -> Listener {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut pumps = Vec::new();
        for (_, queue) in queues {
            pumps.push(tokio::spawn(pump(queue, tx.clone(), stop_rx.clone())));
        }
        let bus = self.bus.clone();
        tokio::spawn(async move {
            for p in pumps {
                let _ = p.await;
            }
            if !delete_on_stop.is_empty() {
                let mut bus = bus.lock().unwrap_or_else(|p| p.into_inner());
                for name in &delete_on_stop {
                    bus.queues.remove(name);
                    for queues in bus.fanout.values_mut() {
                        queues.retain(|q| q != name);
                    }
                }
            }
        });
        Listener::new(rx, stop_tx)
    }
}

/// Move messages from one queue to a listener, one at a time, so that the
/// listener's bounded channel is the consumer's prefetch window.
async fn pump(queue: Arc<Queue>, tx: mpsc::Sender<Delivery>, mut stop: watch::Receiver<bool>) {
    loop {
        let message = {
            let mut rx = tokio::select! {
                biased;
                _ = crate::transport::stopped(&mut stop) => return,
                rx = queue.rx.lock() => rx,
            };
            tokio::select! {
                biased;
                _ = crate::transport::stopped(&mut stop) => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            }
        };
        if message.deadline.is_some_and(|d| d <= Instant::now()) {
            continue;
        }
        let (redelivered, delivery_count, deadline) = (message.returns > 0, message.returns, message.deadline);
        let mut delivery = Delivery::new(message.body.clone(), Box::new(MemoryAck { queue: queue.clone(), message }));
        delivery.redelivered = redelivered;
        delivery.delivery_count = delivery_count;
        delivery.deadline = deadline;
        tokio::select! {
            biased;
            sent = tx.send(delivery) => if let Err(mpsc::error::SendError(d)) = sent {
                d.into_parts().1.requeue().await;
                return;
            },
            _ = crate::transport::stopped(&mut stop) => return,
        }
    }
}

struct MemoryAck {
    queue: Arc<Queue>,
    message: Message,
}

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn ack(self: Box<Self>) {}

    async fn requeue(self: Box<Self>) {
        let MemoryAck { queue, message } = *self;
        queue.give_back(message);
    }

    async fn reject(self: Box<Self>) {
        let MemoryAck { queue, message } = *self;
        if let Some(dl) = queue.dead_letter.get() {
            dl.dead.push(message);
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn send(&self, destination: &Destination, message: Outgoing) -> Result<()> {
        if message.body.len() > self.options.max_message_size {
            return Err(RpcError::MessageTooLarge { size: message.body.len(), max: self.options.max_message_size });
        }
        let deadline = message.ttl.map(|t| Instant::now() + t);
        let bus = self.lock();
        let names: &[String] = match destination {
            Destination::Topic { exchange, routing_key } => {
                bus.bindings.get(&(exchange.clone(), routing_key.clone())).map(Vec::as_slice).unwrap_or_default()
            }
            Destination::Fanout { topic } => bus.fanout.get(topic).map(Vec::as_slice).unwrap_or_default(),
            Destination::Reply { queue } => match bus.queues.get(queue) {
                Some(_) => std::slice::from_ref(queue),
                None => return Err(RpcError::Transport(format!("reply queue {queue} does not exist (NO_ROUTE)"))),
            },
        };
        for name in names {
            if let Some(queue) = bus.queues.get(name) {
                queue.push(Message { body: message.body.clone(), deadline, returns: 0 });
            }
        }
        if names.is_empty() {
            tracing::debug!(?destination, "memory transport: message routed to no queue");
        }
        Ok(())
    }

    async fn listen(&self, spec: ListenSpec) -> Result<Listener> {
        let server_key = format!("{}.{}", spec.topic, spec.server);
        let fanout_name = format!("{}_fanout_{}", spec.topic, crate::wire::new_id());
        let dead = spec.max_deliveries.map(|max| (max, self.declare(&super::dead_letter_queue(&spec.topic))));
        let mut queues = Vec::new();
        for key in [&spec.topic, &server_key] {
            let q = self.declare(key);
            if let Some((max, dead)) = &dead {
                let _ = q.dead_letter.set(DeadLetter { max: *max, dead: dead.clone() });
            }
            let mut bus = self.lock();
            let bound = bus.bindings.entry((spec.exchange.clone(), key.clone())).or_default();
            if !bound.contains(key) {
                bound.push(key.clone());
            }
            queues.push((key.clone(), q));
        }
        let fq = self.declare(&fanout_name);
        self.lock().fanout.entry(spec.topic.clone()).or_default().push(fanout_name.clone());
        queues.push((fanout_name.clone(), fq));
        Ok(self.spawn_pumps(queues, spec.prefetch as usize, vec![fanout_name]))
    }

    async fn listen_replies(&self, queue: &str) -> Result<Listener> {
        let q = self.declare(queue);
        Ok(self.spawn_pumps(vec![(queue.to_owned(), q)], 1024, vec![queue.to_owned()]))
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }

    async fn close(&self) {}
}
