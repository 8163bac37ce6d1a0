//! The one check/diff/write implementation shared by every generator.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use similar::TextDiff;

/// A file a generator produces: its path relative to the workspace root and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub path: PathBuf,
    pub contents: String,
}

impl Generated {
    pub fn new(path: impl Into<PathBuf>, contents: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
        }
    }
}

/// Write the files, or (check mode) compare them with what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Write,
    Check,
}

/// One generated file that differs from the committed one.
#[derive(Debug, Clone)]
pub struct Drift {
    pub path: String,
    /// Unified diff from the file on disk (`a/`) to the expected content (`b/`).
    pub diff: String,
}

/// Raised in check mode when at least one file drifted; the report is already printed.
#[derive(Debug)]
pub struct DriftError {
    pub fix: String,
    pub files: Vec<String>,
}

impl std::fmt::Display for DriftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generated files are stale: {}\nfix: {}",
            self.files.join(", "),
            self.fix
        )
    }
}

impl std::error::Error for DriftError {}

/// Compare the expected files with the disk; a missing file drifts against empty content.
pub fn check(root: &Path, files: &[Generated]) -> Result<Vec<Drift>> {
    let mut drifts = Vec::new();
    for file in files {
        let full = root.join(&file.path);
        let on_disk = match fs::read_to_string(&full) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", full.display())),
        };
        if on_disk.as_deref() == Some(file.contents.as_str()) {
            continue;
        }
        let path = file.path.to_string_lossy().replace('\\', "/");
        let old = on_disk.clone().unwrap_or_default();
        let old_header = if on_disk.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".to_string()
        };
        let diff = TextDiff::from_lines(&old, &file.contents)
            .unified_diff()
            .context_radius(3)
            .header(&old_header, &format!("b/{path}"))
            .to_string();
        drifts.push(Drift { path, diff });
    }
    Ok(drifts)
}

/// Files present on disk under `dir` (relative to root) with extension `ext` that the
/// generator no longer produces: they drift too (expected content: absent).
pub fn stale_extras(root: &Path, dir: &str, ext: &str, files: &[Generated]) -> Vec<Drift> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(root.join(dir)) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    for p in paths {
        let rel = Path::new(dir).join(p.file_name().unwrap_or_default());
        if files.iter().any(|f| f.path == rel) {
            continue;
        }
        let old = fs::read_to_string(&p).unwrap_or_default();
        let path = rel.to_string_lossy().replace('\\', "/");
        let diff = TextDiff::from_lines(old.as_str(), "")
            .unified_diff()
            .header(&format!("a/{path}"), "/dev/null")
            .to_string();
        out.push(Drift { path, diff });
    }
    out
}

/// Render drifts as the report printed by `--check`.
pub fn report(drifts: &[Drift], fix: &str) -> String {
    let mut out = String::new();
    for d in drifts {
        let _ = writeln!(out, "drift: {} is not what the generator produces", d.path);
        out.push_str(&d.diff);
        if !d.diff.ends_with('\n') {
            out.push('\n');
        }
    }
    let _ = writeln!(out, "fix: {fix}");
    out
}

/// Write (or check) the generated files. In check mode nothing is written; on drift the
/// diff and the fixing command are printed to stderr and a [`DriftError`] is returned.
pub fn apply(root: &Path, files: &[Generated], mode: Mode, fix: &str) -> Result<()> {
    apply_with_extras(root, files, Vec::new(), mode, fix)
}

/// Like [`apply`], with files to delete (stale extras found by [`stale_extras`]).
pub fn apply_with_extras(
    root: &Path,
    files: &[Generated],
    extras: Vec<Drift>,
    mode: Mode,
    fix: &str,
) -> Result<()> {
    match mode {
        Mode::Check => {
            let mut drifts = check(root, files)?;
            drifts.extend(extras);
            if drifts.is_empty() {
                return Ok(());
            }
            eprint!("{}", report(&drifts, fix));
            Err(DriftError {
                fix: fix.to_string(),
                files: drifts.into_iter().map(|d| d.path).collect(),
            }
            .into())
        }
        Mode::Write => {
            for file in files {
                let full = root.join(&file.path);
                if fs::read_to_string(&full).ok().as_deref() == Some(file.contents.as_str()) {
                    continue;
                }
                if let Some(parent) = full.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                fs::write(&full, &file.contents)
                    .with_context(|| format!("writing {}", full.display()))?;
                eprintln!("wrote {}", file.path.display());
            }
            for extra in extras {
                let full = root.join(&extra.path);
                fs::remove_file(&full).with_context(|| format!("removing {}", full.display()))?;
                eprintln!("removed {}", extra.path);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-9009
    #[test]
    fn check_mode_reports_a_diff_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        let files = vec![Generated::new("a.txt", "one\nthree\n")];
        let drifts = check(dir.path(), &files).unwrap();
        assert_eq!(drifts.len(), 1);
        assert!(drifts[0].diff.contains("-two"), "{}", drifts[0].diff);
        assert!(drifts[0].diff.contains("+three"), "{}", drifts[0].diff);
        let err = apply(dir.path(), &files, Mode::Check, "cargo xtask x").unwrap_err();
        assert!(err.to_string().contains("fix: cargo xtask x"));
        assert_eq!(
            fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "one\ntwo\n"
        );
        apply(dir.path(), &files, Mode::Write, "cargo xtask x").unwrap();
        assert!(check(dir.path(), &files).unwrap().is_empty());
    }
}
