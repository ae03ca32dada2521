use nova_core::{async_trait, rpc_api};
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.0")]
pub trait GreeterApi {
    async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, RpcError>;
}

pub struct Greeter;

#[async_trait]
impl GreeterApi for Greeter {
    async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
        Ok(name)
    }
}

fn main() {}
