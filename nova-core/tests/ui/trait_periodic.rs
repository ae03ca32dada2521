use nova_core::rpc_api;
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.0")]
pub trait GreeterApi {
    async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, RpcError>;

    #[periodic_task(spacing = 60)]
    async fn report(&self, ctx: RequestContext) -> Result<(), RpcError>;
}

fn main() {}
