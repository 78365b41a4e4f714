//! The file-system work of restoring, for one thread: opening directories
//! without following symlinks, writing files so they appear only complete,
//! creating links, FIFOs and device nodes, setting metadata. Every
//! operation is relative to the target's directory descriptor; no path
//! string is ever resolved.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::pipeline::fsmeta::{self, CAPABILITY, Source};
use crate::repo::manifest::{Entry, EntryKind, Xattrs};

const COPY_BUFFER: usize = 1 << 20;
const TEMP_PREFIX: &str = ".vaultline-restore-";
/// Granularity of holes in restored sparse files.
const HOLE_BLOCK: usize = 4096;

/// Why an entry was not placed.
#[derive(Debug)]
pub(super) enum Refusal {
    /// What the snapshot asks is unsafe (vaultline never archives it: the
    /// snapshot is not what vaultline wrote); the reason.
    Unsafe(String),
    /// The target is in the way (a symlink or a file where a directory is
    /// needed) or the system refused; the reason.
    Blocked(String),
    /// Something different exists in its place and `--overwrite` was not
    /// given.
    Exists,
}

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Self {
        Refusal::Blocked(io::Error::from(e).to_string())
    }
}

/// What placing an entry did, when it did not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placed {
    /// Written.
    New,
    /// The same thing was there already (a restore run again into its
    /// target): left as it is.
    Already,
}

/// What a restore may do to privileges and to what exists.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Replace existing files, and set the metadata of existing directories.
    pub(super) overwrite: bool,
    /// Restore setuid/setgid bits of files and file capabilities.
    pub(super) keep_privileges: bool,
}

/// What did not stop a restore but must be said, by kind.
#[derive(Debug, Default)]
pub(super) struct Notes {
    /// Kind of problem → (how many, first path).
    pub(super) by_kind: BTreeMap<String, (u64, String)>,
    /// Files whose setuid/setgid bits or capabilities were not restored.
    pub(super) dropped: Vec<String>,
}

impl Notes {
    pub(super) fn note(&mut self, kind: String, path: &[u8]) {
        let slot = self
            .by_kind
            .entry(kind)
            .or_insert_with(|| (0, String::from_utf8_lossy(path).into_owned()));
        slot.0 += 1;
    }

    /// Takes in another thread's notes.
    pub(super) fn merge(&mut self, other: Notes) {
        for (kind, (n, first)) in other.by_kind {
            self.by_kind.entry(kind).or_insert((0, first)).0 += n;
        }
        self.dropped.extend(other.dropped);
    }
}

/// How an unnamed (`O_TMPFILE`) file is linked into a directory.
/// `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`; `/proc/self/fd` works for anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkMode {
    EmptyPath,
    ProcFd,
}

/// Does the work for one thread.
pub(super) struct Placer {
    root: Arc<OwnedFd>,
    policy: Policy,
    restore_owner: bool,
    /// What did not stop the restore but must be said.
    pub(super) notes: Notes,
    /// The directories of the last path opened: `open[i]` is the directory
    /// named by the first `i + 1` components. Archives list entries depth
    /// first, so consecutive entries share most of this chain and each
    /// directory is opened once per visit.
    open: Vec<(Vec<u8>, Arc<OwnedFd>)>,
    /// Random per placer; temporary names add a counter to it.
    temp_prefix: String,
    temp_counter: u64,
    /// How unnamed files get their name, when the file system has them.
    link_mode: Option<LinkMode>,
    buffer: Vec<u8>,
    other: Vec<u8>,
}

/// The metadata restored on an inode.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) path: Vec<u8>,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
    pub(super) mtime_nsec: u32,
    pub(super) xattrs: Xattrs,
    pub(super) kind: EntryKind,
}

impl From<&Entry> for Meta {
    fn from(e: &Entry) -> Self {
        Meta {
            path: e.path.0.clone(),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            xattrs: e.xattrs.clone(),
            kind: e.kind,
        }
    }
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: meta.mtime_nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Where metadata is set: a descriptor, or a name in a directory (symlinks
/// and device nodes have no descriptor to set it through).
enum Target<'a> {
    Fd(std::os::fd::BorrowedFd<'a>),
    At(&'a OwnedFd, &'a [u8]),
}

impl Placer {
    /// A placer under `root`.
    pub(super) fn new(root: Arc<OwnedFd>, policy: Policy, link_mode: Option<LinkMode>) -> Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
        Ok(Placer {
            root,
            policy,
            restore_owner: rustix::process::geteuid().is_root(),
            notes: Notes::default(),
            open: Vec::new(),
            temp_prefix: format!("{TEMP_PREFIX}{}-", hex::encode(random)),
            temp_counter: 0,
            link_mode,
            buffer: Vec::new(),
            other: Vec::new(),
        })
    }

    /// Its notes, to add to or take.
    pub(super) fn notes_mut(&mut self) -> &mut Notes {
        &mut self.notes
    }

    /// Whether unnamed files can be created and named in the target, and how.
    pub(super) fn probe_link_mode(&mut self) -> Option<LinkMode> {
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&*self.root, ".", flags, Mode::from_raw_mode(0o600)).ok()?);
        for mode in [LinkMode::EmptyPath, LinkMode::ProcFd] {
            let probe = self.temp_name();
            if link_unnamed(&file, &self.root, &probe, mode).is_ok() {
                let _ = rustix::fs::unlinkat(&*self.root, probe.as_slice(), AtFlags::empty());
                return Some(mode);
            }
        }
        None
    }

    /// A fresh temporary name (unique with `O_EXCL`/`RENAME_NOREPLACE` anyway).
    fn temp_name(&mut self) -> Vec<u8> {
        self.temp_counter += 1;
        format!("{}{}", self.temp_prefix, self.temp_counter).into_bytes()
    }

    /// Opens (creating if asked) the directory `comps` below the target,
    /// never following a symlink. Reuses the open chain of the previous call
    /// as far as it matches. Returns the directory and whether this call
    /// created its last component.
    pub(super) fn open_dir(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<(Arc<OwnedFd>, bool), Refusal> {
        let shared = self
            .open
            .iter()
            .zip(comps)
            .take_while(|((name, _), comp)| name == *comp)
            .count();
        self.open.truncate(shared);
        let mut created = false;
        for (i, comp) in comps.iter().enumerate().skip(shared) {
            let parent = self
                .open
                .last()
                .map_or_else(|| Arc::clone(&self.root), |(_, fd)| Arc::clone(fd));
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            created = false;
            let next = match rustix::fs::openat(&*parent, comp.as_slice(), flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    // Private until its own metadata is set, when its
                    // contents are done: nobody reads a 0700 directory's
                    // files while they are restored.
                    match rustix::fs::mkdirat(&*parent, comp.as_slice(), Mode::from_raw_mode(0o700)) {
                        Ok(()) => created = true,
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&*parent, comp.as_slice(), flags, Mode::empty())
                        .map_err(|e| blocked(comps, i, e))?
                }
                Err(e) => return Err(blocked(comps, i, e)),
            };
            self.open.push((comp.clone(), Arc::new(next)));
        }
        Ok((
            self.open
                .last()
                .map_or_else(|| Arc::clone(&self.root), |(_, fd)| Arc::clone(fd)),
            created,
        ))
    }

    /// Writes a file with exactly `entry.size` bytes from `data`. An error
    /// reading `data` (an integrity failure) is returned as `Err` and leaves
    /// nothing behind; placement problems are refusals.
    pub(super) fn file(
        &mut self,
        comps: &[Vec<u8>],
        entry: &Entry,
        data: Content<'_>,
    ) -> Result<Result<Placed, Refusal>> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = match self.open_dir(parent, true) {
            Ok((d, _)) => d,
            Err(r) => return Ok(Err(r)),
        };
        let meta = Meta::from(entry);
        // Preferred: an unnamed file in the final directory, given its one
        // name only when complete. A failure before that leaves no trace, and
        // the directory changes once per file, as with a plain tar.
        if let Some(mode) = self.link_mode {
            let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
            match rustix::fs::openat(&*dir, ".", flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    let mut file = File::from(fd);
                    self.copy(data, &mut file, entry.size, entry.sparse)
                        .with_context(|| format!("restoring {}", entry.path.display()))?;
                    if let Err(e) = self.set_metadata(Target::Fd(file.as_fd()), &meta) {
                        return Ok(Err(e));
                    }
                    return Ok(self.link_into_place(&dir, &file, &name[0], mode));
                }
                // This directory is on a file system without O_TMPFILE.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
                Err(e) => return Ok(Err(e.into())),
            }
        }
        let temp = self.temp_name();
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&*dir, temp.as_slice(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut file = File::from(fd);
        if let Err(e) = self.copy(data, &mut file, entry.size, entry.sparse) {
            drop(file);
            let _ = rustix::fs::unlinkat(&*dir, temp.as_slice(), AtFlags::empty());
            return Err(e).with_context(|| format!("restoring {}", entry.path.display()));
        }
        let set = self.set_metadata(Target::Fd(file.as_fd()), &meta);
        if let Err(r) = set {
            let _ = rustix::fs::unlinkat(&*dir, temp.as_slice(), AtFlags::empty());
            return Ok(Err(r));
        }
        Ok(self.publish(&dir, &temp, &name[0], Some(&file)))
    }

    /// Gives the unnamed file `file` the name `name` in `dir`: directly when
    /// not overwriting (`linkat` never replaces), else through a temporary
    /// name and a rename.
    fn link_into_place(
        &mut self,
        dir: &OwnedFd,
        file: &File,
        name: &[u8],
        mode: LinkMode,
    ) -> Result<Placed, Refusal> {
        if !self.policy.overwrite {
            return match link_unnamed(file, dir, name, mode) {
                Ok(()) => Ok(Placed::New),
                Err(Errno::EXIST) => self.same_file(dir, name, file),
                Err(e) => Err(e.into()),
            };
        }
        let temp = self.temp_name();
        link_unnamed(file, dir, &temp, mode)?;
        self.publish(dir, &temp, name, Some(file))
    }

    /// Renames `temp` to `name` in `dir`: no-replace unless overwriting, and
    /// never over a directory. Removes `temp` if it cannot. `file`: the
    /// content, to tell an identical file already there from another one.
    fn publish(
        &mut self,
        dir: &OwnedFd,
        temp: &[u8],
        name: &[u8],
        file: Option<&File>,
    ) -> Result<Placed, Refusal> {
        let flags = if self.policy.overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        if self.policy.overwrite
            && let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        {
            let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
            return Err(Refusal::Blocked(
                "a directory exists there; not replacing it".into(),
            ));
        }
        match rustix::fs::renameat_with(dir, temp, dir, name, flags) {
            Ok(()) => Ok(Placed::New),
            Err(e) => {
                let same = match (e, file) {
                    (Errno::EXIST, Some(f)) => self.same_file(dir, name, f),
                    (Errno::EXIST, None) => self.same_node(dir, temp, name),
                    _ => Err(e.into()),
                };
                let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
                same
            }
        }
    }

    /// Whether the regular file at `name` has exactly `ours`'s content (a
    /// restore run again into its target finds its earlier work).
    fn same_file(&mut self, dir: &OwnedFd, name: &[u8], ours: &File) -> Result<Placed, Refusal> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
            return Err(Refusal::Exists);
        };
        let theirs = File::from(fd);
        let (Ok(a), Ok(b)) = (ours.metadata(), theirs.metadata()) else {
            return Err(Refusal::Exists);
        };
        if !b.is_file() || a.len() != b.len() {
            return Err(Refusal::Exists);
        }
        self.buffer.resize(COPY_BUFFER, 0);
        self.other.resize(COPY_BUFFER, 0);
        let mut at = 0u64;
        while at < a.len() {
            let n = (a.len() - at).min(COPY_BUFFER as u64) as usize;
            let ok = ours.read_exact_at(&mut self.buffer[..n], at).is_ok()
                && theirs.read_exact_at(&mut self.other[..n], at).is_ok()
                && self.buffer[..n] == self.other[..n];
            if !ok {
                return Err(Refusal::Exists);
            }
            at += n as u64;
        }
        Ok(Placed::Already)
    }

    /// Whether `name` is what `temp` is: a symlink with the same target, a
    /// FIFO, or the same device node.
    fn same_node(&self, dir: &OwnedFd, temp: &[u8], name: &[u8]) -> Result<Placed, Refusal> {
        let (Ok(a), Ok(b)) = (
            rustix::fs::statat(dir, temp, AtFlags::SYMLINK_NOFOLLOW),
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        ) else {
            return Err(Refusal::Exists);
        };
        let kind = FileType::from_raw_mode(a.st_mode);
        let same = kind == FileType::from_raw_mode(b.st_mode)
            && match kind {
                FileType::Symlink => {
                    rustix::fs::readlinkat(dir, temp, Vec::new()).ok()
                        == rustix::fs::readlinkat(dir, name, Vec::new()).ok()
                }
                FileType::CharacterDevice | FileType::BlockDevice => a.st_rdev == b.st_rdev,
                FileType::Fifo => true,
                _ => false,
            };
        if same {
            Ok(Placed::Already)
        } else {
            Err(Refusal::Exists)
        }
    }

    /// Copies `size` bytes into `file`; with `sparse`, blocks of zeros are
    /// left as holes.
    fn copy(&mut self, data: Content<'_>, file: &mut File, size: u64, sparse: bool) -> io::Result<()> {
        let data = match data {
            Content::Bytes(bytes) => {
                if (bytes.len() as u64) < size {
                    return Err(ended(size - bytes.len() as u64));
                }
                let bytes = &bytes[..size as usize];
                if sparse {
                    write_sparse(file, bytes, 0)?;
                    file.set_len(size)?;
                } else {
                    file.write_all(bytes)?;
                }
                return Ok(());
            }
            Content::Stream(data) => data,
        };
        // Only a placer that streams needs the buffer (the workers, given
        // small files whole, never do).
        self.buffer.resize(COPY_BUFFER, 0);
        let mut left = size;
        let mut at = 0u64;
        while left > 0 {
            let want = left.min(self.buffer.len() as u64) as usize;
            let n = match data.read(&mut self.buffer[..want]) {
                Ok(0) => return Err(ended(left)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if sparse {
                write_sparse(file, &self.buffer[..n], at)?;
            } else {
                file.write_all(&self.buffer[..n])?;
            }
            at += n as u64;
            left -= n as u64;
        }
        if sparse {
            file.set_len(size)?;
        }
        Ok(())
    }

    /// Sets owner, mode, extended attributes and times, in the order that
    /// keeps each: chown first (it clears setuid/setgid bits and file
    /// capabilities), then the mode, then attributes (the access ACL
    /// agrees with the mode's group bits), then the times. Setuid/setgid
    /// bits of files and file capabilities only under `keep_privileges`.
    /// An attribute this system cannot hold is noted, not an error.
    fn set_metadata(&mut self, target: Target<'_>, meta: &Meta) -> Result<(), Refusal> {
        let symlink = meta.kind == EntryKind::Symlink;
        if self.restore_owner {
            let (uid, gid) = (
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            );
            match target {
                Target::Fd(fd) => rustix::fs::fchown(fd, uid, gid)?,
                Target::At(dir, name) => rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?,
            }
        }
        let privileged =
            meta.kind == EntryKind::File && (meta.mode & 0o6000 != 0 || meta.xattrs.contains_key(CAPABILITY));
        let drop_privileges = privileged && !self.policy.keep_privileges;
        if drop_privileges {
            self.notes
                .dropped
                .push(String::from_utf8_lossy(&meta.path).into_owned());
        }
        let mode = if drop_privileges {
            meta.mode & !0o6000
        } else {
            meta.mode
        };
        if !symlink {
            let mode = Mode::from_raw_mode(mode & 0o7777);
            match target {
                Target::Fd(fd) => rustix::fs::fchmod(fd, mode)?,
                Target::At(dir, name) => rustix::fs::chmodat(dir, name, mode, AtFlags::empty())?,
            }
        }
        if !meta.xattrs.is_empty() {
            let proc_path;
            let source = match target {
                Target::Fd(fd) => Source::Fd(fd),
                Target::At(dir, name) => {
                    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                    p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                        name,
                    ));
                    proc_path = p;
                    Source::Path(&proc_path)
                }
            };
            for (name, value) in &meta.xattrs {
                if drop_privileges && name == CAPABILITY {
                    continue;
                }
                if let Err(e) = fsmeta::set(&source, name, &value.0) {
                    let ns = fsmeta::namespace(name);
                    self.notes.note(
                        format!("extended attributes in namespace {ns} not restored: {e}"),
                        &meta.path,
                    );
                }
            }
        }
        match target {
            Target::Fd(fd) => rustix::fs::futimens(fd, &timestamps(meta))?,
            Target::At(dir, name) => {
                rustix::fs::utimensat(dir, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }

    /// Creates (or finds) a directory; its metadata is set by
    /// [`dir_metadata`](Self::dir_metadata). Returns whether it was created.
    pub(super) fn dir(&mut self, comps: &[Vec<u8>]) -> Result<bool, Refusal> {
        self.open_dir(comps, true).map(|(_, created)| created)
    }

    /// Sets a directory's owner, mode, attributes and mtime.
    pub(super) fn dir_metadata(&mut self, comps: &[Vec<u8>], meta: &Meta) -> Result<(), String> {
        match self.open_dir(comps, false) {
            Ok((fd, _)) => self
                .set_metadata(Target::Fd(fd.as_fd()), meta)
                .map_err(|r| match r {
                    Refusal::Unsafe(s) | Refusal::Blocked(s) => s,
                    Refusal::Exists => "exists".into(),
                }),
            Err(Refusal::Unsafe(r) | Refusal::Blocked(r)) => Err(r),
            Err(Refusal::Exists) => Ok(()),
        }
    }

    /// Creates a symlink (its target is just data: it may point anywhere, but
    /// nothing is ever written through it).
    pub(super) fn symlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<Placed, Refusal> {
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("symlink without a target".into()))?;
        self.node(comps, entry, |dir, temp| {
            rustix::fs::symlinkat(target.0.as_slice(), dir, temp)
        })
    }

    /// Creates a FIFO or a device node.
    pub(super) fn special(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<Placed, Refusal> {
        let kind = match entry.kind {
            EntryKind::Fifo => FileType::Fifo,
            EntryKind::CharDevice => FileType::CharacterDevice,
            _ => FileType::BlockDevice,
        };
        let dev = rustix::fs::makedev(entry.dev_major, entry.dev_minor);
        self.node(comps, entry, |dir, temp| {
            rustix::fs::mknodat(dir, temp, kind, Mode::from_raw_mode(0o600), dev)
        })
    }

    /// Makes a symlink or special file under a temporary name with `make`,
    /// sets its metadata, and gives it its name.
    fn node(
        &mut self,
        comps: &[Vec<u8>],
        entry: &Entry,
        make: impl FnOnce(&OwnedFd, &[u8]) -> Result<(), Errno>,
    ) -> Result<Placed, Refusal> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let (dir, _) = self.open_dir(parent, true)?;
        if !self.policy.overwrite
            && rustix::fs::statat(&*dir, name[0].as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
        {
            // Something is there already: compare without touching the
            // directory (a rerun must not change what it finished).
            return same_as(&dir, &name[0], entry);
        }
        let temp = self.temp_name();
        make(&dir, &temp)?;
        if let Err(e) = self.set_metadata(Target::At(&dir, &temp), &Meta::from(entry)) {
            let _ = rustix::fs::unlinkat(&*dir, temp.as_slice(), AtFlags::empty());
            return Err(e);
        }
        self.publish(&dir, &temp, &name[0], None)
    }

    /// Creates a hard link at `comps` to the already restored `target` (a
    /// file, or a symlink or special file: the link is never followed).
    pub(super) fn hardlink(&mut self, comps: &[Vec<u8>], target: &[Vec<u8>]) -> Result<Placed, Refusal> {
        let (tparent, tname) = target.split_at(target.len() - 1);
        let (tdir, _) = self.open_dir(tparent, false)?;
        let (parent, name) = comps.split_at(comps.len() - 1);
        let (dir, _) = self.open_dir(parent, true)?;
        if !self.policy.overwrite
            && let Ok(there) = rustix::fs::statat(&*dir, name[0].as_slice(), AtFlags::SYMLINK_NOFOLLOW)
        {
            let target = rustix::fs::statat(&*tdir, tname[0].as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
            let same = target.st_dev == there.st_dev && target.st_ino == there.st_ino;
            return if same {
                Ok(Placed::Already)
            } else {
                Err(Refusal::Exists)
            };
        }
        let temp = self.temp_name();
        rustix::fs::linkat(
            &*tdir,
            tname[0].as_slice(),
            &*dir,
            temp.as_slice(),
            AtFlags::empty(),
        )?;
        match self.publish(&dir, &temp, &name[0], None) {
            // Run again: the link is there if both names are one inode.
            Err(Refusal::Exists) => {
                let same = rustix::fs::statat(&*tdir, tname[0].as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .zip(rustix::fs::statat(&*dir, name[0].as_slice(), AtFlags::SYMLINK_NOFOLLOW).ok())
                    .is_some_and(|(a, b)| a.st_dev == b.st_dev && a.st_ino == b.st_ino);
                if same {
                    Ok(Placed::Already)
                } else {
                    Err(Refusal::Exists)
                }
            }
            other => other,
        }
    }

    /// Flushes the target's file system.
    pub(super) fn sync(&self) -> Result<()> {
        rustix::fs::syncfs(&*self.root).context("flushing restored files to disk")
    }
}

/// A file's content: streamed, or whole in memory (a small file handed to
/// a worker).
pub(super) enum Content<'a> {
    Stream(&'a mut dyn Read),
    Bytes(&'a [u8]),
}

/// The error of content that ends `left` bytes early.
fn ended(left: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("archive ended {left} bytes before the end of the file"),
    )
}

/// Writes `bytes` at offset `at` of `file`, leaving blocks of zeros as holes.
fn write_sparse(file: &File, bytes: &[u8], mut at: u64) -> io::Result<()> {
    for block in bytes.chunks(HOLE_BLOCK) {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, at)?;
        }
        at += block.len() as u64;
    }
    Ok(())
}

/// Whether what is at `name` is what `entry` describes (a symlink to the
/// same target, a FIFO, the same device node).
fn same_as(dir: &OwnedFd, name: &[u8], entry: &Entry) -> Result<Placed, Refusal> {
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return Err(Refusal::Exists);
    };
    let kind = FileType::from_raw_mode(st.st_mode);
    let same = match entry.kind {
        EntryKind::Symlink => {
            kind == FileType::Symlink
                && rustix::fs::readlinkat(dir, name, Vec::new())
                    .is_ok_and(|t| Some(t.as_bytes()) == entry.target.as_ref().map(|e| e.0.as_slice()))
        }
        EntryKind::Fifo => kind == FileType::Fifo,
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            let want = if entry.kind == EntryKind::CharDevice {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            kind == want && st.st_rdev == rustix::fs::makedev(entry.dev_major, entry.dev_minor)
        }
        _ => false,
    };
    if same {
        Ok(Placed::Already)
    } else {
        Err(Refusal::Exists)
    }
}

fn blocked(comps: &[Vec<u8>], i: usize, e: Errno) -> Refusal {
    let at = String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
    match e {
        Errno::LOOP | Errno::NOTDIR => {
            Refusal::Blocked(format!("{at} is a symlink or not a directory; not following it"))
        }
        Errno::NOENT => Refusal::Blocked(format!("{at} does not exist")),
        other => Refusal::Blocked(format!("cannot open directory {at}: {}", io::Error::from(other))),
    }
}

/// Links the unnamed (`O_TMPFILE`) file `file` into `dir` as `name`; fails
/// with `EEXIST` rather than replace anything.
fn link_unnamed(file: &File, dir: &OwnedFd, name: &[u8], mode: LinkMode) -> Result<(), Errno> {
    match mode {
        LinkMode::EmptyPath => rustix::fs::linkat(file, c"", dir, name, AtFlags::EMPTY_PATH),
        LinkMode::ProcFd => {
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(rustix::fs::CWD, path.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
        }
    }
}
