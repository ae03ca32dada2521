use nova_core::rpc_api;
use nova_rpc::RpcError;

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn greet(&self, name: String) -> Result<String, RpcError> {
        Ok(name)
    }
}

fn main() {}
