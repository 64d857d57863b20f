//! The policies directory: the public party directory and the agreements, every version.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use hru_envelope::Directory;
use hru_policy::{CompiledIsa, PolicySet};

/// File name of the party directory.
pub(crate) const DIRECTORY_FILE: &str = "directory.toml";

/// The party directory of `dir`.
pub(crate) fn directory(dir: &Path) -> anyhow::Result<Directory> {
    let path = dir.join(DIRECTORY_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (set --policies or HRU_POLICIES)", path.display()))?;
    Ok(Directory::from_toml(&text, &path.display().to_string())?)
}

/// Every agreement version in `dir`, checked against the directory.
pub(crate) fn agreements(dir: &Path, directory: &Directory) -> anyhow::Result<PolicySet> {
    PolicySet::load_dir(dir, Some(directory)).map_err(|e| anyhow!("{e}\n(run `hru policy check` for the full report)"))
}

/// The agreement in force at `at_ms` (the deployment has one agreement id).
pub(crate) fn in_force(set: &PolicySet, at_ms: i64) -> anyhow::Result<&CompiledIsa> {
    let mut ids: Vec<&str> = set.iter().map(|i| i.id.as_str()).collect();
    ids.dedup();
    match ids.as_slice() {
        [] => bail!("no agreement file in the policies directory"),
        [id] => set
            .in_force(id, at_ms)
            .ok_or_else(|| anyhow!("no version of agreement {id} is in force now")),
        many => bail!(
            "the policies directory holds several agreements ({}); keep one per deployment",
            many.join(", ")
        ),
    }
}
