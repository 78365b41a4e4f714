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

/// Schema version of manifests this vaultline writes: 3 since entries
/// carry FIFOs and device nodes, extended attributes and sparse files.
pub const MANIFEST_VERSION: u32 = 3;
/// The oldest schema version it reads (2 lacks only what 3 added).
pub const MANIFEST_VERSION_MIN: u32 = 2;
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
    /// Bytes of file content archived.
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

/// One item of a manifest's body, as [`ManifestReader::next_item`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestItem {
    /// An entry.
    Entry(Entry),
    /// A path of the parent that this snapshot no longer has.
    Deleted(EncodedPath),
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

    /// Appends an entry.
    pub fn entry(&mut self, entry: &Entry) -> Result<()> {
        self.line(entry)
    }

    /// Records a path of the parent that this snapshot no longer has.
    pub fn deleted(&mut self, path: &EncodedPath) -> Result<()> {
        self.line(&DeletedLine {
            deleted: path.clone(),
        })
    }

    /// Writes the archive table and the end record and closes the stream;
    /// the caller commits the returned object after the archives.
    pub fn finish(mut self, archives: Vec<Option<ArchiveRef>>, end: ManifestEnd) -> Result<W> {
        self.line(&ArchivesLine { archives })?;
        self.line(&EndLine { end })?;
        let encoder = self.out.into_inner().map_err(|e| e.into_error())?;
        let sealed = encoder.finish()?;
        Ok(sealed.finish()?)
    }
}

/// Reads a manifest, entry by entry.
pub struct ManifestReader<R: Read> {
    lines: Lines<BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>>,
    name: String,
    header: ManifestHeader,
    archives: Option<Vec<Option<ArchiveRef>>>,
    /// Archive indices file entries used (checked against the table).
    used: Vec<(u32, u64)>,
    deleted: u64,
    end: Option<ManifestEnd>,
    line: u64,
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
            .next()
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
            archives: None,
            used: Vec::new(),
            deleted: 0,
            end: None,
            line: 1,
        })
    }

    /// The header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// The next entry; `None` after the end record, which must be last.
    /// The archive table and deleted paths are taken in on the way; file
    /// entries are checked against the table when it arrives.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            match self.next_item()? {
                Some(ManifestItem::Entry(e)) => return Ok(Some(e)),
                Some(ManifestItem::Deleted(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// Like [`next_entry`](Self::next_entry), but also yields the deleted
    /// paths, in manifest order (for `rewrap`, which copies a manifest).
    pub fn next_item(&mut self) -> Result<Option<ManifestItem>> {
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            let Some(line) = self.lines.next() else {
                return Err(
                    IntegrityError(format!("manifest {} ends without its end record", self.name)).into(),
                );
            };
            let line = line?;
            self.line += 1;
            let bad = |what: &str, e: serde_json::Error, line: u64| -> anyhow::Error {
                IntegrityError(format!(
                    "manifest {}: line {line}: invalid {what}: {e}",
                    self.name
                ))
                .into()
            };
            if line.starts_with(b"{\"deleted\"") {
                let d: DeletedLine =
                    serde_json::from_slice(&line).map_err(|e| bad("deleted path", e, self.line))?;
                self.deleted += 1;
                return Ok(Some(ManifestItem::Deleted(d.deleted)));
            }
            if line.starts_with(b"{\"archives\"") {
                let a: ArchivesLine =
                    serde_json::from_slice(&line).map_err(|e| bad("archive table", e, self.line))?;
                self.check_used(&a.archives)?;
                self.archives = Some(a.archives);
                continue;
            }
            if line.starts_with(b"{\"end\"") {
                let end: EndLine =
                    serde_json::from_slice(&line).map_err(|e| bad("end record", e, self.line))?;
                if self.lines.next().is_some() {
                    return Err(
                        IntegrityError(format!("manifest {}: data after the end record", self.name)).into(),
                    );
                }
                if self.archives.is_none() {
                    return Err(IntegrityError(format!(
                        "manifest {}: no archive table before the end",
                        self.name
                    ))
                    .into());
                }
                self.end = Some(end.end);
                return Ok(None);
            }
            if self.archives.is_some() {
                return Err(IntegrityError(format!(
                    "manifest {}: line {}: entry after the archive table",
                    self.name, self.line
                ))
                .into());
            }
            let entry: Entry = serde_json::from_slice(&line).map_err(|e| bad("entry", e, self.line))?;
            match (entry.kind, entry.archive, entry.offset) {
                (EntryKind::File, Some(a), Some(_)) => {
                    if !self.used.iter().any(|(u, _)| *u == a) {
                        self.used.push((a, self.line));
                    }
                }
                (EntryKind::File, ..) if entry.size == 0 => {}
                (EntryKind::File, ..) => {
                    return Err(IntegrityError(format!(
                        "manifest {}: line {}: file {} has content but no archive location",
                        self.name,
                        self.line,
                        entry.path.display()
                    ))
                    .into());
                }
                (_, None, None) => {}
                _ => {
                    return Err(IntegrityError(format!(
                        "manifest {}: line {}: {} is not a file but has an archive location",
                        self.name,
                        self.line,
                        entry.path.display()
                    ))
                    .into());
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
                || a.frames.len() as u64 > a.size
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

    /// How many deleted paths were recorded (read so far).
    pub fn deleted(&self) -> u64 {
        self.deleted
    }

    /// Reads to the end; returns the end record.
    pub fn read_to_end(&mut self) -> Result<ManifestEnd> {
        while self.next_entry()?.is_some() {}
        self.end()
            .cloned()
            .ok_or_else(|| anyhow!("manifest {}: no end record", self.name))
    }

    /// The end record, once reached.
    pub fn end(&self) -> Option<&ManifestEnd> {
        self.end.as_ref()
    }
}

/// Lines of at most [`MAX_LINE`] bytes (without their `\n`); a longer one
/// is an integrity error, found without holding more than that.
struct Lines<B> {
    input: B,
    name: String,
    number: u64,
}

impl<B: BufRead> Lines<B> {
    fn new(input: B, name: &str) -> Self {
        Lines {
            input,
            name: name.to_string(),
            number: 0,
        }
    }

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
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
