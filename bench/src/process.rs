//! Whole processes: `nova-bench serve` workers, a service binary's start-up
//! time and resident memory, and scale-out (how fast added workers drain a
//! backlog).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use lapin::{
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};
use nova_rpc::{transport::TransportOptions, transport::TransportUrl, RequestContext, RpcClient, RpcServer, Target};
use serde_json::json;

use super::{nova::bench_api, Report};

/// The lapin URL (`amqp://…/vhost`) for a nova transport URL's first host.
pub fn lapin_url(url: &str) -> anyhow::Result<String> {
    let u = TransportUrl::parse(url)?;
    let scheme = if u.tls() { "amqps" } else { "amqp" };
    first_host_url(&u, scheme, &u.vhost)
}

/// `url` (its first host) with `vhost` instead of its own.
pub fn with_vhost(url: &str, vhost: &str) -> anyhow::Result<String> {
    let u = TransportUrl::parse(url)?;
    first_host_url(&u, &u.scheme, vhost)
}

/// `scheme://user:password@host:port/vhost` for `u`'s first host.
fn first_host_url(u: &TransportUrl, scheme: &str, vhost: &str) -> anyhow::Result<String> {
    let h = u.hosts.first().ok_or_else(|| anyhow::anyhow!("{u}: no broker host"))?;
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    Ok(format!("{scheme}://{}:{}@{}:{}/{}", enc(&h.username), enc(&h.password), h.host, h.port, enc(vhost)))
}

/// Delete queues and exchanges a benchmark declared.
pub async fn delete_topology(url: &str, queues: &[String], exchanges: &[String]) -> anyhow::Result<()> {
    let conn = Connection::connect(&lapin_url(url)?, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    for q in queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for x in exchanges {
        ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// A child process whose stdout lines arrive, time-stamped, on a channel;
/// killed when dropped.
pub struct Child {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<(Instant, String)>,
    /// When it was spawned.
    pub spawned: Instant,
}

impl Child {
    /// Spawn `cmd`, reading its standard output.
    pub fn spawn_command(cmd: &mut Command) -> anyhow::Result<Self> {
        let spawned = Instant::now();
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, stdin, lines, spawned })
    }

    /// Start `nova-bench serve` for `topic` as `host`.
    pub async fn serve(
        options: &TransportOptions,
        topic: &str,
        host: &str,
        executor: usize,
        work_ms: u64,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--transport-url", &options.transport_url, "--control-exchange", &options.control_exchange])
            .args(["--topic", topic, "--host", host, "--executor", &executor.to_string()])
            .args(["--work-ms", &work_ms.to_string()]);
        if !options.rabbit.publisher_confirms {
            cmd.arg("--no-confirms");
        }
        let mut child = Self::spawn_command(&mut cmd)?;
        child.wait_line("READY", Duration::from_secs(30)).await?;
        Ok(child)
    }

    /// Wait for a line starting with `prefix`; when it arrived.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let until = Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok((at, line)) if line.starts_with(prefix) => return Ok(at),
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Disconnected) => anyhow::bail!("the child exited before printing {prefix}"),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            anyhow::ensure!(Instant::now() < until, "no {prefix} line within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send it SIGTERM without waiting (dropping it then waits): a fleet
    /// is told to stop all at once.
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }
}

impl Drop for Child {
    /// SIGTERM (a `serve` worker stops cleanly, deleting its fanout queue),
    /// then SIGKILL if it is still there after a few seconds.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let exited = |c: &mut std::process::Child, wait: Duration| {
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        self.terminate();
        if !exited(&mut self.child, Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a `nova-bench serve` worker serves.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The topic.
    pub topic: String,
    /// Its server name.
    pub host: String,
    /// Requests at once.
    pub executor: usize,
    /// How long `work` takes.
    pub work_ms: u64,
    /// Serve at-least-once with this `max_deliveries`.
    pub at_least_once: Option<u32>,
}

/// `nova-bench serve`: the bench API until SIGTERM. Prints `READY`
/// once consuming and `FIRST <unix ms>` on its first message.
pub async fn serve(options: TransportOptions, w: Worker) -> anyhow::Result<()> {
    let transport = nova_rpc::transport::connect(options).await?;
    let first = Arc::new(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        println!("FIRST {ms}");
    });
    let api = bench_api(&w.host, Arc::new(AtomicUsize::new(0)), Duration::from_millis(w.work_ms), first);
    let mut server = RpcServer::new(transport.clone(), Target::new(&w.topic).with_server(&w.host), api)
        .with_executor_size(w.executor);
    if let Some(max) = w.at_least_once {
        server = server.with_at_least_once(max);
    }
    let server = server.start().await?;
    println!("READY");
    // Stop on SIGTERM or Ctrl-C: requests in flight finish, undispatched
    // ones go back to the broker.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let report = server.stop(Duration::from_secs(30)).await;
    println!("STOPPED requeued={}", report.requeued);
    transport.close().await;
    Ok(())
}

/// `VmRSS` of process `pid`, in MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// Start `nova-compute`, time it to its first served `ping`, read its idle
/// resident memory, then again after `calls` pings (64 in flight).
pub async fn startup_and_memory(url: &str, calls: usize, report: &mut Report) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("nova-compute");
    anyhow::ensure!(bin.exists(), "{} is missing: cargo build --release --bins", bin.display());
    let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let state = std::env::temp_dir().join(&exchange);
    let host = "bench-compute";
    let transport = nova_rpc::transport::connect(super::nova::options(url, &exchange, true)).await?;
    let client =
        RpcClient::new(transport.clone(), Target::new("compute").with_namespace("baseapi").with_version("1.1"))
            .with_server(host);
    let ping = client.with_timeout(Duration::from_millis(20));
    // Connect the client first, so its reply queue is not on the clock.
    let _ = ping.call(&RequestContext::default(), "ping", json!({"arg": 0})).await;
    let mut cmd = Command::new(&bin);
    cmd.args(["--transport-url", url, "--control-exchange", &exchange, "--host", host])
        .arg("--state-path")
        .arg(&state)
        .env("RUST_LOG", "warn");
    let child = Child::spawn_command(&mut cmd)?;
    let started = loop {
        if ping.call(&RequestContext::default(), "ping", json!({"arg": 1})).await.is_ok() {
            break child.spawned.elapsed();
        }
        anyhow::ensure!(child.spawned.elapsed() < Duration::from_secs(30), "nova-compute never answered ping");
    };
    report.add("process", "startup_to_first_ping_ms", started.as_secs_f64() * 1e3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.add("process", "idle_rss_mib", rss_mib(child.pid())?);
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (c, done) = (client.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while done.fetch_add(1, Ordering::Relaxed) < calls {
                c.call(&RequestContext::default(), "ping", json!({"arg": "x"})).await?;
            }
            Ok::<_, nova_rpc::RpcError>(())
        }));
    }
    let mut half = None;
    while workers.iter().any(|w| !w.is_finished()) {
        if half.is_none() && done.load(Ordering::Relaxed) >= calls / 2 {
            half = Some(rss_mib(child.pid())?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.await??;
    }
    report.add("process", "pings", calls as f64);
    report.add("process", "rss_half_pings_mib", half.unwrap_or(0.0));
    report.add("process", "rss_after_pings_mib", rss_mib(child.pid())?);
    drop(child);
    transport.close().await;
    let queues = ["compute", "compute.bench-compute", "scheduler"].map(String::from);
    let exchanges = [exchange.clone(), "compute_fanout".into(), "scheduler_fanout".into()];
    let _ = delete_topology(url, &queues, &exchanges).await;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// Queue depth (ready messages) of `queue`.
async fn depth(conn: &Connection, queue: &str) -> anyhow::Result<u32> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await?;
    let _ = ch.close(200, "".into()).await;
    Ok(q.message_count())
}

/// Scale-out: `backlog` casts to a method taking `work_ms`, one worker
/// process consuming, then a second and a third started `phase` apart.
/// Reports each worker's spawn → first message time and the drain rate
/// with 1, 2 and 3 workers.
pub async fn scale_out(
    url: &str,
    backlog: usize,
    work_ms: u64,
    executor: usize,
    phase: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topic = "bench-scale";
    let options = super::nova::options(url, &exchange, true);
    let transport = nova_rpc::transport::connect(options.clone()).await?;
    // Declare the shared queue (as a server would) before anyone consumes,
    // then fill it.
    drop(Child::serve(&options, topic, "w0", 1, work_ms).await?);
    let client = RpcClient::new(transport.clone(), Target::new(topic).with_version("1.0"));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..64 {
        let (c, sent) = (client.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::Relaxed) < backlog {
                c.cast(&RequestContext::default(), "work", json!({})).await?;
            }
            Ok::<_, nova_rpc::RpcError>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let conn = Connection::connect(&lapin_url(url)?, ConnectionProperties::default()).await?;
    let start_depth = depth(&conn, topic).await?;
    report.add("scale_out", "backlog", f64::from(start_depth));
    let mut workers = Vec::new();
    let mut firsts = Vec::new();
    let mut samples = Vec::new();
    for n in 1..=3u32 {
        if n > 1 && depth(&conn, topic).await? == 0 {
            break; // drained before this worker was needed (tiny backlogs)
        }
        let mut w = Child::serve(&options, topic, &format!("w{n}"), executor, work_ms).await?;
        let Ok(first) = w.wait_line("FIRST", Duration::from_secs(10)).await else {
            anyhow::ensure!(depth(&conn, topic).await? == 0, "worker {n} consumed nothing from a full queue");
            break;
        };
        report.add("scale_out", &format!("worker{n}_spawn_to_first_ms"), (first - w.spawned).as_secs_f64() * 1e3);
        firsts.push(first);
        workers.push(w);
        let until = Instant::now() + phase;
        while Instant::now() < until || n == 3 {
            let d = depth(&conn, topic).await?;
            samples.push((Instant::now(), d));
            if d == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Drain rate per phase: messages gone between the phase's first and last sample.
    let ends: Vec<Instant> = firsts.iter().skip(1).copied().chain([Instant::now()]).collect();
    for (i, (from, to)) in firsts.iter().zip(ends).enumerate() {
        let window: Vec<_> = samples.iter().filter(|(t, _)| t >= from && *t <= to).collect();
        if let (Some(a), Some(b)) = (window.first(), window.last()) {
            let secs = (b.0 - a.0).as_secs_f64();
            if secs > 0.0 {
                let rate = f64::from(a.1.saturating_sub(b.1)) / secs;
                report.add("scale_out", &format!("drain_per_s_{}_workers", i + 1), rate);
            }
        }
    }
    drop(workers);
    let _ = conn.close(200, "done".into()).await;
    transport.close().await;
    let queues =
        [topic.to_owned(), format!("{topic}.w0"), format!("{topic}.w1"), format!("{topic}.w2"), format!("{topic}.w3")];
    delete_topology(url, &queues, &[exchange, format!("{topic}_fanout")]).await
}
