//! `GET /v1/queues`: backlog and consumers of every topic's shared queue,
//! its work queue (`compute_work`), and each service's own queue, with
//! the age of its oldest message.
//!
//! AMQP 0-9-1 tells a queue's depth and consumers but not how long its
//! head has waited. RabbitMQ's management plugin does, as
//! `head_message_timestamp`: the `timestamp` property nova-rs sets on every
//! message it publishes (classic queues; quorum queues do not report it).
//! `[api] rabbit_management_url` names the API; without it ages stay unknown.

use std::time::Duration;

use axum::{extract::State, Extension, Json};
use nova_rpc::transport::{QueueStats, TransportUrl};
use prometheus_client::metrics::{family::Family, gauge::Gauge};

use crate::{ApiError, Caller, Gateway};

/// Labels of the per-queue gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// Backlog and consumers per queue, as last read.
struct QueueGauges {
    messages: Family<QueueLabels, Gauge>,
    consumers: Family<QueueLabels, Gauge>,
}

fn gauges() -> &'static QueueGauges {
    static GAUGES: std::sync::OnceLock<QueueGauges> = std::sync::OnceLock::new();
    GAUGES.get_or_init(|| {
        let g = QueueGauges { messages: Family::default(), consumers: Family::default() };
        nova_rpc::metrics::register("queue_messages", "Messages ready in a queue (its backlog)", g.messages.clone());
        nova_rpc::metrics::register("queue_consumers", "Consumers of a queue", g.consumers.clone());
        g
    })
}

/// Set the queue gauges to `stats`; queues no longer listed disappear.
pub fn record(stats: &[QueueStats]) {
    let g = gauges();
    g.messages.clear();
    g.consumers.clear();
    for q in stats {
        let labels = QueueLabels { queue: q.queue.clone() };
        g.messages.get_or_create(&labels).set(i64::try_from(q.messages).unwrap_or(i64::MAX));
        g.consumers.get_or_create(&labels).set(i64::from(q.consumers));
    }
}

/// `GET /v1/queues`.
pub(crate) async fn list(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<QueueStats>>, ApiError> {
    gw.authorize("api:services", &caller)?;
    Ok(Json(gw.queues().await?))
}

impl Gateway {
    /// Backlog and consumers of each known topic's shared queue, its work
    /// queue (where it has one), and each service's own queue.
    pub async fn queues(&self) -> Result<Vec<QueueStats>, ApiError> {
        let services = self.records.list(None).await.map_err(ApiError::database)?;
        let mut names: Vec<String> = Vec::new();
        for s in &services {
            for name in [s.topic.clone(), self.work_queue(&s.topic), format!("{}.{}", s.topic, s.host)] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut stats = self.client.transport().queue_stats(&names).await?;
        if let Some(api) = &self.auth.options().rabbit_management_url {
            let transport_url = self.client.transport().options().transport_url.clone();
            if let Err(e) = fill(&mut stats, api, &transport_url).await {
                tracing::warn!(error = %e, "cannot read the oldest messages' ages");
            }
        }
        Ok(stats)
    }
}

/// One work queue as an operator (and the autoscaler) sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkQueueState {
    /// The topic whose work it holds.
    pub topic: String,
    /// The queue (`<topic>_work`).
    pub queue: String,
    /// Ready messages: work waiting.
    pub backlog: u64,
    /// Consumers attached now (a worker with every slot busy is not one).
    pub consumers: u32,
    /// The topic's services that are up: its workers.
    pub workers: usize,
    /// Busy slots of those workers, from their capacity reports to the
    /// schedulers (`None`: no scheduler answered).
    pub in_flight: Option<u64>,
    /// Their slots in all.
    pub slots: Option<u64>,
}

/// `GET /v1/work`.
pub(crate) async fn work(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<WorkQueueState>>, ApiError> {
    gw.authorize("api:services", &caller)?;
    Ok(Json(gw.work_queues().await?))
}

/// What a scheduler says of a compute host's slots.
#[derive(serde::Deserialize)]
struct HostSlots {
    host: String,
    free_slots: u64,
    max_tasks: u64,
}

impl Gateway {
    /// Each topic's work queue that exists: its backlog and consumers, and
    /// its up workers' busy slots: what the autoscaler scales on.
    pub async fn work_queues(&self) -> Result<Vec<WorkQueueState>, ApiError> {
        let services = self.service_list().await?;
        let mut topics: Vec<String> = services.iter().filter_map(|s| s["topic"].as_str().map(str::to_owned)).collect();
        topics.sort();
        topics.dedup();
        let queues: Vec<String> = topics.iter().map(|t| self.work_queue(t)).collect();
        let stats = self.client.transport().queue_stats(&queues).await?;
        let scheduler =
            self.client.with_target(nova_rpc::Target::new("scheduler")).with_timeout(Duration::from_secs(2));
        let ctx = nova_rpc::RequestContext::new();
        let hosts: Option<Vec<HostSlots>> =
            scheduler.call_as(&ctx, "list_host_states", serde_json::json!({})).await.ok();
        let mut out = Vec::new();
        for (topic, queue) in topics.iter().zip(&queues) {
            let Some(q) = stats.iter().find(|q| &q.queue == queue) else { continue };
            let up: Vec<&str> = services
                .iter()
                .filter(|s| s["topic"] == topic.as_str() && s["state"] == "up")
                .filter_map(|s| s["host"].as_str())
                .collect();
            let mine = |h: &&HostSlots| up.contains(&h.host.as_str());
            let (in_flight, slots) = match &hosts {
                Some(hosts) => (
                    Some(hosts.iter().filter(mine).map(|h| h.max_tasks.saturating_sub(h.free_slots)).sum()),
                    Some(hosts.iter().filter(mine).map(|h| h.max_tasks).sum()),
                ),
                None => (None, None),
            };
            out.push(WorkQueueState {
                topic: topic.clone(),
                queue: queue.clone(),
                backlog: q.messages,
                consumers: q.consumers,
                workers: up.len(),
                in_flight,
                slots,
            });
        }
        Ok(out)
    }
}

/// Why RabbitMQ's management API told nothing.
#[derive(Debug, thiserror::Error)]
pub enum ManagementApiError {
    /// `[api] rabbit_management_url` is not a URL.
    #[error("[api] rabbit_management_url: {0}")]
    BadUrl(String),
    /// The API did not answer.
    #[error("the management API at {at}: {reason}")]
    Unreachable {
        /// Where it was asked (no credentials).
        at: String,
        /// Why.
        reason: String,
    },
}

/// Fill `oldest_age_seconds` of `stats` (queues of `transport_url`'s vhost)
/// from the management API at `management_url`
/// (`http://user:pass@host:15672`). A queue the API cannot tell about keeps
/// `None`; an unreachable API is an error, the stats untouched.
pub async fn fill(
    stats: &mut [QueueStats],
    management_url: &str,
    transport_url: &str,
) -> Result<(), ManagementApiError> {
    let url = reqwest::Url::parse(management_url).map_err(|e| ManagementApiError::BadUrl(e.to_string()))?;
    let vhost = TransportUrl::parse(transport_url).map(|u| u.vhost).unwrap_or_default();
    let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
    let (user, password) = (url.username().to_owned(), url.password().map(str::to_owned));
    let mut base = url.clone();
    let _ = base.set_username("");
    let _ = base.set_password(None);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ManagementApiError::Unreachable { at: base.to_string(), reason: e.to_string() })?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    for q in stats.iter_mut() {
        let at = format!("{}/api/queues/{}/{}", base.as_str().trim_end_matches('/'), enc(&vhost), enc(&q.queue));
        let resp = http
            .get(&at)
            .basic_auth(&user, password.as_deref())
            .send()
            .await
            .map_err(|e| ManagementApiError::Unreachable { at: base.to_string(), reason: e.to_string() })?;
        if !resp.status().is_success() {
            continue;
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| ManagementApiError::Unreachable { at: base.to_string(), reason: e.to_string() })?;
        let info: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        q.oldest_age_seconds = match info.get("head_message_timestamp").and_then(serde_json::Value::as_f64) {
            Some(ts) => Some((now - ts).max(0.0)),
            None if q.messages == 0 => Some(0.0),
            None => None,
        };
    }
    Ok(())
}
