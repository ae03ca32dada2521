use nova_core::RemoteError;

#[derive(Debug, RemoteError)]
pub enum GreetError {
    #[remote(message = "a name is required")]
    EmptyName,
}

fn main() {}
