//! `nova-bench gateway`: what the HTTP gateway adds to a call.
//!
//! In a vhost of its own, the bench starts a `nova-compute` and a
//! `nova-gateway` (tracing off, sharing one state path), then pings the
//! compute both ways in the same run:
//!
//! * directly, with an [`RpcClient`] over the broker, as a service would;
//! * through the gateway: `POST /v1/call/compute/ping` over HTTP keep-alive
//!   connections.
//!
//! Each way runs sequentially (one request at a time, over one
//! connection: the latency) and with 64 clients at once (the rate). The
//! difference of the sequential medians is what the gateway costs a call;
//! the CPU time each process spends on a sequential request says where.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use nova_rpc::{RequestContext, RpcClient, Target};
use serde_json::json;

use super::{
    child::{with_vhost, Child, Vhost},
    percentile, Report,
};

const PING: &str = "/v1/call/compute/ping?namespace=baseapi&version=1.1";
const CONCURRENCY: usize = 64;

/// One request, however it is sent.
trait Ping: Clone + Send + Sync + 'static {
    fn ping(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

#[derive(Clone)]
struct Direct(RpcClient);

impl Ping for Direct {
    async fn ping(&self) -> anyhow::Result<()> {
        self.0.call(&RequestContext::default(), "ping", json!({"arg": 1})).await?;
        Ok(())
    }
}

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    url: Arc<str>,
}

impl Ping for Http {
    async fn ping(&self) -> anyhow::Result<()> {
        let r = self.client.post(&*self.url).header("content-type", "application/json").body(r#"{"arg": 1}"#);
        let response = r.send().await?;
        anyhow::ensure!(response.status().is_success(), "the gateway answered {}", response.status());
        response.bytes().await?;
        Ok(())
    }
}

/// `n` pings one after another: each one's time, in ms, sorted.
async fn sequential(p: &impl Ping, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let clock = Instant::now();
        p.ping().await?;
        times.push(clock.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// `n` pings from [`CONCURRENCY`] clients at once: pings per second.
async fn concurrent(p: &impl Ping, n: usize) -> anyhow::Result<f64> {
    let clock = Instant::now();
    let mut clients = Vec::with_capacity(CONCURRENCY);
    for c in 0..CONCURRENCY {
        let (p, share) = (p.clone(), n / CONCURRENCY + usize::from(c < n % CONCURRENCY));
        clients.push(tokio::spawn(async move {
            for _ in 0..share {
                p.ping().await?;
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    Ok(n as f64 / clock.elapsed().as_secs_f64().max(1e-9))
}

/// The processes whose CPU time a request costs: (name, pid).
type Processes<'a> = &'a [(&'a str, u32)];

/// CPU time of each of `processes`, in ms.
fn cpu_ms(processes: Processes<'_>) -> Vec<f64> {
    processes.iter().map(|(_, pid)| super::process_cpu_seconds(*pid).unwrap_or(0.0) * 1e3).collect()
}

/// Add one way's figures to `report` under `way`: latency and rate, and
/// what one sequential request costs each of `processes` in CPU time.
async fn measure(
    report: &mut Report,
    way: &str,
    p: &impl Ping,
    requests: usize,
    processes: Processes<'_>,
) -> anyhow::Result<f64> {
    // A first round warms connections and caches up, and is not counted.
    sequential(p, requests / 10 + 1).await?;
    let before = cpu_ms(processes);
    let times = sequential(p, requests).await?;
    for ((name, _), (after, before)) in processes.iter().zip(cpu_ms(processes).into_iter().zip(before)) {
        report.add("gateway", &format!("{way}_cpu_{name}_us"), (after - before) * 1e3 / requests as f64);
    }
    let p50 = percentile(&times, 0.5);
    report.add("gateway", &format!("{way}_seq_p50_ms"), p50);
    report.add("gateway", &format!("{way}_seq_p99_ms"), percentile(&times, 0.99));
    report.add("gateway", &format!("{way}_seq_per_s"), 1e3 * times.len() as f64 / times.iter().sum::<f64>().max(1e-9));
    report.add("gateway", &format!("{way}_c64_per_s"), concurrent(p, requests * 4).await?);
    Ok(p50)
}

/// The gateway's figures beside direct calls; see the module docs.
pub async fn run(url: &str, requests: usize) -> anyhow::Result<Report> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let vhost = Vhost::create(format!("nova-bench-gateway-{id}"))?;
    let url = with_vhost(url, &vhost.0)?;
    let state = std::env::temp_dir().join(format!("nova-bench-gateway-{id}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let start = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(exe.with_file_name(name));
        cmd.args(["--transport-url", &url]).args(args).arg("--state-path").arg(&state);
        // The bench is one client address with 64 requests at once, and the
        // pool may hold a few more connections than that: past
        // `max_connections_per_client` (64) the gateway would close them.
        cmd.env("NOVA_API__MAX_CONNECTIONS_PER_CLIENT", "256");
        Child::spawn_command(cmd.env("RUST_LOG", "warn").env("NOVA_TRACE_ENABLED", "false"))
            .map_err(|e| anyhow::anyhow!("cannot start {name} (build it beside nova-bench): {e}"))
    };
    let compute = start("nova-compute", &["--host", "gateway-bench"])?;
    let gateway = start("nova-gateway", &["--listen", &format!("127.0.0.1:{port}")])?;

    let transport = nova_rpc::transport::connect(super::api::options(&url, "nova", true)).await?;
    let direct = Direct(
        RpcClient::new(transport.clone(), Target::new("compute").with_namespace("baseapi").with_version("1.1"))
            .with_timeout(Duration::from_secs(30)),
    );
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(CONCURRENCY).build()?;
    let http = Http { client, url: format!("http://127.0.0.1:{port}{PING}").into() };
    let started = Instant::now();
    while direct.ping().await.is_err() || http.ping().await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the compute or the gateway never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut report = Report::default();
    let bench = ("bench", std::process::id());
    let (compute_pid, gateway_pid) = (("compute", compute.pid()), ("gateway", gateway.pid()));
    let direct_p50 = measure(&mut report, "direct", &direct, requests, &[bench, compute_pid]).await?;
    let http_p50 = measure(&mut report, "http", &http, requests, &[bench, gateway_pid, compute_pid]).await?;
    report.add("gateway", "http_extra_ms", http_p50 - direct_p50);

    for c in [&compute, &gateway] {
        c.terminate();
    }
    drop((compute, gateway));
    transport.close().await;
    drop(vhost);
    let _ = std::fs::remove_dir_all(state);
    Ok(report)
}
