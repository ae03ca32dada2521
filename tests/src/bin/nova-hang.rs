//! `nova-hang`: a service whose blocking method and periodic task never
//! return, for the tests that prove a SIGTERM still ends the process within
//! `graceful_shutdown_timeout`. Prints `HANGING` once a `hang` call has
//! started on the blocking pool.

use std::{process::ExitCode, sync::Arc, time::Duration};

use nova_core::{rpc_api, BoxError, Manager, ManagerEntry, ManagerHandle, ManagerRegistry};
use nova_rpc::{RequestContext, RpcError};

/// Never finishes anything it starts.
pub struct HangManager;

#[rpc_api(version = "1.0")]
impl HangManager {
    /// Block a thread of the blocking pool for ever.
    #[rpc(blocking)]
    pub fn hang(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        println!("HANGING");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Start, then never end.
    #[periodic_task(spacing = 1.0, run_immediately = true)]
    async fn stuck(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        println!("STUCK");
        std::future::pending().await
    }
}

impl Manager for HangManager {}

fn main() -> ExitCode {
    let entry = ManagerEntry::new("nova_tests::HangManager", |_deps| async {
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(HangManager)))
    })
    .default_for("hang");
    nova_core::launch("nova-hang", "A service that never finishes its work.", ManagerRegistry::new().register(entry))
}
