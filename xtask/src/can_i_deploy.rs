//! `cargo xtask can-i-deploy` (ORCH-9022): which consumer versions the current
//! server satisfies, from the verification records provider verification wrote
//! (`conformance::deploy`). Every pact in `contracts/pacts/` and
//! `contracts/pacts/released/` must have a passing record of its exact content
//! against the exact contract documents of this checkout; otherwise it exits 1.

use std::path::Path;

use anyhow::{Result, bail};
use conformance::deploy::{self, Verdict};

use crate::display_path;

pub fn can_i_deploy(root: &Path) -> Result<()> {
    let documents = deploy::documents_sha256(root);
    let mut problems = Vec::new();
    for pact in deploy::required_pacts(root)? {
        let relative = display_path(root, &pact);
        let consumer = deploy::consumer_of(&pact);
        let record = deploy::read_record(root, &relative);
        match deploy::verdict(record.as_ref(), &deploy::sha256_file(&pact), &documents) {
            Verdict::Satisfied { verified, waived } => {
                println!(
                    "can-i-deploy: {consumer}: yes ({verified} interactions verified, {relative})"
                );
                for interaction in waived {
                    println!("  waived: {interaction}");
                }
            }
            Verdict::Failed { failures } => {
                println!(
                    "can-i-deploy: {consumer}: NO — {failures} interaction(s) failed ({relative})"
                );
                problems.push(consumer);
            }
            Verdict::Unverified { why } => {
                println!("can-i-deploy: {consumer}: NO — {why} ({relative})");
                problems.push(consumer);
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "can-i-deploy: the current server does not satisfy {}",
            problems.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::Record;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn record(root: &Path, pact: &str, failures: usize) {
        deploy::write_record(
            root,
            &Record {
                pact: pact.into(),
                pact_sha256: deploy::sha256_file(&root.join(pact)),
                documents_sha256: deploy::documents_sha256(root),
                verified: 3,
                failures,
                waived: vec![],
            },
        )
        .unwrap();
    }

    // covers: ORCH-9022
    #[test]
    fn it_exits_1_while_a_consumer_it_must_support_fails_or_was_not_verified() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "contracts/openapi/data.yaml", "openapi: 3.1.0\n");
        write(root, "contracts/openapi/control.yaml", "openapi: 3.1.0\n");
        write(root, "contracts/pacts/orchctl-orchestratord.json", "{}");
        write(
            root,
            "contracts/pacts/released/orchctl-0.1.0.json",
            "{\"v\":1}",
        );
        record(root, "contracts/pacts/orchctl-orchestratord.json", 0);
        // The released client was never verified.
        assert!(can_i_deploy(root).is_err());
        record(root, "contracts/pacts/released/orchctl-0.1.0.json", 1);
        let error = can_i_deploy(root).unwrap_err().to_string();
        assert!(error.contains("orchctl 0.1.0 (released)"), "{error}");
        record(root, "contracts/pacts/released/orchctl-0.1.0.json", 0);
        can_i_deploy(root).unwrap();
        // A document changed after the verification: the records no longer answer.
        write(root, "contracts/openapi/data.yaml", "openapi: 3.1.1\n");
        assert!(can_i_deploy(root).is_err());
    }
}
