//! `nova-scheduler`: places tasks on up compute hosts with free capacity.

fn main() -> std::process::ExitCode {
    nova_core::launch("nova-scheduler", "Places tasks on compute hosts.", nova_services::registry())
}
