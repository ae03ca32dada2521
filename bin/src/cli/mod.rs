//! The `nova-rpc` CLI's own modules: a client of the gateway's tasks
//! resource, and tasks as files through FUSE.

pub mod mount;
pub mod tasks_api;
