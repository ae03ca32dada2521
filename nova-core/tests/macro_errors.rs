//! Every misuse of `#[rpc_api]` is a compile error that says what to do,
//! at the span that is wrong. Each case is a file in `tests/ui/`, and its
//! expected message is the `.stderr` beside it (regenerate them with
//! `TRYBUILD=overwrite` after a deliberate change, and read the diff).

#[test]
fn misuses_are_clear_compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
