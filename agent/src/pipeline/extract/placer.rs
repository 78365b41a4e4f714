//! The file-system work of restoring, for one thread: opening directories
//! without following symlinks, writing files so they appear only complete,
//! creating links, setting metadata. Every operation is relative to the
//! target's directory descriptor; no path string is ever resolved.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::repo::manifest::Entry;

const COPY_BUFFER: usize = 1 << 20;
const TEMP_PREFIX: &str = ".vaultline-restore-";

/// Why an entry was not placed.
pub(super) enum Refusal {
    /// Unsafe or impossible; the reason.
    Unsafe(String),
    /// Something exists in its place and `--overwrite` was not given.
    Exists,
}

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Self {
        Refusal::Unsafe(io::Error::from(e).to_string())
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
    overwrite: bool,
    restore_owner: bool,
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
}

/// The metadata restored on an inode.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
    pub(super) mtime_nsec: u32,
}

impl From<&Entry> for Meta {
    fn from(e: &Entry) -> Self {
        Meta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
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

impl Placer {
    /// A placer under `root`.
    pub(super) fn new(root: Arc<OwnedFd>, overwrite: bool, link_mode: Option<LinkMode>) -> Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
        Ok(Placer {
            root,
            overwrite,
            restore_owner: rustix::process::geteuid().is_root(),
            open: Vec::new(),
            temp_prefix: format!("{TEMP_PREFIX}{}-", hex::encode(random)),
            temp_counter: 0,
            link_mode,
            buffer: vec![0; COPY_BUFFER],
        })
    }

    /// Whether unnamed files can be created and named in the target, and how.
    pub(super) fn probe_link_mode(&mut self) -> Option<LinkMode> {
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
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
    /// as far as it matches.
    pub(super) fn open_dir(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Arc<OwnedFd>, Refusal> {
        let shared = self
            .open
            .iter()
            .zip(comps)
            .take_while(|((name, _), comp)| name == *comp)
            .count();
        self.open.truncate(shared);
        for (i, comp) in comps.iter().enumerate().skip(shared) {
            let parent = self
                .open
                .last()
                .map_or_else(|| Arc::clone(&self.root), |(_, fd)| Arc::clone(fd));
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&*parent, comp.as_slice(), flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*parent, comp.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&*parent, comp.as_slice(), flags, Mode::empty())
                        .map_err(|e| blocked(comps, i, e))?
                }
                Err(e) => return Err(blocked(comps, i, e)),
            };
            self.open.push((comp.clone(), Arc::new(next)));
        }
        Ok(self
            .open
            .last()
            .map_or_else(|| Arc::clone(&self.root), |(_, fd)| Arc::clone(fd)))
    }

    /// Writes a file with exactly `entry.size` bytes from `data`. An error
    /// reading `data` (an integrity failure) is returned as `Err` and leaves
    /// nothing behind; placement problems are refusals.
    pub(super) fn file(
        &mut self,
        comps: &[Vec<u8>],
        entry: &Entry,
        data: &mut dyn Read,
    ) -> Result<Result<(), Refusal>> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = match self.open_dir(parent, true) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        // Preferred: an unnamed file in the final directory, given its one
        // name only when complete. A failure before that leaves no trace, and
        // the directory changes once per file, as with a plain tar.
        if let Some(mode) = self.link_mode {
            let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
            match rustix::fs::openat(&*dir, ".", flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    let mut file = File::from(fd);
                    self.copy(data, &mut file, entry.size)
                        .and_then(|()| {
                            self.set_metadata(file.as_fd(), &Meta::from(entry))
                                .map_err(io::Error::from)
                        })
                        .with_context(|| format!("restoring {}", entry.path.display()))?;
                    return Ok(self.link_into_place(&dir, &file, &name[0], mode));
                }
                // This directory is on a file system without O_TMPFILE.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
                Err(e) => return Ok(Err(e.into())),
            }
        }
        let temp = self.temp_name();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&*dir, temp.as_slice(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut file = File::from(fd);
        let written = self.copy(data, &mut file, entry.size);
        let finished = written.and_then(|()| {
            self.set_metadata(file.as_fd(), &Meta::from(entry))
                .map_err(io::Error::from)
        });
        drop(file);
        if let Err(e) = finished {
            let _ = rustix::fs::unlinkat(&*dir, temp.as_slice(), AtFlags::empty());
            return Err(e).with_context(|| format!("restoring {}", entry.path.display()));
        }
        Ok(self.publish(&dir, &temp, &name[0]))
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
    ) -> Result<(), Refusal> {
        if !self.overwrite {
            return match link_unnamed(file, dir, name, mode) {
                Ok(()) => Ok(()),
                Err(Errno::EXIST) => Err(Refusal::Exists),
                Err(e) => Err(e.into()),
            };
        }
        let temp = self.temp_name();
        link_unnamed(file, dir, &temp, mode)?;
        self.publish(dir, &temp, name)
    }

    /// Renames `temp` to `name` in `dir`: no-replace unless overwriting, and
    /// never over a directory. Removes `temp` if it cannot.
    fn publish(&self, dir: &OwnedFd, temp: &[u8], name: &[u8]) -> Result<(), Refusal> {
        let flags = if self.overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        if self.overwrite
            && let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        {
            let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
            return Err(Refusal::Unsafe(
                "a directory exists there; not replacing it".into(),
            ));
        }
        match rustix::fs::renameat_with(dir, temp, dir, name, flags) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
                if e == Errno::EXIST {
                    Err(Refusal::Exists)
                } else {
                    Err(e.into())
                }
            }
        }
    }

    fn copy(&mut self, data: &mut dyn Read, file: &mut File, size: u64) -> io::Result<()> {
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buffer.len() as u64) as usize;
            let n = match data.read(&mut self.buffer[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("archive ended {left} bytes before the end of the file"),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            file.write_all(&self.buffer[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn set_metadata(&self, fd: impl AsFd, meta: &Meta) -> Result<(), Errno> {
        if self.restore_owner {
            // Before chmod: chown clears setuid/setgid bits.
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
        rustix::fs::futimens(&fd, &timestamps(meta))
    }

    /// Creates (or finds) a directory; its metadata is set by [`dir_metadata`](Self::dir_metadata).
    pub(super) fn dir(&mut self, comps: &[Vec<u8>]) -> Result<(), Refusal> {
        self.open_dir(comps, true).map(drop)
    }

    /// Sets a directory's owner, mode and mtime.
    pub(super) fn dir_metadata(&mut self, comps: &[Vec<u8>], meta: &Meta) -> Result<(), String> {
        match self.open_dir(comps, false) {
            Ok(fd) => self
                .set_metadata(&*fd, meta)
                .map_err(|e| io::Error::from(e).to_string()),
            Err(Refusal::Unsafe(r)) => Err(r),
            Err(Refusal::Exists) => Ok(()),
        }
    }

    /// Creates a symlink (its target is just data: it may point anywhere, but
    /// nothing is ever written through it).
    pub(super) fn symlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<(), Refusal> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("symlink without a target".into()))?;
        let dir = self.open_dir(parent, true)?;
        let temp = self.temp_name();
        rustix::fs::symlinkat(target.0.as_slice(), &*dir, temp.as_slice())?;
        let meta = (|| {
            if self.restore_owner {
                rustix::fs::chownat(
                    &*dir,
                    temp.as_slice(),
                    Some(rustix::fs::Uid::from_raw(entry.uid)),
                    Some(rustix::fs::Gid::from_raw(entry.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            rustix::fs::utimensat(
                &*dir,
                temp.as_slice(),
                &timestamps(&Meta::from(entry)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        })();
        if let Err(e) = meta {
            let _ = rustix::fs::unlinkat(&*dir, temp.as_slice(), AtFlags::empty());
            return Err(e.into());
        }
        self.publish(&dir, &temp, &name[0])
    }

    /// Creates a hard link at `comps` to the already restored `target`.
    pub(super) fn hardlink(&mut self, comps: &[Vec<u8>], target: &[Vec<u8>]) -> Result<(), Refusal> {
        let (tparent, tname) = target.split_at(target.len() - 1);
        let tdir = self.open_dir(tparent, false)?;
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = self.open_dir(parent, true)?;
        let temp = self.temp_name();
        rustix::fs::linkat(
            &*tdir,
            tname[0].as_slice(),
            &*dir,
            temp.as_slice(),
            AtFlags::empty(),
        )?;
        self.publish(&dir, &temp, &name[0])
    }

    /// Flushes the target's file system.
    pub(super) fn sync(&self) -> Result<()> {
        rustix::fs::syncfs(&*self.root).context("flushing restored files to disk")
    }
}

fn blocked(comps: &[Vec<u8>], i: usize, e: Errno) -> Refusal {
    let at = String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
    match e {
        Errno::LOOP | Errno::NOTDIR => {
            Refusal::Unsafe(format!("{at} is a symlink or not a directory; not following it"))
        }
        Errno::NOENT => Refusal::Unsafe(format!("{at} does not exist")),
        other => Refusal::Unsafe(format!("cannot open directory {at}: {}", io::Error::from(other))),
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
