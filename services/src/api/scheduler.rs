//! The scheduler API (`scheduler`, version 1.0): places tasks on compute
//! hosts. `SchedulerManager` implements it; `SchedulerClient` calls it.

use chrono::NaiveDateTime;
use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};
use serde::{Deserialize, Serialize};

use crate::api::compute::NotifyTarget;

/// The scheduler API; see the [module docs](self).
#[rpc_api(version = "1.0", client = "SchedulerClient")]
pub trait SchedulerApi {
    /// A compute host's capacity report (cast by every compute, to every scheduler).
    #[rpc(cast)]
    async fn update_host_state(
        &self,
        ctx: RequestContext,
        host: String,
        free_slots: usize,
        max_tasks: usize,
        commands: Vec<String>,
    ) -> Result<(), RpcError>;

    /// The host states the scheduler knows, with whether each host is up.
    async fn list_host_states(&self, ctx: RequestContext) -> Result<Vec<HostState>, RpcError>;

    /// Place task `name` (`args` appended) on an up compute host with room
    /// for it, and start it there. Returns the host and task id.
    async fn schedule_task(
        &self,
        ctx: RequestContext,
        name: String,
        #[rpc(default)] args: Vec<String>,
        task_id: Option<String>,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<Placement, RpcError>;
}

/// What a compute host last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The compute host.
    pub host: String,
    /// Free task slots (minus the tasks placed since the report).
    pub free_slots: usize,
    /// Its `max_tasks`.
    pub max_tasks: usize,
    /// Commands it allows.
    pub commands: Vec<String>,
    /// When it reported (UTC).
    pub updated_at: NaiveDateTime,
}

/// Where a task went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The compute host.
    pub host: String,
    /// The task id (generated when the caller gave none).
    pub task_id: String,
}
