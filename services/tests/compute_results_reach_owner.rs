//! A finished task's result reaches its owner both ways: cast to the
//! `notify` target, and POSTed to `callback_url`; a callback that keeps
//! failing is retried a bounded number of times and the failure is
//! recorded on the task.

#![allow(unreachable_pub)]

use std::{sync::Arc, time::Duration};

use nova_core::testing::{eventually, TestBus};
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    RequestContext, RpcError, RpcServer, Target, Version,
};
use nova_services::compute::{commands::Commands, ComputeClient, ComputeManager, NotifyTarget, TaskInfo, TaskStatus};
use serde::Deserialize;
use tokio::sync::mpsc;

#[derive(Deserialize)]
struct Done {
    task: TaskInfo,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_the_owner_by_cast_and_by_callback() {
    let bus = TestBus::new().await;
    bus.database().migrate(nova_services::compute::tasks::MIGRATIONS).await.unwrap();
    let allowed = Commands::parse(vec![("echo".into(), "/bin/echo".into())]).unwrap();
    // The owner's HTTP endpoint is on loopback: allowed by name.
    let callbacks = nova_services::outbound::HttpClient::guarded(&["127.0.0.1".to_owned()], None).unwrap();
    let m =
        ComputeManager::new("c1", allowed, 4, 60.0, 2, bus.database().clone(), bus.client(Target::new("scheduler")))
            .with_callbacks(callbacks);
    let compute = ComputeClient::new(bus.serve("compute", "c1", Arc::new(m)).await).with_server("c1");

    // The owner: a response queue of its own (topic `owner`).
    let (tx, mut done) = mpsc::unbounded_channel();
    let api = Router::new(Version::new(1, 0)).method("task_done", move |_ctx: RequestContext, d: Done| {
        let _ = tx.send(d.task);
        async { Ok::<_, RpcError>(()) }
    });
    let owner =
        RpcServer::new(bus.transport(), Target::new("owner").with_server("o1"), Dispatcher::new(vec![Arc::new(api)]))
            .start()
            .await
            .unwrap();
    let (port, posted) = nova_core::testing::http_receiver();
    let notify = NotifyTarget { topic: "owner".into(), method: "task_done".into(), server: None };
    let ctx = RequestContext::new();
    let url = format!("http://127.0.0.1:{port}/done");
    compute.run_task(&ctx, "echo".into(), vec!["result".into()], "r1".into(), Some(notify), Some(url)).await.unwrap();

    let cast = tokio::time::timeout(Duration::from_secs(10), done.recv()).await.expect("notified").unwrap();
    assert_eq!((cast.task_id.as_str(), cast.status, cast.stdout.as_str()), ("r1", TaskStatus::Succeeded, "result\n"));
    let nova_core::testing::HttpRequest { path, body, .. } =
        tokio::task::spawn_blocking(move || posted.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("POSTed");
    assert_eq!(path, "/done");
    let posted: TaskInfo = serde_json::from_slice(&body).unwrap();
    assert_eq!(posted, cast, "the same JSON both ways");

    // A callback nobody answers: tried twice, then recorded on the task.
    let dead = format!("http://127.0.0.1:{}/gone", nova_tests_free_port());
    compute.run_task(&ctx, "echo".into(), vec![], "r2".into(), None, Some(dead)).await.unwrap();
    // run_task is a cast: the task may not exist for a moment.
    let task = eventually("the callback failure is recorded", Duration::from_secs(30), || async {
        compute.get_task(&ctx, "r2".into()).await.ok().filter(|t| t.callback_error.is_some())
    })
    .await;
    assert!(task.callback_error.as_deref().unwrap_or_default().contains("after 2 attempt(s)"), "{task:?}");
    owner.stop(Duration::from_secs(5)).await;
    bus.stop().await;
}

/// A port nothing listens on.
fn nova_tests_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}
