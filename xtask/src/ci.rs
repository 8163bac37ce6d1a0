//! `ci`: every gate, in order, stopping at the first failure.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::drift::{self, Generated, Mode};
use crate::{bless, compliance, openapi, results, schema, spec};

pub const PACTS_FIX: &str = "cargo xtask regen-pacts";
const CONSUMER_TESTS: &str = "consumer-tests";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn banner(step: usize, total: usize, what: &str) {
    eprintln!("\n==== ci [{step}/{total}] {what} ====");
}

fn run(root: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Result<()> {
    let mut cmd = Command::new(cargo());
    cmd.args(args).current_dir(root);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("spawning cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether the workspace has a `consumer-tests` package.
pub fn has_consumer_tests(root: &Path) -> Result<bool> {
    Ok(compliance::workspace_targets(root)?
        .iter()
        .any(|t| t.package == CONSUMER_TESTS))
}

/// Run the consumer tests into a fresh directory and return the pact files they wrote,
/// as files of `contracts/pacts/`.
pub fn consumer_pacts(root: &Path) -> Result<Vec<Generated>> {
    let dir = tempfile::tempdir().context("creating a temp dir for pacts")?;
    run(
        root,
        &["test", "-p", CONSUMER_TESTS],
        &[("PACT_OUTPUT_DIR", dir.path())],
    )?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir.path())?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let name = e.file_name().to_string_lossy().into_owned();
            let contents =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            files.push(Generated::new(
                format!("{}/{name}", compliance::PACTS_DIR),
                contents,
            ));
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if files.is_empty() {
        bail!("the consumer tests wrote no pact file into PACT_OUTPUT_DIR");
    }
    Ok(files)
}

/// `regen-pacts` (and its check mode).
pub fn regen_pacts(root: &Path, mode: Mode) -> Result<()> {
    let files = consumer_pacts(root)?;
    let extras = drift::stale_extras(root, compliance::PACTS_DIR, "json", &files);
    drift::apply_with_extras(root, &files, extras, mode, PACTS_FIX)
}

/// The reviewed list of tests `ci` may leave ignored (ORCH-9019).
pub const IGNORED_LIST: &str = "ci/ignored-tests.txt";

/// Every ignored test of the workspace must be in [`IGNORED_LIST`] and every entry
/// there must still be ignored; returns the problems.
pub fn ignored_gate(root: &Path) -> Result<Vec<String>> {
    let cargo = cargo();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{cargo}' test --workspace -- --list --ignored --format terse 2>&1"
        ))
        .current_dir(root)
        .output()
        .context("listing the ignored tests")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("cargo test -- --list --ignored failed:\n{text}");
    }
    let targets = compliance::workspace_targets(root)?;
    let listed = compliance::TestList::parse(&text, &targets);
    let mut ignored = std::collections::BTreeSet::new();
    for ((package, target), tests) in &listed.tests {
        let kind = targets
            .iter()
            .find(|t| &t.package == package && &t.name == target)
            .map_or("", |t| t.kind.as_str());
        for test in tests {
            ignored.insert(if kind == "test" {
                format!("{package}/{target}::{test}")
            } else {
                format!("{package}::{test}")
            });
        }
    }
    let file = std::fs::read_to_string(root.join(IGNORED_LIST)).unwrap_or_default();
    Ok(ignored_problems(&ignored, &file))
}

/// Compare the ignored tests with the reviewed list's text (`name  # reason` lines).
pub fn ignored_problems(
    ignored: &std::collections::BTreeSet<String>,
    reviewed_file: &str,
) -> Vec<String> {
    let reviewed: std::collections::BTreeSet<String> = reviewed_file
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let mut problems: Vec<String> = ignored
        .difference(&reviewed)
        .map(|t| {
            format!(
                "{t} is ignored but not in {IGNORED_LIST}: run it, or list it there with the reason"
            )
        })
        .collect();
    problems.extend(reviewed.difference(ignored).map(|t| {
        format!("{IGNORED_LIST} lists {t}, which is not an ignored test (anymore): remove the line")
    }));
    problems
}

/// Run every gate.
pub fn ci(root: &Path) -> Result<()> {
    let consumer = has_consumer_tests(root)?;
    let nextest = Command::new(cargo())
        .args(["nextest", "--version"])
        .current_dir(root)
        .output()
        .is_ok_and(|o| o.status.success());
    let total = 11;
    let mut step = 0;
    let started = std::time::Instant::now();
    let mut lap = started;
    let mut next = |what: &str| {
        if step > 0 {
            eprintln!("---- ci [{step}/{total}] took {:.1?}", lap.elapsed());
        }
        lap = std::time::Instant::now();
        step += 1;
        banner(step, total, what);
    };

    next("cargo fmt --all --check");
    run(root, &["fmt", "--all", "--check"], &[])
        .context("formatting differs; fix: cargo fmt --all")?;

    next("cargo clippy --workspace --all-targets -- -D warnings");
    run(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;

    next("spec-extract --check");
    drift::apply(root, &spec::generate(root)?, Mode::Check, spec::FIX)?;

    next("regen-openapi --check");
    drift::apply(root, &openapi::generate(root)?, Mode::Check, openapi::FIX)?;

    next("regen-schema --check");
    let files = schema::generate(root)?;
    let extras = drift::stale_extras(root, schema::DIR, "json", &files);
    drift::apply_with_extras(root, &files, extras, Mode::Check, schema::FIX)?;

    next("compat (the code's contracts against contracts/blessed)");
    bless::compat(root)?;

    if consumer {
        next("consumer tests (cargo test -p consumer-tests) and pact drift");
        regen_pacts(root, Mode::Check)?;
    } else {
        next("consumer tests: skipped (no consumer-tests package yet)");
    }

    next("cargo nextest run --workspace --profile ci");
    if !nextest {
        bail!(
            "cargo-nextest is not installed; the compliance gate reads its JUnit report. fix: cargo install cargo-nextest --locked"
        );
    }
    let junit = root.join(results::JUNIT);
    let _ = std::fs::remove_file(&junit);
    run(
        root,
        &["nextest", "run", "--workspace", "--profile", "ci"],
        &[],
    )?;

    next("workspace test list and the reviewed ignored tests");
    let list = compliance::run_test_list(root)?;
    let problems = ignored_gate(root)?;
    if !problems.is_empty() {
        bail!(
            "{}\nci: ignored tests differ from the reviewed list",
            problems.join("\n")
        );
    }

    next("compliance --check and the evidence gate");
    drift::apply(
        root,
        &compliance::generate(root, &list)?,
        Mode::Check,
        compliance::FIX,
    )?;
    let results = results::TestResults::load(root, Some(&junit))?
        .with_context(|| format!("nextest wrote no {}", results::JUNIT))?;
    compliance::require_evidence(root, &list, &results)?;

    next("can-i-deploy (the current and the released pacts, as provider verification recorded)");
    crate::can_i_deploy::can_i_deploy(root)?;

    eprintln!("---- ci [{step}/{total}] took {:.1?}", lap.elapsed());
    eprintln!(
        "\n==== ci: all gates passed in {:.1?} ====",
        started.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-9019
    #[test]
    fn an_ignored_test_must_be_on_the_reviewed_list_and_the_list_must_be_current() {
        let ignored: std::collections::BTreeSet<String> =
            ["a/e2e::slow".to_string(), "a/e2e::new".to_string()].into();
        let file = "# header\na/e2e::slow  # needs a model\na/e2e::gone  # stale\n";
        let problems = ignored_problems(&ignored, file);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("a/e2e::new is ignored but not in ci/ignored-tests.txt"));
        assert!(problems[1].contains("lists a/e2e::gone, which is not an ignored test"));
        assert!(
            ignored_problems(&["a/e2e::slow".to_string()].into(), file)
                .iter()
                .all(|p| !p.contains("slow"))
        );
    }
}
