//! `nova-bench autoscale`: the producer-consumer demo, scaled to one
//! machine. A producer submits tasks (`sleep`) to the shared `compute`
//! queue at a steady rate; the run is done twice, with one fixed worker and
//! with the autoscaler, each in a vhost and a database of its own. It
//! reports how fast added workers take their first task, the peak backlog,
//! the drain time, the scale-in back to the minimum, and submitted beside
//! completed tasks; `--plot` draws backlog, workers and completions.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use nova_core::db::Database;
use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_services::compute::{
    tasks::{TaskStore, MIGRATIONS},
    ComputeClient, TaskStatus, WORK_QUEUE,
};

use nova_autoscale::{AutoscaleOptions, Autoscaler, LauncherKind, ProcessLauncher};

/// What to replay.
#[derive(Debug, Clone, clap::Args)]
pub struct Demo {
    /// Tasks submitted per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds each task sleeps.
    #[arg(long, default_value_t = 0.5)]
    pub task_seconds: f64,
    /// Seconds the producer runs.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Tasks one worker runs at once (`[compute] max_tasks`).
    #[arg(long, default_value_t = 4)]
    pub max_tasks: usize,
    /// The autoscaler's fewest workers.
    #[arg(long, default_value_t = 1)]
    pub min_workers: usize,
    /// Most workers.
    #[arg(long, default_value_t = 6)]
    pub max_workers: usize,
    /// Backlog per worker.
    #[arg(long, default_value_t = 4)]
    pub target_per_worker: usize,
    /// The broker (a vhost per run is made there with rabbitmqctl).
    #[arg(long, default_value = "rabbit://guest:guest@127.0.0.1:5672")]
    pub rabbit: String,
    /// The PostgreSQL server (a database per run is made there with psql).
    #[arg(long, default_value = "postgresql://postgres@127.0.0.1:5432")]
    pub postgres: String,
}

/// A line of the plot: its name, colour, and value of a sample (given the workers' scale).
type Line = (&'static str, plotters::style::RGBColor, fn(&Sample, f64) -> f64);

/// One sample of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the producer started.
    pub t: f64,
    /// Ready messages in the queue.
    pub backlog: u64,
    /// Workers running.
    pub workers: usize,
    /// Busy slots of the workers, as the autoscaler last saw them.
    pub in_flight: u64,
    /// Tasks completed.
    pub completed: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `fixed` or `autoscale`.
    pub name: String,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Tasks submitted.
    pub submitted: usize,
    /// Tasks that succeeded.
    pub completed: usize,
    /// Most messages waiting at once.
    pub peak_backlog: u64,
    /// Seconds from the producer's end until every task had run.
    pub drain_seconds: f64,
    /// Seconds from the first backlog to each new worker's first task.
    pub first_task_seconds: Vec<f64>,
    /// Seconds from the drain until the workers were back at the minimum.
    pub scale_in_seconds: Option<f64>,
    /// Scale-ups and scale-downs while the producer ran.
    pub scale_events: usize,
    /// Minutes the producer ran.
    pub producing_minutes: f64,
}

fn ctl(args: &[&str]) -> anyhow::Result<()> {
    let ok = std::process::Command::new("rabbitmqctl").args(args).output().context("rabbitmqctl")?;
    anyhow::ensure!(ok.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
    Ok(())
}

fn psql(server: &str, sql: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("psql")
        .args([&format!("{server}/postgres"), "-q", "-c", sql])
        .output()
        .context("psql")?;
    anyhow::ensure!(ok.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&ok.stderr));
    Ok(())
}

/// Both runs.
pub async fn run(demo: &Demo, smoke: bool) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for autoscale in [false, true] {
        out.push(one(demo, autoscale, smoke).await?);
    }
    Ok(out)
}

async fn one(demo: &Demo, autoscale: bool, smoke: bool) -> anyhow::Result<Outcome> {
    let name = if autoscale { "autoscale" } else { "fixed" };
    let id = format!("nova_bench_{name}_{}", std::process::id());
    ctl(&["-q", "add_vhost", &id])?;
    ctl(&["-q", "set_permissions", "-p", &id, "guest", ".*", ".*", ".*"])?;
    psql(&demo.postgres, &format!("CREATE DATABASE {id}"))?;
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir)?;
    let outcome = replay(demo, autoscale, smoke, &id, &dir).await;
    let _ = ctl(&["-q", "delete_vhost", &id]);
    let _ = psql(&demo.postgres, &format!("DROP DATABASE IF EXISTS {id} WITH (FORCE)"));
    let _ = std::fs::remove_dir_all(&dir);
    outcome.map(|mut o| {
        o.name = name.into();
        o
    })
}

async fn replay(demo: &Demo, autoscale: bool, smoke: bool, id: &str, dir: &Path) -> anyhow::Result<Outcome> {
    let url = format!("{}/{id}", demo.rabbit.trim_end_matches('/'));
    let db_url = format!("{}/{id}", demo.postgres);
    let conf = dir.join("nova.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ntransport_url = {url}\nreport_interval = 1\nperiodic_fuzzy_delay = 0\nstate_path = {}\n\
             [database]\nconnection = {db_url}\n[compute]\nmax_tasks = {}\nallowed_commands = sleep = /bin/sleep\n",
            dir.display(),
            demo.max_tasks
        ),
    )?;
    let database = Database::connect(&db_url).await?;
    database.migrate(nova_core::db::services::MIGRATIONS).await?;
    database.migrate(MIGRATIONS).await?;
    let store = TaskStore::new(database);
    let t = transport::connect(transport::TransportOptions::new(url.clone())).await?;
    // A scheduler, as every deployment has: the computes report their busy
    // slots to it, and the autoscaler reads the work in flight there.
    let mut scheduler = tokio::process::Command::new(std::env::current_exe()?.with_file_name("nova-scheduler"))
        .args(["--config-file", &conf.display().to_string(), "--host", "bench-scheduler"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("nova-scheduler beside nova-bench")?;
    let program = std::env::current_exe()?.with_file_name("nova-compute");
    let launcher = Arc::new(ProcessLauncher::new(program, vec!["--config-file".into(), conf.display().to_string()]));
    let options = AutoscaleOptions {
        topics: vec!["compute".into()],
        min_workers: if autoscale { demo.min_workers } else { 1 },
        max_workers: if autoscale { demo.max_workers } else { 1 },
        target_per_worker: demo.target_per_worker,
        scale_up_cooldown: Duration::from_secs(if smoke { 1 } else { 3 }),
        scale_down_window: Duration::from_secs(if smoke { 2 } else { 10 }),
        interval: Duration::from_millis(250),
        launcher: LauncherKind::Process,
        worker_prefix: "bench".into(),
        max_deliveries: None,
        work_queues: Default::default(),
    };
    let min = options.min_workers;
    let scaler = Autoscaler::new(t.clone(), options, launcher);
    let workers = scaler.watch_workers();
    let look = scaler.last_look();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scaling = tokio::spawn(scaler.run(stopped));
    let count = || async { workers.lock().await.get("compute").map_or(0, |s| s.workers.len()) };
    // The first worker is up before the producer starts.
    let ready = Instant::now();
    let records = nova_core::db::services::ServiceRecords::new(Database::connect(&db_url).await?);
    while records.list(Some("compute")).await?.is_empty() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "no worker reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new(WORK_QUEUE)).with_mandatory(true));
    let total = (demo.rate * demo.duration).round() as usize;
    let every = Duration::from_secs_f64(1.0 / demo.rate);
    let task_arg = format!("{}", demo.task_seconds);
    let start = Instant::now();
    let producer = {
        let (submit, task_arg) = (submit.clone(), task_arg.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for n in 0..total {
                tick.tick().await;
                let _ = submit
                    .submit_task(
                        &RequestContext::new(),
                        "sleep".into(),
                        vec![task_arg.clone()],
                        format!("d{n}"),
                        None,
                        None,
                    )
                    .await;
            }
        })
    };
    let mut o = Outcome { submitted: total, ..Outcome::default() };
    let (mut produced_at, mut drained_at, mut first_backlog) = (None, None, None);
    let limit = Duration::from_secs_f64(demo.duration * 20.0 + 120.0);
    loop {
        let backlog = t.queue_stats(&[WORK_QUEUE.into()]).await?.first().map_or(0, |q| q.messages);
        let completed = store.list(None, Some(TaskStatus::Succeeded)).await?.len();
        let now = start.elapsed().as_secs_f64();
        let w = count().await;
        let in_flight = look.lock().await.as_ref().and_then(|l| l.in_flight).unwrap_or(0);
        if let Some(previous) = o.samples.last() {
            if previous.workers != w && produced_at.is_none() {
                o.scale_events += 1;
            }
        }
        o.samples.push(Sample { t: now, backlog, workers: w, in_flight, completed });
        o.peak_backlog = o.peak_backlog.max(backlog);
        if backlog > 0 && first_backlog.is_none() {
            first_backlog = Some(now);
        }
        if producer.is_finished() && produced_at.is_none() {
            produced_at = Some(now);
        }
        if produced_at.is_some() && drained_at.is_none() && completed >= total {
            drained_at = Some(now);
        }
        if let Some(d) = drained_at {
            if w <= min {
                o.scale_in_seconds = Some(now - d);
                break;
            }
        }
        anyhow::ensure!(start.elapsed() < limit, "the run did not finish in {limit:?}");
        // Until the backlog first shows, look often: the workers' first
        // tasks are timed from it.
        let pause = if first_backlog.is_none() { 50 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    o.completed = store.list(None, Some(TaskStatus::Succeeded)).await?.len();
    o.drain_seconds = drained_at.unwrap_or_default() - produced_at.unwrap_or_default();
    o.producing_minutes = produced_at.unwrap_or_default() / 60.0;
    // Each worker's first task, from the first backlog.
    let mut first: BTreeMap<String, chrono::NaiveDateTime> = BTreeMap::new();
    for task in store.list(None, None).await? {
        if let Some(s) = task.started_at {
            first.entry(task.host).and_modify(|f| *f = (*f).min(s)).or_insert(s);
        }
    }
    let wall0 = chrono::Utc::now().naive_utc() - chrono::Duration::from_std(start.elapsed())?;
    let backlog0 = first_backlog.unwrap_or_default();
    let mut firsts: Vec<f64> = first
        .values()
        .map(|s| (*s - wall0).num_milliseconds() as f64 / 1000.0 - backlog0)
        .filter(|s| *s > 0.0)
        .collect();
    firsts.sort_by(f64::total_cmp);
    o.first_task_seconds = firsts;
    stop.send_replace(true);
    let _ = scaling.await;
    let _ = scheduler.kill().await;
    t.close().await;
    Ok(o)
}

/// The figures as a table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "run        submitted completed peak_backlog drain_s scale_in_s scale_events/min  workers' first task (s after first backlog)\n",
    );
    for o in outcomes {
        let firsts: Vec<String> = o.first_task_seconds.iter().map(|f| format!("{f:.1}")).collect();
        s.push_str(&format!(
            "{:<10} {:>9} {:>9} {:>12} {:>7.1} {:>10} {:>16.1}  {}\n",
            o.name,
            o.submitted,
            o.completed,
            o.peak_backlog,
            o.drain_seconds,
            o.scale_in_seconds.map_or("-".into(), |v| format!("{v:.1}")),
            o.scale_events as f64 / o.producing_minutes.max(1.0 / 60.0),
            if firsts.is_empty() { "-".into() } else { firsts.join(" ") },
        ));
    }
    s
}

/// Draw backlog, workers and completed tasks of each run over time (SVG).
pub fn plot(outcomes: &[Outcome], file: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(file, (960, 360 * outcomes.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((outcomes.len(), 1));
    for (o, area) in outcomes.iter().zip(panels) {
        let t_max = o.samples.last().map_or(1.0, |s| s.t).max(1.0);
        let y_max = o
            .samples
            .iter()
            .map(|s| (s.backlog as f64).max(s.completed as f64).max(s.in_flight as f64))
            .fold(1.0, f64::max);
        let w_max = o.samples.iter().map(|s| s.workers).max().unwrap_or(1).max(1) as f64;
        let scale = y_max / w_max;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{}: backlog, in flight, completed tasks, workers (x{scale:.0})", o.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max * 1.05)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("seconds").y_desc("tasks").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        let series: [Line; 4] = [
            ("backlog (ready)", RED, |s, _| s.backlog as f64),
            ("in flight (busy slots)", MAGENTA, |s, _| s.in_flight as f64),
            ("completed", BLUE, |s, _| s.completed as f64),
            ("workers", GREEN, |s, scale| s.workers as f64 * scale),
        ];
        for (label, color, y) in series {
            chart
                .draw_series(LineSeries::new(o.samples.iter().map(|s| (s.t, y(s, scale))), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
