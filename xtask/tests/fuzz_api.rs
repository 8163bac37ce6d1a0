//! The document-driven fuzzer (`cargo xtask fuzz-api`) as a test, so that it runs in
//! `cargo xtask ci`'s test step and its outcome is evidence in the run's report.

// covers: ORCH-9018, ORCH-9013
#[test]
fn schema_valid_requests_get_declared_answers_from_the_real_server() {
    xtask::fuzz::fuzz(&xtask::workspace_root()).unwrap_or_else(|e| panic!("{e:#}"));
}
