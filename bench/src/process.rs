//! Whole processes: `nova-bench serve` workers, a service binary's start-up
//! time and resident memory, and scale-out (how fast added workers drain a
//! backlog).

use std::{
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lapin::{options::QueueDeclareOptions, types::FieldTable, Connection, ConnectionProperties};
use nova_rpc::{RequestContext, RpcClient, Target};
use serde_json::json;

use super::{
    api::options,
    child::{delete_topology, lapin_url, rss_mib, Child},
    Report,
};

/// Start `nova-compute`, time it to its first served `ping`, read its idle
/// resident memory, then again after `calls` pings (64 in flight).
pub async fn startup_and_memory(url: &str, calls: usize, report: &mut Report) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("nova-compute");
    anyhow::ensure!(bin.exists(), "{} is missing: cargo build --release --bins", bin.display());
    let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let state = std::env::temp_dir().join(&exchange);
    let host = "bench-compute";
    let transport = nova_rpc::transport::connect(options(url, &exchange, true)).await?;
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
    let queues = ["compute", "compute_work", "compute.bench-compute", "scheduler"].map(String::from);
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
    let options = options(url, &exchange, true);
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
