use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Counter;

#[rpc_api(version = "1.0")]
impl Counter {
    #[rpc(cast)]
    pub async fn bump(&self, _ctx: RequestContext) -> Result<u64, RpcError> {
        Ok(1)
    }
}

fn main() {}
