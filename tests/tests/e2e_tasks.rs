//! End to end: tasks scheduled through the scheduler onto two compute
//! hosts, their output read back, a long one killed, a compute SIGKILLed
//! and avoided once down, restarted with its lost task marked failed; the
//! allow-list refusing anything else, with arguments never reaching a shell.
//! Once with processes on RabbitMQ + PostgreSQL, once in one process on
//! memory:// + SQLite.

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_core::{
    db::{services::ServiceRecords, Database},
    ManagerHandle, Service,
};
use nova_rpc::{transport, RequestContext, RpcClient, RpcError, Target};
use nova_services::{
    compute::{commands::Commands, ComputeClient, ComputeManager, TaskInfo, TaskStatus},
    scheduler::{SchedulerClient, SchedulerManager},
};
use nova_tests::{eventually, Proc, TempDir, TestDb, TestVhost};

fn ctx() -> RequestContext {
    RequestContext::new()
}

/// The task once it has ended. `run_task` is a cast, served beside the
/// caller's next call on the same queue, so the task may not exist yet
/// when the first `wait_task` arrives: ask again until it has ended.
async fn finished(compute: &ComputeClient, host: &str, task_id: &str) -> TaskInfo {
    let c = compute.with_server(host);
    eventually("the task ends", Duration::from_secs(30), || async {
        c.wait_task(&ctx(), task_id.to_owned(), Some(2.0)).await.ok().filter(|t| t.status.is_final())
    })
    .await
}

/// Schedule `n` echo tasks; returns how many landed on each host.
async fn schedule_echoes(scheduler: &SchedulerClient, compute: &ComputeClient, n: usize) -> HashMap<String, usize> {
    let mut hosts = HashMap::new();
    for i in 0..n {
        let p = scheduler
            .schedule_task(&ctx(), "echo".into(), vec!["hello".into(), i.to_string()], None, None, None)
            .await
            .unwrap();
        let t = finished(compute, &p.host, &p.task_id).await;
        assert_eq!((t.status, t.stdout.as_str()), (TaskStatus::Succeeded, format!("hello {i}\n").as_str()), "{t:?}");
        *hosts.entry(p.host).or_insert(0) += 1;
    }
    hosts
}

async fn refusals_and_kill(scheduler: &SchedulerClient, compute: &ComputeClient) {
    match scheduler.schedule_task(&ctx(), "rm".into(), vec!["-rf".into(), "/".into()], None, None, None).await {
        Err(RpcError::Remote(f)) => assert_eq!(f.class, "CommandNotAllowed", "{f:?}"),
        other => panic!("a command outside the allow-list is refused, got {other:?}"),
    }
    // Arguments are argv, never shell: metacharacters arrive verbatim.
    let tricky = vec!["$(id)".to_owned(), ";".to_owned(), "rm -rf /tmp/x".to_owned(), "`whoami`".to_owned()];
    let p = scheduler.schedule_task(&ctx(), "echo".into(), tricky, None, None, None).await.unwrap();
    let t = finished(compute, &p.host, &p.task_id).await;
    assert_eq!(t.stdout, "$(id) ; rm -rf /tmp/x `whoami`\n");
    // A long task, killed.
    let p = scheduler
        .schedule_task(&ctx(), "sleep".into(), vec!["30".into()], Some("long-1".into()), None, None)
        .await
        .unwrap();
    let c = compute.with_server(&p.host);
    eventually("the long task runs", Duration::from_secs(10), || async {
        c.get_task(&ctx(), "long-1".into()).await.ok().filter(|t| t.status == TaskStatus::Running)
    })
    .await;
    let killed = c.kill_task(&ctx(), "long-1".into()).await.unwrap();
    assert_eq!(killed.status, TaskStatus::Killed);
    // The same task id again does nothing.
    let again = c.run_task(&ctx(), "echo".into(), vec![], "long-1".into(), None, None).await;
    assert!(again.is_ok());
    // A sentinel task cast after it to the same host has ended: the repeat was judged first.
    c.run_task(&ctx(), "echo".into(), vec![], "after-1".into(), None, None).await.unwrap();
    finished(compute, &p.host, "after-1").await;
    assert_eq!(
        c.get_task(&ctx(), "long-1".into()).await.unwrap().status,
        TaskStatus::Killed,
        "a redelivered run_task never runs twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_rabbitmq_and_postgresql() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("e2e");
    let exchange = nova_tests::unique("nova");
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\ncontrol_exchange = {exchange}\nreport_interval = 0.3\nservice_down_time = 2\nperiodic_fuzzy_delay = 0\n\
             state_path = {}\n[database]\nconnection = {}\n[compute]\nmax_tasks = 8\ncapacity_report_interval = 0.3\n",
            vhost.url(),
            dir.path().display(),
            db.url
        ),
    );
    let conf = conf.to_str().unwrap().to_owned();
    let spawn = |bin: &str, host: &str| Proc::spawn(bin, &["--config-file", &conf, "--host", host], dir.path());
    let _s = spawn("nova-scheduler", "s1");
    let _c1 = spawn("nova-compute", "c1");
    let mut c2 = spawn("nova-compute", "c2");
    let t = transport::connect(transport::TransportOptions::new(vhost.url()).with_control_exchange(exchange.clone()))
        .await
        .unwrap();
    let rpc = RpcClient::new(t, Target::new("scheduler")).with_timeout(Duration::from_secs(5));
    let scheduler = SchedulerClient::new(rpc.clone());
    let compute = ComputeClient::new(rpc.with_target(Target::new("compute")));
    eventually("both computes reported to the scheduler", Duration::from_secs(30), || async {
        scheduler.list_host_states(&ctx()).await.ok().filter(|h| h.len() == 2)
    })
    .await;
    let spread = schedule_echoes(&scheduler, &compute, 8).await;
    assert_eq!(spread.len(), 2, "tasks use both hosts: {spread:?}");
    refusals_and_kill(&scheduler, &compute).await;

    // A task running on c2 when c2 dies.
    compute
        .with_server("c2")
        .run_task(&ctx(), "sleep".into(), vec!["30".into()], "lost-1".into(), None, None)
        .await
        .unwrap();
    eventually("lost-1 runs", Duration::from_secs(10), || async {
        compute
            .with_server("c2")
            .get_task(&ctx(), "lost-1".into())
            .await
            .ok()
            .filter(|t| t.status == TaskStatus::Running)
    })
    .await;
    c2.signal("KILL");
    c2.wait_exit(Duration::from_secs(5)).expect("c2 killed");
    let records = ServiceRecords::new(Database::connect(&db.url).await.unwrap());
    eventually("c2 is down", Duration::from_secs(8), || async {
        let all = records.list(Some("compute")).await.ok()?;
        let c2 = all.iter().find(|r| r.host == "c2")?;
        (!nova_core::db::services::is_up(c2, Duration::from_secs(2), chrono::Utc::now().naive_utc())).then_some(())
    })
    .await;
    let spread = schedule_echoes(&scheduler, &compute, 6).await;
    assert_eq!(spread.keys().collect::<Vec<_>>(), ["c1"], "a down host is not chosen");

    let _c2 = spawn("nova-compute", "c2");
    let lost = eventually("c2 is back", Duration::from_secs(30), || async {
        compute.with_server("c2").get_task(&ctx(), "lost-1".into()).await.ok()
    })
    .await;
    assert_eq!(
        lost.status,
        TaskStatus::Failed,
        "a task running when its compute died is failed at init_host: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_memory_and_sqlite() {
    let t = transport::connect(transport::TransportOptions::new(format!("memory://{}", nova_tests::unique("e2e"))))
        .await
        .unwrap();
    let db = TestDb::sqlite();
    let database = Database::connect(&db.url).await.unwrap();
    let mut migrations = nova_core::db::services::MIGRATIONS.to_vec();
    migrations.extend_from_slice(nova_services::compute::tasks::MIGRATIONS);
    database.migrate(&migrations).await.unwrap();
    let records = ServiceRecords::new(database.clone());
    let rpc = RpcClient::new(t.clone(), Target::new("scheduler")).with_timeout(Duration::from_secs(5));
    let allowed =
        Commands::parse(vec![("echo".into(), "/bin/echo".into()), ("sleep".into(), "/bin/sleep".into())]).unwrap();
    let mut running = Vec::new();
    for host in ["c1", "c2"] {
        let m = ComputeManager::new(host, allowed.clone(), 8, 0.3, 1, database.clone(), rpc.clone());
        let svc = Service::create(t.clone(), ManagerHandle::new(Arc::new(m)))
            .binary("nova-compute")
            .host(host)
            .records(records.clone());
        running.push(
            svc.report_interval(Duration::from_millis(300)).periodic_fuzzy_delay(Duration::ZERO).start().await.unwrap(),
        );
    }
    let s = SchedulerManager::new(records.clone(), Duration::from_secs(2), rpc.clone());
    let svc = Service::create(t.clone(), ManagerHandle::new(Arc::new(s)))
        .binary("nova-scheduler")
        .host("s1")
        .records(records);
    running.push(svc.start().await.unwrap());
    let scheduler = SchedulerClient::new(rpc.clone());
    let compute = ComputeClient::new(rpc.with_target(Target::new("compute")));
    eventually("both computes reported", Duration::from_secs(10), || async {
        scheduler.list_host_states(&ctx()).await.ok().filter(|h| h.len() == 2)
    })
    .await;
    let spread = schedule_echoes(&scheduler, &compute, 8).await;
    assert_eq!(spread.len(), 2, "tasks use both hosts: {spread:?}");
    refusals_and_kill(&scheduler, &compute).await;
    nova_core::launcher::stop_all(running).await;
}
