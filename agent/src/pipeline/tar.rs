//! Writing archives as PAX tar, readable by GNU tar and bsdtar after
//! decryption and decompression (docs/FORMAT.md, "Archives").
//!
//! [`TarWriter`] writes POSIX ustar headers (via the `tar` crate) plus a PAX
//! extended header wherever ustar is not enough, with the standard
//! records other tools read:
//!
//! - `path`, `linkpath` (long or non-UTF-8 names, with `hdrcharset=BINARY`),
//!   `size`, `uid`, `gid`, `mtime` (sub-second, and before 1970);
//! - `SCHILY.xattr.NAME` for every extended attribute but the ACLs, and
//!   `SCHILY.acl.access` / `SCHILY.acl.default` for those, as text;
//! - GNU sparse format 1.0 for files with holes: `GNU.sparse.major=1`,
//!   `GNU.sparse.minor=0`, `GNU.sparse.name`, `GNU.sparse.realsize`, the
//!   member named `GNUSparseFile.0/NAME`, its data a decimal map of the
//!   data regions (padded to 512 bytes) followed by the regions themselves.
//!
//! FIFOs and device nodes are their ustar types (with device numbers).
//!
//! File content is copied with one reusable buffer. A file that cannot be
//! read to the size in its header (a read error, or it shrank) keeps the
//! archive well-formed: the member is padded with zeros, followed by an
//! empty marker member `NAME.vaultline-incomplete` whose PAX `comment`
//! says so, and [`Copied::Incomplete`] tells the caller, who leaves the
//! entry out of the manifest, so vaultline never restores those bytes as
//! the file. A file that grew is cut at its size ([`Copied::Grew`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tar::{EntryType, Header};

use crate::pipeline::fsmeta::{ACL_ACCESS, ACL_DEFAULT, acl_text};
use crate::repo::manifest::{Entry, EntryKind};

const BLOCK: usize = 512;
/// Largest value in an 11-digit octal ustar size/mtime field.
const USTAR_MAX_11: u64 = 0o77777777777;
/// Largest value in a 7-digit octal ustar uid/gid/device field.
const USTAR_MAX_7: u64 = 0o7777777;
/// File data is read and written in pieces of this size.
const COPY_BUFFER: usize = 1 << 20;
/// Suffix of the marker member that follows a member whose file could not
/// be read completely.
pub const INCOMPLETE_SUFFIX: &str = ".vaultline-incomplete";

/// Where a file's content comes from.
pub enum Content<'a> {
    /// No content: not a file, or an empty one.
    None,
    /// Exactly `entry.size` bytes from a reader.
    Stream(&'a mut dyn Read),
    /// A file with holes: only its data regions (offset, length) are read
    /// and stored; `entry.size` is its real size.
    Sparse {
        /// The open file.
        file: &'a File,
        /// Its data regions, in order.
        regions: &'a [(u64, u64)],
    },
}

/// What happened while copying a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Exactly the size in the header.
    Exact,
    /// The file had more data than its header says; the rest was left out.
    Grew,
    /// The file could not be read to its size: the member is padded and
    /// marked, and must not be listed as the file.
    Incomplete {
        /// Bytes read before it stopped.
        read: u64,
        /// Why.
        why: String,
    },
}

/// Writes a tar stream.
pub struct TarWriter<W: Write> {
    out: Counting<W>,
    buffer: Vec<u8>,
    long_names: u64,
    data_start: u64,
}

/// Counts the bytes written: the tar stream's offsets.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> TarWriter<W> {
    /// A tar stream into `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            out: Counting {
                inner: out,
                written: 0,
            },
            buffer: vec![0; COPY_BUFFER],
            long_names: 0,
            data_start: 0,
        }
    }

    /// Appends an entry with its content. Errors are the output's (the
    /// archive cannot be written); a file that cannot be read is
    /// [`Copied::Incomplete`].
    pub fn append(&mut self, entry: &Entry, content: Content<'_>) -> io::Result<Copied> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut h = Header::new_ustar();
        h.set_entry_type(match entry.kind {
            EntryKind::File => EntryType::Regular,
            EntryKind::Dir => EntryType::Directory,
            EntryKind::Symlink => EntryType::Symlink,
            EntryKind::Hardlink => EntryType::Link,
            EntryKind::Fifo => EntryType::Fifo,
            EntryKind::CharDevice => EntryType::Char,
            EntryKind::BlockDevice => EntryType::Block,
        });
        h.set_mode(entry.mode & 0o7777);

        let sparse = match &content {
            Content::Sparse { regions, .. } => Some(sparse_map(regions, entry.size)),
            _ => None,
        };
        let mut path = entry.path.0.clone();
        if entry.kind == EntryKind::Dir {
            path.push(b'/');
        }
        if sparse.is_some() {
            // GNU sparse 1.0: the real name in GNU.sparse.name, a stand-in
            // in the header.
            pax.push(("GNU.sparse.major".into(), b"1".to_vec()));
            pax.push(("GNU.sparse.minor".into(), b"0".to_vec()));
            pax.push(("GNU.sparse.name".into(), path.clone()));
            pax.push(("GNU.sparse.realsize".into(), entry.size.to_string().into_bytes()));
            let base = path.rsplit(|&b| b == b'/').next().unwrap_or(b"file");
            let base = String::from_utf8_lossy(&base[..base.len().min(80)]).into_owned();
            if h.set_path(format!("GNUSparseFile.0/{base}")).is_err() {
                h.set_path("GNUSparseFile.0/file")?;
            }
        } else {
            let utf8 = std::str::from_utf8(&path).is_ok();
            if !utf8 || h.set_path(Path::new(OsStr::from_bytes(&path))).is_err() {
                pax.push(("path".into(), path.clone()));
                self.long_names += 1;
                let placeholder = format!(
                    "vaultline-long-name-{}{}",
                    self.long_names,
                    if entry.kind == EntryKind::Dir { "/" } else { "" }
                );
                h.set_path(&placeholder)?;
            }
        }
        if let Some(target) = &entry.target {
            let t = OsStr::from_bytes(&target.0);
            if std::str::from_utf8(&target.0).is_err() || h.set_link_name(t).is_err() {
                pax.push(("linkpath".into(), target.0.clone()));
                h.set_link_name("vaultline-long-link")?;
            }
        }
        let size = match (&content, &sparse) {
            (_, Some((map, data))) => map.len() as u64 + data,
            (Content::Stream(_), None) if entry.kind == EntryKind::File => entry.size,
            _ => 0,
        };
        if size > USTAR_MAX_11 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        h.set_size(size);
        for (key, id, set) in [
            ("uid", entry.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", entry.gid, Header::set_gid),
        ] {
            if u64::from(id) > USTAR_MAX_7 {
                pax.push((key.into(), id.to_string().into_bytes()));
                set(&mut h, 0);
            } else {
                set(&mut h, u64::from(id));
            }
        }
        if matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            // Larger numbers than ustar holds do not occur on Linux (12-bit
            // majors, 20-bit minors): clamp rather than fail.
            h.set_device_major(entry.dev_major.min(USTAR_MAX_7 as u32))?;
            h.set_device_minor(entry.dev_minor.min(USTAR_MAX_7 as u32))?;
        }
        let secs = entry.mtime.clamp(0, USTAR_MAX_11 as i64) as u64;
        h.set_mtime(secs);
        if entry.mtime_nsec != 0 || secs as i64 != entry.mtime {
            pax.push((
                "mtime".into(),
                pax_time(entry.mtime, entry.mtime_nsec).into_bytes(),
            ));
        }
        for (name, value) in &entry.xattrs {
            match name.as_str() {
                ACL_ACCESS | ACL_DEFAULT => {
                    let key = if name == ACL_ACCESS {
                        "SCHILY.acl.access"
                    } else {
                        "SCHILY.acl.default"
                    };
                    if let Some(text) = acl_text(&value.0) {
                        pax.push((key.into(), text.into_bytes()));
                    }
                }
                _ => pax.push((format!("SCHILY.xattr.{name}"), value.0.clone())),
            }
        }
        if pax.iter().any(|(_, v)| std::str::from_utf8(v).is_err()) {
            pax.insert(0, ("hdrcharset".into(), b"BINARY".to_vec()));
        }
        h.set_cksum();

        if !pax.is_empty() {
            self.write_pax(&pax, secs)?;
        }
        self.out.write_all(h.as_bytes())?;
        self.data_start = self.out.written;
        let copied = match (content, sparse) {
            (Content::Sparse { file, regions }, Some((map, _))) => {
                self.out.write_all(&map)?;
                self.copy_regions(file, regions, size - map.len() as u64)?
            }
            (Content::Stream(data), _) if entry.kind == EntryKind::File => self.copy_exact(data, size)?,
            (Content::None, _) if entry.kind == EntryKind::File && entry.size > 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "file entry without data",
                ));
            }
            _ => Copied::Exact,
        };
        self.pad(size)?;
        if let Copied::Incomplete { read, why } = &copied {
            self.mark_incomplete(entry, *read, why)?;
        }
        Ok(copied)
    }

    /// The marker that follows a member whose file was not read completely
    /// (or the chunk members of a file that could not be read to its end).
    pub fn mark_incomplete(&mut self, entry: &Entry, read: u64, why: &str) -> io::Result<()> {
        let mut path = entry.path.0.clone();
        path.extend_from_slice(INCOMPLETE_SUFFIX.as_bytes());
        let comment = format!(
            "vaultline: the member before this one is {} as far as it could be read ({read} of {} bytes: {why}), \
             padded with zeros; it is not part of the snapshot",
            entry.path.display(),
            entry.size
        );
        let mut pax = vec![
            ("path".to_string(), path),
            ("comment".into(), comment.into_bytes()),
        ];
        if std::str::from_utf8(&pax[0].1).is_err() {
            pax.insert(0, ("hdrcharset".into(), b"BINARY".to_vec()));
        }
        self.write_pax(&pax, 0)?;
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_path("vaultline-incomplete")?;
        h.set_mode(0o600);
        h.set_size(0);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn write_pax(&mut self, records: &[(String, Vec<u8>)], mtime: u64) -> io::Result<()> {
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

    /// Copies `size` bytes; a source that fails or ends early leaves the
    /// member padded and the outcome [`Copied::Incomplete`].
    fn copy_exact(&mut self, data: &mut dyn Read, size: u64) -> io::Result<Copied> {
        let mut left = size;
        let mut failure = None;
        while left > 0 {
            let want = left.min(self.buffer.len() as u64) as usize;
            let n = match data.read(&mut self.buffer[..want]) {
                Ok(0) => {
                    failure = Some("it shrank while being read".to_string());
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failure = Some(format!("read error: {e}"));
                    break;
                }
            };
            self.out.write_all(&self.buffer[..n])?;
            left -= n as u64;
        }
        if let Some(why) = failure {
            self.zeros(left)?;
            return Ok(Copied::Incomplete {
                read: size - left,
                why,
            });
        }
        let mut probe = [0u8; 1];
        Ok(match data.read(&mut probe) {
            Ok(0) | Err(_) => Copied::Exact,
            Ok(_) => Copied::Grew,
        })
    }

    /// Copies a sparse file's data regions (`total` bytes).
    fn copy_regions(&mut self, file: &File, regions: &[(u64, u64)], total: u64) -> io::Result<Copied> {
        let mut written = 0u64;
        for &(offset, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(self.buffer.len() as u64) as usize;
                let n = match file.read_at(&mut self.buffer[..want], offset + done) {
                    Ok(0) => {
                        self.zeros(total - written)?;
                        return Ok(Copied::Incomplete {
                            read: written,
                            why: "it shrank while being read".into(),
                        });
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.zeros(total - written)?;
                        return Ok(Copied::Incomplete {
                            read: written,
                            why: format!("read error: {e}"),
                        });
                    }
                };
                self.out.write_all(&self.buffer[..n])?;
                done += n as u64;
                written += n as u64;
            }
        }
        Ok(Copied::Exact)
    }

    fn zeros(&mut self, mut left: u64) -> io::Result<()> {
        let zeros = [0u8; 8192];
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(())
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
        &self.out.inner
    }

    /// Offset in the tar stream of the next byte written (the next
    /// member's first header byte).
    pub fn position(&self) -> u64 {
        self.out.written
    }

    /// Offset in the tar stream of the last appended member's data (after
    /// its headers): where a chunk reference into it points.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out.inner)
    }
}

/// The GNU sparse 1.0 map of `regions` in a file of `size` bytes, padded to
/// a block, and the bytes of data that follow it. A file that ends in a
/// hole gets a last, empty region at its end, as GNU tar writes it.
fn sparse_map(regions: &[(u64, u64)], size: u64) -> (Vec<u8>, u64) {
    let mut list: Vec<(u64, u64)> = regions.to_vec();
    if list.last().is_none_or(|&(o, l)| o + l < size) {
        list.push((size, 0));
    }
    let mut map = format!("{}\n", list.len());
    for (o, l) in &list {
        map.push_str(&format!("{o}\n{l}\n"));
    }
    let mut map = map.into_bytes();
    map.resize(map.len().div_ceil(BLOCK) * BLOCK, 0);
    (map, regions.iter().map(|r| r.1).sum())
}

/// Parses a GNU sparse 1.0 map from the start of a member's data; returns
/// the regions and the length of the map (padded). `None` when malformed.
pub fn parse_sparse_map(data: &[u8], realsize: u64) -> Option<(Vec<(u64, u64)>, usize)> {
    let mut at = 0usize;
    let mut number = || -> Option<u64> {
        let end = data.get(at..)?.iter().position(|&b| b == b'\n')? + at;
        let n = std::str::from_utf8(&data[at..end]).ok()?.parse().ok()?;
        at = end + 1;
        Some(n)
    };
    let count = number()?;
    if count > 1 << 20 {
        return None;
    }
    let mut regions = Vec::new();
    let mut next = 0u64;
    for _ in 0..count {
        let (o, l) = (number()?, number()?);
        let end = o.checked_add(l)?;
        if o < next || end > realsize {
            return None;
        }
        if l > 0 {
            regions.push((o, l));
        }
        next = end;
    }
    Some((regions, at.div_ceil(BLOCK) * BLOCK))
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

/// The time `secs + nsec / 10⁹` as PAX writes it, `[-]SECS[.FRACTION]`
/// without trailing zeros. The manifest keeps whole seconds rounded down
/// and a non-negative nanosecond part, so 1.5 s before the epoch is
/// `secs = -2, nsec = 500000000`, which is `-1.5` here.
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        ("", secs, nsec)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::EncodedPath;
    use crate::repo::manifest::XattrValue as Value;

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
    fn pax_time_trims_the_fraction_and_counts_negative_times_right() {
        assert_eq!(pax_time(10, 0), "10");
        assert_eq!(pax_time(10, 500_000_000), "10.5");
        assert_eq!(pax_time(10, 123), "10.000000123");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5", "1.5 s before the epoch");
        assert_eq!(pax_time(-1, 750_000_000), "-0.25");
        assert_eq!(pax_time(-3, 0), "-3");
    }

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: EncodedPath(path.as_bytes().to_vec()),
            kind: EntryKind::File,
            size: data.len() as u64,
            mode: 0o640,
            uid: 3_000_000,
            gid: 7,
            mtime: 1_700_000_000,
            mtime_nsec: 250_000_000,
            ..Entry::default()
        }
    }

    #[test]
    fn long_names_ids_times_and_xattrs_survive_a_standard_reader() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let mut w = TarWriter::new(Vec::new());
        let mut f = file(&long, b"hello");
        f.xattrs.insert("user.note".into(), Value(b"hi".to_vec()));
        w.append(&f, Content::Stream(&mut &b"hello"[..])).unwrap();
        let mut link = file("l", b"");
        link.kind = EntryKind::Symlink;
        link.target = Some(EncodedPath(vec![b't'; 150]));
        w.append(&link, Content::None).unwrap();
        let mut fifo = file("p", b"");
        fifo.kind = EntryKind::Fifo;
        w.append(&fifo, Content::None).unwrap();
        let mut dev = file("null", b"");
        dev.kind = EntryKind::CharDevice;
        (dev.dev_major, dev.dev_minor) = (1, 3);
        w.append(&dev, Content::None).unwrap();
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
        assert!(pax.contains(&("SCHILY.xattr.user.note".into(), "hi".into())));
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        assert_eq!(data, "hello");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.link_name().unwrap().unwrap().to_str().unwrap(), "t".repeat(150));
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), EntryType::Fifo);
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), EntryType::Char);
        assert_eq!(
            (
                e.header().device_major().unwrap(),
                e.header().device_minor().unwrap()
            ),
            (Some(1), Some(3))
        );
        assert!(entries.next().is_none());
    }

    #[test]
    fn an_unreadable_file_is_padded_marked_and_reported() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::from_raw_os_error(5));
                }
                let n = self.0.min(buf.len());
                buf[..n].fill(b'a');
                self.0 -= n;
                Ok(n)
            }
        }
        let mut w = TarWriter::new(Vec::new());
        let copied = w
            .append(&file("a", b"12345"), Content::Stream(&mut Failing(2)))
            .unwrap();
        assert_eq!(
            copied,
            Copied::Incomplete {
                read: 2,
                why: "read error: Input/output error (os error 5)".into()
            }
        );
        assert_eq!(
            w.append(&file("b", b"12"), Content::Stream(&mut &b"12345"[..]))
                .unwrap(),
            Copied::Grew
        );
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let got: Vec<(String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), 5),
                (format!("a{INCOMPLETE_SUFFIX}"), 0),
                ("b".into(), 2)
            ]
        );
    }

    #[test]
    fn sparse_maps_round_trip() {
        let (map, data) = sparse_map(&[(4096, 10), (1 << 20, 5)], 4 << 20);
        assert_eq!(map.len(), 512);
        assert_eq!(data, 15);
        assert!(map.starts_with(b"3\n4096\n10\n1048576\n5\n4194304\n0\n"));
        let (regions, len) = parse_sparse_map(&map, 4 << 20).unwrap();
        assert_eq!((regions, len), (vec![(4096, 10), (1 << 20, 5)], 512));
        assert!(
            parse_sparse_map(b"1\n10\n5\n", 12).is_none(),
            "past the real size"
        );
        assert!(
            parse_sparse_map(b"2\n10\n5\n0\n5\n", 100).is_none(),
            "out of order"
        );
    }
}
