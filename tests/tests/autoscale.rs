//! The autoscaler: a burst raises workers (real `nova-compute` processes)
//! from zero, idle workers go back to zero, a worker scaled in while busy
//! finishes its task first; the command launcher runs the operator's
//! script with `up HOST` / `down HOST`; busy workers count (their slots,
//! as they report them to a scheduler), so a drained queue whose workers
//! are busy keeps them.

use std::{sync::Arc, time::Duration};

use nova_autoscale::{AutoscaleOptions, Autoscaler, CommandLauncher, LauncherKind, ProcessLauncher};
use nova_core::db::Database;
use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_services::compute::{
    tasks::{TaskStore, MIGRATIONS},
    ComputeClient, TaskStatus,
};
use nova_tests::{bin_path, eventually, Bus, Kind, TempDir, TestDb, TestVhost};

fn options(topic: &str, launcher: LauncherKind) -> AutoscaleOptions {
    AutoscaleOptions {
        topics: vec![topic.into()],
        min_workers: 0,
        max_workers: 3,
        target_per_worker: 2,
        scale_up_cooldown: Duration::from_millis(500),
        scale_down_window: Duration::from_millis(1500),
        interval: Duration::from_millis(200),
        launcher,
        worker_prefix: "t".into(),
        max_deliveries: None,
        work_queues: Default::default(),
    }
}

/// A consumer of work queue `queue`, as worker `host` would consume it.
async fn take_work(t: &Arc<dyn transport::Transport>, queue: &str, host: &str) -> transport::Listener {
    let spec = transport::ListenSpec {
        exchange: t.options().control_exchange.clone(),
        topic: queue.into(),
        server: host.into(),
        prefetch: 1,
        durable: false,
        max_deliveries: None,
        queues: transport::Queues::Work,
    };
    t.listen(spec).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_the_backlog_and_scale_in_gracefully() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("autoscale");
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\nreport_interval = 0.5\nperiodic_fuzzy_delay = 0\nstate_path = {}\n\
             [database]\nconnection = {}\n[compute]\nmax_tasks = 1\n",
            vhost.url(),
            dir.path().display(),
            db.url
        ),
    );
    let t = transport::connect(transport::TransportOptions::new(vhost.url())).await.unwrap();
    let database = Database::connect(&db.url).await.unwrap();
    database.migrate(MIGRATIONS).await.unwrap();
    let store = TaskStore::new(database);
    let launcher =
        ProcessLauncher::new(bin_path("nova-compute"), vec!["--config-file".into(), conf.display().to_string()]);
    let scaler = Autoscaler::new(t.clone(), options("compute", LauncherKind::Process), Arc::new(launcher));
    let workers = scaler.watch_workers();
    let count = || async { workers.lock().await.get("compute").map_or(0, |s| s.workers.len()) };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scaler.run(stopped));
    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute_work")).with_mandatory(true));
    let ctx = RequestContext::new();
    // The queue exists before any worker: the autoscaler declared (and
    // bound) it before its first look at the backlog.
    eventually("the autoscaler looked once", Duration::from_secs(10), || async {
        workers.lock().await.contains_key("compute").then_some(())
    })
    .await;
    assert!(!t.queue_stats(&["compute_work".into()]).await.unwrap().is_empty(), "the work queue exists");
    assert_eq!(count().await, 0, "min_workers = 0: nothing runs while idle");

    // A burst of six: ceil(6 / 2) = 3 workers, from zero.
    for i in 0..6 {
        submit.submit_task(&ctx, "sleep".into(), vec!["1".into()], format!("burst-{i}"), None, None).await.unwrap();
    }
    eventually("three workers", Duration::from_secs(30), || async { (count().await == 3).then_some(()) }).await;
    let done = eventually("the burst is done", Duration::from_secs(60), || async {
        let all = store.list(None, None).await.ok()?;
        (all.len() == 6 && all.iter().all(|t| t.status.is_final())).then_some(all)
    })
    .await;
    assert!(done.iter().all(|t| t.status == TaskStatus::Succeeded), "{done:#?}");
    let hosts: std::collections::BTreeSet<_> = done.iter().map(|t| t.host.as_str()).collect();
    assert!(hosts.len() >= 2, "the burst spread over the new workers: {hosts:?}");
    eventually("back to zero workers", Duration::from_secs(30), || async { (count().await == 0).then_some(()) }).await;

    // A worker scaled in while busy finishes its task first.
    submit.submit_task(&ctx, "sleep".into(), vec!["3".into()], "busy".into(), None, None).await.unwrap();
    let busy = eventually("the task runs", Duration::from_secs(30), || async {
        store.get("busy").await.ok().flatten().filter(|t| t.status == TaskStatus::Running)
    })
    .await;
    eventually("the busy worker is scaled in", Duration::from_secs(30), || async {
        (count().await == 0).then_some(())
    })
    .await;
    let finished = eventually("the task ends", Duration::from_secs(60), || async {
        store.get("busy").await.ok().flatten().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!((finished.status, finished.host.as_str()), (TaskStatus::Succeeded, busy.host.as_str()), "{finished:?}");
    stop.send_replace(true);
    running.await.unwrap();
    let left = t.queue_stats(&["compute_work".into()]).await.unwrap();
    assert_eq!(left.first().map(|q| q.messages), Some(0), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_launcher_runs_the_operators_script() {
    let bus = Bus::new(Kind::Memory);
    let t = bus.transport().await;
    let dir = TempDir::new("launcher");
    let log = dir.path().join("calls");
    let script =
        dir.write("launch.sh", &format!("#!/bin/sh\necho \"$NOVA_AUTOSCALE_TOPIC $1 $2\" >> {}\n", log.display()));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let argv = vec![script.display().to_string()];
    let launcher = CommandLauncher::new(argv.clone());
    let scaler = Autoscaler::new(t.clone(), options("work", LauncherKind::Command(argv)), Arc::new(launcher));
    let workers = scaler.watch_workers();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scaler.run(stopped));
    // Declared and bound before the autoscaler's first look.
    eventually("the autoscaler looked once", Duration::from_secs(10), || async {
        workers.lock().await.contains_key("work").then_some(())
    })
    .await;
    let client = RpcClient::new(t.clone(), Target::new("work_work"));
    for i in 0..5 {
        client.cast(&RequestContext::new(), "job", serde_json::json!({ "n": i })).await.unwrap();
    }
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("three workers asked for", Duration::from_secs(10), || async {
        (calls().lines().count() == 3).then_some(())
    })
    .await;
    assert_eq!(calls(), "work up t-work-1\nwork up t-work-2\nwork up t-work-3\n");
    // The backlog drains (a consumer takes it); the workers are let go, newest first.
    let mut taker = take_work(&t, "work_work", "taker").await;
    for _ in 0..5 {
        let (_, ack) = taker.recv().await.unwrap().into_parts();
        ack.ack().await;
    }
    eventually("the workers were let go", Duration::from_secs(10), || async {
        (calls().lines().count() == 6).then_some(())
    })
    .await;
    assert!(calls().ends_with("work down t-work-3\nwork down t-work-2\nwork down t-work-1\n"), "{}", calls());
    stop.send_replace(true);
    running.await.unwrap();
}

/// `nova-all` runs the autoscaler when `[autoscale] topics` is set: its
/// minimum is started at once (here through the command launcher), and a
/// process launcher on memory:// is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_all_runs_the_autoscaler() {
    let dir = TempDir::new("all-autoscale");
    let log = dir.path().join("calls");
    let script = dir.write("launch.sh", &format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", log.display()));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[autoscale]\ntopics = compute\nmin_workers = 1\nlauncher = command\ncommand = {}\ninterval = 0.2\n",
            script.display()
        ),
    );
    let port = nova_tests::free_port().to_string();
    let state = dir.path().join("state");
    let args = [
        "--config-file",
        conf.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-path",
        state.to_str().unwrap(),
    ];
    let _all = nova_tests::Proc::spawn("nova-all", &args, dir.path());
    eventually("the minimum worker was started", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log).ok().filter(|c| c == "up auto-compute-1\n")
    })
    .await;

    let refused = dir.write("process.conf", "[autoscale]\ntopics = compute\nlauncher = process\n");
    let out = std::process::Command::new(bin_path("nova-all"))
        .args([
            "--config-file",
            refused.to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
            "--state-path",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs a broker"), "{err}");
}

/// The work in flight comes from the workers' capacity reports to a
/// scheduler: while a worker reports its slots busy, a drained queue keeps
/// it past the scale-down window; once it reports them free, it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_workers_are_kept_while_the_queue_is_drained() {
    use nova_core::{db::services::ServiceRecords, ManagerHandle, Service};
    use nova_services::{api::scheduler::SchedulerClient, scheduler::SchedulerManager};

    let bus = Bus::new(Kind::Memory);
    let t = bus.transport().await;
    let db = TestDb::sqlite();
    let database = Database::connect(&db.url).await.unwrap();
    database.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let rpc = RpcClient::new(t.clone(), Target::new("compute"));
    let scheduler = SchedulerManager::new(ServiceRecords::new(database), Duration::from_secs(60), rpc.clone());
    let scheduler = Service::create(t.clone(), ManagerHandle::new(Arc::new(scheduler)))
        .binary("nova-scheduler")
        .host("s1")
        .start()
        .await
        .unwrap();
    let dir = TempDir::new("inflight");
    let log = dir.path().join("calls");
    let script = dir.write("launch.sh", &format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", log.display()));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let argv = vec![script.display().to_string()];
    let mut o = options("busy", LauncherKind::Command(argv.clone()));
    o.scale_down_window = Duration::from_millis(1000);
    let scaler = Autoscaler::new(t.clone(), o, Arc::new(CommandLauncher::new(argv)));
    let look = scaler.last_look();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scaler.run(stopped));
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    let work = RpcClient::new(t.clone(), Target::new("busy_work"));
    eventually("the autoscaler looked", Duration::from_secs(10), || async { look.lock().await.clone() }).await;
    work.cast(&RequestContext::new(), "job", serde_json::json!({})).await.unwrap();
    eventually("a worker for the backlog", Duration::from_secs(10), || async {
        (calls() == "up t-busy-1\n").then_some(())
    })
    .await;
    // The worker takes the job and reports both its slots busy.
    let mut taker = take_work(&t, "busy_work", "t-busy-1").await;
    taker.resume().await;
    let (_, ack) = taker.recv().await.unwrap().into_parts();
    ack.ack().await;
    let reports = SchedulerClient::new(RpcClient::new(t.clone(), Target::new("scheduler")));
    let ctx = RequestContext::new();
    reports.update_host_state(&ctx, "t-busy-1".into(), 0, 2, vec![]).await.unwrap();
    let busy = eventually("the autoscaler sees the busy slots", Duration::from_secs(10), || async {
        look.lock().await.clone().filter(|l| l.in_flight == Some(2) && l.backlog == 0)
    })
    .await;
    // Three windows' worth of looks with the queue drained: the busy worker stays.
    let windows = 3 * 1000 / 200;
    eventually("three windows of looks", Duration::from_secs(30), || async {
        look.lock().await.clone().filter(|l| l.number >= busy.number + windows)
    })
    .await;
    assert_eq!(calls(), "up t-busy-1\n", "kept while busy");
    reports.update_host_state(&ctx, "t-busy-1".into(), 2, 2, vec![]).await.unwrap();
    eventually("let go once idle for a window", Duration::from_secs(30), || async {
        (calls() == "up t-busy-1\ndown t-busy-1\n").then_some(())
    })
    .await;
    stop.send_replace(true);
    running.await.unwrap();
    scheduler.stop().await;
}
