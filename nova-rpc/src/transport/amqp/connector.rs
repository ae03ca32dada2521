//! Opening AMQP connections: failover across the URL's hosts, backoff with
//! jitter between rounds (oslo's `rabbit_retry_interval`,
//! `rabbit_retry_backoff`, `rabbit_interval_max`), heartbeats, TLS.
//!
//! A connection that is lost is opened again on another host first: the
//! next one of the URL (`kombu_failover_strategy = round-robin`) or a
//! random other one (`shuffle`), as kombu moves on after a connection
//! error. A node that is cut off, paused or stopped is tried last, and the
//! log says which node a connection left and which it went to.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use lapin::{
    tcp::{OwnedIdentity, OwnedTLSConfig},
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism},
    Connection, ConnectionProperties,
};

use super::metrics;
use crate::{
    transport::{HostAddress, RabbitOptions, TransportUrl},
    Result, RpcError,
};

/// Opens connections to the first broker of the URL that answers.
#[derive(Debug)]
pub(crate) struct Connector {
    url: TransportUrl,
    options: RabbitOptions,
    tls: Option<OwnedTLSConfig>,
    next_host: AtomicUsize,
    /// The host each kind of connection (`send`, `consume`) is on, by
    /// index into the URL's hosts.
    on_host: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The connection every listener of the transport consumes on (each
    /// on channels of its own); publishing has its own (see the publisher).
    consuming: tokio::sync::Mutex<Option<std::sync::Arc<Connection>>>,
    /// Listeners holding the consuming connection: the last one to stop closes it.
    consumers: AtomicUsize,
    /// The transport was closed: no connection is opened again.
    closed: std::sync::atomic::AtomicBool,
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RpcError::Transport(format!("cannot read {what} {}: {e}", path.display())))
}

impl Connector {
    pub(crate) fn new(url: TransportUrl, options: RabbitOptions) -> Result<Self> {
        let tls = if url.tls() || options.ssl {
            let cert_chain = match &options.ssl_ca_file {
                Some(p) => Some(
                    String::from_utf8(read_file("ssl_ca_file", p)?)
                        .map_err(|_| RpcError::Transport(format!("ssl_ca_file {} is not PEM text", p.display())))?,
                ),
                None => None,
            };
            let identity = match (&options.ssl_cert_file, &options.ssl_key_file) {
                (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                    pem: read_file("ssl_cert_file", cert)?,
                    key: read_file("ssl_key_file", key)?,
                }),
                (None, None) => None,
                _ => return Err(RpcError::Transport("ssl_cert_file and ssl_key_file must be set together".into())),
            };
            Some(OwnedTLSConfig { identity, cert_chain })
        } else {
            None
        };
        // `kombu_failover_strategy = shuffle`: each process starts at a random host.
        let first = if options.failover_shuffle { fastrand::usize(..url.hosts.len().max(1)) } else { 0 };
        Ok(Self {
            url,
            options,
            tls,
            next_host: AtomicUsize::new(first),
            on_host: std::sync::Mutex::default(),
            consuming: tokio::sync::Mutex::default(),
            consumers: AtomicUsize::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn options(&self) -> &RabbitOptions {
        &self.options
    }

    async fn connect_host(&self, host: &HostAddress, purpose: &str) -> Result<Connection> {
        let heartbeat = match self.url.param("heartbeat") {
            Some(h) => h.parse().ok(),
            None => Some(self.options.heartbeat_timeout_threshold),
        };
        let uri = AMQPUri {
            scheme: if self.tls.is_some() { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username: host.username.clone(), password: host.password.clone() },
                host: host.host.clone(),
                port: host.port,
            },
            vhost: self.url.vhost.clone(),
            query: AMQPQueryString {
                heartbeat,
                connection_timeout: Some(self.options.connection_timeout.as_millis() as u64),
                frame_max: Some(self.options.frame_max),
                auth_mechanism: Some(match self.options.rabbit_login_method.as_str() {
                    "PLAIN" => SASLMechanism::Plain,
                    "EXTERNAL" => SASLMechanism::External,
                    "RABBIT-CR-DEMO" => SASLMechanism::RabbitCrDemo,
                    _ => SASLMechanism::AMQPlain,
                }),
                ..AMQPQueryString::default()
            },
        };
        let program = std::env::args()
            .next()
            .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "nova-rs".into());
        let name = format!("{program}:{}:{purpose}", std::process::id());
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        let connect = Connection::connect_uri_with_config(uri, props, self.tls.clone().unwrap_or_default(), runtime);
        match tokio::time::timeout(self.options.connection_timeout + Duration::from_secs(1), connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RpcError::Transport(format!("connecting to {host:?} timed out"))),
        }
    }

    /// Connect to the first host that answers, starting with the last good
    /// one. After a full round of failures wait the backoff delay; give up
    /// after `retry` rounds (`None`: keep trying).
    /// The transport's consuming connection, opened (or opened again, once
    /// lost) by the first listener that needs it: a process's servers,
    /// work queues, notification listeners and reply queues share one
    /// connection, so a service holds two (this and the publisher's).
    /// RabbitMQ throttles a connection that publishes too fast; consumers
    /// never share one with a publisher, so throttling never slows them.
    pub(crate) async fn consuming(&self) -> Result<std::sync::Arc<Connection>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(RpcError::Transport("the transport is closed".into()));
        }
        let mut shared = self.consuming.lock().await;
        if let Some(c) = shared.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let conn = std::sync::Arc::new(self.connect("consume", None).await?);
        *shared = Some(conn.clone());
        Ok(conn)
    }

    /// A listener starts: it holds the consuming connection until
    /// [`release`](Self::release).
    pub(crate) fn hold(&self) {
        self.consumers.fetch_add(1, Ordering::SeqCst);
    }

    /// A listener stopped; the last one closes the consuming connection.
    pub(crate) async fn release(&self) {
        if self.consumers.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut shared = self.consuming.lock().await;
            if self.consumers.load(Ordering::SeqCst) == 0 {
                if let Some(c) = shared.take() {
                    let _ = c.close(200, "no listener left".into()).await;
                }
            }
        }
    }

    /// The transport closes: its consuming connection too, for good
    /// (listeners stop).
    pub(crate) async fn close_consuming(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(c) = self.consuming.lock().await.take() {
            let _ = c.close(200, "closing".into()).await;
        }
    }

    /// About how long [`connect`](Self::connect) takes to give up after
    /// `retry` retries: each round tries every host, then waits.
    pub(crate) fn retry_budget(&self, retry: u32) -> std::time::Duration {
        let hosts = u32::try_from(self.url.hosts.len()).unwrap_or(u32::MAX);
        (0..=retry).map(|round| self.options.connection_timeout * hosts + self.options.reconnect_delay(round)).sum()
    }

    /// The host the `purpose` connection is (or was last) on, for the log.
    pub(crate) fn host_of(&self, purpose: &str) -> Option<&HostAddress> {
        let i = *crate::lock(&self.on_host).get(purpose)?;
        self.url.hosts.get(i)
    }

    /// Where a connection that was on host `lost` tries first: the next
    /// host (round-robin) or a random other one (shuffle).
    fn move_on_from(&self, lost: usize) {
        let n = self.url.hosts.len();
        if n < 2 || self.next_host.load(Ordering::Relaxed) % n != lost {
            return;
        }
        let step = if self.options.failover_shuffle { fastrand::usize(1..n) } else { 1 };
        self.next_host.store((lost + step) % n, Ordering::Relaxed);
    }

    fn strategy(&self) -> &'static str {
        if self.options.failover_shuffle {
            "shuffle"
        } else {
            "round-robin"
        }
    }

    pub(crate) async fn connect(&self, purpose: &str, retry: Option<u32>) -> Result<Connection> {
        let hosts = &self.url.hosts;
        let lost = crate::lock(&self.on_host).get(purpose).copied();
        if let Some(lost) = lost {
            self.move_on_from(lost);
        }
        let mut round = 0u32;
        loop {
            let mut last_error = None;
            for _ in 0..hosts.len() {
                let i = self.next_host.load(Ordering::Relaxed) % hosts.len();
                match self.connect_host(&hosts[i], purpose).await {
                    Ok(conn) => {
                        watch_blocked(&conn, purpose);
                        crate::lock(&self.on_host).insert(purpose.to_owned(), i);
                        match lost {
                            Some(lost) => tracing::info!(
                                host = ?hosts[i],
                                previous = ?hosts[lost],
                                purpose,
                                strategy = self.strategy(),
                                rounds = round,
                                "connected to AMQP server again"
                            ),
                            None => tracing::debug!(host = ?hosts[i], purpose, "connected to AMQP server"),
                        }
                        return Ok(conn);
                    }
                    Err(e) => {
                        tracing::debug!(host = ?hosts[i], purpose, error = %e, "AMQP connect failed");
                        self.next_host.store(i + 1, Ordering::Relaxed);
                        last_error = Some(e);
                    }
                }
            }
            let error = last_error.unwrap_or_else(|| RpcError::Transport("no hosts in transport URL".into()));
            if retry.is_some_and(|r| round >= r) {
                return Err(RpcError::Transport(format!(
                    "AMQP server {} unreachable after {} attempt(s): {error}",
                    self.url,
                    round + 1
                )));
            }
            let delay = self.options.reconnect_delay(round);
            if round == 0 {
                tracing::warn!(url = %self.url, purpose, error = %error, "AMQP server unreachable; retrying with backoff");
            }
            tracing::debug!(url = %self.url, delay_ms = delay.as_millis() as u64, "waiting before reconnecting");
            tokio::time::sleep(delay).await;
            round += 1;
        }
    }
}

/// Log and count the broker blocking and unblocking `conn` (a memory or
/// disk alarm), once per change. Publishes meanwhile wait, up to their deadline.
fn watch_blocked(conn: &Connection, purpose: &str) {
    use futures_util::StreamExt;
    let mut events = conn.events_listener();
    let purpose = purpose.to_owned();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) => {
                    metrics::metrics().connection_blocked.inc();
                    tracing::warn!(%reason, purpose, "the broker blocked this connection; publishes wait until it unblocks");
                }
                lapin::Event::ConnectionUnblocked => {
                    metrics::metrics().connection_unblocked.inc();
                    tracing::info!(purpose, "the broker unblocked this connection");
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(shuffle: bool) -> Connector {
        let url = TransportUrl::parse("rabbit://a:5672,b:5672,c:5672/").unwrap();
        Connector::new(url, RabbitOptions { failover_shuffle: shuffle, ..RabbitOptions::default() }).unwrap()
    }

    #[test]
    fn a_lost_connection_tries_the_next_host_first() {
        let c = connector(false);
        c.next_host.store(1, Ordering::Relaxed);
        c.move_on_from(1);
        assert_eq!(c.next_host.load(Ordering::Relaxed), 2);
        c.move_on_from(2);
        assert_eq!(c.next_host.load(Ordering::Relaxed), 0, "round-robin wraps");
    }

    #[test]
    fn shuffle_moves_to_a_random_other_host() {
        for _ in 0..50 {
            let c = connector(true);
            c.next_host.store(1, Ordering::Relaxed);
            c.move_on_from(1);
            assert_ne!(c.next_host.load(Ordering::Relaxed) % 3, 1, "never the lost host first");
        }
    }

    #[test]
    fn shuffle_spreads_processes_over_the_hosts() {
        let firsts: std::collections::HashSet<usize> =
            (0..100).map(|_| connector(true).next_host.load(Ordering::Relaxed)).collect();
        assert_eq!(firsts.len(), 3, "a hundred processes start on every host: {firsts:?}");
        assert_eq!(connector(false).next_host.load(Ordering::Relaxed), 0, "round-robin starts at the first");
    }

    #[test]
    fn another_connection_already_moved_on() {
        // The publisher moved on already: the listener does not skip a host.
        let c = connector(false);
        c.next_host.store(2, Ordering::Relaxed);
        c.move_on_from(1);
        assert_eq!(c.next_host.load(Ordering::Relaxed), 2);
    }
}
