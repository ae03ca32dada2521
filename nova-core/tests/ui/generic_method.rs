use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn greet<T: serde::de::DeserializeOwned>(&self, _ctx: RequestContext, name: T) -> Result<(), RpcError> {
        let _ = name;
        Ok(())
    }
}

fn main() {}
