//! `cargo xtask mutants` (ORCH-9021): cargo-mutants over the pure modules named in
//! `.cargo/mutants.toml`, judged by the server's unit and property tests. A surviving
//! mutant fails unless `ci/mutants-equivalent.txt` lists it with the reason it behaves
//! like the original; a listed mutant that is caught, or no longer exists, fails too,
//! so the list stays true.
//!
//! The mutants run in place (each is restored before the next), so the build reuses
//! `target/` and a mutant costs one incremental rebuild of the server library. With
//! `--shard K/N` only every N-th mutant runs; `--shard auto` takes the shard from the
//! commit, so CI bounds its time and successive commits cover every mutant.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub const EQUIVALENT_LIST: &str = "ci/mutants-equivalent.txt";
/// The version `scripts/tools/setup.sh` installs.
pub const CARGO_MUTANTS_VERSION: &str = "27.1.0";
/// `--shard auto` splits the mutants in this many shards.
pub const AUTO_SHARDS: u32 = 4;
const OUT: &str = "target/cargo-mutants";

/// Which mutants to run: all, or shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `K/N` with K < N, or `auto`: shard (commit hash mod N) of [`AUTO_SHARDS`].
    pub fn parse(root: &Path, text: &str) -> Result<Self> {
        if text == "auto" {
            let head = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(root)
                .output()
                .context("git rev-parse HEAD")?;
            let hash = String::from_utf8_lossy(&head.stdout);
            let low = u32::from_str_radix(hash.trim().get(..8).unwrap_or("0"), 16).unwrap_or(0);
            return Ok(Self {
                index: low % AUTO_SHARDS,
                count: AUTO_SHARDS,
            });
        }
        let parsed = text
            .split_once('/')
            .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => bail!("--shard {text:?}: expected K/N with 0 <= K < N, or auto"),
        }
    }
}

/// One tested mutant: its key (file and what changed, without line numbers, so the
/// equivalent list survives edits elsewhere in the file) and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub key: String,
    pub name: String,
    pub summary: String,
}

/// Tested mutants from cargo-mutants' `outcomes.json`.
pub fn outcomes(json: &Value) -> Vec<Outcome> {
    json["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let mutant = o["scenario"].get("Mutant")?;
            let name = mutant["name"].as_str()?.to_owned();
            Some(Outcome {
                key: key_of(&name),
                name,
                summary: o["summary"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// `server/src/queue.rs:61:12: delete ! in f` → `server/src/queue.rs: delete ! in f`.
fn key_of(name: &str) -> String {
    let mut parts = name.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(_line), Some(_col), Some(rest)) => format!("{file}:{rest}"),
        _ => name.to_owned(),
    }
}

/// Everything wrong with a run: survivors not on the list, list lines without a
/// reason, and listed mutants that were tested and caught (or, in a full run, that
/// no longer exist).
pub fn problems(tested: &[Outcome], list: &str, full_run: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for (n, line) in list.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(" # ") {
            Some((key, reason)) if !reason.trim().is_empty() => {
                listed.insert(key.trim().to_owned());
            }
            _ => problems.push(format!(
                "{EQUIVALENT_LIST}:{}: `{line}` gives no reason; write `<mutant> # <why it is equivalent>`",
                n + 1
            )),
        }
    }
    for outcome in tested {
        let survived = outcome.summary == "MissedMutant";
        if survived && !listed.contains(&outcome.key) {
            problems.push(format!(
                "survived: {} — kill it with a test, or list `{}` in {EQUIVALENT_LIST} with the reason it is equivalent",
                outcome.name, outcome.key
            ));
        }
    }
    // Whether an entry is still true needs every mutant: a key (no line, no
    // column) can name several mutants of one function, the equivalent one in
    // another shard than those the tests catch.
    if full_run {
        for key in &listed {
            let mut with_key = tested.iter().filter(|o| &o.key == key).peekable();
            if with_key.peek().is_none() {
                problems.push(format!(
                    "{EQUIVALENT_LIST} lists `{key}`, which is no longer a mutant: remove the line"
                ));
            } else if with_key.all(|o| o.summary == "CaughtMutant") {
                problems.push(format!(
                    "{EQUIVALENT_LIST} lists `{key}`, which the tests now catch: remove the line"
                ));
            }
        }
    }
    problems
}

fn cargo_mutants() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORCH_CARGO_MUTANTS") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cached = std::env::var_os("ORCH_TOOLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache/orchqueue/tools"))
        .join("cargo/bin/cargo-mutants");
    if !cached.is_file() {
        bail!(
            "cargo-mutants {CARGO_MUTANTS_VERSION} is not installed at {}; fix: bash scripts/tools/setup.sh (or set ORCH_CARGO_MUTANTS)",
            cached.display()
        );
    }
    Ok(cached)
}

/// Run the mutants (all, or one shard) and judge the survivors.
pub fn run(root: &Path, shard: Option<Shard>) -> Result<()> {
    let tool = cargo_mutants()?;
    let started = std::time::Instant::now();
    let mut cmd = Command::new(&tool);
    cmd.args(["mutants", "--in-place", "--no-shuffle", "--output", OUT])
        .current_dir(root);
    if let Some(shard) = shard {
        cmd.arg("--shard")
            .arg(format!("{}/{}", shard.index, shard.count));
    }
    let what = match shard {
        Some(s) => format!("shard {}/{} of the mutants", s.index, s.count),
        None => "every mutant".to_owned(),
    };
    eprintln!("mutants: {what} of .cargo/mutants.toml, in place");
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", tool.display()))?;
    // 0: all caught; 2: some missed; 3: some timed out. Anything else means the
    // run itself failed (the unmutated baseline, a usage error).
    if !matches!(status.code(), Some(0 | 2 | 3)) {
        bail!("cargo mutants failed ({status}); its log is under {OUT}/mutants.out");
    }
    let report = root.join(OUT).join("mutants.out/outcomes.json");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&report).with_context(|| report.display().to_string())?,
    )
    .with_context(|| report.display().to_string())?;
    let tested = outcomes(&json);
    let count = |s: &str| tested.iter().filter(|o| o.summary == s).count();
    eprintln!(
        "mutants: {} tested in {:.0?}: {} caught, {} missed, {} unviable, {} timed out",
        tested.len(),
        started.elapsed(),
        count("CaughtMutant"),
        count("MissedMutant"),
        count("Unviable"),
        count("Timeout"),
    );
    let list_path = root.join(EQUIVALENT_LIST);
    let list = std::fs::read_to_string(&list_path).unwrap_or_default();
    let problems = problems(&tested, &list, shard.is_none());
    if !problems.is_empty() {
        bail!(
            "{}\nmutants: {} problem(s)",
            problems.join("\n"),
            problems.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tested(name: &str, summary: &str) -> Outcome {
        Outcome {
            key: key_of(name),
            name: name.into(),
            summary: summary.into(),
        }
    }

    // covers: ORCH-9021
    #[test]
    fn a_survivor_fails_unless_listed_with_a_reason_and_the_list_stays_true() {
        let run = [
            tested(
                "server/src/queue.rs:10:5: replace < with <= in f",
                "MissedMutant",
            ),
            tested("server/src/queue.rs:20:5: delete ! in g", "MissedMutant"),
            tested(
                "server/src/queue.rs:30:5: replace h -> u32 with 0",
                "CaughtMutant",
            ),
            tested(
                "server/src/queue.rs:31:5: replace h -> u32 with 1",
                "Unviable",
            ),
        ];
        let list = "# header\n\
            server/src/queue.rs: replace < with <= in f # equal keys never meet here\n\
            server/src/queue.rs: replace h -> u32 with 0 # stale\n\
            server/src/queue.rs: gone in k # removed function\n\
            server/src/queue.rs: no reason\n";
        // Another `<` of `f` with the same key, which the tests catch: the entry
        // still names the survivor at 10:5.
        let mut run = run.to_vec();
        run.push(tested(
            "server/src/queue.rs:12:9: replace < with <= in f",
            "CaughtMutant",
        ));
        let full = problems(&run, list, true);
        assert_eq!(full.len(), 4, "{full:#?}");
        assert!(full[0].contains(":5: `server/src/queue.rs: no reason` gives no reason"));
        assert!(full[1].starts_with("survived: server/src/queue.rs:20:5: delete ! in g"));
        assert!(
            full[3].contains(
                "`server/src/queue.rs: replace h -> u32 with 0`, which the tests now catch"
            )
        );
        assert!(full[2].contains("`server/src/queue.rs: gone in k`, which is no longer a mutant"));
        // A shard does not see every mutant: whether an entry is stale waits for a
        // full run, and a caught mutant sharing a listed key is no problem there.
        let shard = problems(&run, list, false);
        assert_eq!(shard.len(), 2, "{shard:#?}");
        // The key ignores line and column, so edits above a listed mutant keep it listed.
        assert_eq!(
            key_of("server/src/queue.rs:10:5: replace < with <= in f"),
            "server/src/queue.rs: replace < with <= in f"
        );
    }

    // covers: ORCH-9021
    #[test]
    fn outcomes_are_read_from_the_cargo_mutants_report() {
        let json: Value = serde_json::json!({"outcomes": [
            {"scenario": "Baseline", "summary": "Success"},
            {"scenario": {"Mutant": {"name": "a.rs:1:2: delete ! in f"}}, "summary": "MissedMutant"}
        ]});
        assert_eq!(
            outcomes(&json),
            vec![Outcome {
                key: "a.rs: delete ! in f".into(),
                name: "a.rs:1:2: delete ! in f".into(),
                summary: "MissedMutant".into()
            }]
        );
        let root = Path::new(".");
        assert_eq!(
            Shard::parse(root, "1/3").unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert!(Shard::parse(root, "3/3").is_err());
        assert!(Shard::parse(root, "x").is_err());
    }
}
