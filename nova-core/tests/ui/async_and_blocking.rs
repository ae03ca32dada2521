use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Greeter;

#[rpc_api]
impl Greeter {
    #[rpc(blocking)]
    pub async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
        Ok(name)
    }
}

fn main() {}
