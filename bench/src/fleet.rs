//! `nova-bench fleet`: what a fleet of `nova-compute` services costs the
//! broker and the machine, and how that grows with its size.
//!
//! For each size, in a vhost of its own on the broker, the bench starts
//! that many `nova-compute` processes (SQLite under a state path each,
//! as the embedded defaults have it) and, once every one answers a ping,
//! reads:
//!
//! * the broker's memory (`rabbitmqctl status`: what the OS sees, what the
//!   Erlang VM accounts for, and its connection and queue processes),
//!   against its memory before the fleet started, and the connections, channels and queues in the
//!   vhost, in all and per service (the bench's own left out);
//! * each service's resident memory (`VmRSS`);
//! * calls per second with 64 outstanding `ping`s spread over the fleet;
//! * how long a fanout takes to reach every service: a `report_capacity`
//!   fanout cast, which each service answers with an `update_host_state`
//!   cast to the schedulers, carrying the fanout's request id; the bench
//!   serves the scheduler topic and counts the answers. The first answer
//!   gives the path's own latency; the rest is the fleet's work queueing
//!   for the machine. Where that work goes is read from each process's
//!   CPU time over the fanouts: the broker's, the services' and the
//!   bench's, per fanout.
//!
//! With `--stream-fanout` the fleet runs oslo's `rabbit_stream_fanout`
//! (one stream every service reads at its own offset, quorum transient
//! queues, a prefetch of 10) instead of a classic fanout queue per service.

use std::{
    collections::HashMap,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use serde_json::{json, Map, Value};

use super::{
    child::{rabbitmqctl, rss_mib, with_vhost, Child, Vhost},
    Report,
};

/// The CPU time process `pid` has used (user and system), in ms.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    super::process_cpu_seconds(pid).map(|s| s * 1e3).ok_or_else(|| anyhow::anyhow!("no CPU times for process {pid}"))
}

/// The broker node's OS process (`rabbitmqctl status`).
fn broker_pid() -> anyhow::Result<u32> {
    let status: Value = serde_json::from_str(&rabbitmqctl(&["status", "--formatter", "json"])?)?;
    status["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| anyhow::anyhow!("no pid in rabbitmqctl status"))
}

/// The broker node's memory (`rabbitmqctl status`), in MiB.
#[derive(Debug, Clone, Copy)]
struct BrokerMemory {
    /// What the OS sees (`total.rss`), which the memory alarm watches.
    rss: f64,
    /// What the Erlang VM accounts for (`total.erlang`).
    erlang: f64,
    /// Connection processes: readers, writers, channels and the rest.
    connections: f64,
    /// Queue processes (classic, quorum and stream).
    queues: f64,
}

impl BrokerMemory {
    fn read() -> anyhow::Result<Self> {
        let status: Value = serde_json::from_str(&rabbitmqctl(&["status", "--formatter", "json"])?)?;
        let m = &status["memory"];
        let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
        let sum = |prefix: &str| {
            m.as_object()
                .map(|o| o.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| mib(v)).sum())
                .unwrap_or(0.0)
        };
        let memory = Self {
            rss: mib(&m["total"]["rss"]),
            erlang: mib(&m["total"]["erlang"]),
            connections: sum("connection_"),
            queues: sum("queue_procs") + sum("quorum_queue_procs") + sum("stream_queue_procs"),
        };
        anyhow::ensure!(memory.rss > 0.0, "no memory total in rabbitmqctl status: {m}");
        Ok(memory)
    }
}

/// How many `what` (`connections`, `channels`) the broker has in `vhost`.
fn count_in_vhost(what: &str, vhost: &str) -> anyhow::Result<usize> {
    let rows: Vec<Value> =
        serde_json::from_str(&rabbitmqctl(&[&format!("list_{what}"), "vhost", "--formatter", "json"])?)?;
    Ok(rows.iter().filter(|r| r["vhost"] == vhost).count())
}

/// How many queues `vhost` holds.
fn queues_in_vhost(vhost: &str) -> anyhow::Result<usize> {
    let rows: Vec<Value> =
        serde_json::from_str(&rabbitmqctl(&["list_queues", "-p", vhost, "name", "--formatter", "json"])?)?;
    Ok(rows.len())
}

/// What a vhost holds on the broker.
#[derive(Debug, Clone, Copy)]
struct Usage {
    connections: usize,
    channels: usize,
    queues: usize,
}

impl Usage {
    fn read(vhost: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connections: count_in_vhost("connections", vhost)?,
            channels: count_in_vhost("channels", vhost)?,
            queues: queues_in_vhost(vhost)?,
        })
    }
}

/// Counts `update_host_state` casts by request id: the schedulers' side of
/// a capacity report, served by the bench.
fn scheduler_api(seen: Arc<Mutex<HashMap<String, usize>>>) -> Dispatcher {
    let api = Router::new(Version::new(1, 0))
        .method("update_host_state", move |ctx: RequestContext, _args: Map<String, Value>| {
            *seen.lock().unwrap_or_else(|p| p.into_inner()).entry(ctx.request_id.to_string()).or_default() += 1;
            async { Ok::<_, RpcError>(()) }
        })
        .method("list_host_states", |_ctx: RequestContext, _args: Map<String, Value>| async {
            Ok::<_, RpcError>(Vec::<Value>::new())
        });
    Dispatcher::new(vec![Arc::new(api)])
}

/// The settings `rabbit_stream_fanout` needs, as oslo checks them, for a
/// process's environment.
const STREAM_FANOUT_ENV: [(&str, &str); 3] = [
    ("NOVA_OSLO_MESSAGING_RABBIT__RABBIT_STREAM_FANOUT", "true"),
    ("NOVA_OSLO_MESSAGING_RABBIT__RABBIT_TRANSIENT_QUORUM_QUEUE", "true"),
    ("NOVA_OSLO_MESSAGING_RABBIT__RABBIT_QOS_PREFETCH_COUNT", "10"),
];

/// What one fleet size costs; see the module docs.
async fn one_size(url: &str, n: usize, load: Load, report: &mut Report) -> anyhow::Result<()> {
    let Load { calls, fanouts, stream_fanout } = load;
    let group = if stream_fanout { format!("fleet_{n}_stream") } else { format!("fleet_{n}") };
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("nova-compute");
    anyhow::ensure!(bin.exists(), "{} is missing: cargo build --release --bins", bin.display());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let vhost = Vhost::create(format!("nova-bench-fleet-{n}-{id}"))?;
    let url = with_vhost(url, &vhost.0)?;
    let state = std::env::temp_dir().join(format!("nova-bench-fleet-{id}"));
    let memory_before = BrokerMemory::read()?;

    // The schedulers' side first, so no capacity report is lost.
    let mut options = super::api::options(&url, "nova", true);
    if stream_fanout {
        options.rabbit.rabbit_stream_fanout = true;
        options.rabbit.rabbit_transient_quorum_queue = true;
        options.rabbit.rabbit_qos_prefetch_count = 10;
    }
    let transport = nova_rpc::transport::connect(options).await?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let scheduler = RpcServer::new(
        transport.clone(),
        Target::new("scheduler").with_server("nova-bench"),
        scheduler_api(seen.clone()),
    )
    .start()
    .await?;

    let ping = RpcClient::new(transport.clone(), Target::new("compute").with_namespace("baseapi").with_version("1.1"));
    // The bench's own connections, channels and queues (its reply queue
    // comes with its first call), so the fleet's are told apart.
    let nobody = ping.with_server("nobody").with_timeout(Duration::from_millis(50));
    let _ = nobody.call(&RequestContext::default(), "ping", json!({"arg": 0})).await;
    let own = Usage::read(&vhost.0)?;

    let hosts: Vec<String> = (0..n).map(|i| format!("fleet-{i}")).collect();
    let started = Instant::now();
    let mut fleet = Vec::with_capacity(n);
    for host in &hosts {
        let mut cmd = Command::new(&bin);
        cmd.args(["--transport-url", &url, "--host", host]).arg("--state-path").arg(state.join(host));
        if stream_fanout {
            cmd.envs(STREAM_FANOUT_ENV);
        }
        fleet.push(Child::spawn_command(cmd.env("RUST_LOG", "warn"))?);
    }
    for host in &hosts {
        let ping = ping.with_server(host.as_str()).with_timeout(Duration::from_millis(20));
        while ping.call(&RequestContext::default(), "ping", json!({"arg": 0})).await.is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "{host} never answered ping");
        }
    }
    report.add(&group, "services", n as f64);
    report.add(&group, "start_all_to_pings_ms", started.elapsed().as_secs_f64() * 1e3);

    let memory = BrokerMemory::read()?;
    let grown = |now: f64, before: f64| (now - before) / n as f64;
    report.add(&group, "broker_rss_mib", memory.rss);
    report.add(&group, "broker_erlang_mib", memory.erlang);
    report.add(&group, "broker_rss_per_service_mib", grown(memory.rss, memory_before.rss));
    report.add(&group, "broker_erlang_per_service_mib", grown(memory.erlang, memory_before.erlang));
    report.add(&group, "broker_conn_per_service_mib", grown(memory.connections, memory_before.connections));
    report.add(&group, "broker_queues_per_service_mib", grown(memory.queues, memory_before.queues));
    let all = Usage::read(&vhost.0)?;
    let per_service = |all: usize, own: usize| all.saturating_sub(own) as f64 / n as f64;
    report.add(&group, "connections", all.connections as f64);
    report.add(&group, "connections_per_service", per_service(all.connections, own.connections));
    report.add(&group, "channels", all.channels as f64);
    report.add(&group, "channels_per_service", per_service(all.channels, own.channels));
    report.add(&group, "queues", all.queues as f64);
    report.add(&group, "queues_per_service", per_service(all.queues, own.queues));
    let rss = fleet.iter().map(|c| rss_mib(c.pid())).collect::<anyhow::Result<Vec<f64>>>()?;
    report.add(&group, "rss_mean_mib", rss.iter().sum::<f64>() / n as f64);
    report.add(&group, "rss_max_mib", rss.iter().copied().fold(0.0, f64::max));

    // 64 outstanding pings, each worker cycling through the fleet.
    let clock = Instant::now();
    let mut workers = Vec::new();
    for w in 0..64 {
        let (ping, hosts) = (ping.clone(), hosts.clone());
        let share = calls / 64 + usize::from(w < calls % 64);
        workers.push(tokio::spawn(async move {
            for i in 0..share {
                let host = &hosts[(w + i * 64) % hosts.len()];
                ping.with_server(host.as_str()).call(&RequestContext::default(), "ping", json!({"arg": i})).await?;
            }
            Ok::<_, RpcError>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    report.add(&group, "calls_per_s_c64", calls as f64 / clock.elapsed().as_secs_f64().max(1e-9));

    // Fanout to all: every service answers with its capacity, tagged.
    let capacity = RpcClient::new(transport.clone(), Target::new("compute").with_version("1.1")).with_fanout(true);
    let (mut times, mut firsts) = (Vec::with_capacity(fanouts), Vec::with_capacity(fanouts));
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_ms(*p)).sum::<anyhow::Result<f64>>();
    let (broker, services) = (broker_pid()?, fleet.iter().map(Child::pid).collect::<Vec<_>>());
    let before = (cpu(&[broker])?, cpu(&services)?, cpu(&[std::process::id()])?);
    for _ in 0..fanouts {
        let ctx = RequestContext::new();
        let marker = ctx.request_id.to_string();
        let clock = Instant::now();
        let mut first = None;
        capacity.cast(&ctx, "report_capacity", json!({})).await?;
        loop {
            let got = seen.lock().unwrap_or_else(|p| p.into_inner()).get(&marker).copied().unwrap_or(0);
            if got > 0 && first.is_none() {
                first = Some(clock.elapsed());
            }
            if got >= n {
                break;
            }
            anyhow::ensure!(clock.elapsed() < Duration::from_secs(60), "a fanout reached {got} of {n} services");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(clock.elapsed().as_secs_f64() * 1e3);
        firsts.push(first.unwrap_or_default().as_secs_f64() * 1e3);
    }
    let after = (cpu(&[broker])?, cpu(&services)?, cpu(&[std::process::id()])?);
    times.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    report.add(&group, "fanout_to_all_p50_ms", super::percentile(&times, 0.5));
    report.add(&group, "fanout_to_all_max_ms", times.last().copied().unwrap_or(0.0));
    report.add(&group, "fanout_first_answer_p50_ms", super::percentile(&firsts, 0.5));
    let per_fanout = |a: f64, b: f64| (a - b) / fanouts.max(1) as f64;
    report.add(&group, "fanout_cpu_broker_ms", per_fanout(after.0, before.0));
    report.add(&group, "fanout_cpu_services_ms", per_fanout(after.1, before.1));
    report.add(&group, "fanout_cpu_bench_ms", per_fanout(after.2, before.2));

    for c in &fleet {
        c.terminate();
    }
    drop(fleet);
    scheduler.stop(Duration::from_secs(5)).await;
    transport.close().await;
    drop(vhost);
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// What the bench asks of each fleet.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Pings at 64 outstanding, spread over the fleet.
    pub calls: usize,
    /// Fanouts timed.
    pub fanouts: usize,
    /// oslo's `rabbit_stream_fanout` instead of classic fanout queues.
    pub stream_fanout: bool,
}

/// The fleet figures for each of `sizes`.
pub async fn run(url: &str, sizes: &[usize], load: Load) -> anyhow::Result<Report> {
    let mut report = Report::default();
    for &n in sizes {
        anyhow::ensure!(n > 0, "a fleet needs at least one service");
        one_size(url, n, load, &mut report).await?;
    }
    Ok(report)
}
