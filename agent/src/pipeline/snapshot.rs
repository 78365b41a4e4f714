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
use std::sync::Arc;
use std::thread::{self, ScopedJoinHandle};

use anyhow::{Context, Result, anyhow};
use vaultline_crypto::{DataKey, Header, KeyWrap, MAX_HEADER_LEN, SealedReader};

use crate::error::{IntegrityError, UsageError};
use crate::pipeline::inflate::{FrameFeed, Inflaters, SealedFrame, SealedObject};
use crate::pipeline::pipe::{PipeWriter, pipe};
use crate::repo::manifest::{
    ArchiveRef, ChunkRef, Entry, EntryKind, Frames, ManifestEnd, ManifestHeader, ManifestItem,
    ManifestReader, NodesRef, SegmentReader, SegmentRef, Xattrs,
};
use crate::repo::{Kind, READ_BUFFER, Repo, SnapshotRef};

type ManifestPass = ManifestReader<SealedReader<BufReader<File>>>;
/// Authenticated plaintext of a ranged read of a stored object.
type RangeReader = SealedReader<BufReader<Box<dyn Read + Send>>>;

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

impl Spool {
    /// Fetches object `name` whole (at most `size` bytes, the size the
    /// caller knows it has) into an unnamed temporary file, reads its
    /// header as `ctx` and unwraps its data key (from `envelope` if given).
    fn fetch(
        repo: &Repo,
        keys: &(dyn KeyWrap + Sync),
        name: &str,
        size: u64,
        ctx: &vaultline_crypto::EncryptionContext,
        envelope: Option<&vaultline_crypto::KeyEnvelope>,
        snapshot: &str,
    ) -> Result<Spool> {
        let mut file = tempfile::tempfile().context("cannot create a temporary file for a manifest")?;
        {
            let raw = repo
                .store()
                .open(name)
                .with_context(|| format!("snapshot {snapshot}: cannot open {name}"))?;
            // At most one byte more than listed: enough to tell a longer
            // object, never a disk filled by a server that does not stop.
            let sent = io::copy(&mut raw.take(size.saturating_add(1)), &mut file)
                .with_context(|| format!("snapshot {snapshot}: reading {name}"))?;
            if sent != size {
                let sent = if sent > size {
                    format!("more than {size}")
                } else {
                    sent.to_string()
                };
                return Err(IntegrityError(format!(
                    "manifest {name}: the server sent {sent} bytes, the listing said {size}"
                ))
                .into());
            }
        }
        file.seek(SeekFrom::Start(0))?;
        let (header, key) = repo
            .unseal_header(name, &mut BufReader::new(&mut file), keys, ctx, envelope)
            .with_context(|| format!("snapshot {snapshot}"))?;
        Ok(Spool {
            file,
            header,
            key,
            name: name.to_string(),
            snapshot: snapshot.to_string(),
        })
    }

    /// The plaintext bytes `offset..offset + length` (one segment's frame),
    /// authenticated chunk by chunk at their own indices, decompressed.
    fn segment(&self, offset: u64, length: u64, plain_size: u64) -> Result<Box<dyn Read + Send>> {
        let chunk = u64::from(self.header.chunk_size());
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= plain_size && length > 0)
            .ok_or_else(|| {
                IntegrityError(format!(
                    "node pack {}: a segment at {offset}+{length} lies outside its {plain_size} bytes",
                    self.name
                ))
            })?;
        let (k0, k1) = chunk_span(offset, end, chunk);
        let limit = chunk_limit(k1, plain_size, chunk);
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(self.header.chunk_offset(k0)))?;
        let mut sealed = SealedReader::at_chunk(
            BufReader::with_capacity(READ_BUFFER, file),
            &self.header,
            &self.key,
            k0,
            limit,
        )
        .with_context(|| format!("snapshot {}: object {}", self.snapshot, self.name))?;
        io::copy(&mut (&mut sealed).take(offset - k0 * chunk), &mut io::sink())?;
        let mut decoder = zstd::stream::read::Decoder::new(BufReader::new(sealed.take(length)))?;
        decoder.window_log_max(24)?;
        Ok(Box::new(decoder))
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
    /// Schema 4: the tree's segments, and the node packs holding them.
    segments: Vec<SegmentRef>,
    nodes: Vec<Option<NodesRef>>,
    /// Node packs fetched so far (ciphertext spools), by table index.
    node_spools: std::sync::Mutex<HashMap<u32, std::sync::Arc<Spool>>>,
    end: ManifestEnd,
}

/// A pass over a snapshot's entries, in walk order: from the manifest
/// itself (schema 2 and 3) or from its segments (schema 4).
pub struct Pass<'r> {
    reader: &'r SnapshotReader<'r>,
    root: Option<ManifestPass>,
    next_segment: usize,
    lines: Option<SegmentReader<'r, Box<dyn Read + Send>>>,
}

impl<'r> Pass<'r> {
    /// The next entry, with its chunk list; `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if let Some(root) = &mut self.root {
            return root.next_entry();
        }
        loop {
            if let Some(lines) = &mut self.lines {
                match lines.next_entry()? {
                    Some(e) => return Ok(Some(e)),
                    None => self.lines = None,
                }
            }
            let Some(segment) = self.reader.segments.get(self.next_segment) else {
                return Ok(None);
            };
            self.next_segment += 1;
            let spool = self.reader.node_spool(segment.nodes)?;
            let plain = self.reader.nodes[segment.nodes as usize]
                .as_ref()
                .map_or(0, |n| n.plain_size);
            let index = self.next_segment - 1;
            let decoded = spool
                .segment(segment.offset, segment.length, plain)
                .with_context(|| format!("snapshot {}: segment {index}", self.reader.snapshot.id))?;
            let name = format!(
                "{} (segment {index} of snapshot {})",
                spool.name, self.reader.snapshot.id
            );
            self.lines = Some(SegmentReader::new(decoded, segment, &self.reader.archives, &name));
        }
    }
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
    /// Frames read in order, by the archive's stream.
    frames: Vec<bool>,
    /// Selected file entries and chunks with content in it.
    pub entries: u64,
    /// Sealed bytes of the reads made apart from the stream: members and
    /// chunks that lie behind where the stream already is (a chunk shared
    /// by two files, or one a renamed file kept).
    pub apart: u64,
}

impl ArchivePlan {
    fn new(archive: &ArchiveRef) -> Self {
        ArchivePlan {
            frames: vec![false; archive.frames.len()],
            archive: archive.clone(),
            entries: 0,
            apart: 0,
        }
    }

    /// True when every frame is needed: the object is read whole.
    pub fn whole(&self) -> bool {
        !self.frames.is_empty() && self.frames.iter().all(|&f| f)
    }

    /// True when the archive's stream reads anything.
    fn streamed(&self) -> bool {
        self.frames.iter().any(|&f| f)
    }

    /// Frames holding plain bytes `lo..hi` (hi > lo, hi <= plain size).
    fn frame_span(&self, lo: u64, hi: u64) -> (usize, usize) {
        let fs = self.archive.frame_size.max(1);
        let last = self.frames.len().saturating_sub(1);
        (
            ((lo / fs) as usize).min(last),
            (((hi - 1) / fs) as usize).min(last),
        )
    }

    /// Marks plain bytes `lo..hi` as read by the stream.
    fn mark(&mut self, lo: u64, hi: u64) {
        let (first, last) = self.frame_span(lo, hi);
        self.frames[first..=last].iter_mut().for_each(|f| *f = true);
    }

    /// Counts a read of plain bytes `lo..hi` apart from the stream.
    fn apart(&mut self, lo: u64, hi: u64, chunk: u64) {
        let (first, last) = self.frame_span(lo, hi);
        let lengths = &self.archive.frames;
        let c_lo: u64 = lengths[..first].iter().map(|&l| u64::from(l)).sum();
        let c_hi: u64 = c_lo + lengths[first..=last].iter().map(|&l| u64::from(l)).sum::<u64>();
        let (k0, k1) = chunk_span(c_lo, c_hi, chunk);
        self.apart += (k1 - k0) * (chunk + 20);
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
            return self.archive.size + self.apart;
        }
        let starts = self.archive.frames().starts();
        let sealed_chunk = chunk + 20;
        self.runs()
            .iter()
            .map(|&(first, last)| {
                let (k0, k1) = chunk_span(starts[first], starts[last + 1], chunk);
                (k1 - k0) * sealed_chunk
            })
            .sum::<u64>()
            + self.apart
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
        let spool = Spool::fetch(
            repo,
            keys,
            &name,
            snapshot.manifest_size,
            &ctx,
            None,
            &snapshot.id,
        )?;
        let mut pass = spool.pass()?;
        let mut segments = Vec::new();
        while let Some(item) = pass
            .next_item()
            .with_context(|| format!("snapshot {}", snapshot.id))?
        {
            if let ManifestItem::Segment(s) = item {
                segments.push(s);
            }
        }
        let end = pass
            .end()
            .cloned()
            .ok_or_else(|| anyhow!("manifest {}: no end record", spool.name))?;
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
        let nodes = pass.nodes().map(<[_]>::to_vec).unwrap_or_default();
        for s in &segments {
            if nodes.get(s.nodes as usize).and_then(Option::as_ref).is_none() {
                return Err(IntegrityError(format!(
                    "manifest {}: a segment refers to node pack {}, which its table does not have",
                    spool.name, s.nodes
                ))
                .into());
            }
        }
        drop(pass);
        Ok(SnapshotReader {
            repo,
            keys,
            snapshot,
            spool,
            manifest,
            archives,
            segments,
            nodes,
            node_spools: std::sync::Mutex::new(HashMap::new()),
            end,
        })
    }

    /// The node pack at `index` of the table, fetched once.
    fn node_spool(&self, index: u32) -> Result<std::sync::Arc<Spool>> {
        let mut spools = self
            .node_spools
            .lock()
            .map_err(|_| anyhow!("node pack cache poisoned"))?;
        if let Some(s) = spools.get(&index) {
            return Ok(std::sync::Arc::clone(s));
        }
        let n = self
            .nodes
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("node pack {index} is not in the table"))?;
        let s = &self.snapshot;
        let ctx = self
            .repo
            .context(&s.host, &s.job, &n.snapshot, Kind::Nodes, &n.object)?;
        let envelope = n.envelope.to_envelope()?;
        let spool = std::sync::Arc::new(Spool::fetch(
            self.repo,
            self.keys,
            &n.object,
            n.size,
            &ctx,
            Some(&envelope),
            &s.id,
        )?);
        spools.insert(index, std::sync::Arc::clone(&spool));
        Ok(spool)
    }

    /// The snapshot it reads.
    pub fn snapshot(&self) -> &SnapshotRef {
        &self.snapshot
    }

    /// A fresh pass over the snapshot's entries, in walk order.
    pub fn pass(&self) -> Result<Pass<'_>> {
        let root = if self.manifest.vaultline_manifest >= 4 {
            None
        } else {
            Some(self.spool.pass()?)
        };
        Ok(Pass {
            reader: self,
            root,
            next_segment: 0,
            lines: None,
        })
    }

    /// A fresh pass over the manifest object itself: its items (inline
    /// entries, deleted paths, segment references) and tables, as `rewrap`
    /// copies them.
    pub fn root_pass(&self) -> Result<ManifestPass> {
        self.spool.pass()
    }

    /// The node pack table (schema 4; empty before).
    pub fn nodes(&self) -> &[Option<NodesRef>] {
        &self.nodes
    }

    /// The tree's segments (schema 4; empty before).
    pub fn segments(&self) -> &[SegmentRef] {
        &self.segments
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

    /// The archive at `index` of the table.
    fn archive(&self, index: u32) -> Result<&ArchiveRef> {
        self.archives
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("manifest {}: archive {index} missing", self.spool.name))
    }

    /// Which frames of which archives hold the entries `select` picks.
    ///
    /// Each archive is read as one forward stream of the frames marked
    /// here. A member or chunk that lies behind where that stream will
    /// already be (the plan follows it: past a member's offset and size,
    /// past a chunk's end) is read apart, by a ranged read of its own
    /// frames, so that no archive is read twice over.
    pub fn plan(&self, select: &mut dyn FnMut(&Entry) -> bool) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut by_index: HashMap<u32, ArchivePlan> = HashMap::new();
        // Per archive, how far its stream gets at least.
        let mut reach: HashMap<u32, u64> = HashMap::new();
        let chunk = self.chunk_size();
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
            if let (Some(index), Some(offset)) = (e.archive, e.offset) {
                let archive = self.archive(index)?;
                if offset >= archive.plain_size {
                    return Err(IntegrityError(format!(
                        "manifest {}: {} lies at offset {offset}, past the end of archive {} ({} bytes of tar)",
                        self.spool.name,
                        e.path.display(),
                        archive.object,
                        archive.plain_size
                    ))
                    .into());
                }
                let p = by_index.entry(index).or_insert_with(|| ArchivePlan::new(archive));
                p.entries += 1;
                let hi = member_end(offset, e.size, &e.xattrs, archive.plain_size);
                let at = reach.entry(index).or_insert(0);
                if offset >= *at {
                    p.mark(offset, hi);
                    *at = offset.saturating_add(e.size).saturating_add(512);
                } else {
                    p.apart(offset, hi, chunk);
                }
            }
            for c in &e.chunks {
                let archive = self.archive(c.archive)?;
                let p = by_index
                    .entry(c.archive)
                    .or_insert_with(|| ArchivePlan::new(archive));
                p.entries += 1;
                let hi = c.offset + u64::from(c.length);
                let at = reach.entry(c.archive).or_insert(0);
                if c.offset >= *at {
                    p.mark(c.offset, hi);
                    *at = hi;
                } else {
                    p.apart(c.offset, hi, chunk);
                }
            }
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
        let slots = frame_slots(plan);
        let workers = thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_INFLATERS);
        thread::scope(|scope| -> Result<()> {
            let inflaters = Inflaters::start(scope, workers, ARCHIVE_WINDOW_LOG);
            let mut cursors: HashMap<u32, Cursor<'_>> = HashMap::new();
            for (index, p) in &plan.archives {
                let (repo, keys, snap) = (self.repo, self.keys, &self.snapshot);
                let (reader, producer): (Option<Box<dyn Read>>, _) = if !p.streamed() {
                    (None, None)
                } else if p.archive.frame_size <= MAX_PARALLEL_FRAME {
                    let frames = p.frames.iter().filter(|&&f| f).count() as u64;
                    let slots = slots.get(index).copied().unwrap_or(1);
                    let (feed, stream) = inflaters.archive(slots, frames, &p.archive.object);
                    (
                        Some(Box::new(stream)),
                        Some(scope.spawn(move || produce_frames(repo, keys, snap, p, feed))),
                    )
                } else {
                    let (pipe_in, pipe_out) = pipe(if block > (256 << 10) { 4 } else { 2 }, block);
                    (
                        Some(Box::new(pipe_out)),
                        Some(scope.spawn(move || produce(repo, keys, snap, p, pipe_in))),
                    )
                };
                cursors.insert(
                    *index,
                    Cursor {
                        object: p.archive.object.clone(),
                        runs: plain_runs(p),
                        run: 0,
                        pos: 0,
                        reader,
                        producer,
                        whole: p.whole(),
                        manifest: &self.spool.name,
                    },
                );
            }
            // The producers hold the workers' queue from here on: the
            // workers end when the last producer does.
            drop(inflaters);
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
        let mut apart = Apart {
            reader: self,
            opened: HashMap::new(),
        };
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
                    let hi = member_end(offset, e.size, &e.xattrs, self.archive(index)?.plain_size);
                    if cursor.can_read(offset, hi) {
                        cursor.entry(&e, offset, visit)?;
                    } else {
                        let mut data = apart.open(index, offset, hi)?;
                        let mut count = 0;
                        read_member(&mut data, &mut count, &e, offset, visit)
                            .map_err(|what| cursor.mismatch(what))??;
                    }
                }
                (EntryKind::File, ..) if !e.chunks.is_empty() => {
                    walked.bytes += e.size;
                    let mut chunked = Chunked {
                        chunks: &e.chunks,
                        next: 0,
                        source: ChunkSource::None,
                        cursors: &mut *cursors,
                        apart: &mut apart,
                        failure: None,
                    };
                    let visited = visit(&e, Some(&mut chunked));
                    let failure = chunked.failure.take();
                    if let Some(f) = failure {
                        return Err(f.context(format!("reading {}", e.path.display())));
                    }
                    visited?;
                }
                (EntryKind::File, ..) => visit(&e, Some(&mut io::empty()))?,
                _ => visit(&e, None)?,
            }
        }
        Ok(())
    }
}

/// Frame slots for each streamed archive of `plan`: enough for the
/// decompression workers to run ahead of the consumer, and a fixed total
/// however many archives a chain has (a slot holds one frame's plain
/// bytes, at most `MAX_PARALLEL_FRAME`). Every archive
/// gets one; what is left of the budget goes to the archives most of the
/// frames come from (at the end of a chain, the full backup's: the
/// consumer spends most of its time there, and with one slot it would wait
/// for every frame to be decompressed).
fn frame_slots(plan: &Plan) -> HashMap<u32, usize> {
    let needed = |p: &ArchivePlan| p.frames.iter().filter(|&&f| f).count();
    let mut streamed: Vec<(u32, usize)> = plan
        .archives
        .iter()
        // (an archive of frames too large to decompress whole is read by
        // one streaming decoder, through no slot)
        .filter(|(_, p)| p.streamed() && p.archive.frame_size <= MAX_PARALLEL_FRAME)
        .map(|(i, p)| (*i, needed(p)))
        .collect();
    let mut slots: HashMap<u32, usize> = streamed.iter().map(|&(i, _)| (i, 1)).collect();
    let mut left = FRAME_BUDGET.saturating_sub(streamed.len());
    streamed.sort_by_key(|&(i, n)| (std::cmp::Reverse(n), i));
    for (i, n) in streamed {
        if left == 0 {
            break;
        }
        let s = slots.entry(i).or_insert(1);
        let more = (MAX_SLOTS - *s).min(n.saturating_sub(*s)).min(left);
        *s += more;
        left -= more;
    }
    slots
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
    reader: Option<Box<dyn Read>>,
    producer: Option<ScopedJoinHandle<'s, Result<()>>>,
    whole: bool,
    manifest: &'s str,
}

/// Counts what tar reads, so the cursor knows its position.
struct Counted<'r> {
    inner: &'r mut dyn Read,
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

    /// True when plain bytes `lo..hi` are ahead in the stream: not passed,
    /// and within one planned run.
    fn can_read(&self, lo: u64, hi: u64) -> bool {
        self.reader.is_some()
            && lo >= self.pos
            && self
                .runs
                .get(self.run..)
                .is_some_and(|runs| runs.iter().any(|&(s, e)| s <= lo && hi <= e))
    }

    /// Reads the next bytes of the stream into `buf` (a chunk's, after
    /// [`Cursor::seek`] to it: within one planned run).
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| anyhow!("archive reader closed"))?;
        let n = reader.read(buf)?;
        self.pos += n as u64;
        Ok(n)
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
            read_member(reader, &mut count, expected, offset, visit)
        };
        self.pos += count;
        match result {
            Ok(visited) => visited,
            Err(what) => Err(self.mismatch(what)),
        }
    }
}

/// Reads the tar member at the start of `reader` (plain offset `offset`),
/// checks it is `expected` (path, type, size, sparse or not), and visits
/// it. `count` gets the bytes taken. The outer error is a mismatch, the
/// inner one the visitor's or the reader's.
fn read_member(
    reader: &mut dyn Read,
    count: &mut u64,
    expected: &Entry,
    offset: u64,
    visit: &mut Visit<'_>,
) -> std::result::Result<Result<()>, String> {
    {
        {
            let mut archive = tar::Archive::new(Counted { inner: reader, count });
            let mut entries = match archive.entries() {
                Ok(e) => e,
                Err(e) => return Ok(Err(e.into())),
            };
            let next = match entries.next().transpose() {
                Ok(n) => n,
                Err(e) => return Ok(Err(e.into())),
            };
            match next {
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
        }
    }
}

/// The plain byte after the frames a member at `offset` of `size` bytes
/// may reach (its headers included), within an archive of `plain` bytes.
/// `xattrs`: the entry's extended attributes, which its PAX header carries
/// on top of the paths (each as a record of its name and value, ACLs as
/// text: never more than 8 bytes of header for a byte of value).
fn member_end(offset: u64, size: u64, xattrs: &Xattrs, plain: u64) -> u64 {
    let attributes: u64 = xattrs
        .iter()
        .map(|(name, value)| 64 + 2 * name.len() as u64 + 8 * value.0.len() as u64)
        .sum();
    offset
        .saturating_add(size)
        .saturating_add(TAR_SLACK + 1)
        .saturating_add(attributes)
        .min(plain)
}

/// Reads apart from the archives' streams: ranged reads of the frames
/// holding one member or chunk, each authenticated at its own chunk
/// indices. An archive's header and data key are read once.
struct Apart<'r> {
    reader: &'r SnapshotReader<'r>,
    opened: HashMap<u32, (Header, DataKey, Vec<u64>)>,
}

impl Apart<'_> {
    /// Plain bytes `lo..hi` of archive `index`.
    fn open(&mut self, index: u32, lo: u64, hi: u64) -> Result<Box<dyn Read + Send>> {
        let r = self.reader;
        let a = r.archive(index)?;
        let (header, key, starts) = match self.opened.entry(index) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (header, key) = open_header(r.repo, r.keys, &r.snapshot, a)?;
                v.insert((header, key, a.frames().starts()))
            }
        };
        let fs = a.frame_size.max(1);
        let last_frame = a.frames.len().saturating_sub(1);
        let first = ((lo / fs) as usize).min(last_frame);
        let last = (((hi.max(1)) - 1) / fs) as usize;
        let last = last.min(last_frame);
        let plain = open_frames(r.repo, a, header, key, starts, first, last)?;
        let mut plain = plain;
        io::copy(&mut (&mut plain).take(lo - first as u64 * fs), &mut io::sink())?;
        Ok(Box::new(plain.take(hi - lo)))
    }
}

/// A chunked file's content, chunk after chunk, each from its archive's
/// stream when it lies ahead there, else read apart. Streamed through: a
/// chunk (up to 2 MiB) is never held whole.
struct Chunked<'c, 's, 'r> {
    chunks: &'c [ChunkRef],
    next: usize,
    /// Where the current chunk's bytes come from, and how many are left.
    source: ChunkSource,
    cursors: &'c mut HashMap<u32, Cursor<'s>>,
    apart: &'c mut Apart<'r>,
    /// What stopped the read (an integrity error keeps its kind).
    failure: Option<anyhow::Error>,
}

enum ChunkSource {
    /// Between chunks.
    None,
    /// From the stream of archive `archive` (positioned at the chunk).
    Stream {
        archive: u32,
        left: usize,
        chunk: ChunkRef,
    },
    /// From a read apart.
    Apart {
        data: Box<dyn Read + Send>,
        left: usize,
        chunk: ChunkRef,
    },
}

impl Chunked<'_, '_, '_> {
    /// Moves to the next chunk's bytes.
    fn start(&mut self) -> Result<()> {
        let c = self.chunks[self.next];
        self.next += 1;
        let (lo, len) = (c.offset, c.length as usize);
        let cursor = self
            .cursors
            .get_mut(&c.archive)
            .ok_or_else(|| anyhow!("archive {} was not planned for", c.archive))?;
        self.source = if cursor.can_read(lo, lo + len as u64) {
            cursor.seek(lo)?;
            ChunkSource::Stream {
                archive: c.archive,
                left: len,
                chunk: c,
            }
        } else {
            ChunkSource::Apart {
                data: self.apart.open(c.archive, lo, lo + len as u64)?,
                left: len,
                chunk: c,
            }
        };
        Ok(())
    }

    /// Reads some of the current chunk into `buf`; 0 between chunks.
    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize> {
        let (n, left, c) = match &mut self.source {
            ChunkSource::None => return Ok(0),
            ChunkSource::Stream { archive, left, chunk } => {
                let cursor = self
                    .cursors
                    .get_mut(archive)
                    .ok_or_else(|| anyhow!("archive {archive} was not planned for"))?;
                let want = buf.len().min(*left);
                (cursor.read_some(&mut buf[..want])?, left, *chunk)
            }
            ChunkSource::Apart { data, left, chunk } => {
                let want = buf.len().min(*left);
                (data.read(&mut buf[..want])?, left, *chunk)
            }
        };
        if n == 0 {
            let cursor = self
                .cursors
                .get(&c.archive)
                .ok_or_else(|| anyhow!("archive {} was not planned for", c.archive))?;
            return Err(cursor.mismatch(format!(
                "a chunk at {}+{} ends after {} bytes",
                c.offset,
                c.length,
                c.length as usize - *left
            )));
        }
        *left -= n;
        if *left == 0 {
            self.source = ChunkSource::None;
        }
        Ok(n)
    }
}

impl Read for Chunked<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the read failed"));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let step = if matches!(self.source, ChunkSource::None) {
                if self.next == self.chunks.len() {
                    return Ok(0);
                }
                self.start().map(|()| 0)
            } else {
                self.read_chunk(buf)
            };
            match step {
                Ok(0) => continue,
                Ok(n) => return Ok(n),
                Err(e) => {
                    let message = format!("{e:#}");
                    self.failure = Some(e);
                    return Err(io::Error::other(message));
                }
            }
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
    let (header, key) = open_header(repo, keys, snap, a)?;
    let starts = a.frames().starts();
    for (first, last) in plan.runs() {
        let mut plain = open_frames(repo, a, &header, &key, &starts, first, last)?;
        io::copy(&mut plain, &mut out)?;
    }
    out.finish()?;
    Ok(())
}

/// Most frames' plain bytes in memory for a read (see
/// [`crate::pipeline::inflate`]), shared by its archives.
const FRAME_BUDGET: usize = 4;
/// Most frames' plain bytes in memory for one archive: one the consumer
/// reads while two workers decompress the next ones (with 2, one worker
/// at a time decompressed an archive's frames). A slot is 4 MiB of plain
/// bytes; what a frame is read into comes from a pool of its own.
const MAX_SLOTS: usize = 3;
/// Most decompression workers.
const MAX_INFLATERS: usize = 4;
/// Largest frame decompressed whole in parallel; an archive with larger
/// frames (no vaultline writes them) is read by one streaming decoder.
const MAX_PARALLEL_FRAME: u64 = 2 * crate::pipeline::frames::FRAME_SIZE;

/// Reads, authenticates and cuts into frames the planned frames of one
/// archive, for the decompression workers (the parallel form of
/// [`produce`]).
fn produce_frames(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    snap: &SnapshotRef,
    plan: &ArchivePlan,
    mut feed: FrameFeed,
) -> Result<()> {
    let a = &plan.archive;
    let frames = a.frames();
    if plan.whole() {
        let ctx = repo.context(&snap.host, &snap.job, &a.snapshot, Kind::Archive, &a.object)?;
        let envelope = a.envelope.to_envelope()?;
        let raw = repo
            .store()
            .open(&a.object)
            .with_context(|| format!("cannot open {}", a.object))?;
        // Frames are read a few MiB at a time, past the buffer: a small
        // one is enough for the header.
        let mut input = BufReader::with_capacity(64 << 10, raw);
        let (header, key) = repo.unseal_header(&a.object, &mut input, keys, &ctx, Some(&envelope))?;
        // Checks the commitment, the header MAC and the binding tag; the
        // workers open the chunks that follow.
        let input = SealedReader::new(input, &header, &key)
            .with_context(|| format!("object {}", a.object))?
            .into_inner();
        let object = Arc::new(SealedObject { header, key });
        if feed_sealed(input, &object, &frames, (0, frames.lengths.len() - 1), &mut feed)? {
            feed.finish()?;
        }
        return Ok(());
    }
    // Some frames only: the header by a ranged read, then each run of
    // needed frames by a ranged read of the sealed chunks holding it,
    // opened by the workers like a whole archive's.
    let (header, key) = open_header(repo, keys, snap, a)?;
    let object = Arc::new(SealedObject { header, key });
    let starts = frames.starts();
    let chunk = u64::from(object.header.chunk_size());
    let total = starts.last().copied().unwrap_or(0);
    for (first, last) in plan.runs() {
        let (k0, k1) = chunk_span(starts[first], starts[last + 1], chunk);
        let end = chunk_limit(k1, total, chunk).map(|k1| object.header.chunk_offset(k1));
        let raw = repo
            .store()
            .open_range(&a.object, object.header.chunk_offset(k0), end)
            .with_context(|| format!("cannot open {}", a.object))?;
        if !feed_sealed(raw, &object, &frames, (first, last), &mut feed)? {
            // Cut short: the frame that ran out says so in its turn.
            return Ok(());
        }
    }
    feed.finish()?;
    Ok(())
}

/// Cuts the sealed chunks of frames `first..=last` of an archive (`input`,
/// starting at the chunk frame `first` begins in; `a`, its frame table)
/// into those frames, for the workers to authenticate, decrypt and
/// decompress (docs/FORMAT.md §13.1: the frames are the whole payload).
/// Returns false when `input` ended early (the worker of the frame that
/// ran out names the truncation; nothing more is to be read).
fn feed_sealed(
    mut input: impl Read,
    object: &Arc<SealedObject>,
    a: &Frames,
    (first, last): (usize, usize),
    feed: &mut FrameFeed,
) -> Result<bool> {
    let header = &object.header;
    let chunk = u64::from(header.chunk_size());
    let sealed_chunk = header.chunk_offset(1) - header.chunk_offset(0);
    let starts = a.starts();
    let total = starts.last().copied().unwrap_or(0);
    let chunks = total.div_ceil(chunk).max(1);
    let n = a.lengths.len();
    let mut carry = Vec::new();
    // The chunk after those read so far.
    let mut next_chunk = starts[first] / chunk;
    for i in first..=last {
        let (lo, hi) = (starts[i], starts[i + 1]);
        let (k0, k1) = (lo / chunk, (hi.max(1) - 1) / chunk);
        // A frame in the final chunk reads to the object's end, and one
        // byte past where a whole final chunk would end: its worker checks
        // the final flag and sees trailing data.
        let reaches_end = k1 + 1 >= chunks;
        let end = if reaches_end { chunks } else { k1 + 1 };
        let want = (end - k0) * sealed_chunk + u64::from(reaches_end);
        if k0 == next_chunk {
            carry.clear();
        }
        let frame = SealedFrame {
            object: Arc::clone(object),
            first_chunk: k0,
            end_chunk: (!reaches_end).then_some(end),
            skip: (lo - k0 * chunk) as usize,
            len: (hi - lo) as usize,
            last: i + 1 == n,
        };
        let plain = a
            .plain_size
            .saturating_sub(i as u64 * a.frame_size)
            .min(a.frame_size) as usize;
        let whole = feed.sealed_frame(
            &mut input,
            &mut carry,
            usize::try_from(want)?,
            ((k1 - k0) * sealed_chunk) as usize,
            frame,
            plain,
        )?;
        next_chunk = end;
        if !whole && !reaches_end {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The sealed chunks `k0..k1` holding payload bytes `lo..hi` (`hi > lo`)
/// of an object sealed in chunks of `chunk` plaintext bytes.
fn chunk_span(lo: u64, hi: u64, chunk: u64) -> (u64, u64) {
    (lo / chunk, (hi.max(1) - 1) / chunk + 1)
}

/// Where a ranged read that ends before chunk `k1` stops, of a payload of
/// `total` bytes: `None` when `k1` is past the final chunk, and the read
/// goes on to the object's authenticated end.
fn chunk_limit(k1: u64, total: u64, chunk: u64) -> Option<u64> {
    (k1 < total.div_ceil(chunk).max(1)).then_some(k1)
}

/// An archive's header, read by a ranged read, and its data key.
fn open_header(
    repo: &Repo,
    keys: &(dyn KeyWrap + Sync),
    snap: &SnapshotRef,
    a: &ArchiveRef,
) -> Result<(Header, DataKey)> {
    let ctx = repo.context(&snap.host, &snap.job, &a.snapshot, Kind::Archive, &a.object)?;
    let envelope = a.envelope.to_envelope()?;
    let head_len = (MAX_HEADER_LEN as u64).min(a.size);
    let mut head = repo
        .store()
        .open_range(&a.object, 0, Some(head_len))
        .with_context(|| format!("cannot open {}", a.object))?;
    repo.unseal_header(&a.object, &mut head, keys, &ctx, Some(&envelope))
}

/// The plain bytes of frames `first..=last` of archive `a` (`starts`: its
/// frames' compressed offsets), by a ranged read of the sealed chunks
/// holding them, each authenticated at its own index.
fn open_frames(
    repo: &Repo,
    a: &ArchiveRef,
    header: &Header,
    key: &DataKey,
    starts: &[u64],
    first: usize,
    last: usize,
) -> Result<Box<dyn Read + Send>> {
    let sealed = open_sealed_range(repo, a, header, key, starts, first, last)?;
    let mut decoder = zstd::stream::read::Decoder::new(BufReader::new(sealed))?;
    decoder.window_log_max(ARCHIVE_WINDOW_LOG)?;
    Ok(Box::new(decoder))
}

/// The compressed bytes of frames `first..=last` of archive `a`, by a
/// ranged read of the sealed chunks holding them, each authenticated at its
/// own index.
fn open_sealed_range(
    repo: &Repo,
    a: &ArchiveRef,
    header: &Header,
    key: &DataKey,
    starts: &[u64],
    first: usize,
    last: usize,
) -> Result<io::Take<RangeReader>> {
    let chunk = u64::from(header.chunk_size());
    let total = starts.last().copied().unwrap_or(0);
    let (c_lo, c_hi) = (starts[first], starts[last + 1]);
    let (k0, k1) = chunk_span(c_lo, c_hi, chunk);
    let limit = chunk_limit(k1, total, chunk);
    let end = limit.map(|k1| header.chunk_offset(k1));
    let raw = repo
        .store()
        .open_range(&a.object, header.chunk_offset(k0), end)
        .with_context(|| format!("cannot open {}", a.object))?;
    let mut sealed =
        SealedReader::at_chunk(BufReader::with_capacity(READ_BUFFER, raw), header, key, k0, limit)
            .with_context(|| format!("object {}", a.object))?;
    let skip = c_lo - k0 * chunk;
    io::copy(&mut (&mut sealed).take(skip), &mut io::sink())?;
    Ok(sealed.take(c_hi - c_lo))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vaultline_crypto::{EncryptionContext, KeyEnvelope, SealOptions, SealedWriter};

    use super::*;

    /// `plain` cut into zstd frames of `frame` bytes, sealed in chunks of
    /// 1 KiB (so that frames share chunks, several may lie in one), and
    /// its frame table.
    fn sealed(plain: &[u8], frame: usize, key: &DataKey) -> (Vec<u8>, Frames) {
        let envelope = KeyEnvelope {
            provider: "local".into(),
            key_id: "test".into(),
            wrapped: vec![7; 40],
        };
        let options = SealOptions {
            chunk_size: 1024,
            salt: None,
        };
        let mut w = SealedWriter::with_options(Vec::new(), key, envelope, EncryptionContext::new(), &options)
            .unwrap();
        let mut lengths = Vec::new();
        for piece in plain.chunks(frame) {
            let c = zstd::bulk::compress(piece, 1).unwrap();
            lengths.push(c.len() as u32);
            w.write_all(&c).unwrap();
        }
        let frames = Frames {
            frame_size: frame as u64,
            lengths,
            plain_size: plain.len() as u64,
        };
        (w.finish().unwrap(), frames)
    }

    /// What `produce` feeds (`frames` frames in all) yields through the
    /// workers, `slots` frames at most in flight; `produce` returns false
    /// when its input ran out (no clean end).
    fn through_workers(
        frames: usize,
        slots: usize,
        produce: impl FnOnce(&mut FrameFeed) -> Result<bool> + Send,
    ) -> Result<Vec<u8>> {
        thread::scope(|s| {
            let pool = Inflaters::start(s, 2, ARCHIVE_WINDOW_LOG);
            let (mut feed, mut stream) = pool.archive(slots, frames as u64, "a");
            drop(pool);
            let producer = s.spawn(move || -> Result<()> {
                if produce(&mut feed)? {
                    feed.finish()?;
                }
                Ok(())
            });
            let mut out = Vec::new();
            let read = stream.read_to_end(&mut out);
            drop(stream);
            let produced = producer.join().map_err(|_| anyhow!("panicked"))?;
            read?;
            produced?;
            Ok(out)
        })
    }

    /// What a whole read of `object` yields, through the workers.
    fn read_whole(object: &[u8], frames: &Frames, key: &DataKey) -> Result<Vec<u8>> {
        let mut input = object;
        let header = Header::read_from(&mut input)?;
        let input = SealedReader::new(input, &header, key)?.into_inner();
        let object = Arc::new(SealedObject {
            header,
            key: key.clone(),
        });
        let n = frames.lengths.len();
        through_workers(n, 2, |feed| feed_sealed(input, &object, frames, (0, n - 1), feed))
    }

    /// What a read of the frame runs `runs` of `object` yields, each run
    /// from the sealed chunks holding it only, as `produce_frames` reads
    /// them from a store.
    fn read_runs(object: &[u8], frames: &Frames, key: &DataKey, runs: &[(usize, usize)]) -> Result<Vec<u8>> {
        let header = Header::read_from(&mut &object[..])?;
        let object_key = Arc::new(SealedObject {
            header,
            key: key.clone(),
        });
        let count: usize = runs.iter().map(|&(a, b)| b - a + 1).sum();
        through_workers(count, 1, |feed| {
            let h = &object_key.header;
            let chunk = u64::from(h.chunk_size());
            let starts = frames.starts();
            let total = starts.last().copied().unwrap_or(0);
            for &(first, last) in runs {
                let (k0, k1) = chunk_span(starts[first], starts[last + 1], chunk);
                let lo = (h.chunk_offset(k0) as usize).min(object.len());
                let hi = chunk_limit(k1, total, chunk)
                    .map_or(object.len(), |k1| (h.chunk_offset(k1) as usize).min(object.len()));
                if !feed_sealed(&object[lo..hi], &object_key, frames, (first, last), feed)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    #[test]
    fn runs_of_frames_read_only_their_chunks_and_authenticate_them() {
        let key = DataKey::generate().unwrap();
        let plain = sample(200_000);
        let frame = 7_000;
        let (object, frames) = sealed(&plain, frame, &key);
        let n = frames.lengths.len();
        let runs = [(0, 0), (2, 4), (9, 9), (10, 12), (n - 3, n - 1)];
        let want: Vec<u8> = runs
            .iter()
            .flat_map(|&(a, b)| {
                plain[a * frame..((b + 1) * frame).min(plain.len())]
                    .iter()
                    .copied()
            })
            .collect();
        assert!(read_runs(&object, &frames, &key, &runs).unwrap() == want);
        // A run in the middle only: the object's end is not read.
        let middle = read_runs(&object, &frames, &key, &[(5, 6)]).unwrap();
        assert!(middle[..] == plain[5 * frame..7 * frame]);

        // A byte flipped inside a run's chunks; the object cut short
        // inside the last run; trailing bytes after the final chunk.
        // (in the chunk where frame 3 starts, of the run 2..=4)
        let header = Header::read_from(&mut &object[..]).unwrap();
        let k = frames.starts()[3] / u64::from(header.chunk_size());
        let mut flipped = object.clone();
        flipped[header.chunk_offset(k) as usize + 10] ^= 1;
        let mut longer = object.clone();
        longer.push(0);
        for (what, bad) in [
            ("flipped", flipped),
            ("truncated", object[..object.len() - 100].to_vec()),
            ("longer", longer),
        ] {
            let err = read_runs(&bad, &frames, &key, &runs).unwrap_err();
            assert!(crate::error::is_integrity(&err), "{what}: {err:#}");
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 5 == 0 { x as u8 } else { b'a' + (x % 3) as u8 }
            })
            .collect()
    }

    #[test]
    fn whole_reads_open_frames_that_share_chunks() {
        let key = DataKey::generate().unwrap();
        // Frames of a few KiB (sharing chunks) and frames of a few bytes
        // (several in one chunk, the final one included).
        for (plain, frame) in [
            (sample(200_000), 7_000),
            (vec![0u8; 300_000], 4096),
            (sample(10), 4),
        ] {
            let (object, frames) = sealed(&plain, frame, &key);
            assert!(
                read_whole(&object, &frames, &key).unwrap() == plain,
                "frames of {frame}"
            );
        }
    }

    #[test]
    fn whole_reads_refuse_damage_truncation_and_trailing_bytes() {
        let key = DataKey::generate().unwrap();
        let plain = sample(100_000);
        let (object, frames) = sealed(&plain, 5_000, &key);
        let mut flipped = object.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        let mut longer = object.clone();
        longer.push(0);
        for (what, bad) in [
            ("flipped", flipped),
            ("truncated", object[..object.len() - 100].to_vec()),
            ("truncated further", object[..object.len() / 2].to_vec()),
            ("longer", longer),
        ] {
            let err = read_whole(&bad, &frames, &key).unwrap_err();
            assert!(crate::error::is_integrity(&err), "{what}: {err:#}");
        }
    }
}
