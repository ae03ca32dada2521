use nova_core::rpc_api;
use nova_rpc::RpcError;

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn ping(&self) -> Result<(), RpcError> {
        Ok(())
    }
}

fn main() {}
