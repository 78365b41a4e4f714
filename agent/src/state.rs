//! Files vaultline keeps on the host: the state directory (job status,
//! metrics, the audit trail, the local records of incremental runs, job
//! locks, the key file), written so that another local user can neither
//! read them nor turn a write by root against another file.
//!
//! - Directories are created 0700, and a state directory found looser
//!   (made by an older version, or by hand) is tightened to 0700 when it
//!   is ours. Status files hold restore targets, principal ARNs and error
//!   paths; they are nobody else's business.
//! - Files are created with `O_NOFOLLOW` (and `O_EXCL` where they must be
//!   new): a symlink planted under the name makes the open fail instead of
//!   writing through it.
//! - Whole-file updates go to a temporary file with a random name created
//!   `O_EXCL | O_NOFOLLOW`, are synced, and renamed over the target: the
//!   rename replaces a symlink, never writes through it, and a reader sees
//!   the old file or the new one.
//!
//! This module is at the bottom of the crate with `error` and `units`: it
//! imports nothing from it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of files only vaultline reads.
pub const PRIVATE: u32 = 0o600;

fn no_follow() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32
}

/// Creates `dir` (and missing parents) 0700; an existing `dir` that is ours
/// and open to others is tightened to 0700. (A configured state directory
/// may be a symlink an administrator made; files inside are still never
/// written through one.)
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.mode() & 0o077 != 0 && meta.uid() == rustix::process::geteuid().as_raw() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(meta.mode() & 0o7700))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` (mode `mode`), atomically and durably,
/// without following a symlink at `path` or at the temporary name. The
/// parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a file path has a parent"))?;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        hex::encode(random)
    ));
    let result = (|| -> io::Result<()> {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` (mode `mode`), which must not exist (not even as a
/// symlink).
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(no_follow())
        .open(path)
}

/// Opens `path` for appending, creating it with mode `mode`; never through
/// a symlink. An existing file open to others is tightened to `mode`.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(no_follow())
        .open(path)?;
    tighten(&file, mode)?;
    Ok(file)
}

/// Opens `path` read-write (a lock file), creating it with mode `mode`;
/// never through a symlink.
pub fn open_rw(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(no_follow())
        .open(path)?;
    tighten(&file, mode)?;
    Ok(file)
}

fn tighten(file: &File, mode: u32) -> io::Result<()> {
    let meta = file.metadata()?;
    if meta.mode() & 0o777 & !mode != 0 && meta.uid() == rustix::process::geteuid().as_raw() {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_go_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("status.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        // A whole-file update replaces the link itself.
        write_atomic(&path, b"{}", PRIVATE).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        // Appends and new files refuse it.
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_append(&link, PRIVATE).is_err());
        assert!(create_new(&link, PRIVATE).is_err());
        assert!(open_rw(&link, PRIVATE).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn state_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&state).unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        private_dir(&state.join("status")).unwrap();
        assert_eq!(
            std::fs::metadata(state.join("status")).unwrap().mode() & 0o777,
            0o700
        );
    }
}
