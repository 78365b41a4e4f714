//! One backup run of one job: the pipeline of PRODUCT.md.
//!
//! ```text
//! walk (excludes) ⋈ parent's record → tar of changed content → zstd frames (worker pool) → seal → archive
//!            └──────→ every entry → manifest (zstd → seal, committed last) and the new local record
//! ```
//!
//! The walk joins each path against the local record of the job's last
//! snapshot ([`changes`](crate::pipeline::changes)): unchanged entries are carried
//! into the new manifest pointing at the archive that already holds them,
//! so an incremental run archives only new and changed files, and a run
//! with no change writes no archive at all. A full run (the first, every
//! `full-every-runs` runs or `full-every-days` days, or whenever the record
//! cannot be trusted) archives everything; the report says why it was full.
//!
//! The walk, tar and sealing run on the calling thread; zstd frames are
//! compressed by a worker pool ([`frames`](crate::pipeline::frames)), which bounds
//! the memory in flight. Commit order is the crash-safety argument: the
//! archive is committed first, the manifest last; a snapshot exists only if
//! its manifest does, and the local record is replaced only after that. A
//! failure or crash at any point leaves no manifest, and the pending
//! leftovers are removed by the next run of the job (which holds its lock);
//! a committed archive without a manifest is an orphan for `forget`.
//!
//! Streams — the job's command sources, or `backup stdin`'s pipe — are
//! files below `/vaultline-streams` (docs/FORMAT.md §14.3), emitted at their
//! place in walk order between the walk's entries (`Tree`) so the join
//! with the record stays in order. Each is read once, as it comes, through
//! the content-defined chunker (`store_chunks` with no size known): no
//! spool, no plaintext on disk, memory of a fixed size. A command's exit
//! status decides whether its file is listed (a failed one is reported and
//! left out, like an unreadable file).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use vaultline_config::{CommandSource, Job};
use vaultline_crypto::{KeyWrap, SealedWriter};

use crate::error::{Interrupted, UsageError};
use crate::pipeline::Progress;
use crate::pipeline::changes::{self, Record, RecordWriter, STATE_VERSION, Stat, StateHeader};
use crate::pipeline::child;
use crate::pipeline::chunks::{self, ChunkId, ChunkIndex, ChunkKey, Chunker};
use crate::pipeline::frames::FrameWriter;
use crate::pipeline::fsmeta;
use crate::pipeline::tar::{Content, Copied, TarWriter};
use crate::pipeline::tree::{self, NodesSink, TreeWriter};
use crate::pipeline::walk::{ChangedIdentity, Found, Kind as WalkKind, Walker};
use crate::repo::manifest::{
    ArchiveRef, ChunkRef, EncodedPath, Entry, EntryKind, EnvelopeJson, MANIFEST_VERSION, ManifestEnd,
    ManifestHeader, ManifestWriter, NodesRef, NodesWriter,
};
use crate::repo::store::{ObjectClass, PendingObject, Retention};
use crate::repo::{Kind, Repo, snapshot_id_at};

/// How close to the moment of its stat a file's ctime may be before the
/// record treats it as "racy" (re-archived next run): Linux file timestamps
/// come from a clock that ticks every 1–10 ms. File systems with coarser
/// timestamps (FAT: 2 s) need full runs to catch a change made within one
/// tick of a backup's stat (docs/retention.md).
const RACY_MARGIN_NS: i128 = 20_000_000;

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
    /// The snapshot it builds on (None: a full snapshot).
    pub parent: Option<String>,
    /// The archive object it wrote (None: nothing changed).
    pub archive: Option<String>,
    /// Why the run was full, when it was.
    pub full_reason: Option<String>,
    /// Regular files archived.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Bytes of file content in the snapshot.
    pub bytes_read: u64,
    /// Files whose content was archived (new or changed).
    pub archived_files: u64,
    /// Their bytes.
    pub archived_bytes: u64,
    /// Entries carried over unchanged from the parent.
    pub reused: u64,
    /// Paths of the parent that are gone.
    pub deleted: u64,
    /// Bytes of content this run stored that the chain did not hold yet
    /// (whole files, and the chunks of large files it had not seen).
    pub new_bytes: u64,
    /// Segments of the tree listing this run wrote (the others it shares
    /// with the snapshot before).
    pub new_segments: u64,
    /// Bytes written to the repository (archive, node pack and manifest).
    pub bytes_stored: u64,
    /// bytes_stored / bytes_read.
    pub ratio: f64,
    /// Wall time.
    pub duration_secs: f64,
    /// Paths that could not be read: the snapshot lacks them.
    pub unreadable: Vec<SkippedPath>,
    /// Special files, and files that vanished during the walk.
    pub skipped: Vec<SkippedPath>,
    /// Files that grew while being read (archived cut at their size).
    pub changed: Vec<SkippedPath>,
    /// Extended attributes that could not be read, one line per kind of
    /// problem (with a count and the first path).
    pub attributes: Vec<SkippedPath>,
    /// The job's `after` hook failed once the snapshot was committed (how).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_hook: Option<String>,
}

impl BackupReport {
    /// True when every path the job names is in the snapshot as it was
    /// read (command sources included), and the `after` hook succeeded.
    pub fn is_complete(&self) -> bool {
        self.unreadable.is_empty() && self.after_hook.is_none()
    }
}

/// When a run starts, and the id its snapshot gets: chosen before the
/// job's `before` hook runs, which is told the id.
#[derive(Debug, Clone)]
pub struct Start {
    /// The start.
    pub at: jiff::Timestamp,
    /// The snapshot id, made from `at`.
    pub id: String,
}

impl Start {
    /// Now, with a fresh snapshot id.
    pub fn now() -> Result<Start> {
        let at = jiff::Timestamp::now();
        Ok(Start {
            id: snapshot_id_at(at)?,
            at,
        })
    }
}

/// How a run is to be made.
pub struct RunOptions<'a> {
    /// vaultline's own directories, never archived.
    pub own: &'a [PathBuf],
    /// The state directory (the change-detection record lives there).
    pub state_dir: &'a Path,
    /// Make a full snapshot whatever the record says.
    pub force_full: bool,
    /// Set (by a signal handler) to stop the run: checked once per walked
    /// entry and before the archive is committed; the run then fails with
    /// [`Interrupted`] and its pending objects are discarded (nothing is
    /// committed).
    pub cancel: &'a AtomicBool,
    /// When the run started and its snapshot's id.
    pub start: Start,
}

/// The parent an incremental run builds on (with where its chunks are),
/// or why the run is full.
enum Base {
    Incremental(Box<Record>, ChunkIndex),
    Full(String),
}

/// Decides between an incremental and a full run, from the local record
/// and a listing of the repository (no object is read: this works on a
/// write-only host).
fn choose_base(
    repo: &Repo,
    keys: &dyn KeyWrap,
    host: &str,
    job: &Job,
    opts: &RunOptions<'_>,
    now: jiff::Timestamp,
) -> Result<Base> {
    if opts.force_full {
        return Ok(Base::Full("a full snapshot was asked for (--full)".into()));
    }
    let mut record = match Record::open(opts.state_dir, &job.name)? {
        Ok(r) => r,
        Err(why) => return Ok(Base::Full(why)),
    };
    let h = &record.header;
    if h.repository != repo_identity(repo) {
        return Ok(Base::Full(format!(
            "the local record is of another repository ({})",
            h.repository
        )));
    }
    if h.host != host {
        return Ok(Base::Full(format!(
            "the local record is of host {}, this run is for host {host}",
            h.host
        )));
    }
    // The newest by the repository's time; a future-dated snapshot (a
    // clock far ahead, or one planted to take over "latest") is no base.
    // Snapshots this host made apart from the chain (`backup stdin`, noted
    // in the state directory) do not count: the chain goes on from the
    // record's snapshot.
    let apart = changes::made_apart(opts.state_dir, &job.name);
    let newest = repo
        .list_snapshots(host, Some(&job.name))?
        .into_iter()
        .rfind(|s| {
            if s.future_dated() {
                tracing::warn!("{}", s.future_note());
            }
            !s.future_dated() && !apart.contains(&s.id)
        });
    match newest {
        Some(s) if s.id == h.snapshot => {}
        Some(s) => {
            return Ok(Base::Full(format!(
                "the local record is of snapshot {}, but the newest snapshot of job {} is {}",
                h.snapshot, job.name, s.id
            )));
        }
        None => {
            return Ok(Base::Full(format!(
                "the local record is of snapshot {}, which is not in the repository",
                h.snapshot
            )));
        }
    }
    if h.chain + 1 >= job.full_every_runs {
        return Ok(Base::Full(format!(
            "{} incremental run(s) since the last full (full-every-runs = {})",
            h.chain, job.full_every_runs
        )));
    }
    if job.full_every_days > 0
        && let Ok(full) = h.full_started.parse::<jiff::Timestamp>()
        && now.duration_since(full).as_secs() >= i64::from(job.full_every_days) * 86_400
    {
        return Ok(Base::Full(format!(
            "the last full snapshot started {} (full-every-days = {})",
            h.full_started, job.full_every_days
        )));
    }
    if let Some(a) = h
        .archives
        .iter()
        .flatten()
        .find(|a| a.envelope.provider != keys.provider_id() || a.envelope.key_id != keys.key_id())
    {
        return Ok(Base::Full(format!(
            "the local record holds data keys wrapped by {} key {}, not the configured key (the key was \
             changed, e.g. by `vaultline rewrap`; a backup host cannot read the new envelopes, by design)",
            a.envelope.provider, a.envelope.key_id
        )));
    }
    let present: HashMap<String, u64> = repo
        .store()
        .list(&repo.job_prefix(host, &job.name))?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    for a in h.archives.iter().flatten() {
        if present.get(&a.object) != Some(&a.size) {
            return Ok(Base::Full(format!(
                "archive {} of the chain is missing or changed in the repository",
                a.object
            )));
        }
    }
    for n in h.nodes.iter().flatten() {
        if present.get(&n.object) != Some(&n.size) {
            return Ok(Base::Full(format!(
                "node pack {} of the chain is missing or changed in the repository",
                n.object
            )));
        }
    }
    // Last, as it reads the record through: what the entries hold.
    let index = match record.start()? {
        Ok(index) => index,
        Err(why) => return Ok(Base::Full(why)),
    };
    Ok(Base::Incremental(Box::new(record), index))
}

/// What the change-detection record says the repository is.
fn repo_identity(repo: &Repo) -> String {
    format!("{} prefix {}", repo.store().describe(), repo.prefix())
}

/// The archive being written, created at the first entry that needs it.
struct ArchiveOut {
    tar: TarWriter<FrameWriter<SealedWriter<Box<dyn PendingObject>>>>,
    name: String,
    envelope: EnvelopeJson,
}

/// Makes the run's node pack when the tree writer first needs it.
struct PackMaker<'a> {
    repo: &'a Repo,
    keys: &'a (dyn KeyWrap + Sync),
    host: &'a str,
    job: &'a str,
    id: &'a str,
    retention: Option<&'a Retention>,
    /// Index the pack gets in the node pack table.
    index: u32,
    /// Its name and envelope, once made.
    made: Option<(String, EnvelopeJson)>,
}

impl NodesSink for PackMaker<'_> {
    fn start(&mut self) -> Result<(NodesWriter<Box<dyn PendingObject>>, u32)> {
        let name = self.repo.nodes_name(self.host, self.job, self.id);
        let ctx = self
            .repo
            .context(self.host, self.job, self.id, Kind::Nodes, &name)?;
        let (key, envelope) = self
            .keys
            .generate(&ctx)
            .context("generating the node pack's data key")?;
        let object = self
            .repo
            .store()
            .create(&name, ObjectClass::Control, self.retention)?;
        self.made = Some((name, EnvelopeJson::from(&envelope)));
        Ok((NodesWriter::new(object, &key, envelope, ctx)?, self.index))
    }
}

/// Everything the walk writes into.
struct Sinks<'a> {
    repo: &'a Repo,
    keys: &'a (dyn KeyWrap + Sync),
    host: &'a str,
    job: &'a Job,
    id: &'a str,
    retention: Option<&'a Retention>,
    archive: Option<ArchiveOut>,
    /// Index the new archive gets in the table.
    new_index: u32,
    manifest: ManifestWriter,
    record: RecordWriter,
    /// File entries and chunks per archive-table slot.
    refs: Vec<u64>,
    /// The tree listing, cut into segments.
    tree: TreeWriter,
    pack: PackMaker<'a>,
    chunk_key: &'a ChunkKey,
    /// Its window, made at the first chunked file and kept for the run.
    chunker: Option<Chunker>,
    /// Where every chunk the run may refer to is.
    index: ChunkIndex,
    /// The run's stop flag, also checked between the chunks of one large
    /// file (a file of many GiB must not hold a SIGTERM off until its end).
    cancel: &'a AtomicBool,
}

impl Sinks<'_> {
    fn archive(&mut self) -> Result<&mut ArchiveOut> {
        if self.archive.is_none() {
            let name = self.repo.archive_name(self.host, &self.job.name, self.id, 0);
            let ctx = self
                .repo
                .context(self.host, &self.job.name, self.id, Kind::Archive, &name)?;
            let (key, envelope) = self
                .keys
                .generate(&ctx)
                .context("generating the archive's data key")?;
            let object = self
                .repo
                .store()
                .create(&name, ObjectClass::Archive, self.retention)?;
            let envelope_json = EnvelopeJson::from(&envelope);
            let sealed = SealedWriter::new(object, &key, envelope, ctx)?;
            let threads = match self.job.compression_threads {
                0 => thread::available_parallelism().map_or(1, |n| n.get()),
                n => n as usize,
            };
            let frames = FrameWriter::new(sealed, self.job.compression_level, threads)?;
            self.archive = Some(ArchiveOut {
                tar: TarWriter::new(frames),
                name,
                envelope: envelope_json,
            });
        }
        self.archive
            .as_mut()
            .ok_or_else(|| anyhow!("the archive could not be started"))
    }
}

/// What a run backs up.
enum Contents<'s> {
    /// The job: its paths and its command sources.
    Job,
    /// One stream alone (`backup stdin`), as the file `NAME` below
    /// [`STREAMS_ROOT`](vaultline_config::STREAMS_ROOT).
    Stream(&'s str, &'s mut dyn Read),
}

/// Runs `job` into `repo`: its paths and its command sources. The caller
/// holds the job's lock (and runs its hooks, [`hooks::around`](crate::pipeline::hooks::around)).
pub fn run(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    host: &str,
    job: &Job,
    opts: &RunOptions<'_>,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    run_contents(repo, keys, host, job, opts, Contents::Job, progress)
}

/// Backs up `source` (a pipe: standard input) as the file `name` below
/// [`STREAMS_ROOT`](vaultline_config::STREAMS_ROOT), in a snapshot of
/// `job` holding that file alone. The snapshot is full and made apart
/// from the job's chain: its local record stays that of the job's last
/// run, which the next run builds on (the apart snapshot noted so that it
/// does not look like a newer snapshot made elsewhere). A source that
/// cannot be read to its end commits nothing. The caller holds the job's
/// lock.
#[allow(clippy::too_many_arguments)]
pub fn run_stream(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    host: &str,
    job: &Job,
    opts: &RunOptions<'_>,
    name: &str,
    source: &mut dyn Read,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    vaultline_config::check_stream_name(name).map_err(|why| UsageError(format!("NAME: {why}")))?;
    run_contents(
        repo,
        keys,
        host,
        job,
        opts,
        Contents::Stream(name, source),
        progress,
    )
}

fn run_contents(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    host: &str,
    job: &Job,
    opts: &RunOptions<'_>,
    contents: Contents<'_>,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let started_at = opts.start.at;
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

    let retention = match &job.object_lock {
        Some(lock) => {
            if !repo.store().object_lock_enabled()? {
                return Err(UsageError(format!(
                    "job {} asks for object-lock, but {} does not have Object Lock enabled (it can only be \
                     enabled when a bucket is created, or by AWS support)",
                    job.name,
                    repo.store().describe()
                ))
                .into());
            }
            Some(Retention {
                mode: lock.mode.clone(),
                until: started_at
                    .checked_add(jiff::SignedDuration::from_hours(i64::from(lock.days) * 24))
                    .context("object-lock.days reaches past the year 9999")?,
            })
        }
        None => None,
    };

    let base = match &contents {
        Contents::Job => choose_base(repo, keys, host, job, opts, started_at)?,
        Contents::Stream(..) => Base::Full(
            "it holds one stream alone, made apart from the job's runs (whose next run builds on their own \
             last snapshot)"
                .into(),
        ),
    };
    let id = opts.start.id.clone();
    let manifest_name = repo.manifest_name(host, &job.name, &id);
    let manifest_ctx = repo.context(host, &job.name, &id, Kind::Manifest, &manifest_name)?;
    let (manifest_key, manifest_env) = keys
        .generate(&manifest_ctx)
        .context("generating the manifest's data key")?;

    let (mut record, index, full_reason) = match base {
        Base::Incremental(r, index) => (Some(*r), index, None),
        Base::Full(why) => (None, ChunkIndex::new(), Some(why)),
    };
    let chunk_key = ChunkKey::load_or_create(opts.state_dir, &job.name)?;
    if let Some(why) = &full_reason {
        tracing::info!("job {}: full snapshot: {why}", job.name);
    }
    let (parent, chain, full_started, mut table, mut nodes_table, parent_segments) = match &record {
        Some(r) => (
            Some(r.header.snapshot.clone()),
            r.header.chain + 1,
            r.header.full_started.clone(),
            r.header.archives.clone(),
            r.header.nodes.clone(),
            r.header.segments.clone(),
        ),
        None => (
            None,
            0,
            started_at.to_string(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ),
    };
    let header = ManifestHeader {
        vaultline_manifest: MANIFEST_VERSION,
        snapshot: id.clone(),
        host: host.to_string(),
        job: job.name.clone(),
        parent: parent.clone(),
        chain,
        full_started: full_started.clone(),
        started: started_at.to_string(),
        // The job's paths, then the files of its streams.
        paths: match &contents {
            Contents::Job => job
                .paths
                .iter()
                .cloned()
                .chain(
                    job.commands
                        .iter()
                        .map(|c| vaultline_config::stream_path(&c.name)),
                )
                .map(|p| p.display().to_string())
                .collect(),
            Contents::Stream(name, _) => vec![vaultline_config::stream_path(name).display().to_string()],
        },
    };
    let store = repo.store();
    let manifest_obj = store.create(&manifest_name, ObjectClass::Control, retention.as_ref())?;
    let manifest = ManifestWriter::new(manifest_obj, &manifest_key, manifest_env, manifest_ctx, &header)
        .with_context(|| format!("starting manifest {manifest_name}"))?;
    drop(manifest_key);

    let mut report = BackupReport {
        job: job.name.clone(),
        snapshot: id.clone(),
        parent,
        archive: None,
        full_reason,
        files: 0,
        dirs: 0,
        symlinks: 0,
        hardlinks: 0,
        specials: 0,
        bytes_read: 0,
        archived_files: 0,
        archived_bytes: 0,
        reused: 0,
        deleted: 0,
        new_bytes: 0,
        new_segments: 0,
        bytes_stored: 0,
        ratio: 0.0,
        duration_secs: 0.0,
        unreadable: Vec::new(),
        skipped: Vec::new(),
        changed: Vec::new(),
        attributes: Vec::new(),
        after_hook: None,
    };
    let mut sinks = Sinks {
        repo,
        keys,
        host,
        job,
        id: &id,
        retention: retention.as_ref(),
        archive: None,
        new_index: table.len() as u32,
        manifest,
        record: RecordWriter::new(opts.state_dir, &job.name)?,
        refs: vec![0; table.len() + 1],
        tree: TreeWriter::new(tree::Parent::new(parent_segments)),
        pack: PackMaker {
            repo,
            keys,
            host,
            job: &job.name,
            id: &id,
            retention: retention.as_ref(),
            index: nodes_table.len() as u32,
            made: None,
        },
        chunk_key: &chunk_key,
        chunker: None,
        index,
        cancel: opts.cancel,
    };
    let (stdin_name, source) = match contents {
        Contents::Job => (None, None),
        Contents::Stream(name, source) => (Some(name), Some(source)),
    };
    let apart = stdin_name.is_some();
    let streams = Streams::new(job, stdin_name, started_at);
    write_tar(
        job,
        opts.own,
        opts.cancel,
        &mut sinks,
        record.as_mut(),
        Tree {
            walk: !apart,
            streams,
            stdin: source,
        },
        &mut report,
        progress,
    )?;
    if apart && let Some(u) = report.unreadable.first() {
        // A pipe read in part is no backup of it.
        return Err(anyhow!(
            "{} could not be read to its end: {}; nothing was committed",
            u.path,
            u.reason
        ));
    }

    let Sinks {
        archive,
        mut manifest,
        record: record_writer,
        refs,
        tree,
        mut pack,
        ..
    } = sinks;
    // The last moment to stop: once the archive is committed, the manifest
    // follows at once (an archive alone would be an orphan).
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(Interrupted(None).into());
    }
    let (last, pack_writer, segments) = tree.finish(&mut pack)?;
    if let Some(segment) = last {
        manifest.segment(&segment)?;
    }
    let mut archive_size = 0;
    if let Some(out) = archive {
        let frames_out = out.tar.finish()?;
        let (sealed, frames) = frames_out.finish()?;
        let object = sealed.finish()?;
        // Finishing waited for the frames still being compressed and
        // written (the writing thread): a stop asked for meanwhile still
        // stops the run, and the object is discarded uncommitted.
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(Interrupted(None).into());
        }
        let info = object
            .commit()
            .with_context(|| format!("committing archive {}", out.name))?;
        archive_size = info.size;
        report.archive = Some(out.name.clone());
        table.push(Some(ArchiveRef {
            object: out.name,
            snapshot: id.clone(),
            envelope: out.envelope,
            size: info.size,
            plain_size: frames.plain_size,
            frame_size: frames.frame_size,
            frames: frames.lengths,
        }));
    } else {
        table.push(None);
    }
    // Archives no entry of this snapshot refers to any more drop out of the
    // table (the slot stays, so indices hold), and out of the chain. This
    // run's own archive stays even then (a full run of a tree without file
    // content): every committed archive is named by its manifest.
    let own = table.len() - 1;
    for (i, (slot, count)) in table.iter_mut().zip(&refs).enumerate() {
        if *count == 0 && i != own {
            *slot = None;
        }
    }
    while table.last().is_some_and(Option::is_none) {
        table.pop();
    }
    // The node pack after the archive, before the manifest.
    let mut nodes_size = 0;
    match (pack_writer, pack.made.take()) {
        (Some((writer, _)), Some((name, envelope))) => {
            let (object, plain_size) = writer.finish()?;
            let info = object
                .commit()
                .with_context(|| format!("committing node pack {name}"))?;
            nodes_size = info.size;
            nodes_table.push(Some(NodesRef {
                object: name,
                snapshot: id.clone(),
                envelope,
                size: info.size,
                plain_size,
            }));
        }
        _ => nodes_table.push(None),
    }
    tree::used_slots(&segments, &mut nodes_table);
    while nodes_table.last().is_some_and(Option::is_none) {
        nodes_table.pop();
    }
    report.new_segments = segments
        .iter()
        .filter(|s| {
            nodes_table
                .get(s.nodes as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| n.snapshot == id)
        })
        .count() as u64;
    if let Some(r) = &retention {
        let earlier = table
            .iter()
            .flatten()
            .filter(|a| a.snapshot != id)
            .map(|a| &a.object)
            .chain(
                nodes_table
                    .iter()
                    .flatten()
                    .filter(|n| n.snapshot != id)
                    .map(|n| &n.object),
            );
        for object in earlier {
            store
                .extend_retention(object, r)
                .with_context(|| format!("extending the Object Lock retention of {object}"))?;
        }
    }

    let end = ManifestEnd {
        finished: jiff::Timestamp::now().to_string(),
        files: report.files,
        dirs: report.dirs,
        symlinks: report.symlinks,
        hardlinks: report.hardlinks,
        specials: report.specials,
        bytes: report.bytes_read,
        skipped: (report.skipped.len() + report.unreadable.len()) as u64,
        archived_files: report.archived_files,
        archived_bytes: report.archived_bytes,
        reused: report.reused,
        deleted: report.deleted,
        new_bytes: report.new_bytes,
        new_segments: report.new_segments,
    };
    let manifest_obj = manifest
        .finish(Some(nodes_table.clone()), table.clone(), end)
        .with_context(|| format!("finishing manifest {manifest_name}"))?;
    let manifest_info = manifest_obj
        .commit()
        .with_context(|| format!("committing manifest {manifest_name}"))?;

    if apart {
        // The chain goes on from the job's own last run: its record stays,
        // and this snapshot is noted as made apart from it.
        drop(record_writer);
        if let Err(e) = changes::note_apart(opts.state_dir, &job.name, &id) {
            tracing::warn!(
                "snapshot {id} is committed, but could not be noted as made apart from the job's chain ({e:#}); \
                 the next run of job {} will be a full one",
                job.name
            );
        }
        return Ok(finish_report(
            report,
            archive_size,
            nodes_size,
            manifest_info.size,
            started,
        ));
    }
    let state = StateHeader {
        vaultline_state: STATE_VERSION,
        repository: repo_identity(repo),
        host: host.to_string(),
        job: job.name.clone(),
        snapshot: id.clone(),
        chain,
        full_started,
        archives: table,
        nodes: nodes_table,
        segments,
        entries: None,
        entries_blake3: None,
        chunks_blake3: None,
    };
    if let Err(e) = record_writer.commit(&state) {
        // The snapshot stands; the next run is full and says why.
        tracing::warn!(
            "snapshot {id} is committed, but its local change record could not be saved ({e:#}); the next \
             run of job {} will be a full one",
            job.name
        );
    }

    Ok(finish_report(
        report,
        archive_size,
        nodes_size,
        manifest_info.size,
        started,
    ))
}

/// The report's totals, once the snapshot is committed.
fn finish_report(
    mut report: BackupReport,
    archive_size: u64,
    nodes_size: u64,
    manifest_size: u64,
    started: Instant,
) -> BackupReport {
    report.bytes_stored = archive_size + nodes_size + manifest_size;
    report.ratio = if report.bytes_read == 0 {
        0.0
    } else {
        report.bytes_stored as f64 / report.bytes_read as f64
    };
    report.duration_secs = started.elapsed().as_secs_f64();
    report
}

/// Largest file read whole from a pseudo file system (whose sizes lie):
/// kernel interfaces hold kilobytes.
const MAX_PSEUDO_FILE: u64 = 64 << 20;

/// The archive path of an absolute path: without the leading `/`.
pub fn archive_path(abs: &Path) -> EncodedPath {
    let bytes = abs.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    EncodedPath(if trimmed.is_empty() {
        b".".to_vec()
    } else {
        trimmed.to_vec()
    })
}

/// The manifest entry for what the walk saw (before hard links, content
/// and extended attributes are decided).
fn entry_from(found: &Found<'_>) -> Entry {
    let st = &found.stat;
    let kind = match found.kind {
        WalkKind::File => EntryKind::File,
        WalkKind::Dir => EntryKind::Dir,
        WalkKind::Symlink => EntryKind::Symlink,
        WalkKind::Fifo => EntryKind::Fifo,
        WalkKind::CharDevice => EntryKind::CharDevice,
        WalkKind::BlockDevice => EntryKind::BlockDevice,
    };
    let device = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
    Entry {
        path: archive_path(&found.abs),
        kind,
        size: if kind == EntryKind::File {
            st.st_size.max(0) as u64
        } else {
            0
        },
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        dev_major: if device { rustix::fs::major(st.st_rdev) } else { 0 },
        dev_minor: if device { rustix::fs::minor(st.st_rdev) } else { 0 },
        ..Entry::default()
    }
}

/// What is archived of a file that was opened: size, mode, owner and times
/// come from the descriptor read, not from the listing.
fn refresh(entry: &mut Entry, st: &rustix::fs::Stat) {
    entry.size = st.st_size.max(0) as u64;
    entry.mode = st.st_mode & 0o7777;
    entry.uid = st.st_uid;
    entry.gid = st.st_gid;
    entry.mtime = st.st_mtime;
    entry.mtime_nsec = st.st_mtime_nsec.clamp(0, 999_999_999) as u32;
}

/// Walks the job; joins each entry against the parent's record (if any);
/// writes changed content into the archive, every entry into the manifest
/// and the new record. An entry that cannot be read costs that entry: it is
/// reported (NOT BACKED UP) and left out of the manifest, never the run.
#[allow(clippy::too_many_arguments)]
fn write_tar(
    job: &Job,
    own: &[PathBuf],
    cancel: &AtomicBool,
    sinks: &mut Sinks<'_>,
    mut parent: Option<&mut Record>,
    mut tree: Tree<'_, '_>,
    report: &mut BackupReport,
    progress: &dyn Progress,
) -> Result<()> {
    let full = parent.is_none();
    // First archive path of each multiply-linked inode, by (device, inode).
    let mut links: HashMap<(u64, u64), EncodedPath> = HashMap::new();
    let mut skipped = Vec::new();
    // Attribute problems are reported once per kind, not once per file.
    let mut attr_problems: HashMap<String, (u64, String)> = HashMap::new();
    let walker = Walker::new(job, own);
    let walk = tree.walk;
    let walked = |found: Found<'_>| -> Result<()> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Interrupted(None).into());
        }
        // The streams' entries that come before this one in walk order.
        tree.emit(
            Some(&archive_path(&found.abs).0),
            &mut StreamSinks {
                job,
                cancel,
                full,
                sinks: &mut *sinks,
                parent: parent.as_deref_mut(),
                links: &mut links,
                report: &mut *report,
                progress,
            },
        )?;
        let mut entry = entry_from(&found);
        let shown = || found.abs.display().to_string();
        if found.kind == WalkKind::Symlink {
            match found.read_link() {
                Ok(t) => entry.target = Some(EncodedPath(t)),
                Err(e) => {
                    let item = SkippedPath {
                        path: shown(),
                        reason: e.to_string(),
                    };
                    if e.kind() == io::ErrorKind::NotFound {
                        report.skipped.push(SkippedPath {
                            reason: "vanished during the backup".into(),
                            ..item
                        });
                    } else {
                        progress.warn(&format!("cannot read {}: {e}", item.path));
                        report.unreadable.push(item);
                    }
                    return Ok(());
                }
            }
        }
        let stat = Stat::of(&found.stat);
        let looked_at = jiff::Timestamp::now().as_nanosecond();
        // A later name of a multiply-linked inode is a hard link to the
        // first one recorded.
        let link_key = (found.kind != WalkKind::Dir && found.stat.st_nlink > 1)
            .then_some((found.stat.st_dev, found.stat.st_ino));
        if let Some(key) = link_key {
            match links.get(&key) {
                Some(first) => {
                    entry.kind = EntryKind::Hardlink;
                    entry.target = Some(first.clone());
                    entry.size = 0;
                    (entry.dev_major, entry.dev_minor) = (0, 0);
                }
                None => entry.linked = true,
            }
        }
        let previous = match parent.as_deref_mut() {
            Some(rec) => rec.advance_to(&entry.path.0, |gone| {
                report.deleted += 1;
                sinks.manifest.deleted(&gone.path)
            })?,
            None => None,
        };
        let reuse = previous.filter(|p| {
            let prev = &p.entry;
            found.pseudo.is_none()
                && changes::unchanged(prev, p.stat, &entry, stat)
                && (prev.kind != EntryKind::File
                    || prev.size == 0
                    || prev.archive.is_some()
                    || prev.chunk_count > 0)
        });
        if let Some(p) = reuse {
            let prev = p.entry;
            entry.archive = prev.archive;
            entry.offset = prev.offset;
            entry.xattrs = prev.xattrs.clone();
            entry.sparse = prev.sparse;
            entry.chunk_count = prev.chunk_count;
            entry.chunks = prev.chunks.clone();
            report.reused += 1;
            // Exactly the parent's entry: its segment may be shared.
            let same = (entry == prev).then_some(p.ordinal);
            let before = same.map(|_| (p.stat, p.raw));
            return finish_entry(
                sinks,
                &mut links,
                link_key,
                Recorded {
                    entry,
                    stat,
                    looked_at,
                    unchanged: same,
                    ids: p.ids,
                    before,
                },
                report,
                progress,
            );
        } else {
            // New or changed: read what it is now.
            let is_file = entry.kind == EntryKind::File;
            let mut opened = None;
            if is_file && (entry.size > 0 || found.pseudo.is_some()) {
                match found.open() {
                    Ok((file, st)) => {
                        refresh(&mut entry, &st);
                        opened = Some((file, st));
                    }
                    Err(e) => {
                        let path = shown();
                        if e.get_ref().is_some_and(|i| i.is::<ChangedIdentity>()) {
                            progress.warn(&format!("skipped {path}: {e}"));
                            report.skipped.push(SkippedPath {
                                path,
                                reason: e.to_string(),
                            });
                        } else if e.kind() == io::ErrorKind::NotFound {
                            report.skipped.push(SkippedPath {
                                path,
                                reason: "vanished during the backup".into(),
                            });
                        } else {
                            progress.warn(&format!("cannot read {path}: {e}"));
                            report.unreadable.push(SkippedPath {
                                path,
                                reason: e.to_string(),
                            });
                        }
                        return Ok(());
                    }
                }
            }
            let fd_path;
            let source = match (&opened, found.dir_fd()) {
                (Some((f, _)), _) => fsmeta::Source::Fd(f.as_fd()),
                (None, Some(d)) => fsmeta::Source::Fd(d),
                _ => {
                    fd_path = found.fd_path();
                    fsmeta::Source::Path(&fd_path)
                }
            };
            let mut note = |what: String| {
                let slot = attr_problems.entry(what).or_insert((0, shown()));
                slot.0 += 1;
            };
            match fsmeta::read(&source, &mut note) {
                Ok(x) => entry.xattrs = x,
                Err(e) => note(format!("extended attributes not readable: {e}")),
            }
            // Content: a kernel interface's file is read to its real end
            // first (its size lies); a file with holes stores its data
            // regions only.
            let mut pseudo_bytes = None;
            let mut regions = None;
            if let (Some((file, st)), Some(fs)) = (&opened, found.pseudo) {
                let mut bytes = Vec::new();
                let read = file.take(MAX_PSEUDO_FILE + 1).read_to_end(&mut bytes);
                let too_big = bytes.len() as u64 > MAX_PSEUDO_FILE;
                if let Err(e) = &read {
                    progress.warn(&format!("cannot read {}: {e}", shown()));
                    report.unreadable.push(SkippedPath {
                        path: shown(),
                        reason: e.to_string(),
                    });
                    return Ok(());
                }
                if too_big {
                    report.unreadable.push(SkippedPath {
                        path: shown(),
                        reason: format!("more than {} MiB on a {fs} file system", MAX_PSEUDO_FILE >> 20),
                    });
                    return Ok(());
                }
                let _ = st;
                entry.size = bytes.len() as u64;
                pseudo_bytes = Some(bytes);
            } else if let Some((file, st)) = &opened
                && (st.st_blocks.max(0) as u64) * 512 < entry.size
            {
                regions = fsmeta::data_regions(file.as_fd(), entry.size);
                entry.sparse = regions.is_some();
            }
            if let (Some((file, _)), None, None) = (&opened, &pseudo_bytes, &regions)
                && entry.size >= chunks::CHUNKED_FILE
            {
                // A large file: stored as chunks, those the chain holds
                // already by reference.
                let size = entry.size;
                let stored = store_chunks(
                    sinks,
                    &mut entry,
                    &mut file.take(size),
                    Some(size),
                    report,
                    progress,
                    &shown(),
                )?;
                let mut probe = [0u8; 1];
                if stored.is_some() && matches!((&mut &*file).read(&mut probe), Ok(1)) {
                    report.changed.push(SkippedPath {
                        path: shown(),
                        reason: format!("grew while being read: stored its first {size} bytes"),
                    });
                }
                return match stored {
                    Some(ids) => finish_entry(
                        sinks,
                        &mut links,
                        link_key,
                        Recorded {
                            entry,
                            stat,
                            looked_at,
                            unchanged: None,
                            before: None,
                            ids,
                        },
                        report,
                        progress,
                    ),
                    None => Ok(()),
                };
            }
            if (is_file && entry.size > 0) || full {
                // New or changed content (or any entry of a full archive,
                // which is a complete tar of the tree).
                let new_index = sinks.new_index;
                let out = sinks.archive()?;
                let offset = out.tar.position();
                let mut bytes_reader: &[u8];
                let mut file_reader: &File;
                let content = match (&pseudo_bytes, &regions, &opened) {
                    (Some(bytes), _, _) => {
                        bytes_reader = &bytes[..];
                        Content::Stream(&mut bytes_reader)
                    }
                    (None, Some(regions), Some((file, _))) => Content::Sparse { file, regions },
                    (None, None, Some((file, _))) => {
                        file_reader = file;
                        Content::Stream(&mut file_reader)
                    }
                    _ => Content::None,
                };
                let kept = append_and_record(
                    sinks,
                    &mut entry,
                    content,
                    offset,
                    new_index,
                    report,
                    progress,
                    &shown(),
                )?;
                if !kept {
                    return Ok(());
                }
            }
        }
        finish_entry(
            sinks,
            &mut links,
            link_key,
            Recorded {
                entry,
                stat,
                looked_at,
                unchanged: None,
                before: None,
                ids: Vec::new(),
            },
            report,
            progress,
        )
    };
    if walk {
        walker.walk(walked, |s| skipped.push(s))?;
    }
    // The streams' entries after the last walked one.
    tree.emit(
        None,
        &mut StreamSinks {
            job,
            cancel,
            full,
            sinks: &mut *sinks,
            parent: parent.as_deref_mut(),
            links: &mut links,
            report: &mut *report,
            progress,
        },
    )?;
    if let Some(rec) = parent {
        rec.rest(|gone| {
            report.deleted += 1;
            sinks.manifest.deleted(&gone.path)
        })?;
    }
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
    let mut problems: Vec<(String, (u64, String))> = attr_problems.into_iter().collect();
    problems.sort();
    for (what, (count, first)) in problems {
        progress.warn(&format!(
            "{what} ({count} entr{}; first: {first})",
            if count == 1 { "y" } else { "ies" }
        ));
        report.attributes.push(SkippedPath {
            path: first,
            reason: format!("{what} ({count} entries)"),
        });
    }
    Ok(())
}

/// What a run puts into its snapshot.
struct Tree<'j, 's> {
    /// Whether the job's paths are walked (not for `backup stdin`).
    walk: bool,
    /// The streams' entries still to come.
    streams: Streams<'j>,
    /// `backup stdin`'s source.
    stdin: Option<&'s mut dyn Read>,
}

/// The entries of a run's streams below [`STREAMS_ROOT`](vaultline_config::STREAMS_ROOT),
/// in walk order: the directories (the root, and those the names have)
/// and a file per stream. They are made by vaultline, owned by the user it
/// runs as, mode 0700 (directories) and 0600 (files), dated the run's
/// start.
struct Streams<'s> {
    items: VecDeque<StreamItem<'s>>,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
}

/// One entry of a run's streams.
enum StreamItem<'s> {
    /// A directory.
    Dir(EncodedPath),
    /// A command source's file.
    Command(EncodedPath, &'s CommandSource),
    /// `backup stdin`'s file.
    Stdin(EncodedPath),
}

impl StreamItem<'_> {
    fn path(&self) -> &EncodedPath {
        match self {
            StreamItem::Dir(p) | StreamItem::Command(p, _) | StreamItem::Stdin(p) => p,
        }
    }
}

impl<'s> Streams<'s> {
    /// The job's command sources, or (`stdin`) `backup stdin`'s one file.
    fn new(job: &'s Job, stdin: Option<&str>, at: jiff::Timestamp) -> Self {
        let mut items: Vec<StreamItem<'s>> = Vec::new();
        let mut dirs: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        let mut file = |name: &str| {
            let path = archive_path(&vaultline_config::stream_path(name));
            // Every directory above the file, the root included.
            let mut at = 0;
            while let Some(slash) = path.0[at..].iter().position(|&b| b == b'/') {
                dirs.insert(path.0[..at + slash].to_vec());
                at += slash + 1;
            }
            path
        };
        match stdin {
            Some(name) => items.push(StreamItem::Stdin(file(name))),
            None => {
                for c in &job.commands {
                    items.push(StreamItem::Command(file(&c.name), c));
                }
            }
        }
        items.extend(dirs.into_iter().map(|d| StreamItem::Dir(EncodedPath(d))));
        items.sort_by(|a, b| changes::walk_order(&a.path().0, &b.path().0));
        Streams {
            items: items.into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: at.as_second(),
            mtime_nsec: at.subsec_nanosecond().max(0) as u32,
        }
    }
}

/// What a stream's entry is written into (the walk's sinks, lent).
struct StreamSinks<'a, 'b> {
    job: &'a Job,
    cancel: &'a AtomicBool,
    full: bool,
    sinks: &'a mut Sinks<'b>,
    parent: Option<&'a mut Record>,
    links: &'a mut HashMap<(u64, u64), EncodedPath>,
    report: &'a mut BackupReport,
    progress: &'a dyn Progress,
}

impl Tree<'_, '_> {
    /// Writes the streams' entries that come before `until` in walk order
    /// (all that are left when `None`): command sources run here, one at a
    /// time, each streamed into the archive as it is read.
    fn emit(&mut self, until: Option<&[u8]>, to: &mut StreamSinks<'_, '_>) -> Result<()> {
        while let Some(item) = self.streams.items.front() {
            if let Some(limit) = until
                && changes::walk_order(&item.path().0, limit) != std::cmp::Ordering::Less
            {
                break;
            }
            let Some(item) = self.streams.items.pop_front() else {
                break;
            };
            self.stream_entry(item, to)?;
        }
        Ok(())
    }

    fn stream_entry(&mut self, item: StreamItem<'_>, to: &mut StreamSinks<'_, '_>) -> Result<()> {
        if to.cancel.load(Ordering::Relaxed) {
            return Err(Interrupted(None).into());
        }
        let path = item.path().clone();
        // The join: what the parent had before this path is gone. The
        // parent's entry of this path is not reused (a stream is read anew
        // each run); its chunks are in the index, so what did not change is
        // not stored again.
        if let Some(rec) = to.parent.as_deref_mut() {
            let (report, manifest) = (&mut *to.report, &mut to.sinks.manifest);
            rec.advance_to(&path.0, |gone| {
                report.deleted += 1;
                manifest.deleted(&gone.path)
            })?;
        }
        let is_dir = matches!(item, StreamItem::Dir(_));
        let mut entry = Entry {
            path,
            kind: if is_dir { EntryKind::Dir } else { EntryKind::File },
            mode: if is_dir { 0o700 } else { 0o600 },
            uid: self.streams.uid,
            gid: self.streams.gid,
            mtime: self.streams.mtime,
            mtime_nsec: self.streams.mtime_nsec,
            ..Entry::default()
        };
        let shown = format!("/{}", entry.path.display());
        let ids = match item {
            StreamItem::Dir(_) => {
                if to.full {
                    // A full archive is a complete tar of the tree.
                    let new_index = to.sinks.new_index;
                    let offset = to.sinks.archive()?.tar.position();
                    append_and_record(
                        to.sinks,
                        &mut entry,
                        Content::None,
                        offset,
                        new_index,
                        to.report,
                        to.progress,
                        &shown,
                    )?;
                }
                Some(Vec::new())
            }
            StreamItem::Command(_, command) => {
                let job = to.job;
                tracing::info!("job {}: running command source {}", job.name, command.name);
                let spec = child::Spec {
                    what: format!("command source {} of job {}", command.name, job.name),
                    command: &command.command,
                    env: vec![
                        ("VAULTLINE_JOB", job.name.clone()),
                        ("VAULTLINE_HOST", to.sinks.host.to_string()),
                        ("VAULTLINE_SNAPSHOT", to.sinks.id.to_string()),
                        ("VAULTLINE_STREAM", command.name.clone()),
                    ],
                    timeout: command.timeout_secs.map(Duration::from_secs),
                    cancel: Some(to.cancel),
                };
                let (stored, finished) = child::stream(&spec, |out| {
                    store_chunks(to.sinks, &mut entry, out, None, to.report, to.progress, &shown)
                })?;
                let stored = stored?;
                if to.cancel.load(Ordering::Relaxed) {
                    return Err(Interrupted(None).into());
                }
                if stored.is_some() {
                    tracing::info!(
                        "job {}: command source {}: {} in {:.1}s",
                        job.name,
                        command.name,
                        crate::units::human_bytes(entry.size),
                        finished.took.as_secs_f64()
                    );
                }
                stored
            }
            StreamItem::Stdin(_) => {
                let source = self
                    .stdin
                    .take()
                    .ok_or_else(|| anyhow!("{shown}: no stream to read"))?;
                // A signal stops the reading at the next block, not at the
                // end of a pipe that may be long.
                let mut source = Cancellable {
                    inner: source,
                    cancel: to.cancel,
                };
                let stored = store_chunks(
                    to.sinks,
                    &mut entry,
                    &mut source,
                    None,
                    to.report,
                    to.progress,
                    &shown,
                )?;
                if to.cancel.load(Ordering::Relaxed) {
                    return Err(Interrupted(None).into());
                }
                stored
            }
        };
        // A stream that failed is reported (NOT BACKED UP) and left out.
        let Some(ids) = ids else {
            return Ok(());
        };
        finish_entry(
            to.sinks,
            to.links,
            None,
            Recorded {
                entry,
                stat: Stat {
                    ctime: 0,
                    ctime_nsec: 0,
                    ino: 0,
                },
                looked_at: jiff::Timestamp::now().as_nanosecond(),
                unchanged: None,
                before: None,
                ids,
            },
            to.report,
            to.progress,
        )
    }
}

/// A stream that stops (with an error) once the run is interrupted.
struct Cancellable<'a, 'r> {
    inner: &'a mut (dyn Read + 'r),
    cancel: &'a AtomicBool,
}

impl Read for Cancellable<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other(Interrupted(None)));
        }
        self.inner.read(buf)
    }
}

/// Appends an entry's member to the archive. Returns whether the entry is
/// kept: a file that could not be read to its end is reported and left
/// out of the snapshot.
#[allow(clippy::too_many_arguments)]
fn append_and_record(
    sinks: &mut Sinks<'_>,
    entry: &mut Entry,
    content: Content<'_>,
    offset: u64,
    new_index: u32,
    report: &mut BackupReport,
    progress: &dyn Progress,
    shown: &str,
) -> Result<bool> {
    let out = sinks.archive()?;
    let copied = out
        .tar
        .append(entry, content)
        .with_context(|| format!("archiving {shown}"))?;
    match copied {
        Copied::Exact => {}
        Copied::Grew => report.changed.push(SkippedPath {
            path: shown.to_string(),
            reason: format!("grew while being read: stored its first {} bytes", entry.size),
        }),
        Copied::Incomplete { read, why } => {
            let reason = format!("{why} after {read} of {} bytes", entry.size);
            progress.warn(&format!("cannot read {shown}: {reason}"));
            report.unreadable.push(SkippedPath {
                path: shown.to_string(),
                reason,
            });
            return Ok(false);
        }
    }
    if entry.kind == EntryKind::File && entry.size > 0 {
        entry.archive = Some(new_index);
        entry.offset = Some(offset);
        report.archived_files += 1;
        report.archived_bytes += entry.size;
        report.new_bytes += entry.size;
    }
    Ok(true)
}

/// The tar member holding chunk `n` of `entry` (docs/FORMAT.md §13).
fn chunk_member(entry: &Entry, n: usize, length: usize) -> Entry {
    let mut path = entry.path.0.clone();
    path.extend_from_slice(format!("{CHUNK_SUFFIX}/{n}").as_bytes());
    Entry {
        path: EncodedPath(path),
        kind: EntryKind::File,
        size: length as u64,
        mode: 0o600,
        uid: entry.uid,
        gid: entry.gid,
        mtime: entry.mtime,
        mtime_nsec: entry.mtime_nsec,
        ..Entry::default()
    }
}

/// What is appended to a chunked file's path to name its chunk members'
/// directory.
pub const CHUNK_SUFFIX: &str = ".vaultline-chunk";

/// Stores content as content-defined chunks: each chunk the chain (or
/// this run) holds already is referred to where it is, each other one is
/// appended as a member of its own. `source` is a large file's content
/// (`expected`: its size) or a stream whose size nobody knows in advance
/// (`None`: a dump read from a pipe; the entry's size becomes what was
/// read). Returns the chunks' names, or `None` when the source failed or
/// a file ended before its size (reported; the entry is left out, and the
/// chunk members already written are followed by the incomplete marker).
#[allow(clippy::too_many_arguments)]
fn store_chunks(
    sinks: &mut Sinks<'_>,
    entry: &mut Entry,
    source: &mut dyn Read,
    expected: Option<u64>,
    report: &mut BackupReport,
    progress: &dyn Progress,
    shown: &str,
) -> Result<Option<Vec<ChunkId>>> {
    let key = sinks.chunk_key;
    // The window is the run's, lent out while this source is cut (an
    // early return costs only its reuse).
    let mut chunker = sinks.chunker.take().unwrap_or_else(|| key.chunker());
    chunker.reset();
    let mut refs: Vec<ChunkRef> = Vec::new();
    let mut ids: Vec<ChunkId> = Vec::new();
    let mut read = 0u64;
    let mut wrote = false;
    let mut failure = None;
    // Whether the failure's words say how far the source got already.
    let mut said = false;
    let mut new_bytes = 0u64;
    while let Some(item) = chunker.next_chunk(key, source) {
        if sinks.cancel.load(Ordering::Relaxed) {
            return Err(Interrupted(None).into());
        }
        let (id, data) = match item {
            Ok(c) => c,
            Err(e) => {
                // A command that did not succeed says so itself (how it
                // ended, how far, its standard error).
                failure = Some(
                    match e.get_ref().and_then(|i| i.downcast_ref::<child::CommandFailed>()) {
                        Some(failed) => {
                            said = true;
                            failed.to_string()
                        }
                        None => format!("read error: {e}"),
                    },
                );
                break;
            }
        };
        if refs.len() as u64 >= crate::repo::manifest::MAX_CHUNKS {
            failure = Some(format!(
                "more than {} chunks (a manifest lists at most that many for one file)",
                crate::repo::manifest::MAX_CHUNKS
            ));
            break;
        }
        read += data.len() as u64;
        let at = match sinks.index.get(&id) {
            Some(at) => at,
            None => {
                let new_index = sinks.new_index;
                let out = sinks.archive()?;
                let member = chunk_member(entry, refs.len(), data.len());
                out.tar
                    .append(&member, Content::Stream(&mut &*data))
                    .with_context(|| format!("archiving {shown}"))?;
                wrote = true;
                new_bytes += data.len() as u64;
                let at = ChunkRef {
                    archive: new_index,
                    offset: out.tar.data_start(),
                    length: data.len() as u32,
                };
                sinks.index.insert(id, at);
                at
            }
        };
        refs.push(at);
        ids.push(id);
    }
    sinks.chunker = Some(chunker);
    if failure.is_none() && expected.is_some_and(|size| read < size) {
        failure = Some("it shrank while being read".into());
    }
    if let Some(why) = failure {
        if wrote && let Some(out) = sinks.archive.as_mut() {
            out.tar.mark_incomplete(entry, read, &why)?;
        }
        let reason = match expected {
            _ if said => why,
            Some(size) => format!("{why} after {read} of {size} bytes"),
            None => format!("{why} after {read} bytes"),
        };
        progress.warn(&format!("cannot read {shown}: {reason}"));
        report.unreadable.push(SkippedPath {
            path: shown.to_string(),
            reason,
        });
        return Ok(None);
    }
    let size = read;
    entry.size = size;
    entry.archive = None;
    entry.offset = None;
    entry.chunk_count = refs.len() as u64;
    entry.chunks = refs;
    report.archived_files += 1;
    report.archived_bytes += size;
    report.new_bytes += new_bytes;
    Ok(Some(ids))
}

/// A walked entry, as it goes into the manifest and the local record.
struct Recorded {
    entry: Entry,
    stat: Stat,
    /// When the walk looked at it (for racy ctimes).
    looked_at: i128,
    /// Its ordinal in the parent's record, when it is exactly the parent's.
    unchanged: Option<u64>,
    /// Its chunks' names.
    ids: Vec<ChunkId>,
    /// The parent's record line and stat, when the entry is the parent's.
    before: Option<(Stat, Vec<u8>)>,
}

/// Records a walked entry in the tree listing and the new local record,
/// and counts it.
fn finish_entry(
    sinks: &mut Sinks<'_>,
    links: &mut HashMap<(u64, u64), EncodedPath>,
    link_key: Option<(u64, u64)>,
    recorded: Recorded,
    report: &mut BackupReport,
    progress: &dyn Progress,
) -> Result<()> {
    let Recorded {
        entry,
        stat,
        looked_at,
        unchanged,
        ids,
        before,
    } = recorded;
    if entry.linked
        && let Some(key) = link_key
    {
        links.insert(key, entry.path.clone());
    }
    for a in entry
        .archive
        .into_iter()
        .chain(entry.chunks.iter().map(|c| c.archive))
    {
        if let Some(count) = sinks.refs.get_mut(a as usize) {
            *count += 1;
        }
    }
    match entry.kind {
        EntryKind::File => {
            report.files += 1;
            report.bytes_read += entry.size;
        }
        EntryKind::Dir => report.dirs += 1,
        EntryKind::Symlink => report.symlinks += 1,
        EntryKind::Hardlink => report.hardlinks += 1,
        EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => report.specials += 1,
    }
    if let Some(segment) = sinks.tree.push(&entry, unchanged, &mut sinks.pack)? {
        sinks.manifest.segment(&segment)?;
    }
    // A file whose ctime is within a timestamp tick of the moment we
    // looked at it could change again in that same tick without its stat
    // changing: record it so that the next run archives it anew (git's
    // "racy" entries).
    let ctime_ns = i128::from(stat.ctime) * 1_000_000_000 + i128::from(stat.ctime_nsec);
    let racy = ctime_ns >= looked_at - RACY_MARGIN_NS;
    let recorded = if racy {
        Stat {
            ctime: i64::MIN,
            ..stat
        }
    } else {
        stat
    };
    match before {
        Some((stat, raw)) if stat == recorded => sinks.record.entry_as_before(&raw, &entry, &ids)?,
        _ => sinks.record.entry(&entry, recorded, &ids)?,
    }
    progress.add(entry.size, 1);
    Ok(())
}
