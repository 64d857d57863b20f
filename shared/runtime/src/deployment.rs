//! A deployment as the policies directory and a keys directory describe it: the public party
//! directory, every version of the one agreement the deployment runs, and a party's secrets.

use std::path::{Path, PathBuf};

use hru_domain::PartyId;
use hru_envelope::{Directory, PartySecrets};
use hru_policy::{CompiledIsa, PolicySet};

/// File name of the party directory inside the policies directory.
pub const DIRECTORY_FILE: &str = "directory.toml";

/// Why a deployment could not be loaded; each variant names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The directory or a secret key file does not parse.
    #[error("{0}")]
    Keys(#[from] hru_envelope::DirectoryError),
    /// An agreement does not compile.
    #[error("{0}\n(run `hru policy check` for the full report)")]
    Agreement(String),
    /// No agreement, or more than one agreement id, in the policies directory.
    #[error("{0}")]
    Agreements(String),
    /// No version of the agreement is in force at the time asked.
    #[error("no version of agreement {id} is in force at {at}")]
    NotInForce {
        /// Agreement id.
        id: String,
        /// The time asked.
        at: String,
    },
}

/// The public side of a deployment: the party directory and every agreement version.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The party directory.
    pub directory: Directory,
    /// Every version of the deployment's agreement.
    pub policies: PolicySet,
}

fn read(path: &Path) -> Result<String, DeploymentError> {
    std::fs::read_to_string(path).map_err(|source| DeploymentError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The party directory of `policies_dir` (its `directory.toml`).
pub fn directory(policies_dir: &Path) -> Result<Directory, DeploymentError> {
    let path = policies_dir.join(DIRECTORY_FILE);
    Ok(Directory::from_toml(&read(&path)?, &path.display().to_string())?)
}

/// The one agreement id of a deployment's agreements: several ids (or none) are refused.
pub fn agreement_id(policies: &PolicySet) -> Result<&str, DeploymentError> {
    let mut ids: Vec<&str> = policies.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(DeploymentError::Agreements(
            "no agreement file in the policies directory; add the agreement's TOML".into(),
        )),
        [id] => Ok(id),
        many => Err(DeploymentError::Agreements(format!(
            "the policies directory holds several agreements ({}); keep one per deployment",
            many.join(", ")
        ))),
    }
}

/// The agreement in force at `at_ms` (Unix ms): the newest version, of the deployment's one
/// agreement, whose effective dates include it. The one rule every service and command uses.
pub fn in_force(policies: &PolicySet, at_ms: i64) -> Result<&CompiledIsa, DeploymentError> {
    let id = agreement_id(policies)?;
    policies.in_force(id, at_ms).ok_or_else(|| DeploymentError::NotInForce {
        id: id.to_owned(),
        at: format!("{at_ms} ms since the epoch"),
    })
}

impl Deployment {
    /// Load `policies_dir`: its `directory.toml` and its agreement files (one agreement, in as
    /// many versions as it adopted).
    pub fn load(policies_dir: &Path) -> Result<Self, DeploymentError> {
        let directory = directory(policies_dir)?;
        let policies = PolicySet::load_dir(policies_dir, Some(&directory))
            .map_err(|e| DeploymentError::Agreement(e.to_string()))?;
        agreement_id(&policies)?;
        Ok(Self { directory, policies })
    }

    /// The version of the agreement in force at `at_ms` (Unix ms).
    pub fn in_force(&self, at_ms: i64) -> Result<&CompiledIsa, DeploymentError> {
        in_force(&self.policies, at_ms)
    }

    /// The version in force now.
    pub fn in_force_now(&self) -> Result<&CompiledIsa, DeploymentError> {
        self.in_force(now_ms())
    }
}

/// The secrets of `party` from `<keys_dir>/<party>.secret`.
pub fn secrets(keys_dir: &Path, party: &PartyId) -> Result<PartySecrets, DeploymentError> {
    let path = keys_dir.join(format!("{party}.secret"));
    Ok(PartySecrets::from_toml(&read(&path)?, &path.display().to_string())?)
}

/// The key ring of `party`: its current secrets, and the X25519 secrets of the earlier key
/// files `hru keys rotate` kept beside them (`<party>.secret.<key id>`), so grants sealed
/// before a rotation still open.
pub fn key_ring(keys_dir: &Path, party: &PartyId) -> Result<hru_envelope::KeyRing, DeploymentError> {
    let mut ring = hru_envelope::KeyRing::new(&secrets(keys_dir, party)?);
    let prefix = format!("{party}.secret.");
    let entries = std::fs::read_dir(keys_dir).map_err(|source| DeploymentError::Read {
        path: keys_dir.to_owned(),
        source,
    })?;
    let mut past: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
        })
        .collect();
    past.sort();
    for path in past {
        ring = ring.with_past(&secrets_file(&path)?);
    }
    let periods = periods_path(keys_dir, party);
    if periods.exists() {
        let keys = hru_envelope::PeriodKeys::from_toml(&read(&periods)?, &periods.display().to_string())?;
        ring = ring.with_periods(&keys, &hru_envelope::published_through(now_ms()));
    }
    Ok(ring)
}

/// Where a party keeps its period chains by default: `<keys_dir>/<party>.periods.toml`, beside
/// its secret key file (they are its secrets too, changed as periods expire).
pub fn periods_path(keys_dir: &Path, party: &PartyId) -> std::path::PathBuf {
    keys_dir.join(format!("{party}.periods.toml"))
}

/// The secrets in one secret key file.
pub fn secrets_file(path: &Path) -> Result<PartySecrets, DeploymentError> {
    Ok(PartySecrets::from_toml(&read(path)?, &path.display().to_string())?)
}

/// Now, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Write `text` to `path` with mode 0600, atomically (a temporary file synced, then renamed
/// into place): how secret key files and private keys are written.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
