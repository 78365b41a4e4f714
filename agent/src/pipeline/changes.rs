//! Change detection for incremental runs: the local record of a job's last
//! snapshot.
//!
//! After each committed snapshot the host keeps, in its state directory,
//! what it needs to decide the next run without reading anything back from
//! the repository (a write-only host cannot): every entry of the snapshot as
//! the manifest has it (kind, size, mode, owner, mtime, and for files the
//! archive and offset holding the content) plus the stat fields that reveal
//! a change (ctime and inode), and the snapshot's archive table with the key
//! envelopes. The next run walks the tree in the same order and joins it
//! against this record: an entry whose (size, mtime, ctime, inode, mode,
//! owner, kind, link target) are all unchanged is carried into the new
//! manifest as it was, pointing at the old archive; everything else is
//! archived anew; record entries the walk did not meet are deletions.
//!
//! Files, in `STATE/incremental/`:
//!
//! ```text
//! JOB.json                    the header: repository, snapshot, chain, archive table,
//!                             and the checksums of the two files below
//! JOB.SNAPSHOT.entries.zst    the entries (zstd JSON lines, walk order)
//! JOB.SNAPSHOT.chunks         where the snapshot's chunks are (32 bytes a chunk)
//! JOB.apart                   snapshots made since apart from the chain (`backup stdin`)
//! ```
//!
//! The entries and chunk files are written beside the run and renamed into
//! place after the manifest commits; the header is replaced last, atomically, and names
//! its entries file, so a crash leaves the previous record intact. Nothing
//! secret is in it: paths and metadata of this host's own files, and key
//! envelopes that only the key provider can open. It is 0600 all the same.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::pipeline::chunks::{ChunkId, ChunkIndex};
use crate::repo::manifest::{ArchiveRef, ChunkRef, Entry, NodesRef, SegmentRef};

/// Version of the record's layout: 3 since it keeps chunk names and the
/// snapshot's segments (2 added extended attributes: a record without them
/// must not vouch for files that have them; each upgrade's first run is a
/// full one).
pub const STATE_VERSION: u32 = 3;

/// The record's header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateHeader {
    /// Always [`STATE_VERSION`].
    pub vaultline_state: u32,
    /// The repository it belongs to (store description and prefix).
    pub repository: String,
    /// Host.
    pub host: String,
    /// Job.
    pub job: String,
    /// The snapshot it describes.
    pub snapshot: String,
    /// Incremental runs since the chain's full.
    pub chain: u32,
    /// When the chain's full started (RFC 3339).
    pub full_started: String,
    /// The snapshot's archive table.
    pub archives: Vec<Option<ArchiveRef>>,
    /// The snapshot's node pack table.
    #[serde(default)]
    pub nodes: Vec<Option<NodesRef>>,
    /// The snapshot's segments: a run shares those it does not change.
    #[serde(default)]
    pub segments: Vec<SegmentRef>,
    /// Entries in the entries file (absent in records of releases before
    /// the checksums, as the two below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// BLAKE3 of the entries file as written (compressed), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_blake3: Option<String>,
    /// BLAKE3 of the chunk file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_blake3: Option<String>,
}

/// Stat fields besides those in the manifest entry that reveal a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Inode change time, seconds.
    pub ctime: i64,
    /// … nanoseconds.
    pub ctime_nsec: u32,
    /// Inode number.
    pub ino: u64,
}

impl Stat {
    /// From what `stat` said.
    pub fn of(st: &rustix::fs::Stat) -> Stat {
        Stat {
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec.clamp(0, 999_999_999) as u32,
            ino: st.st_ino,
        }
    }
}

/// [`Line`] as written: borrows the entry (a run writes one per entry).
#[derive(Serialize)]
struct LineOut<'a> {
    e: &'a Entry,
    s: Stat,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    c: Vec<(ChunkRef, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    e: Entry,
    s: Stat,
    /// A chunked file's chunks: where each is, and its name (hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    c: Vec<(ChunkRef, String)>,
}

/// The order the walk visits paths in: component by component, each
/// compared as bytes (a directory's contents come right after it, before
/// `dir-x` and after `dir`). The join of walk and record relies on it.
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("incremental")
}

fn header_path(state_dir: &Path, job: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.json"))
}

fn entries_path(state_dir: &Path, job: &str, snapshot: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.{snapshot}.entries.zst"))
}

fn chunks_path(state_dir: &Path, job: &str, snapshot: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.{snapshot}.chunks"))
}

fn apart_path(state_dir: &Path, job: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.apart"))
}

/// Snapshots this host made of `job` apart from its chain since the record's
/// snapshot (`backup stdin`, one id a line in `STATE/incremental/JOB.apart`):
/// the next run builds on the record all the same. A missing or unreadable
/// note is none (the run is then full if such a snapshot is the newest).
pub fn made_apart(state_dir: &Path, job: &str) -> std::collections::HashSet<String> {
    fs::read_to_string(apart_path(state_dir, job))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Notes `snapshot` (committed) as made apart from `job`'s chain.
pub fn note_apart(state_dir: &Path, job: &str, snapshot: &str) -> Result<()> {
    let path = apart_path(state_dir, job);
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    text.push_str(snapshot);
    text.push('\n');
    crate::state::private_dir(&dir(state_dir))
        .with_context(|| format!("cannot create {}", dir(state_dir).display()))?;
    crate::state::write_atomic(&path, text.as_bytes(), crate::state::PRIVATE)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Entries a batch carries from the record's reader thread to the join.
const BATCH: usize = 512;

/// A job's record, opened for the join.
///
/// Opening reads the header only ([`Record::open`]); [`Record::start`]
/// checks the entries against the checksums the header keeps, loads the
/// chunk index and starts a thread that decompresses and parses the
/// entries ahead of the join (on a tree of a million unchanged files,
/// parsing is a third of a run's work; on its own core it costs the walk
/// nothing).
pub struct Record {
    /// Its header.
    pub header: StateHeader,
    state_dir: PathBuf,
    path: PathBuf,
    batches: Option<mpsc::Receiver<Result<Vec<Prev>>>>,
    batch: std::vec::IntoIter<Prev>,
    /// The reader said it sent every entry (an empty batch).
    ended: bool,
    reader: Option<JoinHandle<()>>,
    peeked: Option<Prev>,
}

/// An entry of the parent, as the record has it.
#[derive(Debug, Clone)]
pub struct Prev {
    /// The entry (with its chunk references).
    pub entry: Entry,
    /// Its stat fields.
    pub stat: Stat,
    /// Its position in the record (segments count in it).
    pub ordinal: u64,
    /// The names of its chunks, in order.
    pub ids: Vec<ChunkId>,
    /// Its line in the record, as read: what the next record holds for it
    /// again when neither the entry nor its stat changed.
    pub raw: Vec<u8>,
}

/// What is wrong with a line of the record, if anything: it parses, comes
/// after `last` in walk order, its chunk list adds up, and what it points
/// at is in the header's tables.
fn parse_line(header: &StateHeader, last: Option<&[u8]>, bytes: &[u8]) -> std::result::Result<Line, String> {
    let l: Line = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if last.is_some_and(|p| walk_order(p, &l.e.path.0) != Ordering::Less) {
        return Err(format!("{} is out of order", l.e.path.display()));
    }
    let in_table = |a: u32| header.archives.get(a as usize).is_some_and(Option::is_some);
    let chunked: u64 = l.c.iter().map(|(c, _)| u64::from(c.length)).sum();
    if l.c.len() as u64 != l.e.chunk_count
        || (!l.c.is_empty() && chunked != l.e.size)
        || l.c
            .iter()
            .any(|(c, name)| name.len() != 32 || !in_table(c.archive))
    {
        return Err(format!("{} has a damaged chunk list", l.e.path.display()));
    }
    if l.e.kind == crate::repo::manifest::EntryKind::File
        && l.e.size > 0
        && l.e.chunk_count == 0
        && !(l.e.archive.is_some_and(in_table) && l.e.offset.is_some())
    {
        return Err(format!(
            "{} has no archive in the record's table",
            l.e.path.display()
        ));
    }
    Ok(l)
}

/// The chunk names of a parsed line, and its entry with its chunks.
fn split_chunks(l: Line) -> std::result::Result<(Entry, Stat, Vec<ChunkId>), String> {
    let mut e = l.e;
    let mut ids = Vec::with_capacity(l.c.len());
    e.chunks = Vec::with_capacity(l.c.len());
    for (c, name) in l.c {
        let mut id: ChunkId = [0; 16];
        hex::decode_to_slice(&name, &mut id)
            .map_err(|_| format!("{} has a damaged chunk name", e.path.display()))?;
        e.chunks.push(c);
        ids.push(id);
    }
    Ok((e, l.s, ids))
}

fn entries_reader(
    path: &Path,
) -> io::Result<io::Split<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>> {
    let decoder = zstd::stream::read::Decoder::new(File::open(path)?)?;
    Ok(BufReader::with_capacity(1 << 16, decoder).split(b'\n'))
}

/// BLAKE3 of a file's bytes, hex.
fn file_blake3(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Bytes of one chunk in the chunk file: name (16), then archive (u32),
/// offset (u64) and length (u32), little-endian.
const CHUNK_RECORD: usize = 32;

fn chunk_record(id: &ChunkId, c: &ChunkRef) -> [u8; CHUNK_RECORD] {
    let mut r = [0u8; CHUNK_RECORD];
    r[..16].copy_from_slice(id);
    r[16..20].copy_from_slice(&c.archive.to_le_bytes());
    r[20..28].copy_from_slice(&c.offset.to_le_bytes());
    r[28..32].copy_from_slice(&c.length.to_le_bytes());
    r
}

impl Record {
    /// The header of `job`'s record, or why there is none usable (a
    /// missing record is `Ok(Err(reason))`; an unreadable one too: it only
    /// costs a full run). Nothing else is read yet.
    pub fn open(state_dir: &Path, job: &str) -> Result<std::result::Result<Record, String>> {
        let hp = header_path(state_dir, job);
        let bytes = match fs::read(&hp) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Err(format!(
                    "there is no local record of an earlier run of job {job} in {} (first run, or a new state \
                     directory)",
                    dir(state_dir).display()
                )));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", hp.display())),
        };
        let header: StateHeader = match serde_json::from_slice(&bytes) {
            Ok(h) => h,
            Err(e) => {
                return Ok(Err(format!(
                    "the local record {} is unreadable: {e}",
                    hp.display()
                )));
            }
        };
        if header.vaultline_state != STATE_VERSION || header.job != job {
            return Ok(Err(format!(
                "the local record {} is of another version or job",
                hp.display()
            )));
        }
        let path = entries_path(state_dir, job, &header.snapshot);
        Ok(Ok(Record {
            header,
            state_dir: state_dir.to_path_buf(),
            path,
            batches: None,
            batch: Vec::new().into_iter(),
            ended: false,
            reader: None,
            peeked: None,
        }))
    }

    /// Checks the record before a run relies on it, returns where the
    /// parent's chunks are, and starts reading the entries for the join.
    /// A record that fails (`Ok(Err(why))`) is not used: the run is full,
    /// rather than failing every run.
    ///
    /// The header keeps the BLAKE3 of the entries file and of the chunk
    /// file as written, and the entries' count: damage to either (a torn
    /// write, a bad sector, an edit) shows here, before the walk. Each line
    /// is checked again as the join reads it (order, chunk lists, tables):
    /// what passed the checksum and fails there is a record written wrong,
    /// and fails the run. A record of an earlier release has no checksums:
    /// it is read through once, line by line, instead.
    pub fn start(&mut self) -> Result<std::result::Result<ChunkIndex, String>> {
        let damaged = |why: &dyn std::fmt::Display| {
            Ok(Err(format!(
                "the local record {} is damaged: {why}",
                self.path.display()
            )))
        };
        // The segments cover the entries exactly, each in a node pack the
        // table has: a run shares them by position.
        let listed: u64 = self.header.segments.iter().map(|s| s.entries).sum();
        if self.header.segments.iter().any(|s| {
            self.header
                .nodes
                .get(s.nodes as usize)
                .is_none_or(Option::is_none)
        }) {
            return damaged(&"a segment is in no node pack of its table");
        }
        let index = match (&self.header.entries_blake3, &self.header.chunks_blake3) {
            (Some(entries_sum), Some(chunks_sum)) => {
                if self.header.entries != Some(listed) {
                    return damaged(&format!(
                        "its segments do not match its {:?} entries",
                        self.header.entries
                    ));
                }
                match file_blake3(&self.path) {
                    Ok(sum) if &sum == entries_sum => {}
                    Ok(_) => return damaged(&"its entries do not match the checksum in its header"),
                    Err(e) => {
                        return Ok(Err(format!(
                            "the local record's entries {}: {e}",
                            self.path.display()
                        )));
                    }
                }
                let cp = chunks_path(&self.state_dir, &self.header.job, &self.header.snapshot);
                let unreadable = |e: io::Error| {
                    Ok(Err(format!(
                        "the local record's chunk list {}: {e}",
                        cp.display()
                    )))
                };
                // Checked whole before any of it is used, then read again a
                // record at a time: memory is the index's, not the file's.
                match file_blake3(&cp) {
                    Ok(sum) if &sum == chunks_sum => {}
                    Ok(_) => return damaged(&"its chunk list does not match the checksum in its header"),
                    Err(e) => return unreadable(e),
                }
                let (mut list, len) = match File::open(&cp).and_then(|f| Ok((f.metadata()?.len(), f))) {
                    Ok((len, f)) => (BufReader::with_capacity(1 << 16, f), len),
                    Err(e) => return unreadable(e),
                };
                if len % CHUNK_RECORD as u64 != 0 {
                    return damaged(&"its chunk list does not match the checksum in its header");
                }
                let mut index = ChunkIndex::new();
                let mut record = [0u8; CHUNK_RECORD];
                for _ in 0..len / CHUNK_RECORD as u64 {
                    if let Err(e) = list.read_exact(&mut record) {
                        return unreadable(e);
                    }
                    let r = &record;
                    let field = |a: usize, b: usize| -> &[u8] { &r[a..b] };
                    let mut id: ChunkId = [0; 16];
                    id.copy_from_slice(field(0, 16));
                    let c = ChunkRef {
                        archive: u32::from_le_bytes(field(16, 20).try_into()?),
                        offset: u64::from_le_bytes(field(20, 28).try_into()?),
                        length: u32::from_le_bytes(field(28, 32).try_into()?),
                    };
                    if self
                        .header
                        .archives
                        .get(c.archive as usize)
                        .is_none_or(Option::is_none)
                    {
                        return damaged(&"its chunk list names an archive its table does not have");
                    }
                    index.insert(id, c);
                }
                index
            }
            _ => match self.check_lines(listed)? {
                Ok(index) => index,
                Err(why) => return Ok(Err(why)),
            },
        };
        let lines = match entries_reader(&self.path) {
            Ok(l) => l,
            Err(e) => {
                return Ok(Err(format!(
                    "the local record's entries {}: {e}",
                    self.path.display()
                )));
            }
        };
        let (tx, rx) = mpsc::sync_channel(8);
        let header = self.header.clone();
        let path = self.path.clone();
        self.reader = Some(
            std::thread::Builder::new()
                .name("record-reader".into())
                .spawn(move || read_entries(lines, &header, &path, listed, &tx))?,
        );
        self.batches = Some(rx);
        Ok(Ok(index))
    }

    /// A record of an earlier release (no checksums): every line read once
    /// and checked, and the chunk index gathered from them.
    fn check_lines(&self, listed: u64) -> Result<std::result::Result<ChunkIndex, String>> {
        let mut lines = match entries_reader(&self.path) {
            Ok(l) => l,
            Err(e) => {
                return Ok(Err(format!(
                    "the local record's entries {}: {e}",
                    self.path.display()
                )));
            }
        };
        let mut last: Option<Vec<u8>> = None;
        let mut line = 0u64;
        let mut index = ChunkIndex::new();
        let damaged = |line: u64, why: String| {
            Ok(Err(format!(
                "the local record {} is damaged: line {line}: {why}",
                self.path.display()
            )))
        };
        for item in lines.by_ref() {
            line += 1;
            let bytes = match item {
                Ok(b) => b,
                Err(e) => return damaged(line, e.to_string()),
            };
            let (e, _, ids) = match parse_line(&self.header, last.as_deref(), &bytes).and_then(split_chunks) {
                Ok(l) => l,
                Err(why) => return damaged(line, why),
            };
            for (id, c) in ids.iter().zip(&e.chunks) {
                index.insert(*id, *c);
            }
            last = Some(e.path.0);
        }
        if listed != line {
            return Ok(Err(format!(
                "the local record {} is damaged: its segments do not match its {line} entries",
                self.path.display()
            )));
        }
        Ok(Ok(index))
    }

    fn fill(&mut self) -> Result<()> {
        if self.peeked.is_some() {
            return Ok(());
        }
        if let Some(p) = self.batch.next() {
            self.peeked = Some(p);
            return Ok(());
        }
        if self.ended {
            return Ok(());
        }
        let rx = self
            .batches
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the local record was not started"))?;
        // The reader ends with an empty batch; a channel closed before it
        // is a reader that stopped (it panicked): the join must not take
        // that for the end of the record.
        match rx.recv() {
            Ok(Ok(batch)) if batch.is_empty() => self.ended = true,
            Ok(Ok(batch)) => {
                self.batch = batch.into_iter();
                self.peeked = self.batch.next();
            }
            Ok(Err(e)) if !e.is::<WrittenWrong>() => return Err(e),
            Ok(Err(e)) => {
                // It matched its checksums, so no run would get past it:
                // set aside, the next run is full.
                let hp = header_path(&self.state_dir, &self.header.job);
                return Err(match fs::remove_file(&hp) {
                    Ok(()) => e.context(format!(
                        "{} was removed: the next run is a full one",
                        hp.display()
                    )),
                    Err(r) => e.context(format!(
                        "{} could not be removed ({r}): remove it, or run `vaultline backup now --full`",
                        hp.display()
                    )),
                });
            }
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "the thread reading the local record {} stopped before its end",
                    self.path.display()
                ));
            }
        }
        Ok(())
    }

    /// Takes every recorded entry that comes before `path` in walk order
    /// (they are gone: `gone` is called with each), then the entry for
    /// `path` itself if there is one.
    pub fn advance_to(
        &mut self,
        path: &[u8],
        mut gone: impl FnMut(&Entry) -> Result<()>,
    ) -> Result<Option<Prev>> {
        loop {
            self.fill()?;
            let Some(p) = &self.peeked else {
                return Ok(None);
            };
            match walk_order(&p.entry.path.0, path) {
                Ordering::Less => {
                    if let Some(p) = self.peeked.take() {
                        gone(&p.entry)?;
                    }
                }
                Ordering::Equal => return Ok(self.peeked.take()),
                Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Calls `gone` with every entry not yet taken.
    pub fn rest(&mut self, mut gone: impl FnMut(&Entry) -> Result<()>) -> Result<()> {
        loop {
            self.fill()?;
            match self.peeked.take() {
                Some(p) => gone(&p.entry)?,
                None => return Ok(()),
            }
        }
    }
}

impl Drop for Record {
    /// Stops the reader: with the channel gone, its next send fails.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A record line that matched the checksums and is wrong all the same.
#[derive(Debug)]
struct WrittenWrong(String);

impl std::fmt::Display for WrittenWrong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrittenWrong {}

/// The reader thread: the entries, parsed and checked, to the join in
/// batches; an error ends it.
fn read_entries(
    lines: io::Split<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>,
    header: &StateHeader,
    path: &Path,
    listed: u64,
    tx: &mpsc::SyncSender<Result<Vec<Prev>>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last: Option<Vec<u8>> = None;
    let mut ordinal = 0u64;
    let fail = |line: u64, why: String| {
        let _ = tx.send(Err(WrittenWrong(format!(
            "the local record {} is damaged: line {line}: {why} (though it matched its checksum: it was \
             written wrong)",
            path.display()
        ))
        .into()));
    };
    for item in lines {
        let raw = match item {
            Ok(b) => b,
            // Reading failed (the disk, not the record's contents): this
            // run fails, the record stays for the next one.
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!(
                    "cannot read the local record {}: {e}",
                    path.display()
                )));
                return;
            }
        };
        let (entry, stat, ids) = match parse_line(header, last.as_deref(), &raw).and_then(split_chunks) {
            Ok(l) => l,
            Err(why) => return fail(ordinal + 1, why),
        };
        last = Some(entry.path.0.clone());
        batch.push(Prev {
            entry,
            stat,
            ordinal,
            ids,
            raw,
        });
        ordinal += 1;
        if batch.len() == BATCH
            && tx
                .send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                .is_err()
        {
            return;
        }
    }
    if ordinal != listed {
        return fail(
            ordinal,
            format!("its segments list {listed} entries, it has {ordinal}"),
        );
    }
    if !batch.is_empty() && tx.send(Ok(batch)).is_err() {
        return;
    }
    // The end.
    let _ = tx.send(Ok(Vec::new()));
}

/// The record being written by a run.
///
/// Lines are compressed and written by a thread of their own (on a tree
/// of a million unchanged files that is a tenth of the run's work); the
/// chunk list is written here, uncompressed (32 bytes a chunk). Both are
/// hashed as written: the header keeps the sums.
pub struct RecordWriter {
    out: Option<Lines>,
    chunks: Option<(BufWriter<File>, blake3::Hasher)>,
    temp: PathBuf,
    chunks_temp: PathBuf,
    entries: u64,
    state_dir: PathBuf,
    job: String,
}

/// What the compressing thread returns: the file and the BLAKE3 of the
/// bytes it wrote.
type Compressed = io::Result<(File, blake3::Hash)>;

/// Lines gathered 64 KiB at a time and handed to the compressing thread.
struct Lines {
    buf: Vec<u8>,
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<Compressed>>,
}

/// A writer that hashes what it passes on.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const LINES_BUF: usize = 1 << 16;

impl Lines {
    fn new(file: File) -> io::Result<Lines> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let thread =
            std::thread::Builder::new()
                .name("record-writer".into())
                .spawn(move || -> Compressed {
                    let out = Hashing {
                        inner: BufWriter::with_capacity(LINES_BUF, file),
                        hasher: blake3::Hasher::new(),
                    };
                    let mut enc = zstd::stream::write::Encoder::new(out, 1)?;
                    for buf in rx {
                        enc.write_all(&buf)?;
                    }
                    let out = enc.finish()?;
                    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
                    Ok((file, out.hasher.finalize()))
                })?;
        Ok(Lines {
            buf: Vec::with_capacity(LINES_BUF + 4096),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The compressing thread's error, once it stopped (it stops only on
    /// one, or when told).
    fn stopped(&mut self) -> io::Error {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the local record's writer stopped"),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(LINES_BUF + 4096));
        match &self.tx {
            Some(tx) if tx.send(buf).is_ok() => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= LINES_BUF {
            self.send()?;
        }
        Ok(())
    }

    /// Hands over the last lines and waits for the file to be written.
    fn finish(mut self) -> Compressed {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(done)) => done,
            _ => Err(io::Error::other("the local record's writer failed")),
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl RecordWriter {
    /// Starts writing the entries of a run.
    pub fn new(state_dir: &Path, job: &str) -> Result<Self> {
        let d = dir(state_dir);
        crate::state::private_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
        let suffix = hex::encode(suffix);
        let temp = d.join(format!(".{job}.{suffix}.entries.tmp"));
        let chunks_temp = d.join(format!(".{job}.{suffix}.chunks.tmp"));
        let file = crate::state::create_new(&temp, crate::state::PRIVATE)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let mut writer = RecordWriter {
            out: None,
            chunks: None,
            temp,
            chunks_temp,
            entries: 0,
            state_dir: state_dir.to_path_buf(),
            job: job.to_string(),
        };
        writer.out = Some(Lines::new(file)?);
        let chunks = crate::state::create_new(&writer.chunks_temp, crate::state::PRIVATE)
            .with_context(|| format!("cannot create {}", writer.chunks_temp.display()))?;
        writer.chunks = Some((BufWriter::with_capacity(LINES_BUF, chunks), blake3::Hasher::new()));
        Ok(writer)
    }

    fn parts(&mut self) -> Result<(&mut Lines, &mut (BufWriter<File>, blake3::Hasher))> {
        match (self.out.as_mut(), self.chunks.as_mut()) {
            (Some(out), Some(chunks)) => Ok((out, chunks)),
            _ => Err(anyhow::anyhow!("the record was committed already")),
        }
    }

    fn note_chunks(
        chunks: &mut (BufWriter<File>, blake3::Hasher),
        refs: &[ChunkRef],
        ids: &[ChunkId],
    ) -> io::Result<()> {
        for (c, id) in refs.iter().zip(ids) {
            let r = chunk_record(id, c);
            chunks.1.update(&r);
            chunks.0.write_all(&r)?;
        }
        Ok(())
    }

    /// Appends an entry, in walk order, with its chunks' names.
    pub fn entry(&mut self, entry: &Entry, stat: Stat, ids: &[ChunkId]) -> Result<()> {
        let (out, chunks) = self.parts()?;
        serde_json::to_writer(
            &mut *out,
            &LineOut {
                e: entry,
                s: stat,
                c: entry
                    .chunks
                    .iter()
                    .zip(ids)
                    .map(|(c, id)| (*c, hex::encode(id)))
                    .collect(),
            },
        )?;
        out.put(b"\n")?;
        Self::note_chunks(chunks, &entry.chunks, ids)?;
        self.entries += 1;
        Ok(())
    }

    /// Appends an entry that is exactly its parent's, stat included, as the
    /// parent's record line `raw` (written again byte for byte: parsing
    /// gave this entry, stat and chunks from it).
    pub fn entry_as_before(&mut self, raw: &[u8], entry: &Entry, ids: &[ChunkId]) -> Result<()> {
        let (out, chunks) = self.parts()?;
        out.put(raw)?;
        out.put(b"\n")?;
        Self::note_chunks(chunks, &entry.chunks, ids)?;
        self.entries += 1;
        Ok(())
    }

    /// Makes this the job's record (after the snapshot committed): the
    /// entries and chunk files go into place, then the header that names
    /// them with their checksums, then older files go.
    pub fn commit(mut self, header: &StateHeader) -> Result<()> {
        let done = self.commit_files(header);
        if done.is_err() {
            // Whatever was not renamed into place goes.
            let _ = fs::remove_file(&self.temp);
            let _ = fs::remove_file(&self.chunks_temp);
        }
        done
    }

    fn commit_files(&mut self, header: &StateHeader) -> Result<()> {
        let (file, sum) = self
            .out
            .take()
            .ok_or_else(|| anyhow::anyhow!("the record was committed already"))?
            .finish()?;
        file.sync_all()?;
        let (chunks, chunks_sum) = self
            .chunks
            .take()
            .ok_or_else(|| anyhow::anyhow!("the record was committed already"))?;
        let chunks = chunks.into_inner().map_err(|e| e.into_error())?;
        chunks.sync_all()?;
        let entries = entries_path(&self.state_dir, &self.job, &header.snapshot);
        fs::rename(&self.temp, &entries)?;
        let chunk_list = chunks_path(&self.state_dir, &self.job, &header.snapshot);
        fs::rename(&self.chunks_temp, &chunk_list)?;
        let header = StateHeader {
            entries: Some(self.entries),
            entries_blake3: Some(sum.to_hex().to_string()),
            chunks_blake3: Some(chunks_sum.finalize().to_hex().to_string()),
            ..header.clone()
        };
        let hp = header_path(&self.state_dir, &self.job);
        crate::state::write_atomic(&hp, &serde_json::to_vec(&header)?, crate::state::PRIVATE)
            .with_context(|| format!("cannot write {}", hp.display()))?;
        // Snapshots made apart from the chain are older than this one now.
        let _ = fs::remove_file(apart_path(&self.state_dir, &self.job));
        // Older records of this job, and leftovers of crashed runs.
        let keep = [entries.file_name(), chunk_list.file_name()].map(|n| n.map(|n| n.to_os_string()));
        if let Ok(list) = fs::read_dir(dir(&self.state_dir)) {
            for item in list.flatten() {
                let name = item.file_name();
                let text = name.to_string_lossy();
                let ours = text.starts_with(&format!("{}.", self.job))
                    && (text.ends_with(".entries.zst") || text.ends_with(".chunks"))
                    || text.starts_with(&format!(".{}.", self.job))
                        && (text.ends_with(".entries.tmp") || text.ends_with(".chunks.tmp"));
                if ours && !keep.contains(&Some(name.clone())) {
                    let _ = fs::remove_file(item.path());
                }
            }
        }
        Ok(())
    }
}

impl Drop for RecordWriter {
    /// An uncommitted record (a failed run) is removed.
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
            let _ = fs::remove_file(&self.temp);
        }
        if self.chunks.is_some() {
            let _ = fs::remove_file(&self.chunks_temp);
        }
    }
}

/// The joined key: a path whose recorded entry and stat equal the walked
/// ones is unchanged.
pub fn unchanged(prev: &Entry, prev_stat: Stat, now: &Entry, now_stat: Stat) -> bool {
    prev.kind == now.kind
        && prev.size == now.size
        && prev.mtime == now.mtime
        && prev.mtime_nsec == now.mtime_nsec
        && prev.mode == now.mode
        && prev.uid == now.uid
        && prev.gid == now.gid
        && prev.target == now.target
        && prev.linked == now.linked
        && prev.dev_major == now.dev_major
        && prev.dev_minor == now.dev_minor
        && prev_stat == now_stat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_puts_a_directory_s_contents_right_after_it() {
        let mut v = ["a-c", "a/b", "a", "a/b/c", "b", "a.d"];
        v.sort_by(|a, b| walk_order(a.as_bytes(), b.as_bytes()));
        let got = v;
        assert_eq!(got, ["a", "a/b", "a/b/c", "a-c", "a.d", "b"]);
    }
}
