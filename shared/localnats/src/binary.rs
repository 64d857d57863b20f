//! Finding the `nats-server` binary and refusing versions below the 2.11 floor (DESIGN.md §8).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LocalNatsError;

/// Oldest accepted `nats-server` (major, minor): the broker crate's floor.
pub const MIN_VERSION: (u64, u64) = hru_broker::MIN_SERVER;

/// Environment variable that names the binary explicitly.
const ENV_VAR: &str = "NATS_SERVER_BIN";

/// A located `nats-server` binary whose version passed the floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServerBinary {
    /// Absolute or PATH-resolved location of the executable.
    pub path: PathBuf,
    /// Version as printed by `nats-server --version`, without the leading `v` (e.g. `2.15.1`).
    pub version: String,
}

impl NatsServerBinary {
    /// Finds the binary (`NATS_SERVER_BIN`, `<repo>/.tools/venv/bin/nats-server`, `PATH`) and checks its version.
    pub fn find() -> Result<Self, LocalNatsError> {
        let path = locate(std::env::var_os(ENV_VAR), &tools_bin(), std::env::var_os("PATH"))?;
        check_version(&path)
    }
}

/// `<workspace root>/.tools/venv/bin/nats-server`, fixed at compile time.
fn tools_bin() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.ancestors().nth(2).unwrap_or(manifest);
    root.join(".tools/venv/bin/nats-server")
}

/// Picks the binary: an explicit env value wins (and must exist), then the tools dir, then PATH.
pub(crate) fn locate(
    env: Option<OsString>,
    tools: &Path,
    path_var: Option<OsString>,
) -> Result<PathBuf, LocalNatsError> {
    if let Some(explicit) = env.filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        if explicit.is_file() {
            return Ok(explicit);
        }
        // An explicit choice that does not exist is a mistake; do not silently use another binary.
        return Err(LocalNatsError::BinaryNotFound {
            looked: vec![format!("{ENV_VAR}={} (no such file)", explicit.display())],
        });
    }
    let mut looked = vec![format!("{ENV_VAR} (unset)")];
    if tools.is_file() {
        return Ok(tools.to_path_buf());
    }
    looked.push(tools.display().to_string());
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    looked.push("nats-server on PATH".to_owned());
    Err(LocalNatsError::BinaryNotFound { looked })
}

/// Runs `<path> --version` and refuses anything below [`MIN_VERSION`].
pub(crate) fn check_version(path: &Path) -> Result<NatsServerBinary, LocalNatsError> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|source| LocalNatsError::Spawn {
            bin: path.to_path_buf(),
            source,
        })?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let too_old = |found: String| LocalNatsError::TooOld {
        path: path.to_path_buf(),
        found,
        required: format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
    };
    match parse_version(&printed) {
        Some((version, major, minor)) if (major, minor) >= MIN_VERSION => Ok(NatsServerBinary {
            path: path.to_path_buf(),
            version,
        }),
        Some((version, ..)) => Err(too_old(version)),
        None => Err(too_old(printed)),
    }
}

/// Parses `nats-server: v2.15.1` into (`2.15.1`, 2, 15).
pub(crate) fn parse_version(printed: &str) -> Option<(String, u64, u64)> {
    let word = printed.split_whitespace().last()?;
    let version = word.strip_prefix('v').unwrap_or(word);
    let (major, minor) = hru_broker::server::major_minor(version)?;
    Some((version.to_owned(), major, minor))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_versions() {
        assert_eq!(
            parse_version("nats-server: v2.15.1"),
            Some(("2.15.1".to_owned(), 2, 15))
        );
        assert_eq!(
            parse_version("nats-server: v2.12.0-RC.3"),
            Some(("2.12.0-RC.3".to_owned(), 2, 12))
        );
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn explicit_env_that_does_not_exist_is_an_error_with_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = tmp.path().join("nats-server");
        std::fs::write(&tools, b"").unwrap();
        let err = locate(Some("/nonexistent/nats-server".into()), &tools, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NATS_SERVER_BIN=/nonexistent/nats-server"), "{msg}");
        assert!(
            msg.contains("run scripts/test.sh (installs the pinned nats-server into .tools/) or set NATS_SERVER_BIN"),
            "{msg}"
        );
    }

    #[test]
    fn falls_back_to_tools_then_path_and_lists_what_was_looked_at() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = tmp.path().join("tools/nats-server");
        let on_path = tmp.path().join("bin");
        std::fs::create_dir_all(&on_path).unwrap();
        let path_var = std::env::join_paths([&on_path]).unwrap();

        let err = locate(None, &tools, Some(path_var.clone())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NATS_SERVER_BIN (unset)"), "{msg}");
        assert!(msg.contains(&tools.display().to_string()), "{msg}");
        assert!(msg.contains("nats-server on PATH"), "{msg}");
        assert!(msg.contains("run scripts/test.sh"), "{msg}");

        std::fs::write(on_path.join("nats-server"), b"").unwrap();
        assert_eq!(
            locate(None, &tools, Some(path_var.clone())).unwrap(),
            on_path.join("nats-server")
        );

        std::fs::create_dir_all(tools.parent().unwrap()).unwrap();
        std::fs::write(&tools, b"").unwrap();
        assert_eq!(locate(None, &tools, Some(path_var)).unwrap(), tools);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_server_older_than_2_11() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let msg = check_version(&fake).unwrap_err().to_string();
        assert!(msg.contains("2.9.25") && msg.contains(">= 2.11"), "{msg}");

        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.11.0'\n").unwrap();
        assert_eq!(check_version(&fake).unwrap().version, "2.11.0");
    }
}
