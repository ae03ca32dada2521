//! A database outage, on a PostgreSQL cluster of the test's own: while it
//! is down the service keeps serving RPC, its report loop says so once,
//! and once it is back the loop says so once and reports again.

use std::time::Duration;

use nova_core::db::{services::ServiceRecords, Database};
use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_tests::{eventually, postgres::PrivatePostgres, unique, Proc, TempDir, TestVhost};
use serde_json::json;

async fn report_count(db_url: &str) -> Option<i64> {
    let records = ServiceRecords::new(Database::connect(db_url).await.ok()?);
    let all = records.list(Some("scheduler")).await.ok()?;
    all.first().map(|r| r.report_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_is_served_through_a_database_outage() {
    let pg = PrivatePostgres::start();
    let vhost = TestVhost::new();
    let dir = TempDir::new("dbout");
    let exchange = unique("nova");
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {}\ncontrol_exchange = {exchange}\nreport_interval = 0.3\nperiodic_fuzzy_delay = 0\n\
             [database]\nconnection = {}\n",
            vhost.url(),
            pg.url()
        ),
    );
    let mut svc = Proc::spawn("nova-scheduler", &["--config-file", conf.to_str().unwrap(), "--host", "s1"], dir.path());
    let t = transport::connect(transport::TransportOptions::new(vhost.url()).with_control_exchange(exchange.clone()))
        .await
        .unwrap();
    let ping = RpcClient::new(t, Target::new("scheduler").with_namespace("baseapi").with_version("1.1"))
        .with_timeout(Duration::from_secs(3));
    let before = eventually("the service reports", Duration::from_secs(30), || async {
        report_count(&pg.url()).await.filter(|n| *n >= 2)
    })
    .await;

    pg.stop_server();
    let lost = "Lost connection to the database";
    let down = std::time::Instant::now();
    let mut i = 0;
    // Serve pings all through the outage: until the loop noticed it (its
    // database calls time out after a few seconds), and for 3 s more.
    while !svc.output().contains(lost) || down.elapsed() < Duration::from_secs(3) {
        assert!(down.elapsed() < Duration::from_secs(30), "the outage was never logged:\n{}", svc.output());
        let r = ping.call(&RequestContext::new(), "ping", json!({"arg": i})).await;
        assert_eq!(r.unwrap()["arg"], i, "RPC is served while the database is down");
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(svc.output().matches(lost).count(), 1, "the outage is logged once:\n{}", svc.output());

    pg.start_server();
    eventually("the report loop recovers", Duration::from_secs(30), || async {
        svc.output().contains("Recovered from being unable to report status").then_some(())
    })
    .await;
    let after = eventually("reports resume", Duration::from_secs(30), || async {
        report_count(&pg.url()).await.filter(|n| *n > before + 2)
    })
    .await;
    assert!(after > before);
    let out = svc.output();
    assert_eq!(out.matches(lost).count(), 1, "{out}");
    assert_eq!(out.matches("Recovered from being unable").count(), 1, "recovery is logged once:\n{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(svc.wait_exit(Duration::from_millis(10)).is_none(), "the service is still running");
}
