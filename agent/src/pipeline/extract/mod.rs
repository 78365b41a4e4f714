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
//!   default; an existing file is left alone and reported, unless it is
//!   identical to what would be written (a restore run again into its
//!   target continues where it stopped). With `--overwrite` a file may
//!   replace a file or symlink, never a directory.
//! - **Nobody's guard lowered.** A directory that existed keeps its owner,
//!   mode and times unless `--overwrite`. Directories this restore creates
//!   are 0700 until their contents are done, then get their own metadata
//!   (deepest first, so a read-only directory can still be filled); the
//!   ones it created are journaled in the target, so a rerun of the same
//!   snapshot finishes them too. Setuid/setgid bits of files and file
//!   capabilities are restored only when asked (`--keep-privileges`) or when
//!   root restores onto `/`; every file that lost them is reported.
//! - Modes, mtimes (to the nanosecond), extended attributes and ACLs and,
//!   when running as root, owners and device nodes are restored. An
//!   attribute the target cannot hold (no ACL support, `trusted.*` as
//!   another user) leaves the file restored and is reported once per kind.
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
use placer::{Content, Meta, Notes, Placed, Placer, Policy, Refusal};

/// Files up to this size are handed to worker threads whole.
const SMALL_FILE: u64 = 1 << 20;
/// Small files go to the workers in batches of at most this many files
/// and bytes (a file that would take a batch past its bytes starts the
/// next one): a hand-off per file cost three futex calls a file, a thread
/// switch each on two cores.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: usize = 1 << 20;
// Every small file fits in a batch's buffer.
const _: () = assert!(SMALL_FILE as usize <= BATCH_BYTES);
/// Batches queued for the workers at most (with one being filled and one
/// at each worker, about 5 MiB beside the frames the read keeps; 4 queued
/// batches of 2 MiB were no faster).
const QUEUE: usize = 2;
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
    /// Entries found already in place, identical (a restore run again).
    pub already: u64,
    /// FIFOs and device nodes made.
    pub specials: u64,
    /// Entries refused as unsafe: the snapshot asks for what vaultline
    /// never archives.
    pub refused: Vec<Refused>,
    /// Entries the target kept from being placed (a symlink or a file in
    /// the way, a system error, a hard link whose target is not here).
    pub blocked: Vec<Refused>,
    /// Entries left alone because something different exists in their place.
    pub existing: Vec<String>,
    /// What was restored only in part, one line per kind of problem
    /// (attributes the target cannot hold, device nodes without root).
    pub notes: Vec<String>,
    /// Files whose setuid/setgid bits or capabilities were not restored.
    pub dropped_privileges: Vec<String>,
}

/// How a restore treats what exists and what grants privileges.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Replace existing files (never directories), and set the metadata of
    /// existing directories.
    pub overwrite: bool,
    /// Restore setuid/setgid bits and file capabilities.
    pub keep_privileges: bool,
    /// The journal of directories this restore creates (kept outside the
    /// target, in the state directory), so a rerun of the same restore into
    /// the same target finishes them. `None`: no journal.
    pub journal: Option<std::path::PathBuf>,
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

/// A small file for a worker: its content is `range` of its batch's bytes.
struct Job {
    comps: Vec<Vec<u8>>,
    entry: Entry,
    range: std::ops::Range<usize>,
}

/// Small files for a worker, their contents one after another in one
/// buffer, which comes back with the outcomes to be filled again: no
/// allocation per file, and a fixed set of buffers of `BATCH_BYTES`.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    bytes: Vec<u8>,
}

/// A worker's outcome for one job.
struct Done {
    comps: Vec<Vec<u8>>,
    path: EncodedPath,
    size: u64,
    linked: bool,
    result: Result<Result<Placed, Refusal>>,
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
    jobs: Option<SyncSender<Batch>>,
    done: Receiver<(Vec<Done>, Vec<u8>)>,
    /// Small files not yet handed over.
    batch: Batch,
    /// Batch buffers back from the workers, for the next batches.
    spare: Vec<Vec<u8>>,
    /// A worker's write failed (the restore stops).
    write_failed: bool,
    workers: Vec<JoinHandle<Notes>>,
    options: Options,
    is_root: bool,
    /// Directories an earlier run of this restore created (from its journal).
    journaled: HashSet<Vec<u8>>,
    journal: Option<std::fs::File>,
    /// Symlinks this restore made: an entry blocked by one of them is the
    /// snapshot's doing (vaultline never archives a path below a symlink).
    made_symlinks: HashSet<Vec<u8>>,
    in_flight: usize,
    dirs: Vec<DirMeta>,
    /// Restored files that hard links may point to (those the manifest
    /// marks `linked`); other files need not be remembered.
    link_targets: HashSet<Vec<u8>>,
    out: Extracted,
}

impl Extractor {
    /// Restores into `target`, creating it if missing.
    pub fn new(target: &Path, options: Options) -> Result<Self> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS);
        Self::with_workers(target, options, workers, true)
    }

    /// `workers` threads for small files (0: all on the calling thread);
    /// `unnamed`: use `O_TMPFILE` where the file system supports it.
    fn with_workers(target: &Path, options: Options, workers: usize, unnamed: bool) -> Result<Self> {
        let policy = Policy {
            overwrite: options.overwrite,
            keep_privileges: options.keep_privileges,
        };
        std::fs::create_dir_all(target)
            .with_context(|| format!("cannot create target {}", target.display()))?;
        let root = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open target {}", target.display()))?;
        let root = Arc::new(root);
        let mut main = Placer::new(Arc::clone(&root), policy, None)?;
        let link_mode = if unnamed { main.probe_link_mode() } else { None };
        main = Placer::new(Arc::clone(&root), policy, link_mode)?;
        let (journaled, journal) = match &options.journal {
            // Best effort: without it, a rerun leaves the directories an
            // interrupted run made at 0700 (never looser).
            Some(path) => open_journal(path).unwrap_or_else(|e| {
                tracing::debug!("no restore journal {}: {e:#}", path.display());
                (HashSet::new(), None)
            }),
            None => (HashSet::new(), None),
        };

        let (jobs_tx, jobs_rx) = sync_channel::<Batch>(QUEUE);
        let jobs_rx = Arc::new(std::sync::Mutex::new(jobs_rx));
        let (done_tx, done) = channel::<(Vec<Done>, Vec<u8>)>();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let mut placer = Placer::new(Arc::clone(&root), policy, link_mode)?;
            let (rx, tx) = (Arc::clone(&jobs_rx), done_tx.clone());
            handles.push(std::thread::spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return placer.notes,
                    };
                    let Ok(Batch { jobs, bytes }) = job else {
                        return placer.notes;
                    };
                    let mut done = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        // A panic must not leave the restore waiting for a
                        // batch that never comes back: it is this file's error.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            match bytes.get(job.range.clone()) {
                                Some(data) => placer.file(&job.comps, &job.entry, Content::Bytes(data)),
                                None => Err(anyhow!("internal error: a batch lost a file's bytes")),
                            }
                        }))
                        .unwrap_or_else(|_| Err(anyhow!("a restore worker panicked")));
                        let failed = result.is_err();
                        done.push(Done {
                            comps: job.comps,
                            path: job.entry.path,
                            size: job.entry.size,
                            linked: job.entry.linked,
                            result,
                        });
                        // A failed write stops the restore: the rest of
                        // the batch is not attempted.
                        if failed {
                            break;
                        }
                    }
                    if tx.send((done, bytes)).is_err() {
                        return placer.notes;
                    }
                }
            }));
        }
        Ok(Extractor {
            main,
            jobs: if workers > 0 { Some(jobs_tx) } else { None },
            done,
            batch: Batch::default(),
            spare: Vec::new(),
            write_failed: false,
            workers: handles,
            options,
            is_root: rustix::process::geteuid().is_root(),
            journaled,
            journal,
            made_symlinks: HashSet::new(),
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

    fn block(&mut self, path: &EncodedPath, reason: String) {
        tracing::warn!("not restored: {}: {reason}", path.display());
        self.out.blocked.push(Refused {
            path: path.display().into_owned(),
            reason,
        });
    }

    /// Records the outcome of placing anything but a directory.
    fn settle(
        &mut self,
        comps: &[Vec<u8>],
        path: &EncodedPath,
        kind: EntryKind,
        size: u64,
        linked: bool,
        r: Result<Placed, Refusal>,
    ) {
        match r {
            Ok(placed) => {
                if kind == EntryKind::Symlink && placed == Placed::New {
                    self.made_symlinks.insert(comps.join(&b'/'));
                }
                match (placed, kind) {
                    (Placed::Already, _) => self.out.already += 1,
                    (Placed::New, EntryKind::File) => {
                        self.out.files += 1;
                        self.out.bytes += size;
                    }
                    (Placed::New, EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice) => {
                        self.out.specials += 1;
                    }
                    _ => {}
                }
                if linked {
                    self.link_targets.insert(comps.join(&b'/'));
                }
            }
            Err(Refusal::Exists) => self.out.existing.push(path.display().into_owned()),
            Err(Refusal::Unsafe(reason)) => self.refuse(path, reason),
            Err(Refusal::Blocked(reason)) => {
                // Below a symlink this snapshot made: the snapshot's doing.
                let made = (1..comps.len()).find(|&n| self.made_symlinks.contains(&comps[..n].join(&b'/')));
                match made {
                    Some(n) => self.refuse(
                        path,
                        format!(
                            "{} is a symlink this snapshot made; not following it",
                            String::from_utf8_lossy(&comps[..n].join(&b'/'))
                        ),
                    ),
                    None => self.block(path, reason),
                }
            }
        }
    }

    /// Hands the batch being filled to the workers.
    fn send_batch(&mut self) -> Result<()> {
        if self.batch.jobs.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("the restore workers stopped unexpectedly"))?
            .send(batch)
            .map_err(|_| anyhow!("the restore workers stopped unexpectedly"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Takes in finished batches: all of them (the one being filled
    /// handed over first) when `wait`, else those ready. A worker's error
    /// (a failed write) stops the restore.
    fn collect(&mut self, wait: bool) -> Result<()> {
        if wait {
            self.send_batch()?;
        }
        while self.in_flight > 0 {
            let (done, mut bytes) = if wait {
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
            bytes.clear();
            self.spare.push(bytes);
            for done in done {
                let result = done.result.inspect_err(|_| self.write_failed = true)?;
                self.settle(
                    &done.comps,
                    &done.path,
                    EntryKind::File,
                    done.size,
                    done.linked,
                    result,
                );
            }
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
                match self.main.dir(&comps) {
                    Ok(created) => {
                        let path = comps.join(&b'/');
                        if created && let Some(j) = &mut self.journal {
                            use std::io::Write as _;
                            let mut line = path.clone();
                            line.push(0);
                            j.write_all(&line).context("cannot write the restore journal")?;
                        }
                        // Metadata only for what this restore made (or a rerun
                        // of it made), unless asked to overwrite.
                        if created || self.options.overwrite || self.journaled.contains(&path) {
                            self.dirs.push(DirMeta {
                                path,
                                depth: comps.len(),
                                meta: Meta::from(entry),
                            });
                        }
                    }
                    Err(Refusal::Unsafe(r)) => self.refuse(&entry.path, r),
                    Err(Refusal::Blocked(r)) => self.block(&entry.path, r),
                    Err(Refusal::Exists) => {}
                }
                return Ok(());
            }
            EntryKind::File => {
                let data =
                    data.ok_or_else(|| anyhow!("{}: file entry without content", entry.path.display()))?;
                match &self.jobs {
                    Some(_) if entry.size <= SMALL_FILE => {
                        // A batch never grows past its buffer: a file that
                        // would not fit starts the next one.
                        if self.batch.bytes.len() + entry.size as usize > BATCH_BYTES {
                            self.send_batch()?;
                        }
                        if self.batch.bytes.capacity() == 0 {
                            self.batch.bytes = self
                                .spare
                                .pop()
                                .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES));
                        }
                        let bytes = &mut self.batch.bytes;
                        let start = bytes.len();
                        let read = data.take(entry.size).read_to_end(bytes);
                        let got = (bytes.len() - start) as u64;
                        if read.is_err() || got != entry.size {
                            bytes.truncate(start);
                            read?;
                            anyhow::bail!(
                                "restoring {}: archive ended {} bytes before the end of the file",
                                entry.path.display(),
                                entry.size - got
                            );
                        }
                        self.batch.jobs.push(Job {
                            comps,
                            entry: entry.clone(),
                            range: start..start + got as usize,
                        });
                        if self.batch.jobs.len() >= BATCH_FILES || self.batch.bytes.len() >= BATCH_BYTES {
                            self.send_batch()?;
                        }
                        return Ok(());
                    }
                    _ => self.main.file(&comps, entry, Content::Stream(data))?,
                }
            }
            EntryKind::Symlink => self.main.symlink(&comps, entry),
            EntryKind::Fifo => self.main.special(&comps, entry),
            EntryKind::CharDevice | EntryKind::BlockDevice if !self.is_root => {
                self.main.notes_mut().note(
                    "device nodes not restored: only root can make them".into(),
                    &entry.path.0,
                );
                return Ok(());
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => self.main.special(&comps, entry),
            EntryKind::Hardlink => {
                // Its target may still be with a worker.
                self.collect(true)?;
                self.hardlink(&comps, entry)
            }
        };
        self.settle(&comps, &entry.path, entry.kind, entry.size, entry.linked, result);
        Ok(())
    }

    fn hardlink(&mut self, comps: &[Vec<u8>], entry: &Entry) -> Result<Placed, Refusal> {
        let target = entry
            .target
            .as_ref()
            .ok_or_else(|| Refusal::Unsafe("hard link without a target".into()))?;
        let target_comps =
            safe_components(&target.0).map_err(|r| Refusal::Unsafe(format!("link target: {r}")))?;
        if target_comps.is_empty() || !self.link_targets.contains(&target_comps.join(&b'/')) {
            return Err(Refusal::Blocked(format!(
                "its target {} was not restored in this run",
                target.display()
            )));
        }
        self.main.hardlink(comps, &target_comps)
    }

    /// Waits for the workers, applies directory metadata (deepest first) and
    /// flushes everything to disk.
    pub fn finish(mut self) -> Result<Extracted> {
        self.collect(true)?;
        let mut notes = self.stop_workers();
        let dirs = std::mem::take(&mut self.dirs);
        self.apply_dir_metadata(dirs);
        self.main.sync()?;
        notes.merge(std::mem::take(self.main.notes_mut()));
        for (what, (count, first)) in notes.by_kind {
            self.out.notes.push(format!(
                "{what} ({count} entr{}; first: {first})",
                if count == 1 { "y" } else { "ies" }
            ));
        }
        self.out.dropped_privileges = notes.dropped;
        // Finished: a later restore into this target starts afresh.
        if let (Some(path), Some(_)) = (&self.options.journal, self.journal.take()) {
            let _ = std::fs::remove_file(path);
        }
        Ok(std::mem::take(&mut self.out))
    }

    /// Sets directories' metadata, deepest first (so a parent's mode never
    /// blocks reaching its child). A failure is a note: the directory's
    /// contents are restored.
    fn apply_dir_metadata(&mut self, mut dirs: Vec<DirMeta>) {
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &dirs {
            let comps: Vec<Vec<u8>> = d.path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            if let Err(reason) = self.main.dir_metadata(&comps, &d.meta) {
                self.main.notes_mut().note(
                    format!("directory owner, mode or time not set: {reason}"),
                    &d.path,
                );
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

    fn stop_workers(&mut self) -> Notes {
        // The batch being filled is complete and authentic: it is written
        // (an interrupted restore keeps what it had), unless a write
        // failed already, when nothing more is attempted.
        if self.write_failed {
            self.batch = Batch::default();
        } else {
            let _ = self.send_batch();
        }
        self.jobs = None;
        let mut notes = Notes::default();
        for h in self.workers.drain(..) {
            if let Ok(n) = h.join() {
                notes.merge(n);
            }
        }
        notes
    }
}

impl Drop for Extractor {
    /// On an early return (an integrity failure), files already handed to
    /// the workers are complete and authentic: let them finish, then stop.
    fn drop(&mut self) {
        let _ = self.stop_workers();
    }
}

/// Opens (creating) the journal at `path` and reads the directories an
/// earlier run of the same restore created. A private state file, never
/// opened through a symlink.
fn open_journal(path: &Path) -> Result<(HashSet<Vec<u8>>, Option<std::fs::File>)> {
    if let Some(dir) = path.parent() {
        crate::state::private_dir(dir)?;
    }
    let file = crate::state::open_append(path, crate::state::PRIVATE)?;
    let mut bytes = Vec::new();
    (&file).take(256 << 20).read_to_end(&mut bytes)?;
    let dirs = bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok((dirs, Some(file)))
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
            ..Entry::default()
        }
    }

    fn opts(overwrite: bool) -> Options {
        Options {
            overwrite,
            ..Options::default()
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
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
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
                "escape is a symlink this snapshot made; not following it"
            );
            // A symlink that was in the target already blocks, and is not
            // the snapshot's fault.
            let there = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path(), there.path().join("escape")).unwrap();
            let mut x = Extractor::with_workers(there.path(), opts(false), workers, unnamed).unwrap();
            x.place(&through, Some(&mut &b"bad"[..])).unwrap();
            let out = x.finish().unwrap();
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
            assert_eq!(out.blocked.len(), 1, "{workers} {unnamed}");
            assert_eq!(
                out.blocked[0].reason,
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
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
            x.place(&f, Some(&mut &b"new"[..])).unwrap();
            assert_eq!(x.finish().unwrap().existing, ["f"]);
            assert_eq!(std::fs::read(target.path().join("f")).unwrap(), b"old");
            let mut x = Extractor::with_workers(target.path(), opts(true), workers, unnamed).unwrap();
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
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
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
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
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
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
            x.place(&entry("a", EntryKind::File, 5, None), Some(&mut &b"hello"[..]))
                .unwrap();
            x.place(&entry("b", EntryKind::Hardlink, 0, Some("a")), None)
                .unwrap();
            x.place(&entry("c", EntryKind::Hardlink, 0, Some("missing")), None)
                .unwrap();
            let out = x.finish().unwrap();
            assert_eq!((out.files, out.bytes), (1, 5));
            assert_eq!(out.blocked.len(), 1);
            assert_eq!(
                out.blocked[0].reason,
                "its target missing was not restored in this run"
            );
            use std::os::unix::fs::MetadataExt;
            let (a, b) = (
                std::fs::metadata(target.path().join("a")).unwrap(),
                std::fs::metadata(target.path().join("b")).unwrap(),
            );
            assert_eq!(a.ino(), b.ino());
        }
    }

    #[test]
    fn existing_directories_keep_their_guard_and_new_ones_are_private_until_done() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            let existing = target.path().join("kept");
            std::fs::create_dir(&existing).unwrap();
            std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).unwrap();
            let before = std::fs::metadata(&existing).unwrap();
            let mut x = Extractor::with_workers(target.path(), opts(false), workers, unnamed).unwrap();
            let mut open = entry("kept", EntryKind::Dir, 0, None);
            open.mode = 0o777;
            open.mtime = 1;
            x.place(&open, None).unwrap();
            let mut private = entry("new", EntryKind::Dir, 0, None);
            private.mode = 0o755;
            x.place(&private, None).unwrap();
            // While the restore runs, the new directory is 0700.
            assert_eq!(
                std::fs::metadata(target.path().join("new")).unwrap().mode() & 0o777,
                0o700
            );
            x.place(&entry("new/f", EntryKind::File, 1, None), Some(&mut &b"x"[..]))
                .unwrap();
            x.finish().unwrap();
            let after = std::fs::metadata(&existing).unwrap();
            assert_eq!(
                (after.mode(), after.mtime()),
                (before.mode(), before.mtime()),
                "untouched"
            );
            assert_eq!(
                std::fs::metadata(target.path().join("new")).unwrap().mode() & 0o777,
                0o755
            );
        }
    }

    #[test]
    fn setuid_bits_and_capabilities_need_asking_for() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let mut suid = entry("su", EntryKind::File, 2, None);
        suid.mode = 0o4755;
        let mut x = Extractor::with_workers(target.path(), opts(false), 0, true).unwrap();
        x.place(&suid, Some(&mut &b"#!"[..])).unwrap();
        let out = x.finish().unwrap();
        assert_eq!(out.dropped_privileges, ["su"]);
        assert_eq!(
            std::fs::metadata(target.path().join("su")).unwrap().mode() & 0o7777,
            0o755
        );
        let kept = tempfile::tempdir().unwrap();
        let options = Options {
            keep_privileges: true,
            ..Options::default()
        };
        let mut x = Extractor::with_workers(kept.path(), options, 0, true).unwrap();
        x.place(&suid, Some(&mut &b"#!"[..])).unwrap();
        assert!(x.finish().unwrap().dropped_privileges.is_empty());
        assert_eq!(
            std::fs::metadata(kept.path().join("su")).unwrap().mode() & 0o7777,
            0o4755
        );
    }

    #[test]
    fn a_rerun_finds_identical_work_done_and_finishes_the_directories() {
        use std::os::unix::fs::MetadataExt;
        for (workers, unnamed) in modes() {
            let target = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let journal = state.path().join("restores/t.journal");
            let options = Options {
                journal: Some(journal.clone()),
                ..Options::default()
            };
            let mut d = entry("d", EntryKind::Dir, 0, None);
            d.mode = 0o755;
            // An interrupted run: the directory and one file made, then stop.
            let mut x = Extractor::with_workers(target.path(), options.clone(), workers, unnamed).unwrap();
            x.place(&d, None).unwrap();
            x.place(&entry("d/f", EntryKind::File, 5, None), Some(&mut &b"hello"[..]))
                .unwrap();
            drop(x);
            assert_eq!(
                std::fs::metadata(target.path().join("d")).unwrap().mode() & 0o777,
                0o700
            );
            // The rerun: nothing is "in the way", and the directory is finished.
            let mut x = Extractor::with_workers(target.path(), options, workers, unnamed).unwrap();
            x.place(&d, None).unwrap();
            x.place(&entry("d/f", EntryKind::File, 5, None), Some(&mut &b"hello"[..]))
                .unwrap();
            x.place(&entry("d/l", EntryKind::Hardlink, 0, Some("d/f")), None)
                .unwrap();
            let out = x.finish().unwrap();
            assert!(out.existing.is_empty() && out.blocked.is_empty(), "{out:?}");
            assert_eq!(out.already, 1);
            assert_eq!(
                std::fs::metadata(target.path().join("d")).unwrap().mode() & 0o777,
                0o755
            );
            assert!(!journal.exists(), "a finished restore leaves no journal");
        }
    }

    #[test]
    fn fifos_sparse_files_and_links_to_symlinks_come_back() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let target = tempfile::tempdir().unwrap();
        let mut x = Extractor::with_workers(target.path(), opts(false), 0, true).unwrap();
        x.place(&entry("p", EntryKind::Fifo, 0, None), None).unwrap();
        let mut sparse = entry("s", EntryKind::File, 4 << 20, None);
        sparse.sparse = true;
        let mut data = vec![0u8; 4 << 20];
        data[1 << 20] = 1;
        x.place(&sparse, Some(&mut &data[..])).unwrap();
        x.place(&entry("l", EntryKind::Symlink, 0, Some("nowhere")), None)
            .unwrap();
        x.place(&entry("l2", EntryKind::Hardlink, 0, Some("l")), None)
            .unwrap();
        let out = x.finish().unwrap();
        assert!(out.blocked.is_empty() && out.refused.is_empty(), "{out:?}");
        assert!(
            std::fs::metadata(target.path().join("p"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let s = std::fs::metadata(target.path().join("s")).unwrap();
        assert_eq!(s.len(), 4 << 20);
        assert!(
            s.blocks() * 512 < 1 << 20,
            "holes stay holes: {} bytes allocated",
            s.blocks() * 512
        );
        assert_eq!(std::fs::read(target.path().join("s")).unwrap(), data);
        let (a, b) = (
            std::fs::symlink_metadata(target.path().join("l")).unwrap(),
            std::fs::symlink_metadata(target.path().join("l2")).unwrap(),
        );
        assert!(a.file_type().is_symlink());
        assert_eq!(a.ino(), b.ino(), "a hard link to the symlink itself");
    }
}
