//! A server's own small disk: a tmpfs of a fixed size mounted over its store directory, which a
//! test can fill to the last byte and free again (a disk-full fault), unmounted on drop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LocalNatsError;

/// The file that takes up a filled disk's free space.
const BALLOON: &str = ".disk-full-balloon";

/// A tmpfs of a fixed size mounted at a directory; unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct OwnDisk {
    at: PathBuf,
}

impl OwnDisk {
    /// Mount a tmpfs of `bytes` at `at` (created if missing). Needs root (CAP_SYS_ADMIN) and
    /// `mount` on the PATH; the error says so.
    pub fn mount(at: &Path, bytes: u64) -> Result<Self, LocalNatsError> {
        std::fs::create_dir_all(at).map_err(LocalNatsError::io(format!("creating {}", at.display())))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| LocalNatsError::NoOwnDisk {
                at: at.to_owned(),
                detail: format!("running mount: {e}"),
            })?;
        if !out.status.success() {
            return Err(LocalNatsError::NoOwnDisk {
                at: at.to_owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Self { at: at.to_owned() })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Fill every free byte with a balloon file: how many bytes it took. Writes fail with
    /// "no space left on device" until [`free`](Self::free).
    pub fn fill(&self) -> Result<u64, LocalNatsError> {
        let path = self.at.join(BALLOON);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(LocalNatsError::io(format!("creating {}", path.display())))?;
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: this chunk no longer fits
                    Err(e) => return Err(LocalNatsError::io(format!("filling {}", path.display()))(e)),
                }
            }
        }
        Ok(written)
    }

    /// Remove the balloon: the space is free again.
    pub fn free(&self) -> Result<(), LocalNatsError> {
        match std::fs::remove_file(self.at.join(BALLOON)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LocalNatsError::io(format!("freeing {}", self.at.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for OwnDisk {
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(&self.at).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "the tmpfs at {} was not unmounted: {}; unmount it by hand",
                self.at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "the tmpfs at {} was not unmounted: {e}; unmount it by hand",
                self.at.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Filled, nothing more fits; freed, it does again; dropped, the directory is a plain
    /// directory once more. Where mounting is not allowed, the error says what it needs.
    #[test]
    fn a_filled_disk_takes_nothing_more_until_freed() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("store");
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        let disk = match OwnDisk::mount(&at, 4 << 20) {
            Ok(disk) => disk,
            Err(e) if !root => {
                eprintln!("skipped (not root): {e}");
                return;
            }
            Err(e) => panic!("root mounts a tmpfs: {e}"),
        };
        let filled = disk.fill().unwrap();
        assert!(filled > 3 << 20 && filled <= 4 << 20, "filled {filled} bytes");
        let err = std::fs::write(at.join("more"), b"x".repeat(8192)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        disk.free().unwrap();
        std::fs::write(at.join("more"), b"x".repeat(8192)).unwrap();
        drop(disk);
        assert!(!at.join("more").exists(), "unmounted: the tmpfs's files are gone");
    }
}
