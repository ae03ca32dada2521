use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.1")]
pub trait InventoryApi {
    #[rpc(since = "one.one")]
    async fn restock(&self, ctx: RequestContext, n: u32) -> Result<u32, RpcError>;
}

fn main() {}
