//! `compliance`: the requirement → contract → pact → test matrix in `COMPLIANCE.md`,
//! and the evidence (test citations, pacts) that `dod` reuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use anyhow::{Context, Result, bail};
use regex::Regex;
use serde_json::Value;

use crate::drift::Generated;
use crate::openapi::{self, Operation};
use crate::results::TestResults;
use crate::spec::{self, Level, Requirement, Status};

pub const FIX: &str = "cargo xtask compliance";
pub const PATH: &str = "COMPLIANCE.md";
pub const PACTS_DIR: &str = "contracts/pacts";
/// Environment variable naming a precomputed test list (same as `--test-list`).
pub const TEST_LIST_ENV: &str = "XTASK_TEST_LIST";

static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"ORCH-[0-9]{4}").unwrap());
static COVERS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^//\s*covers:(.*)$").unwrap());
static TEST_ATTR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^#\[\s*(?:[A-Za-z_][A-Za-z0-9_]*::)*test\b").unwrap());
static FN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")
        .unwrap()
});
static INLINE_MOD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{\s*$").unwrap()
});
static RUNNING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*Running (?:unittests )?(\S+) \((?:.*[/\\])?([^/\\)]+?)(?:\.exe)?\)\s*$")
        .unwrap()
});
static DOCTESTS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\s*Doc-tests ").unwrap());
static LISTED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\S+): test$").unwrap());

// ---------------------------------------------------------------- workspace layout

/// A compilation target of a workspace package.
#[derive(Debug, Clone)]
pub struct Target {
    pub package: String,
    pub name: String,
    pub kind: String,
    pub src_path: PathBuf,
    pub package_dir: PathBuf,
}

/// Workspace packages and their targets, from `cargo metadata --no-deps`.
pub fn workspace_targets(root: &Path) -> Result<Vec<Target>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let mut targets = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default().to_string();
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        for t in pkg["targets"].as_array().into_iter().flatten() {
            targets.push(Target {
                package: name.clone(),
                name: t["name"].as_str().unwrap_or_default().to_string(),
                kind: t["kind"][0].as_str().unwrap_or_default().to_string(),
                src_path: PathBuf::from(t["src_path"].as_str().unwrap_or_default()),
                package_dir: dir.clone(),
            });
        }
    }
    Ok(targets)
}

// ---------------------------------------------------------------- the test list

/// Tests the workspace really runs: (package, target name) → test paths.
#[derive(Debug, Clone, Default)]
pub struct TestList {
    pub tests: BTreeMap<(String, String), BTreeSet<String>>,
}

impl TestList {
    /// Parse the combined stdout+stderr of
    /// `cargo test --workspace -- --list --format terse`: the `Running <src> (<binary>)`
    /// lines tell which target the following `name: test` lines belong to.
    pub fn parse(output: &str, targets: &[Target]) -> Self {
        let mut list = TestList::default();
        let mut current: Option<(String, String)> = None;
        for line in output.lines() {
            if let Some(c) = RUNNING.captures(line) {
                let src = c[1].replace('\\', "/");
                let stem = c[2].rsplit_once('-').map_or(&c[2], |(s, _)| s).to_string();
                current = targets
                    .iter()
                    .filter(|t| {
                        t.src_path
                            .to_string_lossy()
                            .replace('\\', "/")
                            .ends_with(&src)
                            && t.name.replace('-', "_") == stem
                    })
                    .map(|t| (t.package.clone(), t.name.clone()))
                    .next();
                continue;
            }
            if DOCTESTS.is_match(line) {
                current = None;
                continue;
            }
            if let (Some(key), Some(c)) = (&current, LISTED.captures(line.trim_end())) {
                list.tests
                    .entry(key.clone())
                    .or_default()
                    .insert(c[1].to_string());
            }
        }
        list
    }

    pub fn len(&self) -> usize {
        self.tests.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run `cargo test --workspace -- --list --format terse` and return its combined output.
pub fn run_test_list(root: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("compliance: listing the workspace tests (cargo test --workspace -- --list)");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{cargo}' test --workspace -- --list --format terse 2>&1"
        ))
        .current_dir(root)
        .output()
        .context("running cargo test --list")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("cargo test --workspace -- --list failed:\n{text}");
    }
    Ok(text)
}

/// The test list from `--test-list FILE`, `$XTASK_TEST_LIST`, or by running cargo.
pub fn load_test_list(root: &Path, file: Option<&Path>) -> Result<String> {
    let from_env = std::env::var_os(TEST_LIST_ENV).map(PathBuf::from);
    match file.map(Path::to_path_buf).or(from_env) {
        Some(f) => std::fs::read_to_string(&f)
            .with_context(|| format!("reading test list {}", f.display())),
        None => run_test_list(root),
    }
}

// ---------------------------------------------------------------- citations

/// A test function carrying a `// covers:` comment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Citation {
    /// File relative to the workspace root.
    pub file: String,
    pub line: usize,
    /// The inline modules (`mod name { … }`) around the function, outermost first,
    /// joined by `::`; empty at the file's top level. Two tests of one name in two
    /// inline modules are two tests, each credited only with its own citation.
    pub module: String,
    pub function: String,
    pub ids: Vec<String>,
}

/// Find `// covers:` comments attached to test functions in one source file.
pub fn scan_source(source: &str, file: &str) -> Vec<Citation> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, Vec<String>)> = None;
    let mut saw_test_attr = false;
    // Open inline modules as (indentation, name): rustfmt closes each with a `}` at
    // the indentation of its `mod` line.
    let mut modules: Vec<(usize, String)> = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let line = raw.trim();
        let indent = raw.len() - raw.trim_start().len();
        if line == "}" && modules.last().is_some_and(|(at, _)| *at == indent) {
            modules.pop();
        }
        if let Some(c) = INLINE_MOD.captures(line) {
            modules.push((indent, c[1].to_string()));
        }
        if let Some(c) = COVERS.captures(line) {
            let ids = ID
                .find_iter(&c[1])
                .map(|m| m.as_str().to_string())
                .collect();
            pending = Some((i + 1, ids));
            saw_test_attr = false;
            continue;
        }
        if pending.is_none() {
            continue;
        }
        if TEST_ATTR.is_match(line) {
            saw_test_attr = true;
            continue;
        }
        if line.starts_with("///") || line.starts_with("//") || line.starts_with("#[") {
            continue;
        }
        if let Some(c) = FN.captures(line)
            && saw_test_attr
            && let Some((at, ids)) = pending.take()
        {
            out.push(Citation {
                file: file.to_string(),
                line: at,
                module: modules
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect::<Vec<_>>()
                    .join("::"),
                function: c[1].to_string(),
                ids,
            });
        }
        pending = None;
        saw_test_attr = false;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file inside `src/` (`src/a/b.rs` → `a::b`, `src/lib.rs` → ``).
fn module_path(rel_to_src: &Path) -> String {
    let mut parts: Vec<String> = rel_to_src
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if !matches!(stem.as_str(), "lib" | "main" | "mod") {
            parts.push(stem);
        }
    }
    parts.join("::")
}

/// A citation that is backed by a listed test.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CitedTest {
    /// Display name, `package::target::test::path`.
    pub name: String,
    pub file: String,
    pub ids: Vec<String>,
    /// How a test run names it: `<nextest binary id> <test path>`, the key of
    /// [`crate::results::TestResults`].
    pub run_id: String,
}

/// Every citation in the workspace, each with the listed test it belongs to (if any).
pub fn citations(
    root: &Path,
    targets: &[Target],
    list: &TestList,
) -> Result<(Vec<CitedTest>, Vec<Citation>)> {
    let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for t in targets {
        dirs.insert(t.package.clone(), t.package_dir.clone());
    }
    let mut cited = Vec::new();
    let mut unlisted = Vec::new();
    for (package, dir) in &dirs {
        let mut files = Vec::new();
        rust_files(dir, &mut files);
        files.sort();
        for path in files {
            let rel = crate::display_path(root, &path);
            let source = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for c in scan_source(&source, &rel) {
                match find_listed(package, dir, &path, &c, targets, list) {
                    Some((name, run_id)) => cited.push(CitedTest {
                        name,
                        file: rel.clone(),
                        ids: c.ids.clone(),
                        run_id,
                    }),
                    None => unlisted.push(c),
                }
            }
        }
    }
    cited.sort();
    Ok((cited, unlisted))
}

/// The listed test a function of `file` corresponds to: (display name, run id).
fn find_listed(
    package: &str,
    package_dir: &Path,
    file: &Path,
    citation: &Citation,
    targets: &[Target],
    list: &TestList,
) -> Option<(String, String)> {
    let within_file = if citation.module.is_empty() {
        citation.function.clone()
    } else {
        format!("{}::{}", citation.module, citation.function)
    };
    let rel = file.strip_prefix(package_dir).ok()?;
    let first = rel.iter().next()?.to_string_lossy().into_owned();
    // Which targets can contain this file, and the module prefix of its tests.
    let (candidates, prefix): (Vec<&Target>, String) = if first == "tests" {
        let sub: Vec<_> = rel.iter().skip(1).collect();
        let tname = sub
            .first()?
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let inner = if sub.len() > 1 {
            module_path(&sub[1..].iter().collect::<PathBuf>())
        } else {
            String::new()
        };
        (
            targets
                .iter()
                .filter(|t| t.package == package && t.kind == "test" && t.name == tname)
                .collect(),
            inner,
        )
    } else if first == "src" {
        (
            targets
                .iter()
                .filter(|t| t.package == package && t.kind != "test")
                .collect(),
            module_path(&rel.iter().skip(1).collect::<PathBuf>()),
        )
    } else {
        (
            targets
                .iter()
                .filter(|t| {
                    t.package == package
                        && file.starts_with(t.src_path.parent().unwrap_or(Path::new("/")))
                })
                .collect(),
            String::new(),
        )
    };
    for t in candidates {
        let Some(tests) = list.tests.get(&(t.package.clone(), t.name.clone())) else {
            continue;
        };
        for name in tests {
            let in_place = name == &within_file || name.ends_with(&format!("::{within_file}"));
            if in_place && (prefix.is_empty() || name.starts_with(&prefix)) {
                let display = if t.kind == "test" {
                    format!("{}/{}::{}", t.package, t.name, name)
                } else {
                    format!("{}::{}", t.package, name)
                };
                return Some((display, format!("{} {name}", binary_id(t))));
            }
        }
    }
    None
}

/// nextest's name of a test binary: `package` (library), `package::target` (integration
/// test), `package::bin/target` (binary).
fn binary_id(t: &Target) -> String {
    match t.kind.as_str() {
        "lib" | "proc-macro" | "rlib" | "cdylib" => t.package.clone(),
        "test" => format!("{}::{}", t.package, t.name),
        kind => format!("{}::{kind}/{}", t.package, t.name),
    }
}

// ---------------------------------------------------------------- pacts

/// (pact file, interaction description) pairs of `contracts/pacts/*.json`.
pub fn pact_interactions(root: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(PACTS_DIR)) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let pact: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for i in pact["interactions"].as_array().into_iter().flatten() {
            if let Some(d) = i["description"].as_str() {
                out.push((file.clone(), d.to_string()));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- the matrix

/// All evidence about the requirements.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub requirements: Vec<Requirement>,
    pub operations: Vec<Operation>,
    pub pacts: Vec<(String, String)>,
    pub tests: Vec<CitedTest>,
    /// Citations whose test is not in the workspace test list (they do not count).
    pub unlisted: Vec<Citation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    Covered,
    ContractOnly,
    Uncovered,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Covered => "covered",
            Coverage::ContractOnly => "contract-only",
            Coverage::Uncovered => "uncovered",
        }
    }
}

impl Evidence {
    pub fn gather(root: &Path, test_list_output: &str) -> Result<Self> {
        let targets = workspace_targets(root)?;
        let list = TestList::parse(test_list_output, &targets);
        if list.is_empty() {
            bail!(
                "the workspace test list is empty; is it the output of `cargo test --workspace -- --list --format terse` (with cargo's `Running` lines)?"
            );
        }
        let (tests, unlisted) = citations(root, &targets, &list)?;
        Ok(Self {
            requirements: spec::load_index(root)?,
            operations: openapi::committed_operations(root)?,
            pacts: pact_interactions(root)?,
            tests,
            unlisted,
        })
    }

    pub fn operations_citing(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for op in &self.operations {
            if op.ids.iter().any(|i| i == id) {
                out.push(op.label());
            }
            for (status, ids) in &op.responses {
                if ids.iter().any(|i| i == id) {
                    out.push(format!("{} → {status}", op.label()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn pacts_citing(&self, id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .pacts
            .iter()
            .filter(|(_, d)| d.contains(id))
            .map(|(_, d)| d.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn tests_citing(&self, id: &str) -> Vec<&CitedTest> {
        self.tests
            .iter()
            .filter(|t| t.ids.iter().any(|i| i == id))
            .collect()
    }

    pub fn coverage(&self, id: &str) -> Coverage {
        if !self.tests_citing(id).is_empty() {
            Coverage::Covered
        } else if !self.operations_citing(id).is_empty() || !self.pacts_citing(id).is_empty() {
            Coverage::ContractOnly
        } else {
            Coverage::Uncovered
        }
    }

    /// IDs cited by tests that the index does not know.
    pub fn unknown_citations(&self) -> Vec<String> {
        let known: BTreeSet<&str> = self.requirements.iter().map(|r| r.id.as_str()).collect();
        let mut out = Vec::new();
        for t in &self.tests {
            for id in &t.ids {
                if !known.contains(id.as_str()) {
                    out.push(format!("{}: {} cites unknown {id}", t.file, t.name));
                }
            }
        }
        out
    }
}

fn short(text: &str) -> String {
    let clean = text.replace('|', "\\|");
    if clean.chars().count() <= 80 {
        clean
    } else {
        let mut s: String = clean.chars().take(79).collect();
        s = s.trim_end().to_string();
        s.push('…');
        s
    }
}

fn cell(items: &[String]) -> String {
    if items.is_empty() {
        "—".to_string()
    } else {
        items
            .iter()
            .map(|i| format!("`{}`", i.replace('|', "\\|").replace('`', "'")))
            .collect::<Vec<_>>()
            .join("<br>")
    }
}

fn level_str(l: Option<Level>) -> &'static str {
    l.map_or("—", Level::as_str)
}

/// Render `COMPLIANCE.md`.
pub fn render(ev: &Evidence) -> String {
    let mut out = String::new();
    out.push_str("<!-- GENERATED by `cargo xtask compliance` from requirements/index.yaml, contracts/ and the workspace tests — do not edit by hand -->\n");
    out.push_str("# Compliance matrix\n\n");
    out.push_str("Each requirement of `specs/orchestrator-spec.md` with the contract operations (`contracts/openapi/*.yaml`), pact interactions (`contracts/pacts/*.json`) and tests (`// covers:` citations of tests in the workspace test list) that cite it. Status: **covered** (at least one test), **contract-only** (cited by a contract or pact, no test), **uncovered**.\n\n");

    let active: Vec<&Requirement> = ev
        .requirements
        .iter()
        .filter(|r| r.status == Status::Active)
        .collect();

    out.push_str("## Summary\n\n");
    out.push_str("| level | active | covered | contract-only | uncovered | planned | retired |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut totals = [0usize; 6];
    for level in [
        Some(Level::Must),
        Some(Level::Should),
        Some(Level::May),
        None,
    ] {
        let of_level = |s: Status| {
            ev.requirements
                .iter()
                .filter(|r| r.level == level && r.status == s)
                .count()
        };
        let counts = [
            active.iter().filter(|r| r.level == level).count(),
            active
                .iter()
                .filter(|r| r.level == level && ev.coverage(&r.id) == Coverage::Covered)
                .count(),
            active
                .iter()
                .filter(|r| r.level == level && ev.coverage(&r.id) == Coverage::ContractOnly)
                .count(),
            active
                .iter()
                .filter(|r| r.level == level && ev.coverage(&r.id) == Coverage::Uncovered)
                .count(),
            of_level(Status::Planned),
            of_level(Status::Retired),
        ];
        if counts.iter().all(|c| *c == 0) {
            continue;
        }
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            level_str(level),
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            counts[4],
            counts[5]
        );
    }
    let _ = writeln!(
        out,
        "| **total** | {} | {} | {} | {} | {} | {} |\n",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );

    out.push_str("## Requirements\n\n");
    out.push_str(
        "| ID | level | requirement | contract operations | pact interactions | tests | status |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in &active {
        let tests: Vec<String> = ev
            .tests_citing(&r.id)
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            level_str(r.level),
            short(&r.text),
            cell(&ev.operations_citing(&r.id)),
            cell(&ev.pacts_citing(&r.id)),
            cell(&tests),
            ev.coverage(&r.id).as_str()
        );
    }

    out.push_str("\n## Planned\n\nSpecified, not built yet: no test is expected.\n\n");
    out.push_str(
        "| ID | level | requirement | contract operations | pact interactions | tests |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for r in ev
        .requirements
        .iter()
        .filter(|r| r.status == Status::Planned)
    {
        let tests: Vec<String> = ev
            .tests_citing(&r.id)
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.id,
            level_str(r.level),
            short(&r.text),
            cell(&ev.operations_citing(&r.id)),
            cell(&ev.pacts_citing(&r.id)),
            cell(&tests)
        );
    }

    out.push_str("\n## Retired\n\nIDs that are never reused.\n\n");
    out.push_str("| ID | note |\n| --- | --- |\n");
    for r in ev
        .requirements
        .iter()
        .filter(|r| r.status == Status::Retired)
    {
        let _ = writeln!(out, "| {} | {} |", r.id, short(&r.text));
    }

    if !ev.unlisted.is_empty() {
        out.push_str("\n## Citations that do not count\n\nThese `// covers:` comments sit on tests that are not in the workspace test list.\n\n");
        for c in &ev.unlisted {
            let _ = writeln!(
                out,
                "- `{}:{}` `{}` ({})",
                c.file,
                c.line,
                c.function,
                c.ids.join(", ")
            );
        }
    }
    out
}

/// The evidence gate (ORCH-9016): every active MUST needs a citing test that passed in
/// `results`. Returns one line per requirement without one, saying what its tests did.
pub fn evidence_gate(ev: &Evidence, results: &TestResults) -> Vec<String> {
    let mut problems = Vec::new();
    for r in ev
        .requirements
        .iter()
        .filter(|r| r.status == Status::Active && r.level == Some(Level::Must))
    {
        let tests = ev.tests_citing(&r.id);
        if tests.iter().any(|t| results.passed(&t.run_id)) {
            continue;
        }
        let why = if tests.is_empty() {
            "no listed test cites it".to_string()
        } else {
            tests
                .iter()
                .map(|t| format!("{} {}", t.name, results.outcome(&t.run_id)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push(format!(
            "{} (MUST) has no citing test that passed in {}: {why}",
            r.id, results.source
        ));
    }
    problems
}

/// Run [`evidence_gate`] and fail with every problem, or print the counts.
pub fn require_evidence(root: &Path, test_list: &str, results: &TestResults) -> Result<()> {
    let ev = Evidence::gather(root, test_list)?;
    let problems = evidence_gate(&ev, results);
    if !problems.is_empty() {
        bail!(
            "{}\ncompliance: {} MUST requirement(s) without a passing test in this run; write or un-skip a test that asserts each",
            problems.join("\n"),
            problems.len()
        );
    }
    eprintln!(
        "compliance: every active MUST has a citing test that passed ({} passed, {} skipped, {} failed in {})",
        results.passed.len(),
        results.skipped.len(),
        results.failed.len(),
        results.source
    );
    Ok(())
}

/// The generator.
pub fn generate(root: &Path, test_list_output: &str) -> Result<Vec<Generated>> {
    let ev = Evidence::gather(root, test_list_output)?;
    let unknown = ev.unknown_citations();
    if !unknown.is_empty() {
        bail!(
            "{}\ncompliance: tests cite IDs absent from {}",
            unknown.join("\n"),
            spec::INDEX_PATH
        );
    }
    Ok(vec![Generated::new(PATH, render(&ev))])
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-9010
    #[test]
    fn citations_attach_to_test_functions_only() {
        let src = r#"
COVERS ORCH-1001, ORCH-2010
#[test]
fn first() {}

COVERS ORCH-1002
/// Doc comment between.
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn second() {}

COVERS ORCH-1003
fn not_a_test() {}

COVERS ORCH-1004

#[test]
fn detached_by_blank_line() {}
"#
        .replace("COVERS", concat!("//", " covers:"));
        let c = scan_source(&src, "x.rs");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].function, "first");
        assert_eq!(c[0].ids, ["ORCH-1001", "ORCH-2010"]);
        assert_eq!(c[1].function, "second");
        assert_eq!(c[1].ids, ["ORCH-1002"]);
    }

    // covers: ORCH-9010, ORCH-9016
    #[test]
    fn a_citation_knows_the_inline_module_of_its_test() {
        let src = r#"
mod sqlite {
    COVERS ORCH-1001
    #[test]
    fn case() {}
}

mod postgres {
    mod inner {
        COVERS ORCH-1002
        #[test]
        fn case() {}
    }
}

COVERS ORCH-1003
#[test]
fn top() {}
"#
        .replace("COVERS", concat!("//", " covers:"));
        let c = scan_source(&src, "x.rs");
        let found: Vec<(&str, &str)> = c
            .iter()
            .map(|c| (c.module.as_str(), c.function.as_str()))
            .collect();
        assert_eq!(
            found,
            [("sqlite", "case"), ("postgres::inner", "case"), ("", "top")]
        );
    }

    fn cited(module: &str, function: &str) -> Citation {
        Citation {
            file: "x.rs".into(),
            line: 1,
            module: module.into(),
            function: function.into(),
            ids: vec!["ORCH-1001".into()],
        }
    }

    // covers: ORCH-9007, ORCH-9010
    #[test]
    fn test_list_maps_tests_to_targets() {
        let targets = vec![
            Target {
                package: "xtask".into(),
                name: "xtask".into(),
                kind: "lib".into(),
                src_path: "/w/xtask/src/lib.rs".into(),
                package_dir: "/w/xtask".into(),
            },
            Target {
                package: "xtask".into(),
                name: "generators_fresh".into(),
                kind: "test".into(),
                src_path: "/w/xtask/tests/generators_fresh.rs".into(),
                package_dir: "/w/xtask".into(),
            },
        ];
        let out = "\
     Running unittests src/lib.rs (target/debug/deps/xtask-0123abcd)
spec::tests::duplicate: test
     Running tests/generators_fresh.rs (target/debug/deps/generators_fresh-99ff)
fresh: test
   Doc-tests xtask
src/lib.rs - x (line 3): test
";
        let list = TestList::parse(out, &targets);
        assert_eq!(list.len(), 2);
        let lib = &list.tests[&("xtask".to_string(), "xtask".to_string())];
        assert!(lib.contains("spec::tests::duplicate"));
        let found = find_listed(
            "xtask",
            Path::new("/w/xtask"),
            Path::new("/w/xtask/src/spec.rs"),
            &cited("tests", "duplicate"),
            &targets,
            &list,
        );
        assert_eq!(
            found,
            Some((
                "xtask::spec::tests::duplicate".to_string(),
                "xtask spec::tests::duplicate".to_string()
            ))
        );
        let missing = find_listed(
            "xtask",
            Path::new("/w/xtask"),
            Path::new("/w/xtask/src/drift.rs"),
            &cited("tests", "duplicate"),
            &targets,
            &list,
        );
        assert_eq!(missing, None);
        let it = find_listed(
            "xtask",
            Path::new("/w/xtask"),
            Path::new("/w/xtask/tests/generators_fresh.rs"),
            &cited("", "fresh"),
            &targets,
            &list,
        );
        assert_eq!(
            it,
            Some((
                "xtask/generators_fresh::fresh".to_string(),
                "xtask::generators_fresh fresh".to_string()
            ))
        );
    }

    #[test]
    fn short_text_is_at_most_80_chars() {
        let s = short(&"word ".repeat(40));
        assert!(s.chars().count() <= 80);
        assert!(s.ends_with('…'));
        assert_eq!(short("a | b"), "a \\| b");
    }
}
