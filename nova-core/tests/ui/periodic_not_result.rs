use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, RpcError> {
        Ok(name)
    }

    #[periodic_task(spacing = 60)]
    async fn report(&self, _ctx: RequestContext) {}
}

fn main() {}
