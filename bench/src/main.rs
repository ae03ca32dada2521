//! `nova-bench`: nova-rs throughput and latency beside raw lapin on the same
//! broker, in one run; see `BENCHMARKS.md` for the figures on this machine.
//!
//! ```text
//! nova-bench                                # memory:// and RabbitMQ on 127.0.0.1
//! nova-bench --transport-url rabbit://u:p@host:5672/ --json
//! nova-bench --smoke                        # seconds, for the test command
//! nova-bench serve --topic T --host H ...   # a worker process (used by the bench)
//! nova-bench autoscale --plot autoscale.svg # the producer-consumer demo, fixed vs autoscaled
//! nova-bench gateway                        # what nova-gateway adds to a compute ping
//! nova-bench fleet --sizes 1,10,50          # what 1, 10, 50 nova-compute services cost
//! nova-bench fleet --sizes 1,10,50,100 --stream-fanout  # the same, fanning out over one stream
//! nova-bench soak --requests 1000000 --plot soak.svg  # what grows in nova-all, tracing off/sampled/on
//! ```

use std::{sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use nova_bench::{self as bench, child, lapin::LapinPattern, nova::NovaPattern, process, OneWay, Pattern, Report};
use nova_rpc::layer::trace::Sampler;

/// Measure nova-rs against raw lapin on the same broker.
#[derive(Parser)]
#[command(name = "nova-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Transports to measure (repeatable); default memory:// and rabbit://guest:guest@127.0.0.1:5672/.
    #[arg(long = "transport-url", value_name = "URL")]
    transport_url: Vec<String>,
    /// Calls per throughput figure.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Sequential calls for the latency figures (after as many warm-up calls / 10).
    #[arg(long, default_value_t = 5_000)]
    seq: usize,
    /// Casts (and fanout casts) per figure.
    #[arg(long, default_value_t = 20_000)]
    casts: usize,
    /// Size of each call's arguments in bytes (~100; try 10240).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Run the bench servers as separate `nova-bench serve` processes.
    #[arg(long)]
    server_process: bool,
    /// Pings sent to a nova-compute process for the memory-growth figure.
    #[arg(long, default_value_t = 100_000)]
    rss_calls: usize,
    /// Casts in the scale-out backlog.
    #[arg(long, default_value_t = 20_000)]
    scale_backlog: usize,
    /// Skip the process figures (start-up, memory, scale-out).
    #[arg(long)]
    no_processes: bool,
    /// Tiny counts, for the test command: proves the bench runs, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the bench API as a worker process.
    Serve {
        #[arg(long = "transport-url")]
        transport_url: String,
        #[arg(long = "control-exchange")]
        control_exchange: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 64)]
        executor: usize,
        /// How long the `work` method takes.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        #[arg(long)]
        no_confirms: bool,
        /// Serve the topic at-least-once, dead-lettering after this many returns.
        #[arg(long, value_name = "MAX_DELIVERIES")]
        at_least_once: Option<u32>,
    },
    /// CALLS sequential memory:// calls on one thread, nothing else (what
    /// `callgrind` counts).
    MemoryCalls {
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        /// Bytes of JSON arguments (and so of result).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// What each one is.
        #[arg(long, value_enum, default_value_t = Op::Call)]
        op: Op,
    },
    /// Instructions per memory:// call, counted by valgrind's callgrind:
    /// two runs of `memory-calls`, the difference over the difference in calls.
    Callgrind {
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Bytes of JSON arguments (and so of result).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// What is counted: a call (and its reply), a cast served, or a
        /// notification sent and handled by a listener.
        #[arg(long, value_enum, default_value_t = Op::Call)]
        op: Op,
    },
    /// Requests through a fresh `nova-all`'s gateway with tracing off,
    /// sampled at the default ratio, and always on: resident memory,
    /// database size and throughput every tenth of the run.
    Soak {
        /// Requests per setting.
        #[arg(long, default_value_t = 1_000_000)]
        requests: usize,
        /// HTTP clients at once, each on a keep-alive connection.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Also draw the readings as an SVG.
        #[arg(long, value_name = "FILE")]
        plot: Option<std::path::PathBuf>,
        /// A few hundred requests, for the test command: proves the soak runs, measures nothing.
        #[arg(long)]
        smoke: bool,
    },
    /// What a fleet of nova-compute services costs the broker and the
    /// machine: broker memory, connections, channels, queues, resident
    /// memory per service, calls across the fleet, fanout to all.
    Fleet {
        /// The broker (one node; `rabbitmqctl` must reach it from here).
        #[arg(long = "transport-url", default_value = "rabbit://guest:guest@127.0.0.1:5672/")]
        transport_url: String,
        /// Fleet sizes, one after another.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
        sizes: Vec<usize>,
        /// Pings at 64 outstanding, spread over the fleet, per size.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Fanouts timed per size.
        #[arg(long, default_value_t = 20)]
        fanouts: usize,
        /// Fan out over one stream (oslo's `rabbit_stream_fanout`) instead of
        /// a classic queue per service.
        #[arg(long)]
        stream_fanout: bool,
        /// Sizes 1 and 2 with tiny counts, for the test command: proves it runs.
        #[arg(long)]
        smoke: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What the HTTP gateway adds to a call: compute pings through
    /// nova-gateway beside direct calls, one at a time and 64 at once.
    Gateway {
        /// The broker (`rabbitmqctl` must reach it from here).
        #[arg(long = "transport-url", default_value = "rabbit://guest:guest@127.0.0.1:5672/")]
        transport_url: String,
        /// Sequential pings each way (and four times as many concurrent ones).
        #[arg(long, default_value_t = 5_000)]
        requests: usize,
        /// A few requests, for the test command: proves it runs.
        #[arg(long)]
        smoke: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The producer-consumer demo: one fixed worker, then nova-autoscale.
    Autoscale {
        #[command(flatten)]
        demo: bench::autoscale::Demo,
        /// Draw the runs into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
        /// Seconds-long runs, for the test command: proves it runs.
        #[arg(long)]
        smoke: bool,
    },
}

const OUTSTANDING: [usize; 4] = [1, 16, 64, 256];

/// Every figure for one pattern, keys suffixed with `suffix`.
async fn measure(p: Arc<dyn Pattern>, a: &RunArgs, group: &str, suffix: &str, r: &mut Report) -> anyhow::Result<()> {
    let warmup = a.seq / 10 + 1;
    let cpu = bench::cpu_seconds();
    let seq = bench::sequential(p.clone(), warmup, a.seq).await?;
    r.add(group, &format!("cpu_us_per_call_seq{suffix}"), (bench::cpu_seconds() - cpu) * 1e6 / (warmup + a.seq) as f64);
    r.add(group, &format!("seq_p50_ms{suffix}"), seq.p50);
    r.add(group, &format!("seq_p90_ms{suffix}"), seq.p90);
    r.add(group, &format!("seq_p99_ms{suffix}"), seq.p99);
    r.add(group, &format!("seq_max_ms{suffix}"), seq.max);
    r.add(group, &format!("seq_calls_per_s{suffix}"), seq.per_s);
    for c in OUTSTANDING {
        let (cpu, broker) = (bench::cpu_seconds(), bench::broker_cpu_seconds());
        let per_s = bench::concurrent(p.clone(), c, a.calls).await?;
        let cpu_us = (bench::cpu_seconds() - cpu) * 1e6 / a.calls as f64;
        r.add(group, &format!("calls_per_s_c{c}{suffix}"), per_s);
        if c == 64 {
            r.add(group, &format!("cpu_us_per_call_c64{suffix}"), cpu_us);
            if group != "memory" {
                broker_cpu(broker, a.calls, group, &format!("broker_cpu_us_per_call_c64{suffix}"), r);
            }
        }
    }
    r.add(group, &format!("casts_per_s{suffix}"), bench::casts(p.clone(), OneWay::Cast, 64, a.casts, 1).await?);
    let fanout = bench::casts(p.clone(), OneWay::Fanout, 64, a.casts / 2, 2).await?;
    r.add(group, &format!("fanout_deliveries_per_s{suffix}"), fanout);
    Ok(())
}

/// The broker's CPU per call since `before` (when the broker runs here).
fn broker_cpu(before: Option<f64>, calls: usize, group: &str, key: &str, r: &mut Report) {
    if let (Some(before), Some(now)) = (before, bench::broker_cpu_seconds()) {
        r.add(group, key, (now - before) * 1e6 / calls as f64);
    }
}

/// The figures with publisher confirms off, against plain lapin.
async fn without_confirms(url: &str, a: &RunArgs, group: &str, r: &mut Report) -> anyhow::Result<()> {
    let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let p: Arc<dyn Pattern> = Arc::new(
        NovaPattern::start(
            bench::api::options(url, &exchange, false),
            "bench",
            bench::payload(a.payload),
            64,
            a.server_process,
            None,
        )
        .await?,
    );
    let l: Arc<dyn Pattern> =
        Arc::new(LapinPattern::start(&child::lapin_url(url)?, &bench::payload(a.payload), 64, false).await?);
    for (pattern, suffix) in [(&p, ""), (&l, "_lapin")] {
        r.add(
            group,
            &format!("calls_per_s_c64_noconfirm{suffix}"),
            bench::concurrent(pattern.clone(), 64, a.calls).await?,
        );
        let casts = bench::casts(pattern.clone(), OneWay::Cast, 64, a.casts, 1).await?;
        r.add(group, &format!("casts_per_s_noconfirm{suffix}"), casts);
    }
    p.close().await;
    l.close().await;
    Ok(())
}

async fn run_transport(url: &str, a: &RunArgs, r: &mut Report) -> anyhow::Result<()> {
    let scheme = url.split("://").next().unwrap_or("memory");
    let group = if scheme == "memory" { "memory" } else { "rabbit" };
    let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let options = bench::api::options(url, &exchange, true);
    let nova: Arc<dyn Pattern> = Arc::new(
        NovaPattern::start(options.clone(), "bench", bench::payload(a.payload), 64, a.server_process, None).await?,
    );
    let measured = measure(nova.clone(), a, group, "", r).await;
    nova.close().await;
    measured?;
    // The same servers with the trace layer on, at the default sampling
    // and tracing every call (no collector: the spans' cost to the caller
    // and server, not the collector's).
    for (sampler, suffix) in [(Sampler::default(), "_traced"), (Sampler::always(), "_traced_all")] {
        let exchange = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let traced_options = bench::api::options(url, &exchange, true);
        let traced: Arc<dyn Pattern> = Arc::new(
            NovaPattern::start(traced_options, "bench", bench::payload(a.payload), 64, false, Some(sampler)).await?,
        );
        let seq = bench::sequential(traced.clone(), a.seq / 10 + 1, a.seq).await;
        let c64 = bench::concurrent(traced.clone(), 64, a.calls).await;
        traced.close().await;
        r.add(group, &format!("seq_p50_ms{suffix}"), seq?.p50);
        r.add(group, &format!("calls_per_s_c64{suffix}"), c64?);
    }
    if group == "memory" {
        return Ok(());
    }
    let lapin: Arc<dyn Pattern> =
        Arc::new(LapinPattern::start(&child::lapin_url(url)?, &bench::payload(a.payload), 64, true).await?);
    let measured = measure(lapin.clone(), a, group, "_lapin", r).await;
    lapin.close().await;
    measured?;
    without_confirms(url, a, group, r).await?;
    if !a.no_processes {
        process::startup_and_memory(url, a.rss_calls, r).await?;
        let executor = 4;
        process::scale_out(url, a.scale_backlog, 5, executor, Duration::from_secs(2), r).await?;
    }
    Ok(())
}

/// What `memory-calls` and `callgrind` send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    /// A call and its reply.
    Call,
    /// A cast, served.
    Cast,
    /// A notification, sent (`messagingv2`) and handled by a listener.
    Notify,
}

/// `calls` sequential operations through nova-rs on `memory://`, with
/// `payload` bytes of arguments; casts and notifications are waited for
/// until every one was handled.
async fn memory_calls(calls: usize, payload: usize, op: Op) -> anyhow::Result<()> {
    let options = bench::api::options("memory://callgrind", "callgrind", true);
    if op == Op::Notify {
        return notifications(options, calls, payload).await;
    }
    let p: Arc<dyn Pattern> =
        Arc::new(NovaPattern::start(options, "bench", bench::payload(payload), 64, false, None).await?);
    for _ in 0..calls {
        match op {
            Op::Call => p.call().await?,
            _ => p.cast().await?,
        }
    }
    while p.received().await? < calls && op == Op::Cast {
        tokio::task::yield_now().await;
    }
    p.close().await;
    Ok(())
}

/// `n` notifications sent and handled.
async fn notifications(options: nova_rpc::transport::TransportOptions, n: usize, payload: usize) -> anyhow::Result<()> {
    use nova_rpc::notify::{handler, NotificationListener, NotificationResult, Notifier, NotifierOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let t = nova_rpc::transport::connect(options).await?;
    let (handled, wake) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
    let (counter, woken) = (handled.clone(), wake.clone());
    let listener = NotificationListener::new(t.clone(), ["notifications"])
        .endpoint(handler(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            woken.notify_one();
            async { NotificationResult::Handled }
        }))
        .start()
        .await?;
    let notifier = Notifier::new(t, NotifierOptions::default()).prepare("nova-bench:b1");
    let (ctx, data) = (nova_rpc::RequestContext::new(), bench::payload(payload));
    for sent in 1..=n {
        notifier.info(&ctx, "bench.event", &data);
        while handled.load(Ordering::Relaxed) < sent {
            wake.notified().await;
        }
    }
    listener.stop().await;
    Ok(())
}

/// Instructions callgrind counts for `memory-calls --calls n --payload p --op op`.
fn instructions(n: usize, payload: usize, op: Op) -> anyhow::Result<u64> {
    let op = clap::ValueEnum::to_possible_value(&op).map(|v| v.get_name().to_owned()).unwrap_or_default();
    let out = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(std::env::current_exe()?)
        .args(["memory-calls", "--calls", &n.to_string(), "--payload", &payload.to_string(), "--op", &op])
        .env("RUST_LOG", "off")
        .output()
        .map_err(|e| anyhow::anyhow!("valgrind is needed (apt-get install valgrind): {e}"))?;
    anyhow::ensure!(out.status.success(), "callgrind run failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stderr);
    let collected = text
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .ok_or_else(|| anyhow::anyhow!("no count in: {text}"))?;
    Ok(collected.trim().parse()?)
}

/// Instructions per call: two runs, `calls` apart, so start-up cancels out.
fn callgrind(calls: usize, payload: usize, op: Op) -> anyhow::Result<f64> {
    let few = instructions(100, payload, op)?;
    let many = instructions(100 + calls, payload, op)?;
    Ok(many.saturating_sub(few) as f64 / calls as f64)
}

async fn run(mut a: RunArgs) -> anyhow::Result<Report> {
    if a.smoke {
        (a.calls, a.seq, a.casts, a.rss_calls, a.scale_backlog) = (200, 50, 200, 200, 300);
    }
    if a.transport_url.is_empty() {
        a.transport_url = vec!["memory://bench".into(), "rabbit://guest:guest@127.0.0.1:5672/".into()];
    }
    let mut report = Report::default();
    for url in a.transport_url.clone() {
        run_transport(&url, &a, &mut report).await?;
    }
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Command::Serve {
            transport_url,
            control_exchange,
            topic,
            host,
            executor,
            work_ms,
            no_confirms,
            at_least_once,
        }) => {
            let options = bench::api::options(&transport_url, &control_exchange, !no_confirms);
            let worker = child::Worker { topic, host, executor, work_ms, at_least_once };
            rt.block_on(child::serve(options, worker))
        }
        Some(Command::MemoryCalls { calls, payload, op }) => {
            let one = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            one.block_on(memory_calls(calls, payload, op))
        }
        Some(Command::Callgrind { calls, payload, op }) => {
            let per_call = callgrind(calls, payload, op)?;
            let what = match op {
                Op::Call => "call",
                Op::Cast => "cast",
                Op::Notify => "notification",
            };
            println!("instructions per memory:// {what}: {per_call:.0}");
            Ok(())
        }
        Some(Command::Soak { mut requests, mut concurrency, plot, smoke }) => {
            if smoke {
                (requests, concurrency) = (300, 4);
            }
            let mut outcomes = Vec::new();
            for setting in bench::soak::Setting::ALL {
                outcomes.push(rt.block_on(bench::soak::soak(setting, requests, concurrency))?);
            }
            print!("{}", bench::soak::table(&outcomes));
            if let Some(file) = plot {
                bench::soak::plot(&outcomes, &file)?;
                println!("plot: {}", file.display());
            }
            Ok(())
        }
        Some(Command::Fleet { transport_url, mut sizes, mut calls, mut fanouts, stream_fanout, smoke, json }) => {
            if smoke {
                (sizes, calls, fanouts) = (vec![1, 2], 200, 2);
            }
            let load = bench::fleet::Load { calls, fanouts, stream_fanout };
            let report = rt.block_on(bench::fleet::run(&transport_url, &sizes, load))?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Some(Command::Gateway { transport_url, mut requests, smoke, json }) => {
            if smoke {
                requests = 50;
            }
            let report = rt.block_on(bench::gateway::run(&transport_url, requests))?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Some(Command::Autoscale { mut demo, plot, smoke }) => {
            if smoke {
                (demo.rate, demo.task_seconds, demo.duration) = (10.0, 0.2, 2.0);
            }
            let outcomes = rt.block_on(bench::autoscale::run(&demo, smoke))?;
            print!("{}", bench::autoscale::table(&outcomes));
            if let Some(file) = plot {
                bench::autoscale::plot(&outcomes, &file)?;
                println!("plot: {}", file.display());
            }
            for o in &outcomes {
                anyhow::ensure!(
                    o.completed == o.submitted,
                    "{}: {} of {} tasks completed",
                    o.name,
                    o.completed,
                    o.submitted
                );
            }
            Ok(())
        }
        None => {
            let json = cli.run.json;
            let report = rt.block_on(run(cli.run))?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
    }
}
