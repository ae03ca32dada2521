use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.1")]
pub trait InventoryApi {
    async fn take(&self, ctx: RequestContext, n: u32, #[rpc(since = "1.1")] reason: String) -> Result<u32, RpcError>;
}

fn main() {}
