//! The scheduler service (`nova-scheduler`): places tasks on compute hosts.
//!
//! Computes cast their free capacity and allowed commands to every
//! scheduler (fanout). `schedule_task` picks, among the compute hosts that
//! are **up** and enabled in the service records, one with a free slot that
//! allows the command — the one with the most free slots — casts `run_task`
//! to `compute.<host>`, and returns the host and the task id. No such host
//! is a `NoValidHost` remote error, as in Nova.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use nova_core::{
    db::services::{is_up, ServiceRecords},
    rpc_api, BoxError, Manager, ManagerDeps, ManagerEntry, ManagerHandle, ServiceInfo,
};
use nova_rpc::{RequestContext, RpcClient, RpcError, Target};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::compute::{ComputeManagerClient, NotifyTarget};

/// The registry name of this manager.
pub const NAME: &str = "nova_services::scheduler::SchedulerManager";

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

/// Places tasks; see the module docs.
pub struct SchedulerManager {
    hosts: Mutex<HashMap<String, HostState>>,
    records: ServiceRecords,
    service_down_time: Duration,
    compute: ComputeManagerClient,
}

impl std::fmt::Debug for SchedulerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerManager").finish()
    }
}

/// The registry entry: `nova_services::scheduler::SchedulerManager`, default for `scheduler`.
pub fn entry() -> ManagerEntry {
    ManagerEntry::new(NAME, |deps: ManagerDeps| async move {
        let rpc = RpcClient::new(deps.transport.clone(), Target::new("compute"));
        let m = SchedulerManager::new(ServiceRecords::new(deps.db.clone()), deps.options.service_down_time, rpc);
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(m)))
    })
    .default_for("scheduler")
}

fn no_valid_host(reason: String) -> RpcError {
    RpcError::remote("NoValidHost", "nova_services.scheduler", format!("No valid host was found. {reason}"))
}

impl SchedulerManager {
    /// A scheduler reading liveness from `records`, casting through `rpc`.
    pub fn new(records: ServiceRecords, service_down_time: Duration, rpc: RpcClient) -> Self {
        Self {
            hosts: Mutex::default(),
            records,
            service_down_time,
            compute: ComputeManagerClient::new(rpc.with_target(Target::new("compute"))),
        }
    }
}

#[rpc_api(version = "1.0")]
impl SchedulerManager {
    /// A compute host's capacity report (cast by every compute, to every scheduler).
    #[rpc(cast)]
    pub async fn update_host_state(
        &self,
        _ctx: RequestContext,
        host: String,
        free_slots: usize,
        max_tasks: usize,
        commands: Vec<String>,
    ) -> Result<(), RpcError> {
        let state = HostState {
            host: host.clone(),
            free_slots,
            max_tasks,
            commands,
            updated_at: chrono::Utc::now().naive_utc(),
        };
        self.hosts.lock().await.insert(host, state);
        Ok(())
    }

    /// The host states the scheduler knows, with whether each host is up.
    pub async fn list_host_states(&self, _ctx: RequestContext) -> Result<Vec<HostState>, RpcError> {
        let mut all: Vec<HostState> = self.hosts.lock().await.values().cloned().collect();
        all.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(all)
    }

    /// Place task `name` (`args` appended) on an up compute host with room
    /// for it, and start it there. Returns the host and task id.
    pub async fn schedule_task(
        &self,
        ctx: RequestContext,
        name: String,
        #[rpc(default)] args: Vec<String>,
        task_id: Option<String>,
        notify: Option<NotifyTarget>,
        callback_url: Option<String>,
    ) -> Result<Placement, RpcError> {
        let records = self
            .records
            .list(Some("compute"))
            .await
            .map_err(|e| RpcError::remote("DatabaseError", "nova_services.scheduler", e.to_string()))?;
        let now = chrono::Utc::now().naive_utc();
        let up: Vec<_> = records
            .iter()
            .filter(|r| !r.disabled && is_up(r, self.service_down_time, now))
            .map(|r| r.host.clone())
            .collect();
        let mut hosts = self.hosts.lock().await;
        let allowing: Vec<&HostState> = hosts.values().filter(|h| h.commands.contains(&name)).collect();
        if !hosts.is_empty() && allowing.is_empty() {
            return Err(RpcError::remote(
                "CommandNotAllowed",
                "nova_services.scheduler",
                format!("no compute host allows command {name:?}"),
            ));
        }
        let candidates: Vec<&HostState> =
            allowing.into_iter().filter(|h| up.contains(&h.host) && h.free_slots > 0).collect();
        let most_free = candidates.iter().map(|h| h.free_slots).max().unwrap_or(0);
        // Among the hosts with the most free slots, pick one at random (as
        // Nova's host_subset_size spreads load across equally good hosts).
        let best: Vec<&&HostState> = candidates.iter().filter(|h| h.free_slots == most_free).collect();
        let best = best.get(fastrand::usize(..best.len().max(1))).map(|h| h.host.clone()).ok_or_else(|| {
            no_valid_host(format!("{} compute host(s) up, none with a free slot that allows {name:?}.", up.len()))
        })?;
        if let Some(h) = hosts.get_mut(&best) {
            h.free_slots -= 1;
        }
        drop(hosts);
        let task_id = task_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.compute.with_server(&best).run_task(&ctx, name, args, task_id.clone(), notify, callback_url).await?;
        tracing::info!(host = %best, %task_id, "task scheduled");
        Ok(Placement { host: best, task_id })
    }
}

#[async_trait::async_trait]
impl Manager for SchedulerManager {
    /// Ask every compute for its capacity now rather than at its next report.
    async fn post_start_hook(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        self.compute.with_fanout().report_capacity(&RequestContext::new()).await?;
        Ok(())
    }
}
