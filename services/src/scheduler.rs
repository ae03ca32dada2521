//! The scheduler service (`nova-scheduler`): places tasks on compute hosts.
//!
//! Computes cast their free capacity and allowed commands to every
//! scheduler (fanout). `schedule_task` picks, among the compute hosts that
//! are **up** and enabled in the service records, one with a free slot that
//! allows the command — the one with the most free slots — casts `run_task`
//! to `compute.<host>`, and returns the host and the task id. No such host
//! is a `NoValidHost` remote error, as in Nova.
//!
//! Its compute client sends under `[upgrade_levels] compute` (a version, a
//! release, or `auto`: the oldest live compute host's API), worked out at
//! start and again on SIGHUP.

use std::{collections::HashMap, sync::Arc, time::Duration};

use nova_core::{
    config::{Config, OptSpec},
    db::services::{is_up, ServiceRecords},
    rpc_api,
    upgrade::UpgradeError,
    BoxError, Manager, ManagerDeps, ManagerEntry, ManagerHandle, ServiceInfo,
};
use nova_rpc::{RequestContext, RpcClient, RpcError, Target, Version};
use tokio::sync::Mutex;

pub use crate::api::scheduler::{HostState, Placement, SchedulerApi, SchedulerClient};
use crate::{
    api::compute::{ComputeClient, NotifyTarget},
    compute::ComputePin,
};

/// The registry name of this manager.
pub const NAME: &str = "nova_services::scheduler::SchedulerManager";

/// Places tasks; see the module docs.
pub struct SchedulerManager {
    hosts: Mutex<HashMap<String, HostState>>,
    records: ServiceRecords,
    service_down_time: Duration,
    /// The compute client, unpinned.
    compute: ComputeClient,
    /// Its pin (worked out again on SIGHUP).
    pin: ComputePin,
}

/// The scheduler's options: the pin of its compute client.
pub const OPTIONS: &[OptSpec] = &[OptSpec {
    section: "upgrade_levels",
    name: "compute",
    default: "",
    help: "Pin the compute API the scheduler sends: a version (1.0), a release (placement, work-queues), or auto (the oldest live nova-compute's); empty: no pin. Worked out at start and on SIGHUP.",
}];

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
        m.pin(&deps.config).await?;
        Ok::<_, BoxError>(ManagerHandle::new(Arc::new(m)))
    })
    .options(OPTIONS)
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
            compute: ComputeClient::new(rpc.with_target(Target::new("compute"))),
            pin: ComputePin::default(),
        }
    }

    /// The compute client, as pinned now.
    fn compute(&self) -> ComputeClient {
        self.pin.apply(self.compute.clone())
    }

    /// Pin the compute client as `[upgrade_levels] compute` says (see
    /// [`nova_core::upgrade`]); returns the pin.
    pub async fn pin(&self, config: &Config) -> Result<Option<Version>, UpgradeError> {
        self.pin.refresh(config, &self.records, self.service_down_time).await
    }
}

impl SchedulerApi for SchedulerManager {
    async fn update_host_state(
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

    async fn list_host_states(&self, _ctx: RequestContext) -> Result<Vec<HostState>, RpcError> {
        let mut all: Vec<HostState> = self.hosts.lock().await.values().cloned().collect();
        all.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(all)
    }

    async fn schedule_task(
        &self,
        ctx: RequestContext,
        name: String,
        args: Vec<String>,
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
        self.compute().with_server(&best).run_task(&ctx, name, args, task_id.clone(), notify, callback_url).await?;
        tracing::info!(host = %best, %task_id, "task scheduled");
        Ok(Placement { host: best, task_id })
    }
}

/// The scheduler's API comes from [`SchedulerApi`]; it has no periodic tasks.
#[rpc_api(serves = SchedulerApi)]
impl SchedulerManager {}

#[async_trait::async_trait]
impl Manager for SchedulerManager {
    async fn post_start_hook(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        self.compute().with_fanout().report_capacity(&RequestContext::new()).await?;
        Ok(())
    }

    /// SIGHUP: the pin is worked out again (an upgraded fleet is unpinned
    /// by `auto` here, never in the middle of a request stream).
    async fn reload(&self, config: &Config) {
        if let Err(e) = self.pin(config).await {
            tracing::error!(error = %e, "keeping the compute pin: [upgrade_levels] compute cannot be worked out");
        }
    }
}
