//! A manager's own background work, tracked by its service (oslo.service's
//! `ThreadGroup`, nameko's `spawn_managed_thread`).
//!
//! A task spawned with [`Background::spawn`] is waited for when the
//! service stops: after in-flight requests and the periodic loops, before
//! `cleanup_host`, up to what is left of `graceful_shutdown_timeout`. What
//! still runs then is cancelled, with a log line saying how many. A plain
//! `tokio::spawn` from a cast would instead be dropped mid-way when the
//! process exits.
//!
//! ```
//! use nova_core::Background;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let background = Background::new();
//! background.spawn(async { /* send the email the cast asked for */ });
//! let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
//! assert_eq!(background.shutdown(deadline).await, 0, "nothing had to be cancelled");
//! # }
//! ```

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::{task::JoinSet, time::Instant};

/// Tracked background tasks; see the [module docs](self). Clones share the set.
#[derive(Clone, Default)]
pub struct Background {
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").field("running", &self.running()).finish()
    }
}

impl PartialEq for Background {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tasks, &other.tasks)
    }
}

impl Eq for Background {}

impl Background {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `work` on the runtime, tracked.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.lock();
        // Forget the ones that ended, so a long-lived service's set stays small.
        while let Some(ended) = tasks.try_join_next() {
            log_panic(ended);
        }
        tasks.spawn(work);
    }

    /// Tasks that have not ended yet.
    pub fn running(&self) -> usize {
        let mut tasks = self.lock();
        while let Some(ended) = tasks.try_join_next() {
            log_panic(ended);
        }
        tasks.len()
    }

    /// Wait for every task until `deadline`, then cancel what still runs;
    /// how many were cancelled. Tasks spawned meanwhile are waited for too.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the tasks it had not yet waited for
    /// running, untracked.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        loop {
            let mut tasks = std::mem::take(&mut *self.lock());
            if tasks.is_empty() {
                return 0;
            }
            loop {
                match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                    Ok(Some(ended)) => log_panic(ended),
                    Ok(None) => break,
                    Err(_) => {
                        let cancelled = tasks.len() + self.lock().len();
                        tasks.abort_all();
                        self.lock().abort_all();
                        tracing::warn!(
                            cancelled,
                            "background tasks still running after graceful_shutdown_timeout were cancelled"
                        );
                        return cancelled;
                    }
                }
            }
        }
    }
}

fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            tracing::error!(error = %e, "a background task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_work_that_ends_in_time() {
        let background = Background::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        background.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(background.running(), 1);
        assert_eq!(background.shutdown(Instant::now() + Duration::from_secs(10)).await, 0);
        done_rx.await.expect("the task ran to its end");
        assert_eq!(background.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_what_outlives_the_deadline() {
        let background = Background::new();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        background.spawn(async move {
            let _guard = dropped_tx;
            std::future::pending::<()>().await;
        });
        background.spawn(async {});
        assert_eq!(background.shutdown(Instant::now() + Duration::from_secs(1)).await, 1);
        // The cancelled task's future was dropped: its sender with it.
        assert!(dropped_rx.await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn work_spawned_during_shutdown_is_waited_for() {
        let background = Background::new();
        let inner = background.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        background.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            inner.spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = done_tx.send(());
            });
        });
        assert_eq!(background.shutdown(Instant::now() + Duration::from_secs(10)).await, 0);
        assert!(done_rx.await.is_ok(), "the task spawned by a task was waited for");
    }
}
