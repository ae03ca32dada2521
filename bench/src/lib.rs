//! `nova-bench`: what nova-rs costs, measured beside its ceiling.
//!
//! Every figure is taken twice in one run on the same broker: through
//! nova-rs (a [`Pattern`] over [`nova::NovaPattern`]) and through raw lapin
//! doing the same request/reply or one-way work ([`lapin::LapinPattern`]),
//! so a figure is always printed with its ratio to the ceiling. The runners
//! here ([`sequential`], [`concurrent`], [`casts`]) know nothing of either
//! side. [`process`] measures whole service processes: start-up, resident
//! memory, and how fast added workers drain a backlog; [`fleet`] how what
//! a service costs grows with the number of services; [`soak`] what grows
//! over a long run of requests through `nova-all`, with tracing off,
//! sampled and always on.

pub mod api;
pub mod autoscale;
pub mod child;
pub mod fleet;
pub mod gateway;
pub mod lapin;
pub mod nova;
pub mod process;
mod report;
pub mod soak;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;

pub use self::report::Report;

/// One way of sending work: nova-rs or raw lapin, over one broker.
#[async_trait]
pub trait Pattern: Send + Sync {
    /// Request and wait for the reply.
    async fn call(&self) -> anyhow::Result<()>;
    /// Send one-way; returns once the message is confirmed (when confirms are on).
    async fn cast(&self) -> anyhow::Result<()>;
    /// Send one-way to every consumer.
    async fn fanout(&self) -> anyhow::Result<()>;
    /// How many one-way messages the consumers have received so far.
    async fn received(&self) -> anyhow::Result<usize>;
    /// Release what the pattern declared.
    async fn close(&self);
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Calls per second, one at a time.
    pub per_s: f64,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `n` calls one after another after `warmup` untimed ones, from a task
/// of the runtime as a service's code would make them (not from the
/// thread blocked in `block_on`, whose every wake-up is a trip through
/// the kernel).
pub async fn sequential(p: Arc<dyn Pattern>, warmup: usize, n: usize) -> anyhow::Result<Latency> {
    tokio::spawn(async move {
        for _ in 0..warmup {
            p.call().await?;
        }
        let mut times = Vec::with_capacity(n);
        let started = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            p.call().await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = started.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        Ok(Latency {
            p50: percentile(&times, 0.5),
            p90: percentile(&times, 0.9),
            p99: percentile(&times, 0.99),
            max: times.last().copied().unwrap_or(0.0),
            per_s: n as f64 / total.max(1e-9),
        })
    })
    .await?
}

/// Do `op` `total` times on `workers` tasks at once (the shares differ by
/// at most one); the first error, if any.
async fn spread<F, Fut>(p: &Arc<dyn Pattern>, workers: usize, total: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(Arc<dyn Pattern>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let workers = workers.clamp(1, total.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let share = total / workers + usize::from(w < total % workers);
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                op(p.clone()).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `total` calls with `outstanding` in flight at once; calls per second.
pub async fn concurrent(p: Arc<dyn Pattern>, outstanding: usize, total: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    spread(&p, outstanding, total, |p| async move { p.call().await }).await?;
    Ok(total as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Which one-way send [`casts`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneWay {
    /// To one of the topic's consumers.
    Cast,
    /// To every consumer (counted once per consumer).
    Fanout,
}

/// Send `n` one-way messages, `outstanding` confirms awaited at once, and
/// count on the consumers until `n × copies` arrived; messages per second.
pub async fn casts(
    p: Arc<dyn Pattern>,
    kind: OneWay,
    outstanding: usize,
    n: usize,
    copies: usize,
) -> anyhow::Result<f64> {
    let before = p.received().await?;
    let started = Instant::now();
    spread(&p, outstanding, n, move |p| async move {
        match kind {
            OneWay::Cast => p.cast().await,
            OneWay::Fanout => p.fanout().await,
        }
    })
    .await?;
    let want = before + n * copies;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = p.received().await?;
        if got >= want {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {} of {} one-way messages arrived", got - before, n * copies);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok((n * copies) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// CPU time this process has used so far (user + system), in seconds.
///
/// Taken around a phase, divided by its calls, it is the CPU one call
/// costs: both sides (client and server) when they run in this process,
/// as the bench's nova-rs and lapin servers do by default. Unlike a rate,
/// it does not move with what else the machine runs.
pub fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// CPU time the broker's Erlang VM (`beam.smp`, running on this machine)
/// has used so far, in seconds; `None` when no broker runs here.
///
/// Taken around a phase and divided by its calls, it is what one call
/// costs the broker: on a shared machine, every microsecond of it is taken
/// from the clients and servers, and on a production broker it is what
/// the fleet shares.
pub fn broker_cpu_seconds() -> Option<f64> {
    let beam = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "beam.smp"))?;
    process_cpu_seconds(beam.file_name().to_str()?.parse().ok()?)
}

/// CPU time process `pid` has used so far (user + system), in seconds.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    // /proc reports CPU in USER_HZ ticks, 100 a second on Linux.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is the 3rd field, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / TICKS)
}

/// The benchmark's arguments and `echo`'s result: `~size` bytes of JSON,
/// `{"data": "xxx…"}`, typed as an `#[rpc_api]` method's arguments are.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// The bytes.
    pub data: String,
}

/// The benchmark arguments, `~size` bytes of JSON.
pub fn payload(size: usize) -> Data {
    Data { data: "x".repeat(size.saturating_sub(11)) }
}
