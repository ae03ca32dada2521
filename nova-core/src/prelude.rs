//! What a service needs, in one import: `use nova_core::prelude::*;`.
//!
//! The attribute that declares an API ([`rpc_api`]), the derive for its
//! errors ([`RemoteError`](macro@RemoteError)), the [`Manager`] hooks (and
//! [`async_trait`] to write them), the request context and error of every
//! method, and [`launch_manager`] for `main`.

pub use crate::{
    async_trait, launch_manager, rpc_api, BoxError, Manager, ManagerHandle, RemoteError, RpcApi, ServiceInfo,
};
pub use nova_rpc::{RequestContext, RpcClient, RpcError, Target};
