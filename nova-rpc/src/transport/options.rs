//! Transport options, named as oslo.messaging names them.

use std::{path::PathBuf, time::Duration};

/// `[DEFAULT]` messaging options plus the `[oslo_messaging_rabbit]` group.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// `transport_url`: which transport, and where.
    pub transport_url: String,
    /// `control_exchange`: the topic exchange (default `nova`).
    pub control_exchange: String,
    /// `rpc_response_timeout`: default call timeout (60 s).
    pub rpc_response_timeout: Duration,
    /// Largest message a server accepts or a client sends (16 MiB).
    pub max_message_size: usize,
    /// `[oslo_messaging_rabbit]`.
    pub rabbit: RabbitOptions,
}

impl TransportOptions {
    /// Defaults for `transport_url`.
    pub fn new(transport_url: impl Into<String>) -> Self {
        Self {
            transport_url: transport_url.into(),
            control_exchange: crate::target::DEFAULT_EXCHANGE.to_owned(),
            rpc_response_timeout: Duration::from_secs(60),
            max_message_size: 16 * 1024 * 1024,
            rabbit: RabbitOptions::default(),
        }
    }

    /// Use another `control_exchange`.
    pub fn with_control_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.control_exchange = exchange.into();
        self
    }
}

/// The `[oslo_messaging_rabbit]` options this transport honours.
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// `heartbeat_timeout_threshold`: seconds of silence before the connection is dead (60; 0 = off).
    pub heartbeat_timeout_threshold: u16,
    /// `amqp_durable_queues`: durable topic exchange and queues.
    pub amqp_durable_queues: bool,
    /// `amqp_auto_delete`: auto-delete topic exchange and queues.
    pub amqp_auto_delete: bool,
    /// `rabbit_quorum_queue`: topic queues are quorum queues.
    pub rabbit_quorum_queue: bool,
    /// `rabbit_quorum_delivery_limit`: quorum `x-delivery-limit` (0 = none).
    pub rabbit_quorum_delivery_limit: u32,
    /// `rabbit_transient_queues_ttl`: `x-expires` of reply and fanout queues (1800 s).
    pub rabbit_transient_queues_ttl: Duration,
    /// `rabbit_retry_interval`: first reconnect delay (1 s).
    pub rabbit_retry_interval: Duration,
    /// `rabbit_retry_backoff`: added to the delay at each attempt (2 s).
    pub rabbit_retry_backoff: Duration,
    /// `rabbit_interval_max`: the longest reconnect delay (30 s).
    pub rabbit_interval_max: Duration,
    /// `kombu_missing_consumer_retry_timeout`: how long a reply to a missing reply queue is retried (60 s).
    pub kombu_missing_consumer_retry_timeout: Duration,
    /// Wait for publisher confirms (on, as oslo). Off trades safety for speed.
    pub publisher_confirms: bool,
    /// `ssl`: use TLS even on `rabbit://`.
    pub ssl: bool,
    /// `ssl_ca_file`: CA bundle (PEM) to verify the broker with.
    pub ssl_ca_file: Option<PathBuf>,
    /// `ssl_cert_file`: client certificate (PEM).
    pub ssl_cert_file: Option<PathBuf>,
    /// `ssl_key_file`: client key (PEM).
    pub ssl_key_file: Option<PathBuf>,
    /// TCP connect timeout per host.
    pub connection_timeout: Duration,
    /// Largest AMQP frame (bytes) asked of the broker. lapin keeps 32
    /// frames of buffer each way per connection, so this sets most of a
    /// connection's memory: 16 KiB → 1 MiB; the broker's 128 KiB → 8 MiB.
    /// Bigger messages are split into more frames, never refused.
    pub frame_max: u32,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout_threshold: 60,
            amqp_durable_queues: false,
            amqp_auto_delete: false,
            rabbit_quorum_queue: false,
            rabbit_quorum_delivery_limit: 0,
            rabbit_transient_queues_ttl: Duration::from_secs(1800),
            rabbit_retry_interval: Duration::from_secs(1),
            rabbit_retry_backoff: Duration::from_secs(2),
            rabbit_interval_max: Duration::from_secs(30),
            kombu_missing_consumer_retry_timeout: Duration::from_secs(60),
            publisher_confirms: true,
            ssl: false,
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            connection_timeout: Duration::from_secs(5),
            frame_max: 16 * 1024,
        }
    }
}

impl RabbitOptions {
    /// Whether the topic exchange and the `topic`/`topic.server` queues are
    /// durable: oslo's `amqp_durable_queues or rabbit_quorum_queue`
    /// (quorum queues are always durable).
    pub fn topic_durable(&self) -> bool {
        self.amqp_durable_queues || self.rabbit_quorum_queue
    }

    /// The delay before reconnect attempt `attempt` (0-based): oslo's
    /// `interval + backoff × attempt`, capped at `rabbit_interval_max`, with ±20 % jitter.
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        let base = self.rabbit_retry_interval + self.rabbit_retry_backoff * attempt;
        let capped = base.min(self.rabbit_interval_max);
        capped.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}
