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
    /// Signed topics and their keys (`[rpc] signing_keys`), if any.
    pub signing: Option<std::sync::Arc<crate::signing::Signing>>,
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
            signing: None,
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
    /// `rabbit_quorum_max_memory_length`: quorum `x-max-in-memory-length` (0 = none).
    pub rabbit_quorum_max_memory_length: u32,
    /// `rabbit_quorum_max_memory_bytes`: quorum `x-max-in-memory-bytes` (0 = none).
    pub rabbit_quorum_max_memory_bytes: u64,
    /// `rabbit_transient_quorum_queue`: reply and fanout queues are durable
    /// quorum queues, and the fanout exchange is durable.
    pub rabbit_transient_quorum_queue: bool,
    /// `rabbit_stream_fanout`: one durable `<topic>_fanout` stream queue per
    /// topic, read from the next offset by every server, instead of a queue
    /// per server.
    pub rabbit_stream_fanout: bool,
    /// `rabbit_ha_queues`: the legacy `x-ha-policy: all` argument on every
    /// queue. RabbitMQ ignores it since 3.0: mirroring is a policy matter.
    pub rabbit_ha_queues: bool,
    /// `rabbit_qos_prefetch_count`: the prefetch of every consumer (0 = the
    /// server's free capacity, which is nova-rs's default back-pressure).
    pub rabbit_qos_prefetch_count: u16,
    /// `use_queue_manager`: reply and fanout queues named
    /// `<hostname>:<processname>:<n>`, as oslo's `QManager` names them, so a
    /// restarted service finds its queues again.
    pub use_queue_manager: bool,
    /// `hostname`: the host part of queue-manager names.
    pub hostname: String,
    /// `processname`: the process part of queue-manager names.
    pub processname: String,
    /// `enable_cancel_on_failover`: consumers ask for `x-cancel-on-ha-failover`.
    pub enable_cancel_on_failover: bool,
    /// `direct_mandatory_flag`: replies are published `mandatory`.
    pub direct_mandatory_flag: bool,
    /// `kombu_reconnect_delay`: wait before consuming again a queue whose
    /// consumer the broker cancelled (1 s).
    pub kombu_reconnect_delay: Duration,
    /// `kombu_reconnect_splay`: up to this much random extra wait (0 s).
    pub kombu_reconnect_splay: Duration,
    /// `kombu_failover_strategy`: each process starts at a random host of
    /// the URL and a lost connection moves to a random other one
    /// (`shuffle`, the default: a fleet spreads over the cluster's nodes),
    /// or the first host, then the next (`round-robin`, oslo's default).
    pub failover_shuffle: bool,
    /// `rabbit_login_method`: `PLAIN`, `AMQPLAIN`, `EXTERNAL` or `RABBIT-CR-DEMO`.
    pub rabbit_login_method: String,
    /// `heartbeat_rate`: heartbeat checks per `heartbeat_timeout_threshold`
    /// (3). lapin sends heartbeats at half the negotiated interval and
    /// declares the connection dead after it; this is accepted for oslo's sake.
    pub heartbeat_rate: u32,
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
            rabbit_quorum_max_memory_length: 0,
            rabbit_quorum_max_memory_bytes: 0,
            rabbit_transient_quorum_queue: false,
            rabbit_stream_fanout: false,
            rabbit_ha_queues: false,
            rabbit_qos_prefetch_count: 0,
            use_queue_manager: false,
            hostname: String::new(),
            processname: String::new(),
            enable_cancel_on_failover: false,
            direct_mandatory_flag: true,
            kombu_reconnect_delay: Duration::from_secs(1),
            kombu_reconnect_splay: Duration::ZERO,
            failover_shuffle: true,
            rabbit_login_method: "AMQPLAIN".into(),
            heartbeat_rate: 3,
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

    /// Refuse combinations oslo.messaging refuses, with oslo's words.
    ///
    /// # Errors
    ///
    /// The first combination refused; [`InvalidCombination::option`] says
    /// which option asked for it.
    pub fn validate(&self) -> Result<(), InvalidCombination> {
        if self.rabbit_quorum_queue && self.rabbit_ha_queues {
            return Err(InvalidCombination::QuorumAndHa);
        }
        if self.rabbit_stream_fanout && self.rabbit_qos_prefetch_count == 0 {
            return Err(InvalidCombination::StreamFanoutWithoutPrefetch);
        }
        if self.rabbit_stream_fanout && !self.rabbit_transient_quorum_queue {
            return Err(InvalidCombination::StreamFanoutWithoutTransientQuorum);
        }
        if !["PLAIN", "AMQPLAIN", "EXTERNAL", "RABBIT-CR-DEMO"].contains(&self.rabbit_login_method.as_str()) {
            return Err(InvalidCombination::LoginMethod(self.rabbit_login_method.clone()));
        }
        Ok(())
    }

    /// How long to wait before consuming a cancelled queue again:
    /// `kombu_reconnect_delay` plus up to `kombu_reconnect_splay`, growing
    /// with each failed attempt as reconnects do, capped at `rabbit_interval_max`.
    pub fn reconsume_delay(&self, attempt: u32) -> Duration {
        let splay = self.kombu_reconnect_splay.mul_f64(fastrand::f64());
        let base = if attempt == 0 { self.kombu_reconnect_delay } else { self.reconnect_delay(attempt - 1) };
        (base + splay).min(self.rabbit_interval_max.max(self.kombu_reconnect_delay))
    }

    /// The delay before reconnect attempt `attempt` (0-based): oslo's
    /// `interval + backoff × attempt`, capped at `rabbit_interval_max`, with ±20 % jitter.
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        let base = self.rabbit_retry_interval + self.rabbit_retry_backoff * attempt;
        let capped = base.min(self.rabbit_interval_max);
        capped.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

/// A combination of `[oslo_messaging_rabbit]` options oslo.messaging
/// refuses, in oslo's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCombination {
    /// Quorum and mirrored queues at once.
    #[error("Configuration Error: rabbit_quorum_queue and rabbit_ha_queues both enabled, queue type is quorum or HA (mirrored) not both")]
    QuorumAndHa,
    /// A stream fanout needs a prefetch.
    #[error(
        "Configuration Error: rabbit_stream_fanout need rabbit_qos_prefetch_count to be set to a value greater than 0."
    )]
    StreamFanoutWithoutPrefetch,
    /// A stream fanout needs transient quorum queues.
    #[error("Configuration Error: rabbit_stream_fanout need rabbit_transient_quorum_queue to be set to true.")]
    StreamFanoutWithoutTransientQuorum,
    /// A login method RabbitMQ does not offer.
    #[error("rabbit_login_method {0:?} is not one of PLAIN, AMQPLAIN, EXTERNAL, RABBIT-CR-DEMO")]
    LoginMethod(String),
}

impl InvalidCombination {
    /// The option to blame: the one whose setting asked for the combination.
    pub fn option(&self) -> &'static str {
        match self {
            Self::QuorumAndHa => "rabbit_ha_queues",
            Self::StreamFanoutWithoutPrefetch | Self::StreamFanoutWithoutTransientQuorum => "rabbit_stream_fanout",
            Self::LoginMethod(_) => "rabbit_login_method",
        }
    }
}
