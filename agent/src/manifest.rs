//! Snapshot manifests: what a snapshot contains, entry by entry.
//!
//! A manifest is a sealed object whose plaintext is zstd-compressed JSON
//! lines (docs/FORMAT.md, "Manifests"):
//!
//! 1. a [`ManifestHeader`]: snapshot id, host, job, parent, paths, and the
//!    archive objects entries refer to, each with its key envelope;
//! 2. one [`Entry`] per archived path, in archive order;
//! 3. an end record ([`ManifestEnd`]) with the totals.
//!
//! Both directions stream: the writer emits entries as the archive is built,
//! the reader yields them one at a time, so memory does not grow with the
//! number of files. Paths are bytes (Linux names need not be UTF-8): they are
//! JSON strings when they are UTF-8 and `{"hex": "…"}` otherwise.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vaultline_crypto::{DataKey, EncryptionContext, KeyEnvelope, SealedWriter};

use crate::exit::IntegrityError;
use crate::store::PendingObject;

/// A path as stored in a manifest: raw bytes, relative, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestHeader {
    /// Schema version, [`crate::repo::REPOSITORY_VERSION`].
    pub vaultline_manifest: u32,
    /// This snapshot.
    pub snapshot: String,
    /// Host that made it.
    pub host: String,
    /// Job it belongs to.
    pub job: String,
    /// The snapshot this one builds on, if any.
    pub parent: Option<String>,
    /// When the run started (RFC 3339).
    pub started: String,
    /// The job's paths at the time.
    pub paths: Vec<String>,
    /// Archive objects, referred to by [`Entry::archive`].
    pub archives: Vec<ArchiveRef>,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link ([`Entry::target`] is its target).
    Symlink,
    /// A hard link to an earlier file entry ([`Entry::target`] is its path).
    Hardlink,
}

/// One archived path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// True on the first entry of a file with several hard links: later
    /// `hardlink` entries may point to it. Lets a restore remember only
    /// these paths rather than every file's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub linked: bool,
    /// Index in [`ManifestHeader::archives`] of the archive holding it.
    pub archive: u32,
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
    /// Bytes of file content archived.
    pub bytes: u64,
    /// Entries left out (special files, unreadable paths).
    pub skipped: u64,
    /// Size in bytes of each archive this snapshot wrote, by index.
    pub archive_sizes: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: ManifestEnd,
}

/// Writes a manifest into a pending object.
pub struct ManifestWriter {
    out: BufWriter<zstd::stream::write::Encoder<'static, SealedWriter<Box<dyn PendingObject>>>>,
}

impl ManifestWriter {
    /// Starts the manifest: seals into `object` and writes the header line.
    pub fn new(
        object: Box<dyn PendingObject>,
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

    /// Writes the end record and closes the stream; the caller commits the
    /// returned object after the archives.
    pub fn finish(mut self, end: ManifestEnd) -> Result<Box<dyn PendingObject>> {
        self.line(&EndLine { end })?;
        let encoder = self.out.into_inner().map_err(|e| e.into_error())?;
        let sealed = encoder.finish()?;
        Ok(sealed.finish()?)
    }
}

/// Reads a manifest, entry by entry.
pub struct ManifestReader<R: Read> {
    lines: io::Split<BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>>,
    name: String,
    header: ManifestHeader,
    end: Option<ManifestEnd>,
    line: u64,
}

impl<R: Read> ManifestReader<R> {
    /// Reads the header line from the opened (authenticated) plaintext.
    pub fn new(plaintext: R, name: &str) -> Result<Self> {
        let decoder = zstd::stream::read::Decoder::new(plaintext)?;
        let mut lines = BufReader::with_capacity(1 << 16, decoder).split(b'\n');
        let first = lines
            .next()
            .ok_or_else(|| IntegrityError(format!("manifest {name} is empty")))?
            .with_context(|| format!("manifest {name}"))?;
        let header: ManifestHeader = serde_json::from_slice(&first)
            .map_err(|e| IntegrityError(format!("manifest {name}: invalid header line: {e}")))?;
        if header.vaultline_manifest != crate::repo::REPOSITORY_VERSION {
            bail!(
                "manifest {name} has schema version {}, this vaultline reads 1",
                header.vaultline_manifest
            );
        }
        Ok(ManifestReader {
            lines,
            name: name.to_string(),
            header,
            end: None,
            line: 1,
        })
    }

    /// The header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// The next entry; `None` after the end record, which must be last.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let Some(line) = self.lines.next() else {
            return Err(IntegrityError(format!("manifest {} ends without its end record", self.name)).into());
        };
        let line = line.with_context(|| format!("manifest {}", self.name))?;
        self.line += 1;
        if line.starts_with(b"{\"end\"") {
            let end: EndLine = serde_json::from_slice(&line)
                .map_err(|e| IntegrityError(format!("manifest {}: invalid end record: {e}", self.name)))?;
            if self.lines.next().is_some() {
                return Err(
                    IntegrityError(format!("manifest {}: data after the end record", self.name)).into(),
                );
            }
            self.end = Some(end.end);
            return Ok(None);
        }
        let entry: Entry = serde_json::from_slice(&line).map_err(|e| {
            IntegrityError(format!(
                "manifest {}: line {}: invalid entry: {e}",
                self.name, self.line
            ))
        })?;
        if entry.archive as usize >= self.header.archives.len() {
            return Err(IntegrityError(format!(
                "manifest {}: line {}: entry refers to archive {} of {}",
                self.name,
                self.line,
                entry.archive,
                self.header.archives.len()
            ))
            .into());
        }
        Ok(Some(entry))
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
            archive: 0,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"path":"etc/hosts","type":"file","size":12,"mode":420,"uid":0,"gid":0,"mtime":1672531200,"archive":0}"#
        );
    }
}
