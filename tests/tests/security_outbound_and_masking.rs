//! What leaves a service, and what it shows: a task's callback never goes
//! through a proxy taken from the environment (where the address guard
//! could not see it), it is refused for internal addresses with a message
//! that says "refused" and masks the URL's password, and a secret in a
//! task's arguments shows nowhere: not in its record, the trace spans, or
//! the log. Masking itself is a property test over URLs and arguments.

use std::time::Duration;

use nova_rpc::mask::{mask_arg_strings, mask_password};
use nova_tests::{eventually, http, NovaAll, NovaAllSetup};
use proptest::prelude::*;
use serde_json::Value;

/// `nova-all` on its defaults as host `h1`, traced fully, with the proxy
/// variables of the environment all pointing at `proxy_port`.
async fn nova_all_behind_a_proxy(proxy_port: u16) -> NovaAll {
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("NOVA_TRACE__SAMPLE_RATIO", "1"),
    ];
    NovaAll::start_with(NovaAllSetup { args: &["--host", "h1"], env: &env, ..NovaAllSetup::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_ignore_proxy_variables_and_secrets_show_nowhere() {
    let (proxy_port, proxied) = nova_core::testing::http_receiver();
    let all = nova_all_behind_a_proxy(proxy_port).await;
    let port = all.port;
    let submit = |id: &str, rid: &str, url: &str| {
        let body = serde_json::json!({"name": "echo", "args": ["--password=hunter2", "--token", "t0ken-xyz", "visible"],
            "task_id": id, "callback_url": url});
        let headers = [("X-OpenStack-Request-ID", rid)];
        let posted = http("POST", port, "/v1/tasks", &headers, body.to_string().as_bytes());
        let (status, _, text) = posted.unwrap_or_else(|_| panic!("nova-all is gone: {}", all.output()));
        assert_eq!(status, 202, "{text}");
    };
    let rid = "req-0b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11";
    submit("cb-local", rid, "http://bob:hunter2@localhost:9/cb");
    submit(
        "cb-metadata",
        "req-1b4f7f2e-3c6a-4b55-9f44-5a0e2d9c8e11",
        "http://metadata.google.internal/computeMetadata/v1/",
    );
    for id in ["cb-local", "cb-metadata"] {
        let task: Value = eventually(&format!("task {id}'s callback has failed"), Duration::from_secs(30), || async {
            let (_, _, body) = http("GET", port, &format!("/v1/tasks/{id}"), &[], b"").expect("the gateway answers");
            let task: Value = serde_json::from_str(&body).ok()?;
            task["callback_error"].is_string().then_some(task)
        })
        .await;
        let error = task["callback_error"].as_str().unwrap_or_default();
        assert!(error.contains("refused") || error.contains("failed"), "{id}: {error}");
        // The record's own words mask secrets (its `args`, `callback_url`
        // and output are the submitter's data, returned as given).
        let shown = format!("{} {}", task["callback_error"], task["argv"]);
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken-xyz"), "{id}: {task}");
        assert_eq!(
            task["stdout"], "--password=hunter2 --token t0ken-xyz visible\n",
            "the task itself got its arguments"
        );
    }
    let (_, _, local) = http("GET", port, "/v1/tasks/cb-local", &[], b"").expect("the gateway answers");
    assert!(local.contains("refused") && local.contains("bob:***@localhost"), "{local}");
    assert!(proxied.try_recv().is_err(), "a callback went through the proxy of the environment");
    // The trace of the submission shows the arguments masked.
    let trace: Value = eventually("the submission's trace", Duration::from_secs(20), || async {
        let (status, _, body) = http("GET", port, &format!("/v1/traces/{rid}"), &[], b"").expect("the gateway answers");
        (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    })
    .await;
    let spans = trace["spans"].to_string();
    assert!(spans.contains("--password=***") && !spans.contains("hunter2") && !spans.contains("t0ken-xyz"), "{spans}");
    let log = all.output();
    assert!(!log.contains("hunter2") && !log.contains("t0ken-xyz"), "a secret reached the log: {log}");
}

/// A secret no other part of a generated text can spell.
fn secret() -> impl Strategy<Value = String> {
    "[A-Z0-9]{6,12}".prop_map(|s| format!("Zq{s}"))
}

/// Text that cannot hold a secret by chance: lower-case words.
fn words() -> impl Strategy<Value = String> {
    "[a-z ]{0,20}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn a_password_in_any_url_is_masked(
        scheme in "(https?|amqps?|rabbit|postgresql)",
        user in "[a-z][a-z0-9_.]{0,8}",
        pass in secret(),
        host in "[a-z][a-z0-9.-]{0,15}",
        path in "(/[a-z0-9_]{0,8}){0,3}",
        before in words(),
        after in words(),
    ) {
        let text = format!("{before} {scheme}://{user}:{pass}@{host}{path} {after}");
        let masked = mask_password(&text);
        prop_assert!(!masked.contains(&pass), "{text} -> {masked}");
        prop_assert!(masked.contains(&format!("{user}:***@{host}")), "{text} -> {masked}");
    }

    #[test]
    fn a_secret_flag_or_key_is_masked(
        key in "(password|db_password|admin-pass[a-z]{0,3}|auth_token|secret|api_key|PASSWORD|apiKey)",
        value in secret(),
        form in 0..5usize,
        before in words(),
    ) {
        let text = match form {
            0 => format!("{before} --{key}={value} x"),
            1 => format!("{before} {key}={value}&next=1"),
            2 => format!(r#"{{"{key}": "{value}", "n": 1}}"#),
            3 => format!("{before} {key}: {value}"),
            _ => format!("{before} '{key}': '{value}'"),
        };
        // `admin-pass…` names a secret only when it spells password.
        let secret_key = nova_rpc::mask::is_secret_key(&key);
        let masked = mask_password(&text);
        prop_assert_eq!(!masked.contains(&value), secret_key, "{} -> {}", text, masked);
    }

    #[test]
    fn the_argument_after_a_secret_flag_is_masked(
        flag in "--(password|token|client-secret|db-passwd)",
        value in secret(),
        rest in proptest::collection::vec("[a-z]{1,6}", 0..4),
    ) {
        let mut args = vec!["--user".to_owned(), "bob".to_owned(), flag, value.clone()];
        args.extend(rest.iter().cloned());
        let masked = mask_arg_strings(&args);
        prop_assert!(!masked.contains(&value), "{:?} -> {:?}", args, masked);
        prop_assert_eq!(&masked[4..], &rest[..], "what follows is untouched");
        prop_assert_eq!(&masked[..2], &args[..2]);
    }
}
