//! `nova-compute`: runs tasks on this host (one per host, topic `compute.<host>`).

fn main() -> std::process::ExitCode {
    nova_core::launch(
        "nova-compute",
        "Runs allow-listed tasks as OS processes on this host.",
        nova_services::registry(),
    )
}
