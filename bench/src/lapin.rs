//! The ceiling: the same work written directly on lapin.
//!
//! Request/reply: the client publishes to a topic exchange with
//! `reply_to` and a correlation id and waits on its own reply queue; the
//! server consumes with the same prefetch as a nova-rs server, acknowledges,
//! then publishes the reply to the default exchange with `mandatory`. With
//! confirms on, both sides wait for the broker's confirm of every publish
//! (the server's concurrently, as nova-rs does); with them off it is the
//! plainest lapin can be. Publishing and consuming use separate
//! connections on both sides, as nova-rs does. One-way sends go to a queue
//! (or a fanout exchange with two queues) whose consumers count them.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::oneshot;

use super::Pattern;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Raw lapin doing what a nova-rs call, cast and fanout do.
pub struct LapinPattern {
    conns: Vec<Connection>,
    publish: Channel,
    admin: Channel,
    pending: Pending,
    next_id: AtomicU64,
    received: Arc<AtomicUsize>,
    prefix: String,
    reply_queue: String,
    body: Vec<u8>,
    confirms: bool,
}

async fn channel(conn: &Connection, confirms: bool) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    Ok(ch)
}

async fn queue(ch: &Channel, name: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    if !exchange.is_empty() {
        ch.queue_bind(name.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

fn props() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2)
}

/// Consume `name` forever, acknowledging each message and counting it.
async fn count_consumer(conn: &Connection, name: &str, prefetch: u16, received: Arc<AtomicUsize>) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer =
        ch.basic_consume(name.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    tokio::spawn(async move {
        let _keep = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(())
}

impl LapinPattern {
    /// Declare the queues and start the server and reply consumers.
    pub async fn start(url: &str, payload: &super::Data, prefetch: u16, confirms: bool) -> anyhow::Result<Self> {
        let connect = || Connection::connect(url, ConnectionProperties::default());
        let (server_in, server_out, client_in, client_out) =
            (connect().await?, connect().await?, connect().await?, connect().await?);
        let prefix = format!("lapin-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let admin = client_out.create_channel().await?;
        let topic = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
        admin.exchange_declare(prefix.as_str().into(), ExchangeKind::Topic, topic, FieldTable::default()).await?;
        let fanout = format!("{prefix}_fanout");
        admin.exchange_declare(fanout.as_str().into(), ExchangeKind::Fanout, topic, FieldTable::default()).await?;
        let requests = format!("{prefix}.requests");
        let oneway = format!("{prefix}.oneway");
        let reply_queue = format!("{prefix}.reply");
        queue(&admin, &requests, &prefix, &requests).await?;
        queue(&admin, &oneway, &prefix, &oneway).await?;
        queue(&admin, &reply_queue, "", "").await?;
        let received = Arc::new(AtomicUsize::new(0));
        count_consumer(&server_in, &oneway, prefetch, received.clone()).await?;
        for i in 0..2 {
            let q = format!("{prefix}.fanout{i}");
            queue(&admin, &q, &fanout, "").await?;
            count_consumer(&server_in, &q, prefetch, received.clone()).await?;
        }

        // The server: ack, then reply with mandatory, confirm awaited in the background.
        let reply_ch = channel(&server_out, confirms).await?;
        let serve_ch = server_in.create_channel().await?;
        serve_ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut serve = serve_ch
            .basic_consume(requests.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tokio::spawn(async move {
            let _keep = serve_ch;
            while let Some(Ok(d)) = serve.next().await {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                let (Some(to), Some(id)) = (d.properties.reply_to().clone(), d.properties.correlation_id().clone())
                else {
                    continue;
                };
                let options = BasicPublishOptions { mandatory: confirms, ..Default::default() };
                let p = props().with_correlation_id(id);
                if let Ok(confirm) = reply_ch.basic_publish("".into(), to, options, &d.data, p).await {
                    tokio::spawn(confirm);
                }
            }
        });

        // The client's reply router.
        let pending: Pending = Arc::default();
        let replies_ch = client_in.create_channel().await?;
        let mut replies = replies_ch
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let routed = pending.clone();
        tokio::spawn(async move {
            let _keep = replies_ch;
            while let Some(Ok(d)) = replies.next().await {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                let id = d.properties.correlation_id().as_ref().and_then(|c| c.as_str().parse::<u64>().ok());
                let waiter = id.and_then(|id| routed.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(());
                }
            }
        });
        Ok(Self {
            publish: channel(&client_out, confirms).await?,
            admin,
            conns: vec![server_in, server_out, client_in, client_out],
            pending,
            next_id: AtomicU64::new(0),
            received,
            prefix,
            reply_queue,
            body: serde_json::to_vec(payload)?,
            confirms,
        })
    }

    async fn publish(&self, exchange: &str, key: &str, props: BasicProperties) -> anyhow::Result<()> {
        let confirm = self
            .publish
            .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &self.body, props)
            .await?;
        if self.confirms {
            anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a message");
        }
        Ok(())
    }
}

#[async_trait]
impl Pattern for LapinPattern {
    async fn call(&self) -> anyhow::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let p = props().with_reply_to(self.reply_queue.as_str().into()).with_correlation_id(id.to_string().into());
        self.publish(&self.prefix, &format!("{}.requests", self.prefix), p).await?;
        rx.await.map_err(|_| anyhow::anyhow!("reply router stopped"))
    }

    async fn cast(&self) -> anyhow::Result<()> {
        self.publish(&self.prefix, &format!("{}.oneway", self.prefix), props()).await
    }

    async fn fanout(&self) -> anyhow::Result<()> {
        self.publish(&format!("{}_fanout", self.prefix), "", props()).await
    }

    async fn received(&self) -> anyhow::Result<usize> {
        Ok(self.received.load(Ordering::Relaxed))
    }

    async fn close(&self) {
        for q in ["requests", "oneway", "reply", "fanout0", "fanout1"] {
            let name = format!("{}.{q}", self.prefix);
            let _ = self.admin.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for x in [self.prefix.clone(), format!("{}_fanout", self.prefix)] {
            let _ = self.admin.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
        for c in &self.conns {
            let _ = c.close(200, "done".into()).await;
        }
    }
}
