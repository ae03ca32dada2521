use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Greeter;

#[rpc_api(version = "1.0")]
impl Greeter {
    pub async fn greet(&self, _ctx: &RequestContext, name: String) -> Result<String, RpcError> {
        Ok(name)
    }
}

fn main() {}
