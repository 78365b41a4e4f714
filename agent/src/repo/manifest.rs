//! Snapshot manifests: what a snapshot contains, entry by entry.
//!
//! A manifest is a sealed object whose plaintext is zstd-compressed JSON
//! lines (docs/FORMAT.md, "Manifests"):
//!
//! 1. a [`ManifestHeader`]: snapshot id, host, job, parent, chain position,
//!    paths;
//! 2. one [`Entry`] per path in the snapshot, in walk order (the whole
//!    tree, also in an incremental snapshot: a file that did not change
//!    refers to the archive of an earlier snapshot that holds its content);
//! 3. one `{"deleted": PATH}` line per path the parent had and this
//!    snapshot does not;
//! 4. the archive table: the archive objects file entries refer to by
//!    index, each with its key envelope, size and frame table;
//! 5. an end record ([`ManifestEnd`]) with the totals.
//!
//! Both directions stream: the writer emits entries as the archive is built,
//! the reader yields them one at a time, so memory does not grow with the
//! number of files. Paths are bytes (Linux names need not be UTF-8): they are
//! JSON strings when they are UTF-8 and `{"hex": "…"}` otherwise.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vaultline_crypto::{DataKey, EncryptionContext, KeyEnvelope, SealedWriter};

use crate::error::IntegrityError;
use crate::repo::store::PendingObject;

/// A path as stored in a manifest: raw bytes, relative, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EncodedPath(pub Vec<u8>);

impl EncodedPath {
    /// For messages: lossy UTF-8.
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl Serialize for EncodedPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EncodedPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(EncodedPath(t.into_bytes())),
            Repr::Hex { hex } => hex::decode(hex).map(EncodedPath).map_err(D::Error::custom),
        }
    }
}

/// An extended attribute's value: bytes, a JSON string when they are
/// UTF-8 and `{"hex": …}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XattrValue(pub Vec<u8>);

impl Serialize for XattrValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EncodedPath(self.0.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for XattrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(XattrValue(EncodedPath::deserialize(d)?.0))
    }
}

/// Extended attributes by name.
pub type Xattrs = std::collections::BTreeMap<String, XattrValue>;

/// A key envelope in JSON (the wrapped key in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeJson {
    /// Provider id.
    pub provider: String,
    /// Key id.
    pub key_id: String,
    /// Wrapped data key, hex.
    pub wrapped: String,
}

impl From<&KeyEnvelope> for EnvelopeJson {
    fn from(e: &KeyEnvelope) -> Self {
        EnvelopeJson {
            provider: e.provider.clone(),
            key_id: e.key_id.clone(),
            wrapped: hex::encode(&e.wrapped),
        }
    }
}

impl EnvelopeJson {
    /// Back to the crypto type.
    pub fn to_envelope(&self) -> Result<KeyEnvelope> {
        Ok(KeyEnvelope {
            provider: self.provider.clone(),
            key_id: self.key_id.clone(),
            wrapped: hex::decode(&self.wrapped).context("manifest: wrapped key is not hex")?,
        })
    }
}

/// Schema version of manifests this vaultline writes: 4 since the tree
/// listing lives in segments in node packs (shared between snapshots) and
/// large files may be stored as chunks. 3 added FIFOs and device nodes,
/// extended attributes and sparse files.
pub const MANIFEST_VERSION: u32 = 4;
/// The oldest schema version it reads: 2 and 3 hold their entries inline.
pub const MANIFEST_VERSION_MIN: u32 = 2;
/// Most chunks one file may list (2 TiB at the average chunk size).
pub const MAX_CHUNKS: u64 = 1 << 21;
/// Largest chunk (content-defined chunks are cut at 4 MiB at the latest).
pub const MAX_CHUNK: u32 = 4 << 20;
/// Most chunk references on one continuation line.
pub const CHUNKS_PER_LINE: usize = 4096;
/// Most segments a manifest may list (a tree of about 2 billion entries at
/// the average segment size).
pub const MAX_SEGMENTS: usize = 1 << 20;
/// Most node packs a manifest may refer to: one per run of a chain.
pub const MAX_NODE_PACKS: usize = MAX_ARCHIVES;
/// Longest manifest line read: an entry with a path and a link target of
/// `PATH_MAX` each and its extended attributes (64 KiB each at most, a
/// few per file in practice), or an archive table (frames of 4 MiB: a
/// 1 TiB archive lists 262,144 lengths). A hostile manifest cannot make a
/// reader hold more.
pub const MAX_LINE: usize = 8 << 20;
/// Most archives an archive table may list: a chain has at most 100
/// incremental runs after its full, so a table needs at most 101.
pub const MAX_ARCHIVES: usize = 128;

/// An archive object that entries refer to by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRef {
    /// Full object name.
    pub object: String,
    /// The snapshot that wrote it.
    pub snapshot: String,
    /// Its data key's current envelope (re-wrapping updates this copy, never
    /// the archive).
    pub envelope: EnvelopeJson,
    /// Size of the sealed object in bytes.
    pub size: u64,
    /// Bytes of tar in it (before compression).
    pub plain_size: u64,
    /// Tar bytes per zstd frame.
    pub frame_size: u64,
    /// Compressed length of each frame (see `frames`).
    pub frames: Vec<u32>,
}

impl ArchiveRef {
    /// The frame table.
    pub fn frames(&self) -> Frames {
        Frames {
            frame_size: self.frame_size,
            lengths: self.frames.clone(),
            plain_size: self.plain_size,
        }
    }
}

/// What an archive's frames look like: the index ranged reads use
/// (docs/FORMAT.md, "Frames and the index"). The archive writer makes it;
/// the archive table stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frames {
    /// Plain bytes per frame (all but the last are full).
    pub frame_size: u64,
    /// Compressed length of each frame, in order.
    pub lengths: Vec<u32>,
    /// Plain bytes in all.
    pub plain_size: u64,
}

impl Frames {
    /// Compressed offset of the start of each frame, plus the total at the end.
    pub fn starts(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.lengths.len() + 1);
        let mut at = 0u64;
        out.push(0);
        for &l in &self.lengths {
            at += u64::from(l);
            out.push(at);
        }
        out
    }
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestHeader {
    /// Schema version, [`MANIFEST_VERSION`].
    pub vaultline_manifest: u32,
    /// This snapshot.
    pub snapshot: String,
    /// Host that made it.
    pub host: String,
    /// Job it belongs to.
    pub job: String,
    /// The snapshot this one builds on (None: a full snapshot).
    pub parent: Option<String>,
    /// Incremental runs since the last full one (0: this is a full).
    pub chain: u32,
    /// When the chain's full snapshot started (RFC 3339).
    pub full_started: String,
    /// When the run started (RFC 3339).
    pub started: String,
    /// The job's paths at the time.
    pub paths: Vec<String>,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link ([`Entry::target`] is its target).
    Symlink,
    /// A hard link to an earlier entry that is not a directory
    /// ([`Entry::target`] is its path).
    Hardlink,
    /// A named pipe.
    Fifo,
    /// A character device node ([`Entry::dev_major`], [`Entry::dev_minor`]).
    #[serde(rename = "chardev")]
    CharDevice,
    /// A block device node.
    #[serde(rename = "blockdev")]
    BlockDevice,
}

/// One archived path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path relative to `/`, e.g. `etc/hosts`.
    pub path: EncodedPath,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Content length in bytes (files).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtime_nsec: u32,
    /// Symlink target, or the path a hard link points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<EncodedPath>,
    /// True on the first entry of an inode with several hard links: later
    /// `hardlink` entries may point to it. Lets a restore remember only
    /// these paths rather than every file's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub linked: bool,
    /// Device nodes: the major device number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: u32,
    /// Device nodes: the minor device number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: u32,
    /// Files: stored as GNU sparse 1.0 (data regions only); restored with
    /// holes where the source had them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
    /// Extended attributes by name, POSIX ACLs included
    /// (`system.posix_acl_access`, `system.posix_acl_default`, in the
    /// kernel's binary form).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub xattrs: Xattrs,
    /// Files: index in the archive table of the archive holding the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<u32>,
    /// Files: offset of the entry's first tar header byte in that archive's
    /// tar stream (the index used by ranged reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Files stored as chunks: how many (the chunk references follow the
    /// entry's line on continuation lines, see [`ChunkRef`]).
    #[serde(rename = "chunks", default, skip_serializing_if = "is_zero")]
    pub chunk_count: u64,
    /// Files stored as chunks: where each chunk is, in file order (read and
    /// written with the entry, not part of its JSON object).
    #[serde(skip)]
    pub chunks: Vec<ChunkRef>,
}

/// Where one chunk of a chunked file is: the archive (index into the
/// archive table), the offset of the chunk's first byte in that archive's
/// tar stream (inside the data of the member that stored it), and its
/// length. In JSON: `[archive, offset, length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkRef {
    /// Index in the archive table.
    pub archive: u32,
    /// Offset of the chunk's first byte in the archive's tar stream.
    pub offset: u64,
    /// Bytes of file content in the chunk.
    pub length: u32,
}

impl Serialize for ChunkRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.archive, self.offset, self.length).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ChunkRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (archive, offset, length) = <(u32, u64, u32)>::deserialize(d)?;
        Ok(ChunkRef {
            archive,
            offset,
            length,
        })
    }
}

/// A node pack: the sealed object holding the segments a run wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesRef {
    /// Full object name.
    pub object: String,
    /// The snapshot that wrote it.
    pub snapshot: String,
    /// Its data key's current envelope.
    pub envelope: EnvelopeJson,
    /// Size of the sealed object in bytes.
    pub size: u64,
    /// Bytes of plaintext (concatenated compressed segments).
    pub plain_size: u64,
}

/// A segment: a run of consecutive entries of the tree, stored as one zstd
/// frame in a node pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    /// Index in the node pack table.
    pub nodes: u32,
    /// Offset of its zstd frame in the node pack's plaintext.
    pub offset: u64,
    /// Length of that frame.
    pub length: u64,
    /// Entries it holds.
    pub entries: u64,
    /// The path of its first entry (segments are in walk order, so a reader
    /// looking for some paths can skip the others).
    pub first: EncodedPath,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The last line: totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEnd {
    /// When the archive was complete (RFC 3339).
    pub finished: String,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub specials: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Entries left out (special files, unreadable paths).
    pub skipped: u64,
    /// Files whose content this snapshot archived (new or changed).
    pub archived_files: u64,
    /// Their bytes.
    pub archived_bytes: u64,
    /// Entries carried over unchanged from the parent.
    pub reused: u64,
    /// Paths of the parent that are gone.
    pub deleted: u64,
    /// Bytes this snapshot stored that no earlier snapshot of the chain
    /// held (its archive's new content; chunks it reused are not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub new_bytes: u64,
    /// Segments of the tree listing this snapshot wrote (the others it
    /// shares with earlier snapshots).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub new_segments: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: ManifestEnd,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletedLine {
    deleted: EncodedPath,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchivesLine {
    archives: Vec<Option<ArchiveRef>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesLine {
    nodes: Vec<Option<NodesRef>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentLine {
    segment: SegmentRef,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunksLine {
    c: Vec<ChunkRef>,
}

/// One item of a manifest's body, as [`ManifestReader::next_item`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestItem {
    /// An entry (schema 2 and 3: entries are in the manifest itself).
    Entry(Entry),
    /// A path of the parent that this snapshot no longer has.
    Deleted(EncodedPath),
    /// A segment of the tree (schema 4).
    Segment(SegmentRef),
}

/// Writes `entry` as JSON lines: its own line, then its chunk references in
/// continuation lines of at most [`CHUNKS_PER_LINE`].
pub fn write_entry(out: &mut impl Write, entry: &Entry) -> Result<()> {
    debug_assert_eq!(entry.chunk_count, entry.chunks.len() as u64);
    serde_json::to_writer(&mut *out, entry)?;
    out.write_all(b"\n")?;
    for group in entry.chunks.chunks(CHUNKS_PER_LINE) {
        serde_json::to_writer(&mut *out, &ChunksLine { c: group.to_vec() })?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes a manifest into a pending object (or, for `rewrap`, any writer).
pub struct ManifestWriter<W: Write = Box<dyn PendingObject>> {
    out: BufWriter<zstd::stream::write::Encoder<'static, SealedWriter<W>>>,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts the manifest: seals into `object` and writes the header line.
    pub fn new(
        object: W,
        key: &DataKey,
        envelope: KeyEnvelope,
        context: EncryptionContext,
        header: &ManifestHeader,
    ) -> Result<Self> {
        let sealed = SealedWriter::new(object, key, envelope, context)?;
        let encoder = zstd::stream::write::Encoder::new(sealed, 3)?;
        let mut w = ManifestWriter {
            out: BufWriter::with_capacity(1 << 16, encoder),
        };
        w.line(header)?;
        Ok(w)
    }

    fn line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Appends an entry in the manifest itself (schema 2 and 3 only: `rewrap`
    /// copies such manifests as they are).
    pub fn entry(&mut self, entry: &Entry) -> Result<()> {
        write_entry(&mut self.out, entry)
    }

    /// Records a path of the parent that this snapshot no longer has.
    pub fn deleted(&mut self, path: &EncodedPath) -> Result<()> {
        self.line(&DeletedLine {
            deleted: path.clone(),
        })
    }

    /// Appends the reference to the next segment of the tree.
    pub fn segment(&mut self, segment: &SegmentRef) -> Result<()> {
        self.line(&SegmentLine {
            segment: segment.clone(),
        })
    }

    /// Writes the node pack table (schema 4), the archive table and the end
    /// record and closes the stream; the caller commits the returned object
    /// after the archives and node packs.
    pub fn finish(
        mut self,
        nodes: Option<Vec<Option<NodesRef>>>,
        archives: Vec<Option<ArchiveRef>>,
        end: ManifestEnd,
    ) -> Result<W> {
        if let Some(nodes) = nodes {
            self.line(&NodesLine { nodes })?;
        }
        self.line(&ArchivesLine { archives })?;
        self.line(&EndLine { end })?;
        let encoder = self.out.into_inner().map_err(|e| e.into_error())?;
        let sealed = encoder.finish()?;
        Ok(sealed.finish()?)
    }
}

/// Lines of at most [`MAX_LINE`] bytes (without their `\n`); a longer one
/// is an integrity error, found without holding more than that.
pub struct Lines<B> {
    input: B,
    name: String,
    number: u64,
}

impl<B: BufRead> Lines<B> {
    /// Lines of `input`, for messages about object `name`.
    pub fn new(input: B, name: &str) -> Self {
        Lines {
            input,
            name: name.to_string(),
            number: 0,
        }
    }

    /// The number of the line last returned.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The next line.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>>> {
        let mut line = Vec::new();
        self.number += 1;
        match (&mut self.input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                } else if line.len() > MAX_LINE {
                    return Some(Err(IntegrityError(format!(
                        "manifest {}: line {} is longer than {} MiB: not a manifest vaultline wrote",
                        self.name,
                        self.number,
                        MAX_LINE >> 20
                    ))
                    .into()));
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(
                anyhow::Error::new(e).context(format!("manifest {}", self.name))
            )),
        }
    }
}

/// Parses an entry line and reads its chunk continuation lines from
/// `lines`. `archives`: the archive table when it is known (schema 4),
/// to check every location against; otherwise the caller checks the
/// returned indices.
fn parse_entry<B: BufRead>(
    line: &[u8],
    lines: &mut Lines<B>,
    archives: Option<&[Option<ArchiveRef>]>,
) -> Result<Entry> {
    let name = lines.name.clone();
    let at = lines.number();
    let bad = |what: String| -> anyhow::Error {
        IntegrityError(format!("manifest {name}: line {at}: {what}")).into()
    };
    let mut entry: Entry = serde_json::from_slice(line).map_err(|e| bad(format!("invalid entry: {e}")))?;
    if entry.chunk_count > 0 {
        if entry.kind != EntryKind::File || entry.archive.is_some() || entry.offset.is_some() {
            return Err(bad(format!(
                "{} has chunks and is not a file without a location",
                entry.path.display()
            )));
        }
        if entry.chunk_count > MAX_CHUNKS {
            return Err(bad(format!(
                "{} lists {} chunks, more than a file may ({MAX_CHUNKS})",
                entry.path.display(),
                entry.chunk_count
            )));
        }
        let mut total = 0u64;
        while (entry.chunks.len() as u64) < entry.chunk_count {
            let Some(next) = lines.next_line() else {
                return Err(bad(format!(
                    "{} ends before its chunk list",
                    entry.path.display()
                )));
            };
            let next = next?;
            let group: ChunksLine = serde_json::from_slice(&next)
                .map_err(|e| bad(format!("invalid chunk list of {}: {e}", entry.path.display())))?;
            if group.c.is_empty() || entry.chunks.len() + group.c.len() > entry.chunk_count as usize {
                return Err(bad(format!(
                    "{} has a chunk list of the wrong length",
                    entry.path.display()
                )));
            }
            for c in &group.c {
                if !(1..=MAX_CHUNK).contains(&c.length) {
                    return Err(bad(format!(
                        "{} lists a chunk of {} bytes (chunks hold 1 to {MAX_CHUNK})",
                        entry.path.display(),
                        c.length
                    )));
                }
                total += u64::from(c.length);
            }
            entry.chunks.extend(group.c);
        }
        if total != entry.size {
            return Err(bad(format!(
                "{}: its chunks hold {total} bytes, its size is {}",
                entry.path.display(),
                entry.size
            )));
        }
    }
    match (entry.kind, entry.archive, entry.offset, entry.chunk_count) {
        (EntryKind::File, Some(_), Some(_), 0) => {}
        (EntryKind::File, None, None, n) if n > 0 || entry.size == 0 => {}
        (EntryKind::File, ..) => {
            return Err(bad(format!(
                "file {} has content but no archive location",
                entry.path.display()
            )));
        }
        (_, None, None, 0) => {}
        _ => {
            return Err(bad(format!(
                "{} is not a file but has an archive location",
                entry.path.display()
            )));
        }
    }
    if let Some(table) = archives {
        for index in entry
            .archive
            .into_iter()
            .chain(entry.chunks.iter().map(|c| c.archive))
        {
            if table.get(index as usize).and_then(Option::as_ref).is_none() {
                return Err(bad(format!(
                    "{} refers to archive {index}, which the archive table does not have",
                    entry.path.display()
                )));
            }
        }
        for c in &entry.chunks {
            let plain = table[c.archive as usize].as_ref().map_or(0, |a| a.plain_size);
            if c.offset
                .checked_add(u64::from(c.length))
                .is_none_or(|end| end > plain)
            {
                return Err(bad(format!(
                    "{}: a chunk at {}+{} lies outside archive {} ({plain} bytes of tar)",
                    entry.path.display(),
                    c.offset,
                    c.length,
                    c.archive
                )));
            }
        }
    }
    Ok(entry)
}

/// Reads a manifest: its header, then its items, then its tables and end.
pub struct ManifestReader<R: Read> {
    lines: Lines<BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>>,
    name: String,
    header: ManifestHeader,
    nodes: Option<Vec<Option<NodesRef>>>,
    archives: Option<Vec<Option<ArchiveRef>>>,
    /// Archive indices inline entries used (checked against the table).
    used: Vec<(u32, u64)>,
    segments: usize,
    deleted: u64,
    end: Option<ManifestEnd>,
}

impl<R: Read> ManifestReader<R> {
    /// Reads the header line from the opened (authenticated) plaintext.
    pub fn new(plaintext: R, name: &str) -> Result<Self> {
        let mut decoder = zstd::stream::read::Decoder::new(plaintext)?;
        // Manifests are written at level 3 (a 2 MiB window); 16 MiB bounds
        // what a hostile one can make a reader allocate.
        decoder.window_log_max(24)?;
        let mut lines = Lines::new(BufReader::with_capacity(1 << 16, decoder), name);
        let first = lines
            .next_line()
            .ok_or_else(|| IntegrityError(format!("manifest {name} is empty")))??;
        let header: ManifestHeader = serde_json::from_slice(&first)
            .map_err(|e| IntegrityError(format!("manifest {name}: invalid header line: {e}")))?;
        if !(MANIFEST_VERSION_MIN..=MANIFEST_VERSION).contains(&header.vaultline_manifest) {
            bail!(
                "manifest {name} has schema version {}, this vaultline reads {MANIFEST_VERSION_MIN} to \
                 {MANIFEST_VERSION}",
                header.vaultline_manifest
            );
        }
        Ok(ManifestReader {
            lines,
            name: name.to_string(),
            header,
            nodes: None,
            archives: None,
            used: Vec::new(),
            segments: 0,
            deleted: 0,
            end: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// True for schema 4: the tree is in segments.
    pub fn segmented(&self) -> bool {
        self.header.vaultline_manifest >= 4
    }

    /// The next entry held in the manifest itself (schema 2 and 3); `None`
    /// after the end record, which must be last.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            match self.next_item()? {
                Some(ManifestItem::Entry(e)) => return Ok(Some(e)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    fn bad(&self, what: String) -> anyhow::Error {
        IntegrityError(format!(
            "manifest {}: line {}: {what}",
            self.name,
            self.lines.number()
        ))
        .into()
    }

    /// The next item: an entry (schema 2 and 3), a deleted path, or a
    /// segment (schema 4), in manifest order; the tables and the end record
    /// are taken in on the way. `None` after the end record.
    pub fn next_item(&mut self) -> Result<Option<ManifestItem>> {
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            let Some(line) = self.lines.next_line() else {
                return Err(
                    IntegrityError(format!("manifest {} ends without its end record", self.name)).into(),
                );
            };
            let line = line?;
            if line.starts_with(b"{\"deleted\"") {
                let d: DeletedLine = serde_json::from_slice(&line)
                    .map_err(|e| self.bad(format!("invalid deleted path: {e}")))?;
                self.deleted += 1;
                return Ok(Some(ManifestItem::Deleted(d.deleted)));
            }
            if line.starts_with(b"{\"segment\"") {
                if !self.segmented() || self.nodes.is_some() || self.archives.is_some() {
                    return Err(self.bad("a segment where none belongs".into()));
                }
                let s: SegmentLine =
                    serde_json::from_slice(&line).map_err(|e| self.bad(format!("invalid segment: {e}")))?;
                self.segments += 1;
                if self.segments > MAX_SEGMENTS {
                    return Err(self.bad(format!("more than {MAX_SEGMENTS} segments")));
                }
                return Ok(Some(ManifestItem::Segment(s.segment)));
            }
            if line.starts_with(b"{\"nodes\"") {
                if !self.segmented() || self.nodes.is_some() || self.archives.is_some() {
                    return Err(self.bad("a node pack table where none belongs".into()));
                }
                let n: NodesLine = serde_json::from_slice(&line)
                    .map_err(|e| self.bad(format!("invalid node pack table: {e}")))?;
                if n.nodes.len() > MAX_NODE_PACKS {
                    return Err(self.bad(format!(
                        "its node pack table lists {} packs, more than a chain can have ({MAX_NODE_PACKS})",
                        n.nodes.len()
                    )));
                }
                self.nodes = Some(n.nodes);
                continue;
            }
            if line.starts_with(b"{\"archives\"") {
                let a: ArchivesLine = serde_json::from_slice(&line)
                    .map_err(|e| self.bad(format!("invalid archive table: {e}")))?;
                self.check_used(&a.archives)?;
                self.archives = Some(a.archives);
                continue;
            }
            if line.starts_with(b"{\"end\"") {
                let end: EndLine = serde_json::from_slice(&line)
                    .map_err(|e| self.bad(format!("invalid end record: {e}")))?;
                if self.lines.next_line().is_some() {
                    return Err(
                        IntegrityError(format!("manifest {}: data after the end record", self.name)).into(),
                    );
                }
                if self.archives.is_none() || (self.segmented() && self.nodes.is_none()) {
                    return Err(IntegrityError(format!(
                        "manifest {}: no {} table before the end",
                        self.name,
                        if self.archives.is_none() {
                            "archive"
                        } else {
                            "node pack"
                        }
                    ))
                    .into());
                }
                self.end = Some(end.end);
                return Ok(None);
            }
            if self.segmented() || self.archives.is_some() {
                return Err(self.bad(if self.segmented() {
                    "an entry in a manifest whose tree is in segments".into()
                } else {
                    "entry after the archive table".into()
                }));
            }
            let line_no = self.lines.number();
            let entry = parse_entry(&line, &mut self.lines, None)?;
            for a in entry
                .archive
                .into_iter()
                .chain(entry.chunks.iter().map(|c| c.archive))
            {
                if !self.used.iter().any(|(u, _)| *u == a) {
                    self.used.push((a, line_no));
                }
            }
            return Ok(Some(ManifestItem::Entry(entry)));
        }
    }

    fn check_used(&self, table: &[Option<ArchiveRef>]) -> Result<()> {
        if table.len() > MAX_ARCHIVES {
            return Err(IntegrityError(format!(
                "manifest {}: its archive table lists {} archives, more than a chain can have ({MAX_ARCHIVES})",
                self.name,
                table.len()
            ))
            .into());
        }
        for a in table.iter().flatten() {
            let expected = if a.frame_size == 0 {
                0
            } else {
                a.plain_size.div_ceil(a.frame_size)
            };
            if !(1..=64 << 20).contains(&a.frame_size)
                || a.frames.len() as u64 != expected
                || a.frames.contains(&0)
                || a.frames.iter().map(|&l| u64::from(l)).sum::<u64>() > a.size
            {
                return Err(IntegrityError(format!(
                    "manifest {}: archive {} has an impossible frame table ({} frames of {} bytes for {} bytes of \
                     tar in {} bytes)",
                    self.name,
                    a.object,
                    a.frames.len(),
                    a.frame_size,
                    a.plain_size,
                    a.size
                ))
                .into());
            }
        }
        for &(index, line) in &self.used {
            if table.get(index as usize).and_then(Option::as_ref).is_none() {
                return Err(IntegrityError(format!(
                    "manifest {}: line {line}: entry refers to archive {index}, which the archive table \
                     does not have",
                    self.name
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The archive table, once the reader is past it.
    pub fn archives(&self) -> Option<&[Option<ArchiveRef>]> {
        self.archives.as_deref()
    }

    /// The node pack table (schema 4), once the reader is past it.
    pub fn nodes(&self) -> Option<&[Option<NodesRef>]> {
        self.nodes.as_deref()
    }

    /// How many deleted paths were recorded (read so far).
    pub fn deleted(&self) -> u64 {
        self.deleted
    }

    /// Reads to the end; returns the end record.
    pub fn read_to_end(&mut self) -> Result<ManifestEnd> {
        while self.next_item()?.is_some() {}
        self.end()
            .cloned()
            .ok_or_else(|| anyhow!("manifest {}: no end record", self.name))
    }

    /// The end record, once reached.
    pub fn end(&self) -> Option<&ManifestEnd> {
        self.end.as_ref()
    }
}

/// Reads the entries of one segment from its decompressed plaintext,
/// checking each against the snapshot's archive table.
pub struct SegmentReader<'t, R: Read> {
    lines: Lines<BufReader<R>>,
    archives: &'t [Option<ArchiveRef>],
    left: u64,
    last: Option<EncodedPath>,
    first: EncodedPath,
}

impl<'t, R: Read> SegmentReader<'t, R> {
    /// The entries of `segment` in `plaintext` (its zstd frame, decoded),
    /// named `name` in messages.
    pub fn new(plaintext: R, segment: &SegmentRef, archives: &'t [Option<ArchiveRef>], name: &str) -> Self {
        SegmentReader {
            lines: Lines::new(BufReader::with_capacity(1 << 16, plaintext), name),
            archives,
            left: segment.entries,
            last: None,
            first: segment.first.clone(),
        }
    }

    /// The next entry; `None` after the last, when the segment holds
    /// exactly as many as its reference says and nothing more.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        let Some(line) = self.lines.next_line() else {
            if self.left > 0 {
                return Err(IntegrityError(format!(
                    "{}: the segment ends {} entries early",
                    self.lines.name, self.left
                ))
                .into());
            }
            return Ok(None);
        };
        let line = line?;
        if self.left == 0 {
            return Err(IntegrityError(format!(
                "{}: more entries than its reference says",
                self.lines.name
            ))
            .into());
        }
        let entry = parse_entry(&line, &mut self.lines, Some(self.archives))?;
        if self.last.is_none() && entry.path != self.first {
            return Err(IntegrityError(format!(
                "{}: the segment starts at {}, its reference says {}",
                self.lines.name,
                entry.path.display(),
                self.first.display()
            ))
            .into());
        }
        self.last = Some(entry.path.clone());
        self.left -= 1;
        Ok(Some(entry))
    }
}

/// Writes the segments of one run into a node pack: each segment one zstd
/// frame of JSON lines, in a sealed object; returns where each went.
pub struct NodesWriter<W: Write> {
    out: SealedWriter<W>,
    position: u64,
    level: i32,
}

impl<W: Write> NodesWriter<W> {
    /// A node pack sealed into `object`.
    pub fn new(object: W, key: &DataKey, envelope: KeyEnvelope, context: EncryptionContext) -> Result<Self> {
        Ok(NodesWriter {
            out: SealedWriter::new(object, key, envelope, context)?,
            position: 0,
            level: 3,
        })
    }

    /// Appends one segment's lines (as [`write_entry`] wrote them); returns
    /// the offset and length of its frame.
    pub fn segment(&mut self, lines: &[u8]) -> Result<(u64, u64)> {
        let frame = zstd::bulk::compress(lines, self.level)?;
        self.out.write_all(&frame)?;
        let at = self.position;
        self.position += frame.len() as u64;
        Ok((at, frame.len() as u64))
    }

    /// Closes the pack; returns the object and the plaintext size.
    pub fn finish(self) -> Result<(W, u64)> {
        Ok((self.out.finish()?, self.position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_round_trip_as_hex() {
        let p = EncodedPath(b"etc/caf\xe9".to_vec());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"hex":"6574632f636166e9"}"#);
        assert_eq!(serde_json::from_str::<EncodedPath>(&json).unwrap(), p);
        let utf8 = EncodedPath("etc/café".as_bytes().to_vec());
        assert_eq!(serde_json::to_string(&utf8).unwrap(), "\"etc/café\"");
    }

    #[test]
    fn entry_lines_are_compact() {
        let e = Entry {
            path: EncodedPath(b"etc/hosts".to_vec()),
            kind: EntryKind::File,
            size: 12,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_672_531_200,
            mtime_nsec: 0,
            target: None,
            linked: false,
            archive: Some(0),
            offset: Some(1536),
            ..Entry::default()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"path":"etc/hosts","type":"file","size":12,"mode":420,"uid":0,"gid":0,"mtime":1672531200,"archive":0,"offset":1536}"#
        );
    }
}
