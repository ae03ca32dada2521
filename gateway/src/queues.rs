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
