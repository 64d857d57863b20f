//! Every version of the agreements a deployment knows: sealing uses the version in force,
//! opening and audit use the version an event was sealed under.

use std::collections::BTreeMap;
use std::path::Path;

use hru_envelope::Directory;

use crate::{CompiledIsa, PolicyError, PolicyErrors};

/// Agreement versions by (id, version).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    versions: BTreeMap<(String, u32), CompiledIsa>,
}

impl PolicySet {
    /// Load and compile every agreement file (`*.toml` except `directory.toml`) directly in
    /// `dir`; every error of every file is returned.
    pub fn load_dir(dir: &Path, directory: Option<&Directory>) -> Result<Self, PolicyErrors> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io_error(dir, &e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n != "directory.toml")
            })
            .collect();
        files.sort();
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| io_error(&f, &e))?;
            match CompiledIsa::compile(&text, &f.display().to_string(), directory) {
                Ok(isa) => set.insert(isa),
                Err(PolicyErrors(e)) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// Add a compiled version.
    pub fn insert(&mut self, isa: CompiledIsa) {
        self.versions.insert((isa.id.clone(), isa.version), isa);
    }

    /// The version an event names.
    pub fn version(&self, id: &str, version: u32) -> Option<&CompiledIsa> {
        self.versions.get(&(id.to_owned(), version))
    }

    /// The newest version of `id` in force at `at_ms`.
    pub fn in_force(&self, id: &str, at_ms: i64) -> Option<&CompiledIsa> {
        self.versions
            .values()
            .filter(|i| i.id == id && i.in_force_at(at_ms))
            .max_by_key(|i| i.version)
    }

    /// Every version, by id then version.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledIsa> {
        self.versions.values()
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        kind: crate::ErrorKind::Syntax,
        message: format!("cannot read: {e}"),
        hint: "check the path given to --policies".into(),
    }])
}
