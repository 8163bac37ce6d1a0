use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::drift::{self, DriftError, Mode};
use xtask::{ci, compliance, dod, openapi, schema, spec, workspace_root};

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
    },
    /// The definition-of-done checklist of one requirement.
    Dod {
        /// Requirement ID, e.g. ORCH-1001.
        id: String,
        #[arg(long, value_name = "FILE")]
        test_list: Option<PathBuf>,
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
        Cmd::Compliance { check, test_list } => {
            let list = compliance::load_test_list(&root, test_list.as_deref())?;
            let files = compliance::generate(&root, &list)?;
            drift::apply(&root, &files, check.mode(), compliance::FIX)?;
        }
        Cmd::Dod { id, test_list } => {
            let id = id.trim().to_ascii_uppercase();
            let index = spec::load_index(&root)?;
            let Some(req) = index.iter().find(|r| r.id == id) else {
                eprintln!(
                    "error: {id} is not a requirement of {} (known: {} IDs, e.g. {}); run `cargo xtask spec-extract` if the spec is newer",
                    spec::INDEX_PATH,
                    index.len(),
                    index.first().map_or("none", |r| r.id.as_str())
                );
                return Ok(ExitCode::from(2));
            };
            let list = compliance::load_test_list(&root, test_list.as_deref())?;
            let ev = compliance::Evidence::gather(&root, &list)?;
            let (text, _done) = dod::checklist(&root, req, &ev);
            print!("{text}");
        }
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
