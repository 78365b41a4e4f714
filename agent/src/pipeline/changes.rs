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
//! JOB.json                    the header: repository, snapshot, chain, archive table
//! JOB.SNAPSHOT.entries.zst    the entries (zstd JSON lines, walk order)
//! JOB.apart                   snapshots made since apart from the chain (`backup stdin`)
//! ```
//!
//! The entries file is written beside the run and renamed into place after
//! the manifest commits; the header is replaced last, atomically, and names
//! its entries file, so a crash leaves the previous record intact. Nothing
//! secret is in it: paths and metadata of this host's own files, and key
//! envelopes that only the key provider can open. It is 0600 all the same.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

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

/// A job's record, opened for the join.
pub struct Record {
    /// Its header.
    pub header: StateHeader,
    /// Position (in walk order) of the next entry to be taken.
    ordinal: u64,
    lines: io::Split<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>,
    peeked: Option<Prev>,
    path: PathBuf,
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

impl Record {
    /// The record of `job`, or why there is none usable (a missing record
    /// is `Ok(Err(reason))`; an unreadable one too: it only costs a full run).
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
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(format!("the local record's entries {}: {e}", path.display()))),
        };
        let decoder = zstd::stream::read::Decoder::new(file)?;
        Ok(Ok(Record {
            header,
            ordinal: 0,
            lines: BufReader::with_capacity(1 << 16, decoder).split(b'\n'),
            peeked: None,
            path,
        }))
    }

    fn fill(&mut self) -> Result<()> {
        if self.peeked.is_none()
            && let Some(line) = self.lines.next()
        {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            let l: Line = serde_json::from_slice(&line)
                .with_context(|| format!("{}: invalid line", self.path.display()))?;
            let mut e = l.e;
            let mut ids = Vec::with_capacity(l.c.len());
            e.chunks = Vec::with_capacity(l.c.len());
            for (c, name) in l.c {
                let mut id: ChunkId = [0; 16];
                hex::decode_to_slice(&name, &mut id)
                    .with_context(|| format!("{}: a damaged chunk name", self.path.display()))?;
                e.chunks.push(c);
                ids.push(id);
            }
            self.peeked = Some(Prev {
                entry: e,
                stat: l.s,
                ordinal: self.ordinal,
                ids,
                raw: line,
            });
            self.ordinal += 1;
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

    /// Reads the whole record once, checking what the join relies on: every
    /// line parses, paths come in strictly increasing walk order, and every
    /// file with content points at an archive the table has. A record that
    /// fails is not used (the run is full), rather than failing every run.
    pub fn check(state_dir: &Path, job: &str) -> Result<std::result::Result<ChunkIndex, String>> {
        let mut r = match Record::open(state_dir, job)? {
            Ok(r) => r,
            Err(why) => return Ok(Err(why)),
        };
        let mut last: Option<Vec<u8>> = None;
        let mut line = 0u64;
        let mut index = ChunkIndex::new();
        while let Some(item) = r.lines.next() {
            line += 1;
            let bad = |why: String| {
                Ok(Err(format!(
                    "the local record {} is damaged: line {line}: {why}",
                    r.path.display()
                )))
            };
            let bytes = match item {
                Ok(b) => b,
                Err(e) => return bad(e.to_string()),
            };
            let l: Line = match serde_json::from_slice(&bytes) {
                Ok(l) => l,
                Err(e) => return bad(e.to_string()),
            };
            if last
                .as_ref()
                .is_some_and(|p| walk_order(p, &l.e.path.0) != Ordering::Less)
            {
                return bad(format!("{} is out of order", l.e.path.display()));
            }
            let in_table = |a: u32| r.header.archives.get(a as usize).is_some_and(Option::is_some);
            let chunked: u64 = l.c.iter().map(|(c, _)| u64::from(c.length)).sum();
            if l.c.len() as u64 != l.e.chunk_count || (!l.c.is_empty() && chunked != l.e.size) {
                return bad(format!("{} has a damaged chunk list", l.e.path.display()));
            }
            for (c, name) in &l.c {
                let mut id: ChunkId = [0; 16];
                if hex::decode_to_slice(name, &mut id).is_err() || !in_table(c.archive) {
                    return bad(format!("{} has a damaged chunk list", l.e.path.display()));
                }
                index.insert(id, *c);
            }
            if l.e.kind == crate::repo::manifest::EntryKind::File && l.e.size > 0 && l.e.chunk_count == 0 {
                let ok = l.e.archive.is_some_and(in_table) && l.e.offset.is_some();
                if !ok {
                    return bad(format!(
                        "{} has no archive in the record's table",
                        l.e.path.display()
                    ));
                }
            }
            last = Some(l.e.path.0);
        }
        // The segments cover the entries exactly, each in a node pack the
        // table has: a run shares them by position.
        let listed: u64 = r.header.segments.iter().map(|s| s.entries).sum();
        if listed != line
            || r.header
                .segments
                .iter()
                .any(|s| r.header.nodes.get(s.nodes as usize).is_none_or(Option::is_none))
        {
            return Ok(Err(format!(
                "the local record {} is damaged: its segments do not match its {line} entries",
                r.path.display()
            )));
        }
        Ok(Ok(index))
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

/// The record being written by a run.
pub struct RecordWriter {
    /// Lines are gathered in the outer buffer and handed to zstd 64 KiB
    /// at a time (a call per JSON token costs more than compressing).
    out: Option<BufWriter<zstd::stream::write::Encoder<'static, BufWriter<File>>>>,
    temp: PathBuf,
    state_dir: PathBuf,
    job: String,
}

impl RecordWriter {
    /// Starts writing the entries of a run.
    pub fn new(state_dir: &Path, job: &str) -> Result<Self> {
        let d = dir(state_dir);
        crate::state::private_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
        let temp = d.join(format!(".{job}.{}.entries.tmp", hex::encode(suffix)));
        let file = crate::state::create_new(&temp, crate::state::PRIVATE)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        Ok(RecordWriter {
            out: Some(BufWriter::with_capacity(
                1 << 16,
                zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 16, file), 1)?,
            )),
            temp,
            state_dir: state_dir.to_path_buf(),
            job: job.to_string(),
        })
    }

    /// Appends an entry, in walk order, with its chunks' names.
    pub fn entry(&mut self, entry: &Entry, stat: Stat, ids: &[ChunkId]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the record was committed already"))?;
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
        out.write_all(b"\n")?;
        Ok(())
    }

    /// Appends an entry that is exactly its parent's, stat included, as the
    /// parent's record line `raw` (written again byte for byte: parsing
    /// gave this entry and stat from it).
    pub fn entry_as_before(&mut self, raw: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the record was committed already"))?;
        out.write_all(raw)?;
        out.write_all(b"\n")?;
        Ok(())
    }

    /// Makes this the job's record (after the snapshot committed): the
    /// entries file goes into place, then the header that names it, then
    /// older entries files go.
    pub fn commit(mut self, header: &StateHeader) -> Result<()> {
        let file = self
            .out
            .take()
            .ok_or_else(|| anyhow::anyhow!("the record was committed already"))?
            .into_inner()
            .map_err(|e| e.into_error())?
            .finish()?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let entries = entries_path(&self.state_dir, &self.job, &header.snapshot);
        fs::rename(&self.temp, &entries)?;
        let hp = header_path(&self.state_dir, &self.job);
        crate::state::write_atomic(&hp, &serde_json::to_vec(header)?, crate::state::PRIVATE)
            .with_context(|| format!("cannot write {}", hp.display()))?;
        // Snapshots made apart from the chain are older than this one now.
        let _ = fs::remove_file(apart_path(&self.state_dir, &self.job));
        // Older records of this job, and leftovers of crashed runs.
        let keep = entries.file_name().map(|n| n.to_os_string());
        if let Ok(list) = fs::read_dir(dir(&self.state_dir)) {
            for item in list.flatten() {
                let name = item.file_name();
                let text = name.to_string_lossy();
                let ours = text.starts_with(&format!("{}.", self.job)) && text.ends_with(".entries.zst")
                    || text.starts_with(&format!(".{}.", self.job)) && text.ends_with(".entries.tmp");
                if ours && Some(&name) != keep.as_ref() {
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
            let _ = fs::remove_file(&self.temp);
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
