//! The GitHub Actions workflow is linted by actionlint (installed by
//! `scripts/tools/setup.sh`, which `.ci/run` calls).

use std::path::PathBuf;
use std::process::Command;

fn actionlint() -> PathBuf {
    if let Some(path) = std::env::var_os("ORCH_ACTIONLINT") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cache = std::env::var_os("ORCH_TOOLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache/orchqueue/tools"));
    cache.join("venv/bin/actionlint")
}

// covers: ORCH-9017
#[test]
fn the_github_workflow_passes_actionlint() {
    let root = xtask::workspace_root();
    let bin = actionlint();
    assert!(
        bin.is_file(),
        "actionlint is not installed at {}; fix: bash scripts/tools/setup.sh (or set ORCH_ACTIONLINT)",
        bin.display()
    );
    let workflow = root.join(".github/workflows/ci.yml");
    let text = std::fs::read_to_string(&workflow).expect("the workflow exists");
    assert!(
        text.contains("bash .ci/run"),
        "the workflow must run the README's test command through .ci/run"
    );
    let out = Command::new(&bin)
        .arg("-no-color")
        .arg(&workflow)
        .current_dir(&root)
        .output()
        .expect("actionlint runs");
    assert!(
        out.status.success(),
        "actionlint found problems in .github/workflows/ci.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
