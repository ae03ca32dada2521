//! The scheduler tested against a fake compute, with `nova_core::testing`:
//! the code under test (the scheduler) calls `compute.<host>` as usual and
//! reaches the fake, which records what it was asked to run.

#![allow(unreachable_pub)] // `#[rpc_api]` methods are `pub` by design

use std::{sync::Arc, time::Duration};

use nova_core::{rpc_api, testing::TestBus, Manager};
use nova_rpc::{RequestContext, RpcError, Target};
use nova_services::{
    compute::{NotifyTarget, RunOutcome},
    scheduler::{SchedulerManager, SchedulerManagerClient},
};
use tokio::sync::Mutex;

/// Stands in for `ComputeManager`: same API, no processes.
#[derive(Default)]
struct FakeCompute {
    started: Mutex<Vec<(String, Vec<String>, String)>>,
}

/// The compute API is at 1.1 (1.1 added `submit_task`).
#[rpc_api(version = "1.1")]
impl FakeCompute {
    /// Record the task instead of running it.
    #[rpc(cast)]
    pub async fn run_task(
        &self,
        _ctx: RequestContext,
        name: String,
        args: Vec<String>,
        task_id: String,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<RunOutcome, RpcError> {
        let _ = (notify, callback_url);
        self.started.lock().await.push((name, args, task_id));
        Ok(RunOutcome { started: true, reason: None })
    }
}

impl Manager for FakeCompute {}

#[tokio::test]
async fn the_scheduler_places_tasks_on_up_hosts_with_room() {
    let bus = TestBus::new().await;
    let fake = Arc::new(FakeCompute::default());
    bus.serve("compute", "fake1", fake.clone()).await;
    let scheduler =
        SchedulerManager::new(bus.records().clone(), Duration::from_secs(10), bus.client(Target::new("compute")));
    let scheduler = SchedulerManagerClient::new(bus.serve("scheduler", "s1", Arc::new(scheduler)).await);
    let ctx = RequestContext::new();

    // No compute has reported capacity yet.
    let e = scheduler.schedule_task(&ctx, "echo".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(e.class(), "NoValidHost", "{e:?}");

    scheduler.update_host_state(&ctx, "fake1".into(), 1, 1, vec!["echo".into()]).await.unwrap();
    let placed =
        scheduler.schedule_task(&ctx, "echo".into(), vec!["hi".into()], Some("t1".into()), None, None).await.unwrap();
    assert_eq!((placed.host.as_str(), placed.task_id.as_str()), ("fake1", "t1"));
    let mut started = Vec::new();
    for _ in 0..100 {
        started = fake.started.lock().await.clone();
        if !started.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(started, [("echo".to_owned(), vec!["hi".to_owned()], "t1".to_owned())]);

    // Its one slot is taken now, and it does not allow other commands.
    let full = scheduler.schedule_task(&ctx, "echo".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(full.class(), "NoValidHost");
    let refused = scheduler.schedule_task(&ctx, "rm".into(), vec![], None, None, None).await.unwrap_err();
    assert_eq!(refused.class(), "CommandNotAllowed");
    bus.stop().await;
}
