use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.1", releases = "epoxy=1.0, future=1.2")]
pub trait InventoryApi {
    async fn count(&self, ctx: RequestContext) -> Result<u32, RpcError>;
}

fn main() {}
