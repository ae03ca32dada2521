#!/usr/bin/env bash
# The one command that runs every nova-rs check: formatting, lints, and all
# tests against a real RabbitMQ and PostgreSQL. It starts either service
# when it is installed but not running, and fails loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n== %s\n' "$*"; }

ensure_rabbitmq() {
    if rabbitmqctl -q await_startup --timeout 2 >/dev/null 2>&1; then return; fi
    command -v rabbitmq-server >/dev/null || { echo "RabbitMQ is not installed: apt-get install rabbitmq-server" >&2; exit 1; }
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
    rabbitmqctl await_startup --timeout 120 || { echo "RabbitMQ did not start" >&2; exit 1; }
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
    command -v pg_ctlcluster >/dev/null || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 1; done
    echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1
}

# Headless Chromium drives the console test (Debian's package).
ensure_chromium() {
    if command -v chromium >/dev/null; then return; fi
    say "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
        || { echo "cannot install chromium (the console test needs it)" >&2; exit 1; }
}

# Licences, banned crates and sources are checked with cargo-deny.
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
    if cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then return; fi
    say "installing cargo-deny $CARGO_DENY_VERSION (a few minutes, once)"
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION" \
        || { echo "cannot install cargo-deny" >&2; exit 1; }
}

# The mount test mounts tasks with FUSE: fusermount3 and /dev/fuse.
ensure_fuse() {
    if command -v fusermount3 >/dev/null && [ -e /dev/fuse ]; then return; fi
    say "installing fuse3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null \
        || { echo "cannot install fuse3 (the mount test needs it)" >&2; exit 1; }
    [ -e /dev/fuse ] || { echo "/dev/fuse is missing: the mount test cannot run" >&2; exit 1; }
}

# The interop tests run real oslo.messaging peers, and the gateway's fuzz
# test runs schemathesis, from a virtualenv kept beside the build (so it is
# cached between runs).
OSLO_MESSAGING_VERSION=18.3.1
SCHEMATHESIS_VERSION=4.32.5
ensure_interop_venv() {
    local target="${CARGO_TARGET_DIR:-$PWD/target}"
    local venv="$target/interop-venv"
    local stamp="$venv/.oslo.messaging-$OSLO_MESSAGING_VERSION-schemathesis-$SCHEMATHESIS_VERSION"
    if [ ! -f "$stamp" ]; then
        say "installing oslo.messaging $OSLO_MESSAGING_VERSION into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "oslo.messaging==$OSLO_MESSAGING_VERSION" "schemathesis==$SCHEMATHESIS_VERSION" \
            || { echo "cannot install oslo.messaging and schemathesis (the interop and fuzz tests need them)" >&2; exit 1; }
        touch "$stamp"
    fi
    export NOVA_INTEROP_PYTHON="$venv/bin/python"
}

# The private RabbitMQ nodes tests start (`novatest_*`, on their own ports)
# must not outlive the run, whether it passes, fails or is interrupted: a
# cluster shared by a test binary lives in a static, never dropped. Nor
# must the test hosts of the partition tests (network namespaces and a
# bridge named `nvt*`, with the nodes running inside them).
test_namespaces() { ip netns list 2>/dev/null | awk '$1 ~ /^nvt/ {print $1}'; }
stop_test_nodes() {
    local node ns br
    for node in $(epmd -names 2>/dev/null | awk '$1 == "name" && $2 ~ /^novatest_/ {print $2}'); do
        rabbitmqctl -q -n "$node@localhost" stop >/dev/null 2>&1 || true
    done
    for ns in $(test_namespaces); do
        ip netns pids "$ns" | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" || true
        rm -rf "/etc/netns/$ns"
    done
    for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '$2 ~ /^nvt/ {print $2}'); do
        ip link del "$br" || true
    done
    rm -rf "${TMPDIR:-/tmp}/nova-rs-test-clusters" "${TMPDIR:-/tmp}/nova-rs-test-netns" "${TMPDIR:-/tmp}"/novatest_*
}
trap stop_test_nodes EXIT

ensure_rabbitmq
ensure_postgres
ensure_chromium
ensure_fuse
ensure_cargo_deny
ensure_interop_venv

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo deny check licenses bans sources (advisories need a database this machine cannot fetch)"
cargo deny check licenses bans sources
say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p nova-core --features otel,testing --all-targets -- -D warnings
say "cargo build --bins (the process tests run the service binaries)"
cargo build --workspace --bins
say "nova-bench --smoke (proves the bench runs; measures nothing)"
bench_vhost="nova-bench-smoke-$$"
rabbitmqctl -q add_vhost "$bench_vhost"
rabbitmqctl -q set_permissions -p "$bench_vhost" guest '.*' '.*' '.*'
smoke_status=0
"${CARGO_TARGET_DIR:-target}/debug/nova-bench" --smoke \
    --transport-url memory://bench-smoke \
    --transport-url "rabbit://guest:guest@127.0.0.1:5672/$bench_vhost" || smoke_status=$?
rabbitmqctl -q delete_vhost "$bench_vhost"
[ "$smoke_status" = 0 ] || { echo "nova-bench --smoke failed" >&2; exit 1; }
say "nova-bench autoscale --smoke (the producer-consumer demo runs; measures nothing)"
autoscale_log="$(mktemp)"
"${CARGO_TARGET_DIR:-target}/debug/nova-bench" autoscale --smoke >"$autoscale_log" 2>&1 \
    || { tail -n 30 "$autoscale_log" >&2; echo "nova-bench autoscale --smoke failed" >&2; exit 1; }
rm -f "$autoscale_log"
say "nova-bench fleet --smoke (fleets of 1 and 2 nova-compute processes; measures nothing)"
fleet_log="$(mktemp)"
"${CARGO_TARGET_DIR:-target}/debug/nova-bench" fleet --smoke >"$fleet_log" 2>&1 \
    || { tail -n 30 "$fleet_log" >&2; echo "nova-bench fleet --smoke failed" >&2; exit 1; }
rm -f "$fleet_log"
say "nova-bench gateway --smoke (a compute behind nova-gateway, beside direct calls; measures nothing)"
gateway_log="$(mktemp)"
"${CARGO_TARGET_DIR:-target}/debug/nova-bench" gateway --smoke >"$gateway_log" 2>&1 \
    || { tail -n 30 "$gateway_log" >&2; echo "nova-bench gateway --smoke failed" >&2; exit 1; }
rm -f "$gateway_log"
say "nova-bench soak --smoke (nova-all with tracing off, sampled and on; measures nothing)"
soak_log="$(mktemp)"
"${CARGO_TARGET_DIR:-target}/debug/nova-bench" soak --smoke >"$soak_log" 2>&1 \
    || { tail -n 30 "$soak_log" >&2; echo "nova-bench soak --smoke failed" >&2; exit 1; }
rm -f "$soak_log"
say "cargo test"
cargo test --workspace --no-fail-fast
say "cargo test: OpenTelemetry export (the otel feature)"
cargo test -p nova-core --features otel,testing --test otel_export
say "no private RabbitMQ node or test host is left"
left="$(epmd -names 2>/dev/null | awk '$1 == "name" && $2 ~ /^novatest_/ {print $2}') $(test_namespaces)"
stop_test_nodes
[ -z "${left// /}" ] || echo "stopped what the tests left running: $left" >&2
left="$(epmd -names 2>/dev/null | awk '$1 == "name" && $2 ~ /^novatest_/ {print $2}') $(test_namespaces)"
[ -z "${left// /}" ] || { echo "private RabbitMQ nodes or test hosts outlived the run: $left" >&2; exit 1; }
