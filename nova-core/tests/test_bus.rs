//! The test bus keeps to its own directory, and runs periodic tasks on
//! demand.

#![allow(unreachable_pub)] // `#[rpc_api]` methods are `pub` by design

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use nova_core::{prelude::*, testing::TestBus};

#[derive(Default)]
struct Counter {
    ticks: AtomicU32,
}

#[rpc_api(version = "1.0")]
impl Counter {
    /// How many ticks so far.
    pub async fn ticks(&self, _ctx: RequestContext) -> Result<u32, RpcError> {
        Ok(self.ticks.load(Ordering::Relaxed))
    }

    #[periodic_task(spacing = 3600)]
    async fn tick(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Manager for Counter {}

#[tokio::test]
async fn a_bus_keeps_to_its_directory_and_removes_it() {
    let here: Vec<_> = std::fs::read_dir(".").unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    let bus = TestBus::new().await;
    let dir = bus.dir().to_owned();
    assert!(dir.is_absolute(), "{}", dir.display());
    assert!(dir.join("nova.sqlite").exists(), "the database is in the bus's directory: {}", dir.display());
    bus.stop().await;
    assert!(!dir.exists(), "stop removes {}", dir.display());
    let after: Vec<_> = std::fs::read_dir(".").unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(here, after, "nothing is left in the caller's directory");
}

#[tokio::test]
async fn a_test_runs_a_periodic_task_when_it_wants() {
    let bus = TestBus::new().await;
    let counter = Arc::new(Counter::default());
    let client = CounterClient::new(bus.serve("counter", "h1", counter.clone()).await);
    let ctx = RequestContext::new();
    assert_eq!(client.ticks(&ctx).await.unwrap(), 0, "periodic tasks are off on a bus");
    bus.run_periodic(&counter, "tick").await.unwrap();
    bus.run_periodic(&counter, "tick").await.unwrap();
    assert_eq!(client.ticks(&ctx).await.unwrap(), 2);
    bus.stop().await;
}
