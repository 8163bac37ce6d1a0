//! `fuzz-api`: the document-driven fuzzer (ORCH-9018). Schemathesis generates requests
//! from each committed OpenAPI document and sends them to a real `orchestratord` on
//! loopback (a fresh store, fast builtin engines): no 5xx, every response as the
//! document declares it (status, headers, body, each SSE frame), and no schema-valid
//! request refused except for the state-dependent reasons the spec lists
//! (`scripts/fuzz/hooks.py`). Bounded: a fixed seed and a fixed number of examples per
//! operation.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::openapi;

/// Examples per operation and phase (schemathesis `--max-examples`).
pub const EXAMPLES: u32 = 50;
pub const SEED: u64 = 42;
const SCHEMATHESIS_VERSION: &str = "4.32.5";
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,state_independent_acceptance";

/// The server's config: the default pool, with engines fast enough that every stream
/// the fuzzer opens ends at once.
const CONFIG: &str = "\
pools:
  - id: default
    replicas:
      - id: r0
        engine: {kind: builtin, tokens_per_s: 100000, ttft_ms: 0, slots: 8}
      - id: r1
        engine: {kind: builtin, tokens_per_s: 100000, ttft_ms: 0, slots: 8}
";

fn schemathesis() -> Result<PathBuf> {
    let path = match std::env::var_os("ORCH_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            std::env::var_os("ORCH_TOOLS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(home).join(".cache/orchqueue/tools"))
                .join("venv/bin/schemathesis")
        }
    };
    if !path.is_file() {
        bail!(
            "schemathesis {SCHEMATHESIS_VERSION} is not installed at {}; fix: bash scripts/tools/setup.sh (or set ORCH_SCHEMATHESIS)",
            path.display()
        );
    }
    Ok(path)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A running `orchestratord` that is killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(binary: &Path) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("fuzz.yaml");
    std::fs::write(&config, CONFIG)?;
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("store.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?);
    let mut line = String::new();
    let url = loop {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            let _ = child.kill();
            bail!("orchestratord exited before saying where it listens");
        }
        if let Some(url) = line.trim().strip_prefix("orchestratord listening on ") {
            break url.to_string();
        }
    };
    // Keep reading its log so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Ok(Server {
        url,
        child,
        _dir: dir,
    })
}

/// Fuzz every committed OpenAPI document; fails on the first document with a failure.
pub fn fuzz(root: &Path) -> Result<()> {
    let fuzzer = schemathesis()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "orchestratord",
            "--bin",
            "orchestratord",
        ])
        .current_dir(root)
        .status()
        .context("building orchestratord")?;
    if !status.success() {
        bail!("cargo build -p orchestratord failed");
    }
    let binary = target_dir(root).join("debug/orchestratord");
    let hooks = root.join("scripts/fuzz");
    for (name, path) in openapi::DOCUMENTS {
        let server = start_server(&binary)?;
        let work = tempfile::tempdir()?;
        eprintln!(
            "fuzz-api: {path} against {} (schemathesis {SCHEMATHESIS_VERSION}, seed {SEED}, {EXAMPLES} examples per operation and phase)",
            server.url
        );
        let output = Command::new(&fuzzer)
            .arg("run")
            .arg(root.join(path))
            .args(["--url", &server.url])
            .args(["--mode", "positive"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", &EXAMPLES.to_string()])
            .args(["--seed", &SEED.to_string()])
            .args(["--workers", "1"])
            .args(["--checks", CHECKS])
            .args(["--request-timeout", "10"])
            .args(["--generation-database", "none"])
            .args(["--no-color", "--output-truncate", "false"])
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &hooks)
            .current_dir(work.path())
            .output()
            .context("running schemathesis")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            eprint!("{text}{}", String::from_utf8_lossy(&output.stderr));
            bail!(
                "fuzz-api: {name}: schema-valid requests broke the contract (above); reproduce with `cargo xtask fuzz-api`"
            );
        }
        let summary = text
            .lines()
            .skip_while(|l| !l.starts_with("Test cases:"))
            .nth(1)
            .unwrap_or("(no summary)")
            .trim();
        eprintln!("fuzz-api: {name}: {summary}");
    }
    Ok(())
}
