//! File metadata beyond `stat`: extended attributes (POSIX ACLs and file
//! capabilities among them) and the data/hole layout of sparse files.
//!
//! Extended attributes are read from an open descriptor where there is one
//! (files and directories) and through `/proc/self/fd/DIRFD/NAME` with the
//! `l*` calls otherwise (symlinks and device nodes have no descriptor to
//! read them from). Every namespace the running user may read is taken:
//! `user`, `trusted` (root), `security` (`security.capability`,
//! `security.selinux`, …) and `system` (`system.posix_acl_access`,
//! `system.posix_acl_default`, in the kernel's binary form, which is also
//! how they are restored). [`acl_text`] renders an ACL as the text of
//! `SCHILY.acl.*` PAX records for other tar readers.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::repo::manifest::{XattrValue as Value, Xattrs};

/// The POSIX access ACL's attribute.
pub const ACL_ACCESS: &str = "system.posix_acl_access";
/// A directory's default ACL's attribute.
pub const ACL_DEFAULT: &str = "system.posix_acl_default";
/// File capabilities.
pub const CAPABILITY: &str = "security.capability";
/// Largest value Linux allows for one attribute.
const MAX_VALUE: usize = 64 << 10;
/// Largest attribute name list read (the kernel's own limit).
const MAX_LIST: usize = 64 << 10;

/// Where to read an entry's attributes from.
pub enum Source<'a> {
    /// An open descriptor.
    Fd(BorrowedFd<'a>),
    /// A path whose last component is not followed.
    Path(&'a Path),
}

fn list(src: &Source<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let r = match src {
            Source::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
            Source::Path(p) => rustix::fs::llistxattr(*p, &mut buf[..]),
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < MAX_LIST => buf.resize(MAX_LIST, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

fn get(src: &Source<'_>, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let r = match src {
            Source::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
            Source::Path(p) => rustix::fs::lgetxattr(*p, name, &mut buf[..]),
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < MAX_VALUE => buf.resize(MAX_VALUE, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every extended attribute of `src` the running user may read. A file
/// system without attributes has none; an attribute that vanishes between
/// listing and reading is left out; a name that is not UTF-8 is reported
/// by `skipped` and left out (none of the kernel's namespaces make them).
pub fn read(src: &Source<'_>, skipped: &mut dyn FnMut(String)) -> io::Result<Xattrs> {
    let names = match list(src) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Xattrs::new()),
        Err(e) => return Err(e),
    };
    let mut out = Xattrs::new();
    for raw in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            skipped(format!(
                "extended attribute {:?} has a name that is not UTF-8",
                String::from_utf8_lossy(raw)
            ));
            continue;
        };
        match get(src, name) {
            Ok(v) => {
                out.insert(name.to_string(), Value(v));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {}
            Err(e) => skipped(format!("extended attribute {name}: {e}")),
        }
    }
    Ok(out)
}

/// True for the errors of a file system (or file type) without extended
/// attributes.
pub fn is_unsupported(e: &io::Error) -> bool {
    // (On Linux ENOTSUP and EOPNOTSUPP are one number.)
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::NOTSUP)
}

/// Sets one attribute on `fd`, or on `path` without following its last
/// component.
pub fn set(src: &Source<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    match src {
        Source::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags)?,
        Source::Path(p) => rustix::fs::lsetxattr(*p, name, value, flags)?,
    }
    Ok(())
}

/// The namespace of an attribute name (`user`, `trusted`, `security`,
/// `system`), for messages.
pub fn namespace(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// An ACL in the kernel's binary form (`system.posix_acl_*`) as the text
/// GNU tar and bsdtar read from `SCHILY.acl.access` / `SCHILY.acl.default`:
/// `user::rw-,user:1000:r--,group::r--,mask::r--,other::r--` (numeric ids:
/// names may not exist where the archive is read). `None` when the bytes
/// are not a version-2 ACL.
pub fn acl_text(binary: &[u8]) -> Option<String> {
    let (version, rest) = binary.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != 2 || rest.len() % 8 != 0 {
        return None;
    }
    let mut parts = Vec::new();
    for e in rest.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let rwx = format!(
            "{}{}{}",
            if perm & 4 != 0 { 'r' } else { '-' },
            if perm & 2 != 0 { 'w' } else { '-' },
            if perm & 1 != 0 { 'x' } else { '-' }
        );
        parts.push(match tag {
            0x01 => format!("user::{rwx}"),
            0x02 => format!("user:{id}:{rwx}"),
            0x04 => format!("group::{rwx}"),
            0x08 => format!("group:{id}:{rwx}"),
            0x10 => format!("mask::{rwx}"),
            0x20 => format!("other::{rwx}"),
            _ => return None,
        });
    }
    Some(parts.join(","))
}

/// The data regions of a file with holes, as (offset, length), from
/// `SEEK_DATA`/`SEEK_HOLE` on its descriptor; `None` when the file system
/// cannot say or the file has no holes.
pub fn data_regions(fd: BorrowedFd<'_>, size: u64) -> Option<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut regions = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match seek(fd, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        if start >= size {
            break;
        }
        let end = seek(fd, SeekFrom::Hole(start)).ok()?.min(size);
        if end <= start {
            return None;
        }
        regions.push((start, end - start));
        at = end;
    }
    let _ = seek(fd, SeekFrom::Start(0));
    let data: u64 = regions.iter().map(|r| r.1).sum();
    (data < size).then_some(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_render_as_tar_text() {
        // user::rw-, user:1000:r--, group::r-x, mask::r-x, other::---
        let mut b = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 5, u32::MAX),
            (0x10, 5, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            b.extend(tag.to_le_bytes());
            b.extend(perm.to_le_bytes());
            b.extend(id.to_le_bytes());
        }
        assert_eq!(
            acl_text(&b).unwrap(),
            "user::rw-,user:1000:r--,group::r-x,mask::r-x,other::---"
        );
        assert_eq!(acl_text(&b[..7]), None);
    }

    #[test]
    fn holes_are_found() {
        use std::io::{Seek, Write};
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = std::fs::File::create(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.set_len(4 << 20).unwrap();
        f.sync_all().unwrap();
        use std::os::unix::fs::MetadataExt;
        let allocated = f.metadata().unwrap().blocks() * 512;
        assert!(
            allocated < 4 << 20,
            "the test file system keeps holes ({allocated} bytes allocated)"
        );
        assert_eq!(data_regions(f.as_fd(), 4 << 20).unwrap(), [(1 << 20, 4096)]);
    }
}
