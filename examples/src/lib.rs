//! The examples a newcomer copies: the [`greeter`] (an API with errors of
//! its own, a manager with a periodic task and a hook), its service binary
//! (`src/bin/nova-greeter.rs`), a standalone client
//! (`src/bin/greeter-client.rs`) and a test on a `TestBus`
//! (`tests/greeter.rs`).

pub mod greeter;

/// The README's Rust examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
