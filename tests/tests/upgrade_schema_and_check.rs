//! The schema across releases, and `nova-manage upgrade check`:
//! - `nova-manage db version` / `db sync` report and apply the migrations;
//! - with `[database] auto_migrate = false`, a service whose schema lacks a
//!   migration refuses to start and names the command to run, and runs once
//!   it is synced; a schema a newer release migrated is logged and used;
//! - `upgrade check` fails on a host too old for this release, warns on a
//!   pin left set once every host is upgraded, and is fine otherwise.

use std::{process::Command, time::Duration};

use nova_core::db::{services::ServiceRecords, Database};
use nova_tests::{bin_path, eventually, Proc, TempDir};

fn manage(url: &str, state: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(bin_path("nova-manage"))
        .args(["--database-connection", url, "--state-path", state])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("nova-manage runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_needs_its_schema_and_names_the_command() {
    let dir = TempDir::new("schema");
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let state = dir.path().display().to_string();
    let (code, version) = manage(&url, &state, &["db", "version"], &[]);
    assert_eq!(code, Some(0));
    assert!(version.contains("0 migration(s) applied") && version.contains("nova-manage db sync"), "{version}");
    let args = ["--database-connection", url.as_str(), "--state-path", state.as_str(), "--host", "c1"];
    let strict = [("NOVA_DATABASE__AUTO_MIGRATE", "false")];
    let mut refused = Proc::spawn_env("nova-compute", &args, &strict, dir.path());
    let status = refused.wait_exit(Duration::from_secs(30)).expect("it refuses to start");
    assert!(!status.success());
    let said = refused.output();
    assert!(said.contains("older than this release needs") && said.contains("nova-manage db sync"), "{said}");

    let (code, synced) = manage(&url, &state, &["db", "sync"], &[]);
    assert_eq!(code, Some(0), "{synced}");
    assert!(!synced.contains("missing"), "{synced}");
    // A newer release migrated it further: this one runs on it.
    let db = Database::connect(&url).await.unwrap();
    let future = nova_core::db::Migration { id: "9999_from_the_future", sqlite: "SELECT 1", postgres: "SELECT 1" };
    db.migrate(&[future]).await.unwrap();
    db.close().await;
    let running = Proc::spawn_env("nova-compute", &args, &strict, dir.path());
    eventually("nova-compute starts on the synced schema", Duration::from_secs(30), || async {
        running.output().contains("service started").then_some(())
    })
    .await;
    assert!(running.output().contains("newer than this release knows"), "{}", running.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_check_reports_old_hosts_and_forgotten_pins() {
    let dir = TempDir::new("upgrade-check");
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let state = dir.path().display().to_string();
    let db = Database::connect(&url).await.unwrap();
    db.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = ServiceRecords::new(db.clone());
    records.create_or_update("c1", "nova-compute", "compute", 2).await.unwrap();
    records.create_or_update("c0", "nova-compute", "compute", 0).await.unwrap();
    let (code, report) = manage(&url, &state, &["upgrade", "check"], &[]);
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("too old") && report.contains("c0 (service version 0)"), "{report}");
    records.create_or_update("c0", "nova-compute", "compute", 2).await.unwrap();
    let pinned = [("NOVA_UPGRADE_LEVELS__COMPUTE", "1.0")];
    let (code, report) = manage(&url, &state, &["upgrade", "check"], &pinned);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("remove the pin"), "{report}");
    let (code, report) = manage(&url, &state, &["upgrade", "check"], &[]);
    assert_eq!(code, Some(0), "{report}");
    db.close().await;
}

/// `nova-scheduler` with `[upgrade_levels] compute = auto`: the pin as an
/// operator sees it in the log at start, and lifted by SIGHUP once every
/// compute host is upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_logs_its_pin_and_sighup_lifts_it() {
    let dir = TempDir::new("pin-log");
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let db = Database::connect(&url).await.unwrap();
    db.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = ServiceRecords::new(db.clone());
    records.create_or_update("c1", "nova-compute", "compute", 1).await.unwrap();
    records.create_or_update("c2", "nova-compute", "compute", 2).await.unwrap();
    records.create_or_update("c3", "nova-compute", "compute", 1).await.unwrap();
    let state = dir.path().join("state");
    let args = ["--database-connection", url.as_str(), "--state-path", state.to_str().unwrap(), "--host", "s1"];
    let scheduler = Proc::spawn_env("nova-scheduler", &args, &[("NOVA_UPGRADE_LEVELS__COMPUTE", "auto")], dir.path());
    eventually("the pin is logged", Duration::from_secs(30), || async {
        scheduler.output().contains("pinning compute to 1.0 because of 2 host(s) at service version 1").then_some(())
    })
    .await;
    for host in ["c1", "c3"] {
        records.create_or_update(host, "nova-compute", "compute", 2).await.unwrap();
    }
    scheduler.signal("HUP");
    eventually("SIGHUP lifts the pin", Duration::from_secs(30), || async {
        scheduler
            .output()
            .contains("not pinning compute: every live nova-compute (3) serves this code's API")
            .then_some(())
    })
    .await;
    db.close().await;
}

/// The gateway's tasks resource sends under `[upgrade_levels] compute`: a
/// task submitted while pinned below the work queue's 1.1 is refused at
/// the gateway (409 `UnsupportedVersion`), not cast where an old host would
/// refuse it; unpinned, the same request is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_submits_tasks_under_the_pin() {
    let submit = |all: &nova_tests::NovaAll, id: &str| {
        let body = serde_json::json!({"name": "echo", "args": ["hi"], "task_id": id}).to_string();
        all.http("POST", "/v1/tasks", &[], body.as_bytes()).expect("the gateway answers")
    };
    let config = Some("[upgrade_levels]\ncompute = 1.0\n");
    let pinned = nova_tests::NovaAll::start_with(nova_tests::NovaAllSetup { config, ..Default::default() }).await;
    let (status, _, body) = submit(&pinned, "pinned-1");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("UnsupportedVersion") && body.contains("pinned to 1.0"), "{body}");
    assert!(pinned.output().contains("pinning compute to 1.0"), "{}", pinned.output());
    // The pin is removed from nova.conf; SIGHUP lifts it in the gateway.
    pinned.dir.write("nova.conf", "");
    pinned.proc().signal("HUP");
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let (status, body) = nova_tests::eventually("SIGHUP lifts the gateway's pin", Duration::from_secs(30), || async {
        let id = format!("after-hup-{}", attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let (status, _, body) = submit(&pinned, &id);
        (status != 409).then_some((status, body))
    })
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"status\":\"queued\""), "a new task, queued: {body}");
}
