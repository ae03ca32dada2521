//! Security: `amqps://` with certificate verification against a test CA
//! (and a client certificate), refusal of a broker whose certificate does
//! not verify, and passwords that never show — not in logs, errors,
//! `--help`, the gateway's answers or the console.

use std::{sync::Arc, time::Duration};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcClient, RpcError, RpcServer, Target, Version,
};
use nova_tests::{broker::PrivateBroker, eventually, http, unique, NovaAll, NovaAllSetup, Proc, TempDir, TestVhost};
use serde_json::{json, Value};

fn echo() -> Dispatcher {
    let r = Router::new(Version::new(1, 0))
        .method("echo", |_ctx: RequestContext, v: Value| async move { Ok::<_, RpcError>(v) });
    Dispatcher::new(vec![Arc::new(r)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_certificate() {
    let broker = PrivateBroker::start(true);
    let port = broker.tls_port.expect("TLS port");
    let url = format!("amqps://guest:guest@localhost:{port}/");
    let exchange = unique("nova");
    let mut options = TransportOptions::new(url.clone()).with_control_exchange(exchange.clone());
    options.rabbit.ssl_ca_file = Some(broker.dir.join("ca.pem"));
    options.rabbit.ssl_cert_file = Some(broker.dir.join("client.pem"));
    options.rabbit.ssl_key_file = Some(broker.dir.join("client.key"));
    let t = transport::connect(options).await.unwrap();
    let server = RpcServer::new(t.clone(), Target::new("tls").with_server("s1"), echo()).start().await.unwrap();
    let client = RpcClient::new(t.clone(), Target::new("tls")).with_timeout(Duration::from_secs(5));
    assert_eq!(
        client.call(&RequestContext::new(), "echo", json!({"over": "tls"})).await.unwrap(),
        json!({"over": "tls"})
    );
    let connections = broker.ctl(&["list_connections", "ssl", "--no-table-headers"]).unwrap();
    assert!(connections.lines().any(|l| l.trim() == "true"), "the connections are TLS: {connections}");
    server.stop(Duration::from_secs(5)).await;
    t.close().await;

    // Without our CA the broker's certificate does not verify: refused.
    let untrusted = transport::connect(TransportOptions::new(url).with_control_exchange(exchange)).await.unwrap();
    let e = RpcClient::new(untrusted, Target::new("tls"))
        .with_retry(Some(0))
        .cast(&RequestContext::new(), "echo", json!({}))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RpcError::Transport(_)), "{e:?}");
    assert!(text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"), "names the cause: {text}");
}

const PASSWORD: &str = "Sup3r-s3cret-pw";

fn assert_no_password(what: &str, text: &str) {
    assert!(!text.contains(PASSWORD), "the password shows in {what}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show() {
    let vhost = TestVhost::new();
    let user = unique("nova-user");
    let ctl = |args: &[&str]| {
        let ok = std::process::Command::new("rabbitmqctl").arg("-q").args(args).status().is_ok_and(|s| s.success());
        assert!(ok, "rabbitmqctl {args:?}");
    };
    ctl(&["add_user", &user, PASSWORD]);
    ctl(&["set_permissions", "-p", &vhost.name, &user, ".*", ".*", ".*"]);
    let good = format!("rabbit://{user}:{PASSWORD}@127.0.0.1:5672/{}", vhost.name);
    let bad = format!("rabbit://{user}:{PASSWORD}-wrong@127.0.0.1:5672/{}", vhost.name);
    let dir = TempDir::new("secrets");

    // --help, a failing CLI call, a service that cannot log in.
    let help = std::process::Command::new(nova_tests::bin_path("nova-compute")).arg("--help").output().unwrap();
    assert_no_password("--help", &String::from_utf8_lossy(&help.stdout));
    let cli = std::process::Command::new(nova_tests::bin_path("nova-rpc"))
        .args(["call", "compute", "ping", "--timeout", "2", "--transport-url", &bad, "--debug"])
        .output()
        .unwrap();
    assert!(!cli.status.success());
    assert_no_password(
        "nova-rpc's output",
        &format!("{}{}", String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr)),
    );
    let failing_state = dir.path().join("failing-state");
    let failing = Proc::spawn(
        "nova-compute",
        &["--transport-url", &bad, "--debug", "--host", "x", "--state-path", failing_state.to_str().unwrap()],
        dir.path(),
    );
    eventually("the failing service logs its URL, masked", Duration::from_secs(30), || async {
        failing.output().contains("***").then_some(())
    })
    .await;
    assert_no_password("a service's log", &failing.output());

    // A working nova-all with --debug: its log, its API and its console.
    let all =
        NovaAll::start_with(NovaAllSetup { args: &["--transport-url", &good, "--debug"], ..NovaAllSetup::default() })
            .await;
    let port = all.port;
    for path in ["/", "/v1/services", "/v1/services/compute/describe"] {
        let (_, _, body) = http("GET", port, path, &[], b"").expect("the gateway answers");
        assert_no_password(path, &body);
    }
    let (status, _, body) =
        http("POST", port, "/v1/call/compute/ping?namespace=baseapi&version=1.1", &[], br#"{"arg": 1}"#)
            .expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    assert_no_password("nova-all's log", &all.output());
    ctl(&["delete_user", &user]);
}

proptest::proptest! {
    /// No password, whatever characters it holds (raw `/`, `?`, `@`, `,`,
    /// `:` included), appears in a masked URL, for one host or a failover list.
    #[test]
    fn masked_urls_never_show_a_password(
        user in "[a-z][a-z0-9_]{0,7}",
        password in "[ -~]{6,24}",
        hosts in 1usize..4,
        vhost in "[a-z0-9/]{0,8}",
    ) {
        let entries: Vec<String> = (0..hosts).map(|i| format!("{user}:{password}@10.0.0.{i}:5672")).collect();
        let url = format!("rabbit://{}/{vhost}", entries.join(","));
        let without = url.replace(&password, "");
        // A password that is part of the rest of the URL proves nothing.
        proptest::prop_assume!(!without.contains(&password));
        let masked = nova_rpc::transport::TransportUrl::mask(&url);
        proptest::prop_assert!(!masked.contains(&password), "{url} was masked as {masked}");
        proptest::prop_assert!(masked.contains("***"));
    }
}

/// Service records over PostgreSQL with `sslmode=verify-full`: the server's
/// certificate must verify against the CA named by `sslrootcert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_records_over_postgres_verify_full() {
    use nova_core::db::{
        services::{ServiceRecords, MIGRATIONS},
        Database,
    };
    let pg = nova_tests::postgres::PrivatePostgres::start_tls();
    let url = |ca: &std::path::Path| {
        format!("postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}", pg.port, ca.display())
    };
    let db = Database::connect(&url(&pg.dir.join("ca.pem"))).await.expect("TLS with the right CA");
    db.migrate(MIGRATIONS).await.unwrap();
    let records = ServiceRecords::new(db);
    let r = records.create_or_update("tls-host", "nova-compute", "compute", 1).await.unwrap();
    assert!(records.report(r.id).await.unwrap());
    assert_eq!(records.list(Some("compute")).await.unwrap().len(), 1);

    // A CA that did not sign the server's certificate: refused.
    let other = TempDir::new("other-ca");
    nova_tests::broker::make_certificates(other.path());
    let refused = Database::connect(&url(&other.path().join("ca.pem"))).await;
    assert!(refused.is_err(), "a certificate the CA did not sign is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_state_is_private() {
    let vhost = TestVhost::new();
    let dir = TempDir::new("secret-files");
    let url_file = dir.write("transport-url", &format!("{}\n", vhost.url()));
    let exchange = unique("nova");
    let state = dir.path().join("state").join("deeper");
    let args = [
        "--transport-url-file",
        url_file.to_str().unwrap(),
        "--control-exchange",
        &exchange,
        "--host",
        "s1",
        "--state-path",
        state.to_str().unwrap(),
    ];
    let compute = Proc::spawn("nova-compute", &args, dir.path());
    let t = nova_rpc::transport::connect(TransportOptions::new(vhost.url()).with_control_exchange(exchange.clone()))
        .await
        .unwrap();
    let base = RpcClient::new(t, Target::new("compute").with_namespace("baseapi").with_version("1.1"))
        .with_timeout(Duration::from_secs(3));
    eventually("nova-compute serves with the URL from its file", Duration::from_secs(30), || async {
        base.call(&RequestContext::new(), "ping", json!({"arg": 1})).await.ok()
    })
    .await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", compute.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("guest:guest@"), "the broker's credentials show in the process list: {cmdline}");
    // The state is the service's own: 0700 directories, a 0600 database.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "{}", state.display());
    assert_eq!(mode(&state.join("nova.sqlite")), 0o600);
    let mut missing = Proc::spawn("nova-compute", &["--transport-url-file", "/nonexistent/url"], dir.path());
    assert!(!missing.wait_exit(Duration::from_secs(30)).expect("it exits").success());
    assert!(missing.output().contains("/nonexistent/url"), "{}", missing.output());
}
