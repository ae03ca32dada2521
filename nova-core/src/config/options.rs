//! The framework's own options, with Nova's and oslo's names and defaults.

use std::{path::PathBuf, time::Duration};

use nova_rpc::transport::{RabbitOptions, TransportOptions};

use super::{Config, ConfigError, OptSpec};

/// The checks of options whose values have rules of their own.
mod checks {
    use std::time::Duration;

    use super::super::{parse, Invalid};

    /// A transport URL nova-rs can use.
    pub(super) fn transport_url(v: &str) -> Result<String, Invalid> {
        nova_rpc::transport::TransportUrl::parse(v).map(|_| v.to_owned()).map_err(|e| Invalid(e.to_string()))
    }

    /// Requests at once: 1 to 65535 (the broker's prefetch is a u16).
    pub(super) fn pool_size(v: &str) -> Result<usize, Invalid> {
        match v.parse::<usize>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n),
            _ => Err("expected a whole number from 1 to 65535".into()),
        }
    }

    /// oslo: at most 0.9 × its 5 s requeue interval.
    pub(super) fn reconnect_delay(v: &str) -> Result<Duration, Invalid> {
        parse::seconds(v)
            .and_then(|d| (d.as_secs_f64() <= 4.5).then_some(d).ok_or_else(|| "must be at most 4.5 seconds".into()))
    }

    /// `shuffle` (true) or `round-robin` (false).
    pub(super) fn failover_shuffle(v: &str) -> Result<bool, Invalid> {
        match v {
            "round-robin" => Ok(false),
            "shuffle" => Ok(true),
            _ => Err("expected round-robin or shuffle".into()),
        }
    }

    /// Unset: nova-rs compresses nothing, and a peer that did would not be read.
    pub(super) fn no_compression(v: &str) -> Result<(), Invalid> {
        if v.is_empty() {
            Ok(())
        } else {
            Err("message compression is not supported by nova-rs; leave it unset on every service".into())
        }
    }
}

// The options, declared once each, a module per section.
pub mod default {
    //! `[DEFAULT]`: the service, its transport, its loops and its logs.

    #[allow(unused_imports)]
    use std::{path::PathBuf, time::Duration};

    use super::super::{parse, Opt};
    #[allow(unused_imports)]
    use super::checks::*;

    /// `[DEFAULT] host`.
    pub const HOST: Opt<Option<String>> = Opt::new(
        "DEFAULT",
        "host",
        "",
        "Name of this node (default: the machine's hostname); servers listen on topic.host.",
        parse::optional_text,
    );

    /// `[DEFAULT] transport_url`.
    pub const TRANSPORT_URL: Opt<String> = Opt::new(
        "DEFAULT",
        "transport_url",
        "memory://",
        "Messaging transport: rabbit://user:pass@host:port[,host2:port]/vhost, amqps://…, or memory://.",
        transport_url,
    );

    /// `[DEFAULT] control_exchange`.
    pub const CONTROL_EXCHANGE: Opt<String> = Opt::new(
        "DEFAULT",
        "control_exchange",
        "nova",
        "The topic exchange RPC messages are published to.",
        parse::text,
    );

    /// `[DEFAULT] rpc_response_timeout`.
    pub const RPC_RESPONSE_TIMEOUT: Opt<Duration> =
        Opt::new("DEFAULT", "rpc_response_timeout", "60", "Seconds to wait for a reply to a call.", parse::seconds);

    /// `[DEFAULT] executor_thread_pool_size`.
    pub const EXECUTOR_THREAD_POOL_SIZE: Opt<usize> = Opt::new(
        "DEFAULT",
        "executor_thread_pool_size",
        "64",
        "Requests a server runs at once (also the broker prefetch).",
        pool_size,
    );

    /// `[DEFAULT] max_message_size`.
    pub const MAX_MESSAGE_SIZE: Opt<usize> = Opt::new(
        "DEFAULT",
        "max_message_size",
        "16777216",
        "Largest message, in bytes, a server accepts or a client sends.",
        parse::number::<usize>,
    );

    /// `[DEFAULT] report_interval`.
    pub const REPORT_INTERVAL: Opt<Duration> = Opt::new(
        "DEFAULT",
        "report_interval",
        "10",
        "Seconds between service heartbeats into the services table.",
        parse::seconds,
    );

    /// `[DEFAULT] service_down_time`.
    pub const SERVICE_DOWN_TIME: Opt<Duration> = Opt::new(
        "DEFAULT",
        "service_down_time",
        "60",
        "A service not seen for this many seconds is down.",
        parse::seconds,
    );

    /// `[DEFAULT] periodic_enable`.
    pub const PERIODIC_ENABLE: Opt<bool> =
        Opt::new("DEFAULT", "periodic_enable", "true", "Run the manager's periodic tasks.", parse::boolean);

    /// `[DEFAULT] periodic_fuzzy_delay`.
    pub const PERIODIC_FUZZY_DELAY: Opt<Duration> = Opt::new(
        "DEFAULT",
        "periodic_fuzzy_delay",
        "60",
        "Random delay (0..N seconds) before the first periodic run, to spread load.",
        parse::seconds,
    );

    /// `[DEFAULT] periodic_interval_max`.
    pub const PERIODIC_INTERVAL_MAX: Opt<Duration> = Opt::new(
        "DEFAULT",
        "periodic_interval_max",
        "60",
        "Longest sleep of the periodic loop, in seconds.",
        parse::seconds,
    );

    /// `[DEFAULT] graceful_shutdown_timeout`.
    pub const GRACEFUL_SHUTDOWN_TIMEOUT: Opt<Duration> = Opt::new(
        "DEFAULT",
        "graceful_shutdown_timeout",
        "60",
        "Seconds to let in-flight requests finish on SIGTERM.",
        parse::seconds,
    );

    /// `[DEFAULT] state_path`.
    pub const STATE_PATH: Opt<PathBuf> = Opt::new(
        "DEFAULT",
        "state_path",
        "nova-state",
        "Directory for local state (the embedded SQLite database).",
        parse::path,
    );

    /// `[DEFAULT] debug`.
    pub const DEBUG: Opt<bool> = Opt::new("DEFAULT", "debug", "false", "Log at debug level.", parse::boolean);

    /// `[DEFAULT] log_json`.
    pub const LOG_JSON: Opt<bool> =
        Opt::new("DEFAULT", "log_json", "false", "Log one JSON object per line.", parse::boolean);

    /// `[DEFAULT] trace_enabled`.
    pub const TRACE_ENABLED: Opt<bool> = Opt::new(
        "DEFAULT",
        "trace_enabled",
        "true",
        "Record request traces (spans cast to the trace topic, off the hot path).",
        parse::boolean,
    );

    /// `[DEFAULT] metrics_enabled`.
    pub const METRICS_ENABLED: Opt<bool> = Opt::new(
        "DEFAULT",
        "metrics_enabled",
        "true",
        "Count requests, errors, in-flight and latency per topic and method.",
        parse::boolean,
    );

    /// `[DEFAULT] metrics_listen`.
    pub const METRICS_LISTEN: Opt<Option<std::net::SocketAddr>> = Opt::new(
        "DEFAULT",
        "metrics_listen",
        "",
        "Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9100).",
        parse::optional::<std::net::SocketAddr>,
    );
}

pub mod trace {
    //! `[trace]`: what is traced.

    #[allow(unused_imports)]
    use std::{path::PathBuf, time::Duration};

    use super::super::{parse, Opt};
    #[allow(unused_imports)]
    use super::checks::*;

    /// `[trace] sample_ratio`.
    pub const SAMPLE_RATIO: Opt<f64> =
        Opt::new("trace", "sample_ratio", "0.01", "Share of requests traced (0 to 1), decided where a request enters and kept at every hop; failed and slow hops are traced whatever it says.", parse::ratio);

    /// `[trace] always_slower_than`.
    pub const ALWAYS_SLOWER_THAN: Opt<Duration> = Opt::new(
        "trace",
        "always_slower_than",
        "1.0",
        "Seconds: a hop that takes at least this long is traced even when its request is not sampled.",
        parse::seconds,
    );
}

pub mod database {
    //! `[database]`: where service records live.

    #[allow(unused_imports)]
    use std::{path::PathBuf, time::Duration};

    use super::super::{parse, Opt};
    #[allow(unused_imports)]
    use super::checks::*;

    /// `[database] auto_migrate`.
    pub const AUTO_MIGRATE: Opt<bool> = Opt::new(
        "database",
        "auto_migrate",
        "true",
        "Apply this release's migrations at start (the embedded defaults). Off, as in a fleet: migrations come from `nova-manage db sync`, and a service whose schema lacks one refuses to start.",
        parse::boolean,
    );

    /// `[database] connection`.
    pub const CONNECTION: Opt<Option<String>> =
        Opt::new("database", "connection", "", "Database URL: postgresql://user@host/db, or SQLite as SQLAlchemy writes it: sqlite:////var/lib/nova/nova.sqlite (four slashes: an absolute path) or sqlite:///nova.sqlite (three: relative to the working directory); the path is logged at start (default: SQLite under state_path).", parse::optional_text);
}

pub mod rabbit {
    //! `[oslo_messaging_rabbit]`: oslo's RabbitMQ options, with oslo's defaults.

    #[allow(unused_imports)]
    use std::{path::PathBuf, time::Duration};

    use super::super::{parse, Opt};
    #[allow(unused_imports)]
    use super::checks::*;

    /// `[oslo_messaging_rabbit] heartbeat_timeout_threshold`.
    pub const HEARTBEAT_TIMEOUT_THRESHOLD: Opt<u16> = Opt::new(
        "oslo_messaging_rabbit",
        "heartbeat_timeout_threshold",
        "60",
        "Seconds without a heartbeat before a broker connection is dead (0 = off).",
        parse::number::<u16>,
    );

    /// `[oslo_messaging_rabbit] amqp_durable_queues`.
    pub const AMQP_DURABLE_QUEUES: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "amqp_durable_queues",
        "false",
        "Durable topic exchange and queues.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] frame_max`.
    pub const FRAME_MAX: Opt<u32> = Opt::new(
        "oslo_messaging_rabbit",
        "frame_max",
        "16384",
        "Largest AMQP frame in bytes; each connection buffers 64 frames, so this bounds its memory.",
        parse::number::<u32>,
    );

    /// `[oslo_messaging_rabbit] amqp_auto_delete`.
    pub const AMQP_AUTO_DELETE: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "amqp_auto_delete",
        "false",
        "Auto-delete topic exchange and queues.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] rabbit_quorum_queue`.
    pub const RABBIT_QUORUM_QUEUE: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_quorum_queue",
        "false",
        "Topic queues are quorum queues.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] rabbit_quorum_delivery_limit`.
    pub const RABBIT_QUORUM_DELIVERY_LIMIT: Opt<u32> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_quorum_delivery_limit",
        "0",
        "Quorum queues: dead-letter a message after this many deliveries (0 = never).",
        parse::number::<u32>,
    );

    /// `[oslo_messaging_rabbit] rabbit_transient_queues_ttl`.
    pub const RABBIT_TRANSIENT_QUEUES_TTL: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_transient_queues_ttl",
        "1800",
        "Seconds an unused reply or fanout queue lives (x-expires).",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] rabbit_retry_interval`.
    pub const RABBIT_RETRY_INTERVAL: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_retry_interval",
        "1",
        "Seconds before the first reconnect.",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] rabbit_retry_backoff`.
    pub const RABBIT_RETRY_BACKOFF: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_retry_backoff",
        "2",
        "Seconds added to the reconnect delay at each attempt.",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] rabbit_interval_max`.
    pub const RABBIT_INTERVAL_MAX: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_interval_max",
        "30",
        "Longest reconnect delay, in seconds.",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] kombu_missing_consumer_retry_timeout`.
    pub const KOMBU_MISSING_CONSUMER_RETRY_TIMEOUT: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "kombu_missing_consumer_retry_timeout",
        "60",
        "Seconds a reply to a missing reply queue is retried.",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] rabbit_quorum_max_memory_length`.
    pub const RABBIT_QUORUM_MAX_MEMORY_LENGTH: Opt<u32> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_quorum_max_memory_length",
        "0",
        "Quorum queues: keep at most this many messages in memory (x-max-in-memory-length; 0 = no limit).",
        parse::number::<u32>,
    );

    /// `[oslo_messaging_rabbit] rabbit_quorum_max_memory_bytes`.
    pub const RABBIT_QUORUM_MAX_MEMORY_BYTES: Opt<u64> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_quorum_max_memory_bytes",
        "0",
        "Quorum queues: keep at most this many bytes in memory (x-max-in-memory-bytes; 0 = no limit).",
        parse::number::<u64>,
    );

    /// `[oslo_messaging_rabbit] rabbit_transient_quorum_queue`.
    pub const RABBIT_TRANSIENT_QUORUM_QUEUE: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_transient_quorum_queue",
        "false",
        "Reply and fanout queues are durable quorum queues too (HA), and the fanout exchange is durable.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] rabbit_stream_fanout`.
    pub const RABBIT_STREAM_FANOUT: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_stream_fanout",
        "false",
        "One durable <topic>_fanout stream queue per topic instead of a fanout queue per server; \
             needs rabbit_transient_quorum_queue and rabbit_qos_prefetch_count > 0.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] rabbit_qos_prefetch_count`.
    pub const RABBIT_QOS_PREFETCH_COUNT: Opt<u16> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_qos_prefetch_count",
        "0",
        "Messages a consumer may hold unacknowledged (0 = the server's free capacity, executor_thread_pool_size).",
        parse::number::<u16>,
    );

    /// `[oslo_messaging_rabbit] rabbit_ha_queues`.
    pub const RABBIT_HA_QUEUES: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_ha_queues",
        "false",
        "Legacy x-ha-policy argument; RabbitMQ ignores it since 3.0. Mirror classic queues with a policy, \
             or use rabbit_quorum_queue.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] use_queue_manager`.
    pub const USE_QUEUE_MANAGER: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "use_queue_manager",
        "false",
        "Name reply and fanout queues <hostname>:<processname>:<n> (oslo's QManager), so a restart reuses them.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] hostname`.
    pub const HOSTNAME: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "hostname",
        "",
        "Host part of queue-manager names (default: the machine's hostname).",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] processname`.
    pub const PROCESSNAME: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "processname",
        "",
        "Process part of queue-manager names (default: the program name).",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] enable_cancel_on_failover`.
    pub const ENABLE_CANCEL_ON_FAILOVER: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "enable_cancel_on_failover",
        "false",
        "Consumers ask for x-cancel-on-ha-failover, so the broker cancels them when their queue fails over.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] direct_mandatory_flag`.
    pub const DIRECT_MANDATORY_FLAG: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "direct_mandatory_flag",
        "true",
        "(Deprecated in oslo) Publish replies mandatory, so a reply to a vanished caller is known at once.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] kombu_reconnect_delay`.
    pub const KOMBU_RECONNECT_DELAY: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "kombu_reconnect_delay",
        "1.0",
        "Seconds to wait before consuming again a queue whose consumer the broker cancelled.",
        reconnect_delay,
    );

    /// `[oslo_messaging_rabbit] kombu_reconnect_splay`.
    pub const KOMBU_RECONNECT_SPLAY: Opt<Duration> = Opt::new(
        "oslo_messaging_rabbit",
        "kombu_reconnect_splay",
        "0.0",
        "Up to this many random extra seconds before consuming a cancelled queue again.",
        parse::seconds,
    );

    /// `[oslo_messaging_rabbit] kombu_failover_strategy`.
    pub const KOMBU_FAILOVER_STRATEGY: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "kombu_failover_strategy",
        "shuffle",
        "Which broker of the URL to try next: round-robin or shuffle. Shuffle (nova-rs's default; oslo's is round-robin) starts each process at a random broker, spreading a fleet's connections over the cluster's nodes.",
        failover_shuffle,
    );

    /// `[oslo_messaging_rabbit] kombu_compression`.
    pub const KOMBU_COMPRESSION: Opt<()> = Opt::new(
        "oslo_messaging_rabbit",
        "kombu_compression",
        "",
        "(Experimental in oslo) gzip or bz2 message compression; nova-rs refuses it at start.",
        no_compression,
    );

    /// `[oslo_messaging_rabbit] rabbit_login_method`.
    pub const RABBIT_LOGIN_METHOD: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "rabbit_login_method",
        "AMQPLAIN",
        "PLAIN, AMQPLAIN, EXTERNAL or RABBIT-CR-DEMO.",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] heartbeat_rate`.
    pub const HEARTBEAT_RATE: Opt<u32> = Opt::new(
        "oslo_messaging_rabbit",
        "heartbeat_rate",
        "3",
        "Heartbeat checks per heartbeat_timeout_threshold (accepted; lapin beats at half the negotiated interval).",
        parse::number::<u32>,
    );

    /// `[oslo_messaging_rabbit] rpc_conn_pool_size`.
    pub const RPC_CONN_POOL_SIZE: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "rpc_conn_pool_size",
        "30",
        "oslo's connection pool size; nova-rs sends on one multiplexed connection, so this has no effect.",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] conn_pool_min_size`.
    pub const CONN_POOL_MIN_SIZE: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "conn_pool_min_size",
        "2",
        "oslo's pool minimum; no effect in nova-rs.",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] conn_pool_ttl`.
    pub const CONN_POOL_TTL: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "conn_pool_ttl",
        "1200",
        "oslo's idle pool connection lifetime; no effect in nova-rs.",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] ssl_version`.
    pub const SSL_VERSION: Opt<String> = Opt::new(
        "oslo_messaging_rabbit",
        "ssl_version",
        "",
        "Accepted for oslo's sake; nova-rs negotiates TLS 1.2 or 1.3 (rustls) and never older versions.",
        parse::text,
    );

    /// `[oslo_messaging_rabbit] ssl_enforce_hostname_verification`.
    pub const SSL_ENFORCE_HOSTNAME_VERIFICATION: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "ssl_enforce_hostname_verification",
        "true",
        "(Deprecated in oslo) nova-rs always verifies the broker's hostname.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] ssl_enforce_fips_mode`.
    pub const SSL_ENFORCE_FIPS_MODE: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "ssl_enforce_fips_mode",
        "false",
        "(Deprecated in oslo, no effect.)",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] publisher_confirms`.
    pub const PUBLISHER_CONFIRMS: Opt<bool> = Opt::new(
        "oslo_messaging_rabbit",
        "publisher_confirms",
        "true",
        "Wait for broker confirms on every publish.",
        parse::boolean,
    );

    /// `[oslo_messaging_rabbit] ssl`.
    pub const SSL: Opt<bool> = Opt::new("oslo_messaging_rabbit", "ssl", "false", "Connect with TLS.", parse::boolean);

    /// `[oslo_messaging_rabbit] ssl_ca_file`.
    pub const SSL_CA_FILE: Opt<Option<PathBuf>> = Opt::new(
        "oslo_messaging_rabbit",
        "ssl_ca_file",
        "",
        "CA bundle (PEM) to verify the broker's certificate.",
        parse::optional_path,
    );

    /// `[oslo_messaging_rabbit] ssl_cert_file`.
    pub const SSL_CERT_FILE: Opt<Option<PathBuf>> =
        Opt::new("oslo_messaging_rabbit", "ssl_cert_file", "", "Client certificate (PEM).", parse::optional_path);

    /// `[oslo_messaging_rabbit] ssl_key_file`.
    pub const SSL_KEY_FILE: Opt<Option<PathBuf>> =
        Opt::new("oslo_messaging_rabbit", "ssl_key_file", "", "Client private key (PEM).", parse::optional_path);
}

pub mod rpc {
    //! `[rpc]`: signed requests.

    #[allow(unused_imports)]
    use std::{path::PathBuf, time::Duration};

    use super::super::{parse, Opt};
    #[allow(unused_imports)]
    use super::checks::*;

    /// `[rpc] signing_keys`.
    pub const SIGNING_KEYS: Opt<Vec<String>> = Opt::new(
        "rpc",
        "signing_keys",
        "",
        "Key files (one secret each; the file name is its id) for signed topics; the first signs, all verify.",
        parse::list,
    );

    /// `[rpc] signed_topics`.
    pub const SIGNED_TOPICS: Opt<Vec<String>> = Opt::new(
        "rpc",
        "signed_topics",
        "",
        "Topics whose requests nova-rs clients sign and servers accept only signed (nova-rs peers only).",
        parse::list,
    );

    /// `[rpc] signing_max_skew`.
    pub const SIGNING_MAX_SKEW: Opt<Duration> = Opt::new(
        "rpc",
        "signing_max_skew",
        "60",
        "Seconds a signed request's timestamp may be from this clock; accepted ids are remembered for twice that.",
        parse::seconds,
    );

    /// `[rpc] signing_replay_file`.
    pub const SIGNING_REPLAY_FILE: Opt<Option<PathBuf>> = Opt::new(
        "rpc",
        "signing_replay_file",
        "",
        "Where accepted signed requests' ids are kept across restarts (default: signed-request-ids under state_path).",
        parse::optional_path,
    );

    /// `[rpc] admin_role`.
    pub const ADMIN_ROLE: Opt<Option<String>> = Opt::new(
        "rpc",
        "admin_role",
        "",
        "Role a signed request must carry for the base API's admin methods (set_log_level); empty: open, as in oslo.",
        parse::optional_text,
    );
}

/// Every option the framework itself reads.
pub const CORE_OPTIONS: &[OptSpec] = &[
    default::HOST.spec,
    default::TRANSPORT_URL.spec,
    default::CONTROL_EXCHANGE.spec,
    default::RPC_RESPONSE_TIMEOUT.spec,
    default::EXECUTOR_THREAD_POOL_SIZE.spec,
    default::MAX_MESSAGE_SIZE.spec,
    default::REPORT_INTERVAL.spec,
    default::SERVICE_DOWN_TIME.spec,
    default::PERIODIC_ENABLE.spec,
    default::PERIODIC_FUZZY_DELAY.spec,
    default::PERIODIC_INTERVAL_MAX.spec,
    default::GRACEFUL_SHUTDOWN_TIMEOUT.spec,
    default::STATE_PATH.spec,
    default::DEBUG.spec,
    default::LOG_JSON.spec,
    default::TRACE_ENABLED.spec,
    trace::SAMPLE_RATIO.spec,
    trace::ALWAYS_SLOWER_THAN.spec,
    default::METRICS_ENABLED.spec,
    default::METRICS_LISTEN.spec,
    database::CONNECTION.spec,
    database::AUTO_MIGRATE.spec,
    rabbit::HEARTBEAT_TIMEOUT_THRESHOLD.spec,
    rabbit::AMQP_DURABLE_QUEUES.spec,
    rabbit::FRAME_MAX.spec,
    rabbit::AMQP_AUTO_DELETE.spec,
    rabbit::RABBIT_QUORUM_QUEUE.spec,
    rabbit::RABBIT_QUORUM_DELIVERY_LIMIT.spec,
    rabbit::RABBIT_TRANSIENT_QUEUES_TTL.spec,
    rabbit::RABBIT_RETRY_INTERVAL.spec,
    rabbit::RABBIT_RETRY_BACKOFF.spec,
    rabbit::RABBIT_INTERVAL_MAX.spec,
    rabbit::KOMBU_MISSING_CONSUMER_RETRY_TIMEOUT.spec,
    rabbit::RABBIT_QUORUM_MAX_MEMORY_LENGTH.spec,
    rabbit::RABBIT_QUORUM_MAX_MEMORY_BYTES.spec,
    rabbit::RABBIT_TRANSIENT_QUORUM_QUEUE.spec,
    rabbit::RABBIT_STREAM_FANOUT.spec,
    rabbit::RABBIT_QOS_PREFETCH_COUNT.spec,
    rabbit::RABBIT_HA_QUEUES.spec,
    rabbit::USE_QUEUE_MANAGER.spec,
    rabbit::HOSTNAME.spec,
    rabbit::PROCESSNAME.spec,
    rabbit::ENABLE_CANCEL_ON_FAILOVER.spec,
    rabbit::DIRECT_MANDATORY_FLAG.spec,
    rabbit::KOMBU_RECONNECT_DELAY.spec,
    rabbit::KOMBU_RECONNECT_SPLAY.spec,
    rabbit::KOMBU_FAILOVER_STRATEGY.spec,
    rabbit::KOMBU_COMPRESSION.spec,
    rabbit::RABBIT_LOGIN_METHOD.spec,
    rabbit::HEARTBEAT_RATE.spec,
    rabbit::RPC_CONN_POOL_SIZE.spec,
    rabbit::CONN_POOL_MIN_SIZE.spec,
    rabbit::CONN_POOL_TTL.spec,
    rabbit::SSL_VERSION.spec,
    rabbit::SSL_ENFORCE_HOSTNAME_VERIFICATION.spec,
    rabbit::SSL_ENFORCE_FIPS_MODE.spec,
    rpc::SIGNING_KEYS.spec,
    rpc::SIGNED_TOPICS.spec,
    rpc::SIGNING_MAX_SKEW.spec,
    rpc::SIGNING_REPLAY_FILE.spec,
    rpc::ADMIN_ROLE.spec,
    rabbit::PUBLISHER_CONFIRMS.spec,
    rabbit::SSL.spec,
    rabbit::SSL_CA_FILE.spec,
    rabbit::SSL_CERT_FILE.spec,
    rabbit::SSL_KEY_FILE.spec,
    crate::notifications::options::DRIVER.spec,
    crate::notifications::options::TRANSPORT_URL.spec,
    crate::notifications::options::TOPICS.spec,
    crate::notifications::options::RETRY.spec,
    crate::notifications::options::ROUTING_CONFIG.spec,
    crate::notifications::options::NOTIFICATION_FORMAT.spec,
    crate::notifications::options::VERSIONED_NOTIFICATIONS_TOPICS.spec,
];

/// The framework's options, parsed and checked.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// `host` (defaults to the hostname).
    pub host: String,
    /// Everything the transport needs.
    pub transport: TransportOptions,
    /// `executor_thread_pool_size`.
    pub executor_thread_pool_size: usize,
    /// `report_interval`.
    pub report_interval: Duration,
    /// `service_down_time`.
    pub service_down_time: Duration,
    /// `periodic_enable`.
    pub periodic_enable: bool,
    /// `periodic_fuzzy_delay`.
    pub periodic_fuzzy_delay: Duration,
    /// `periodic_interval_max`.
    pub periodic_interval_max: Duration,
    /// `graceful_shutdown_timeout`.
    pub graceful_shutdown_timeout: Duration,
    /// `state_path`.
    pub state_path: PathBuf,
    /// `[database] connection`, resolved (SQLite under `state_path` by default).
    pub database_connection: String,
    /// `[database] auto_migrate`.
    pub auto_migrate: bool,
    /// `debug`.
    pub debug: bool,
    /// `log_json`.
    pub log_json: bool,
    /// `metrics_listen`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `trace_enabled`.
    pub trace_enabled: bool,
    /// `[trace] sample_ratio` and `[trace] always_slower_than`.
    pub trace_sampler: nova_rpc::layer::trace::Sampler,
    /// `metrics_enabled`.
    pub metrics_enabled: bool,
}

/// `[rpc]`: signed topics and their keys, the replay window and file, and
/// the base API's admin role.
fn signing(
    c: &Config,
    state_path: &std::path::Path,
) -> Result<Option<std::sync::Arc<nova_rpc::signing::Signing>>, ConfigError> {
    let keys = c.value(&rpc::SIGNING_KEYS)?;
    let admin_role = c.value(&rpc::ADMIN_ROLE)?;
    if keys.is_empty() {
        if admin_role.is_some() {
            return Err(c.invalid("rpc", "admin_role", "only signed requests can carry it: set [rpc] signing_keys"));
        }
        return Ok(None);
    }
    let replay_file = c.value(&rpc::SIGNING_REPLAY_FILE)?.unwrap_or_else(|| state_path.join("signed-request-ids"));
    let signing = nova_rpc::signing::Signing::load(&keys, c.value(&rpc::SIGNED_TOPICS)?)
        .map_err(|e| c.invalid("rpc", "signing_keys", e.to_string()))?
        .with_admin_role(admin_role)
        .with_max_skew(c.value(&rpc::SIGNING_MAX_SKEW)?)
        .with_replay_file(replay_file)
        .map_err(|e| c.invalid("rpc", "signing_replay_file", e.to_string()))?;
    Ok(Some(std::sync::Arc::new(signing)))
}

/// `[oslo_messaging_rabbit]`, read and checked; a combination oslo
/// refuses is blamed on the option that asked for it.
fn rabbit_options(c: &Config) -> Result<RabbitOptions, ConfigError> {
    use rabbit::*;
    c.value(&KOMBU_COMPRESSION)?;
    let r = RabbitOptions {
        heartbeat_timeout_threshold: c.value(&HEARTBEAT_TIMEOUT_THRESHOLD)?,
        amqp_durable_queues: c.value(&AMQP_DURABLE_QUEUES)?,
        amqp_auto_delete: c.value(&AMQP_AUTO_DELETE)?,
        rabbit_quorum_queue: c.value(&RABBIT_QUORUM_QUEUE)?,
        rabbit_quorum_delivery_limit: c.value(&RABBIT_QUORUM_DELIVERY_LIMIT)?,
        rabbit_transient_queues_ttl: c.value(&RABBIT_TRANSIENT_QUEUES_TTL)?,
        rabbit_retry_interval: c.value(&RABBIT_RETRY_INTERVAL)?,
        rabbit_retry_backoff: c.value(&RABBIT_RETRY_BACKOFF)?,
        rabbit_interval_max: c.value(&RABBIT_INTERVAL_MAX)?,
        kombu_missing_consumer_retry_timeout: c.value(&KOMBU_MISSING_CONSUMER_RETRY_TIMEOUT)?,
        publisher_confirms: c.value(&PUBLISHER_CONFIRMS)?,
        ssl: c.value(&SSL)?,
        ssl_ca_file: c.value(&SSL_CA_FILE)?,
        ssl_cert_file: c.value(&SSL_CERT_FILE)?,
        ssl_key_file: c.value(&SSL_KEY_FILE)?,
        frame_max: c.value(&FRAME_MAX)?,
        rabbit_quorum_max_memory_length: c.value(&RABBIT_QUORUM_MAX_MEMORY_LENGTH)?,
        rabbit_quorum_max_memory_bytes: c.value(&RABBIT_QUORUM_MAX_MEMORY_BYTES)?,
        rabbit_transient_quorum_queue: c.value(&RABBIT_TRANSIENT_QUORUM_QUEUE)?,
        rabbit_stream_fanout: c.value(&RABBIT_STREAM_FANOUT)?,
        rabbit_ha_queues: c.value(&RABBIT_HA_QUEUES)?,
        rabbit_qos_prefetch_count: c.value(&RABBIT_QOS_PREFETCH_COUNT)?,
        use_queue_manager: c.value(&USE_QUEUE_MANAGER)?,
        hostname: c.value(&HOSTNAME)?,
        processname: c.value(&PROCESSNAME)?,
        enable_cancel_on_failover: c.value(&ENABLE_CANCEL_ON_FAILOVER)?,
        direct_mandatory_flag: c.value(&DIRECT_MANDATORY_FLAG)?,
        kombu_reconnect_delay: c.value(&KOMBU_RECONNECT_DELAY)?,
        kombu_reconnect_splay: c.value(&KOMBU_RECONNECT_SPLAY)?,
        failover_shuffle: c.value(&KOMBU_FAILOVER_STRATEGY)?,
        rabbit_login_method: c.value(&RABBIT_LOGIN_METHOD)?,
        heartbeat_rate: c.value(&HEARTBEAT_RATE)?,
        ..RabbitOptions::default()
    };
    r.validate().map_err(|e| c.invalid("oslo_messaging_rabbit", e.option(), e.to_string()))?;
    Ok(r)
}

impl CoreOptions {
    /// Read and check the framework's options.
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        use default::*;
        let host = match c.value(&HOST)? {
            Some(h) => h,
            None => hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into()),
        };
        let state_path = c.value(&STATE_PATH)?;
        let database_connection = match c.value(&database::CONNECTION)? {
            Some(url) => url,
            // SQLAlchemy's rule: three slashes and a relative path, or four and an absolute one.
            None => format!("sqlite:///{}", state_path.join("nova.sqlite").display()),
        };
        let mut transport =
            TransportOptions::new(c.value(&TRANSPORT_URL)?).with_control_exchange(c.value(&CONTROL_EXCHANGE)?);
        transport.rpc_response_timeout = c.value(&RPC_RESPONSE_TIMEOUT)?;
        transport.max_message_size = c.value(&MAX_MESSAGE_SIZE)?;
        transport.rabbit = rabbit_options(c)?;
        transport.signing = signing(c, &state_path)?;
        Ok(Self {
            host,
            transport,
            executor_thread_pool_size: c.value(&EXECUTOR_THREAD_POOL_SIZE)?,
            report_interval: c.value(&REPORT_INTERVAL)?,
            service_down_time: c.value(&SERVICE_DOWN_TIME)?,
            periodic_enable: c.value(&PERIODIC_ENABLE)?,
            periodic_fuzzy_delay: c.value(&PERIODIC_FUZZY_DELAY)?,
            periodic_interval_max: c.value(&PERIODIC_INTERVAL_MAX)?,
            graceful_shutdown_timeout: c.value(&GRACEFUL_SHUTDOWN_TIMEOUT)?,
            state_path,
            database_connection,
            auto_migrate: c.value(&database::AUTO_MIGRATE)?,
            debug: c.value(&DEBUG)?,
            log_json: c.value(&LOG_JSON)?,
            metrics_listen: c.value(&METRICS_LISTEN)?,
            trace_enabled: c.value(&TRACE_ENABLED)?,
            trace_sampler: nova_rpc::layer::trace::Sampler::new(
                c.value(&trace::SAMPLE_RATIO)?,
                c.value(&trace::ALWAYS_SLOWER_THAN)?,
            ),
            metrics_enabled: c.value(&METRICS_ENABLED)?,
        })
    }
}
