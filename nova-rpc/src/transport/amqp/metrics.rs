//! What the AMQP transport counts: reconnects, consumers the broker
//! cancelled, alarms, and refused publishes, registered with
//! [`crate::metrics`] when the first AMQP transport connects.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;

/// The AMQP transport's counters.
#[derive(Debug, Default)]
pub struct AmqpMetrics {
    /// AMQP connections re-established after a loss.
    pub reconnects: Counter,
    /// Consumers the broker cancelled (a queue deleted, its node lost, a
    /// leader moved); each is consumed again.
    pub consumer_cancels: Counter,
    /// Times the broker blocked a connection (`connection.blocked`: a memory or disk alarm).
    pub connection_blocked: Counter,
    /// Times the broker unblocked a connection.
    pub connection_unblocked: Counter,
    /// Publishes the broker refused (`basic.nack`), each retried after a backoff.
    pub publish_nacks: Counter,
}

/// The process's AMQP counters.
pub fn metrics() -> &'static AmqpMetrics {
    static METRICS: OnceLock<AmqpMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = AmqpMetrics::default();
        let register = crate::metrics::register;
        register("amqp_reconnects", "AMQP connections re-established after a loss", m.reconnects.clone());
        register("consumer_cancels", "Consumers the broker cancelled, each consumed again", m.consumer_cancels.clone());
        register(
            "amqp_connection_blocked",
            "Times the broker blocked a connection (memory or disk alarm)",
            m.connection_blocked.clone(),
        );
        register(
            "amqp_connection_unblocked",
            "Times the broker unblocked a connection",
            m.connection_unblocked.clone(),
        );
        register(
            "amqp_publish_nacks",
            "Publishes the broker refused, retried after a backoff",
            m.publish_nacks.clone(),
        );
        m
    })
}
