//! The framework's own options, with Nova's and oslo's names and defaults.

use std::{path::PathBuf, time::Duration};

use nova_rpc::transport::{RabbitOptions, TransportOptions};

use super::{Config, ConfigError, OptSpec};

macro_rules! opt {
    ($section:literal, $name:literal, $default:literal, $help:literal) => {
        OptSpec { section: $section, name: $name, default: $default, help: $help }
    };
}

/// Every option the framework itself reads.
pub const CORE_OPTIONS: &[OptSpec] = &[
    opt!("DEFAULT", "host", "", "Name of this node (default: the machine's hostname); servers listen on topic.host."),
    opt!(
        "DEFAULT",
        "transport_url",
        "memory://",
        "Messaging transport: rabbit://user:pass@host:port[,host2:port]/vhost, amqps://…, or memory://."
    ),
    opt!("DEFAULT", "control_exchange", "nova", "The topic exchange RPC messages are published to."),
    opt!("DEFAULT", "rpc_response_timeout", "60", "Seconds to wait for a reply to a call."),
    opt!("DEFAULT", "executor_thread_pool_size", "64", "Requests a server runs at once (also the broker prefetch)."),
    opt!("DEFAULT", "max_message_size", "16777216", "Largest message, in bytes, a server accepts or a client sends."),
    opt!("DEFAULT", "report_interval", "10", "Seconds between service heartbeats into the services table."),
    opt!("DEFAULT", "service_down_time", "60", "A service not seen for this many seconds is down."),
    opt!("DEFAULT", "periodic_enable", "true", "Run the manager's periodic tasks."),
    opt!(
        "DEFAULT",
        "periodic_fuzzy_delay",
        "60",
        "Random delay (0..N seconds) before the first periodic run, to spread load."
    ),
    opt!("DEFAULT", "periodic_interval_max", "60", "Longest sleep of the periodic loop, in seconds."),
    opt!("DEFAULT", "graceful_shutdown_timeout", "60", "Seconds to let in-flight requests finish on SIGTERM."),
    opt!("DEFAULT", "state_path", "nova-state", "Directory for local state (the embedded SQLite database)."),
    opt!("DEFAULT", "debug", "false", "Log at debug level."),
    opt!("DEFAULT", "log_json", "false", "Log one JSON object per line."),
    opt!(
        "DEFAULT",
        "trace_enabled",
        "true",
        "Record request traces (spans cast to the trace topic, off the hot path)."
    ),
    opt!(
        "trace",
        "sample_ratio",
        "0.01",
        "Share of requests traced (0 to 1), decided where a request enters and kept at every hop; failed and slow hops are traced whatever it says."
    ),
    opt!(
        "trace",
        "always_slower_than",
        "1.0",
        "Seconds: a hop that takes at least this long is traced even when its request is not sampled."
    ),
    opt!("DEFAULT", "metrics_enabled", "true", "Count requests, errors, in-flight and latency per topic and method."),
    opt!("DEFAULT", "metrics_listen", "", "Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9100)."),
    opt!(
        "database",
        "connection",
        "",
        "Database URL: postgresql://user@host/db, or SQLite as SQLAlchemy writes it: sqlite:////var/lib/nova/nova.sqlite (four slashes: an absolute path) or sqlite:///nova.sqlite (three: relative to the working directory); the path is logged at start (default: SQLite under state_path)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "heartbeat_timeout_threshold",
        "60",
        "Seconds without a heartbeat before a broker connection is dead (0 = off)."
    ),
    opt!("oslo_messaging_rabbit", "amqp_durable_queues", "false", "Durable topic exchange and queues."),
    opt!(
        "oslo_messaging_rabbit",
        "frame_max",
        "16384",
        "Largest AMQP frame in bytes; each connection buffers 64 frames, so this bounds its memory."
    ),
    opt!("oslo_messaging_rabbit", "amqp_auto_delete", "false", "Auto-delete topic exchange and queues."),
    opt!("oslo_messaging_rabbit", "rabbit_quorum_queue", "false", "Topic queues are quorum queues."),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_quorum_delivery_limit",
        "0",
        "Quorum queues: dead-letter a message after this many deliveries (0 = never)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_transient_queues_ttl",
        "1800",
        "Seconds an unused reply or fanout queue lives (x-expires)."
    ),
    opt!("oslo_messaging_rabbit", "rabbit_retry_interval", "1", "Seconds before the first reconnect."),
    opt!("oslo_messaging_rabbit", "rabbit_retry_backoff", "2", "Seconds added to the reconnect delay at each attempt."),
    opt!("oslo_messaging_rabbit", "rabbit_interval_max", "30", "Longest reconnect delay, in seconds."),
    opt!(
        "oslo_messaging_rabbit",
        "kombu_missing_consumer_retry_timeout",
        "60",
        "Seconds a reply to a missing reply queue is retried."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_quorum_max_memory_length",
        "0",
        "Quorum queues: keep at most this many messages in memory (x-max-in-memory-length; 0 = no limit)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_quorum_max_memory_bytes",
        "0",
        "Quorum queues: keep at most this many bytes in memory (x-max-in-memory-bytes; 0 = no limit)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_transient_quorum_queue",
        "false",
        "Reply and fanout queues are durable quorum queues too (HA), and the fanout exchange is durable."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_stream_fanout",
        "false",
        "One durable <topic>_fanout stream queue per topic instead of a fanout queue per server; \
         needs rabbit_transient_quorum_queue and rabbit_qos_prefetch_count > 0."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_qos_prefetch_count",
        "0",
        "Messages a consumer may hold unacknowledged (0 = the server's free capacity, executor_thread_pool_size)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rabbit_ha_queues",
        "false",
        "Legacy x-ha-policy argument; RabbitMQ ignores it since 3.0. Mirror classic queues with a policy, \
         or use rabbit_quorum_queue."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "use_queue_manager",
        "false",
        "Name reply and fanout queues <hostname>:<processname>:<n> (oslo's QManager), so a restart reuses them."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "hostname",
        "",
        "Host part of queue-manager names (default: the machine's hostname)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "processname",
        "",
        "Process part of queue-manager names (default: the program name)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "enable_cancel_on_failover",
        "false",
        "Consumers ask for x-cancel-on-ha-failover, so the broker cancels them when their queue fails over."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "direct_mandatory_flag",
        "true",
        "(Deprecated in oslo) Publish replies mandatory, so a reply to a vanished caller is known at once."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "kombu_reconnect_delay",
        "1.0",
        "Seconds to wait before consuming again a queue whose consumer the broker cancelled."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "kombu_reconnect_splay",
        "0.0",
        "Up to this many random extra seconds before consuming a cancelled queue again."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "kombu_failover_strategy",
        "round-robin",
        "Which broker of the URL to try next: round-robin or shuffle."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "kombu_compression",
        "",
        "(Experimental in oslo) gzip or bz2 message compression; nova-rs refuses it at start."
    ),
    opt!("oslo_messaging_rabbit", "rabbit_login_method", "AMQPLAIN", "PLAIN, AMQPLAIN, EXTERNAL or RABBIT-CR-DEMO."),
    opt!(
        "oslo_messaging_rabbit",
        "heartbeat_rate",
        "3",
        "Heartbeat checks per heartbeat_timeout_threshold (accepted; lapin beats at half the negotiated interval)."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "rpc_conn_pool_size",
        "30",
        "oslo's connection pool size; nova-rs sends on one multiplexed connection, so this has no effect."
    ),
    opt!("oslo_messaging_rabbit", "conn_pool_min_size", "2", "oslo's pool minimum; no effect in nova-rs."),
    opt!(
        "oslo_messaging_rabbit",
        "conn_pool_ttl",
        "1200",
        "oslo's idle pool connection lifetime; no effect in nova-rs."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "ssl_version",
        "",
        "Accepted for oslo's sake; nova-rs negotiates TLS 1.2 or 1.3 (rustls) and never older versions."
    ),
    opt!(
        "oslo_messaging_rabbit",
        "ssl_enforce_hostname_verification",
        "true",
        "(Deprecated in oslo) nova-rs always verifies the broker's hostname."
    ),
    opt!("oslo_messaging_rabbit", "ssl_enforce_fips_mode", "false", "(Deprecated in oslo, no effect.)"),
    opt!(
        "rpc",
        "signing_keys",
        "",
        "Key files (one secret each; the file name is its id) for signed topics; the first signs, all verify."
    ),
    opt!(
        "rpc",
        "signed_topics",
        "",
        "Topics whose requests nova-rs clients sign and servers accept only signed (nova-rs peers only)."
    ),
    opt!(
        "rpc",
        "signing_max_skew",
        "60",
        "Seconds a signed request's timestamp may be from this clock; accepted ids are remembered for twice that."
    ),
    opt!(
        "rpc",
        "signing_replay_file",
        "",
        "Where accepted signed requests' ids are kept across restarts (default: signed-request-ids under state_path)."
    ),
    opt!(
        "rpc",
        "admin_role",
        "",
        "Role a signed request must carry for the base API's admin methods (set_log_level); empty: open, as in oslo."
    ),
    opt!("oslo_messaging_rabbit", "publisher_confirms", "true", "Wait for broker confirms on every publish."),
    opt!("oslo_messaging_rabbit", "ssl", "false", "Connect with TLS."),
    opt!("oslo_messaging_rabbit", "ssl_ca_file", "", "CA bundle (PEM) to verify the broker's certificate."),
    opt!("oslo_messaging_rabbit", "ssl_cert_file", "", "Client certificate (PEM)."),
    opt!("oslo_messaging_rabbit", "ssl_key_file", "", "Client private key (PEM)."),
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

/// A comma-separated list option, blanks dropped.
fn list(c: &Config, section: &str, name: &str) -> Result<Vec<String>, ConfigError> {
    let raw = c.get::<String>(section, name)?.unwrap_or_default();
    Ok(raw.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

/// `[rpc]`: signed topics and their keys, the replay window and file, and
/// the base API's admin role.
fn signing(
    c: &Config,
    state_path: &std::path::Path,
) -> Result<Option<std::sync::Arc<nova_rpc::signing::Signing>>, ConfigError> {
    let keys = list(c, "rpc", "signing_keys")?;
    let admin_role = c.get::<String>("rpc", "admin_role")?.filter(|r| !r.is_empty());
    if keys.is_empty() {
        if admin_role.is_some() {
            return Err(c.invalid("rpc", "admin_role", "only signed requests can carry it: set [rpc] signing_keys"));
        }
        return Ok(None);
    }
    let replay_file = match c.get::<PathBuf>("rpc", "signing_replay_file")? {
        Some(f) if !f.as_os_str().is_empty() => f,
        _ => state_path.join("signed-request-ids"),
    };
    let signing = nova_rpc::signing::Signing::load(&keys, list(c, "rpc", "signed_topics")?)
        .map_err(|e| c.invalid("rpc", "signing_keys", e.to_string()))?
        .with_admin_role(admin_role)
        .with_max_skew(c.parse_with("rpc", "signing_max_skew", seconds)?.unwrap_or(nova_rpc::signing::DEFAULT_MAX_SKEW))
        .with_replay_file(replay_file)
        .map_err(|e| c.invalid("rpc", "signing_replay_file", e.to_string()))?;
    Ok(Some(std::sync::Arc::new(signing)))
}

fn seconds(v: &str) -> Result<Duration, String> {
    let f: f64 = v.parse().map_err(|_| "expected a number of seconds".to_owned())?;
    if !(0.0..=1e9).contains(&f) {
        return Err("must be between 0 and 1e9 seconds".into());
    }
    Ok(Duration::from_secs_f64(f))
}

impl CoreOptions {
    /// Read and check the framework's options.
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        const D: &str = "DEFAULT";
        const R: &str = "oslo_messaging_rabbit";
        let secs = |section: &str, name: &str| -> Result<Duration, ConfigError> {
            c.parse_with(section, name, seconds)?
                .ok_or_else(|| ConfigError::Missing { section: section.into(), name: name.into() })
        };
        let host = match c.get::<String>(D, "host")? {
            Some(h) => h,
            None => hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into()),
        };
        let state_path: PathBuf = c.require(D, "state_path")?;
        let database_connection = match c.get::<String>("database", "connection")? {
            Some(url) => url,
            // SQLAlchemy's rule: three slashes and a relative path, or four and an absolute one.
            None => format!("sqlite:///{}", state_path.join("nova.sqlite").display()),
        };
        let transport_url: String = c.require(D, "transport_url")?;
        c.parse_with(D, "transport_url", |v| {
            nova_rpc::transport::TransportUrl::parse(v).map(|_| ()).map_err(|e| e.to_string())
        })?;
        let path = |name: &str| c.get::<PathBuf>(R, name);
        let rabbit = RabbitOptions {
            heartbeat_timeout_threshold: c.require(R, "heartbeat_timeout_threshold")?,
            amqp_durable_queues: c.get_bool(R, "amqp_durable_queues")?.unwrap_or(false),
            amqp_auto_delete: c.get_bool(R, "amqp_auto_delete")?.unwrap_or(false),
            rabbit_quorum_queue: c.get_bool(R, "rabbit_quorum_queue")?.unwrap_or(false),
            rabbit_quorum_delivery_limit: c.require(R, "rabbit_quorum_delivery_limit")?,
            rabbit_transient_queues_ttl: secs(R, "rabbit_transient_queues_ttl")?,
            rabbit_retry_interval: secs(R, "rabbit_retry_interval")?,
            rabbit_retry_backoff: secs(R, "rabbit_retry_backoff")?,
            rabbit_interval_max: secs(R, "rabbit_interval_max")?,
            kombu_missing_consumer_retry_timeout: secs(R, "kombu_missing_consumer_retry_timeout")?,
            publisher_confirms: c.get_bool(R, "publisher_confirms")?.unwrap_or(true),
            ssl: c.get_bool(R, "ssl")?.unwrap_or(false),
            ssl_ca_file: path("ssl_ca_file")?,
            ssl_cert_file: path("ssl_cert_file")?,
            ssl_key_file: path("ssl_key_file")?,
            frame_max: c.require(R, "frame_max")?,
            rabbit_quorum_max_memory_length: c.require(R, "rabbit_quorum_max_memory_length")?,
            rabbit_quorum_max_memory_bytes: c.require(R, "rabbit_quorum_max_memory_bytes")?,
            rabbit_transient_quorum_queue: c.get_bool(R, "rabbit_transient_quorum_queue")?.unwrap_or(false),
            rabbit_stream_fanout: c.get_bool(R, "rabbit_stream_fanout")?.unwrap_or(false),
            rabbit_ha_queues: c.get_bool(R, "rabbit_ha_queues")?.unwrap_or(false),
            rabbit_qos_prefetch_count: c.require(R, "rabbit_qos_prefetch_count")?,
            use_queue_manager: c.get_bool(R, "use_queue_manager")?.unwrap_or(false),
            hostname: c.get::<String>(R, "hostname")?.unwrap_or_default(),
            processname: c.get::<String>(R, "processname")?.unwrap_or_default(),
            enable_cancel_on_failover: c.get_bool(R, "enable_cancel_on_failover")?.unwrap_or(false),
            direct_mandatory_flag: c.get_bool(R, "direct_mandatory_flag")?.unwrap_or(true),
            kombu_reconnect_delay: c
                .parse_with(R, "kombu_reconnect_delay", |v| {
                    seconds(v).and_then(|d| {
                        // oslo: at most 0.9 × its 5 s requeue interval.
                        (d.as_secs_f64() <= 4.5).then_some(d).ok_or_else(|| "must be at most 4.5 seconds".to_owned())
                    })
                })?
                .unwrap_or(Duration::from_secs(1)),
            kombu_reconnect_splay: secs(R, "kombu_reconnect_splay")?,
            failover_shuffle: c
                .parse_with(R, "kombu_failover_strategy", |v| match v {
                    "round-robin" => Ok(false),
                    "shuffle" => Ok(true),
                    _ => Err("expected round-robin or shuffle".into()),
                })?
                .unwrap_or(false),
            rabbit_login_method: c.require(R, "rabbit_login_method")?,
            heartbeat_rate: c.require(R, "heartbeat_rate")?,
            ..RabbitOptions::default()
        };
        c.parse_with(R, "kombu_compression", |v| {
            if v.is_empty() {
                Ok(())
            } else {
                Err("message compression is not supported by nova-rs; leave it unset on every service".into())
            }
        })?;
        // Combinations oslo refuses, blamed on the option that asked for them.
        if let Err(reason) = rabbit.validate() {
            let name = if reason.contains("rabbit_stream_fanout") {
                "rabbit_stream_fanout"
            } else if reason.contains("rabbit_ha_queues") {
                "rabbit_ha_queues"
            } else {
                "rabbit_login_method"
            };
            c.parse_with(R, name, |_| Err::<(), _>(reason))?;
        }
        let mut transport =
            TransportOptions::new(transport_url).with_control_exchange(c.require::<String>(D, "control_exchange")?);
        transport.rpc_response_timeout = secs(D, "rpc_response_timeout")?;
        transport.max_message_size = c.require(D, "max_message_size")?;
        transport.rabbit = rabbit;
        transport.signing = signing(c, &state_path)?;
        let executor_thread_pool_size = c
            .parse_with(D, "executor_thread_pool_size", |v| match v.parse::<usize>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n),
                _ => Err("expected a whole number from 1 to 65535".into()),
            })?
            .unwrap_or(64);
        Ok(Self {
            host,
            transport,
            executor_thread_pool_size,
            report_interval: secs(D, "report_interval")?,
            service_down_time: secs(D, "service_down_time")?,
            periodic_enable: c.get_bool(D, "periodic_enable")?.unwrap_or(true),
            periodic_fuzzy_delay: secs(D, "periodic_fuzzy_delay")?,
            periodic_interval_max: secs(D, "periodic_interval_max")?,
            graceful_shutdown_timeout: secs(D, "graceful_shutdown_timeout")?,
            state_path,
            database_connection,
            debug: c.get_bool(D, "debug")?.unwrap_or(false),
            log_json: c.get_bool(D, "log_json")?.unwrap_or(false),
            metrics_listen: c.get(D, "metrics_listen")?,
            trace_enabled: c.get_bool(D, "trace_enabled")?.unwrap_or(true),
            trace_sampler: nova_rpc::layer::trace::Sampler::new(
                c.parse_with("trace", "sample_ratio", |v| match v.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err("expected a number from 0 to 1".to_owned()),
                })?
                .unwrap_or(nova_rpc::layer::trace::DEFAULT_SAMPLE_RATIO),
                secs("trace", "always_slower_than")?,
            ),
            metrics_enabled: c.get_bool(D, "metrics_enabled")?.unwrap_or(true),
        })
    }
}
