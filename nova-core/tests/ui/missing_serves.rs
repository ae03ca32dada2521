use std::sync::Arc;

use nova_core::{rpc_api, Manager, ManagerHandle};
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.0")]
pub trait GreeterApi {
    async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, RpcError>;
}

pub struct Greeter;

impl GreeterApi for Greeter {
    async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
        Ok(name)
    }
}

impl Manager for Greeter {}

fn main() {
    let _ = ManagerHandle::new(Arc::new(Greeter));
}
