//! Testing services and their callers (cargo feature `testing`).
//!
//! A [`TestBus`] is one test's world: a private `memory://` bus and a
//! SQLite database of service records in a temporary directory. Start a
//! manager on it in one line and get a client to it; serve a *fake* under
//! a topic the code under test calls, so client code is tested against the
//! fake a service author publishes (Amanda's pattern), with real routing,
//! encoding and typed-argument checks in between.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use nova_core::{rpc_api, testing::TestBus, Manager};
//! use nova_rpc::{RequestContext, RpcError};
//!
//! #[derive(Default)]
//! struct Greeter;
//!
//! #[rpc_api(version = "1.0")]
//! impl Greeter {
//!     pub async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
//!         Ok(format!("Hello, {name}!"))
//!     }
//!
//!     #[periodic_task(spacing = 60)]
//!     async fn tidy(&self, _ctx: RequestContext) -> Result<(), RpcError> {
//!         Ok(())
//!     }
//! }
//! impl Manager for Greeter {}
//!
//! let bus = TestBus::new().await;
//! let greeter = Arc::new(Greeter::default());
//! let client = GreeterClient::new(bus.serve("greeter", "h1", greeter.clone()).await);
//! assert_eq!(client.greet(&RequestContext::new(), "Ada".into()).await.unwrap(), "Hello, Ada!");
//! // Periodic tasks are off on a bus: run one when the test wants it.
//! bus.run_periodic(&greeter, "tidy").await.unwrap();
//! bus.stop().await;
//! # });
//! ```
//!
//! Tests wait with [`eventually`]: for something they can observe (a
//! counter, a record, a log line), polled, with a generous upper bound. A
//! fixed sleep is never a way to wait, and "nothing more arrived" is shown
//! with a sentinel sent after the message under test.

use std::{path::PathBuf, sync::Arc, time::Duration};

use nova_rpc::{
    transport::{self, Transport, TransportOptions},
    RpcClient, Target,
};
use tokio::sync::Mutex;

use crate::{
    db::{services::ServiceRecords, Database},
    manager::{Manager, ManagerHandle, RpcApi},
    service::{RunningService, Service, ServiceOptions},
};

/// One test's bus and service records; see the module docs.
pub struct TestBus {
    transport: Arc<dyn Transport>,
    records: ServiceRecords,
    db: Database,
    dir: PathBuf,
    running: Mutex<Vec<RunningService>>,
}

impl std::fmt::Debug for TestBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBus").field("transport", &self.transport).finish()
    }
}

impl TestBus {
    /// A fresh, private bus with an empty, migrated SQLite database.
    ///
    /// # Panics
    /// When the temporary directory or the database cannot be created.
    pub async fn new() -> Self {
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(format!("nova-{name}"));
        let url = format!("sqlite:///{}", dir.join("nova.sqlite").display());
        let db = Database::connect(&url).await.expect("test database");
        db.migrate(crate::db::services::MIGRATIONS).await.expect("migrations");
        let mut options = TransportOptions::new(format!("memory://{name}"));
        options.rpc_response_timeout = Duration::from_secs(10);
        let transport = transport::connect(options).await.expect("memory transport");
        Self { transport, records: ServiceRecords::new(db.clone()), db, dir, running: Mutex::default() }
    }

    /// The bus's private directory (absolute; its database is
    /// `nova.sqlite` there), removed by [`stop`](Self::stop).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The bus's transport, for clients and services of your own.
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// The database (service records live here; run your own migrations on it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The service records, shared by everything served on this bus.
    pub fn records(&self) -> &ServiceRecords {
        &self.records
    }

    /// Serve `manager` as `topic` on `host` (its record reported up every
    /// 100 ms, no periodic tasks); returns a client of `topic`.
    ///
    /// # Panics
    /// When the service cannot start.
    pub async fn serve<M: Manager + RpcApi>(&self, topic: &str, host: &str, manager: Arc<M>) -> RpcClient {
        let options = ServiceOptions {
            report_interval: Duration::from_millis(100),
            periodic_enable: false,
            graceful_shutdown_timeout: Duration::from_secs(5),
            trace: false,
            ..ServiceOptions::default()
        };
        let service = Service::create(self.transport.clone(), ManagerHandle::new(manager))
            .topic(topic)
            .binary(format!("nova-{topic}"))
            .host(host)
            .records(self.records.clone())
            .options(options);
        let running = service.start().await.unwrap_or_else(|e| panic!("cannot serve {topic} on {host}: {e}"));
        self.running.lock().await.push(running);
        self.client(Target::new(topic))
    }

    /// Run `manager`'s periodic task `name` once, now (a bus serves with
    /// periodic tasks off, so a test runs them when it wants to).
    ///
    /// # Panics
    /// When the manager has no periodic task of that name.
    pub async fn run_periodic<M: RpcApi>(
        &self,
        manager: &Arc<M>,
        name: &str,
    ) -> Result<(), crate::periodic::TaskFailed> {
        let tasks = manager.periodic_tasks();
        let Some(task) = tasks.iter().find(|t| t.name == name) else {
            let known: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            panic!("no periodic task {name:?}; the manager has {known:?}");
        };
        task.run_once().await
    }

    /// A client of `target` on this bus.
    pub fn client(&self, target: Target) -> RpcClient {
        RpcClient::new(self.transport.clone(), target)
    }

    /// Stop everything served, then remove the database.
    pub async fn stop(self) {
        for s in self.running.lock().await.drain(..) {
            s.stop().await;
        }
        self.db.close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request an [`http_endpoint`] received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The request line and headers, as sent.
    pub head: String,
    /// The path.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A stand-in HTTP endpoint on 127.0.0.1 (a webhook target, an
/// OpenTelemetry collector): answers `status` to every request and hands
/// over each request. Lives until the receiver is dropped and one more
/// request arrives.
///
/// # Panics
/// When no local port can be bound.
pub fn http_endpoint(status: u16) -> (u16, std::sync::mpsc::Receiver<HttpRequest>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
    let port = listener.local_addr().map(|a| a.port()).expect("a local port");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            // Handed over before the answer: whoever saw the answer finds it received.
            let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
            if tx.send(HttpRequest { head, path, body }).is_err() {
                break;
            }
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    (port, rx)
}

/// An [`http_endpoint`] that answers `200`.
pub fn http_receiver() -> (u16, std::sync::mpsc::Receiver<HttpRequest>) {
    http_endpoint(200)
}

/// Poll `f` every 50 ms until it returns `Some`, or panic after `timeout`
/// naming `what` was awaited.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::{sync::atomic::{AtomicUsize, Ordering}, time::Duration};
/// let calls = AtomicUsize::new(0);
/// let n = nova_core::testing::eventually("the third poll", Duration::from_secs(5), || async {
///     let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
///     (n == 3).then_some(n)
/// })
/// .await;
/// assert_eq!(n, 3);
/// # });
/// ```
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, f, String::new).await
}

/// [`eventually`], adding what `explain` says (processes' logs, say) to the panic.
pub async fn eventually_explained<T, F, Fut>(what: &str, timeout: Duration, mut f: F, explain: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < until, "timed out after {timeout:?} waiting until {what}\n{}", explain());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
