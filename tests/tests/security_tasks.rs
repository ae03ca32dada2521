//! Tasks cannot reach the service's secrets or outlive their compute: a
//! task starts with `[compute] task_env` for its whole environment, runs in
//! a process group of its own that kill, `task_timeout` and the end of its
//! leader stop as a whole, and a compute restarted after a crash kills
//! what the crashed one left behind.

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_core::testing::TestBus;
use nova_rpc::{transport, RequestContext, RpcClient, Target};
use nova_services::compute::{ComputeClient, ComputeManager, TaskInfo, TaskLimits, TaskStatus};
use nova_tests::{eventually, unique, Proc, TempDir, TestVhost};

fn ctx() -> RequestContext {
    RequestContext::new()
}

/// Processes whose command line contains `needle`.
fn pgrep(needle: &str) -> Vec<String> {
    // Anchored: the process itself, not a shell whose command line names
    // it (`sh -c "sleep A & sleep B"` matches `sleep A` before it forks).
    let anchored = format!("^{needle}$");
    let out = std::process::Command::new("pgrep").args(["-f", &anchored]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// A `sleep` argument nobody else uses, so `pgrep` finds only ours.
fn unique_sleep() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!("{}.{}", 300 + n % 100, n % 1_000_000)
}

/// A compute on a private memory bus running `sh`, `env` and `sleep` with `limits`.
async fn compute(limits: TaskLimits) -> (TestBus, ComputeClient) {
    let bus = TestBus::new().await;
    let mut migrations = nova_core::db::services::MIGRATIONS.to_vec();
    migrations.extend_from_slice(nova_services::compute::tasks::MIGRATIONS);
    bus.database().migrate(&migrations).await.unwrap();
    let allowed: HashMap<String, Vec<String>> = [("sh", "/bin/sh"), ("env", "/usr/bin/env"), ("sleep", "/bin/sleep")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
        .collect();
    let rpc = RpcClient::new(bus.transport(), Target::new("scheduler"));
    let m = ComputeManager::new("c1", allowed, 8, 60.0, 1, bus.database().clone(), rpc).with_task_limits(limits);
    let client = bus.serve("compute", "c1", Arc::new(m)).await;
    (bus, ComputeClient::new(client).with_server("c1"))
}

async fn run(c: &ComputeClient, name: &str, args: &[&str]) -> String {
    let id = unique("task");
    c.run_task(&ctx(), name.into(), args.iter().map(|a| a.to_string()).collect(), id.clone(), None, None)
        .await
        .unwrap();
    id
}

async fn ended(c: &ComputeClient, id: &str) -> TaskInfo {
    eventually("the task ends", Duration::from_secs(60), || async {
        c.wait_task(&ctx(), id.to_owned(), Some(5.0)).await.ok().filter(|t| t.status.is_final())
    })
    .await
}

fn limits(grace: u64, timeout: Option<u64>) -> TaskLimits {
    TaskLimits {
        env: TaskLimits::env_from("PATH, NOVA_TASK_VISIBLE=yes"),
        kill_grace: Duration::from_secs(grace),
        timeout: timeout.map(Duration::from_secs),
        ..TaskLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sees_only_its_own_environment() {
    // Secrets in the service's environment (as NOVA_TRANSPORT_URL would be;
    // these names leave the other tests of this binary alone).
    std::env::set_var("SERVICE_BROKER_URL", "rabbit://nova:brokersecret@rabbit:5672/");
    std::env::set_var("SERVICE_DB_PASSWORD", "dbsecret");
    let (bus, c) = compute(limits(1, None)).await;
    let t = ended(&c, &run(&c, "env", &[]).await).await;
    assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    assert!(!t.stdout.contains("brokersecret") && !t.stdout.contains("dbsecret"), "{}", t.stdout);
    assert!(!t.stdout.contains("SERVICE_"), "{}", t.stdout);
    assert!(t.stdout.contains("NOVA_TASK_VISIBLE=yes") && t.stdout.contains("PATH="), "{}", t.stdout);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ends_with_its_leader_and_kill_and_timeout_stop_the_group() {
    let (bus, c) = compute(limits(1, None)).await;
    // The leader exits; a background child holding stdout must not keep the task running.
    let left = unique_sleep();
    let t = ended(&c, &run(&c, "sh", &["-c", &format!("sleep {left} & echo hi")]).await).await;
    assert_eq!((t.status, t.stdout.as_str()), (TaskStatus::Succeeded, "hi\n"), "{t:?}");
    eventually("nothing of the task is left", Duration::from_secs(10), || async {
        pgrep(&format!("sleep {left}")).is_empty().then_some(())
    })
    .await;

    // kill_task stops the whole group, children included.
    let (a, b) = (unique_sleep(), unique_sleep());
    let id = run(&c, "sh", &["-c", &format!("sleep {a} & sleep {b}")]).await;
    eventually("the group runs", Duration::from_secs(10), || async {
        (!pgrep(&format!("sleep {a}")).is_empty() && !pgrep(&format!("sleep {b}")).is_empty()).then_some(())
    })
    .await;
    let killed = c.kill_task(&ctx(), id).await.unwrap();
    assert_eq!(killed.status, TaskStatus::Killed, "{killed:?}");
    assert!(pgrep(&format!("sleep {a}")).is_empty() && pgrep(&format!("sleep {b}")).is_empty(), "the group is gone");
    bus.stop().await;

    // task_timeout stops the group too.
    let (bus, c) = compute(limits(1, Some(1))).await;
    let (a, b) = (unique_sleep(), unique_sleep());
    let t = ended(&c, &run(&c, "sh", &["-c", &format!("sleep {a} & sleep {b}")]).await).await;
    assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
    assert!(t.error.as_deref().unwrap_or_default().contains("timed out"), "{t:?}");
    eventually("the timed-out group is gone", Duration::from_secs(10), || async {
        (pgrep(&format!("sleep {a}")).is_empty() && pgrep(&format!("sleep {b}")).is_empty()).then_some(())
    })
    .await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_compute_kills_what_a_crashed_one_left() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("orphans");
    let exchange = unique("nova");
    let url = vhost.url();
    let conf = dir.write(
        "nova.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {url}\ncontrol_exchange = {exchange}\nstate_path = {}\nperiodic_fuzzy_delay = 0\n\
             [compute]\nallowed_commands = sh = /bin/sh\n",
            dir.path().display()
        ),
    );
    let spawn = || Proc::spawn("nova-compute", &["--config-file", conf.to_str().unwrap(), "--host", "c1"], dir.path());
    let first = spawn();
    let t = transport::connect(transport::TransportOptions::new(url).with_control_exchange(exchange)).await.unwrap();
    let c = ComputeClient::new(RpcClient::new(t.clone(), Target::new("compute")).with_timeout(Duration::from_secs(5)))
        .with_server("c1");
    eventually("the compute serves", Duration::from_secs(60), || async { c.list_tasks(&ctx()).await.ok() }).await;
    let (a, b) = (unique_sleep(), unique_sleep());
    let id = run(&c, "sh", &["-c", &format!("sleep {a} & sleep {b}")]).await;
    eventually("the task runs", Duration::from_secs(10), || async {
        (!pgrep(&format!("sleep {a}")).is_empty() && !pgrep(&format!("sleep {b}")).is_empty()).then_some(())
    })
    .await;
    first.signal("KILL");
    drop(first);
    assert!(!pgrep(&format!("sleep {a}")).is_empty(), "SIGKILL leaves the task's processes behind");
    let _second = spawn();
    eventually("the restarted compute killed the orphans", Duration::from_secs(60), || async {
        (pgrep(&format!("sleep {a}")).is_empty() && pgrep(&format!("sleep {b}")).is_empty()).then_some(())
    })
    .await;
    let task = eventually("the task is failed", Duration::from_secs(30), || async {
        c.get_task(&ctx(), id.clone()).await.ok().filter(|t| t.status == TaskStatus::Failed)
    })
    .await;
    assert!(task.error.unwrap_or_default().contains("stopped while the task ran"));
    t.close().await;
}
