use std::sync::Arc;

use nova_core::{rpc_api, Manager};
use nova_rpc::{RequestContext, RpcError};

#[rpc_api(version = "1.0")]
pub trait GreeterApi {
    async fn greet(&self, ctx: RequestContext, name: String) -> Result<String, RpcError>;
}

/// A fake whose argument no longer matches the API: the compiler says so.
pub struct FakeGreeter;

impl GreeterApi for FakeGreeter {
    async fn greet(&self, _ctx: RequestContext, name: u32) -> Result<String, RpcError> {
        Ok(name.to_string())
    }
}

#[rpc_api(serves = GreeterApi)]
impl FakeGreeter {}

impl Manager for FakeGreeter {}

fn main() {
    let _ = Arc::new(FakeGreeter);
}
