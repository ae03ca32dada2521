//! `[upgrade_levels] compute` pins the scheduler's compute client: to a
//! version, to a release, or (`auto`) to the oldest live compute host's
//! API; worked out again on SIGHUP (the `reload` hook), when an upgraded
//! fleet lifts it. A bad value names the option.

use std::time::Duration;

use nova_core::{
    config::{Config, ConfigError, Origin},
    testing::TestBus,
    upgrade::UpgradeError,
    Manager,
};
use nova_rpc::{Target, Version};
use nova_services::scheduler::{SchedulerManager, OPTIONS};

fn config(level: &str) -> Config {
    let mut c = Config::with_defaults(OPTIONS);
    c.set("upgrade_levels", "compute", level.into(), Origin::Code);
    c
}

#[tokio::test]
async fn auto_pins_to_the_oldest_live_compute_and_sighup_lifts_it() {
    let bus = TestBus::new().await;
    let records = bus.records().clone();
    records.create_or_update("c1", "nova-compute", "compute", 1).await.unwrap();
    records.create_or_update("c2", "nova-compute", "compute", 2).await.unwrap();
    // A scheduler record at an old version says nothing about computes.
    records.create_or_update("s1", "nova-scheduler", "scheduler", 0).await.unwrap();
    let scheduler = SchedulerManager::new(records.clone(), Duration::from_secs(60), bus.client(Target::new("compute")));
    let auto = config("auto");
    assert_eq!(scheduler.pin(&auto).await.unwrap(), Some(Version::new(1, 0)), "c1 serves 1.0");
    // c1 is upgraded; SIGHUP works the pin out again, and it lifts.
    records.create_or_update("c1", "nova-compute", "compute", 2).await.unwrap();
    scheduler.reload(&auto).await;
    assert_eq!(scheduler.pin(&auto).await.unwrap(), None, "every host at 2: no pin");
    // A host that is down does not hold the fleet back.
    records.create_or_update("old", "nova-compute", "compute", 0).await.unwrap();
    records.admin("old", "nova-compute", &nova_core::db::services::AdminAction::ForceDown(true)).await.unwrap();
    assert_eq!(scheduler.pin(&auto).await.unwrap(), None);
    bus.stop().await;
}

#[tokio::test]
async fn a_version_or_a_release_pins_and_anything_else_is_named() {
    let bus = TestBus::new().await;
    let scheduler =
        SchedulerManager::new(bus.records().clone(), Duration::from_secs(60), bus.client(Target::new("compute")));
    assert_eq!(scheduler.pin(&config("")).await.unwrap(), None);
    assert_eq!(scheduler.pin(&config("1.0")).await.unwrap(), Some(Version::new(1, 0)));
    assert_eq!(scheduler.pin(&config("placement")).await.unwrap(), Some(Version::new(1, 0)));
    assert_eq!(scheduler.pin(&config("work-queues")).await.unwrap(), Some(Version::new(1, 1)));
    match scheduler.pin(&config("yesterday")).await {
        Err(UpgradeError::Config(ConfigError::BadValue { section, name, reason, .. })) => {
            assert_eq!((section.as_str(), name.as_str()), ("upgrade_levels", "compute"));
            assert!(reason.contains("placement") && reason.contains("auto"), "{reason}");
        }
        other => panic!("a bad level is named: {other:?}"),
    }
    bus.stop().await;
}
