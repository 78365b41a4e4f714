//! Walking a job's paths so that what is read is what the walk saw.
//!
//! A backup runs as root over trees that other users may change while it
//! runs. Walking by path string (open `/home/u/d/f` after `lstat` said it
//! was a plain file of u's) lets a user swap `d` for a symlink to a
//! root-only directory between the two steps, and get root's files
//! archived as theirs. So the walk never resolves a path below a root:
//!
//! - every directory is opened relative to its parent's descriptor with
//!   `O_NOFOLLOW | O_DIRECTORY`, and the opened directory's device and
//!   inode must be those `fstatat` reported while listing the parent;
//! - its entries are listed from that descriptor (`getdents`), sorted by
//!   name, and each is examined with `fstatat(dirfd, name, NOFOLLOW)`;
//! - a regular file is opened (by [`Found::open`], only when its content
//!   is wanted) relative to its directory's descriptor with `O_NOFOLLOW`,
//!   and must again be the inode the walk saw; what is archived (size,
//!   mode, owner, times) comes from the opened descriptor.
//!
//! An entry whose identity changed between listing and opening is left out
//! with a warning naming it. Symlinks are read with `readlinkat`, never
//! followed (a root named in the configuration is followed, as the
//! operator wrote it).
//!
//! The walk also decides what not to enter: excluded paths, vaultline's own
//! directories, other file systems under `one-file-system`, and pseudo file
//! systems (proc, sysfs, cgroup, devpts, … and the tmpfs of `/run` and
//! `/dev`) met below a root: their files are not data and their sizes lie.
//! A job that names such a path as a root gets it, with sizes that are not
//! trusted ([`Found::pseudo`]). Paths longer than [`MAX_PATH`] are left out
//! and reported: no tool could restore them by name, and ranged restores
//! bound a tar header's size by it.
//!
//! A root the job maps (`[[jobs.map]]`, a file-system snapshot mounted
//! elsewhere) is read from its mapping's `from` and every entry below it is
//! reported under the job's path, as if read there: a snapshot of `/srv`
//! mounted at `/mnt/snap/srv` is archived as `/srv`.
//!
//! Order: roots in walk order, each directory before its contents, names
//! byte-sorted (see `changes::walk_order`; incremental runs join on it).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use vaultline_config::Job;

/// Longest path (as archived, without the leading `/`) the walk takes in:
/// `PATH_MAX` less its terminating NUL.
pub const MAX_PATH: usize = 4095;

/// What kind of entry the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// One entry found by the walk.
pub struct Found<'w> {
    /// Where it is.
    pub abs: PathBuf,
    /// What `fstatat` said while listing (a directory: `fstat` of its
    /// opened descriptor).
    pub stat: Stat,
    /// Its kind.
    pub kind: Kind,
    /// The pseudo file system it lives on (a job that names `/proc/…`):
    /// its sizes are not to be trusted.
    pub pseudo: Option<&'static str>,
    parent: BorrowedFd<'w>,
    name: &'w [u8],
    /// A directory: its descriptor, open for the walk.
    dir: Option<BorrowedFd<'w>>,
    /// A configured root: symlinks in its own name are followed.
    root: bool,
}

/// Why an entry was not read as the walk saw it.
#[derive(Debug, thiserror::Error)]
#[error("it changed while the backup ran (replaced by another file, or moved): not archived")]
pub struct ChangedIdentity;

impl Found<'_> {
    /// Opens a regular file for reading, relative to its directory, without
    /// following a symlink swapped in since the listing; returns it with
    /// `fstat` of what was opened, which must be the inode the walk saw
    /// (else [`ChangedIdentity`], inside the `io::Error`).
    pub fn open(&self) -> io::Result<(File, Stat)> {
        let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        if !self.root {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = rustix::fs::openat(self.parent, self.name, flags, Mode::empty()).map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                io::Error::other(ChangedIdentity)
            } else {
                io::Error::from(e)
            }
        })?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev != self.stat.st_dev
            || st.st_ino != self.stat.st_ino
            || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        {
            return Err(io::Error::other(ChangedIdentity));
        }
        // Reads must block: O_NONBLOCK only kept a swapped-in FIFO from
        // hanging the open.
        let file = File::from(fd);
        rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
        Ok((file, st))
    }

    /// A symlink's target, as stored.
    pub fn read_link(&self) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(self.parent, self.name, Vec::new())?.into_bytes())
    }

    /// The directory's descriptor (directories only).
    pub fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dir
    }

    /// A path that names this entry without resolving anything but its
    /// directory's descriptor, for the few calls that take no descriptor
    /// (the extended attributes of a symlink or a device node):
    /// `/proc/self/fd/DIRFD/NAME`.
    pub fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.parent.as_raw_fd()));
        p.push(OsStr::from_bytes(self.name));
        p
    }
}

/// A path the walk had to leave out.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
    /// Whether this loses data the operator expected to be saved
    /// (unreadable), as opposed to what vaultline leaves out by design.
    pub is_error: bool,
}

/// Walks a job's paths in a stable order.
pub struct Walker<'a> {
    job: &'a Job,
    own: &'a [PathBuf],
}

/// What the walk carries down a root.
struct Root {
    dev: u64,
    pseudo: Option<&'static str>,
    /// A root read from elsewhere (`[[jobs.map]]`): its path as recorded,
    /// and where it is read.
    mapped: Option<(PathBuf, PathBuf)>,
}

impl Root {
    /// Where the entry recorded as `abs` really is.
    fn real<'p>(&self, abs: &'p Path) -> std::borrow::Cow<'p, Path> {
        match &self.mapped {
            Some((to, from)) => match abs.strip_prefix(to) {
                Ok(rest) if rest.as_os_str().is_empty() => from.clone().into(),
                Ok(rest) => from.join(rest).into(),
                Err(_) => abs.into(),
            },
            None => abs.into(),
        }
    }
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
        found: impl FnMut(Found<'_>) -> anyhow::Result<()>,
        skipped: impl FnMut(Skipped),
    ) -> anyhow::Result<()> {
        self.walk_reporting(found, skipped, |_| {})
    }

    /// Like [`Walker::walk`], and calls `excluded` for each path left out
    /// by design (an exclude pattern, vaultline's own directories), which
    /// is not entered: what `backup --dry-run` shows.
    pub fn walk_reporting(
        &self,
        mut found: impl FnMut(Found<'_>) -> anyhow::Result<()>,
        mut skipped: impl FnMut(Skipped),
        mut excluded: impl FnMut(Skipped),
    ) -> anyhow::Result<()> {
        raise_open_file_limit();
        let mut roots: Vec<&PathBuf> = self.job.paths.iter().collect();
        roots.sort_by(|a, b| {
            crate::pipeline::changes::walk_order(a.as_os_str().as_bytes(), b.as_os_str().as_bytes())
        });
        for root in roots {
            self.walk_root(root, &mut found, &mut skipped, &mut excluded)?;
        }
        Ok(())
    }

    fn walk_root(
        &self,
        root: &Path,
        found: &mut impl FnMut(Found<'_>) -> anyhow::Result<()>,
        skipped: &mut impl FnMut(Skipped),
        excluded: &mut impl FnMut(Skipped),
    ) -> anyhow::Result<()> {
        // A mapped root is read from its mapping's `from` (a file-system
        // snapshot's mount point) and recorded as the job's path.
        let read_from = self.job.source_of(root);
        let fail = |skipped: &mut dyn FnMut(Skipped), e: io::Error| {
            let reason = if read_from == root {
                e.to_string()
            } else {
                format!(
                    "{e} (reading it from {}, as [[jobs.map]] says)",
                    read_from.display()
                )
            };
            skipped(Skipped {
                path: root.to_path_buf(),
                reason,
                is_error: true,
            });
        };
        // The configured root: its own path is resolved as written.
        let (parent_path, name): (&Path, &[u8]) = match (read_from.parent(), read_from.file_name()) {
            (Some(p), Some(n)) => (
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                n.as_bytes(),
            ),
            _ => (read_from, b"."),
        };
        let parent = match open_dir(rustix::fs::CWD, parent_path.as_os_str().as_bytes(), true) {
            Ok(fd) => fd,
            Err(e) => {
                fail(skipped, e);
                return Ok(());
            }
        };
        let st = match rustix::fs::statat(&parent, name, AtFlags::empty()) {
            Ok(st) => st,
            Err(e) => {
                fail(skipped, e.into());
                return Ok(());
            }
        };
        // The root's own file system (a job may name /proc/…): its files'
        // sizes are not to be trusted.
        let pseudo = match rustix::fs::statfs(read_from) {
            Ok(fs) => pseudo_fs(fs.f_type, read_from),
            Err(_) => None,
        };
        let info = Root {
            dev: st.st_dev,
            pseudo,
            mapped: (read_from != root).then(|| (root.to_path_buf(), read_from.to_path_buf())),
        };
        self.visit(
            &parent,
            name,
            root.to_path_buf(),
            st,
            &info,
            true,
            found,
            skipped,
            excluded,
        )
    }

    /// Hands out one entry (and, for a directory, everything below it).
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        abs: PathBuf,
        st: Stat,
        root: &Root,
        is_root: bool,
        found: &mut impl FnMut(Found<'_>) -> anyhow::Result<()>,
        skipped: &mut impl FnMut(Skipped),
        excluded: &mut impl FnMut(Skipped),
    ) -> anyhow::Result<()> {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            _ => {
                skipped(Skipped {
                    path: abs,
                    reason:
                        "a socket: sockets are not archived (they are made by the program that listens on \
                             them)"
                            .into(),
                    is_error: false,
                });
                return Ok(());
            }
        };
        if kind != Kind::Dir {
            return found(Found {
                abs,
                stat: st,
                kind,
                pseudo: root.pseudo,
                parent: parent.as_fd(),
                name,
                dir: None,
                root: is_root,
            });
        }
        let dir = match open_dir(parent, name, is_root) {
            Ok(fd) => fd,
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                skipped(Skipped {
                    path: abs,
                    reason: ChangedIdentity.to_string(),
                    is_error: false,
                });
                return Ok(());
            }
            Err(e) => {
                skipped(Skipped {
                    path: abs,
                    reason: e.to_string(),
                    is_error: true,
                });
                return Ok(());
            }
        };
        let opened = match rustix::fs::fstat(&dir) {
            Ok(s) => s,
            Err(e) => {
                skipped(Skipped {
                    path: abs,
                    reason: io::Error::from(e).to_string(),
                    is_error: true,
                });
                return Ok(());
            }
        };
        if opened.st_dev != st.st_dev || opened.st_ino != st.st_ino {
            skipped(Skipped {
                path: abs,
                reason: ChangedIdentity.to_string(),
                is_error: false,
            });
            return Ok(());
        }
        found(Found {
            abs: abs.clone(),
            stat: opened,
            kind,
            pseudo: root.pseudo,
            parent: parent.as_fd(),
            name,
            dir: Some(dir.as_fd()),
            root: is_root,
        })?;
        // Its contents, unless this is where the walk stops.
        if !is_root && opened.st_dev != root.dev {
            if self.job.one_file_system {
                return Ok(());
            }
            if let Ok(fs) = rustix::fs::fstatfs(&dir)
                && let Some(what) = pseudo_fs(fs.f_type, &root.real(&abs))
            {
                skipped(Skipped {
                    path: abs,
                    reason: format!(
                        "a {what} file system: not data, and its sizes lie; name it in the job's paths to back it up"
                    ),
                    is_error: false,
                });
                return Ok(());
            }
        }
        let names = match list(&dir) {
            Ok(n) => n,
            Err(e) => {
                skipped(Skipped {
                    path: abs,
                    reason: format!("cannot list it: {e}"),
                    is_error: true,
                });
                return Ok(());
            }
        };
        for child in names {
            let child_abs = abs.join(OsStr::from_bytes(&child));
            let archived_len = child_abs.as_os_str().len().saturating_sub(1);
            if !self.job.commands.is_empty() && child_abs == Path::new(vaultline_config::STREAMS_ROOT) {
                excluded(Skipped {
                    path: child_abs,
                    reason: "where the job's command sources are placed in its snapshots: a directory of \
                             this name is not archived"
                        .into(),
                    is_error: false,
                });
                continue;
            }
            if self.own.iter().any(|o| *o == *root.real(&child_abs)) {
                tracing::debug!("not archiving {}: it is vaultline's own", child_abs.display());
                excluded(Skipped {
                    path: child_abs,
                    reason: "vaultline's own directory (its state or a local repository)".into(),
                    is_error: false,
                });
                continue;
            }
            if let Some(pattern) = self.job.exclude.matching(&child_abs) {
                excluded(Skipped {
                    path: child_abs,
                    reason: format!("excluded by {pattern:?}"),
                    is_error: false,
                });
                continue;
            }
            if archived_len > MAX_PATH {
                skipped(Skipped {
                    path: child_abs,
                    reason: format!(
                        "its path is longer than {MAX_PATH} bytes: no tool could restore it by name"
                    ),
                    is_error: true,
                });
                continue;
            }
            let st = match rustix::fs::statat(&dir, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => {
                    skipped(Skipped {
                        path: child_abs,
                        reason: "vanished during the backup".into(),
                        is_error: false,
                    });
                    continue;
                }
                Err(e) => {
                    skipped(Skipped {
                        path: child_abs,
                        reason: io::Error::from(e).to_string(),
                        is_error: true,
                    });
                    continue;
                }
            };
            self.visit(&dir, &child, child_abs, st, root, false, found, skipped, excluded)?;
        }
        Ok(())
    }
}

/// Opens directory `name` relative to `at`: not through a symlink unless
/// `follow` (a configured root).
fn open_dir(at: impl AsFd, name: &[u8], follow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(rustix::fs::openat(at, name, flags, Mode::empty())?)
}

/// The names in a directory, byte-sorted, without `.` and `..`.
fn list(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(dir)? {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The pseudo file system a directory at `path` with statfs type `magic`
/// is, if it is one the walk does not enter: kernel interfaces whose
/// files are not data, and the tmpfs mounted at `/run` and `/dev`
/// (`/dev/shm` included).
fn pseudo_fs(magic: i64, path: &Path) -> Option<&'static str> {
    const TMPFS: i64 = 0x0102_1994;
    let named = match magic {
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x1cd1 => "devpts",
        0x0027_e0eb => "cgroup",
        0x6367_7270 => "cgroup2",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x7363_6673 => "securityfs",
        0x6165_676c => "pstore",
        0xcafe_4a11 => "bpf",
        0x6265_6570 => "configfs",
        0xde5e_81e4 => "efivarfs",
        0x1980_0202 => "mqueue",
        0x9584_58f6 => "hugetlbfs",
        0x6573_5543 => "fusectl",
        0x4249_4e4d => "binfmt_misc",
        0x0187 => "autofs",
        0x6e73_6673 => "nsfs",
        0xf97c_ff8c => "selinuxfs",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named);
    }
    let runtime = [Path::new("/run"), Path::new("/dev")];
    (magic == TMPFS && runtime.iter().any(|r| path.starts_with(r))).then_some("tmpfs (runtime)")
}

/// The walk holds one descriptor per directory level (at most
/// `MAX_PATH / 2` deep): the soft limit on open files is raised to what the
/// hard limit allows, up to 65536.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(65_536, |m| m.min(65_536));
    if limit.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(want),
                maximum: limit.maximum,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_tmpfs_and_kernel_interfaces_are_pseudo() {
        assert_eq!(pseudo_fs(0x9fa0, Path::new("/proc")), Some("proc"));
        assert_eq!(pseudo_fs(0x0102_1994, Path::new("/run")), Some("tmpfs (runtime)"));
        assert_eq!(
            pseudo_fs(0x0102_1994, Path::new("/dev/shm")),
            Some("tmpfs (runtime)")
        );
        assert_eq!(
            pseudo_fs(0x0102_1994, Path::new("/tmp")),
            None,
            "a tmpfs /tmp holds data"
        );
        assert_eq!(pseudo_fs(0xef53, Path::new("/srv")), None, "ext4");
    }
}
