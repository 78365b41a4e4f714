//! One backup run of one job: the pipeline of PRODUCT.md.
//!
//! ```text
//! walk (excludes) → tar ──pipe──> zstd (multithreaded) → seal → archive object
//!            └──────→ manifest entries → zstd → seal → manifest object (committed last)
//! ```
//!
//! The walk and tar run on the calling thread, compression, sealing and
//! storing on a second thread; a bounded [`pipe`](crate::pipe) between them
//! fixes the memory in flight. The manifest streams into its own pending
//! object alongside. Commit order is the crash-safety argument: the archive is
//! committed first, the manifest last; a snapshot exists only if its manifest
//! does. A failure or crash at any point leaves no manifest, and the pending
//! leftovers are removed by the next run of the job (which holds its lock).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use vaultline_config::Job;
use vaultline_crypto::{KeyWrap, SealedWriter};

use crate::archive::{Copied, TarEntry, TarWriter, Walker, entry_for, open_for_reading};
use crate::manifest::{
    ArchiveRef, Entry, EntryKind, EnvelopeJson, ManifestEnd, ManifestHeader, ManifestWriter,
};
use crate::output::Progress;
use crate::pipe::pipe;
use crate::repo::{Kind, REPOSITORY_VERSION, Repo, new_snapshot_id};
use crate::store::{ObjectClass, PendingObject};

/// Blocks of the pipe between tar and compression.
const PIPE_BLOCKS: usize = 4;
const PIPE_BLOCK_SIZE: usize = 1 << 20;

/// A path left out of the snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedPath {
    /// The path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The outcome of a run, as printed and as `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The job.
    pub job: String,
    /// The committed snapshot.
    pub snapshot: String,
    /// Regular files archived.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// Bytes of file content read.
    pub bytes_read: u64,
    /// Bytes written to the repository (archive and manifest).
    pub bytes_stored: u64,
    /// bytes_stored / bytes_read.
    pub ratio: f64,
    /// Wall time.
    pub duration_secs: f64,
    /// Paths that could not be read: the snapshot lacks them.
    pub unreadable: Vec<SkippedPath>,
    /// Special files, and files that vanished during the walk.
    pub skipped: Vec<SkippedPath>,
    /// Files that changed size while being read (archived padded or cut).
    pub changed: Vec<SkippedPath>,
}

impl BackupReport {
    /// True when every path the job names is in the snapshot as it was read.
    pub fn is_complete(&self) -> bool {
        self.unreadable.is_empty()
    }
}

/// Runs `job` into `repo`. The caller holds the job's lock.
pub fn run(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    host: &str,
    job: &Job,
    own: &[std::path::PathBuf],
    progress: &Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let job_prefix = repo.job_prefix(host, &job.name);
    let cleaned = repo
        .store()
        .clean_pending(&job_prefix)
        .context("cleaning up after an interrupted run")?;
    if cleaned > 0 {
        tracing::info!(
            "removed {cleaned} incomplete object(s) left by an interrupted run of job {}",
            job.name
        );
    }

    let id = new_snapshot_id()?;
    let archive_name = repo.archive_name(host, &job.name, &id, 0);
    let manifest_name = repo.manifest_name(host, &job.name, &id);
    let archive_ctx = repo.context(host, &job.name, &id, Kind::Archive, &archive_name)?;
    let manifest_ctx = repo.context(host, &job.name, &id, Kind::Manifest, &manifest_name)?;
    let (archive_key, archive_env) = keys
        .generate(&archive_ctx)
        .context("generating the archive's data key")?;
    let (manifest_key, manifest_env) = keys
        .generate(&manifest_ctx)
        .context("generating the manifest's data key")?;

    let header = ManifestHeader {
        vaultline_manifest: REPOSITORY_VERSION,
        snapshot: id.clone(),
        host: host.to_string(),
        job: job.name.clone(),
        parent: None,
        started: started_at.to_string(),
        paths: job.paths.iter().map(|p| p.display().to_string()).collect(),
        archives: vec![ArchiveRef {
            object: archive_name.clone(),
            snapshot: id.clone(),
            envelope: EnvelopeJson::from(&archive_env),
        }],
    };
    let store = repo.store();
    let manifest_obj = store.create(&manifest_name, ObjectClass::Control, None)?;
    let mut manifest = ManifestWriter::new(manifest_obj, &manifest_key, manifest_env, manifest_ctx, &header)
        .with_context(|| format!("starting manifest {manifest_name}"))?;
    drop(manifest_key);
    let archive_obj = store.create(&archive_name, ObjectClass::Archive, None)?;

    let level = job.compression_level;
    let threads = match job.compression_threads {
        0 => thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let (pipe_in, mut pipe_out) = pipe(PIPE_BLOCKS, PIPE_BLOCK_SIZE);

    let mut report = BackupReport {
        job: job.name.clone(),
        snapshot: id.clone(),
        files: 0,
        dirs: 0,
        symlinks: 0,
        hardlinks: 0,
        bytes_read: 0,
        bytes_stored: 0,
        ratio: 0.0,
        duration_secs: 0.0,
        unreadable: Vec::new(),
        skipped: Vec::new(),
        changed: Vec::new(),
    };

    let (archive_obj, walked) = thread::scope(|scope| {
        // Compression, sealing and storing.
        let compressor = scope.spawn(move || -> Result<Box<dyn PendingObject>> {
            let sealed = SealedWriter::new(archive_obj, &archive_key, archive_env, archive_ctx)?;
            drop(archive_key);
            let mut encoder = zstd::stream::write::Encoder::new(sealed, level)?;
            if threads > 1 {
                encoder.multithread(threads)?;
            }
            let mut buf = vec![0u8; PIPE_BLOCK_SIZE];
            loop {
                let n = match pipe_out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                encoder
                    .write_all(&buf[..n])
                    .context("compressing and storing the archive")?;
            }
            let sealed = encoder.finish()?;
            Ok(sealed.finish()?)
        });

        // Walk and tar, on this thread.
        let walked = write_tar(job, own, pipe_in, &mut manifest, &mut report, progress);
        let compressed = compressor
            .join()
            .map_err(|_| anyhow!("the compression thread panicked"))?;
        match (walked, compressed) {
            (Ok(()), Ok(obj)) => Ok((obj, ())),
            // The compressor's failure is the cause when the tar side only saw a broken pipe.
            (Err(e), Err(c)) if crate::pipe::is_broken_pipe(&e) => Err(c),
            (Err(e), _) => Err(e),
            (Ok(()), Err(c)) => Err(c),
        }
    })?;
    let () = walked;

    let archive_info = archive_obj
        .commit()
        .with_context(|| format!("committing archive {archive_name}"))?;
    let end = ManifestEnd {
        finished: jiff::Timestamp::now().to_string(),
        files: report.files,
        dirs: report.dirs,
        symlinks: report.symlinks,
        hardlinks: report.hardlinks,
        bytes: report.bytes_read,
        skipped: (report.skipped.len() + report.unreadable.len()) as u64,
        archive_sizes: vec![archive_info.size],
    };
    let manifest_obj = manifest
        .finish(end)
        .with_context(|| format!("finishing manifest {manifest_name}"))?;
    let manifest_info = manifest_obj
        .commit()
        .with_context(|| format!("committing manifest {manifest_name}"))?;

    report.bytes_stored = archive_info.size + manifest_info.size;
    report.ratio = if report.bytes_read == 0 {
        0.0
    } else {
        report.bytes_stored as f64 / report.bytes_read as f64
    };
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Walks the job, writing tar into `out` and entries into `manifest`.
fn write_tar(
    job: &Job,
    own: &[std::path::PathBuf],
    out: crate::pipe::PipeWriter,
    manifest: &mut ManifestWriter,
    report: &mut BackupReport,
    progress: &Progress,
) -> Result<()> {
    let mut tar = TarWriter::new(out);
    // First archive path of each multiply-linked file, by (device, inode).
    let mut links: HashMap<(u64, u64), crate::manifest::EncodedPath> = HashMap::new();
    let mut skipped = Vec::new();
    Walker::new(job, own).walk(
        |found| {
            let mut entry: TarEntry = match entry_for(&found) {
                Ok(e) => e,
                Err(e) => {
                    report.unreadable.push(SkippedPath {
                        path: found.abs.display().to_string(),
                        reason: e.to_string(),
                    });
                    return Ok(());
                }
            };
            let mut linked = false;
            if entry.kind == EntryKind::File && found.meta.nlink() > 1 {
                let key = (found.meta.dev(), found.meta.ino());
                match links.get(&key) {
                    Some(first) => {
                        entry.kind = EntryKind::Hardlink;
                        entry.target = Some(first.clone());
                        entry.size = 0;
                    }
                    None => {
                        links.insert(key, entry.path.clone());
                        linked = true;
                    }
                }
            }
            let copied = if entry.kind == EntryKind::File {
                let mut file = match open_for_reading(&found.abs) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        report.skipped.push(SkippedPath {
                            path: found.abs.display().to_string(),
                            reason: "vanished during the backup".into(),
                        });
                        return Ok(());
                    }
                    Err(e) => {
                        progress.warn(&format!("cannot read {}: {e}", found.abs.display()));
                        report.unreadable.push(SkippedPath {
                            path: found.abs.display().to_string(),
                            reason: e.to_string(),
                        });
                        return Ok(());
                    }
                };
                tar.append(&entry, Some(&mut file as &mut dyn Read))
                    .with_context(|| format!("archiving {}", found.abs.display()))?
            } else {
                tar.append(&entry, None)
                    .with_context(|| format!("archiving {}", found.abs.display()))?
            };
            match copied {
                Copied::Exact => {}
                Copied::Shrunk { read } => report.changed.push(SkippedPath {
                    path: found.abs.display().to_string(),
                    reason: format!(
                        "shrank while being read: {read} of {} bytes, the rest stored as zeros",
                        entry.size
                    ),
                }),
                Copied::Grew => report.changed.push(SkippedPath {
                    path: found.abs.display().to_string(),
                    reason: format!("grew while being read: stored its first {} bytes", entry.size),
                }),
            }
            match entry.kind {
                EntryKind::File => {
                    report.files += 1;
                    report.bytes_read += entry.size;
                }
                EntryKind::Dir => report.dirs += 1,
                EntryKind::Symlink => report.symlinks += 1,
                EntryKind::Hardlink => report.hardlinks += 1,
            }
            manifest.entry(&Entry {
                path: entry.path,
                kind: entry.kind,
                size: entry.size,
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                mtime: entry.mtime,
                mtime_nsec: entry.mtime_nsec,
                target: entry.target,
                linked,
                archive: 0,
            })?;
            progress.add(entry.size, 1);
            Ok(())
        },
        |s| skipped.push(s),
    )?;
    for s in skipped {
        let item = SkippedPath {
            path: s.path.display().to_string(),
            reason: s.reason,
        };
        if s.is_error {
            progress.warn(&format!("cannot read {}: {}", item.path, item.reason));
            report.unreadable.push(item);
        } else {
            progress.warn(&format!("skipped {}: {}", item.path, item.reason));
            report.skipped.push(item);
        }
    }
    let pipe = tar.finish()?;
    pipe.finish()?;
    Ok(())
}
