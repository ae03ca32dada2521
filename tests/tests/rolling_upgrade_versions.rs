//! A fleet at two versions of one API: the same trait at 1.0 (an old
//! host) and at 1.1 (a new client), on memory:// and RabbitMQ.
//!
//! - every 1.0 method of a 1.1 client reaches a 1.0 server, sent at 1.0;
//! - a 1.1-only method fails locally under a 1.0 pin (`UnsupportedVersion`,
//!   naming the pin and the method), and the server never sees it;
//! - an argument added in 1.1 is left out at its default (the method goes
//!   at 1.0), refused under a 1.0 pin otherwise, and travels at 1.1 unpinned;
//! - `describe` shows each method's `since`.

#![allow(unreachable_pub)] // `#[rpc_api]` methods are `pub` by design

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use nova_core::{prelude::*, ManagerHandle, Service};
use nova_rpc::{transport::Transport, Version};
use nova_tests::{transport_suite, Bus, Kind};
use serde_json::json;

/// The API as the old host has it.
mod v1_0 {
    use nova_core::prelude::*;

    #[rpc_api(version = "1.0")]
    pub trait InventoryApi {
        /// How many of `item` are in stock.
        async fn count(&self, ctx: RequestContext, item: String) -> Result<u32, RpcError>;
        /// Take `n` of `item`.
        async fn take(&self, ctx: RequestContext, item: String, n: u32) -> Result<u32, RpcError>;
    }
}

/// The API as the new client has it: `take` gained `reason` in 1.1, and
/// `restock` is new in 1.1.
mod v1_1 {
    use nova_core::prelude::*;

    #[rpc_api(version = "1.1")]
    pub trait InventoryApi {
        /// How many of `item` are in stock.
        async fn count(&self, ctx: RequestContext, item: String) -> Result<u32, RpcError>;
        /// Take `n` of `item`, saying why.
        async fn take(
            &self,
            ctx: RequestContext,
            item: String,
            n: u32,
            #[rpc(since = "1.1")] reason: Option<String>,
        ) -> Result<u32, RpcError>;
        /// Put `n` of `item` back.
        #[rpc(since = "1.1")]
        async fn restock(&self, ctx: RequestContext, item: String, n: u32) -> Result<u32, RpcError>;
    }
}

/// An old host: serves 1.0 and counts what reaches it.
#[derive(Default)]
struct OldHost {
    served: AtomicUsize,
}

impl v1_0::InventoryApi for OldHost {
    async fn count(&self, _ctx: RequestContext, _item: String) -> Result<u32, RpcError> {
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    }

    async fn take(&self, _ctx: RequestContext, _item: String, n: u32) -> Result<u32, RpcError> {
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(7 - n)
    }
}

#[rpc_api(serves = v1_0::InventoryApi)]
impl OldHost {}

impl Manager for OldHost {}

/// A new host: serves 1.1, and says what `take` was told.
#[derive(Default)]
struct NewHost;

impl v1_1::InventoryApi for NewHost {
    async fn count(&self, _ctx: RequestContext, _item: String) -> Result<u32, RpcError> {
        Ok(9)
    }

    async fn take(&self, _ctx: RequestContext, _item: String, n: u32, reason: Option<String>) -> Result<u32, RpcError> {
        Ok(if reason.is_some() { 100 + n } else { n })
    }

    async fn restock(&self, _ctx: RequestContext, _item: String, n: u32) -> Result<u32, RpcError> {
        Ok(n)
    }
}

#[rpc_api(serves = v1_1::InventoryApi)]
impl NewHost {}

impl Manager for NewHost {}

async fn serve<M: Manager + RpcApi>(
    t: Arc<dyn Transport>,
    topic: &str,
    host: &str,
    m: Arc<M>,
) -> nova_core::RunningService {
    let options = nova_core::ServiceOptions { periodic_enable: false, trace: false, ..Default::default() };
    Service::create(t, ManagerHandle::new(m)).topic(topic).host(host).options(options).start().await.expect("serves")
}

async fn a_new_client_talks_to_an_old_host(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let topic = nova_tests::unique("inventory");
    let old = Arc::new(OldHost::default());
    let running = serve(t.clone(), &topic, "old", old.clone()).await;
    let ctx = RequestContext::new();
    let client = v1_1::InventoryClient::new(RpcClient::new(t.clone(), Target::new(&topic)));

    // Unpinned, the 1.0 methods still go at 1.0: the old host serves them.
    assert_eq!(client.count(&ctx, "nut".into()).await.unwrap(), 7);
    assert_eq!(client.take(&ctx, "nut".into(), 2, None).await.unwrap(), 5, "a default 1.1 argument is not sent");
    // Without a pin, a 1.1 method reaches the old host, which refuses it.
    match client.restock(&ctx, "nut".into(), 1).await {
        Err(RpcError::UnsupportedVersion { version, method }) => {
            assert_eq!((version.as_str(), method.as_str()), ("1.1", "restock"))
        }
        other => panic!("the old host refuses 1.1: {other:?}"),
    }
    let served = old.served.load(Ordering::SeqCst);
    assert_eq!(served, 2);

    // Pinned to 1.0, as [upgrade_levels] would pin it.
    let pinned = client.with_version_cap(Version::new(1, 0));
    assert_eq!(pinned.count(&ctx, "nut".into()).await.unwrap(), 7);
    assert_eq!(pinned.take(&ctx, "nut".into(), 3, None).await.unwrap(), 4, "dropped at its default");
    for refused in [
        pinned.restock(&ctx, "nut".into(), 1).await.map(drop),
        pinned.take(&ctx, "nut".into(), 1, Some("audit".into())).await.map(drop),
    ] {
        match refused {
            Err(e @ RpcError::PinnedBelow { .. }) => {
                assert_eq!(e.class(), "UnsupportedVersion");
                let text = e.to_string();
                assert!(text.contains("1.1") && text.contains("pinned to 1.0"), "{text}");
            }
            other => panic!("refused locally: {other:?}"),
        }
    }
    assert!(
        matches!(pinned.restock(&ctx, "x".into(), 1).await, Err(RpcError::PinnedBelow { ref method, .. }) if method == "restock")
    );
    assert_eq!(old.served.load(Ordering::SeqCst), served + 2, "nothing refused locally reached the host");
    running.stop().await;
}

async fn newer_arguments_travel_unpinned_and_describe_shows_since(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let topic = nova_tests::unique("inventory");
    let running = serve(t.clone(), &topic, "new", Arc::new(NewHost)).await;
    let ctx = RequestContext::new();
    let client = v1_1::InventoryClient::new(RpcClient::new(t.clone(), Target::new(&topic)));
    assert_eq!(client.take(&ctx, "nut".into(), 2, Some("audit".into())).await.unwrap(), 102, "the argument arrived");
    assert_eq!(client.take(&ctx, "nut".into(), 2, None).await.unwrap(), 2);
    assert_eq!(client.restock(&ctx, "nut".into(), 4).await.unwrap(), 4);
    // An old client (1.0) is served by the new host.
    let old_client = v1_0::InventoryClient::new(RpcClient::new(t.clone(), Target::new(&topic)));
    assert_eq!(old_client.take(&ctx, "nut".into(), 3).await.unwrap(), 3);
    let base = RpcClient::new(t.clone(), Target::new(&topic).with_namespace("baseapi").with_version("1.1"))
        .with_timeout(Duration::from_secs(10));
    let d = base.call(&ctx, "describe", json!({})).await.unwrap();
    let since = |name: &str| {
        let methods = d["endpoints"][0]["methods"].as_array().unwrap();
        methods.iter().find(|m| m["name"] == name).map(|m| m["since"].clone())
    };
    assert_eq!((since("restock"), since("count")), (Some(json!("1.1")), Some(serde_json::Value::Null)));
    running.stop().await;
}

transport_suite!(a_new_client_talks_to_an_old_host, newer_arguments_travel_unpinned_and_describe_shows_since);

/// A scheduler of this code (compute API 1.1, pinned by `auto` to the 1.0
/// host it sees) places tasks on a Python oslo.messaging compute host that
/// serves the compute API 1.0: each `run_task` arrives at 1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_scheduler_places_tasks_on_a_python_compute_at_1_0() {
    use nova_services::scheduler::{SchedulerClient, SchedulerManager};
    let bus = Bus::new(Kind::Rabbit);
    let dir = nova_tests::TempDir::new("py-compute");
    let mut python =
        nova_tests::interop::PyPeer::server(&bus.url, &bus.exchange, "compute", "py1", &["--compute-1.0"], dir.path());
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let db = nova_core::db::Database::connect(&url).await.unwrap();
    db.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = nova_core::db::services::ServiceRecords::new(db);
    records.create_or_update("py1", "nova-compute", "compute", 1).await.unwrap();
    let t = bus.transport().await;
    let scheduler = Arc::new(SchedulerManager::new(
        records.clone(),
        Duration::from_secs(60),
        RpcClient::new(t.clone(), Target::new("compute")),
    ));
    let mut config = nova_core::config::Config::with_defaults(nova_services::scheduler::OPTIONS);
    config.set("upgrade_levels", "compute", "auto".into(), nova_core::config::Origin::Code);
    assert_eq!(scheduler.pin(&config).await.unwrap(), Some(Version::new(1, 0)));
    let running = serve(t.clone(), "scheduler", "s1", scheduler).await;
    let ctx = RequestContext::new();
    let client = SchedulerClient::new(RpcClient::new(t.clone(), Target::new("scheduler")));
    client.update_host_state(&ctx, "py1".into(), 4, 4, vec!["echo".into()]).await.unwrap();
    for i in 0..3 {
        let placed = nova_tests::eventually("the scheduler places the task", Duration::from_secs(30), || async {
            client.schedule_task(&ctx, "echo".into(), vec![], Some(format!("py-task-{i}")), None, None).await.ok()
        })
        .await;
        assert_eq!(placed.host, "py1");
        let line = python.line_starting("PLACED ", Duration::from_secs(30));
        assert_eq!(line, Some(format!("PLACED py-task-{i}")), "run_task arrived at 1.0: {}", python.stderr());
    }
    running.stop().await;
}

/// A Python client pinned to the compute API 1.0 drives a nova-compute of
/// this code (which serves 1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_pinned_to_1_0_drives_a_new_compute() {
    let bus = Bus::new(Kind::Rabbit);
    let dir = nova_tests::TempDir::new("py-client");
    let state = dir.path().join("state");
    let args = ["--transport-url", &bus.url, "--control-exchange", &bus.exchange, "--host", "c1"];
    let compute = nova_tests::Proc::spawn(
        "nova-compute",
        &[&args[..], &["--state-path", state.to_str().unwrap()]].concat(),
        dir.path(),
    );
    let mut python = nova_tests::interop::PyPeer::client(&bus.url, &bus.exchange, &[], dir.path());
    let request =
        json!({"op": "call", "topic": "compute", "server": "c1", "method": "list_tasks", "version": "1.0", "args": {}});
    nova_tests::eventually("nova-compute serves", Duration::from_secs(30), || async {
        compute.output().contains("service started").then_some(())
    })
    .await;
    let answer = python.request(request);
    assert_eq!(answer["ok"], json!([]), "{answer} {}", compute.output());
    // At 1.2, which no compute serves, oslo's own refusal comes back.
    let newer =
        json!({"op": "call", "topic": "compute", "server": "c1", "method": "list_tasks", "version": "1.2", "args": {}});
    let refused = python.request(newer);
    assert_eq!(refused["error"]["exc_type"], "UnsupportedVersion", "{refused}");
}

/// Grenade-style: a stream of 200 tasks is scheduled while the fleet is at
/// two versions: a compute host built from the previous compute API (1.0)
/// beside one of this code (1.1), and the scheduler itself upgraded in the
/// middle of the stream (an old one pinned to 1.0 stops, a new one with
/// `[upgrade_levels] compute = auto` takes over). Every task is placed
/// exactly once, or refused with an error the caller sees (`NoValidHost`,
/// for a call served by the new scheduler before any compute reported to
/// it); none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_tasks_crosses_a_scheduler_upgrade() {
    use nova_services::scheduler::{SchedulerClient, SchedulerManager};
    let bus = Bus::new(Kind::Rabbit);
    let t = bus.transport().await;
    let dir = nova_tests::TempDir::new("grenade");
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let db = nova_core::db::Database::connect(&url).await.unwrap();
    db.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = nova_core::db::services::ServiceRecords::new(db);
    records.create_or_update("old", "nova-compute", "compute", 1).await.unwrap();
    records.create_or_update("new", "nova-compute", "compute", 2).await.unwrap();
    let old_host = Arc::new(Placed::default());
    let new_host = Arc::new(PlacedNew::default());
    let computes = [
        serve(t.clone(), "compute", "old", old_host.clone()).await,
        serve(t.clone(), "compute", "new", new_host.clone()).await,
    ];
    let scheduler_with = |level: &str| {
        let mut config = nova_core::config::Config::with_defaults(nova_services::scheduler::OPTIONS);
        config.set("upgrade_levels", "compute", level.into(), nova_core::config::Origin::Code);
        let m = SchedulerManager::new(
            records.clone(),
            Duration::from_secs(60),
            RpcClient::new(t.clone(), Target::new("compute")),
        );
        async move {
            m.pin(&config).await.unwrap();
            Arc::new(m)
        }
    };
    let client =
        SchedulerClient::new(RpcClient::new(t.clone(), Target::new("scheduler")).with_timeout(Duration::from_secs(60)));
    let report = |c: SchedulerClient| async move {
        for host in ["old", "new"] {
            c.update_host_state(&RequestContext::new(), host.into(), 1000, 1000, vec!["echo".into()]).await.unwrap();
        }
    };
    let mut scheduler = serve(t.clone(), "scheduler", "s1", scheduler_with("1.0").await).await;
    report(client.clone()).await;
    // The stream runs on its own; the upgrade happens while it flows.
    let answered = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let (client, answered) = (client.clone(), answered.clone());
        async move {
            let (mut placed, mut refused) = (Vec::new(), Vec::new());
            for i in 0..200 {
                let ctx = RequestContext::new();
                match client.schedule_task(&ctx, "echo".into(), vec![], Some(format!("g-{i}")), None, None).await {
                    Ok(p) => placed.push(p.task_id),
                    Err(e) => refused.push(format!("g-{i}: {e}")),
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            (placed, refused)
        }
    });
    nova_tests::eventually("half the stream is answered", Duration::from_secs(60), || async {
        (answered.load(Ordering::SeqCst) >= 100).then_some(())
    })
    .await;
    // The upgrade: the old scheduler drains and stops; calls made meanwhile
    // wait in the scheduler's queue for the new one.
    scheduler.stop().await;
    let during = answered.load(Ordering::SeqCst);
    scheduler = serve(t.clone(), "scheduler", "s2", scheduler_with("auto").await).await;
    report(client.clone()).await;
    let (placed, refused) = stream.await.unwrap();
    assert!(during < 200, "the upgrade happened mid-stream ({during} answered)");
    // Casts of run_task arrive after the calls that made them answer.
    nova_tests::eventually("every placed task reached its host", Duration::from_secs(30), || async {
        (old_host.ids().len() + new_host.ids().len() == placed.len()).then_some(())
    })
    .await;
    let mut reached: Vec<String> = [old_host.ids(), new_host.ids()].concat();
    reached.sort();
    let mut expected = placed.clone();
    expected.sort();
    assert_eq!(reached, expected, "each placed task reached one host, once");
    // A call that waited through the swap may reach the new scheduler
    // before it has heard from any compute: it is refused, clearly.
    assert!(refused.iter().all(|r| r.contains("NoValidHost")), "refusals say why: {refused:?}");
    assert_eq!(placed.len() + refused.len(), 200, "every task was answered");
    assert!(placed.len() >= 190, "{} placed, refused: {refused:?}", placed.len());
    assert!(!old_host.ids().is_empty() && !new_host.ids().is_empty(), "both hosts served");
    scheduler.stop().await;
    for c in computes {
        c.stop().await;
    }
}

/// The compute API as a host of the previous release has it.
mod compute_1_0 {
    use nova_core::prelude::*;

    #[rpc_api(version = "1.0")]
    pub trait ComputeApi {
        /// Run a placed task.
        #[rpc(cast, callable)]
        async fn run_task(
            &self,
            ctx: RequestContext,
            name: String,
            #[rpc(default)] args: Vec<String>,
            task_id: String,
            notify: Option<serde_json::Value>,
            callback_url: Option<String>,
        ) -> Result<serde_json::Value, RpcError>;
        /// Report capacity (a no-op here: the test reports for the hosts).
        #[rpc(cast)]
        async fn report_capacity(&self, ctx: RequestContext) -> Result<(), RpcError>;
    }
}

/// A host of the previous release: records what it was asked to run.
#[derive(Default)]
struct Placed(std::sync::Mutex<Vec<String>>);

impl Placed {
    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl compute_1_0::ComputeApi for Placed {
    async fn run_task(
        &self,
        _ctx: RequestContext,
        _name: String,
        _args: Vec<String>,
        task_id: String,
        _notify: Option<serde_json::Value>,
        _callback_url: Option<String>,
    ) -> Result<serde_json::Value, RpcError> {
        self.0.lock().unwrap().push(task_id);
        Ok(json!({"started": true}))
    }

    async fn report_capacity(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        Ok(())
    }
}

#[rpc_api(serves = compute_1_0::ComputeApi)]
impl Placed {}

impl Manager for Placed {}

/// A host of this release: the real compute API 1.1, recording runs.
#[derive(Default)]
struct PlacedNew(Placed);

impl PlacedNew {
    fn ids(&self) -> Vec<String> {
        self.0.ids()
    }
}

impl nova_services::api::compute::ComputeApi for PlacedNew {
    async fn run_task(
        self: &Arc<Self>,
        ctx: RequestContext,
        name: String,
        args: Vec<String>,
        task_id: String,
        _notify: Option<nova_services::api::compute::NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<nova_services::api::compute::RunOutcome, nova_services::api::compute::ComputeError> {
        let _ = compute_1_0::ComputeApi::run_task(&self.0, ctx, name, args, task_id, None, callback_url).await;
        Ok(nova_services::api::compute::RunOutcome { started: true, reason: None })
    }

    async fn submit_task(
        self: &Arc<Self>,
        _ctx: RequestContext,
        _name: String,
        _args: Vec<String>,
        task_id: String,
        _notify: Option<nova_services::api::compute::NotifyTarget>,
        _callback_url: Option<String>,
    ) -> Result<nova_services::api::compute::TaskInfo, nova_services::api::compute::ComputeError> {
        Err(nova_services::api::compute::ComputeError::TaskNotFound(task_id))
    }

    async fn get_task(
        &self,
        _ctx: RequestContext,
        task_id: String,
    ) -> Result<nova_services::api::compute::TaskInfo, nova_services::api::compute::ComputeError> {
        Err(nova_services::api::compute::ComputeError::TaskNotFound(task_id))
    }

    async fn wait_task(
        &self,
        _ctx: RequestContext,
        task_id: String,
        _timeout: Option<f64>,
    ) -> Result<nova_services::api::compute::TaskInfo, nova_services::api::compute::ComputeError> {
        Err(nova_services::api::compute::ComputeError::TaskNotFound(task_id))
    }

    async fn kill_task(
        &self,
        _ctx: RequestContext,
        task_id: String,
    ) -> Result<nova_services::api::compute::TaskInfo, nova_services::api::compute::ComputeError> {
        Err(nova_services::api::compute::ComputeError::TaskNotFound(task_id))
    }

    async fn list_tasks(
        &self,
        _ctx: RequestContext,
    ) -> Result<Vec<nova_services::api::compute::TaskInfo>, nova_services::api::compute::ComputeError> {
        Ok(Vec::new())
    }

    async fn report_capacity(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        Ok(())
    }
}

#[rpc_api(serves = nova_services::api::compute::ComputeApi)]
impl PlacedNew {}

impl Manager for PlacedNew {}
