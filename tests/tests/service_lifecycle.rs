//! A service binary as a process, on RabbitMQ with PostgreSQL or SQLite:
//! ping it, watch its heartbeats, SIGKILL it and see it reported down,
//! restart it; SIGTERM with calls in flight; two processes racing for one
//! record.

use std::time::Duration;

use nova_core::db::{
    services::{is_up, ServiceRecords, MIGRATIONS},
    Database,
};
use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_services::api::compute::{ComputeClient, TaskStatus};
use nova_tests::{eventually, Proc, TempDir, TestDb, TestVhost};
use serde_json::json;

struct World {
    vhost: TestVhost,
    db: TestDb,
    dir: TempDir,
    conf: std::path::PathBuf,
    url: String,
    exchange: String,
}

impl World {
    fn new(db: &str) -> Self {
        nova_tests::init_logging();
        let vhost = TestVhost::new();
        let db = TestDb::of(db);
        let dir = TempDir::new("svc");
        let exchange = nova_tests::unique("nova");
        let url = vhost.url();
        let conf = dir.write(
            "nova.conf",
            &format!(
                "[DEFAULT]\ntransport_url = {url}\ncontrol_exchange = {exchange}\nreport_interval = 0.3\nservice_down_time = 2\n\
                 periodic_fuzzy_delay = 0\ngraceful_shutdown_timeout = 15\nstate_path = {}\n[database]\nconnection = {}\n\
                 [compute]\nmax_tasks = 8\n",
                dir.path().display(),
                db.url
            ),
        );
        Self { vhost, db, dir, conf, url, exchange }
    }

    fn spawn(&self, bin: &str, host: &str) -> Proc {
        Proc::spawn(bin, &["--config-file", self.conf.to_str().unwrap(), "--host", host], self.dir.path())
    }

    async fn client(&self, target: Target) -> RpcClient {
        let o = transport::TransportOptions::new(self.url.clone()).with_control_exchange(self.exchange.clone());
        RpcClient::new(transport::connect(o).await.unwrap(), target).with_timeout(Duration::from_secs(2))
    }

    async fn records(&self) -> ServiceRecords {
        let db = Database::connect(&self.db.url).await.unwrap();
        db.migrate(MIGRATIONS).await.unwrap();
        ServiceRecords::new(db)
    }
}

async fn lifecycle(db: &str) {
    let w = World::new(db);
    let mut p = w.spawn("nova-compute", "c1");
    let base = w.client(Target::new("compute").with_namespace("baseapi").with_version("1.1")).await;
    let pong = eventually("the service answers ping", Duration::from_secs(30), || async {
        base.call(&RequestContext::new(), "ping", json!({"arg": {"n": 1}})).await.ok()
    })
    .await;
    assert_eq!(pong, json!({"service": "nova-compute", "arg": {"n": 1}}));
    let d = base.call(&RequestContext::new(), "describe", json!({})).await.unwrap();
    let methods: Vec<&str> =
        d["endpoints"][0]["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(methods.contains(&"run_task") && methods.contains(&"get_task"), "{d}");
    let records = w.records().await;
    let first = eventually("report_count rises", Duration::from_secs(10), || async {
        records.get("c1", "nova-compute").await.unwrap().filter(|r| r.report_count >= 3)
    })
    .await;
    assert!(is_up(&first, Duration::from_secs(2), chrono::Utc::now().naive_utc()));
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(5)).expect("killed");
    eventually("the killed service is reported down", Duration::from_secs(6), || async {
        let r = records.get("c1", "nova-compute").await.unwrap()?;
        (!is_up(&r, Duration::from_secs(2), chrono::Utc::now().naive_utc())).then_some(())
    })
    .await;
    let _p2 = w.spawn("nova-compute", "c1");
    eventually("the restarted service is up again", Duration::from_secs(30), || async {
        let r = records.get("c1", "nova-compute").await.unwrap()?;
        (r.report_count > first.report_count + 2 && is_up(&r, Duration::from_secs(2), chrono::Utc::now().naive_utc()))
            .then_some(())
    })
    .await;
    assert_eq!(records.list(None).await.unwrap().len(), 1, "a restart reuses the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgresql() {
    lifecycle("postgresql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite() {
    lifecycle("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_call_in_flight() {
    let w = World::new("postgresql");
    let mut p = w.spawn("nova-compute", "c1");
    let compute = ComputeClient::new(w.client(Target::new("compute")).await.with_timeout(Duration::from_secs(20)));
    let ctx = RequestContext::new();
    eventually("compute is up", Duration::from_secs(30), || async { compute.list_tasks(&ctx).await.ok() }).await;
    for i in 0..6 {
        compute
            .with_server("c1")
            .run_task(&ctx, "sleep".into(), vec!["1".into()], format!("t{i}"), None, None)
            .await
            .unwrap();
    }
    // Let the tasks exist before waiting on them. The waits go to c1 itself:
    // on the bare topic (compute's work queue) they would wait for a slot
    // behind the tasks.
    eventually("the six tasks run", Duration::from_secs(10), || async {
        compute.with_server("c1").list_tasks(&ctx).await.ok().filter(|t| t.len() == 6)
    })
    .await;
    let waits: Vec<_> = (0..6)
        .map(|i| {
            let c = compute.with_server("c1");
            tokio::spawn(async move { c.wait_task(&RequestContext::new(), format!("t{i}"), Some(10.0)).await })
        })
        .collect();
    // The six waits are registered, sent and taken off the queue by c1.
    eventually("the waits are in flight", Duration::from_secs(10), || async {
        let sent = compute.rpc_client().pending_calls() == 6;
        (sent && nova_tests::rabbit_queue_depth(&w.vhost.name, "compute.c1") == Some(0)).then_some(())
    })
    .await;
    p.signal("TERM");
    for w in waits {
        let task = w.await.unwrap().expect("every call in flight is answered");
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    let status = p.wait_exit(Duration::from_secs(15)).expect("exits within graceful_shutdown_timeout");
    assert!(status.success(), "exit status {status:?}; log:\n{}", p.output());
}

async fn racing_starts(db: &str) {
    let w = World::new(db);
    let _a = w.spawn("nova-scheduler", "s1");
    let _b = w.spawn("nova-scheduler", "s1");
    let records = w.records().await;
    eventually("both processes report", Duration::from_secs(30), || async {
        records.get("s1", "nova-scheduler").await.ok().flatten().filter(|r| r.report_count >= 4)
    })
    .await;
    let all = records.list(None).await.unwrap();
    assert_eq!(all.len(), 1, "two processes starting the same host/binary leave one record: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_leave_one_record_postgresql() {
    racing_starts("postgresql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_leave_one_record_sqlite() {
    racing_starts("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_and_applies_the_log_level() {
    let w = World::new("sqlite");
    let p = w.spawn("nova-compute", "c1");
    let base = w.client(Target::new("compute").with_namespace("baseapi").with_version("1.1")).await;
    let ctx = RequestContext::new();
    eventually("compute is up", Duration::from_secs(30), || async {
        base.call(&ctx, "ping", json!({"arg": 1})).await.ok()
    })
    .await;
    let level = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let debug = |l: &str| l.split(',').any(|d| d == "debug");
    assert!(!debug(&level(base.call(&ctx, "get_log_level", json!({})).await.unwrap())));

    // Turn debug on in the file, SIGHUP: applied without a restart.
    let text = std::fs::read_to_string(&w.conf).unwrap().replace("[DEFAULT]\n", "[DEFAULT]\ndebug = true\n");
    std::fs::write(&w.conf, text).unwrap();
    p.signal("HUP");
    eventually("the reload is applied", Duration::from_secs(10), || async {
        let l = level(base.call(&ctx, "get_log_level", json!({})).await.ok()?);
        debug(&l).then_some(())
    })
    .await;
    assert!(p.output().contains("configuration reloaded"), "{}", p.output());

    // A bad file on SIGHUP is refused and the old settings stay.
    let text = std::fs::read_to_string(&w.conf).unwrap().replace("debug = true", "debug = maybe");
    std::fs::write(&w.conf, text).unwrap();
    p.signal("HUP");
    eventually("the bad reload is refused", Duration::from_secs(10), || async {
        p.output().contains("configuration reload failed; keeping the old one").then_some(())
    })
    .await;
    assert!(debug(&level(base.call(&ctx, "get_log_level", json!({})).await.unwrap())));
    assert_eq!(base.call(&ctx, "ping", json!({"arg": 2})).await.unwrap()["arg"], 2, "still serving");
}

/// Many first connections to a new SQLite file at once (processes starting
/// together): every one gets in, none sees "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_connects_to_a_new_sqlite_file() {
    for round in 0..20 {
        let dir = TempDir::new("sqlite-race");
        let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
        let connects: Vec<_> = (0..12)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let db = Database::connect(&url).await?;
                    db.migrate(MIGRATIONS).await
                })
            })
            .collect();
        for c in connects {
            c.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
