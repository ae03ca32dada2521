//! `greeter-client NAME`: greets NAME through a running `nova-greeter`, on
//! the broker at `NOVA_TRANSPORT_URL` (default: RabbitMQ on localhost).

use nova_core::prelude::*;
use nova_examples::greeter::{GreetError, GreeterClient};

#[tokio::main]
async fn main() -> Result<(), GreetError> {
    let url = std::env::var("NOVA_TRANSPORT_URL").unwrap_or_else(|_| "rabbit://guest:guest@localhost:5672/".into());
    let name = std::env::args().nth(1).unwrap_or_default();
    let greeter = GreeterClient::connect(&url, "greeter").await?;
    match greeter.greet(&RequestContext::new(), name).await {
        Ok(hello) => println!("{hello}"),
        Err(GreetError::EmptyName) => eprintln!("give a name: greeter-client Ada"),
        Err(other) => return Err(other),
    }
    Ok(())
}
