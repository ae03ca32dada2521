//! The scheduler tested against a fake compute, with `nova_core::testing`:
//! the code under test (the scheduler) calls `compute.<host>` as usual and
//! reaches the fake, which records what it was asked to run.

use std::{sync::Arc, time::Duration};

use nova_core::{
    rpc_api,
    testing::{eventually, TestBus},
    Manager,
};
use nova_rpc::{RequestContext, RpcError, Target};
use nova_services::{
    api::compute::{ComputeApi, ComputeError, NotifyTarget, RunOutcome, TaskInfo},
    scheduler::{SchedulerClient, SchedulerManager},
};
use tokio::sync::Mutex;

/// Stands in for `ComputeManager`: the same trait, so the compiler checks
/// every signature against the real API; no processes.
#[derive(Default)]
struct FakeCompute {
    started: Mutex<Vec<(String, Vec<String>, String)>>,
}

impl ComputeApi for FakeCompute {
    /// Record the task instead of running it.
    async fn run_task(
        self: &Arc<Self>,
        _ctx: RequestContext,
        name: String,
        args: Vec<String>,
        task_id: String,
        _notify: Option<NotifyTarget>,
        _callback_url: Option<String>,
    ) -> Result<RunOutcome, ComputeError> {
        self.started.lock().await.push((name, args, task_id));
        Ok(RunOutcome { started: true, reason: None })
    }

    async fn submit_task(
        self: &Arc<Self>,
        _ctx: RequestContext,
        name: String,
        _args: Vec<String>,
        _task_id: String,
        _notify: Option<NotifyTarget>,
        _callback_url: Option<String>,
    ) -> Result<TaskInfo, ComputeError> {
        Err(ComputeError::CommandNotAllowed(name))
    }

    async fn get_task(&self, _ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        Err(ComputeError::TaskNotFound(task_id))
    }

    async fn wait_task(
        &self,
        _ctx: RequestContext,
        task_id: String,
        _timeout: Option<f64>,
    ) -> Result<TaskInfo, ComputeError> {
        Err(ComputeError::TaskNotFound(task_id))
    }

    async fn kill_task(&self, _ctx: RequestContext, task_id: String) -> Result<TaskInfo, ComputeError> {
        Err(ComputeError::TaskNotFound(task_id))
    }

    async fn list_tasks(&self, _ctx: RequestContext) -> Result<Vec<TaskInfo>, ComputeError> {
        Ok(Vec::new())
    }

    async fn report_capacity(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        Ok(())
    }
}

/// Served with the trait's API (and version); the fake has no periodic tasks.
#[rpc_api(serves = ComputeApi)]
impl FakeCompute {}

impl Manager for FakeCompute {}

#[tokio::test]
async fn the_scheduler_places_tasks_on_up_hosts_with_room() {
    let bus = TestBus::new().await;
    let fake = Arc::new(FakeCompute::default());
    bus.serve("compute", "fake1", fake.clone()).await;
    let scheduler =
        SchedulerManager::new(bus.records().clone(), Duration::from_secs(10), bus.client(Target::new("compute")));
    let scheduler = SchedulerClient::new(bus.serve("scheduler", "s1", Arc::new(scheduler)).await);
    let ctx = RequestContext::new();

    // No compute has reported capacity yet.
    let e = scheduler.schedule_task(&ctx, "echo".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(e.class(), "NoValidHost", "{e:?}");

    scheduler.update_host_state(&ctx, "fake1".into(), 1, 1, vec!["echo".into()]).await.unwrap();
    let placed =
        scheduler.schedule_task(&ctx, "echo".into(), vec!["hi".into()], Some("t1".into()), None, None).await.unwrap();
    assert_eq!((placed.host.as_str(), placed.task_id.as_str()), ("fake1", "t1"));
    let started = eventually("the fake was asked to run the task", Duration::from_secs(30), || async {
        Some(fake.started.lock().await.clone()).filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(started, [("echo".to_owned(), vec!["hi".to_owned()], "t1".to_owned())]);

    // Its one slot is taken now, and it does not allow other commands.
    let full = scheduler.schedule_task(&ctx, "echo".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(full.class(), "NoValidHost");
    let refused = scheduler.schedule_task(&ctx, "rm".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(refused.class(), "CommandNotAllowed");
    bus.stop().await;
}
