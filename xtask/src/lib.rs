//! `cargo xtask`: the contract pipeline of OrchQueue (spec extraction, OpenAPI and JSON
//! Schema regeneration, compliance matrix, definition-of-done checklist, CI gates).
//!
//! Every generator is a library function returning the files it would write, so the
//! binary, the `ci` gate and the in-process freshness test share one implementation;
//! `drift` decides between writing and checking.

pub mod bless;
pub mod can_i_deploy;
pub mod ci;
pub mod compat;
pub mod compliance;
pub mod dod;
pub mod drift;
pub mod fuzz;
pub mod mutants;
pub mod openapi;
pub mod results;
pub mod schema;
pub mod spec;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of the `xtask` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Relative path used in messages: forward slashes, relative to the root when possible.
pub fn display_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}
