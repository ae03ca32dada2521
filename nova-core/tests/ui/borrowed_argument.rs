use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn greet(&self, _ctx: RequestContext, name: &str) -> Result<String, RpcError> {
        Ok(name.to_owned())
    }
}

fn main() {}
