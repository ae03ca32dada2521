//! The example services — the managers a new user copies.
//!
//! * [`compute`]: `nova-compute`, runs tasks as supervised OS processes from
//!   an allow-list, one process per task;
//! * [`scheduler`]: `nova-scheduler`, places tasks on up compute hosts with
//!   free capacity;
//! * [`trace`]: `nova-trace`, keeps the request traces every service sends.
//!
//! Their APIs are traits in [`api`], apart from the managers: each with
//! its typed client (`ComputeClient`, `SchedulerClient`), written by
//! `#[rpc_api]`.
//!
//! The per-topic binaries (`nova-compute`, `nova-scheduler`, `nova-trace`)
//! live here too, in `src/bin/`, so building one compiles only what a
//! service needs; with the `gateway` feature, [`gateway`] adds the tasks
//! resource to the HTTP gateway.

pub mod api;
pub mod compute;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod outbound;
pub mod scheduler;
pub mod trace;

/// Every manager in this crate, by its `<topic>_manager` name.
pub fn registry() -> nova_core::ManagerRegistry {
    nova_core::ManagerRegistry::new().register(compute::entry()).register(scheduler::entry()).register(trace::entry())
}
