//! The policies directory as the CLI reads it: the public party directory and the agreements,
//! every version, loaded by `hru-runtime` so every command and service picks the agreement in
//! force by one rule.

use std::path::Path;

use anyhow::anyhow;
use hru_envelope::Directory;
use hru_policy::{CompiledIsa, PolicySet};

/// File name of the party directory.
pub(crate) use hru_runtime::deployment::DIRECTORY_FILE;

/// The party directory of `dir`.
pub(crate) fn directory(dir: &Path) -> anyhow::Result<Directory> {
    hru_runtime::deployment::directory(dir).map_err(|e| anyhow!("{e} (set --policies or HRU_POLICIES)"))
}

/// Every agreement version in `dir`, checked against the directory.
pub(crate) fn agreements(dir: &Path, directory: &Directory) -> anyhow::Result<PolicySet> {
    PolicySet::load_dir(dir, Some(directory)).map_err(|e| anyhow!("{e}\n(run `hru policy check` for the full report)"))
}

/// The agreement in force at `at_ms`.
pub(crate) fn in_force(set: &PolicySet, at_ms: i64) -> anyhow::Result<&CompiledIsa> {
    Ok(hru_runtime::deployment::in_force(set, at_ms)?)
}
