//! The blessed baseline: `cargo xtask bless` records the contract documents under
//! `contracts/blessed/<name>/v<major>.<ext>`, where no regen command writes, and
//! `cargo xtask compat` judges what the code generates now against them (ORCH-9014).
//!
//! A breaking difference fails unless it is waived (`contracts/blessed/waivers.yaml`,
//! each entry with its rule, path and reason) or the document's major version is bumped;
//! blessing a new major keeps the previous major's document beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::{self, Bump, Change, Direction, Semver};
use crate::{openapi, schema};

pub const DIR: &str = "contracts/blessed";
pub const WAIVERS: &str = "contracts/blessed/waivers.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenApi,
    Schema(Direction),
}

/// One contract document as the code generates it now.
pub struct Current {
    /// `data`, `control`, `config`, `error`, `sse-event`.
    pub name: &'static str,
    pub kind: Kind,
    pub value: Value,
}

impl Current {
    fn version(&self) -> Result<Semver> {
        let raw = match self.kind {
            Kind::OpenApi => self.value.pointer("/info/version"),
            Kind::Schema(_) => self.value.get("x-version"),
        };
        let raw = raw.and_then(Value::as_str).unwrap_or_default();
        Semver::parse(raw).with_context(|| {
            format!(
                "{}: version {raw:?} is not major.minor.patch (see contracts::versions)",
                self.name
            )
        })
    }

    fn ext(&self) -> &'static str {
        match self.kind {
            Kind::OpenApi => "yaml",
            Kind::Schema(_) => "json",
        }
    }

    fn path(&self, major: u64) -> String {
        format!("{DIR}/{}/v{major}.{}", self.name, self.ext())
    }

    fn render(&self) -> Result<String> {
        match self.kind {
            Kind::OpenApi => {
                let body = serde_yaml::to_string(&openapi::sort_keys(&self.value))?;
                Ok(format!(
                    "# BLESSED by `cargo xtask bless` ({} {}) — do not edit by hand; `cargo xtask compat` compares the code with it\n{body}",
                    self.name,
                    self.version()?
                ))
            }
            Kind::Schema(_) => {
                let mut v = self.value.clone();
                v["$comment"] = Value::String(format!(
                    "BLESSED by `cargo xtask bless` ({} {}) — do not edit by hand; `cargo xtask compat` compares the code with it",
                    self.name,
                    self.version()?
                ));
                schema::render(&v)
            }
        }
    }

    fn compare(&self, blessed: &Value) -> Vec<Change> {
        match self.kind {
            Kind::OpenApi => compat::openapi(blessed, &self.value),
            Kind::Schema(dir) => compat::json_schema(blessed, &self.value, dir),
        }
    }
}

/// Every contract document, generated from the code.
pub fn current() -> Result<Vec<Current>> {
    let mut out: Vec<Current> = openapi::documents()?
        .into_iter()
        .map(|(name, _, value)| Current {
            name,
            kind: Kind::OpenApi,
            value,
        })
        .collect();
    for d in schema::documents()? {
        out.push(Current {
            name: d.name,
            kind: Kind::Schema(d.direction),
            value: d.value,
        });
    }
    Ok(out)
}

/// The newest blessed major of a document: (major, path, value).
fn latest_blessed(root: &Path, doc: &Current) -> Result<Option<(u64, PathBuf, Value)>> {
    let dir = root.join(DIR).join(doc.name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(major) = name
            .strip_prefix('v')
            .and_then(|r| r.strip_suffix(&format!(".{}", doc.ext())))
            .and_then(|m| m.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| major > *b) {
            best = Some((major, e.path()));
        }
    }
    let Some((major, path)) = best else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = match doc.kind {
        Kind::OpenApi => serde_yaml::from_str(&text),
        Kind::Schema(_) => serde_json::from_str(&text).map_err(serde::de::Error::custom),
    }
    .with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some((major, path, value)))
}

/// A reviewed exception: a breaking change that is deliberate and safe, e.g. the
/// document now refuses a value the server never accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    /// Document name (`data`, `control`, `config`, …).
    pub document: String,
    pub rule: String,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaiverFile {
    #[serde(default)]
    waivers: Vec<Waiver>,
}

pub fn load_waivers(root: &Path) -> Result<Vec<Waiver>> {
    let path = root.join(WAIVERS);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let file: WaiverFile =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {WAIVERS}"))?;
    for w in &file.waivers {
        if w.reason.trim().is_empty() {
            bail!(
                "{WAIVERS}: the waiver of {} {} has no reason",
                w.rule,
                w.path
            );
        }
    }
    Ok(file.waivers)
}

fn save_waivers(root: &Path, waivers: Vec<Waiver>) -> Result<()> {
    let body = serde_yaml::to_string(&WaiverFile { waivers })?;
    std::fs::write(
        root.join(WAIVERS),
        format!("# Reviewed exceptions to `cargo xtask compat`: each a breaking change that is deliberate and safe.\n# `cargo xtask bless` removes the waivers it consumed.\n{body}"),
    )
    .with_context(|| format!("writing {WAIVERS}"))
}

/// The verdict on one document.
pub struct Verdict {
    pub name: &'static str,
    pub blessed: Option<(u64, Semver)>,
    pub version: Semver,
    /// Changes no waiver covers.
    pub changes: Vec<Change>,
    /// Breaking changes a waiver covers, with the waiver's index.
    pub waived: Vec<(Change, usize)>,
    /// Whether the generated text differs at all (descriptions included).
    pub differs: bool,
}

impl Verdict {
    pub fn breaking(&self) -> Vec<&Change> {
        self.changes.iter().filter(|c| c.breaking).collect()
    }

    /// The bump the unwaived changes need; waived ones count as compatible.
    pub fn needed(&self) -> Option<Bump> {
        if !self.differs {
            return None;
        }
        let mut bump = compat::required_bump(&self.changes);
        if bump == Bump::Patch && !self.waived.is_empty() {
            bump = Bump::Minor;
        }
        Some(bump)
    }

    /// Breaking changes are allowed once the major version is bumped.
    pub fn major_bumped(&self) -> bool {
        self.blessed
            .is_some_and(|(major, _)| self.version.major > major)
    }
}

fn blessed_version(doc: &Current, value: &Value) -> Option<Semver> {
    let raw = match doc.kind {
        Kind::OpenApi => value.pointer("/info/version"),
        Kind::Schema(_) => value.get("x-version"),
    };
    raw.and_then(Value::as_str).and_then(Semver::parse)
}

fn strip_comment(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("$comment");
    }
    v
}

pub fn verdicts(root: &Path, waivers: &[Waiver]) -> Result<Vec<(Verdict, Current)>> {
    let mut out = Vec::new();
    for doc in current()? {
        let version = doc.version()?;
        let Some((major, _, blessed)) = latest_blessed(root, &doc)? else {
            out.push((
                Verdict {
                    name: doc.name,
                    blessed: None,
                    version,
                    changes: Vec::new(),
                    waived: Vec::new(),
                    differs: true,
                },
                doc,
            ));
            continue;
        };
        let mut changes = Vec::new();
        let mut waived = Vec::new();
        for c in doc.compare(&blessed) {
            let waiver = waivers
                .iter()
                .position(|w| w.document == doc.name && w.rule == c.rule && w.path == c.path);
            match waiver {
                Some(i) if c.breaking => waived.push((c, i)),
                _ => changes.push(c),
            }
        }
        let differs = strip_comment(&blessed) != strip_comment(&doc.value);
        let blessed_semver = blessed_version(&doc, &blessed)
            .with_context(|| format!("{DIR}/{}/v{major}: no semver version", doc.name))?;
        out.push((
            Verdict {
                name: doc.name,
                blessed: Some((major, blessed_semver)),
                version,
                changes,
                waived,
                differs,
            },
            doc,
        ));
    }
    Ok(out)
}

/// `cargo xtask compat`: print every verdict; fail on an unwaived breaking change
/// without a major bump, an unused waiver, or a document never blessed.
pub fn compat(root: &Path) -> Result<()> {
    let waivers = load_waivers(root)?;
    let verdicts = verdicts(root, &waivers)?;
    let (report, failures) = report(&verdicts, &waivers);
    eprint!("{report}");
    if failures > 0 {
        bail!("compat: {failures} problem(s) against the blessed contracts in {DIR}");
    }
    Ok(())
}

/// The text `compat` prints, and how many problems it found.
pub fn report(verdicts: &[(Verdict, Current)], waivers: &[Waiver]) -> (String, usize) {
    let mut out = String::new();
    let mut failures = 0;
    let mut used = vec![false; waivers.len()];
    for (v, doc) in verdicts {
        let Some((major, blessed)) = v.blessed else {
            failures += 1;
            let _ = writeln!(
                out,
                "compat: {}: never blessed; record it with `cargo xtask bless`",
                v.name
            );
            continue;
        };
        let _ = writeln!(
            out,
            "compat: {}: blessed {blessed} ({DIR}/{}/v{major}.{}), code {}: {}",
            v.name,
            v.name,
            doc.ext(),
            v.version,
            match v.needed() {
                None => "identical".to_string(),
                Some(Bump::Patch) => "only descriptions differ".to_string(),
                Some(Bump::Minor) => "compatible".to_string(),
                Some(Bump::Major) => "BREAKING".to_string(),
            }
        );
        for (c, i) in &v.waived {
            used[*i] = true;
            let _ = writeln!(out, "  waived {c}\n    reason: {}", waivers[*i].reason);
        }
        for c in &v.changes {
            let _ = writeln!(out, "  {c}");
        }
        let breaking = v.breaking();
        if !breaking.is_empty() {
            if v.major_bumped() {
                let _ = writeln!(
                    out,
                    "  allowed: the major version is bumped to {}; `cargo xtask bless` writes v{} and keeps v{major}",
                    v.version, v.version.major
                );
            } else {
                failures += breaking.len();
                let _ = writeln!(
                    out,
                    "  fix: keep the old shape, or waive a deliberate narrowing in {WAIVERS} (document, rule, path, reason), or bump the major version in contracts::versions and bless"
                );
            }
        }
        if v.version < blessed {
            failures += 1;
            let _ = writeln!(
                out,
                "  the code's version {} is lower than the blessed {blessed}",
                v.version
            );
        }
    }
    for (w, used) in waivers.iter().zip(used) {
        if !used {
            failures += 1;
            let _ = writeln!(
                out,
                "unused waiver in {WAIVERS}: {} [{}] {}; remove it",
                w.document, w.rule, w.path
            );
        }
    }
    (out, failures)
}

/// `cargo xtask bless`: record every changed document, refusing any whose version is
/// not bumped as its changes require.
pub fn bless(root: &Path) -> Result<()> {
    let waivers = load_waivers(root)?;
    let verdicts = verdicts(root, &waivers)?;
    let mut refusals = Vec::new();
    for (v, _) in &verdicts {
        let (Some((_, blessed)), Some(needed)) = (v.blessed, v.needed()) else {
            continue;
        };
        if !compat::bumped_enough(blessed, v.version, needed) {
            refusals.push(format!(
                "{}: the changes need a {} bump (blessed {blessed}, code {}); bump it in contracts::versions",
                v.name,
                match needed {
                    Bump::Major => "major",
                    Bump::Minor => "minor",
                    Bump::Patch => "patch",
                },
                v.version
            ));
        }
    }
    if !refusals.is_empty() {
        let (report, _) = report(&verdicts, &waivers);
        eprint!("{report}");
        bail!("bless refused:\n{}", refusals.join("\n"));
    }
    let mut consumed = vec![false; waivers.len()];
    for (v, doc) in &verdicts {
        if v.needed().is_none() {
            eprintln!("bless: {}: identical to the blessed document", v.name);
            continue;
        }
        for (_, i) in &v.waived {
            consumed[*i] = true;
        }
        let path = doc.path(v.version.major);
        let full = root.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, doc.render()?).with_context(|| format!("writing {path}"))?;
        match v.blessed {
            Some((major, _)) if major != v.version.major => {
                eprintln!("blessed {path} ({}); v{major} is kept beside it", v.version)
            }
            _ => eprintln!("blessed {path} ({})", v.version),
        }
    }
    if consumed.iter().any(|c| *c) {
        let left: Vec<Waiver> = waivers
            .into_iter()
            .zip(consumed)
            .filter(|(_, c)| !c)
            .map(|(w, _)| w)
            .collect();
        save_waivers(root, left)?;
        eprintln!("removed the waivers this blessing consumed from {WAIVERS}");
    }
    Ok(())
}
