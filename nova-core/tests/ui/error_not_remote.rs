use nova_core::rpc_api;
use nova_rpc::RequestContext;

#[derive(Debug)]
pub struct EmptyName;

impl std::fmt::Display for EmptyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a name is required")
    }
}

pub struct Greeter;

#[rpc_api(version = "1.0")]
impl Greeter {
    pub async fn greet(&self, _ctx: RequestContext, name: String) -> Result<String, EmptyName> {
        Ok(name)
    }
}

fn main() {}
