//! `dod ORCH-XXXX`: the definition-of-done checklist of one requirement, every box
//! decided from evidence in the repository.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::LazyLock;

use anyhow::{Context, Result};
use regex::Regex;

use crate::compliance::{CitedTest, Evidence};
use crate::drift;
use crate::results::TestResults;
use crate::spec::{Requirement, Status};
use crate::{openapi, schema, spec};

static OBSERVABILITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(prometheus|/metrics|structured logs?|logged|log record|logs carry)\b")
        .unwrap()
});
static OBSERVABILITY_TEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"tracing|logs_contain|/metrics|prometheus").unwrap());

/// Why a requirement is (or is not) part of the wire contract, decided by ID range.
pub fn api_scope(id: &str) -> (bool, &'static str) {
    let n: u32 = id.trim_start_matches("ORCH-").parse().unwrap_or(0);
    match n {
        1000..=1199 => (true, "data-plane operation (1000–1199)"),
        2000..=2099 => (
            true,
            "error envelope and backpressure on the wire (2000–2099)",
        ),
        5010..=5019 => (true, "session endpoints (5010–5019)"),
        6010..=6029 => (true, "scope and control-plane operations (6010–6029)"),
        3000..=3099 => (false, "queue behaviour inside the server (3000–3099)"),
        4000..=4099 => (false, "placement and engine behaviour (4000–4099)"),
        5000..=5009 => (false, "watchdogs inside the server (5000–5009)"),
        6000..=6009 => (false, "key handling and startup checks (6000–6009)"),
        7000..=7249 => (
            false,
            "durability, operational endpoints and configuration (7000–7249)",
        ),
        9000..=9099 => (false, "contract pipeline tooling (9000–9099)"),
        _ => (false, "outside the API ranges"),
    }
}

/// Whether a property test is expected: pure logic of queues, placement, determinism.
fn wants_property_test(id: &str) -> bool {
    let n: u32 = id.trim_start_matches("ORCH-").parse().unwrap_or(0);
    (3000..=3099).contains(&n) || (4000..=4009).contains(&n) || (4030..=4039).contains(&n)
}

fn is_determinism(id: &str) -> bool {
    matches!(id, "ORCH-4030" | "ORCH-4031" | "ORCH-4032")
}

enum Box_ {
    Done(String),
    Todo(String),
    NotApplicable(String),
}

fn line(out: &mut String, label: &str, b: Box_) -> bool {
    let (mark, note, done) = match b {
        Box_::Done(n) => ("[x]", n, true),
        Box_::Todo(n) => ("[ ]", n, false),
        Box_::NotApplicable(n) => ("[x]", format!("N/A — {n}"), true),
    };
    let _ = writeln!(out, "- {mark} {label}: {note}");
    done
}

type Generator = fn(&Path) -> Result<Vec<drift::Generated>>;

/// Whether every generator's check passes (`None` = clean, `Some(why)` otherwise).
pub fn regen_state(root: &Path) -> Option<String> {
    let mut problems = Vec::new();
    let gens: [(&str, Generator); 3] = [
        (spec::FIX, spec::generate),
        (openapi::FIX, openapi::generate),
        (schema::FIX, schema::generate),
    ];
    for (fix, generator) in gens {
        match generator(root).and_then(|files| drift::check(root, &files)) {
            Ok(d) if d.is_empty() => {}
            Ok(d) => problems.push(format!(
                "{} stale (fix: {fix})",
                d.iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => problems.push(format!("`{fix}` fails: {}", first_line(&e.to_string()))),
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// How to produce the evidence a box needs.
const RUN_TESTS: &str = "run `cargo nextest run --workspace --profile ci` (or `cargo xtask ci`), or pass --results FILE";

/// Render the checklist; boxes about tests are decided by what passed in `results`.
/// Returns (text, all boxes done).
pub fn checklist(
    root: &Path,
    req: &Requirement,
    ev: &Evidence,
    results: Option<&TestResults>,
) -> (String, bool) {
    let id = req.id.as_str();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Definition of done for {id} ({}, {})\n  {}\n  section: {}\n",
        req.level.map_or("—", |l| l.as_str()),
        req.status.as_str(),
        req.text,
        req.section
    );
    if req.status == Status::Retired {
        let _ = writeln!(
            out,
            "{id} is retired: nothing to do (its ID is never reused)."
        );
        return (out, true);
    }
    let mut all = true;
    let tests = ev.tests_citing(id);
    // The first citing test matching `pick` that passed, else why none counts.
    let passing = |pick: &dyn Fn(&CitedTest) -> bool, what: &str| -> Box_ {
        let candidates: Vec<&&CitedTest> = tests.iter().filter(|t| pick(t)).collect();
        let Some(results) = results else {
            return Box_::Todo(format!("no test results to read: {RUN_TESTS}"));
        };
        if let Some(t) = candidates.iter().find(|t| results.passed(&t.run_id)) {
            return Box_::Done(format!("{} passed ({})", t.name, t.file));
        }
        if candidates.is_empty() {
            Box_::Todo(format!("no {what} cites {id}"))
        } else {
            Box_::Todo(format!(
                "no {what} citing {id} passed in {}: {}",
                results.source,
                candidates
                    .iter()
                    .map(|t| format!("{} {}", t.name, results.outcome(&t.run_id)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let ops = ev.operations_citing(id);
    let pacts = ev.pacts_citing(id);
    let (is_api, why_api) = api_scope(id);

    all &= line(
        &mut out,
        "in spec index",
        Box_::Done(format!("{} lists {id}", spec::INDEX_PATH)),
    );

    let schema_hit = std::fs::read_dir(root.join(schema::DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(id)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let contracts = if !ops.is_empty() || !schema_hit.is_empty() {
        let mut v = ops.clone();
        v.extend(schema_hit.iter().map(|s| format!("schema {s}")));
        Box_::Done(format!("cited by {}", v.join(", ")))
    } else if is_api {
        Box_::Todo(format!(
            "{why_api}, but no OpenAPI operation or schema cites {id}: add it to an x-req-id in server/src/api, then `{}`",
            openapi::FIX
        ))
    } else {
        Box_::NotApplicable(format!("{why_api}; not part of the wire contract"))
    };
    all &= line(&mut out, "contracts", contracts);

    all &= line(
        &mut out,
        "regen clean",
        match regen_state(root) {
            None => Box_::Done("spec-extract, regen-openapi and regen-schema --check pass".into()),
            Some(why) => Box_::Todo(why),
        },
    );

    let pact = if !pacts.is_empty() {
        Box_::Done(format!(
            "{} interaction(s): {}",
            pacts.len(),
            pacts.join("; ")
        ))
    } else if is_api {
        Box_::Todo(format!(
            "no interaction in {}/*.json names {id} in its description",
            crate::compliance::PACTS_DIR
        ))
    } else {
        Box_::NotApplicable(format!("{why_api}; no HTTP interaction to pin"))
    };
    all &= line(&mut out, "pact interaction", pact);

    let provider = if !is_api {
        Box_::NotApplicable(format!("{why_api}; no pact to verify"))
    } else if pacts.is_empty() {
        Box_::Todo("no pact interaction to verify".into())
    } else {
        match results {
            None => Box_::Todo(format!("no test results to read: {RUN_TESTS}")),
            Some(r) => {
                // Every test of the provider-verification binary must have passed.
                const VERIFY: &str = "orchestratord::provider_verify ";
                let ran: Vec<&String> = r
                    .passed
                    .iter()
                    .chain(&r.failed)
                    .chain(&r.skipped)
                    .filter(|t| t.starts_with(VERIFY))
                    .collect();
                let all_passed = !ran.is_empty() && ran.iter().all(|t| r.passed(t));
                if all_passed {
                    Box_::Done(format!(
                        "its {} interaction(s) were replayed against the real server: {} passed in {}",
                        pacts.len(),
                        ran.iter()
                            .map(|t| t.trim_start_matches(VERIFY))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.source
                    ))
                } else {
                    Box_::Todo(format!(
                        "server/tests/provider_verify.rs did not pass in {}: {}",
                        r.source,
                        if ran.is_empty() {
                            "it did not run".to_string()
                        } else {
                            ran.iter()
                                .map(|t| {
                                    format!("{} {}", t.trim_start_matches(VERIFY), r.outcome(t))
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ))
                }
            }
        }
    };
    all &= line(&mut out, "provider verification", provider);

    let file_has = |file: &str, pat: &str| {
        std::fs::read_to_string(root.join(file)).is_ok_and(|t| t.contains(pat))
    };
    let prop = if wants_property_test(id) {
        passing(
            &|t| file_has(&t.file, "proptest!"),
            "property test (a test in a file using proptest!)",
        )
    } else {
        Box_::NotApplicable(
            "property tests are for pure queue, placement and determinism logic".into(),
        )
    };
    all &= line(&mut out, "property test", prop);

    let det = if is_determinism(id) {
        passing(
            &|t| t.file.contains("determinism"),
            "test of a determinism suite (a file whose path contains `determinism`)",
        )
    } else {
        Box_::NotApplicable("only ORCH-4030–4032 are determinism requirements".into())
    };
    all &= line(&mut out, "determinism", det);

    let e2e = if id.starts_with("ORCH-9") {
        Box_::NotApplicable("pipeline requirement, exercised by the xtask tests".into())
    } else {
        passing(
            &|t| t.file.starts_with("server/tests/") || t.file.starts_with("cli/tests/"),
            "end-to-end test (server/tests/, cli/tests/)",
        )
    };
    all &= line(&mut out, "end-to-end", e2e);

    let n: u32 = id.trim_start_matches("ORCH-").parse().unwrap_or(0);
    let obs = if (7100..=7149).contains(&n) || OBSERVABILITY.is_match(&req.text) {
        passing(
            &|t| {
                std::fs::read_to_string(root.join(&t.file))
                    .is_ok_and(|s| OBSERVABILITY_TEST.is_match(&s))
            },
            "test that inspects logs or metrics",
        )
    } else {
        Box_::NotApplicable("the requirement names no metric or log".into())
    };
    all &= line(&mut out, "observability", obs);

    let compliance = if req.status == Status::Planned {
        Box_::Todo(format!(
            "{id} is planned: build it, drop `(planned)` from the spec and cite it from a test"
        ))
    } else {
        passing(&|_| true, "test")
    };
    all &= line(&mut out, "compliance", compliance);
    (out, all)
}

/// The requirements a change since `base` touches: IDs on changed lines of the spec,
/// and IDs on added or removed lines elsewhere (`x-req-id`, `// covers:`), in ID order.
pub fn changed_ids(root: &Path, base: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("git")
        .args(["diff", "--unified=0", base, "--"])
        .current_dir(root)
        .output()
        .context("running git diff")?;
    if !out.status.success() {
        anyhow::bail!(
            "git diff {base} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ids_in_diff(&String::from_utf8_lossy(&out.stdout)))
}

/// IDs on the changed lines of a unified diff, generated files left out (their IDs
/// come from the sources that changed with them).
pub fn ids_in_diff(diff: &str) -> Vec<String> {
    const GENERATED: [&str; 4] = [
        "requirements/index.yaml",
        "COMPLIANCE.md",
        "contracts/openapi/",
        "contracts/pacts/",
    ];
    let mut ids = std::collections::BTreeSet::new();
    let mut skip = false;
    for line in diff.lines() {
        if let Some(file) = line.strip_prefix("+++ b/").or(line.strip_prefix("--- a/")) {
            skip = GENERATED.iter().any(|g| file.starts_with(g))
                || file.starts_with("contracts/blessed/");
            continue;
        }
        if skip || line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        if line.starts_with('+') || line.starts_with('-') {
            ids.extend(ID.find_iter(line).map(|m| m.as_str().to_string()));
        }
    }
    ids.into_iter().collect()
}

static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"ORCH-[0-9]{4}").unwrap());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::CitedTest;
    use crate::spec::Level;

    fn req(id: &str, text: &str) -> Requirement {
        Requirement {
            id: id.into(),
            level: Some(Level::Must),
            section: "s".into(),
            text: text.into(),
            status: Status::Active,
        }
    }

    // covers: ORCH-9008
    #[test]
    fn every_unchecked_box_says_why() {
        let root = tempfile::tempdir().unwrap();
        let ev = Evidence {
            requirements: vec![req("ORCH-1001", "X MUST y."), req("ORCH-3003", "Q MUST z.")],
            operations: vec![],
            pacts: vec![],
            tests: vec![CitedTest {
                name: "server/queue::fairness".into(),
                file: "server/tests/queue.rs".into(),
                ids: vec!["ORCH-3003".into()],
                run_id: "server::queue fairness".into(),
            }],
            unlisted: vec![],
        };
        let results = TestResults {
            passed: ["server::queue fairness".to_string()].into(),
            source: "junit.xml".into(),
            ..TestResults::default()
        };
        let (text, done) = checklist(root.path(), &ev.requirements[0], &ev, Some(&results));
        assert!(!done);
        assert!(
            text.contains("- [ ] contracts: data-plane operation"),
            "{text}"
        );
        assert!(
            text.contains("- [ ] pact interaction: no interaction"),
            "{text}"
        );
        assert!(
            text.contains(
                "- [ ] end-to-end: no end-to-end test (server/tests/, cli/tests/) cites ORCH-1001"
            ),
            "{text}"
        );
        assert!(text.contains("- [x] determinism: N/A"), "{text}");
        assert!(text.contains("- [ ] regen clean:"), "{text}");
        for l in text.lines().filter(|l| l.starts_with("- [ ]")) {
            assert!(
                l.split_once(": ").is_some_and(|(_, why)| !why.is_empty()),
                "{l}"
            );
        }
        let (text, _) = checklist(root.path(), &ev.requirements[1], &ev, Some(&results));
        assert!(text.contains("- [x] contracts: N/A"), "{text}");
        assert!(
            text.contains("- [x] end-to-end: server/queue::fairness passed"),
            "{text}"
        );
        assert!(
            text.contains("- [ ] property test: no property test (a test in a file using proptest!) cites ORCH-3003"),
            "{text}"
        );
        assert!(text.contains("- [x] compliance:"), "{text}");
        // The same test skipped in the run proves nothing.
        let skipped = TestResults {
            skipped: ["server::queue fairness".to_string()].into(),
            source: "junit.xml".into(),
            ..TestResults::default()
        };
        let (text, done) = checklist(root.path(), &ev.requirements[1], &ev, Some(&skipped));
        assert!(!done);
        assert!(
            text.contains("- [ ] compliance: no test citing ORCH-3003 passed in junit.xml: server/queue::fairness skipped"),
            "{text}"
        );
        let (text, _) = checklist(root.path(), &ev.requirements[1], &ev, None);
        assert!(
            text.contains("- [ ] end-to-end: no test results to read"),
            "{text}"
        );
    }

    // covers: ORCH-9008
    #[test]
    fn a_change_touches_the_ids_on_its_changed_lines() {
        let diff = "\
diff --git a/specs/orchestrator-spec.md b/specs/orchestrator-spec.md
--- a/specs/orchestrator-spec.md
+++ b/specs/orchestrator-spec.md
@@ -10 +10 @@
-- [ORCH-1001] The server MUST x.
+- [ORCH-1001] The server MUST y.
diff --git a/requirements/index.yaml b/requirements/index.yaml
--- a/requirements/index.yaml
+++ b/requirements/index.yaml
@@ -1 +1 @@
+- id: ORCH-7777
diff --git a/server/tests/x.rs b/server/tests/x.rs
--- a/server/tests/x.rs
+++ b/server/tests/x.rs
@@ -3,0 +4 @@
+// covers: ORCH-2010, ORCH-1001
 // context ORCH-5555 does not count
";
        assert_eq!(ids_in_diff(diff), ["ORCH-1001", "ORCH-2010"]);
    }
}
