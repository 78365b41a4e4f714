//! Building archives: walking a job's paths and writing PAX tar.
//!
//! [`Walker`] walks each path in name order (so archives and manifests are
//! deterministic), applies the excludes and the one-file-system rule, and
//! classifies every entry; special files (devices, FIFOs, sockets) are
//! skipped with a warning, unreadable paths reported. [`TarWriter`] writes
//! POSIX ustar headers (via the `tar` crate) plus a PAX extended header
//! wherever ustar is not enough: long paths and link targets, non-UTF-8
//! names, sub-second mtimes, large ids and sizes. The result unpacks with any
//! POSIX tar after decryption and decompression.
//!
//! File content is copied with one reusable buffer. A file that shrinks
//! while being read is padded with zeros to the size in its header, one that
//! grows is cut at it, and both are reported: the archive stays well-formed
//! and the operator learns which files were in flux.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use vaultline_config::Job;

use crate::repo::manifest::{EncodedPath, EntryKind};

const BLOCK: usize = 512;
/// Largest value in an 11-digit octal ustar size/mtime field.
const USTAR_MAX_11: u64 = 0o77777777777;
/// Largest value in a 7-digit octal ustar uid/gid field.
const USTAR_MAX_7: u64 = 0o7777777;
/// File data is read and written in pieces of this size.
const COPY_BUFFER: usize = 1 << 20;

/// One entry to archive.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Archive path, relative (`etc/hosts`), without trailing `/`.
    pub path: EncodedPath,
    /// Kind.
    pub kind: EntryKind,
    /// Content length (files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
    /// Symlink target or hard-link path.
    pub target: Option<EncodedPath>,
}

/// What happened while copying a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Exactly the size in the header.
    Exact,
    /// The file ended early; the rest is zeros.
    Shrunk {
        /// Bytes actually read.
        read: u64,
    },
    /// The file had more data than its header says; the rest was left out.
    Grew,
}

/// Writes a tar stream.
pub struct TarWriter<W: Write> {
    out: W,
    buffer: Vec<u8>,
    long_names: u64,
}

impl<W: Write> TarWriter<W> {
    /// A tar stream into `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            out,
            buffer: vec![0; COPY_BUFFER],
            long_names: 0,
        }
    }

    /// Appends an entry; for files, `data` supplies exactly `entry.size` bytes.
    pub fn append(&mut self, entry: &TarEntry, data: Option<&mut dyn Read>) -> io::Result<Copied> {
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut h = Header::new_ustar();
        h.set_entry_type(match entry.kind {
            EntryKind::File => EntryType::Regular,
            EntryKind::Dir => EntryType::Directory,
            EntryKind::Symlink => EntryType::Symlink,
            EntryKind::Hardlink => EntryType::Link,
        });
        h.set_mode(entry.mode & 0o7777);

        let mut path = entry.path.0.clone();
        if entry.kind == EntryKind::Dir {
            path.push(b'/');
        }
        let utf8 = std::str::from_utf8(&path).is_ok();
        if !utf8 || h.set_path(Path::new(OsStr::from_bytes(&path))).is_err() {
            pax.push(("path", path.clone()));
            self.long_names += 1;
            let placeholder = format!(
                "vaultline-long-name-{}{}",
                self.long_names,
                if entry.kind == EntryKind::Dir { "/" } else { "" }
            );
            h.set_path(&placeholder)?;
        }
        if let Some(target) = &entry.target {
            let t = OsStr::from_bytes(&target.0);
            if std::str::from_utf8(&target.0).is_err() || h.set_link_name(t).is_err() {
                pax.push(("linkpath", target.0.clone()));
                h.set_link_name("vaultline-long-link")?;
            }
        }
        let size = if entry.kind == EntryKind::File {
            entry.size
        } else {
            0
        };
        if size > USTAR_MAX_11 {
            pax.push(("size", size.to_string().into_bytes()));
        }
        h.set_size(size);
        for (key, id, set) in [
            ("uid", entry.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", entry.gid, Header::set_gid),
        ] {
            if u64::from(id) > USTAR_MAX_7 {
                pax.push((key, id.to_string().into_bytes()));
                set(&mut h, 0);
            } else {
                set(&mut h, u64::from(id));
            }
        }
        let secs = entry.mtime.clamp(0, USTAR_MAX_11 as i64) as u64;
        h.set_mtime(secs);
        if entry.mtime_nsec != 0 || secs as i64 != entry.mtime {
            pax.push(("mtime", pax_time(entry.mtime, entry.mtime_nsec).into_bytes()));
        }
        if pax.iter().any(|(_, v)| std::str::from_utf8(v).is_err()) {
            pax.insert(0, ("hdrcharset", b"BINARY".to_vec()));
        }
        h.set_cksum();

        if !pax.is_empty() {
            self.write_pax(&pax, secs)?;
        }
        self.out.write_all(h.as_bytes())?;
        let copied = match (entry.kind, data) {
            (EntryKind::File, Some(data)) => self.copy_exact(data, size)?,
            (EntryKind::File, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "file entry without data",
                ));
            }
            _ => Copied::Exact,
        };
        self.pad(size)?;
        Ok(copied)
    }

    fn write_pax(&mut self, records: &[(&str, Vec<u8>)], mtime: u64) -> io::Result<()> {
        let mut body = Vec::new();
        for (key, value) in records {
            pax_record(&mut body, key, value);
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_path("PaxHeader")?;
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_size(body.len() as u64);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn copy_exact(&mut self, data: &mut dyn Read, size: u64) -> io::Result<Copied> {
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buffer.len() as u64) as usize;
            let n = match data.read(&mut self.buffer[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&self.buffer[..n])?;
            left -= n as u64;
        }
        if left > 0 {
            let read = size - left;
            let zeros = [0u8; 8192];
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                self.out.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            return Ok(Copied::Shrunk { read });
        }
        let mut probe = [0u8; 1];
        Ok(match data.read(&mut probe) {
            Ok(0) | Err(_) => Copied::Exact,
            Ok(_) => Copied::Grew,
        })
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// The writer underneath.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A PAX record: `LEN KEY=VALUE\n`, where LEN counts the whole record,
/// its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `SECS[.FRACTION]` as PAX wants it, without trailing zeros.
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let frac = format!("{nsec:09}");
    format!("{secs}.{}", frac.trim_end_matches('0'))
}

/// One path found by the walk.
#[derive(Debug)]
pub struct Found {
    /// Where it is.
    pub abs: PathBuf,
    /// Its metadata (not following symlinks).
    pub meta: Metadata,
}

/// A path the walk had to leave out.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
    /// Whether this loses data the operator expected to be saved
    /// (unreadable), as opposed to a type vaultline never archives.
    pub is_error: bool,
}

/// Walks a job's paths in a stable order.
pub struct Walker<'a> {
    job: &'a Job,
    own: &'a [PathBuf],
}

impl<'a> Walker<'a> {
    /// A walker for `job` that never enters `own`: vaultline's own
    /// directories (repository, state), which must not back themselves up.
    pub fn new(job: &'a Job, own: &'a [PathBuf]) -> Self {
        Walker { job, own }
    }

    /// Calls `found` for each entry to archive (directories before their
    /// contents) and `skipped` for each one left out.
    pub fn walk(
        &self,
        mut found: impl FnMut(Found) -> anyhow::Result<()>,
        mut skipped: impl FnMut(Skipped),
    ) -> anyhow::Result<()> {
        // Roots in walk order too, so the whole walk is in the order
        // `changes::walk_order` defines (incremental runs join on it).
        let mut roots: Vec<&PathBuf> = self.job.paths.iter().collect();
        roots.sort_by(|a, b| {
            crate::pipeline::changes::walk_order(a.as_os_str().as_bytes(), b.as_os_str().as_bytes())
        });
        for root in roots {
            let walk = walkdir::WalkDir::new(root)
                .follow_links(false)
                .same_file_system(self.job.one_file_system)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| {
                    if e.depth() == 0 {
                        return true;
                    }
                    if self.own.iter().any(|o| o == e.path()) {
                        tracing::debug!("not archiving {}: it is vaultline's own", e.path().display());
                        return false;
                    }
                    !self.job.exclude.is_excluded(e.path())
                });
            for item in walk {
                let entry = match item {
                    Ok(e) => e,
                    Err(err) => {
                        let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
                        let reason = err.io_error().map_or_else(|| err.to_string(), |e| e.to_string());
                        skipped(Skipped {
                            path,
                            reason,
                            is_error: true,
                        });
                        continue;
                    }
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(err) => {
                        skipped(Skipped {
                            path: entry.path().to_path_buf(),
                            reason: err.to_string(),
                            is_error: true,
                        });
                        continue;
                    }
                };
                let ft = meta.file_type();
                if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
                    let what = if ft.is_fifo() {
                        "a FIFO"
                    } else if ft.is_socket() {
                        "a socket"
                    } else {
                        "a device"
                    };
                    skipped(Skipped {
                        path: entry.path().to_path_buf(),
                        reason: format!("{what}: special files are not archived"),
                        is_error: false,
                    });
                    continue;
                }
                found(Found {
                    abs: entry.into_path(),
                    meta,
                })?;
            }
        }
        Ok(())
    }
}

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

/// Builds the tar/manifest entry for a walked path (not yet deciding about
/// hard links).
pub fn entry_for(found: &Found) -> io::Result<TarEntry> {
    let meta = &found.meta;
    let ft = meta.file_type();
    let (kind, target) = if ft.is_dir() {
        (EntryKind::Dir, None)
    } else if ft.is_symlink() {
        let t = fs::read_link(&found.abs)?;
        (
            EntryKind::Symlink,
            Some(EncodedPath(t.into_os_string().into_vec())),
        )
    } else {
        (EntryKind::File, None)
    };
    Ok(TarEntry {
        path: archive_path(&found.abs),
        kind,
        size: if kind == EntryKind::File { meta.len() } else { 0 },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        target,
    })
}

/// Opens a file for archiving without following a symlink swapped in since
/// the walk saw a regular file there.
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

use std::os::unix::ffi::OsStringExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let long = vec![b'x'; 95];
        pax_record(&mut out, "path", &long);
        // " path=" + 95 + "\n" = 102, plus 3 digits = 105.
        assert!(out.starts_with(b"105 path="));
        assert_eq!(out.len(), 105);
    }

    #[test]
    fn pax_time_trims_the_fraction() {
        assert_eq!(pax_time(10, 0), "10");
        assert_eq!(pax_time(10, 500_000_000), "10.5");
        assert_eq!(pax_time(10, 123), "10.000000123");
    }

    fn file(path: &str, data: &[u8]) -> TarEntry {
        TarEntry {
            path: EncodedPath(path.as_bytes().to_vec()),
            kind: EntryKind::File,
            size: data.len() as u64,
            mode: 0o640,
            uid: 3_000_000,
            gid: 7,
            mtime: 1_700_000_000,
            mtime_nsec: 250_000_000,
            target: None,
        }
    }

    #[test]
    fn long_names_ids_and_times_survive_a_standard_reader() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let mut w = TarWriter::new(Vec::new());
        w.append(&file(&long, b"hello"), Some(&mut &b"hello"[..]))
            .unwrap();
        let mut link = file("l", b"");
        link.kind = EntryKind::Symlink;
        link.target = Some(EncodedPath(vec![b't'; 150]));
        w.append(&link, None).unwrap();
        let bytes = w.finish().unwrap();

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str().unwrap(), long);
        assert_eq!(e.header().uid().unwrap(), 3_000_000);
        let pax: Vec<(String, String)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value().unwrap().to_string())
            })
            .collect();
        assert!(pax.contains(&("mtime".into(), "1700000000.25".into())));
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        assert_eq!(data, "hello");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.link_name().unwrap().unwrap().to_str().unwrap(), "t".repeat(150));
        assert!(entries.next().is_none());
    }

    #[test]
    fn shrinking_and_growing_files_keep_the_archive_well_formed() {
        let mut w = TarWriter::new(Vec::new());
        assert_eq!(
            w.append(&file("a", b"12345"), Some(&mut &b"12"[..])).unwrap(),
            Copied::Shrunk { read: 2 }
        );
        assert_eq!(
            w.append(&file("b", b"12"), Some(&mut &b"12345"[..])).unwrap(),
            Copied::Grew
        );
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let sizes: Vec<u64> = ar.entries().unwrap().map(|e| e.unwrap().size()).collect();
        assert_eq!(sizes, [5, 2]);
    }
}
