//! `nova-greeter`: serves the greeter on the topic `greeter`, with every
//! flag and option of a nova-rs service (`--help`).

fn main() -> std::process::ExitCode {
    nova_core::launch_manager("nova-greeter", nova_examples::greeter::Greeter::default)
}
