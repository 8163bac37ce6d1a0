use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xtask::drift::{self, DriftError, Mode};
use xtask::{bless, ci, compliance, dod, openapi, results, schema, spec, workspace_root};

/// OrchQueue's contract pipeline.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// specs/orchestrator-spec.md → requirements/index.yaml
    SpecExtract(Check),
    /// server utoipa annotations → contracts/openapi/{data,control}.yaml
    RegenOpenapi(Check),
    /// contracts wire types → contracts/schemas/*.schema.json
    RegenSchema(Check),
    /// consumer tests → contracts/pacts/*.json
    RegenPacts(Check),
    /// requirements × contracts × pacts × tests → COMPLIANCE.md
    Compliance {
        #[command(flatten)]
        check: Check,
        /// Output of `cargo test --workspace -- --list --format terse` (with cargo's
        /// `Running` lines); default: $XTASK_TEST_LIST, else run it.
        #[arg(long, value_name = "FILE")]
        test_list: Option<PathBuf>,
        /// Also run the evidence gate on this JUnit report (nextest profile `ci`):
        /// every active MUST needs a citing test that passed in it.
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
    },
    /// The definition-of-done checklist of one requirement, every box decided from
    /// evidence (the last test run's JUnit report); exits 1 while a box is open.
    Dod {
        /// Requirement ID, e.g. ORCH-1001.
        #[arg(required_unless_present = "changed")]
        id: Option<String>,
        /// Instead of one ID: the checklists of every requirement the change since
        /// this git revision touches (spec lines, x-req-id and covers: citations),
        /// as a block to paste into a pull request.
        #[arg(long, value_name = "BASE", conflicts_with = "id")]
        changed: Option<String>,
        #[arg(long, value_name = "FILE")]
        test_list: Option<PathBuf>,
        /// JUnit report of a test run; default: $XTASK_TEST_RESULTS, else
        /// target/nextest/ci/junit.xml.
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
    },
    /// Record the generated contracts as the blessed baseline (contracts/blessed/);
    /// refuses unless each changed document's version is bumped as its changes require.
    Bless,
    /// Classify every difference between the code's contracts and the blessed ones as
    /// breaking or compatible; fails on an unwaived breaking change.
    Compat,
    /// Fuzz the running server with requests generated from the OpenAPI documents
    /// (schemathesis): no 5xx, no response the document does not declare, no
    /// schema-valid request refused but for the state-dependent reasons of ORCH-9018.
    FuzzApi,
    /// Which consumer versions (the current pact and every released one) the current
    /// server satisfies, from provider verification's records; exits 1 if one does not.
    CanIDeploy,
    /// Mutation testing of the pure modules (cargo-mutants, `.cargo/mutants.toml`): fails
    /// on a surviving mutant that `ci/mutants-equivalent.txt` does not list with a reason.
    Mutants {
        /// Run only shard K of N (`K/N`), or `auto`: the shard the commit hash picks.
        #[arg(long, value_name = "K/N|auto")]
        shard: Option<String>,
    },
    /// Every gate: fmt, clippy, generators --check, consumer tests, tests, compliance.
    Ci,
}

#[derive(clap::Args)]
struct Check {
    /// Write nothing; on drift print a diff and the fixing command, exit 1.
    #[arg(long)]
    check: bool,
}

impl Check {
    fn mode(&self) -> Mode {
        if self.check { Mode::Check } else { Mode::Write }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let root = workspace_root();
    match cli.command {
        Cmd::SpecExtract(c) => {
            drift::apply(&root, &spec::generate(&root)?, c.mode(), spec::FIX)?;
        }
        Cmd::RegenOpenapi(c) => {
            drift::apply(&root, &openapi::generate(&root)?, c.mode(), openapi::FIX)?;
        }
        Cmd::RegenSchema(c) => {
            let files = schema::generate(&root)?;
            let extras = drift::stale_extras(&root, schema::DIR, "json", &files);
            drift::apply_with_extras(&root, &files, extras, c.mode(), schema::FIX)?;
        }
        Cmd::RegenPacts(c) => ci::regen_pacts(&root, c.mode())?,
        Cmd::Compliance {
            check,
            test_list,
            results,
        } => {
            let list = compliance::load_test_list(&root, test_list.as_deref())?;
            let files = compliance::generate(&root, &list)?;
            drift::apply(&root, &files, check.mode(), compliance::FIX)?;
            if let Some(file) = results {
                let results = results::TestResults::load(&root, Some(&file))?
                    .with_context(|| format!("no JUnit report at {}", file.display()))?;
                compliance::require_evidence(&root, &list, &results)?;
            }
        }
        Cmd::Dod {
            id,
            changed,
            test_list,
            results,
        } => {
            let index = spec::load_index(&root)?;
            let ids = match (id, changed) {
                (Some(id), _) => vec![id.trim().to_ascii_uppercase()],
                (None, Some(base)) => {
                    // IDs that merely appear in changed lines (fixtures, examples) are
                    // not requirements: say so and leave them out.
                    let (known, other): (Vec<String>, Vec<String>) =
                        dod::changed_ids(&root, &base)?
                            .into_iter()
                            .partition(|id| index.iter().any(|r| &r.id == id));
                    if !other.is_empty() {
                        eprintln!(
                            "dod --changed: {} appear in the change but are not requirements; left out",
                            other.join(", ")
                        );
                    }
                    known
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let mut reqs = Vec::new();
            for id in &ids {
                match index.iter().find(|r| &r.id == id) {
                    Some(r) => reqs.push(r),
                    None => {
                        eprintln!(
                            "error: {id} is not a requirement of {} (known: {} IDs, e.g. {}); run `cargo xtask spec-extract` if the spec is newer",
                            spec::INDEX_PATH,
                            index.len(),
                            index.first().map_or("none", |r| r.id.as_str())
                        );
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            let list = compliance::load_test_list(&root, test_list.as_deref())?;
            let ev = compliance::Evidence::gather(&root, &list)?;
            let results = results::TestResults::load(&root, results.as_deref())?;
            let mut all_done = true;
            if reqs.is_empty() {
                println!("The change touches no requirement.");
            }
            for req in reqs {
                let (text, done) = dod::checklist(&root, req, &ev, results.as_ref());
                print!("{text}");
                println!();
                all_done &= done;
            }
            if !all_done {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Bless => bless::bless(&root)?,
        Cmd::Compat => bless::compat(&root)?,
        Cmd::FuzzApi => xtask::fuzz::fuzz(&root)?,
        Cmd::Mutants { shard } => {
            let shard = shard
                .map(|s| xtask::mutants::Shard::parse(&root, &s))
                .transpose()?;
            xtask::mutants::run(&root, shard)?
        }
        Cmd::CanIDeploy => xtask::can_i_deploy::can_i_deploy(&root)?,
        Cmd::Ci => ci::ci(&root)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<DriftError>().is_some() => {
            // The diff and the fix are already on stderr.
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
