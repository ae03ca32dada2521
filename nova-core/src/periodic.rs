//! Periodic tasks with oslo.service's semantics.
//!
//! Each task has a `spacing` in seconds (`0` means the default of 60,
//! negative disables it), may `run_immediately` at start, and may be
//! `enabled = false`. The loop runs whatever is due, then sleeps until the
//! next task is due — never longer than `periodic_interval_max`. A task's
//! error or panic is logged and the loop goes on: the task runs again at its
//! next spacing. The first run waits a random
//! `0..periodic_fuzzy_delay` so a fleet started together spreads its load.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::FutureExt;
use nova_rpc::dispatcher::BoxFuture;
use tokio::{sync::watch, time::Instant};

type TaskFn = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;

/// The spacing a task gets when it says 0.
pub const DEFAULT_SPACING: Duration = Duration::from_secs(60);

/// One periodic task.
#[derive(Clone)]
pub struct PeriodicTask {
    /// The task's name, for logs.
    pub name: String,
    /// Seconds between runs; 0 → 60, negative → disabled.
    pub spacing: f64,
    /// Run as soon as the loop starts instead of one spacing later.
    pub run_immediately: bool,
    /// Whether the task runs at all.
    pub enabled: bool,
    run: TaskFn,
}

impl std::fmt::Debug for PeriodicTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeriodicTask").field("name", &self.name).field("spacing", &self.spacing).finish()
    }
}

/// A periodic task's run that returned an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("periodic task {task} failed: {reason}")]
pub struct TaskFailed {
    /// The task.
    pub task: String,
    /// Its error, as its `Display` says it.
    pub reason: String,
}

impl PeriodicTask {
    /// A task running `f` every `spacing` seconds.
    pub fn new<F, Fut>(name: impl Into<String>, spacing: f64, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { name: name.into(), spacing, run_immediately: false, enabled: true, run: Arc::new(move || Box::pin(f())) }
    }

    /// Run the task once, now.
    ///
    /// # Errors
    ///
    /// What the task returned, as its sentence.
    pub async fn run_once(&self) -> Result<(), TaskFailed> {
        (self.run)().await.map_err(|reason| TaskFailed { task: self.name.clone(), reason })
    }

    /// Run as soon as the loop starts instead of one spacing later.
    pub fn run_immediately(mut self, yes: bool) -> Self {
        self.run_immediately = yes;
        self
    }

    /// Turn the task on or off.
    pub fn enabled(mut self, yes: bool) -> Self {
        self.enabled = yes;
        self
    }

    /// The effective spacing, or `None` when disabled.
    pub fn interval(&self) -> Option<Duration> {
        if !self.enabled || self.spacing < 0.0 || !self.spacing.is_finite() {
            None
        } else if self.spacing == 0.0 {
            Some(DEFAULT_SPACING)
        } else {
            Some(Duration::from_secs_f64(self.spacing))
        }
    }
}

/// Run `tasks` until `stop` is set.
pub async fn run_periodic_tasks(
    tasks: Vec<PeriodicTask>,
    fuzzy_delay: Duration,
    interval_max: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tasks: Vec<(PeriodicTask, Duration)> = tasks.into_iter().filter_map(|t| t.interval().map(|i| (t, i))).collect();
    if tasks.is_empty() {
        return;
    }
    if !fuzzy_delay.is_zero() {
        let delay = fuzzy_delay.mul_f64(fastrand::f64());
        tracing::debug!(delay_ms = delay.as_millis() as u64, "delaying the first periodic run");
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
    }
    let start = Instant::now();
    let mut last: Vec<Option<Instant>> =
        tasks.iter().map(|(t, _)| if t.run_immediately { None } else { Some(start) }).collect();
    loop {
        for (i, (task, interval)) in tasks.iter().enumerate() {
            let due = last[i].is_none_or(|l| l.elapsed() >= *interval);
            if !due {
                continue;
            }
            last[i] = Some(Instant::now());
            run_guarded(task).await;
            if *stop.borrow() {
                return;
            }
        }
        let now = Instant::now();
        let idle = tasks
            .iter()
            .zip(&last)
            .map(|((_, interval), l)| l.map_or(Duration::ZERO, |l| (l + *interval).saturating_duration_since(now)))
            .min()
            .unwrap_or(interval_max)
            .min(interval_max);
        if sleep_or_stop(idle, &mut stop).await {
            return;
        }
    }
}

/// Run `task` once; a failure or a panic is logged, and the task runs
/// again at its next spacing.
async fn run_guarded(task: &PeriodicTask) {
    tracing::debug!(task = %task.name, "running periodic task");
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (task.run)())) {
        Ok(run) => std::panic::AssertUnwindSafe(run).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(task = %task.name, error = %e, "periodic task failed"),
        Err(panic) => tracing::error!(
            task = %task.name,
            panic = panic_message(panic.as_ref()),
            "periodic task panicked; it runs again at its next spacing"
        ),
    }
}

/// The text a panic carried, when it carried text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Sleep; `true` when stopped meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn tasks_run_at_their_spacing_and_errors_do_not_stop_the_loop() {
        let (fast, slow, failing) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counter = |c: &Arc<AtomicUsize>, fail: bool| {
            let c = c.clone();
            move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if fail {
                        Err("boom".to_owned())
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let tasks = vec![
            PeriodicTask::new("fast", 1.0, counter(&fast, false)).run_immediately(true),
            PeriodicTask::new("slow", 5.0, counter(&slow, false)),
            PeriodicTask::new("failing", 2.0, counter(&failing, true)),
            PeriodicTask::new("disabled", -1.0, counter(&slow, false)),
        ];
        let (stop_tx, stop_rx) = watch::channel(false);
        let h = tokio::spawn(run_periodic_tasks(tasks, Duration::ZERO, Duration::from_secs(60), stop_rx));
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        stop_tx.send_replace(true);
        h.await.unwrap();
        assert_eq!(fast.load(Ordering::SeqCst), 11); // t = 0..=10
        assert_eq!(slow.load(Ordering::SeqCst), 2); // t = 5, 10
        assert_eq!(failing.load(Ordering::SeqCst), 5); // t = 2, 4, 6, 8, 10
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_runs_again_at_its_next_spacing() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = PeriodicTask::new("panics", 1.0, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n % 2 == 1, "run {n} panics");
                Ok(())
            }
        })
        .run_immediately(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let h = tokio::spawn(run_periodic_tasks(vec![task], Duration::ZERO, Duration::from_secs(60), stop_rx));
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        stop_tx.send_replace(true);
        h.await.expect("the loop survives its task's panics");
        assert_eq!(runs.load(Ordering::SeqCst), 5); // t = 0..=4, every other one panicking
    }

    #[test]
    fn spacing_rules() {
        let t = |s| PeriodicTask::new("t", s, || async { Ok(()) });
        assert_eq!(t(0.0).interval(), Some(DEFAULT_SPACING));
        assert_eq!(t(-1.0).interval(), None);
        assert_eq!(t(5.0).enabled(false).interval(), None);
    }
}
