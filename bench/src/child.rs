//! The bench's child processes: `nova-bench serve` workers (their RabbitMQ
//! URLs and topology), and what a process costs in resident memory.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{atomic::AtomicUsize, mpsc, Arc},
    time::{Duration, Instant},
};

use lapin::{
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
    Connection, ConnectionProperties,
};
use nova_rpc::{transport::TransportOptions, transport::TransportUrl, RpcServer, Target};

use super::api::bench_api;

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

/// Run `rabbitmqctl` with `args`; its standard output.
pub fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("rabbitmqctl is needed on the broker's machine: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A vhost of the bench's own, deleted when dropped.
pub struct Vhost(pub String);

impl Vhost {
    /// Create it, with every permission for `guest`.
    pub fn create(name: String) -> anyhow::Result<Self> {
        rabbitmqctl(&["add_vhost", &name])?;
        let vhost = Self(name);
        let user = "guest";
        rabbitmqctl(&["set_permissions", "-p", &vhost.0, user, ".*", ".*", ".*"])?;
        Ok(vhost)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.0]) {
            eprintln!("nova-bench: {e}");
        }
    }
}
