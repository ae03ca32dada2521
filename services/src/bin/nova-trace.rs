//! `nova-trace`: the trace collector (topic `trace`).

fn main() -> std::process::ExitCode {
    nova_core::launch("nova-trace", "Collects request traces from every service.", nova_services::registry())
}
