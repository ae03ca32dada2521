//! Work queues: submitted tasks wait in the broker (not on a busy host),
//! at most `max_tasks` run at once per host, a host started later takes
//! its share of the backlog, and a placed task at capacity waits instead
//! of failing. Once on RabbitMQ, once on memory://, with PostgreSQL. The
//! work waits in a queue of its own: the bare topic answers at once
//! however busy the slots are.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use nova_core::{
    db::{services::ServiceRecords, Database},
    ManagerHandle, RunningService, Service,
};
use nova_rpc::{transport::Transport, RequestContext, RpcClient, Target};
use nova_services::compute::{
    commands::Commands,
    tasks::{TaskStore, MIGRATIONS},
    ComputeClient, ComputeManager, TaskInfo, TaskStatus,
};
use nova_tests::{eventually, Bus, Kind, Proc, TempDir, TestDb, TestVhost};

async fn database(db: &TestDb) -> Database {
    let database = Database::connect(&db.url).await.unwrap();
    let mut migrations = nova_core::db::services::MIGRATIONS.to_vec();
    migrations.extend_from_slice(MIGRATIONS);
    database.migrate(&migrations).await.unwrap();
    database
}

/// A compute host serving `submit_task` from its work queue (`compute_work`).
async fn compute(t: &Arc<dyn Transport>, db: &Database, host: &str, max_tasks: usize) -> RunningService {
    let rpc = RpcClient::new(t.clone(), Target::new("scheduler"));
    let commands = Commands::parse(vec![("sleep".into(), "/bin/sleep".into())]).unwrap();
    let m = Arc::new(ComputeManager::new(host, commands, max_tasks, 60.0, 1, db.clone(), rpc));
    let work = m.work_queue();
    Service::create(t.clone(), ManagerHandle::new(m).with_work_queue(work))
        .binary("nova-compute")
        .host(host)
        .records(ServiceRecords::new(db.clone()))
        .periodic_fuzzy_delay(Duration::ZERO)
        .start()
        .await
        .unwrap()
}

/// The most tasks that ran at once on `host`, from their start and end times.
fn most_at_once(tasks: &[TaskInfo], host: &str) -> usize {
    let mut events: Vec<(NaiveDateTime, i32)> = Vec::new();
    for t in tasks.iter().filter(|t| t.host == host) {
        events.push((t.started_at.expect("started"), 1));
        events.push((t.finished_at.expect("finished"), -1));
    }
    // An end sorts before a start at the same instant.
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

async fn backlog_stays_in_the_broker(kind: Kind) {
    let bus = Bus::new(kind);
    let t = bus.transport().await;
    let db = TestDb::postgres();
    let database = database(&db).await;
    let store = TaskStore::new(database.clone());
    let first = compute(&t, &database, "w1", 2).await;
    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute_work")));
    let ctx = RequestContext::new();
    for i in 0..10 {
        submit.submit_task(&ctx, "sleep".into(), vec!["1".into()], format!("t{i}"), None, None).await.unwrap();
    }
    // Two run; the other eight wait in the shared queue, not on the host.
    let stats = eventually("eight tasks wait in the broker", Duration::from_secs(30), || async {
        let s = t.queue_stats(&["compute_work".into()]).await.unwrap();
        s.into_iter().find(|q| q.queue == "compute_work" && q.messages == 8)
    })
    .await;
    assert_eq!(stats.consumers, if kind == Kind::Memory { 1 } else { 0 }, "{stats:?}");
    // Halfway, a second host joins and takes its share of the backlog.
    eventually("four tasks succeeded", Duration::from_secs(60), || async {
        let done = store.list(None, Some(TaskStatus::Succeeded)).await.unwrap();
        (done.len() >= 4).then_some(())
    })
    .await;
    let second = compute(&t, &database, "w2", 2).await;
    let all = eventually("all ten tasks succeeded", Duration::from_secs(60), || async {
        let all = store.list(None, None).await.unwrap();
        (all.len() == 10 && all.iter().all(|t| t.status == TaskStatus::Succeeded)).then_some(all)
    })
    .await;
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for task in &all {
        *per_host.entry(task.host.as_str()).or_default() += 1;
    }
    assert!(per_host.get("w2").copied().unwrap_or(0) >= 2, "the late host took its share: {per_host:?}");
    for host in ["w1", "w2"] {
        assert!(most_at_once(&all, host) <= 2, "{host} ran more than max_tasks at once: {all:#?}");
    }
    assert_eq!(most_at_once(&all, "w1"), 2, "w1 ran two at once while the backlog lasted");
    let drained = t.queue_stats(&["compute_work".into()]).await.unwrap();
    assert_eq!(drained.first().map(|q| q.messages), Some(0), "{drained:?}");
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_backlog_stays_in_the_broker() {
    backlog_stays_in_the_broker(Kind::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backlog_stays_in_the_broker() {
    backlog_stays_in_the_broker(Kind::Memory).await;
}

/// A task placed on a host at capacity waits there (queued), then runs;
/// a queued task can be killed before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_task_at_capacity_waits() {
    let bus = Bus::new(Kind::Memory);
    let t = bus.transport().await;
    let db = TestDb::postgres();
    let database = database(&db).await;
    let host = compute(&t, &database, "p1", 1).await;
    let c = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute"))).with_server("p1");
    let ctx = RequestContext::new();
    let outcome = c.run_task(&ctx, "sleep".into(), vec!["1".into()], "first".into(), None, None).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    c.run_task(&ctx, "sleep".into(), vec!["0".into()], "second".into(), None, None).await.unwrap();
    c.run_task(&ctx, "sleep".into(), vec!["0".into()], "third".into(), None, None).await.unwrap();
    for id in ["second", "third"] {
        let queued = eventually("the task is queued", Duration::from_secs(10), || async {
            c.get_task(&ctx, id.into()).await.ok().filter(|t| t.status == TaskStatus::Queued)
        })
        .await;
        assert_eq!(queued.host, "p1");
    }
    let killed = c.kill_task(&ctx, "third".into()).await.unwrap();
    assert_eq!(killed.status, TaskStatus::Killed, "{killed:?}");
    let second = eventually("the second task ran once the first ended", Duration::from_secs(30), || async {
        c.get_task(&ctx, "second".into()).await.ok().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!(second.status, TaskStatus::Succeeded, "{second:?}");
    let first = c.get_task(&ctx, "first".into()).await.unwrap();
    assert!(second.started_at >= first.finished_at, "{first:?} {second:?}");
    let third = c.get_task(&ctx, "third".into()).await.unwrap();
    assert_eq!((third.status, third.started_at), (TaskStatus::Killed, None), "{third:?}");
    host.stop().await;
}

/// Wait until `consumers` servers consume the `compute_work` work queue.
async fn work_queue_consumed(t: &Arc<dyn Transport>, consumers: u32) {
    eventually("the work queue is consumed", Duration::from_secs(30), || async {
        let stats = t.queue_stats(&["compute_work".into()]).await.ok()?;
        stats.first().filter(|q| q.consumers >= consumers).map(|_| ())
    })
    .await;
}

/// At-least-once: a host SIGKILLed mid-task gives the task back; the other
/// host runs it, and it runs to completion once under its id (the killed
/// host's process dies with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_task_gives_it_back() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("alo");
    let marks = dir.path().join("completions");
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\nreport_interval = 0.5\nperiodic_fuzzy_delay = 0\nstate_path = {}\n\
             [database]\nconnection = {}\n\
             [compute]\nmax_tasks = 1\ntask_delivery = at_least_once\nallowed_commands = sh = /bin/sh -c\n",
            vhost.url(),
            dir.path().display(),
            db.url
        ),
    );
    let conf = conf.to_str().unwrap().to_owned();
    let spawn = |host: &str| Proc::spawn("nova-compute", &["--config-file", &conf, "--host", host], dir.path());
    let mut hosts = HashMap::from([("a1", spawn("a1")), ("a2", spawn("a2"))]);
    let t = nova_rpc::transport::connect(nova_rpc::transport::TransportOptions::new(vhost.url())).await.unwrap();
    let database = database(&db).await;
    let store = TaskStore::new(database.clone());
    let records = ServiceRecords::new(database);
    eventually("both computes are up", Duration::from_secs(30), || async {
        (records.list(Some("compute")).await.ok()?.len() == 2).then_some(())
    })
    .await;
    // The record is written before the servers start: wait until both
    // consume the work queue (declared, bound and consumed: a queue that is
    // declared but not yet bound would refuse the mandatory cast).
    work_queue_consumed(&t, 2).await;
    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute_work")).with_mandatory(true));
    let script = format!("sleep 2; echo done >> {}", marks.display());
    submit.submit_task(&RequestContext::new(), "sh".into(), vec![script], "once".into(), None, None).await.unwrap();
    let first = eventually("the task runs", Duration::from_secs(30), || async {
        store.get("once").await.ok().flatten().filter(|t| t.status == TaskStatus::Running)
    })
    .await;
    let mut victim = hosts.remove(first.host.as_str()).expect("a known host");
    victim.signal("KILL");
    victim.wait_exit(Duration::from_secs(10)).expect("the host died");
    let done = eventually("the other host ran the task", Duration::from_secs(60), || async {
        store.get("once").await.ok().flatten().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_ne!(done.host, first.host, "{done:?}");
    let completions = std::fs::read_to_string(&marks).unwrap_or_default();
    assert_eq!(completions.lines().count(), 1, "ran to completion once: {completions:?}");
    let left = t.queue_stats(&["compute_work".into()]).await.unwrap();
    assert_eq!(left.first().map(|q| q.messages), Some(0), "{left:?}");
    // The same from the shell: depth and consumers of the topic, its work queue and a host's queue.
    let host = done.host.clone();
    let out = std::process::Command::new(nova_tests::bin_path("nova-rpc"))
        .args(["--transport-url", &vhost.url(), "queues", "compute", "--server", &host, "--server", "gone"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let row = |q: &str| stdout.lines().find(|l| l.split_whitespace().next() == Some(q)).map(str::to_owned);
    let compute = row("compute_work").unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(compute.split_whitespace().nth(1), Some("0"), "{stdout}");
    assert!(row("compute").is_some(), "{stdout}");
    let own = row(&format!("compute.{host}")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(own.split_whitespace().nth(2), Some("1"), "the host consumes its own queue: {stdout}");
    assert!(stderr.contains("compute.gone: no such queue"), "{stderr}");
}

/// SIGHUP reloads `[compute] allowed_commands`: a running task keeps the
/// argv it started with, new tasks get the new list, and a versioned name
/// picks its version (a bare name the highest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_mid_task_changes_new_tasks_only() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("reload");
    let gate = dir.path().join("gate");
    let v1 = dir.write("v1.sh", &format!("while [ ! -e {} ]; do sleep 0.05; done; echo v1\n", gate.display()));
    let v2 = dir.write("v2.sh", "echo v2\n");
    let config = |commands: &str| {
        format!(
            "[DEFAULT]\ntransport_url = {}\nreport_interval = 0.5\nperiodic_fuzzy_delay = 0\nstate_path = {}\n\
             [database]\nconnection = {}\n[compute]\nmax_tasks = 4\nallowed_commands = {commands}\n",
            vhost.url(),
            dir.path().display(),
            db.url
        )
    };
    let conf = dir.write("nova.conf", &config(&format!("job = /bin/sh {}", v1.display())));
    let compute = Proc::spawn("nova-compute", &["--config-file", conf.to_str().unwrap(), "--host", "r1"], dir.path());
    let t = nova_rpc::transport::connect(nova_rpc::transport::TransportOptions::new(vhost.url())).await.unwrap();
    let database = database(&db).await;
    let store = TaskStore::new(database.clone());
    let records = ServiceRecords::new(database);
    eventually("the compute is up", Duration::from_secs(30), || async {
        (records.list(Some("compute")).await.ok()?.len() == 1).then_some(())
    })
    .await;
    // The record is written before the servers start: wait until it
    // consumes the work queue too.
    work_queue_consumed(&t, 1).await;
    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute_work")).with_mandatory(true));
    let ctx = RequestContext::new();
    submit.submit_task(&ctx, "job".into(), vec![], "before".into(), None, None).await.unwrap();
    let running = eventually("the first task runs", Duration::from_secs(30), || async {
        store.get("before").await.ok().flatten().filter(|t| t.status == TaskStatus::Running)
    })
    .await;
    assert_eq!(running.argv, ["/bin/sh", v1.to_str().unwrap()]);

    let both = format!("job@1 = /bin/sh {}, job@2 = /bin/sh {}", v1.display(), v2.display());
    std::fs::write(&conf, config(&both)).unwrap();
    compute.signal("HUP");
    eventually("the allow-list is reloaded", Duration::from_secs(30), || async {
        compute.output().contains("allowed_commands reloaded").then_some(())
    })
    .await;
    submit.submit_task(&ctx, "job".into(), vec![], "after".into(), None, None).await.unwrap();
    submit.submit_task(&ctx, "job@1".into(), vec![], "pinned".into(), None, None).await.unwrap();
    let after = eventually("the new task ran", Duration::from_secs(30), || async {
        store.get("after").await.ok().flatten().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!((after.name.as_str(), after.stdout.as_str()), ("job@2", "v2\n"), "{after:?}");
    assert_eq!(after.argv, ["/bin/sh", v2.to_str().unwrap()]);
    std::fs::write(&gate, "").unwrap();
    let before = eventually("the first task ends", Duration::from_secs(30), || async {
        store.get("before").await.ok().flatten().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!((before.stdout.as_str(), before.argv.clone()), ("v1\n", running.argv.clone()), "{before:?}");
    let pinned = eventually("the pinned task ran", Duration::from_secs(30), || async {
        store.get("pinned").await.ok().flatten().filter(|t| t.status.is_final())
    })
    .await;
    assert_eq!((pinned.name.as_str(), pinned.stdout.as_str()), ("job@1", "v1\n"), "{pinned:?}");
}

/// Over AMQP the oldest message's age comes from RabbitMQ's management API
/// (the `timestamp` nova-rs sets on every message); depth and consumers
/// from the broker itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_messages_age_from_the_management_api() {
    let broker = nova_tests::broker::PrivateBroker::start_with_management();
    let api = format!("http://guest:guest@127.0.0.1:{}", broker.management_port.unwrap());
    let url = broker.url();
    let t = nova_rpc::transport::connect(nova_rpc::transport::TransportOptions::new(url.clone())).await.unwrap();
    // A work listener declares the queue and takes nothing.
    let _queue = t
        .listen(nova_rpc::transport::ListenSpec {
            exchange: t.options().control_exchange.clone(),
            topic: "aged".into(),
            server: "a1".into(),
            prefetch: 1,
            durable: false,
            max_deliveries: None,
            queues: nova_rpc::transport::Queues::Work,
        })
        .await
        .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("aged"));
    for n in 0..3 {
        client.cast(&RequestContext::new(), "job", serde_json::json!({ "n": n })).await.unwrap();
    }
    let aged = eventually("the head has waited a second", Duration::from_secs(60), || async {
        let mut stats = t.queue_stats(&["aged".into()]).await.ok()?;
        nova_gateway::queues::fill(&mut stats, &api, &url).await.ok()?;
        stats.into_iter().find(|q| q.oldest_age_seconds.is_some_and(|a| a >= 1.0))
    })
    .await;
    assert_eq!((aged.messages, aged.consumers), (3, 0), "{aged:?}");
    assert!(aged.oldest_age_seconds.unwrap() < 120.0, "{aged:?}");
    let mut missing = vec![nova_rpc::transport::QueueStats {
        queue: "nope".into(),
        messages: 1,
        consumers: 0,
        oldest_age_seconds: None,
    }];
    nova_gateway::queues::fill(&mut missing, &api, &url).await.unwrap();
    assert_eq!(missing[0].oldest_age_seconds, None);
    let refused = nova_gateway::queues::fill(&mut missing, "http://127.0.0.1:1", &url).await;
    assert!(refused.is_err());
}

/// Every slot busy and tasks waiting: the bare `compute` topic still
/// answers at once; work an old client casts there is passed on to the
/// work queue; and a Python oslo client reaches the work queue by its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_topic_answers_while_every_slot_is_busy() {
    let (bus, dir) = (Bus::new(Kind::Rabbit), TempDir::new("bare"));
    let t = bus.transport().await;
    let db = TestDb::postgres();
    let database = database(&db).await;
    let store = TaskStore::new(database.clone());
    let host = compute(&t, &database, "b1", 1).await;
    let submit = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute_work")).with_mandatory(true));
    let ctx = RequestContext::new();
    for i in 0..3 {
        submit.submit_task(&ctx, "sleep".into(), vec!["3".into()], format!("busy-{i}"), None, None).await.unwrap();
    }
    eventually("one runs, two wait in the work queue", Duration::from_secs(30), || async {
        let waiting = t.queue_stats(&["compute_work".into()]).await.ok()?.first()?.messages;
        let running = store.list(None, Some(TaskStatus::Running)).await.ok()?.len();
        (waiting == 2 && running == 1).then_some(())
    })
    .await;
    // A generous bound for a slow machine: the point is that it does not
    // wait for a slot (the first task alone holds it for 3 s, the queue 9 s).
    let ping = RpcClient::new(t.clone(), Target::new("compute").with_namespace("baseapi").with_version("1.1"))
        .with_timeout(Duration::from_secs(2));
    let asked = std::time::Instant::now();
    let pong = ping.call(&ctx, "ping", serde_json::json!({"arg": "hello"})).await.unwrap();
    assert_eq!(pong["arg"], "hello");
    let list =
        ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute")).with_timeout(Duration::from_secs(2)));
    assert_eq!(list.list_tasks(&ctx).await.unwrap().len(), 1, "the one it runs");
    assert!(asked.elapsed() < Duration::from_secs(4), "answered while busy, in {:?}", asked.elapsed());
    // An old client's submit_task on the bare topic waits its turn in the work queue.
    let old = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute")).with_mandatory(true));
    old.submit_task(&ctx, "sleep".into(), vec!["0".into()], "old-client".into(), None, None).await.unwrap();
    eventually("passed on to the work queue", Duration::from_secs(30), || async {
        let waiting = t.queue_stats(&["compute_work".into()]).await.ok()?.first()?.messages;
        (waiting >= 2).then_some(())
    })
    .await;
    // A Python oslo client casts to the work topic.
    let mut py = nova_tests::interop::PyPeer::client(&bus.url, &bus.exchange, &[], dir.path());
    let sent = py.request(serde_json::json!({"op": "cast", "topic": "compute_work", "method": "submit_task",
        "version": "1.1", "args": {"name": "sleep", "args": ["0"], "task_id": "from-python"}}));
    assert_eq!(sent, serde_json::json!({"ok": null}), "{}", py.stderr());
    let all = eventually("every task ran, one at a time", Duration::from_secs(90), || async {
        let all = store.list(None, None).await.ok()?;
        (all.len() == 5 && all.iter().all(|t| t.status == TaskStatus::Succeeded)).then_some(all)
    })
    .await;
    assert_eq!(most_at_once(&all, "b1"), 1, "{all:#?}");
    host.stop().await;
}

/// A compute on RabbitMQ holds two connections, as the broker counts
/// them: one it consumes on (its queues, its work queue, its reply queue),
/// one it publishes on. Its channels are counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_holds_two_connections() {
    let vhost = TestVhost::new();
    let db = TestDb::postgres();
    let dir = TempDir::new("conns");
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\nreport_interval = 0.5\nstate_path = {}\n[database]\nconnection = {}\n",
            vhost.url(),
            dir.path().display(),
            db.url
        ),
    );
    let _compute = Proc::spawn("nova-compute", &["--config-file", conf.to_str().unwrap(), "--host", "n1"], dir.path());
    let t = nova_rpc::transport::connect(nova_rpc::transport::TransportOptions::new(vhost.url())).await.unwrap();
    work_queue_consumed(&t, 1).await;
    // A call makes the compute answer (publishing) and its capacity report
    // goes out; neither opens a connection of its own.
    let ping = RpcClient::new(
        t.clone(),
        Target::new("compute").with_server("n1").with_namespace("baseapi").with_version("1.1"),
    );
    ping.call(&RequestContext::new(), "ping", serde_json::json!({"arg": 1})).await.unwrap();
    t.close().await;
    let listed = |what: &str, fields: &[&str]| -> Vec<serde_json::Value> {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", what, "--formatter", "json"])
            .args(fields)
            .output()
            .expect("rabbitmqctl");
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        all.into_iter().filter(|c| c["vhost"] == vhost.name.as_str()).collect()
    };
    let conns = eventually("only the compute's connections are left", Duration::from_secs(30), || async {
        let conns = listed("list_connections", &["vhost", "client_properties"]);
        // The connection's name (a client property) says which program opened it.
        conns.iter().all(|c| c["client_properties"].to_string().contains("nova-compute:")).then_some(conns)
    })
    .await;
    assert_eq!(conns.len(), 2, "one to consume, one to publish: {conns:#?}");
    let channels = listed("list_channels", &["vhost", "name", "consumer_count"]);
    println!("nova-compute: {} connections, {} channels: {channels:#?}", conns.len(), channels.len());
    assert!(channels.len() <= 6, "{channels:#?}");
}
