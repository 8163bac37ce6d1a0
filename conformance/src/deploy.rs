//! Which consumer versions the current server satisfies (ORCH-9022). Provider
//! verification records, for each pact it replays, the pact's content hash, the
//! hash of the contract documents it ran against and its outcome
//! (`target/pact-verifications/<pact>.json`); `cargo xtask can-i-deploy` reads
//! those records and says, for the current pact and every frozen pact of a released
//! client (`contracts/pacts/released/`), whether this exact pact was verified
//! against these exact documents — and fails when one was not, or failed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const RELEASED_DIR: &str = "contracts/pacts/released";
pub const CURRENT_DIR: &str = "contracts/pacts";
pub const RECORDS_DIR: &str = "target/pact-verifications";

/// One replay of one pact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The pact's path from the repository root.
    pub pact: String,
    pub pact_sha256: String,
    pub documents_sha256: String,
    pub verified: usize,
    pub failures: usize,
    /// Interactions skipped by a reviewed waiver.
    pub waived: Vec<String>,
}

/// An interaction of a released pact the server deliberately no longer honours.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Waiver {
    pub pact: String,
    pub interaction: String,
    pub reason: String,
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// One hash over the OpenAPI documents, in a fixed order.
pub fn documents_sha256(root: &Path) -> String {
    let mut hasher = Sha256::new();
    for name in crate::DOCUMENT_NAMES {
        let document = format!("contracts/openapi/{name}.yaml");
        hasher.update(std::fs::read(root.join(document)).unwrap_or_default());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn released_pacts(root: &Path) -> Result<Vec<PathBuf>> {
    json_files(&root.join(RELEASED_DIR))
}

/// The pacts the server must satisfy: the current one and every released one.
pub fn required_pacts(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = json_files(&root.join(CURRENT_DIR))?;
    files.extend(released_pacts(root)?);
    Ok(files)
}

pub fn load_waivers(root: &Path) -> Result<Vec<Waiver>> {
    let path = root.join(RELEASED_DIR).join("waivers.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml::from_str::<Option<Vec<Waiver>>>(&text)
            .map(Option::unwrap_or_default)
            .with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

fn record_path(root: &Path, pact: &str) -> PathBuf {
    root.join(RECORDS_DIR)
        .join(format!("{}.json", pact.replace('/', "__")))
}

pub fn write_record(root: &Path, record: &Record) -> Result<()> {
    let path = record_path(root, &record.pact);
    std::fs::create_dir_all(path.parent().expect("a records dir"))?;
    std::fs::write(&path, serde_json::to_string_pretty(record)?)
        .with_context(|| path.display().to_string())
}

pub fn read_record(root: &Path, pact: &str) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(root, pact)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The answer for one required pact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified against these documents, with the waived interactions named.
    Satisfied {
        verified: usize,
        waived: Vec<String>,
    },
    Failed {
        failures: usize,
    },
    /// No record of this pact content against these documents.
    Unverified {
        why: String,
    },
}

/// The verdict for a pact of content hash `pact_sha256` against documents of
/// hash `documents_sha256`, from its record if there is one.
pub fn verdict(record: Option<&Record>, pact_sha256: &str, documents_sha256: &str) -> Verdict {
    let Some(record) = record else {
        return Verdict::Unverified {
            why: "never verified: run provider verification (cargo nextest run -p orchestratord --test provider_verify)".into(),
        };
    };
    if record.pact_sha256 != pact_sha256 {
        return Verdict::Unverified {
            why: "the pact changed since it was verified".into(),
        };
    }
    if record.documents_sha256 != documents_sha256 {
        return Verdict::Unverified {
            why: "it was verified against other contract documents".into(),
        };
    }
    if record.failures > 0 {
        return Verdict::Failed {
            failures: record.failures,
        };
    }
    Verdict::Satisfied {
        verified: record.verified,
        waived: record.waived.clone(),
    }
}

/// The consumer a pact belongs to, for messages: `orchctl 0.1.0 (released)` or
/// `orchctl (current)`.
pub fn consumer_of(pact: &Path) -> String {
    let stem = pact
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let released = pact.parent().is_some_and(|p| p.ends_with("released"));
    match (released, stem.rsplit_once('-')) {
        (true, Some((name, version))) => format!("{name} {version} (released)"),
        _ => format!("{} (current)", stem.split('-').next().unwrap_or(&stem)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pact_sha: &str, docs_sha: &str, failures: usize) -> Record {
        Record {
            pact: "contracts/pacts/released/orchctl-0.1.0.json".into(),
            pact_sha256: pact_sha.into(),
            documents_sha256: docs_sha.into(),
            verified: 60,
            failures,
            waived: vec!["w".into()],
        }
    }

    // covers: ORCH-9022
    #[test]
    fn a_pact_is_satisfied_only_by_a_passing_record_of_its_content_and_these_documents() {
        assert_eq!(
            verdict(Some(&record("p", "d", 0)), "p", "d"),
            Verdict::Satisfied {
                verified: 60,
                waived: vec!["w".into()]
            }
        );
        assert_eq!(
            verdict(Some(&record("p", "d", 2)), "p", "d"),
            Verdict::Failed { failures: 2 }
        );
        assert!(matches!(
            verdict(Some(&record("old", "d", 0)), "p", "d"),
            Verdict::Unverified { .. }
        ));
        assert!(matches!(
            verdict(Some(&record("p", "old", 0)), "p", "d"),
            Verdict::Unverified { .. }
        ));
        assert!(matches!(
            verdict(None, "p", "d"),
            Verdict::Unverified { .. }
        ));
        assert_eq!(
            consumer_of(Path::new("contracts/pacts/released/orchctl-0.1.0.json")),
            "orchctl 0.1.0 (released)"
        );
        assert_eq!(
            consumer_of(Path::new("contracts/pacts/orchctl-orchestratord.json")),
            "orchctl (current)"
        );
    }
}
