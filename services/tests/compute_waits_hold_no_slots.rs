//! A wait for a task holds no request slot: a flood of `wait_task`s with an
//! hour's timeout leaves the host answering pings, reads and kills, and a
//! wait ends when its caller stops waiting, whatever timeout it asked for.

#![allow(unreachable_pub)]

use std::{sync::Arc, time::Duration};

use nova_core::testing::{eventually, TestBus};
use nova_rpc::{RequestContext, Target};
use nova_services::compute::{commands::Commands, ComputeClient, ComputeManager, TaskStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_waits_starves_nothing() {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::compute::tasks::MIGRATIONS).await.unwrap();
    let allowed = Commands::parse(vec![("sleep".into(), "/bin/sleep".into())]).unwrap();
    let m = Arc::new(ComputeManager::new(
        "c1",
        allowed,
        2,
        60.0,
        1,
        bus.database().clone(),
        bus.client(Target::new("scheduler")),
    ));
    let compute = ComputeClient::new(bus.serve("compute", "c1", m.clone()).await).with_server("c1");
    let ctx = RequestContext::new();
    compute.run_task(&ctx, "sleep".into(), vec!["300".into()], "long".into(), None, None).await.unwrap();
    // More waits than the host has request slots (64), each asking for an hour.
    let host = bus.client(Target::new("compute").with_server("c1"));
    for _ in 0..70 {
        host.cast(&ctx, "wait_task", json!({"task_id": "long", "timeout": 3600})).await.unwrap();
    }
    eventually("70 waits are waiting", Duration::from_secs(20), || async { (m.waiting() == 70).then_some(()) }).await;
    // The host still answers at once.
    let base = host.with_namespace("baseapi").with_version("1.1").with_timeout(Duration::from_secs(10));
    assert_eq!(base.call(&ctx, "ping", json!({"arg": 1})).await.unwrap()["arg"], 1);
    let task = compute.get_task(&ctx, "long".into()).await.unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    // A wait ends with its caller's patience, not with the hour it asked for.
    // It answers before its caller gives up, with the task still running.
    let impatient = ComputeClient::new(host.with_timeout(Duration::from_millis(800)));
    let started = std::time::Instant::now();
    let still = impatient.wait_task(&ctx, "long".into(), Some(3600.0)).await.unwrap();
    assert_eq!(still.status, TaskStatus::Running);
    assert!(started.elapsed() < Duration::from_millis(800), "answered within the caller's timeout");
    eventually("the impatient wait gave up too", Duration::from_secs(10), || async {
        (m.waiting() == 70).then_some(())
    })
    .await;
    // Killing the task ends every wait.
    let killed = compute.kill_task(&ctx, "long".into()).await.unwrap();
    assert!(killed.status.is_final() || killed.status == TaskStatus::Running, "{killed:?}");
    eventually("every wait has ended", Duration::from_secs(30), || async { (m.waiting() == 0).then_some(()) }).await;
    bus.stop().await;
}
