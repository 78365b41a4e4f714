//! Writing restored entries into a target directory, safely.
//!
//! The rules, and how they are enforced:
//!
//! - **Nothing outside the target.** Entry paths are checked first (no
//!   absolute paths, no `..`, no empty or NUL-containing components). Then
//!   every parent directory is opened one component at a time, relative to
//!   the target's file descriptor, with `O_NOFOLLOW | O_DIRECTORY`: a symlink
//!   anywhere on the way (one the archive itself created, or one already in
//!   the target) makes the open fail, and the entry is refused. Nothing is
//!   ever resolved through a path string.
//! - **No half-written files.** Content goes to a temporary name in the
//!   final directory and is renamed into place only when complete; the bytes
//!   come from a sealed reader that releases only authenticated data. If
//!   reading fails (an integrity error), the temporary file is removed.
//! - **No overwriting unless asked.** The final rename uses
//!   `RENAME_NOREPLACE`; an existing file is left alone and reported. With
//!   `--overwrite` a file may replace a file or symlink, never a directory.
//! - Modes, mtimes (to the nanosecond) and, when running as root, owners are
//!   restored; directories get theirs at the end, deepest first, so that
//!   writing their contents does not disturb them and a read-only directory
//!   can still be filled.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use crate::manifest::{EncodedPath, Entry, EntryKind};

const COPY_BUFFER: usize = 1 << 20;
const TEMP_PREFIX: &str = ".vaultline-restore-";
/// Parent directories kept open; entries come grouped by directory.
const DIR_CACHE: usize = 32;

/// An entry that was not restored, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// The entry's path as stored.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
}

/// Result of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Written.
    Done,
    /// Left alone: something exists there and `--overwrite` was not given.
    Exists,
    /// Refused as unsafe (see [`Extractor::refused`]).
    Refused,
}

/// Restores entries under one target directory.
pub struct Extractor {
    root: OwnedFd,
    overwrite: bool,
    restore_owner: bool,
    dirs: Vec<(Vec<Vec<u8>>, Entry)>,
    files: HashSet<Vec<u8>>,
    cache: Vec<(Vec<Vec<u8>>, OwnedFd)>,
    buffer: Vec<u8>,
    /// Entries refused as unsafe.
    pub refused: Vec<Refused>,
    /// Entries not written because something exists in their place.
    pub existing: Vec<String>,
}

/// Why an entry cannot be placed.
enum Refusal {
    Unsafe(String),
    Exists,
}

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Self {
        Refusal::Unsafe(io::Error::from(e).to_string())
    }
}

/// Splits an archive path into safe components, or says why it is unsafe.
pub fn safe_components(path: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with(b"/") {
        return Err("absolute path".into());
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains `..`".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn now_nsec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

fn temp_name() -> Vec<u8> {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        r = (now_nsec() ^ u64::from(std::process::id())).to_le_bytes();
    }
    format!("{TEMP_PREFIX}{}", hex::encode(r)).into_bytes()
}

fn timestamps(entry: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: entry.mtime,
        tv_nsec: entry.mtime_nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Extractor {
    /// Restores into `target`, creating it if missing.
    pub fn new(target: &Path, overwrite: bool) -> Result<Self> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("cannot create target {}", target.display()))?;
        let root = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open target {}", target.display()))?;
        Ok(Extractor {
            root,
            overwrite,
            restore_owner: rustix::process::geteuid().is_root(),
            dirs: Vec::new(),
            files: HashSet::new(),
            cache: Vec::new(),
            buffer: vec![0; COPY_BUFFER],
            refused: Vec::new(),
            existing: Vec::new(),
        })
    }

    /// Opens (creating if asked) the directory `comps` below the target,
    /// never following a symlink.
    fn open_dir(&mut self, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd, Refusal> {
        if let Some((_, fd)) = self.cache.iter().find(|(c, _)| c == comps) {
            return fd.try_clone().map_err(|e| Refusal::Unsafe(e.to_string()));
        }
        let mut fd = self
            .root
            .try_clone()
            .map_err(|e| Refusal::Unsafe(e.to_string()))?;
        for (i, comp) in comps.iter().enumerate() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&fd, comp.as_slice(), flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, comp.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&fd, comp.as_slice(), flags, Mode::empty())
                        .map_err(|e| self.blocked(comps, i, e))?
                }
                Err(e) => return Err(self.blocked(comps, i, e)),
            };
            fd = next;
        }
        if self.cache.len() >= DIR_CACHE {
            self.cache.remove(0);
        }
        if let Ok(copy) = fd.try_clone() {
            self.cache.push((comps.to_vec(), copy));
        }
        Ok(fd)
    }

    fn blocked(&self, comps: &[Vec<u8>], i: usize, e: Errno) -> Refusal {
        let at = String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
        match e {
            Errno::LOOP | Errno::NOTDIR => {
                Refusal::Unsafe(format!("{at} is a symlink or not a directory; not following it"))
            }
            Errno::NOENT => Refusal::Unsafe(format!("{at} does not exist")),
            other => Refusal::Unsafe(format!("cannot open directory {at}: {}", io::Error::from(other))),
        }
    }

    fn refuse(&mut self, path: &EncodedPath, reason: String) -> Placed {
        tracing::warn!("refused {}: {reason}", path.display());
        self.refused.push(Refused {
            path: path.display().into_owned(),
            reason,
        });
        Placed::Refused
    }

    fn settle(&mut self, path: &EncodedPath, result: Result<(), Refusal>) -> Placed {
        match result {
            Ok(()) => Placed::Done,
            Err(Refusal::Exists) => {
                self.existing.push(path.display().into_owned());
                Placed::Exists
            }
            Err(Refusal::Unsafe(reason)) => self.refuse(path, reason),
        }
    }

    /// Restores one entry. Files read their content from `data`, which must
    /// yield exactly `entry.size` bytes; an error from `data` is returned
    /// (and nothing is left behind), every other problem is a refusal.
    pub fn place(&mut self, entry: &Entry, data: Option<&mut dyn Read>) -> Result<Placed> {
        let comps = match safe_components(&entry.path.0) {
            Ok(c) => c,
            Err(reason) => return Ok(self.refuse(&entry.path, reason)),
        };
        if comps.is_empty() {
            // "." itself: the target directory; its metadata is the user's.
            return Ok(Placed::Done);
        }
        let result = match entry.kind {
            EntryKind::Dir => self.dir(&comps, entry),
            EntryKind::File => match data {
                Some(data) => self.file(&comps, entry, data)?,
                None => Err(Refusal::Unsafe("file entry without content".into())),
            },
            EntryKind::Symlink => self.symlink(&comps, entry),
            EntryKind::Hardlink => self.hardlink(&comps, entry),
        };
        if result.is_ok() && entry.kind == EntryKind::File {
            self.files.insert(comps.join(&b'/'));
        }
        Ok(self.settle(&entry.path, result))
    }

    fn dir(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<(), Refusal> {
        self.open_dir(comps, true)?;
        self.dirs.push((comps.to_vec(), entry.clone()));
        Ok(())
    }

    /// Renames `temp` to `name` in `dir`: no-replace unless overwriting, and
    /// never over a directory.
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

    fn file(&mut self, comps: &[Vec<u8>], entry: &Entry, data: &mut dyn Read) -> Result<Result<(), Refusal>> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = match self.open_dir(parent, true) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        let temp = temp_name();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, temp.as_slice(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut file = File::from(fd);
        let written = self.copy(data, &mut file, entry.size);
        let finished = written.and_then(|()| self.set_metadata(file.as_fd(), entry).map_err(io::Error::from));
        drop(file);
        if let Err(e) = finished {
            let _ = rustix::fs::unlinkat(&dir, temp.as_slice(), AtFlags::empty());
            return Err(e).with_context(|| format!("restoring {}", entry.path.display()));
        }
        Ok(self.publish(&dir, &temp, &name[0]))
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

    fn set_metadata(&self, fd: impl AsFd, entry: &Entry) -> Result<(), Errno> {
        if self.restore_owner {
            // Before chmod: chown clears setuid/setgid bits.
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(entry.uid)),
                Some(rustix::fs::Gid::from_raw(entry.gid)),
            )?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(entry.mode & 0o7777))?;
        rustix::fs::futimens(&fd, &timestamps(entry))
    }

    fn symlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<(), Refusal> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("symlink without a target".into()))?;
        let dir = self.open_dir(parent, true)?;
        let temp = temp_name();
        rustix::fs::symlinkat(target.0.as_slice(), &dir, temp.as_slice())?;
        let meta = (|| {
            if self.restore_owner {
                rustix::fs::chownat(
                    &dir,
                    temp.as_slice(),
                    Some(rustix::fs::Uid::from_raw(entry.uid)),
                    Some(rustix::fs::Gid::from_raw(entry.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            rustix::fs::utimensat(
                &dir,
                temp.as_slice(),
                &timestamps(entry),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        })();
        if let Err(e) = meta {
            let _ = rustix::fs::unlinkat(&dir, temp.as_slice(), AtFlags::empty());
            return Err(e.into());
        }
        self.publish(&dir, &temp, &name[0])
    }

    fn hardlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<(), Refusal> {
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("hard link without a target".into()))?;
        let target_comps =
            safe_components(&target.0).map_err(|r| Refusal::Unsafe(format!("link target: {r}")))?;
        if target_comps.is_empty() || !self.files.contains(&target_comps.join(&b'/')) {
            return Err(Refusal::Unsafe(format!(
                "link target {} was not restored in this run",
                target.display()
            )));
        }
        let (tparent, tname) = target_comps.split_at(target_comps.len() - 1);
        let tdir = self.open_dir(tparent, false)?;
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = self.open_dir(parent, true)?;
        let temp = temp_name();
        rustix::fs::linkat(
            &tdir,
            tname[0].as_slice(),
            &dir,
            temp.as_slice(),
            AtFlags::empty(),
        )?;
        self.publish(&dir, &temp, &name[0])
    }

    /// Applies directory metadata (deepest first) and flushes everything to
    /// disk.
    pub fn finish(mut self) -> Result<Extracted> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, entry) in &dirs {
            match self.open_dir(comps, false) {
                Ok(fd) => {
                    if let Err(e) = self.set_metadata(&fd, entry) {
                        tracing::warn!(
                            "cannot set owner, mode or time of {}: {}",
                            entry.path.display(),
                            io::Error::from(e)
                        );
                    }
                }
                Err(Refusal::Unsafe(r)) => {
                    tracing::warn!("cannot set metadata of {}: {r}", entry.path.display())
                }
                Err(Refusal::Exists) => {}
            }
        }
        rustix::fs::syncfs(&self.root).context("flushing restored files to disk")?;
        Ok(Extracted {
            refused: self.refused,
            existing: self.existing,
        })
    }
}

/// What could not be restored.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Entries refused as unsafe.
    pub refused: Vec<Refused>,
    /// Entries left alone because something exists in their place.
    pub existing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, size: u64, target: Option<&str>) -> Entry {
        Entry {
            path: EncodedPath(path.as_bytes().to_vec()),
            kind,
            size,
            mode: 0o640,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: 1_600_000_000,
            mtime_nsec: 123,
            target: target.map(|t| EncodedPath(t.as_bytes().to_vec())),
            archive: 0,
        }
    }

    #[test]
    fn path_checks() {
        assert_eq!(
            safe_components(b"etc/./hosts").unwrap(),
            vec![b"etc".to_vec(), b"hosts".to_vec()]
        );
        assert_eq!(safe_components(b"/etc/passwd").unwrap_err(), "absolute path");
        assert_eq!(safe_components(b"a/../../b").unwrap_err(), "path contains `..`");
        assert_eq!(safe_components(b"").unwrap_err(), "empty path");
    }

    #[test]
    fn never_writes_through_a_symlink_it_created() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(target.path(), false).unwrap();
        let link = entry(
            "escape",
            EntryKind::Symlink,
            0,
            Some(outside.path().to_str().unwrap()),
        );
        assert_eq!(x.place(&link, None).unwrap(), Placed::Done);
        let through = entry("escape/owned", EntryKind::File, 3, None);
        assert_eq!(
            x.place(&through, Some(&mut &b"bad"[..])).unwrap(),
            Placed::Refused
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            x.refused[0].reason,
            "escape is a symlink or not a directory; not following it"
        );
    }

    #[test]
    fn existing_files_are_kept_unless_overwriting() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("f"), "old").unwrap();
        let f = entry("f", EntryKind::File, 3, None);
        let mut x = Extractor::new(target.path(), false).unwrap();
        assert_eq!(x.place(&f, Some(&mut &b"new"[..])).unwrap(), Placed::Exists);
        assert_eq!(std::fs::read(target.path().join("f")).unwrap(), b"old");
        let mut x = Extractor::new(target.path(), true).unwrap();
        assert_eq!(x.place(&f, Some(&mut &b"new"[..])).unwrap(), Placed::Done);
        assert_eq!(std::fs::read(target.path().join("f")).unwrap(), b"new");
        // No temporary files left behind either way.
        let names: Vec<_> = std::fs::read_dir(target.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn a_failing_source_leaves_nothing() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "tampered"))
            }
        }
        let target = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(target.path(), false).unwrap();
        assert!(
            x.place(&entry("d/f", EntryKind::File, 10, None), Some(&mut Failing))
                .is_err()
        );
        assert_eq!(std::fs::read_dir(target.path().join("d")).unwrap().count(), 0);
    }
}
