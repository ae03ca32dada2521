//! The greeter on a test bus: its answers, its own error coming back as
//! itself, a cast, and its periodic task run on demand.

use std::{sync::Arc, time::Duration};

use nova_core::{
    prelude::*,
    testing::{eventually, TestBus},
};
use nova_examples::greeter::{GreetError, Greeter, GreeterClient};

#[tokio::test]
async fn the_greeter_greets_refuses_and_reports() {
    let bus = TestBus::new().await;
    let greeter = Arc::new(Greeter::default());
    let client = GreeterClient::new(bus.serve("greeter", "h1", greeter.clone()).await);
    let ctx = RequestContext::new();
    assert_eq!(client.greet(&ctx, "Ada".into()).await.unwrap(), "Hello, Ada!");
    match client.greet(&ctx, String::new()).await {
        Err(GreetError::EmptyName) => {}
        other => panic!("the greeter's own error comes back as itself: {other:?}"),
    }
    client.visit(&ctx, "Grace".into()).await.unwrap();
    let counted = || async { (greeter.greeted() == 2).then_some(()) };
    eventually("the visit is counted", Duration::from_secs(10), counted).await;
    bus.run_periodic(&greeter, "report").await.unwrap();
    bus.stop().await;
}

/// The README shows `src/greeter.rs` whole: the two stay one text.
#[test]
fn the_readme_shows_this_greeter() {
    let readme = include_str!("../../README.md");
    let marker = "<!-- examples/src/greeter.rs, checked by its test -->\n```rust\n";
    let start = readme.find(marker).expect("the README's greeter block") + marker.len();
    let shown = &readme[start..start + readme[start..].find("\n```").expect("the block ends")];
    let source = include_str!("../src/greeter.rs");
    let code: Vec<&str> = source.lines().skip_while(|l| l.starts_with("//!") || l.is_empty()).collect();
    assert_eq!(shown, code.join("\n"), "copy examples/src/greeter.rs (without its //! lines) into the README");
}

/// `nova-greeter --help` says what it serves, and `-V` gives this
/// package's version beside the framework's.
#[test]
fn the_binary_names_itself() {
    let run = |arg: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nova-greeter")).arg(arg).output().unwrap();
        assert!(out.status.success(), "nova-greeter {arg}");
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run("-V");
    assert!(version.starts_with(concat!("nova-greeter ", env!("CARGO_PKG_VERSION"), " (nova-rs ")), "{version}");
    let help = run("--help");
    assert!(help.starts_with("Serves the greeter API"), "{help}");
    assert!(help.contains("--transport-url"), "{help}");
}
