//! `nova-bench soak`: a long run of requests through `nova-all`'s gateway,
//! with tracing off, sampled at the default ratio, and always on, reporting
//! what grows.
//!
//! Each setting runs in a `nova-all` process of its own, on its embedded
//! defaults (memory:// messaging, SQLite under a fresh state path), as a
//! newcomer runs it. `concurrency` keep-alive HTTP clients send `compute`
//! pings (`POST /v1/call/compute/ping`, base API 1.1) until `requests` are
//! answered. Every tenth of the run the bench reads the process's resident
//! memory (`VmRSS`), the size of its state directory (the SQLite database
//! and its write-ahead log), the requests per second since the last
//! reading, and the backlog of the `trace` queue (spans waiting for the
//! collector). The first tenth is the warm-up: growth is measured from its end.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::child::rss_mib;

/// How `nova-all` traces in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `trace_enabled = false`.
    Off,
    /// The default `[trace] sample_ratio`.
    Sampled,
    /// `[trace] sample_ratio = 1`: every request.
    Always,
}

impl Setting {
    /// Every setting, in the order the bench runs them.
    pub const ALL: [Setting; 3] = [Setting::Off, Setting::Sampled, Setting::Always];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Off => "tracing off",
            Setting::Sampled => "sampled (default)",
            Setting::Always => "sample_ratio = 1",
        }
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Setting::Off => &[("NOVA_TRACE_ENABLED", "false")],
            Setting::Sampled => &[],
            Setting::Always => &[("NOVA_TRACE__SAMPLE_RATIO", "1")],
        }
    }
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Requests answered so far.
    pub done: usize,
    /// Resident memory of `nova-all`, MiB.
    pub rss_mib: f64,
    /// The state directory (database and its log), MiB.
    pub db_mib: f64,
    /// Requests per second since the previous reading.
    pub per_s: f64,
    /// Messages waiting in the `trace` queue (spans on their way to the
    /// collector), as `GET /v1/queues` reports it.
    pub trace_backlog: u64,
}

/// The readings of one setting.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The setting.
    pub setting: Setting,
    /// A reading every tenth of the run.
    pub samples: Vec<Sample>,
}

impl Outcome {
    /// Resident memory grown from the end of the warm-up (the first
    /// reading) to the end, MiB.
    pub fn growth_mib(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => b.rss_mib - a.rss_mib,
            _ => 0.0,
        }
    }
}

/// A `nova-all` on its defaults in a state directory of its own, killed when dropped.
struct NovaAll {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl NovaAll {
    fn start(setting: Setting) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("nova-soak-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(std::env::current_exe()?.with_file_name("nova-all"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--state-path"])
            .arg(dir.join("state"))
            .envs(setting.env().iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nova-all.log"))?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nova-all (build it beside nova-bench): {e}"))?;
        Ok(Self { child, dir, port })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Wait until its scheduler, compute and trace collector are up.
    async fn ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("nova-all.log")).unwrap_or_default();
                anyhow::bail!("nova-all exited ({status}): {log}");
            }
            if let Ok(r) = http.get(self.url("/v1/services")).send().await {
                if r.text().await.is_ok_and(|body| body.matches("\"up\"").count() >= 3) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("nova-all did not start within 60 s")
    }

    /// The backlog of the `trace` queue.
    async fn trace_backlog(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let body = http.get(self.url("/v1/queues")).send().await?.bytes().await?;
        let queues: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(queues
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["queue"] == "trace"))
            .and_then(|q| q["messages"].as_u64())
            .unwrap_or(0))
    }

    fn state_mib(&self) -> f64 {
        fn size(p: &Path) -> u64 {
            match std::fs::read_dir(p) {
                Ok(entries) => entries.flatten().map(|e| size(&e.path())).sum(),
                Err(_) => std::fs::metadata(p).map_or(0, |m| m.len()),
            }
        }
        size(&self.dir.join("state")) as f64 / (1024.0 * 1024.0)
    }
}

impl Drop for NovaAll {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `requests` pings from `concurrency` clients through a fresh `nova-all`
/// traced as `setting` says.
pub async fn soak(setting: Setting, requests: usize, concurrency: usize) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(concurrency).build()?;
    let mut nova = NovaAll::start(setting)?;
    nova.ready(&http).await?;
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let url = nova.url("/v1/call/compute/ping?namespace=baseapi&version=1.1");
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, sent, done) = (http.clone(), url.clone(), sent.clone(), done.clone());
        clients.spawn(async move {
            while sent.fetch_add(1, Ordering::Relaxed) < requests {
                let r = http.post(&url).header("content-type", "application/json").body(r#"{"arg": 1}"#).send().await?;
                anyhow::ensure!(r.status().is_success(), "a ping failed: {}", r.text().await.unwrap_or_default());
                r.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let pid = nova.child.id();
    let mut samples = Vec::with_capacity(10);
    let (mut last_done, mut last_at) = (0, Instant::now());
    for tenth in 1..=10 {
        let goal = requests * tenth / 10;
        while done.load(Ordering::Relaxed) < goal {
            if let Ok(Some(joined)) = tokio::time::timeout(Duration::from_millis(20), clients.join_next()).await {
                joined??;
            }
        }
        let now = done.load(Ordering::Relaxed);
        let per_s = (now - last_done) as f64 / last_at.elapsed().as_secs_f64().max(1e-9);
        let trace_backlog = nova.trace_backlog(&http).await?;
        samples.push(Sample { done: now, rss_mib: rss_mib(pid)?, db_mib: nova.state_mib(), per_s, trace_backlog });
        (last_done, last_at) = (now, Instant::now());
    }
    while let Some(joined) = clients.join_next().await {
        joined??;
    }
    Ok(Outcome { setting, samples })
}

/// The readings as a table: a row per reading, a column group per setting.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| requests |");
    for o in outcomes {
        out.push_str(&format!(" {}: RSS MiB | DB MiB | req/s | trace backlog |", o.setting.name()));
    }
    out.push_str("\n| ---: |");
    out.push_str(&" ---: | ---: | ---: | ---: |".repeat(outcomes.len()));
    out.push('\n');
    for row in 0..outcomes.iter().map(|o| o.samples.len()).max().unwrap_or(0) {
        let done = outcomes.iter().find_map(|o| o.samples.get(row)).map_or(0, |s| s.done);
        out.push_str(&format!("| {done} |"));
        for o in outcomes {
            match o.samples.get(row) {
                Some(s) => out
                    .push_str(&format!(" {:.1} | {:.2} | {:.0} | {} |", s.rss_mib, s.db_mib, s.per_s, s.trace_backlog)),
                None => out.push_str(" | | | |"),
            }
        }
        out.push('\n');
    }
    out.push_str("| RSS growth after warm-up |");
    for o in outcomes {
        out.push_str(&format!(" {:+.1} MiB | | | |", o.growth_mib()));
    }
    out.push('\n');
    out
}

/// Resident memory, database size and throughput against requests, one
/// line per setting, as an SVG.
pub fn plot(outcomes: &[Outcome], file: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    type Reading = fn(&Sample) -> f64;
    let panels: [(&str, Reading); 3] = [
        ("resident memory of nova-all (MiB)", |s| s.rss_mib),
        ("state directory: database and log (MiB)", |s| s.db_mib),
        ("requests per second", |s| s.per_s),
    ];
    let colors = [BLUE, RED, GREEN];
    let root = SVGBackend::new(file, (960, 320 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let x_max = outcomes.iter().flat_map(|o| o.samples.last()).map(|s| s.done as f64).fold(1.0, f64::max);
    for ((title, y), area) in panels.into_iter().zip(root.split_evenly((panels.len(), 1))) {
        let y_max = outcomes.iter().flat_map(|o| o.samples.iter().map(y)).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("requests").y_desc(title).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (o, color) in outcomes.iter().zip(colors) {
            chart
                .draw_series(LineSeries::new(o.samples.iter().map(|s| (s.done as f64, y(s))), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(o.setting.name())
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
