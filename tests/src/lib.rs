//! Shared set-up for the integration tests: a private RabbitMQ vhost per
//! test (deleted when the test ends, pass or fail), transports for both
//! kinds, and unique names.
//!
//! Tests that need the broker fail loudly when it is missing: they never
//! skip. Point them elsewhere with `NOVA_TEST_RABBIT` (host:port) and
//! `RABBITMQCTL` (the control command).

pub mod broker;
pub mod cluster;
pub mod interop;
pub mod netns;
pub mod postgres;

use std::{process::Command, sync::Arc, time::Duration};

use nova_rpc::transport::{self, Transport, TransportOptions};

/// A name no other test uses: `prefix-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Everything logged in this test binary (at `info` and above, nova's own
/// targets), for tests that check what a service said. Installs the
/// process-wide subscriber on first use; later calls return the same buffer.
pub fn log_capture() -> &'static std::sync::Mutex<Vec<u8>> {
    use std::io::Write;
    static LOG: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    struct Tee;
    impl Write for Tee {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            log_capture().lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            std::io::stderr().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    LOG.get_or_init(|| {
        let _ =
            tracing_subscriber::fmt().with_env_filter("info,lapin=off").with_ansi(false).with_writer(|| Tee).try_init();
        std::sync::Mutex::default()
    })
}

/// What [`log_capture`] holds so far, as text.
pub fn logged() -> String {
    String::from_utf8_lossy(&log_capture().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
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

/// How many messages queue `name` in `vhost` holds (shared broker).
pub fn rabbit_queue_depth(vhost: &str, name: &str) -> Option<u64> {
    let ctl = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let out = Command::new(ctl)
        .args(["-q", "list_queues", "-p", vhost, "name", "messages", "--no-table-headers"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == name).then(|| parts.next()?.parse().ok()).flatten()
    })
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

    /// The RabbitMQ vhost behind this bus, if it is on RabbitMQ.
    pub fn vhost(&self) -> Option<&str> {
        self._vhost.as_ref().map(|v| v.name.as_str())
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

fn psql(sql: &str) -> Result<(), String> {
    let host = std::env::var("NOVA_TEST_PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let out = Command::new("psql")
        .args(["-h", &host, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e} (is PostgreSQL installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A database that exists for one test: a fresh PostgreSQL database
/// (dropped at the end) or a SQLite file in a temporary directory.
#[derive(Debug)]
pub struct TestDb {
    /// `postgresql://…` or `sqlite://…`.
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new PostgreSQL database on 127.0.0.1:5432. Panics clearly when PostgreSQL is unreachable.
    pub fn postgres() -> Self {
        let name = unique("nova_test").replace('-', "_");
        psql(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
        let host = std::env::var("NOVA_TEST_PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
        Self { url: format!("postgresql://postgres@{host}:5432/{name}"), pg_name: Some(name), _dir: None }
    }

    /// A new SQLite file.
    pub fn sqlite() -> Self {
        let dir = TempDir::new("db");
        Self { url: format!("sqlite:///{}", dir.path().join("nova.sqlite").display()), pg_name: None, _dir: Some(dir) }
    }

    /// Either kind, by name (`"postgresql"` or `"sqlite"`).
    pub fn of(kind: &str) -> Self {
        if kind == "sqlite" {
            Self::sqlite()
        } else {
            Self::postgres()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Err(e) = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new directory under the system's temp dir.
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(&format!("nova-{prefix}")));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Write a file in it; returns its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of a workspace binary (built by `cargo build --bins`, which the
/// test command runs first). Panics with that hint when it is missing.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --bins` first (./test.sh does)", p.display());
    p
}

/// A running child process (a service binary), killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: std::process::Child,
    /// Combined stdout and stderr go here.
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Start `bin` with `args`, output to `log_dir/<bin>-<unique>.log`.
    pub fn spawn(bin: &str, args: &[&str], log_dir: &std::path::Path) -> Self {
        Self::spawn_env(bin, args, &[], log_dir)
    }

    /// Start with extra environment variables.
    pub fn spawn_env(bin: &str, args: &[&str], env: &[(&str, &str)], log_dir: &std::path::Path) -> Self {
        let log = log_dir.join(format!("{}.log", unique(bin)));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = Command::new(bin_path(bin))
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`TERM`, `KILL`, `HUP`, `INT`).
    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").args([format!("-{sig}"), self.pid().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Wait up to `timeout` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one way tests wait: for something they can observe, with a generous bound.
pub use nova_core::testing::{eventually, eventually_explained};

/// Options for fault tests: reconnect within about a second, give up on a
/// call after `timeout`.
pub fn fast_reconnect(url: &str, exchange: &str, timeout: Duration) -> TransportOptions {
    let mut o = TransportOptions::new(url).with_control_exchange(exchange);
    o.rpc_response_timeout = timeout;
    o.rabbit.rabbit_retry_interval = Duration::from_millis(200);
    o.rabbit.rabbit_retry_backoff = Duration::from_millis(200);
    o.rabbit.rabbit_interval_max = Duration::from_secs(1);
    o.rabbit.connection_timeout = Duration::from_secs(2);
    o.rabbit.kombu_reconnect_delay = Duration::from_millis(300);
    // Tests choose the node each process starts at.
    o.rabbit.failover_shuffle = false;
    o
}

/// Wait until `count()` reaches `goal`, failing only when the count has not
/// moved for `stall`: a slow machine gets as long as it keeps making
/// progress, and a stuck one fails with the count it stopped at.
pub async fn until_count(what: &str, goal: u64, stall: Duration, mut count: impl FnMut() -> u64) {
    let (mut last, mut moved) = (count(), std::time::Instant::now());
    while last < goal {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last {
            (last, moved) = (now, std::time::Instant::now());
        }
        assert!(moved.elapsed() < stall, "{what}: stuck at {last} of {goal} for {stall:?}");
    }
}

/// What an HTTP request got: the status, the headers (lower-cased names)
/// and the body.
pub type HttpAnswer = (u16, Vec<(String, String)>, String);

/// A minimal HTTP/1.1 request to 127.0.0.1 for gateway tests. A gateway
/// that is not listening yet (or hangs up) is an `Err`, so a test can wait
/// for it with [`eventually`] and `.ok()?`.
pub fn http(method: &str, port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // The gateway takes JSON only: say so unless the test says otherwise.
    if method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (and close) before taking a body it refuses.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    let status = status.ok_or_else(|| std::io::Error::other(format!("no HTTP answer to {method} {path}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// How to start [`NovaAll`]: extra flags, environment, and a `nova.conf`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NovaAllSetup<'a> {
    /// Flags beside `--listen` and `--state-path`.
    pub args: &'a [&'a str],
    /// Environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// A `nova.conf` to pass with `--config-file`.
    pub config: Option<&'a str>,
    /// The token its readiness is asked with (`auth_strategy = token`).
    pub token: Option<&'a str>,
}

/// `nova-all` on a free port, its state in a private directory, ready:
/// its gateway lists its three services up. Killed when dropped.
#[derive(Debug)]
pub struct NovaAll {
    /// The gateway's port.
    pub port: u16,
    /// Its directory (state under `state/`, its log, the config file).
    pub dir: TempDir,
    proc: Proc,
}

impl NovaAll {
    /// `nova-all` on its embedded defaults.
    pub async fn start() -> Self {
        Self::start_with(NovaAllSetup::default()).await
    }

    /// `nova-all` as `setup` says.
    pub async fn start_with(setup: NovaAllSetup<'_>) -> Self {
        let dir = TempDir::new("nova-all");
        let port = free_port();
        let (listen, state) = (format!("127.0.0.1:{port}"), dir.path().join("state"));
        let state = state.to_str().expect("a UTF-8 path").to_owned();
        let config = setup.config.map(|text| dir.write("nova.conf", text));
        let mut args = vec!["--listen", &listen, "--state-path", &state];
        if let Some(c) = &config {
            args.extend(["--config-file", c.to_str().expect("a UTF-8 path")]);
        }
        args.extend_from_slice(setup.args);
        let proc = Proc::spawn_env("nova-all", &args, setup.env, dir.path());
        let log = proc.log.clone();
        let token: Vec<(&str, &str)> = setup.token.map(|t| ("X-Auth-Token", t)).into_iter().collect();
        eventually_explained(
            "nova-all lists its three services up",
            Duration::from_secs(60),
            || async {
                let (status, _, body) = http("GET", port, "/v1/services", &token, b"").ok()?;
                (status == 200 && body.matches("\"up\"").count() == 3).then_some(())
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )
        .await;
        Self { port, dir, proc }
    }

    /// A request to its gateway.
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpAnswer> {
        http(method, self.port, path, headers, body)
    }

    /// What it logged so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// Its process (to signal it).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}

/// A `nova-bench serve` worker process: the bench API (`work` sleeps
/// `work_ms` and answers the worker's name) on `topic` as `host`, in
/// `exchange` on the broker at `url`; `extra` adds flags such as
/// `--executor 2` or `--at-least-once 5`. It prints `READY` once consuming
/// and `FIRST …` on its first message.
pub fn bench_worker(
    url: &str,
    exchange: &str,
    topic: &str,
    host: &str,
    work_ms: &str,
    extra: &[&str],
    log_dir: &std::path::Path,
) -> Proc {
    let mut args =
        vec!["serve", "--transport-url", url, "--control-exchange", exchange, "--topic", topic, "--host", host];
    args.extend(["--work-ms", work_ms]);
    args.extend_from_slice(extra);
    Proc::spawn("nova-bench", &args, log_dir)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Open `url` in headless Chromium, run `script` there (through
/// `tests/browser/drive.py`, the DevTools protocol over a pipe) and return
/// its value. A screenshot of the page goes to `<target>/screenshots/<name>.png`
/// for a person to look at.
pub fn browser(url: &str, script: &str, name: &str) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let exe = std::env::current_exe().expect("test executable");
    let shots = exe.ancestors().nth(3).expect("target dir").join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let profile = TempDir::new("chromium");
    let driver = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/drive.py");
    let out = std::process::Command::new("timeout")
        .args(["120", "python3"])
        .arg(driver)
        .arg(&chromium)
        .arg(profile.path())
        .args([url, script])
        .arg(shots.join(format!("{name}.png")))
        .output()
        .unwrap_or_else(|e| panic!("python3 and headless Chromium are required for the console tests: {e}"));
    assert!(
        out.status.success(),
        "the browser run failed ({chromium}; ./test.sh installs chromium): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
