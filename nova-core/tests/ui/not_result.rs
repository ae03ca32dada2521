use nova_core::rpc_api;
use nova_rpc::RequestContext;

pub struct Greeter;

#[rpc_api]
impl Greeter {
    pub async fn greet(&self, _ctx: RequestContext, name: String) -> String {
        name
    }
}

fn main() {}
