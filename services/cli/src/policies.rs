//! The policies directory: the public party directory and the example agreement that gives
//! audiences until the policy engine compiles full ISAs.

use std::path::Path;

use anyhow::Context as _;
use hru_envelope::{Directory, StaticAudiences};

/// File name of the party directory.
pub(crate) const DIRECTORY_FILE: &str = "directory.toml";
/// File name of the example agreement.
pub(crate) const EXAMPLE_POLICY_FILE: &str = "example.toml";

fn read(dir: &Path, name: &str) -> anyhow::Result<(String, String)> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (set --policies or HRU_POLICIES)",
            path.display()
        )
    })?;
    Ok((text, path.display().to_string()))
}

/// The party directory of `dir`.
pub(crate) fn directory(dir: &Path) -> anyhow::Result<Directory> {
    let (text, source) = read(dir, DIRECTORY_FILE)?;
    Ok(Directory::from_toml(&text, &source)?)
}

/// The agreement of `dir`.
pub(crate) fn agreement(dir: &Path) -> anyhow::Result<StaticAudiences> {
    let (text, source) = read(dir, EXAMPLE_POLICY_FILE)?;
    Ok(StaticAudiences::from_toml(&text, &source)?)
}
