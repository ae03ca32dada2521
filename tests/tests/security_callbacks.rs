//! A task's `callback_url` is the submitter's choice, so the compute treats
//! it as hostile: internal destinations are refused unless allowed, no
//! header can be smuggled in, `https://` works against a CA of the
//! operator's, and only a connection error or a 5xx is tried again.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    sync::{Arc, Mutex},
    time::Duration,
};

use nova_core::testing::{http_endpoint, HttpRequest, TestBus};
use nova_rpc::{RequestContext, Target};
use nova_services::{
    compute::{ComputeClient, ComputeManager, TaskInfo},
    outbound::HttpClient,
};
use nova_tests::{broker::make_certificates, eventually, unique, TempDir};

/// A local HTTP endpoint answering `status`, and what it has received so far.
struct Endpoint {
    port: u16,
    requests: std::sync::mpsc::Receiver<HttpRequest>,
    received: Mutex<Vec<HttpRequest>>,
}

fn endpoint(status: u16) -> Endpoint {
    let (port, requests) = http_endpoint(status);
    Endpoint { port, requests, received: Mutex::default() }
}

impl Endpoint {
    /// The heads of the requests received so far.
    fn heads(&self) -> Vec<String> {
        let mut received = self.received.lock().unwrap();
        received.extend(self.requests.try_iter());
        received.iter().map(|r| r.head.clone()).collect()
    }

    fn hits(&self) -> usize {
        self.heads().len()
    }
}

async fn compute(callbacks: HttpClient) -> (TestBus, ComputeClient) {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::compute::tasks::MIGRATIONS).await.unwrap();
    let allowed: HashMap<String, Vec<String>> = [("true".to_owned(), vec!["/bin/true".to_owned()])].into();
    let m =
        ComputeManager::new("c1", allowed, 4, 60.0, 3, bus.database().clone(), bus.client(Target::new("scheduler")))
            .with_callbacks(callbacks);
    let client = ComputeClient::new(bus.serve("compute", "c1", Arc::new(m)).await).with_server("c1");
    (bus, client)
}

/// Run `true` with `callback_url` = `url`; the task once its callback has been dealt with.
async fn with_callback(c: &ComputeClient, url: &str, done: impl Fn(&TaskInfo) -> bool) -> TaskInfo {
    let id = unique("cb");
    let ctx = RequestContext::new();
    c.run_task(&ctx, "true".into(), vec![], id.clone(), None, Some(url.to_owned())).await.unwrap();
    eventually("the callback is dealt with", Duration::from_secs(30), || async {
        c.get_task(&ctx, id.clone()).await.ok().filter(|t| done(t))
    })
    .await
}

fn failed(t: &TaskInfo) -> bool {
    t.callback_error.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_are_refused_unless_allowed() {
    let e = endpoint(200);
    let (bus, c) = compute(HttpClient::guarded(&[], None).unwrap()).await;
    for url in [format!("http://127.0.0.1:{}/", e.port), format!("http://localhost:{}/", e.port)] {
        let t = with_callback(&c, &url, failed).await;
        let why = t.callback_error.unwrap_or_default();
        assert!(why.contains("internal address") && why.contains("callback_allowed_hosts"), "{url}: {why}");
    }
    assert_eq!(e.hits(), 0, "nothing reached the internal endpoint");
    bus.stop().await;

    // Allowed by name, it is reached; a URL carrying a header is still refused.
    let (bus, c) = compute(HttpClient::guarded(&["127.0.0.1".to_owned()], None).unwrap()).await;
    let url = format!("http://127.0.0.1:{}/done", e.port);
    with_callback(&c, &url, |t| t.status.is_final()).await;
    eventually("the allowed endpoint got the callback", Duration::from_secs(10), || async {
        (e.hits() == 1).then_some(())
    })
    .await;
    let injected = format!("http://127.0.0.1:{}/x\r\nX-Injected: 1", e.port);
    let t = with_callback(&c, &injected, failed).await;
    assert!(t.callback_error.unwrap_or_default().contains("control characters"));
    assert_eq!(e.hits(), 1, "the injecting URL was not sent");
    assert!(e.heads().iter().all(|h| !h.to_ascii_lowercase().contains("x-injected")));
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connection_errors_and_5xx_are_retried() {
    let (not_found, unavailable) = (endpoint(404), endpoint(503));
    let (bus, c) = compute(HttpClient::guarded(&["127.0.0.1".to_owned()], None).unwrap()).await;
    let t = with_callback(&c, &format!("http://127.0.0.1:{}/", not_found.port), failed).await;
    // A private endpoint's answer is not for the submitter to read.
    let error = t.callback_error.as_deref().unwrap_or_default();
    // (The port may spell 404 too: look past the URL.)
    let said = error.rsplit_once("attempt(s): ").map_or(error, |(_, said)| said);
    assert!(said.contains("did not accept it") && !said.contains("404") && !said.contains("status"), "{t:?}");
    assert_eq!(not_found.hits(), 1, "a 4xx is final");
    let t = with_callback(&c, &format!("http://127.0.0.1:{}/", unavailable.port), failed).await;
    assert!(t.callback_error.as_deref().unwrap_or_default().contains("after 3 attempt(s)"), "{t:?}");
    assert_eq!(unavailable.hits(), 3, "a 5xx is tried callback_attempts times");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_trust_the_operators_ca() {
    let dir = TempDir::new("https-cb");
    make_certificates(dir.path());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("http/tls_receiver.py");
    let mut server = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path().join("server.pem"))
        .arg(dir.path().join("server.key"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the HTTPS endpoint");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(30)).expect("the HTTPS endpoint starts");
    let port = first.strip_prefix("PORT ").expect("PORT line").to_owned();

    // Without the CA the certificate does not verify.
    let (bus, c) = compute(HttpClient::guarded(&["localhost".to_owned()], None).unwrap()).await;
    let url = format!("https://localhost:{port}/cb");
    let t = with_callback(&c, &url, failed).await;
    assert!(t.callback_error.as_deref().unwrap_or_default().to_ascii_lowercase().contains("certificate"), "{t:?}");
    bus.stop().await;
    // With it, the POST arrives.
    let ca = dir.path().join("ca.pem");
    let (bus, c) = compute(HttpClient::guarded(&["localhost".to_owned()], Some(&ca)).unwrap()).await;
    with_callback(&c, &url, |t| t.status.is_final()).await;
    let posted = lines.recv_timeout(Duration::from_secs(30)).expect("the callback arrives over TLS");
    assert!(posted.contains(r#""path": "/cb""#) && posted.contains("task_id"), "{posted}");
    bus.stop().await;
    let _ = server.kill();
    let _ = server.wait();
}
