//! Reading snapshots back: finding one, opening its manifest, planning
//! which parts of which archives hold the selected entries, and reading
//! exactly those.
//!
//! A snapshot's manifest lists its whole tree; each file entry names the
//! archive (of this snapshot or an earlier one in its chain) and the offset
//! of its tar header in that archive's tar stream. [`SnapshotReader::plan`]
//! reads the manifest once and marks, per archive, the zstd frames the
//! selected files lie in. [`SnapshotReader::read`] then reads the manifest
//! again and, for each selected entry in order, takes its content from its
//! archive's cursor: one producer thread per archive decrypts and
//! decompresses the needed frames (a ranged read of just the sealed chunks
//! holding them, or the whole object when every frame is needed) into a
//! [`pipe`](crate::pipeline::pipe), and the caller's thread finds each entry at its
//! offset, checks the tar header is the entry the manifest names (path,
//! type, size), and hands its bytes to the visitor. A whole-object read goes
//! to the object's end, so its final chunk is authenticated and nothing may
//! follow it; a ranged read authenticates every chunk it uses at its own
//! index. Any difference is an integrity error naming the snapshot and the
//! object.
//!
//! The sealed manifest is spooled to an unnamed temporary file (ciphertext
//! only) so the two passes fetch it once, and its data key is unwrapped once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::thread::{self, ScopedJoinHandle};

use anyhow::{Context, Result, anyhow};
use vaultline_crypto::{DataKey, Header, KeyWrap, MAX_HEADER_LEN, SealedReader};

use crate::error::{IntegrityError, UsageError};
use crate::pipeline::pipe::{PipeReader, PipeWriter, pipe};
use crate::repo::manifest::{ArchiveRef, Entry, EntryKind, ManifestEnd, ManifestHeader, ManifestReader};
use crate::repo::{Kind, READ_BUFFER, Repo, SnapshotRef};

type ManifestPass = ManifestReader<SealedReader<BufReader<File>>>;

/// What a read calls for each selected entry: files with a reader of
/// exactly their content, other entries with none.
pub type Visit<'v> = dyn FnMut(&Entry, Option<&mut dyn Read>) -> Result<()> + 'v;

/// Bytes past a file's offset and size that its tar headers can take at
/// most (a PAX header with a path and a link target of PATH_MAX each).
const TAR_SLACK: u64 = 16 << 10;

/// The snapshots `spec` (an id or `latest`) of `host` may mean, in `job`
/// if given, best first: for an id, that snapshot; for `latest`, the job's
/// snapshots newest first by [`SnapshotRef::time`], leaving out (with a
/// warning) those that are future-dated. [`open_first`] then opens the
/// first one whose manifest can be trusted.
pub fn resolve(
    repo: &Repo,
    host: &str,
    job: Option<&str>,
    configured: &[String],
    spec: &str,
) -> Result<Vec<SnapshotRef>> {
    let all = repo.list_snapshots(host, job)?;
    if spec == "latest" {
        let job = match job {
            Some(j) => j.to_string(),
            None => {
                let mut jobs: Vec<&str> = all.iter().map(|s| s.job.as_str()).collect();
                jobs.sort_unstable();
                jobs.dedup();
                match (jobs.as_slice(), configured) {
                    ([only], _) => only.to_string(),
                    ([], [only]) => only.clone(),
                    ([], _) => {
                        return Err(UsageError(format!(
                            "no snapshots of host {host} in {}",
                            repo.store().describe()
                        ))
                        .into());
                    }
                    (many, _) => {
                        return Err(UsageError(format!(
                            "host {host} has snapshots of several jobs ({}); choose one with --job",
                            many.join(", ")
                        ))
                        .into());
                    }
                }
            }
        };
        let mut candidates = Vec::new();
        for s in all.into_iter().rev().filter(|s| s.job == job) {
            if s.future_dated() {
                tracing::warn!("{}", s.future_note());
            } else {
                candidates.push(s);
            }
        }
        if candidates.is_empty() {
            return Err(UsageError(format!("job {job} of host {host} has no snapshots yet")).into());
        }
        return Ok(candidates);
    }
    if !crate::repo::valid_snapshot_id(spec) {
        return Err(UsageError(format!(
            "{spec:?} is not a snapshot id (like 20261122T103000Z-1a2b3c4d) or `latest`"
        ))
        .into());
    }
    let found = all.into_iter().find(|s| s.id == spec).ok_or_else(|| {
        let scope = job.map_or_else(|| format!("host {host}"), |j| format!("job {j} of host {host}"));
        anyhow::Error::from(UsageError(format!(
            "no snapshot {spec} of {scope} (see `vaultline snapshots`)"
        )))
    })?;
    if found.future_dated() {
        tracing::warn!(
            "snapshot {} claims {} but the repository recorded it at {}: it is future-dated",
            found.id,
            found.claimed(),
            found.recorded.map_or_else(|| "?".to_string(), |r| r.to_string())
        );
    }
    Ok(vec![found])
}

/// Opens the first of `candidates` whose manifest authenticates and
/// parses. A candidate that fails so (damaged, planted, under a key that
/// is not trusted) is skipped with a warning when others follow, and the
/// last one's failure is the error; any other failure (the store cannot be
/// reached) stops at once.
pub fn open_first<'a>(
    repo: &'a Repo,
    keys: &'a (dyn KeyWrap + Sync),
    candidates: Vec<SnapshotRef>,
) -> Result<SnapshotReader<'a>> {
    let mut rest = candidates.into_iter().peekable();
    while let Some(snap) = rest.next() {
        match SnapshotReader::open(repo, keys, snap.clone()) {
            Ok(reader) => return Ok(reader),
            Err(e) if rest.peek().is_some() && crate::error::is_integrity(&e) => {
                tracing::warn!(
                    "skipping snapshot {} of job {}: its manifest cannot be trusted: {e:#}",
                    snap.id,
                    snap.job
                );
            }
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!("no snapshot to open"))
}

/// A sealed manifest fetched once into an unnamed temporary file
/// (ciphertext only), with its header read and data key unwrapped, so that
/// each pass over it costs neither a fetch nor a key-provider call.
struct Spool {
    file: File,
    header: Header,
    key: DataKey,
    name: String,
    snapshot: String,
}

impl Spool {
    fn pass(&self) -> Result<ManifestPass> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(self.header.encoded_len() as u64))?;
        let sealed = SealedReader::new(
            BufReader::with_capacity(READ_BUFFER, file),
            &self.header,
            &self.key,
        )
        .with_context(|| format!("snapshot {}: object {}", self.snapshot, self.name))?;
        ManifestReader::new(sealed, &self.name).with_context(|| format!("snapshot {}", self.snapshot))
    }
}

/// An opened snapshot.
pub struct SnapshotReader<'a> {
    repo: &'a Repo,
    keys: &'a (dyn KeyWrap + Sync),
    snapshot: SnapshotRef,
    spool: Spool,
    manifest: ManifestHeader,
    archives: Vec<Option<ArchiveRef>>,
    end: ManifestEnd,
}

/// Totals of a read.
#[derive(Debug, Default, Clone)]
pub struct Walked {
    /// Entries visited.
    pub entries: u64,
    /// File bytes read.
    pub bytes: u64,
    /// The manifest's end record.
    pub end: ManifestEnd,
}

/// The frames of one archive a read needs.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    /// The archive.
    pub archive: ArchiveRef,
    /// Needed frames.
    frames: Vec<bool>,
    /// Selected file entries with content in it.
    pub entries: u64,
}

impl ArchivePlan {
    /// True when every frame is needed: the object is read whole.
    pub fn whole(&self) -> bool {
        self.frames.iter().all(|&f| f)
    }

    /// Runs of consecutive needed frames, as (first, last) inclusive.
    fn runs(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for (i, &needed) in self.frames.iter().enumerate() {
            if !needed {
                continue;
            }
            match out.last_mut() {
                Some((_, last)) if *last + 1 == i => *last = i,
                _ => out.push((i, i)),
            }
        }
        out
    }

    /// Sealed bytes a read of this plan fetches (besides the header).
    pub fn fetch_bytes(&self, chunk: u64) -> u64 {
        if self.whole() {
            return self.archive.size;
        }
        let starts = self.archive.frames().starts();
        let sealed_chunk = chunk + 20;
        self.runs()
            .iter()
            .map(|&(first, last)| {
                let k0 = starts[first] / chunk;
                let k1 = (starts[last + 1].max(1) - 1) / chunk + 1;
                (k1 - k0) * sealed_chunk
            })
            .sum()
    }
}

/// What a read of a selection needs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Selected entries.
    pub entries: u64,
    /// Bytes of file content in them.
    pub bytes: u64,
    /// Per archive-table index, the archives needed.
    pub archives: Vec<(u32, ArchivePlan)>,
}

impl<'a> SnapshotReader<'a> {
    /// Opens the manifest of `snapshot`, checking it is the object it
    /// claims, and reads it once through (the archive table and totals are
    /// at its end).
    pub fn open(repo: &'a Repo, keys: &'a (dyn KeyWrap + Sync), snapshot: SnapshotRef) -> Result<Self> {
        let name = repo.manifest_name(&snapshot.host, &snapshot.job, &snapshot.id);
        let ctx = repo.context(&snapshot.host, &snapshot.job, &snapshot.id, Kind::Manifest, &name)?;
        let mut file = tempfile::tempfile().context("cannot create a temporary file for the manifest")?;
        {
            let raw = repo
                .store()
                .open(&name)
                .with_context(|| format!("snapshot {}: cannot open {name}", snapshot.id))?;
            // At most one byte more than listed: enough to tell a longer
            // object, never a disk filled by a server that does not stop.
            let listed = snapshot.manifest_size;
            let sent = io::copy(&mut raw.take(listed.saturating_add(1)), &mut file)
                .with_context(|| format!("snapshot {}: reading {name}", snapshot.id))?;
            if sent != listed {
                let sent = if sent > listed {
                    format!("more than {listed}")
                } else {
                    sent.to_string()
                };
                return Err(IntegrityError(format!(
                    "manifest {name}: the server sent {sent} bytes, the listing said {listed}"
                ))
                .into());
            }
        }
        file.seek(SeekFrom::Start(0))?;
        let (header, key) = repo
            .unseal_header(&name, &mut BufReader::new(&mut file), keys, &ctx, None)
            .with_context(|| format!("snapshot {}", snapshot.id))?;
        let spool = Spool {
            file,
            header,
            key,
            name,
            snapshot: snapshot.id.clone(),
        };
        let mut pass = spool.pass()?;
        let end = pass
            .read_to_end()
            .with_context(|| format!("snapshot {}", snapshot.id))?;
        let manifest = pass.header().clone();
        if manifest.snapshot != snapshot.id || manifest.job != snapshot.job || manifest.host != snapshot.host
        {
            return Err(IntegrityError(format!(
                "manifest {} describes snapshot {} of {}/{}",
                spool.name, manifest.snapshot, manifest.host, manifest.job
            ))
            .into());
        }
        let archives = pass.archives().map(<[_]>::to_vec).unwrap_or_default();
        drop(pass);
        Ok(SnapshotReader {
            repo,
            keys,
            snapshot,
            spool,
            manifest,
            archives,
            end,
        })
    }

    /// The snapshot it reads.
    pub fn snapshot(&self) -> &SnapshotRef {
        &self.snapshot
    }

    /// A fresh pass over the manifest's lines.
    pub fn pass(&self) -> Result<ManifestPass> {
        self.spool.pass()
    }

    /// The sealed manifest's own header (its context and key envelope).
    pub fn sealed_header(&self) -> &Header {
        &self.spool.header
    }

    /// The manifest's header.
    pub fn header(&self) -> &ManifestHeader {
        &self.manifest
    }

    /// The archive table.
    pub fn archives(&self) -> &[Option<ArchiveRef>] {
        &self.archives
    }

    /// The end record.
    pub fn end(&self) -> &ManifestEnd {
        &self.end
    }

    /// The header and the end record, without touching archives.
    pub fn summary(self) -> Result<(ManifestHeader, ManifestEnd)> {
        Ok((self.manifest, self.end))
    }

    /// Chunk size of the archives (as sealed by this vaultline).
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.spool.header.chunk_size())
    }

    /// Which frames of which archives hold the entries `select` picks.
    pub fn plan(&self, select: &mut dyn FnMut(&Entry) -> bool) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut by_index: HashMap<u32, ArchivePlan> = HashMap::new();
        let mut pass = self.pass()?;
        while let Some(e) = pass.next_entry()? {
            if !select(&e) {
                continue;
            }
            plan.entries += 1;
            if e.kind != EntryKind::File || e.size == 0 {
                continue;
            }
            plan.bytes += e.size;
            let (Some(index), Some(offset)) = (e.archive, e.offset) else {
                continue;
            };
            let archive = self
                .archives
                .get(index as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| anyhow!("manifest {}: archive {index} missing", self.spool.name))?;
            let p = by_index.entry(index).or_insert_with(|| ArchivePlan {
                frames: vec![false; archive.frames.len()],
                archive: archive.clone(),
                entries: 0,
            });
            p.entries += 1;
            let fs = archive.frame_size.max(1);
            let last_plain = (offset + e.size + TAR_SLACK).min(archive.plain_size.max(1) - 1);
            let (first, last) = ((offset / fs) as usize, (last_plain / fs) as usize);
            if first >= p.frames.len() || offset >= archive.plain_size {
                return Err(IntegrityError(format!(
                    "manifest {}: {} lies at offset {offset}, past the end of archive {} ({} bytes of tar)",
                    self.spool.name,
                    e.path.display(),
                    archive.object,
                    archive.plain_size
                ))
                .into());
            }
            let last = last.min(p.frames.len() - 1);
            p.frames[first..=last].iter_mut().for_each(|f| *f = true);
        }
        let mut archives: Vec<(u32, ArchivePlan)> = by_index.into_iter().collect();
        archives.sort_by_key(|(i, _)| *i);
        plan.archives = archives;
        Ok(plan)
    }

    /// Visits the entries `select` picks, in manifest order, files with a
    /// reader of exactly their content; `select` must pick what it picked
    /// for `plan`.
    pub fn read(
        &self,
        plan: &Plan,
        select: &mut dyn FnMut(&Entry) -> bool,
        visit: &mut Visit<'_>,
    ) -> Result<Walked> {
        let id = self.snapshot.id.clone();
        let mut walked = Walked::default();
        let block = if plan.archives.len() <= 4 {
            1 << 20
        } else {
            256 << 10
        };
        thread::scope(|scope| -> Result<()> {
            let mut cursors: HashMap<u32, Cursor<'_>> = HashMap::new();
            for (index, p) in &plan.archives {
                let (pipe_in, pipe_out) = pipe(if block > (256 << 10) { 4 } else { 2 }, block);
                let (repo, keys, snap) = (self.repo, self.keys, &self.snapshot);
                let producer = scope.spawn(move || produce(repo, keys, snap, p, pipe_in));
                cursors.insert(
                    *index,
                    Cursor {
                        object: p.archive.object.clone(),
                        runs: plain_runs(p),
                        run: 0,
                        pos: 0,
                        reader: Some(pipe_out),
                        producer: Some(producer),
                        whole: p.whole(),
                        manifest: &self.spool.name,
                    },
                );
            }
            for c in cursors.values_mut() {
                c.pos = c.runs.first().map_or(0, |r| r.0);
            }
            let consumed = self.consume(select, visit, &mut cursors, &mut walked);
            // Finish whole reads (their end authenticates), stop the rest.
            let mut failure: Option<anyhow::Error> = consumed.err();
            for (_, mut c) in cursors {
                if failure.is_none()
                    && c.whole
                    && let Some(r) = c.reader.as_mut()
                    && let Err(e) = io::copy(r, &mut io::sink())
                {
                    failure = Some(e.into());
                }
                c.reader = None;
                let produced = c
                    .producer
                    .take()
                    .map(|p| p.join().map_err(|_| anyhow!("a decryption thread panicked")))
                    .transpose()?
                    .unwrap_or(Ok(()));
                match produced {
                    Ok(()) => {}
                    // The consumer stopped first (done, or a mismatch):
                    // the producer only saw the pipe close.
                    Err(p) if crate::pipeline::pipe::is_broken_pipe(&p) => {}
                    // The producer's error (an authentication failure, say)
                    // is the cause when the consumer only saw the data stop.
                    Err(p) => {
                        let p = p.context(format!("reading archive {}", c.object));
                        let replace = match &failure {
                            None => true,
                            Some(f) => is_eof(f),
                        };
                        if replace {
                            failure = Some(p);
                        }
                    }
                }
            }
            match failure {
                Some(f) => Err(f),
                None => Ok(()),
            }
        })
        .with_context(|| format!("snapshot {id}"))?;
        walked.end = self.end.clone();
        Ok(walked)
    }

    fn consume(
        &self,
        select: &mut dyn FnMut(&Entry) -> bool,
        visit: &mut Visit<'_>,
        cursors: &mut HashMap<u32, Cursor<'_>>,
        walked: &mut Walked,
    ) -> Result<()> {
        let mut pass = self.pass()?;
        while let Some(e) = pass.next_entry()? {
            if !select(&e) {
                continue;
            }
            walked.entries += 1;
            match (e.kind, e.archive, e.offset) {
                (EntryKind::File, Some(index), Some(offset)) if e.size > 0 => {
                    let cursor = cursors.get_mut(&index).ok_or_else(|| {
                        anyhow!("{}: archive {index} was not planned for", e.path.display())
                    })?;
                    walked.bytes += e.size;
                    cursor.entry(&e, offset, visit)?;
                }
                (EntryKind::File, ..) => visit(&e, Some(&mut io::empty()))?,
                _ => visit(&e, None)?,
            }
        }
        Ok(())
    }
}

/// True when `err` is only "the data stopped" (a pipe whose producer died).
fn is_eof(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof)
    })
}

/// The plain (tar) byte ranges a plan's runs cover, in order.
fn plain_runs(p: &ArchivePlan) -> Vec<(u64, u64)> {
    let fs = p.archive.frame_size;
    p.runs()
        .iter()
        .map(|&(first, last)| {
            (
                first as u64 * fs,
                ((last as u64 + 1) * fs).min(p.archive.plain_size),
            )
        })
        .collect()
}

/// The consuming side of one archive: where in its tar stream the pipe is.
struct Cursor<'s> {
    object: String,
    /// Plain ranges the pipe carries, concatenated.
    runs: Vec<(u64, u64)>,
    run: usize,
    /// Plain offset of the next byte the pipe yields.
    pos: u64,
    reader: Option<PipeReader>,
    producer: Option<ScopedJoinHandle<'s, Result<()>>>,
    whole: bool,
    manifest: &'s str,
}

/// Counts what tar reads, so the cursor knows its position.
struct Counted<'r> {
    inner: &'r mut PipeReader,
    count: &'r mut u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
}

impl Cursor<'_> {
    fn mismatch(&self, what: String) -> anyhow::Error {
        IntegrityError(format!(
            "archive {} does not match manifest {}: {what}",
            self.object, self.manifest
        ))
        .into()
    }

    /// Moves to plain offset `offset`, skipping what lies between.
    fn seek(&mut self, offset: u64) -> Result<()> {
        loop {
            let Some(&(_, end)) = self.runs.get(self.run) else {
                return Err(self.mismatch(format!("offset {offset} is past the planned reads")));
            };
            if offset < self.pos {
                return Err(self.mismatch(format!(
                    "entries are out of archive order (offset {offset} after {})",
                    self.pos
                )));
            }
            let reader = self
                .reader
                .as_mut()
                .ok_or_else(|| anyhow!("archive reader closed"))?;
            let target = offset.min(end);
            let skip = target - self.pos;
            let skipped = io::copy(&mut reader.take(skip), &mut io::sink())?;
            self.pos += skipped;
            if skipped < skip {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("archive {} ended at tar offset {}", self.object, self.pos),
                )
                .into());
            }
            if offset < end {
                return Ok(());
            }
            self.run += 1;
            if let Some(&(start, _)) = self.runs.get(self.run) {
                self.pos = start;
            }
        }
    }

    /// Reads the entry at `offset`, checks it is `expected`, and visits it.
    fn entry(&mut self, expected: &Entry, offset: u64, visit: &mut Visit<'_>) -> Result<()> {
        self.seek(offset)?;
        let mut count = 0u64;
        let result = {
            let reader = self
                .reader
                .as_mut()
                .ok_or_else(|| anyhow!("archive reader closed"))?;
            let mut archive = tar::Archive::new(Counted {
                inner: reader,
                count: &mut count,
            });
            let mut entries = archive.entries()?;
            match entries.next().transpose()? {
                None => Err(format!(
                    "no entry at offset {offset}, where {} should be",
                    expected.path.display()
                )),
                Some(mut t) => {
                    let sparse = if expected.sparse {
                        sparse_records(&mut t)
                    } else {
                        None
                    };
                    let path = match &sparse {
                        Some((name, _)) => name.clone(),
                        None => t.path_bytes().into_owned(),
                    };
                    let size = sparse.as_ref().map_or(t.size(), |(_, real)| *real);
                    if path != expected.path.0
                        || t.header().entry_type() != tar::EntryType::Regular
                        || size != expected.size
                        || expected.sparse != sparse.is_some()
                    {
                        Err(format!(
                            "at offset {offset} the manifest has {} ({}file, {} bytes), the archive has {} ({:?}, {} \
                             bytes)",
                            expected.path.display(),
                            if expected.sparse { "sparse " } else { "" },
                            expected.size,
                            String::from_utf8_lossy(&path),
                            t.header().entry_type(),
                            size
                        ))
                    } else if expected.sparse {
                        match SparseReader::new(&mut t, expected.size) {
                            Ok(mut expanded) => Ok(visit(expected, Some(&mut expanded))),
                            Err(why) => Err(format!("{}: {why}", expected.path.display())),
                        }
                    } else {
                        Ok(visit(expected, Some(&mut t)))
                    }
                }
            }
        };
        self.pos += count;
        match result {
            Ok(visited) => visited,
            Err(what) => Err(self.mismatch(what)),
        }
    }
}

/// A GNU sparse 1.0 member's real name and size, from its PAX records.
fn sparse_records<R: Read>(t: &mut tar::Entry<'_, R>) -> Option<(Vec<u8>, u64)> {
    let mut name = None;
    let mut real = None;
    let mut major = false;
    for ext in t.pax_extensions().ok()??.flatten() {
        match ext.key_bytes() {
            b"GNU.sparse.name" => name = Some(ext.value_bytes().to_vec()),
            b"GNU.sparse.realsize" => real = std::str::from_utf8(ext.value_bytes()).ok()?.parse().ok(),
            b"GNU.sparse.major" => major = ext.value_bytes() == b"1",
            _ => {}
        }
    }
    (major).then_some(())?;
    Some((name?, real?))
}

/// Largest sparse map read (its text precedes the data in the member).
const MAX_SPARSE_MAP: usize = 16 << 20;

/// A sparse member's content as the file it stands for: its data regions
/// where they are, zeros in the holes.
struct SparseReader<'r> {
    data: &'r mut dyn Read,
    regions: std::collections::VecDeque<(u64, u64)>,
    pos: u64,
    size: u64,
}

impl<'r> SparseReader<'r> {
    fn new(data: &'r mut dyn Read, size: u64) -> Result<Self, String> {
        let mut map = Vec::new();
        loop {
            let before = map.len();
            (&mut *data)
                .take(512)
                .read_to_end(&mut map)
                .map_err(|e| format!("reading its sparse map: {e}"))?;
            if let Some((regions, len)) = crate::pipeline::tar::parse_sparse_map(&map, size)
                && len == map.len()
            {
                return Ok(SparseReader {
                    data,
                    regions: regions.into(),
                    pos: 0,
                    size,
                });
            }
            if map.len() == before || map.len() > MAX_SPARSE_MAP {
                return Err("its sparse map is malformed".into());
            }
        }
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let (start, len) = self.regions.front().copied().unwrap_or((self.size, 0));
        if self.pos < start {
            let n = (start - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let left = start + len - self.pos;
        let want = left.min(buf.len() as u64) as usize;
        let n = self.data.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a sparse member ends before its data",
            ));
        }
        self.pos += n as u64;
        if self.pos == start + len {
            self.regions.pop_front();
        }
        Ok(n)
    }
}

/// Largest zstd window an archive's frame may ask a reader for: frames hold
/// 4 MiB of tar each (`frames::FRAME_SIZE`), so a window of 8 MiB is
/// plenty, and a hostile archive cannot make each reader thread allocate
/// zstd's default maximum of 128 MiB.
const ARCHIVE_WINDOW_LOG: u32 = 23;

/// Decrypts and decompresses the planned frames of one archive into `out`.
fn produce(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    snap: &SnapshotRef,
    plan: &ArchivePlan,
    mut out: PipeWriter,
) -> Result<()> {
    let a = &plan.archive;
    let ctx = repo.context(&snap.host, &snap.job, &a.snapshot, Kind::Archive, &a.object)?;
    let envelope = a.envelope.to_envelope()?;
    if plan.whole() {
        let sealed = repo.open_sealed(&a.object, keys, &ctx, Some(&envelope))?;
        let mut decoder = zstd::stream::read::Decoder::new(sealed)?;
        decoder.window_log_max(ARCHIVE_WINDOW_LOG)?;
        io::copy(&mut decoder, &mut out)?;
        out.finish()?;
        return Ok(());
    }
    let store = repo.store();
    let head_len = (MAX_HEADER_LEN as u64).min(a.size);
    let mut head = store
        .open_range(&a.object, 0, Some(head_len))
        .with_context(|| format!("cannot open {}", a.object))?;
    let (header, key) = repo.unseal_header(&a.object, &mut head, keys, &ctx, Some(&envelope))?;
    drop(head);
    let chunk = u64::from(header.chunk_size());
    let starts = a.frames().starts();
    let total = starts.last().copied().unwrap_or(0);
    let total_chunks = total.div_ceil(chunk).max(1);
    for (first, last) in plan.runs() {
        let (c_lo, c_hi) = (starts[first], starts[last + 1]);
        let k0 = c_lo / chunk;
        let k1 = (c_hi.max(1) - 1) / chunk + 1;
        let (end, limit) = if k1 >= total_chunks {
            (None, None)
        } else {
            (Some(header.chunk_offset(k1)), Some(k1))
        };
        let raw = store
            .open_range(&a.object, header.chunk_offset(k0), end)
            .with_context(|| format!("cannot open {}", a.object))?;
        let mut sealed = SealedReader::at_chunk(
            BufReader::with_capacity(READ_BUFFER, raw),
            &header,
            &key,
            k0,
            limit,
        )
        .with_context(|| format!("object {}", a.object))?;
        let skip = c_lo - k0 * chunk;
        io::copy(&mut (&mut sealed).take(skip), &mut io::sink())?;
        let mut decoder = zstd::stream::read::Decoder::new(BufReader::new(sealed.take(c_hi - c_lo)))?;
        decoder.window_log_max(ARCHIVE_WINDOW_LOG)?;
        io::copy(&mut decoder, &mut out)?;
    }
    out.finish()?;
    Ok(())
}
