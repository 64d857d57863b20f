//! A server's own small disk: a tmpfs of a fixed size, seen by the server through a power-cut
//! file system mounted over its store directory. A test can fill it to the last byte and free
//! it again (a disk-full fault), or cut its power (everything not fsynced is lost). Unmounted
//! on drop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LocalNatsError;
use crate::powercut::{CutReport, PowerCut};

/// The file that takes up a filled disk's free space.
const BALLOON: &str = ".disk-full-balloon";

/// A tmpfs of a fixed size, seen through a power-cut file system at a directory; both
/// unmounted (the tmpfs lazily) when dropped.
#[derive(Debug)]
pub struct OwnDisk {
    /// Over `tmpfs`, at the directory the disk was asked for; dropped first.
    power: Option<PowerCut>,
    /// Where the tmpfs itself is mounted: beside `at`, named `<at>.disk`.
    tmpfs: PathBuf,
}

impl OwnDisk {
    /// Mount a tmpfs of `bytes` at `<at>.disk` and, over it, a power-cut file system at `at`
    /// (both created if missing). Needs root (CAP_SYS_ADMIN), `mount` on the PATH and
    /// `/dev/fuse`; the error says which was refused.
    pub fn mount(at: &Path, bytes: u64) -> Result<Self, LocalNatsError> {
        let mut name = at.as_os_str().to_owned();
        name.push(".disk");
        let tmpfs = PathBuf::from(name);
        Self::mount_tmpfs(&tmpfs, bytes)?;
        let mut disk = Self { power: None, tmpfs };
        disk.power = Some(PowerCut::mount(at, &disk.tmpfs)?);
        Ok(disk)
    }

    fn mount_tmpfs(at: &Path, bytes: u64) -> Result<(), LocalNatsError> {
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
        Ok(())
    }

    /// Where it is mounted (the directory it was asked for).
    pub fn path(&self) -> &Path {
        self.power.as_ref().map_or(&self.tmpfs, PowerCut::path)
    }

    /// Cut the disk's power: every file goes back to its contents at its last fsync; names
    /// created, renamed or removed stay so. Call it only once the server writing here is
    /// killed and reaped (a power cut takes the process with it).
    pub fn cut_power(&self) -> Result<CutReport, LocalNatsError> {
        match &self.power {
            Some(power) => power.cut(),
            None => Ok(CutReport::default()),
        }
    }

    /// Damage a file as the disk holds it: cut `path` (a file under [`path`](Self::path)) to
    /// `len` bytes, for good (a later power cut does not undo it).
    pub fn truncate_durably(&self, path: &Path, len: u64) -> Result<(), LocalNatsError> {
        match &self.power {
            Some(power) => power.truncate_durably(path, len),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(len))
                .map_err(LocalNatsError::io(format!("truncating {}", path.display()))),
        }
    }

    /// Bytes written here and not yet fsynced: what a power cut now would lose.
    pub fn unsynced(&self) -> u64 {
        self.power.as_ref().map_or(0, PowerCut::unsynced)
    }

    /// Fill every free byte with a balloon file: how many bytes it took. Writes fail with
    /// "no space left on device" until [`free`](Self::free).
    pub fn fill(&self) -> Result<u64, LocalNatsError> {
        let path = self.tmpfs.join(BALLOON);
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
        match std::fs::remove_file(self.tmpfs.join(BALLOON)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LocalNatsError::io(format!("freeing {}", self.tmpfs.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// Whether this process runs as root, as mounting an own disk needs.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for OwnDisk {
    fn drop(&mut self) {
        self.power.take(); // the file system over the tmpfs goes first
        match Command::new("umount").arg("-l").arg(&self.tmpfs).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "the tmpfs at {} was not unmounted: {}; unmount it by hand",
                self.tmpfs.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "the tmpfs at {} was not unmounted: {e}; unmount it by hand",
                self.tmpfs.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::CutReport;

    /// Filled, nothing more fits; freed, it does again; dropped, the directory is a plain
    /// directory once more. Where mounting is not allowed, the error says what it needs.
    /// A disk of `bytes` at `at`; `None` (the test skips) only when not running as root.
    fn own_disk(at: &Path, bytes: u64) -> Option<OwnDisk> {
        match OwnDisk::mount(at, bytes) {
            Ok(disk) => Some(disk),
            Err(e) if !running_as_root() => {
                eprintln!("skipped (not root): {e}");
                None
            }
            Err(e) => panic!("root mounts a tmpfs and a FUSE file system: {e}"),
        }
    }

    #[test]
    fn a_filled_disk_takes_nothing_more_until_freed() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("store");
        let Some(disk) = own_disk(&at, 4 << 20) else { return };
        let filled = disk.fill().unwrap();
        assert!(filled > 3 << 20 && filled <= 4 << 20, "filled {filled} bytes");
        let err = std::fs::write(at.join("more"), b"x".repeat(8192)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        disk.free().unwrap();
        std::fs::write(at.join("more"), b"x".repeat(8192)).unwrap();
        drop(disk);
        assert!(!at.join("more").exists(), "unmounted: the tmpfs's files are gone");
    }

    /// A power cut takes back exactly what was not fsynced: appended and overwritten bytes and
    /// truncations since a file's last fsync (by any handle), and the contents of a file
    /// created and renamed into place without one. Names stay as they were made.
    #[test]
    fn a_power_cut_loses_exactly_what_was_not_synced() {
        use std::io::{Seek as _, SeekFrom};
        use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};

        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("store");
        let Some(disk) = own_disk(&at, 16 << 20) else { return };
        std::fs::create_dir(at.join("msgs")).unwrap();
        let block = at.join("msgs/1.blk");

        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&block)
            .unwrap();
        file.write_all(b"synced-one|").unwrap();
        file.sync_data().unwrap();
        // Synced through another handle, as a server that reopens a file by name to sync it.
        file.write_all(b"synced-two|").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&block)
            .unwrap()
            .sync_all()
            .unwrap();
        file.write_all(b"lost-tail").unwrap();
        file.write_all_at(b"LOST", 0).unwrap();
        assert_eq!(disk.unsynced(), 13);

        let index = at.join("index.db");
        std::fs::write(&index, b"index synced, to be truncated").unwrap();
        std::fs::File::open(&index).unwrap().sync_all().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .set_len(5)
            .unwrap();

        // Written to a temporary name and renamed into place, never synced.
        std::fs::write(at.join("meta.tmp"), b"written, renamed, not synced").unwrap();
        std::fs::rename(at.join("meta.tmp"), at.join("meta.inf")).unwrap();
        // Written through a handle opened O_SYNC (as a raft snapshot is): durable as written.
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_SYNC.bits())
            .open(at.join("snap"))
            .unwrap()
            .write_all(b"synchronous")
            .unwrap();
        // Reopened with O_TRUNC (as an index is rewritten), then a hole written past its end.
        let index2 = at.join("msgs/index2.db");
        std::fs::write(&index2, b"synced index").unwrap();
        std::fs::File::open(&index2).unwrap().sync_all().unwrap();
        std::fs::write(&index2, b"new").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index2)
            .unwrap()
            .write_all_at(b"far", 100)
            .unwrap();
        // A directory renamed with a dirty file in it; a synced file renamed over a dirty one.
        std::fs::create_dir(at.join("dir")).unwrap();
        std::fs::write(at.join("dir/inside"), b"dirty").unwrap();
        std::fs::rename(at.join("dir"), at.join("moved")).unwrap();
        std::fs::write(at.join("target"), b"dirty, replaced").unwrap();
        std::fs::write(at.join("replacement"), b"synced").unwrap();
        std::fs::File::open(at.join("replacement")).unwrap().sync_all().unwrap();
        std::fs::rename(at.join("replacement"), at.join("target")).unwrap();
        // Removed: stays removed.
        std::fs::write(at.join("gone"), b"x").unwrap();
        std::fs::File::open(at.join("gone")).unwrap().sync_all().unwrap();
        std::fs::remove_file(at.join("gone")).unwrap();

        drop(file);
        let cut = disk.cut_power().unwrap();
        assert_eq!(cut.files, 5, "{cut:?}");
        assert_eq!(std::fs::read(&block).unwrap(), b"synced-one|synced-two|");
        assert_eq!(std::fs::read(&index).unwrap(), b"index synced, to be truncated");
        assert_eq!(
            std::fs::read(at.join("meta.inf")).unwrap(),
            b"",
            "the name was durable, the data not"
        );
        assert!(!at.join("meta.tmp").exists() && !at.join("gone").exists());
        assert_eq!(std::fs::read(at.join("snap")).unwrap(), b"synchronous");
        assert_eq!(
            std::fs::read(&index2).unwrap(),
            b"synced index",
            "truncated and rewritten, then cut"
        );
        assert_eq!(
            std::fs::read(at.join("moved/inside")).unwrap(),
            b"",
            "followed into the renamed directory"
        );
        assert_eq!(std::fs::read(at.join("target")).unwrap(), b"synced");
        // Damage done to the disk itself stays through a later cut.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&block)
            .unwrap()
            .write_all(b"unsynced")
            .unwrap();
        disk.truncate_durably(&block, 6).unwrap();
        disk.cut_power().unwrap();
        assert_eq!(std::fs::read(&block).unwrap(), b"synced");
        let names: Vec<String> = std::fs::read_dir(&at)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"moved".to_owned()) && names.contains(&"index.db".to_owned()),
            "{names:?}"
        );
        assert_eq!(
            disk.cut_power().unwrap(),
            CutReport::default(),
            "a second cut has nothing to take"
        );

        // The disk goes on working after the cut; its size shows through the mount.
        let mut file = std::fs::OpenOptions::new().append(true).open(&block).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        file.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&block).unwrap(), b"syncedafter");
        let filled = disk.fill().unwrap();
        assert!(filled > 14 << 20, "filled {filled} bytes");
        let err = std::fs::write(at.join("more"), b"x".repeat(8192)).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(28),
            "a full disk is full through the mount: {err}"
        );
    }

    /// A directory listed over several pages while files in it are removed still lists every
    /// file that was not removed (a listing re-read at each page would skip some).
    #[test]
    fn a_listing_stays_put_while_its_directory_changes() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("store");
        let Some(_disk) = own_disk(&at, 64 << 20) else { return };
        let names: Vec<String> = (0..3000).map(|i| format!("block-{i:05}")).collect();
        for name in &names {
            std::fs::File::create(at.join(name)).unwrap();
        }
        let mut listing = std::fs::read_dir(&at).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for entry in listing.by_ref().take(100) {
            seen.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
        for name in &seen {
            std::fs::remove_file(at.join(name)).unwrap();
        }
        for entry in listing {
            seen.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
        let missed: Vec<&String> = names.iter().filter(|n| !seen.contains(*n)).collect();
        assert!(
            missed.is_empty(),
            "{} files never listed, {:?}…",
            missed.len(),
            missed.first()
        );
    }

    /// A write that fails part way on a full disk is undone by a cut like any other: what it
    /// managed to write was never synced.
    #[test]
    fn a_write_cut_short_by_a_full_disk_is_undone_too() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("store");
        let Some(disk) = own_disk(&at, 4 << 20) else { return };
        let file = at.join("block");
        std::fs::File::create(&file).unwrap().sync_all().unwrap();
        std::fs::write(at.join("room"), vec![1u8; 8192]).unwrap();
        disk.fill().unwrap();
        std::fs::remove_file(at.join("room")).unwrap();
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .write_all(&vec![2u8; 64 << 10])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        let written = std::fs::metadata(&file).unwrap().len();
        assert!(written > 0, "part of the write landed before the disk was full");
        disk.free().unwrap();
        disk.cut_power().unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            0,
            "{written} bytes were not undone"
        );
    }
}
