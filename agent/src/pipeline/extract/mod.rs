//! Writing restored entries into a target directory, safely and in parallel.
//!
//! The rules, and how they are enforced:
//!
//! - **Nothing outside the target.** Entry paths are checked first (no
//!   absolute paths, no `..`, no empty or NUL-containing components). Then
//!   every directory is opened one component at a time, relative to the
//!   target's file descriptor, with `O_NOFOLLOW | O_DIRECTORY`: a symlink
//!   anywhere on the way (one the archive itself created, or one already in
//!   the target) makes the open fail, and the entry is refused. Nothing is
//!   ever resolved through a path string, so this holds whatever order the
//!   entries are placed in.
//! - **No half-written files.** A file is written as an unnamed `O_TMPFILE`
//!   in its final directory and linked to its name only when complete (or,
//!   where the file system has no `O_TMPFILE`, under a temporary name and
//!   renamed); the bytes come from a sealed reader that releases only
//!   authenticated data. If reading fails (an integrity error), nothing is
//!   left behind.
//! - **No overwriting unless asked.** Linking and renaming never replace by
//!   default; an existing file is left alone and reported. With `--overwrite`
//!   a file may replace a file or symlink, never a directory.
//! - Modes, mtimes (to the nanosecond) and, when running as root, owners are
//!   restored; directories get theirs at the end, deepest first, so that
//!   writing their contents does not disturb them and a read-only directory
//!   can still be filled.
//!
//! Creating many small files is dominated by the kernel's work per file, so
//! small files (the bulk of most trees) are read whole from the stream and
//! placed by worker threads, each with its own [`Placer`]; large files are
//! streamed by the calling thread, so memory stays bounded. A hard link waits
//! for the files in flight, so its target exists.

mod placer;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;

use crate::repo::manifest::{EncodedPath, Entry, EntryKind};
use placer::{Meta, Placer, Refusal};

/// Files up to this size are handed to worker threads whole.
const SMALL_FILE: u64 = 1 << 20;
/// Small files queued for the workers at most (bounds memory: 16 MiB).
const QUEUE: usize = 16;
/// Most worker threads.
const MAX_WORKERS: usize = 4;
/// Directories awaiting metadata before the finished ones are applied
/// (small enough that the 200 MB round-trip test exercises it).
const DIR_FLUSH: usize = 256;

/// An entry that was not restored, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// The entry's path as stored.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries refused as unsafe.
    pub refused: Vec<Refused>,
    /// Entries left alone because something exists in their place.
    pub existing: Vec<String>,
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

/// A small file for a worker.
struct Job {
    comps: Vec<Vec<u8>>,
    entry: Entry,
    data: Vec<u8>,
}

/// A worker's outcome for one job.
struct Done {
    comps: Vec<Vec<u8>>,
    path: EncodedPath,
    size: u64,
    linked: bool,
    result: Result<Result<(), Refusal>>,
}

/// A directory whose metadata is applied at the end. Kept compact: a big
/// tree has many of them.
struct DirMeta {
    path: Vec<u8>,
    depth: usize,
    meta: Meta,
}

/// Restores entries under one target directory.
pub struct Extractor {
    main: Placer,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    dirs: Vec<DirMeta>,
    /// Restored files that hard links may point to (those the manifest
    /// marks `linked`); other files need not be remembered.
    link_targets: HashSet<Vec<u8>>,
    out: Extracted,
}

impl Extractor {
    /// Restores into `target`, creating it if missing.
    pub fn new(target: &Path, overwrite: bool) -> Result<Self> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS);
        Self::with_workers(target, overwrite, workers, true)
    }

    /// `workers` threads for small files (0: all on the calling thread);
    /// `unnamed`: use `O_TMPFILE` where the file system supports it.
    fn with_workers(target: &Path, overwrite: bool, workers: usize, unnamed: bool) -> Result<Self> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("cannot create target {}", target.display()))?;
        let root = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open target {}", target.display()))?;
        let root = Arc::new(root);
        let mut main = Placer::new(Arc::clone(&root), overwrite, None)?;
        let link_mode = if unnamed { main.probe_link_mode() } else { None };
        main = Placer::new(Arc::clone(&root), overwrite, link_mode)?;

        let (jobs_tx, jobs_rx) = sync_channel::<Job>(QUEUE);
        let jobs_rx = Arc::new(std::sync::Mutex::new(jobs_rx));
        let (done_tx, done) = channel::<Done>();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let mut placer = Placer::new(Arc::clone(&root), overwrite, link_mode)?;
            let (rx, tx) = (Arc::clone(&jobs_rx), done_tx.clone());
            handles.push(std::thread::spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = placer.file(&job.comps, &job.entry, &mut &job.data[..]);
                    let done = Done {
                        comps: job.comps,
                        path: job.entry.path,
                        size: job.entry.size,
                        linked: job.entry.linked,
                        result,
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(Extractor {
            main,
            jobs: if workers > 0 { Some(jobs_tx) } else { None },
            done,
            workers: handles,
            in_flight: 0,
            dirs: Vec::new(),
            link_targets: HashSet::new(),
            out: Extracted::default(),
        })
    }

    fn refuse(&mut self, path: &EncodedPath, reason: String) {
        tracing::warn!("refused {}: {reason}", path.display());
        self.out.refused.push(Refused {
            path: path.display().into_owned(),
            reason,
        });
    }

    /// Records the outcome of placing a file or link.
    fn settle(
        &mut self,
        comps: &[Vec<u8>],
        path: &EncodedPath,
        kind: EntryKind,
        size: u64,
        linked: bool,
        r: Result<(), Refusal>,
    ) {
        match r {
            Ok(()) => {
                if kind == EntryKind::File {
                    self.out.files += 1;
                    self.out.bytes += size;
                    if linked {
                        self.link_targets.insert(comps.join(&b'/'));
                    }
                }
            }
            Err(Refusal::Exists) => self.out.existing.push(path.display().into_owned()),
            Err(Refusal::Unsafe(reason)) => self.refuse(path, reason),
        }
    }

    /// Takes in finished worker jobs: all of them when `wait`, else those
    /// ready. A worker's error (a failed write) stops the restore.
    fn collect(&mut self, wait: bool) -> Result<()> {
        while self.in_flight > 0 {
            let done = if wait {
                self.done
                    .recv()
                    .map_err(|_| anyhow!("a restore worker stopped unexpectedly"))?
            } else {
                match self.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => return Ok(()),
                }
            };
            self.in_flight -= 1;
            let result = done.result?;
            self.settle(
                &done.comps,
                &done.path,
                EntryKind::File,
                done.size,
                done.linked,
                result,
            );
        }
        Ok(())
    }

    /// Restores one entry. Files read their content from `data`, which must
    /// yield exactly `entry.size` bytes; an error from `data` is returned
    /// (and nothing of that file is left behind), every other problem with
    /// an entry is recorded as a refusal or an existing file.
    pub fn place(&mut self, entry: &Entry, data: Option<&mut dyn Read>) -> Result<()> {
        self.collect(false)?;
        let comps = match safe_components(&entry.path.0) {
            Ok(c) => c,
            Err(reason) => {
                self.refuse(&entry.path, reason);
                return Ok(());
            }
        };
        if comps.is_empty() {
            // "." itself: the target directory; its metadata is the user's.
            return Ok(());
        }
        if self.dirs.len() >= DIR_FLUSH {
            self.finish_closed_dirs(&comps.join(&b'/'))?;
        }
        let result = match entry.kind {
            EntryKind::Dir => {
                let r = self.main.dir(&comps);
                if r.is_ok() {
                    self.dirs.push(DirMeta {
                        path: comps.join(&b'/'),
                        depth: comps.len(),
                        meta: Meta::from(entry),
                    });
                }
                r
            }
            EntryKind::File => {
                let data =
                    data.ok_or_else(|| anyhow!("{}: file entry without content", entry.path.display()))?;
                match &self.jobs {
                    Some(jobs) if entry.size <= SMALL_FILE => {
                        let mut bytes = Vec::with_capacity(entry.size as usize);
                        data.take(entry.size).read_to_end(&mut bytes)?;
                        if bytes.len() as u64 != entry.size {
                            anyhow::bail!(
                                "restoring {}: archive ended {} bytes before the end of the file",
                                entry.path.display(),
                                entry.size - bytes.len() as u64
                            );
                        }
                        let job = Job {
                            comps,
                            entry: entry.clone(),
                            data: bytes,
                        };
                        jobs.send(job)
                            .map_err(|_| anyhow!("the restore workers stopped unexpectedly"))?;
                        self.in_flight += 1;
                        return Ok(());
                    }
                    _ => self.main.file(&comps, entry, data)?,
                }
            }
            EntryKind::Symlink => self.main.symlink(&comps, entry),
            EntryKind::Hardlink => {
                // Its target may still be with a worker.
                self.collect(true)?;
                self.hardlink(&comps, entry)
            }
        };
        self.settle(&comps, &entry.path, entry.kind, entry.size, entry.linked, result);
        Ok(())
    }

    fn hardlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<(), Refusal> {
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("hard link without a target".into()))?;
        let target_comps =
            safe_components(&target.0).map_err(|r| Refusal::Unsafe(format!("link target: {r}")))?;
        if target_comps.is_empty() || !self.link_targets.contains(&target_comps.join(&b'/')) {
            return Err(Refusal::Unsafe(format!(
                "link target {} was not restored in this run",
                target.display()
            )));
        }
        self.main.hardlink(comps, &target_comps)
    }

    /// Waits for the workers, applies directory metadata (deepest first) and
    /// flushes everything to disk.
    pub fn finish(mut self) -> Result<Extracted> {
        self.collect(true)?;
        self.stop_workers();
        let dirs = std::mem::take(&mut self.dirs);
        self.apply_dir_metadata(dirs);
        self.main.sync()?;
        Ok(std::mem::take(&mut self.out))
    }

    /// Sets directories' metadata, deepest first (so a parent's mode never
    /// blocks reaching its child).
    fn apply_dir_metadata(&mut self, mut dirs: Vec<DirMeta>) {
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &dirs {
            let comps: Vec<Vec<u8>> = d.path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            if let Err(reason) = self.main.dir_metadata(&comps, &d.meta) {
                let path = String::from_utf8_lossy(&d.path);
                tracing::warn!("cannot set owner, mode or time of {path}: {reason}");
            }
        }
    }

    /// Keeps the list of directories awaiting metadata bounded: archives are
    /// depth first, so a directory that is not an ancestor of the entry now
    /// being placed will receive nothing more, and can be finished once the
    /// files in flight (which may be inside it) are done.
    fn finish_closed_dirs(&mut self, current: &[u8]) -> Result<()> {
        self.collect(true)?;
        let (open, closed): (Vec<DirMeta>, Vec<DirMeta>) = std::mem::take(&mut self.dirs)
            .into_iter()
            .partition(|d| current.starts_with(&d.path) && current.get(d.path.len()) == Some(&b'/'));
        self.dirs = open;
        self.apply_dir_metadata(closed);
        Ok(())
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Extractor {
    /// On an early return (an integrity failure), queued files are still
    /// complete and authentic: let the workers finish them, then stop.
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[cfg(test)]
mod tests {
    use std::io;

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
            linked: true,
            archive: None,
            offset: None,
        }
    }

    /// Each test runs with every way of writing files: workers or not,
    /// unnamed files or named temporaries.
    fn modes() -> [(usize, bool); 3] {
        [(0, true), (2, true), (2, false)]
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
        for (workers, unnamed) in modes() {
            let outside = tempfile::tempdir().unwrap();
            let target = tempfile::tempdir().unwrap();
            let mut x = Extractor::with_workers(target.path(), false, workers, unnamed).unwrap();
            let link = entry(
                "escape",
                EntryKind::Symlink,
                0,
                Some(outside.path().to_str().unwrap()),
            );
            x.place(&link, None).unwrap();
            let through = entry("escape/owned", EntryKind::File, 3, None);
            x.place(&through, Some(&mut &b"bad"[..])).unwrap();
            let out = x.finish().unwrap();
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
            assert_eq!(out.refused.len(), 1, "{workers} {unnamed}");
            assert_eq!(
                out.refused[0].reason,
                "escape is a symlink or not a directory; not following it"
            );
        }
    }

    #[test]
    fn existing_files_are_kept_unless_overwriting() {
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            std::fs::write(target.path().join("f"), "old").unwrap();
            let f = entry("f", EntryKind::File, 3, None);
            let mut x = Extractor::with_workers(target.path(), false, workers, unnamed).unwrap();
            x.place(&f, Some(&mut &b"new"[..])).unwrap();
            assert_eq!(x.finish().unwrap().existing, ["f"]);
            assert_eq!(std::fs::read(target.path().join("f")).unwrap(), b"old");
            let mut x = Extractor::with_workers(target.path(), true, workers, unnamed).unwrap();
            x.place(&f, Some(&mut &b"new"[..])).unwrap();
            let out = x.finish().unwrap();
            assert!(out.existing.is_empty() && out.refused.is_empty());
            assert_eq!(std::fs::read(target.path().join("f")).unwrap(), b"new");
            // No temporary files left behind either way.
            let names: Vec<_> = std::fs::read_dir(target.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["f"]);
        }
    }

    #[test]
    fn a_failing_source_leaves_nothing() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "tampered"))
            }
        }
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            let mut x = Extractor::with_workers(target.path(), false, workers, unnamed).unwrap();
            assert!(
                x.place(&entry("d/f", EntryKind::File, 10, None), Some(&mut Failing))
                    .is_err()
            );
            drop(x);
            let left: Vec<_> = std::fs::read_dir(target.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                left.is_empty() || std::fs::read_dir(target.path().join("d")).unwrap().count() == 0,
                "{left:?}"
            );
        }
    }

    #[test]
    fn directory_metadata_is_right_across_flushes() {
        use std::os::unix::fs::MetadataExt;
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            let mut x = Extractor::with_workers(target.path(), false, workers, unnamed).unwrap();
            let n = DIR_FLUSH * 2 + 7;
            for i in 0..n {
                let mut d = entry(&format!("d{i:04}"), EntryKind::Dir, 0, None);
                d.mode = 0o750;
                d.mtime = 1_500_000_000 + i as i64;
                x.place(&d, None).unwrap();
                x.place(
                    &entry(&format!("d{i:04}/f"), EntryKind::File, 1, None),
                    Some(&mut &b"x"[..]),
                )
                .unwrap();
            }
            x.finish().unwrap();
            for i in 0..n {
                let m = std::fs::metadata(target.path().join(format!("d{i:04}"))).unwrap();
                assert_eq!(
                    (m.mtime(), m.mode() & 0o7777),
                    (1_500_000_000 + i as i64, 0o750),
                    "d{i:04}"
                );
            }
        }
    }

    #[test]
    fn hard_links_wait_for_their_target() {
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            let mut x = Extractor::with_workers(target.path(), false, workers, unnamed).unwrap();
            x.place(&entry("a", EntryKind::File, 5, None), Some(&mut &b"hello"[..]))
                .unwrap();
            x.place(&entry("b", EntryKind::Hardlink, 0, Some("a")), None)
                .unwrap();
            x.place(&entry("c", EntryKind::Hardlink, 0, Some("missing")), None)
                .unwrap();
            let out = x.finish().unwrap();
            assert_eq!((out.files, out.bytes), (1, 5));
            assert_eq!(out.refused.len(), 1);
            use std::os::unix::fs::MetadataExt;
            let (a, b) = (
                std::fs::metadata(target.path().join("a")).unwrap(),
                std::fs::metadata(target.path().join("b")).unwrap(),
            );
            assert_eq!(a.ino(), b.ino());
        }
    }
}
