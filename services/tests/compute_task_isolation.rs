//! What a task may do is bounded where it starts: a caller's arguments
//! follow the command's rule (none, any, a pattern, after `--`), and a task
//! runs as `[compute] task_user` under `[compute] task_rlimits`.

#![allow(unreachable_pub)]

use std::sync::Arc;

use nova_core::testing::TestBus;
use nova_rpc::{RequestContext, RpcError, Target};
use nova_services::compute::{
    commands::Commands, tasks::TaskLimits, ComputeClient, ComputeManager, TaskInfo, TaskStatus,
};

async fn compute(bus: &TestBus, commands: Commands, limits: TaskLimits) -> ComputeClient {
    bus.database().migrate(nova_services::compute::tasks::MIGRATIONS).await.unwrap();
    let m =
        ComputeManager::new("c1", commands, 4, 60.0, 1, bus.database().clone(), bus.client(Target::new("scheduler")))
            .with_task_limits(limits);
    ComputeClient::new(bus.serve("compute", "c1", Arc::new(m)).await).with_server("c1")
}

/// Run a task (`run_task` is a cast) and wait for it to end.
async fn run(c: &ComputeClient, name: &str, args: &[&str], id: &str) -> TaskInfo {
    let ctx = RequestContext::new();
    let args = args.iter().map(|a| a.to_string()).collect();
    c.run_task(&ctx, name.into(), args, id.into(), None, None).await.unwrap();
    c.wait_task(&ctx, id.into(), Some(30.0)).await.unwrap()
}

/// The class of the error a refused task was recorded with.
fn refused(t: &TaskInfo) -> bool {
    t.status == TaskStatus::Failed && t.error.as_deref().is_some_and(|e| e.contains("[compute] command_args"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_follow_each_commands_rule() {
    let bus = TestBus::new().await;
    let commands = Commands::parse(vec![
        ("cat".into(), "/bin/cat /etc/hostname".into()),
        ("echo".into(), "/bin/echo".into()),
        ("say".into(), "/bin/echo said".into()),
    ])
    .unwrap()
    .with_arg_rules("cat: none; say: -- regex [a-z]+")
    .unwrap();
    let c = compute(&bus, commands, TaskLimits::default()).await;
    // Once, extra arguments made `cat /safe.txt` read any file.
    let t = run(&c, "cat", &["/proc/self/environ"], "t1").await;
    assert!(refused(&t) && t.stdout.is_empty(), "{t:?}");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(run(&c, "cat", &[], "t2").await.stdout, hostname);
    let t = run(&c, "say", &["hello", "-n"], "t3").await;
    assert!(refused(&t) && t.error.as_deref().unwrap_or_default().contains("argument 2"), "{t:?}");
    let said = run(&c, "say", &["hello"], "t4").await;
    assert_eq!(said.argv, ["/bin/echo", "said", "--", "hello"], "-- goes before the caller's arguments");
    assert_eq!(run(&c, "echo", &["-n", "anything"], "t5").await.stdout, "anything", "any is any");
    // Called rather than cast, the refusal is the caller's error.
    let call = bus.client(Target::new("compute").with_server("c1"));
    let args = serde_json::json!({"name": "cat", "args": ["/etc/shadow"], "task_id": "t6"});
    match call.call(&RequestContext::new(), "run_task", args).await {
        Err(RpcError::Remote(f)) => assert_eq!(f.class, "ArgumentsNotAllowed"),
        other => panic!("{other:?}"),
    }
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_as_their_user_under_their_limits() {
    assert!(nix::unistd::Uid::effective().is_root(), "this test starts tasks as another user: run it as root");
    let bus = TestBus::new().await;
    let commands = Commands::parse(vec![("sh".into(), "/bin/sh -c".into())]).unwrap();
    let limits = TaskLimits {
        user: TaskLimits::user_from("nobody").unwrap(),
        rlimits: TaskLimits::rlimits_from("nofile=64, fsize=4096, cpu=30").unwrap(),
        ..TaskLimits::default()
    };
    let (uid, gid) = limits.user.unwrap();
    let c = compute(&bus, commands, limits).await;
    let t = run(&c, "sh", &["id -u; id -g; id -G; ulimit -n; ulimit -f; ulimit -t"], "who").await;
    assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    // ulimit -f counts 512-byte blocks.
    assert_eq!(t.stdout, format!("{uid}\n{gid}\n{gid}\n64\n8\n30\n"), "{t:?}");
    // A file larger than fsize is cut where the limit says.
    let t = run(
        &c,
        "sh",
        &["head -c 100000 /dev/zero > /tmp/nova-fsize-$$; wc -c < /tmp/nova-fsize-$$; rm -f /tmp/nova-fsize-$$"],
        "big",
    )
    .await;
    assert!(t.stdout.trim() == "4096", "{t:?}");
    // Output is capped, and the cut is marked.
    let t = run(&c, "sh", &["head -c 100000 /dev/zero | tr '\\0' x"], "loud").await;
    assert_eq!((t.stdout.len(), t.stdout_bytes, t.stdout_truncated), (64 * 1024, 100_000, true), "{}", t.stdout_bytes);
    assert!(!t.stderr_truncated);
    let e = TaskLimits::rlimits_from("rss=1, bogus=2").unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    assert!(TaskLimits::user_from("no-such-user-here").is_err());
    bus.stop().await;
}

/// Whether process `pid` is gone (or only a zombie nobody reaped).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) == Some("Z"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_leaves_its_tasks_group_is_killed_too() {
    let bus = TestBus::new().await;
    let commands = Commands::parse(vec![("sh".into(), "/bin/sh -c".into())]).unwrap();
    let c = compute(&bus, commands, TaskLimits::default()).await;
    // A grandchild in a session of its own (out of the task's group), whose
    // parent exits with the task: compute adopts it, and kills it.
    let t = run(&c, "sh", &["setsid sleep 300 & echo $!"], "escape").await;
    assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    let pid: i32 = t.stdout.trim().parse().unwrap_or_else(|e| panic!("{e}: {t:?}"));
    nova_core::testing::eventually("the escaped grandchild is killed", std::time::Duration::from_secs(30), || async {
        gone(pid).then_some(())
    })
    .await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_s_cgroup_ends_every_process_it_started() {
    let cgroups = nova_services::compute::cgroup::TaskCgroups::detect()
        .expect("cgroup v2 must be mounted and writable here (this test runs as root)");
    let bus = TestBus::new().await;
    let commands = Commands::parse(vec![("sh".into(), "/bin/sh -c".into())]).unwrap();
    let limits = TaskLimits { cgroups: Some(Arc::new(cgroups)), ..TaskLimits::default() };
    let c = compute(&bus, commands, limits).await;
    // Out of the group, out of the session, and with nothing of the task's
    // environment: only the cgroup still knows it is the task's.
    let t = run(&c, "sh", &["grep -c nova-tasks /proc/self/cgroup; env -i setsid sleep 301 & echo $!"], "cg").await;
    assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    let mut lines = t.stdout.lines();
    assert_eq!(lines.next(), Some("1"), "the task ran in its cgroup: {t:?}");
    let pid: i32 = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("{t:?}"));
    nova_core::testing::eventually("the escaped process is killed", std::time::Duration::from_secs(30), || async {
        gone(pid).then_some(())
    })
    .await;
    bus.stop().await;
}
