//! The mutation proof's breakages still apply to the code they name: a mutant
//! whose `from` text an edit removed would make `.ci/run`'s proof fail long after
//! `cargo xtask ci` passed.

use std::process::Command;

// covers: ORCH-9023
#[test]
fn every_mutation_proof_mutant_still_applies() {
    let root = xtask::workspace_root();
    let work = tempfile::tempdir().expect("a scratch directory");
    let output = Command::new("bash")
        .arg(root.join("scripts/mutants/run.sh"))
        .args(["--worktree", "--dry-run"])
        .env("MUTANTS_WORKDIR", work.path())
        .current_dir(&root)
        .output()
        .expect("bash runs scripts/mutants/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("every mutant applies"),
        "a mutant of scripts/mutants/mutants.txt no longer applies; update its `from` text to the code it breaks:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
