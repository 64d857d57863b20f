//! A file system that can lose power: a FUSE pass-through over a backing directory that keeps,
//! per file, what every write since the file's last `fsync` overwrote, so that a power cut can
//! put each file back as it was when it was last synced.
//!
//! The model is the pessimistic one of LazyFS: file contents not fsynced are lost, whole, at the
//! cut (a write through a handle opened `O_SYNC` or `O_DSYNC` counts as followed by an fsync);
//! names (create, rename, unlink, mkdir) are durable at once. A file created and renamed
//! into place without an fsync is therefore empty after a cut, as on a file system that
//! journals metadata but not data. Reads and writes bypass the kernel's page cache and every
//! attribute is fetched afresh, so nothing the kernel holds can outlive a cut.
//!
//! A cut is only meaningful once every process writing through the mount is dead (a power cut
//! takes the process with it): the caller kills the server, then calls [`PowerCut::cut`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::LocalNatsError;

/// Attributes and names are never cached by the kernel: a cut changes them behind its back.
const NO_CACHE: Duration = Duration::ZERO;
/// The root directory's inode number, fixed by FUSE.
const ROOT: u64 = 1;

/// What a power cut took back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files put back to their last synced contents.
    pub files: usize,
    /// Bytes written since the last sync that the cut undid.
    pub bytes: u64,
    /// Files and bytes by kind of file: its name with every run of digits written `N`, under
    /// `raft/` when it is part of a raft group's own log or state, else under its stream's name
    /// when it is part of a stream's store.
    pub by_kind: std::collections::BTreeMap<String, (usize, u64)>,
}

/// The kind of file at `rel` (see [`CutReport::by_kind`]).
fn kind_of(rel: &Path) -> String {
    let name = rel.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let mut kind = String::new();
    for c in name.chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !kind.ends_with('N') {
            kind.push('N');
        }
    }
    let parts: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    if parts.contains(&OsStr::new("_js_")) {
        kind.insert_str(0, "raft/");
    } else if let Some(stream) = parts.windows(2).find(|w| w[0] == "streams").map(|w| w[1]) {
        kind.insert_str(0, &format!("{}/", stream.to_string_lossy()));
    }
    kind
}

/// A mounted power-cut file system; unmounted when dropped.
pub struct PowerCut {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    at: PathBuf,
}

impl std::fmt::Debug for PowerCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCut").field("at", &self.at).finish_non_exhaustive()
    }
}

impl PowerCut {
    /// Mount at `at` (created if missing) a pass-through to `backing`. Needs root (or FUSE
    /// allowed to this user) and `/dev/fuse`; the error says what was refused.
    pub fn mount(at: &Path, backing: &Path) -> Result<Self, LocalNatsError> {
        std::fs::create_dir_all(at).map_err(LocalNatsError::io(format!("creating {}", at.display())))?;
        let state = Arc::new(Mutex::new(State::new(backing.to_owned())));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("hru-powercut".into()),
            fuser::MountOption::Subtype("hru-powercut".into()),
        ];
        let fs = PowerCutFs {
            state: Arc::clone(&state),
        };
        let session = fuser::spawn_mount(fs, at, &config).map_err(|e| LocalNatsError::NoOwnDisk {
            at: at.to_owned(),
            detail: format!("mounting the power-cut file system (FUSE): {e}"),
        })?;
        Ok(Self {
            state,
            session: Some(session),
            at: at.to_owned(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Bytes written and not yet fsynced, across all files: what a cut now would lose.
    pub fn unsynced(&self) -> u64 {
        lock(&self.state)
            .dirty
            .values()
            .flatten()
            .map(|step| step.written)
            .sum()
    }

    /// Cut the power: every file is put back to its contents at its last fsync (or creation).
    /// Call it only once every process writing here has been killed and reaped.
    /// Every file is tried, even after one fails; the first failure is the error.
    pub fn cut(&self) -> Result<CutReport, LocalNatsError> {
        let mut state = lock(&self.state);
        let dirty = std::mem::take(&mut state.dirty);
        let mut report = CutReport::default();
        let mut failed = None;
        for (ino, steps) in dirty {
            let Some(rel) = state.tree.path(ino).map(Path::to_owned) else {
                continue; // unlinked since: its name is gone for good, and its data with it
            };
            let path = state.backing.join(&rel);
            let undone = OpenOptions::new().write(true).open(&path).and_then(|file| {
                steps.iter().rev().try_for_each(|step| {
                    file.write_all_at(&step.old, step.offset)?;
                    file.set_len(step.len_before)
                })
            });
            if let Err(e) = undone {
                failed.get_or_insert_with(|| LocalNatsError::io(format!("cutting back {}", path.display()))(e));
                continue;
            }
            let written: u64 = steps.iter().map(|step| step.written).sum();
            let kind = report.by_kind.entry(kind_of(&rel)).or_default();
            *kind = (kind.0 + 1, kind.1 + written);
            report.files += 1;
            report.bytes += written;
        }
        failed.map_or(Ok(report), Err)
    }

    /// Damage a file as the disk holds it: cut `path` (under the mount) to `len` bytes, for
    /// good. What was not yet synced of it is taken to be as the disk now holds it, so that a
    /// later cut does not undo the damage.
    pub fn truncate_durably(&self, path: &Path, len: u64) -> Result<(), LocalNatsError> {
        let rel = path
            .strip_prefix(&self.at)
            .map_err(|_| LocalNatsError::Invalid(format!("{} is not under {}", path.display(), self.at.display())))?;
        let mut state = lock(&self.state);
        let backing = state.backing.join(rel);
        OpenOptions::new()
            .write(true)
            .open(&backing)
            .and_then(|file| file.set_len(len))
            .map_err(LocalNatsError::io(format!("truncating {}", backing.display())))?;
        if let Some(&ino) = state.tree.inos.get(rel) {
            state.dirty.remove(&ino);
        }
        Ok(())
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            eprintln!(
                "the power-cut file system at {} was not unmounted: {e}; unmount it by hand (umount -l)",
                self.at.display()
            );
        }
    }
}

/// One change to a file since its last sync, and how to take it back: write `old` at `offset`,
/// then set the length to `len_before`.
#[derive(Debug)]
struct Step {
    offset: u64,
    old: Vec<u8>,
    len_before: u64,
    /// Bytes this change wrote (0 for a truncation).
    written: u64,
}

/// Inode numbers and the names they stand for, relative to the backing directory.
#[derive(Debug)]
struct Tree {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next: u64,
}

impl Tree {
    fn new() -> Self {
        Self {
            paths: HashMap::from([(ROOT, PathBuf::new())]),
            inos: HashMap::from([(PathBuf::new(), ROOT)]),
            next: ROOT + 1,
        }
    }

    fn path(&self, ino: u64) -> Option<&Path> {
        self.paths.get(&ino).map(PathBuf::as_path)
    }

    fn backing_path(&self, backing: &Path, ino: u64) -> Option<PathBuf> {
        self.path(ino).map(|p| backing.join(p))
    }

    /// The inode number of `rel`, given one if it has none yet.
    fn ino(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, rel.to_owned());
        self.inos.insert(rel.to_owned(), ino);
        ino
    }

    /// `rel` no longer names anything: its inode (if any) is orphaned.
    fn forget(&mut self, rel: &Path) -> Option<u64> {
        let ino = self.inos.remove(rel)?;
        self.paths.remove(&ino);
        Some(ino)
    }

    /// `from` now lives at `to`, with everything under it; whatever `to` named is orphaned.
    fn rename(&mut self, from: &Path, to: &Path) -> Option<u64> {
        let replaced = self.forget(to);
        let moved: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_owned(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
        replaced
    }
}

/// A directory's entries: inode, kind and name.
type Listing = Vec<(u64, FileType, std::ffi::OsString)>;

/// An open file.
#[derive(Debug)]
struct Open {
    file: File,
    ino: u64,
}

/// Everything the file system knows, behind one lock (the session runs one thread).
#[derive(Debug)]
struct State {
    backing: PathBuf,
    tree: Tree,
    open: HashMap<u64, Open>,
    /// Open directories' listings, taken when each was opened.
    dirs: HashMap<u64, Listing>,
    next_fh: u64,
    /// Per inode, the changes since its last fsync, oldest first.
    dirty: HashMap<u64, Vec<Step>>,
}

impl State {
    fn new(backing: PathBuf) -> Self {
        Self {
            backing,
            tree: Tree::new(),
            open: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            dirty: HashMap::new(),
        }
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let dir = self.tree.path(parent.0).ok_or(Errno::ENOENT)?;
        Ok(dir.join(name))
    }

    fn attr(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.backing.join(rel))?;
        let ino = self.tree.ino(rel);
        Ok(attr_of(ino, &meta))
    }

    /// An open file of inode `ino`: handle `fh`'s if given and open, else any open handle's.
    fn file_of(&self, ino: u64, fh: Option<FileHandle>) -> Option<&File> {
        fh.and_then(|fh| self.open.get(&fh.0))
            .or_else(|| self.open.values().find(|open| open.ino == ino))
            .map(|open| &open.file)
    }

    /// Directory `ino`'s entries now, `.` and `..` first.
    fn list(&mut self, ino: u64) -> Result<Listing, Errno> {
        let rel = self.tree.path(ino).map(Path::to_owned).ok_or(Errno::ENOENT)?;
        let entries = std::fs::read_dir(self.backing.join(&rel))?;
        let parent = rel.parent().map_or(ROOT, |p| self.tree.ino(p));
        let mut listing = vec![
            (ino, FileType::Directory, OsStr::new(".").to_owned()),
            (parent, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        for entry in entries {
            let entry = entry?;
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let child = self.tree.ino(&rel.join(entry.file_name()));
            listing.push((child, kind, entry.file_name()));
        }
        Ok(listing)
    }

    fn register(&mut self, file: File, ino: u64) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.open.insert(fh, Open { file, ino });
        fh
    }

    /// Set `file`'s length to `size`, keeping what a cut needs to undo it.
    fn truncate(&mut self, ino: u64, file: &File, size: u64) -> Result<(), Errno> {
        let len_before = file.metadata()?.len();
        let mut old = vec![0; len_before.saturating_sub(size) as usize];
        file.read_exact_at(&mut old, size)?;
        self.dirty.entry(ino).or_default().push(Step {
            offset: size.min(len_before),
            old,
            len_before,
            written: 0,
        });
        file.set_len(size)?;
        Ok(())
    }
}

struct PowerCutFs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn attr_of(ino: u64, meta: &Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        u64::try_from(secs).map_or(UNIX_EPOCH, |s| {
            UNIX_EPOCH + Duration::new(s, nanos.clamp(0, 999_999_999) as u32)
        })
    };
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

/// How to open a backing file for `flags`: a handle that writes can also read, since every
/// write first reads what it overwrites.
fn open_options(flags: OpenFlags) -> OpenOptions {
    let mut options = OpenOptions::new();
    match flags.acc_mode() {
        OpenAccMode::O_RDONLY => options.read(true),
        OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR => options.read(true).write(true),
    };
    options
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = lock(&self.state);
        match state.child(parent, name).and_then(|rel| state.attr(&rel)) {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = lock(&self.state);
        let attr = match state.tree.path(ino.0).map(Path::to_owned) {
            Some(rel) if fh.is_none() => state.attr(&rel),
            // Asked of an open file, or of one whose name is gone but is still open.
            _ => match state.file_of(ino.0, fh) {
                Some(file) => file.metadata().map(|m| attr_of(ino.0, &m)).map_err(Errno::from),
                None => Err(Errno::ENOENT),
            },
        };
        match attr {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = lock(&self.state);
        let result = (|| {
            // By its name, writable whatever the handles' modes; by a handle once the name is gone.
            let file = match state.tree.path(ino.0) {
                Some(rel) => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(state.backing.join(rel))?,
                None => state.file_of(ino.0, fh).ok_or(Errno::ENOENT)?.try_clone()?,
            };
            if let Some(mode) = mode {
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if let Some(size) = size {
                state.truncate(ino.0, &file, size)?;
            }
            Ok(attr_of(ino.0, &file.metadata()?))
        })();
        match result {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = lock(&self.state);
        let result = state.child(parent, name).and_then(|rel| {
            let path = state.backing.join(&rel);
            std::fs::create_dir(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask & 0o7777))?;
            state.attr(&rel)
        });
        match result {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = lock(&self.state);
        let result = state.child(parent, name).and_then(|rel| {
            std::fs::remove_file(state.backing.join(&rel))?;
            if let Some(ino) = state.tree.forget(&rel) {
                state.dirty.remove(&ino);
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = lock(&self.state);
        let result = state.child(parent, name).and_then(|rel| {
            std::fs::remove_dir(state.backing.join(&rel))?;
            state.tree.forget(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        let mut state = lock(&self.state);
        let result = state.child(parent, name).and_then(|from| {
            let to = state.child(newparent, newname)?;
            std::fs::rename(state.backing.join(&from), state.backing.join(&to))?;
            if let Some(replaced) = state.tree.rename(&from, &to) {
                state.dirty.remove(&replaced);
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = lock(&self.state);
        let result = (|| {
            let path = state.tree.backing_path(&state.backing, ino.0).ok_or(Errno::ENOENT)?;
            let file = open_options(flags).open(path)?;
            if flags.0 & nix::fcntl::OFlag::O_TRUNC.bits() != 0 {
                state.truncate(ino.0, &file, 0)?;
            }
            Ok::<_, Errno>(state.register(file, ino.0))
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = lock(&self.state);
        let result = state.child(parent, name).and_then(|rel| {
            let mut options = open_options(OpenFlags(flags));
            options.write(true).create(true).mode(mode & !umask & 0o7777);
            if flags & nix::fcntl::OFlag::O_EXCL.bits() != 0 {
                options.create_new(true);
            }
            let file = options.open(state.backing.join(&rel))?;
            let attr = attr_of(state.tree.ino(&rel), &file.metadata()?);
            let fh = state.register(file, attr.ino.0);
            Ok((attr, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &NO_CACHE,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = lock(&self.state);
        let Some(open) = state.open.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match open.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(e.into());
                    return;
                }
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Through a handle opened O_SYNC or O_DSYNC (O_SYNC includes it), a write returns
        // durable: as a write followed by an fsync of the file.
        let synchronous = flags.0 & nix::fcntl::OFlag::O_DSYNC.bits() != 0;
        let mut state = lock(&self.state);
        let State { open, dirty, .. } = &mut *state;
        let result = (|| {
            let Open { file, ino } = open.get(&fh.0).ok_or(Errno::EBADF)?;
            let ino = *ino;
            let len_before = file.metadata()?.len();
            let end = (offset + data.len() as u64).min(len_before);
            let mut old = vec![0; end.saturating_sub(offset) as usize];
            file.read_exact_at(&mut old, offset)?;
            // Recorded before it is made: a write that fails part way (a full disk) is undone too.
            dirty.entry(ino).or_default().push(Step {
                offset,
                old,
                len_before,
                written: data.len() as u64,
            });
            file.write_all_at(data, offset)?;
            if synchronous {
                dirty.remove(&ino);
            }
            Ok::<_, Errno>(data.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).open.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The file's contents are now durable, whichever handle asked: nothing to undo.
        lock(&self.state).dirty.remove(&ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = lock(&self.state);
        match state.list(ino.0) {
            Ok(listing) => {
                let fh = state.next_fh;
                state.next_fh += 1;
                state.dirs.insert(fh, listing);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut state = lock(&self.state);
        // Read from the listing taken when the directory was opened, so that offsets stay put
        // while entries come and go.
        if !state.dirs.contains_key(&fh.0) {
            match state.list(ino.0) {
                Ok(listing) => {
                    state.dirs.insert(fh.0, listing);
                }
                Err(e) => {
                    reply.error(e);
                    return;
                }
            }
        }
        let listing = state.dirs.get(&fh.0).map(Vec::as_slice).unwrap_or_default();
        for (i, (child, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.state).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok(); // names are durable at once
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = lock(&self.state).backing.clone();
        // The backing file system's sizes, so that a full disk looks full through the mount.
        match nix::sys::statvfs::statvfs(&backing) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
