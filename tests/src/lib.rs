//! Shared set-up for the integration tests: a private RabbitMQ vhost per
//! test (deleted when the test ends, pass or fail), transports for both
//! kinds, and unique names.
//!
//! Tests that need the broker fail loudly when it is missing: they never
//! skip. Point them elsewhere with `NOVA_TEST_RABBIT` (host:port) and
//! `RABBITMQCTL` (the control command).

use std::{process::Command, sync::Arc, time::Duration};

use nova_rpc::transport::{self, Transport, TransportOptions};

/// A name no other test uses: `prefix-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Log to the test output when `RUST_LOG` asks for it.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let ctl = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let out = Command::new(&ctl)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {ctl}: {e} (is RabbitMQ installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{ctl} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A RabbitMQ vhost that exists for one test.
#[derive(Debug)]
pub struct TestVhost {
    /// The vhost name.
    pub name: String,
}

impl TestVhost {
    /// Create a vhost, give `guest` every permission on it. Panics with a
    /// clear message when the broker cannot be reached.
    pub fn new() -> Self {
        let name = unique("nova-test");
        rabbitmqctl(&["add_vhost", &name]).unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e}"));
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
            .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e}"));
        Self { name }
    }

    /// `rabbit://guest:guest@127.0.0.1:5672/<vhost>`.
    pub fn url(&self) -> String {
        let addr = std::env::var("NOVA_TEST_RABBIT").unwrap_or_else(|_| "127.0.0.1:5672".into());
        format!("rabbit://guest:guest@{addr}/{}", self.name)
    }
}

impl Default for TestVhost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Which transport a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `memory://<unique>`.
    Memory,
    /// RabbitMQ on 127.0.0.1, in a private vhost.
    Rabbit,
}

/// One test's messaging world: its URL, and the vhost that backs it.
#[derive(Debug)]
pub struct Bus {
    /// The transport URL.
    pub url: String,
    /// The test's own `control_exchange`.
    pub exchange: String,
    _vhost: Option<TestVhost>,
}

impl Bus {
    /// A fresh, isolated bus of `kind`.
    pub fn new(kind: Kind) -> Self {
        init_logging();
        let exchange = unique("nova");
        match kind {
            Kind::Memory => Self { url: format!("memory://{}", unique("bus")), exchange, _vhost: None },
            Kind::Rabbit => {
                let vhost = TestVhost::new();
                Self { url: vhost.url(), exchange, _vhost: Some(vhost) }
            }
        }
    }

    /// Options for a transport on this bus.
    pub fn options(&self) -> TransportOptions {
        let mut o = TransportOptions::new(self.url.clone()).with_control_exchange(self.exchange.clone());
        o.rpc_response_timeout = Duration::from_secs(10);
        o
    }

    /// A new transport (a separate connection set) on this bus.
    pub async fn transport(&self) -> Arc<dyn Transport> {
        self.transport_with(self.options()).await
    }

    /// A new transport with custom options.
    pub async fn transport_with(&self, options: TransportOptions) -> Arc<dyn Transport> {
        transport::connect(options).await.expect("transport")
    }
}

/// Generate one `#[tokio::test]` per transport kind for each listed case:
/// `transport_suite!(call_roundtrip, cast_arrives);` expects
/// `async fn call_roundtrip(kind: Kind)` and so on in scope.
#[macro_export]
macro_rules! transport_suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() { super::$case($crate::Kind::Memory).await }
            )*
        }
        mod rabbit {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() { super::$case($crate::Kind::Rabbit).await }
            )*
        }
    };
}
