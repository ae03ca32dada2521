//! The services' APIs, apart from their implementations: each is a trait
//! declared with `#[rpc_api]` (its version, methods, casts and docs), the
//! data types it carries, and the typed client written from it.
//!
//! A manager implements the trait; a fake in a test implements the same
//! trait, so the compiler tells when it drifts; a program that only calls
//! a service needs only this module.

pub mod compute;
pub mod scheduler;
