//! The evidence of one test run: which tests passed, failed or were skipped, read from
//! nextest's JUnit report (`.config/nextest.toml`, profile `ci`) (ORCH-9016).
//!
//! A requirement counts as covered only by a citing test that *passed in this run*; a
//! skipped, ignored, failed or absent test proves nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where `cargo nextest run --profile ci` writes its JUnit report.
pub const JUNIT: &str = "target/nextest/ci/junit.xml";
/// Environment variable naming another report (same as `--results`).
pub const RESULTS_ENV: &str = "XTASK_TEST_RESULTS";

/// Tests of one run, keyed `<binary id> <test path>` as nextest names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestResults {
    pub passed: BTreeSet<String>,
    pub failed: BTreeSet<String>,
    pub skipped: BTreeSet<String>,
    /// The report it came from, for messages.
    pub source: String,
}

impl TestResults {
    /// Parse a JUnit report: a `<testcase>` with a `<failure>`/`<error>` child failed,
    /// one with `<skipped>` was skipped, any other passed. A flaky test that passed on
    /// a retry (`<flakyFailure>` children only) passed.
    pub fn parse_junit(xml: &str, source: &str) -> Result<Self> {
        let doc = roxmltree::Document::parse(xml).with_context(|| format!("parsing {source}"))?;
        let mut results = TestResults {
            source: source.to_string(),
            ..Self::default()
        };
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let class = case.attribute("classname").unwrap_or_default();
            let name = case.attribute("name").unwrap_or_default();
            let key = format!("{class} {name}");
            let has = |tag: &str| case.children().any(|c| c.has_tag_name(tag));
            if has("failure") || has("error") {
                results.failed.insert(key);
            } else if has("skipped") {
                results.skipped.insert(key);
            } else {
                results.passed.insert(key);
            }
        }
        Ok(results)
    }

    /// The report of `--results FILE`, `$XTASK_TEST_RESULTS`, or the default path;
    /// `None` when there is none.
    pub fn load(root: &Path, file: Option<&Path>) -> Result<Option<Self>> {
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(RESULTS_ENV).map(PathBuf::from))
            .unwrap_or_else(|| root.join(JUNIT));
        match std::fs::read_to_string(&path) {
            Ok(xml) => Ok(Some(Self::parse_junit(
                &xml,
                &crate::display_path(root, &path),
            )?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn passed(&self, run_id: &str) -> bool {
        self.passed.contains(run_id)
    }

    /// What happened to a test in this run, for messages.
    pub fn outcome(&self, run_id: &str) -> &'static str {
        if self.passed.contains(run_id) {
            "passed"
        } else if self.failed.contains(run_id) {
            "failed"
        } else if self.skipped.contains(run_id) {
            "skipped"
        } else {
            "did not run"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-9016
    #[test]
    fn junit_cases_are_passed_failed_or_skipped() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="4" failures="1" errors="0">
  <testsuite name="orchestratord::tasks_e2e" tests="4" failures="1" errors="0">
    <testcase name="admits" classname="orchestratord::tasks_e2e" time="0.1"></testcase>
    <testcase name="breaks" classname="orchestratord::tasks_e2e" time="0.1"><failure type="test failure">boom</failure></testcase>
    <testcase name="later" classname="orchestratord::tasks_e2e" time="0"><skipped/></testcase>
    <testcase name="flaky" classname="orchestratord::tasks_e2e" time="0.1"><flakyFailure>once</flakyFailure></testcase>
  </testsuite>
</testsuites>"#;
        let r = TestResults::parse_junit(xml, "junit.xml").unwrap();
        assert!(r.passed("orchestratord::tasks_e2e admits"));
        assert!(r.passed("orchestratord::tasks_e2e flaky"));
        assert_eq!(r.outcome("orchestratord::tasks_e2e breaks"), "failed");
        assert_eq!(r.outcome("orchestratord::tasks_e2e later"), "skipped");
        assert_eq!(r.outcome("orchestratord::tasks_e2e absent"), "did not run");
    }
}
