//! The local store: objects are files under a repository directory.
//!
//! A pending object is a hidden file `.NAME.pending-RANDOM` in the target
//! directory. Commit is fsync(file), rename without replacing
//! (`RENAME_NOREPLACE`), fsync(directory): after a crash at any point the
//! object either exists completely or not at all, and a committed object is
//! never overwritten. Directories are created 0700 and files 0600: the data is
//! sealed, but names and sizes are nobody else's business either.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::{ObjectClass, ObjectInfo, ObjectMeta, ObjectStore, PendingObject, Retention, StoreError, Thaw};

const PENDING_MARK: &str = ".pending-";
/// Large writes: the pipeline hands over 1 MiB at a time.
const WRITE_BUFFER: usize = 1 << 20;

/// A repository directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The entries of the directory a prefix names, when it names one (it
    /// is empty or ends in `/`): `None` for any other prefix, no entries
    /// for a directory that does not exist.
    fn prefix_dir(&self, prefix: &str) -> io::Result<Option<Vec<fs::DirEntry>>> {
        let Some(dir_part) = prefix.strip_suffix('/').or(prefix.is_empty().then_some("")) else {
            return Ok(None);
        };
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        match fs::read_dir(&dir) {
            Ok(entries) => entries.collect::<io::Result<Vec<_>>>().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Vec::new())),
            Err(e) => Err(e),
        }
    }

    /// The store rooted at `root` (which must exist to be used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// Creates the root directory (0700) if missing.
    pub fn create_root(&self) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| at(&self.root, e))
    }

    /// How many entries the root directory holds besides vaultline's
    /// (`None`: it does not exist).
    pub fn foreign_entries(&self) -> io::Result<Option<usize>> {
        match fs::read_dir(&self.root) {
            Ok(entries) => Ok(Some(entries.count())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(at(&self.root, e)),
        }
    }

    /// Fails unless the running user may create files in the root.
    pub fn check_writable(&self) -> io::Result<()> {
        rustix::fs::access(
            &self.root,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(|e| self.write_error(&self.root, io::Error::from(e)))
    }

    fn write_error(&self, path: &Path, reason: io::Error) -> io::Error {
        super::StoreWriteError {
            store: self.describe(),
            path: path.display().to_string(),
            reason,
        }
        .into_io()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        // Names are built by the repository layout, never taken from input;
        // refuse anything that could leave the root all the same.
        if name.is_empty()
            || name.starts_with('/')
            || name
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(PENDING_MARK))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid object name {name:?}"),
            ));
        }
        Ok(self.root.join(name))
    }
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local repository {}", self.root.display())
    }

    fn create(
        &self,
        name: &str,
        _class: ObjectClass,
        _retention: Option<&Retention>,
    ) -> io::Result<Box<dyn PendingObject>> {
        Ok(Box::new(self.pending(name)?))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.open_file(name)?))
    }

    fn open_range(&self, name: &str, start: u64, end: Option<u64>) -> io::Result<Box<dyn Read + Send>> {
        let mut file = self.open_file(name)?;
        file.seek(SeekFrom::Start(start))?;
        Ok(match end {
            Some(end) => Box::new(file.take(end.saturating_sub(start))),
            None => Box::new(file),
        })
    }

    fn head(&self, name: &str) -> io::Result<ObjectMeta> {
        let meta = self.open_file(name)?.metadata()?;
        Ok(ObjectMeta {
            size: meta.len(),
            storage_class: None,
            thaw: Thaw::Readable,
            retention: None,
        })
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(name)),
            Err(e) => return Err(at(&path, e)),
        }
        // An emptied snapshot directory goes too; anything else stays.
        if let Some(dir) = path.parent()
            && dir != self.root
        {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    fn replace(&self, name: &str, bytes: &[u8], _retention: Option<&Retention>) -> io::Result<ObjectInfo> {
        let mut pending = self.pending(name)?;
        pending.write_all(bytes)?;
        pending.replace = true;
        Box::new(pending).commit()
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        // List the deepest directory the prefix names, then filter by prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let mut out = Vec::new();
        if !start.is_dir() {
            return Ok(out);
        }
        for entry in walkdir::WalkDir::new(&start).follow_links(false) {
            let entry = entry.map_err(walk_error)?;
            if !entry.file_type().is_file() || entry.file_name().to_string_lossy().contains(PENDING_MARK) {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(name) = rel.to_str() else { continue };
            if name.starts_with(prefix) {
                let meta = entry.metadata().map_err(io::Error::other)?;
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size: meta.len(),
                    modified: jiff::Timestamp::new(
                        meta.mtime(),
                        meta.mtime_nsec().clamp(0, 999_999_999) as i32,
                    )
                    .ok(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> io::Result<Vec<ObjectInfo>> {
        let in_between = |name: &str| super::in_between(name, after, before);
        // Only the subdirectories of the prefix's directory whose names can
        // fall in the slice are walked.
        let Some(entries) = self.prefix_dir(prefix)? else {
            let mut objects = self.list(prefix)?;
            objects.retain(|o| in_between(&o.name));
            return Ok(objects);
        };
        let mut out = Vec::new();
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(|n| format!("{prefix}{n}")) else {
                continue;
            };
            let kind = entry.file_type()?;
            if kind.is_file() && !name.contains(PENDING_MARK) && in_between(&name) {
                let meta = entry.metadata()?;
                out.push(ObjectInfo {
                    size: meta.len(),
                    modified: jiff::Timestamp::new(
                        meta.mtime(),
                        meta.mtime_nsec().clamp(0, 999_999_999) as i32,
                    )
                    .ok(),
                    name,
                });
            } else if kind.is_dir() {
                // Every name below starts with `below`: all at or past
                // `before`, or all short of `after`, and none is in the slice.
                let below = format!("{name}/");
                if before.is_some_and(|b| b <= below.as_str())
                    || after.is_some_and(|a| a > below.as_str() && !a.starts_with(&below))
                {
                    continue;
                }
                out.extend(self.list(&below)?.into_iter().filter(|o| in_between(&o.name)));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_prefixes(&self, prefix: &str) -> io::Result<Vec<String>> {
        // One directory read, and below each subdirectory only as far as
        // its first committed object: a host's archives are not walked.
        let Some(entries) = self.prefix_dir(prefix)? else {
            return Ok(super::prefixes_below(
                prefix,
                self.list(prefix)?.iter().map(|o| o.name.as_str()),
            ));
        };
        let mut out = Vec::new();
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let holds_an_object = walkdir::WalkDir::new(entry.path())
                .follow_links(false)
                .into_iter()
                .filter_map(Result::ok)
                .any(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().contains(PENDING_MARK));
            if holds_an_object {
                out.push(format!("{prefix}{name}/"));
            }
        }
        out.sort();
        Ok(out)
    }

    fn clean_pending(&self, prefix: &str) -> io::Result<usize> {
        let start = self.root.join(prefix.trim_end_matches('/'));
        if !start.is_dir() {
            return Ok(0);
        }
        let mut removed = 0;
        for entry in walkdir::WalkDir::new(&start).follow_links(false) {
            let entry = entry.map_err(walk_error)?;
            if entry.file_type().is_file() && entry.file_name().to_string_lossy().contains(PENDING_MARK) {
                fs::remove_file(entry.path()).map_err(|e| at(entry.path(), e))?;
                if let Some(dir) = entry.path().parent() {
                    let _ = fs::remove_dir(dir);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl LocalStore {
    fn not_found(&self, name: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            StoreError::NotFound {
                name: name.to_string(),
                store: self.describe(),
            },
        )
    }

    fn open_file(&self, name: &str) -> io::Result<File> {
        let path = self.path(name)?;
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(at(&path, e)),
        }
    }

    fn pending(&self, name: &str) -> io::Result<LocalPending> {
        let path = self.path(name)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| self.write_error(&dir, e))?;
        let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
        let temp = dir.join(format!(".{base}{PENDING_MARK}{}", hex::encode(suffix)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| self.write_error(&path, e))?;
        Ok(LocalPending {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp,
            path,
            dir,
            name: name.to_string(),
            store: self.describe(),
            written: 0,
            replace: false,
        })
    }
}

struct LocalPending {
    /// Set for `replace`: the rename may replace an existing object.
    replace: bool,
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    name: String,
    store: String,
    written: u64,
}

impl LocalPending {
    /// A failed write names the repository and the object's file.
    fn failed(&self, reason: io::Error) -> io::Error {
        super::StoreWriteError {
            store: self.store.clone(),
            path: self.path.display().to_string(),
            reason,
        }
        .into_io()
    }
}

impl Write for LocalPending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("object already committed"))?;
        match file.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = self.file.as_mut().map_or(Ok(()), Write::flush);
        flushed.map_err(|e| self.failed(e))
    }
}

/// An I/O error about `path`, named absolutely.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A listing error, with the path it concerns.
fn walk_error(e: walkdir::Error) -> io::Error {
    match (e.path().map(Path::to_path_buf), e.into_io_error()) {
        (Some(path), Some(io)) => at(&path, io),
        (_, Some(io)) => io,
        (_, None) => io::Error::other("a symbolic link loop in the repository"),
    }
}

impl PendingObject for LocalPending {
    fn commit(mut self: Box<Self>) -> io::Result<ObjectInfo> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("object already committed"))?;
        let file = match file.into_inner() {
            Ok(f) => f,
            Err(e) => return Err(self.failed(e.into_error())),
        };
        if let Err(e) = file.sync_all() {
            return Err(self.failed(e));
        }
        drop(file);
        let flags = if self.replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        match renameat_with(CWD, &self.temp, CWD, &self.path, flags) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    StoreError::AlreadyExists {
                        name: self.name.clone(),
                        store: self.store.clone(),
                    },
                ));
            }
            Err(e) => return Err(self.failed(e.into())),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.failed(e))?;
        Ok(ObjectInfo {
            name: self.name.clone(),
            size: self.written,
            modified: None,
        })
    }
}

impl LocalPending {
    fn discard(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
            // A snapshot's archive directory made for this object goes with
            // it (fails, as it should, when anything else is in it).
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::is_not_found;

    #[test]
    fn objects_appear_only_on_commit_and_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut obj = store.create("a/b/c.obj", ObjectClass::Archive, None).unwrap();
        obj.write_all(b"hello").unwrap();
        assert!(
            store.list("a/").unwrap().is_empty(),
            "pending objects are not listed"
        );
        assert!(is_not_found(&store.open("a/b/c.obj").err().unwrap()));
        let info = obj.commit().unwrap();
        assert_eq!(
            info,
            ObjectInfo {
                name: "a/b/c.obj".into(),
                size: 5,
                modified: None,
            }
        );
        assert_eq!(store.get("a/b/c.obj").unwrap(), b"hello");
        let listed = store.list("a/b").unwrap();
        assert_eq!(
            (listed.len(), &listed[0].name, listed[0].size),
            (1, &info.name, info.size)
        );
        assert!(
            listed[0].modified.is_some(),
            "a listing says when each object was written"
        );

        let again = store
            .put("a/b/c.obj", ObjectClass::Control, b"other")
            .unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(store.get("a/b/c.obj").unwrap(), b"hello");
    }

    #[test]
    fn an_abandoned_object_takes_its_empty_directory_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put("keep/x", ObjectClass::Control, b"x").unwrap();
        let mut obj = store
            .create("a/archives/ID/0.archive", ObjectClass::Archive, None)
            .unwrap();
        obj.write_all(b"half").unwrap();
        drop(obj);
        assert!(
            !dir.path().join("a/archives/ID").exists(),
            "no empty archive directory left"
        );
        assert!(dir.path().join("keep/x").exists());
    }

    #[test]
    fn dropped_and_crashed_writes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut obj = store.create("x/y.obj", ObjectClass::Archive, None).unwrap();
        obj.write_all(b"partial").unwrap();
        drop(obj);
        assert!(!dir.path().join("x").exists(), "nothing, not even its directory");
        // A crash leaves the temp file: simulate with mem::forget.
        let mut obj = store.create("x/z.obj", ObjectClass::Archive, None).unwrap();
        obj.write_all(b"partial").unwrap();
        obj.flush().unwrap();
        std::mem::forget(obj);
        assert_eq!(fs::read_dir(dir.path().join("x")).unwrap().count(), 1);
        assert!(store.list("x/").unwrap().is_empty());
        assert_eq!(store.clean_pending("x/").unwrap(), 1);
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn prefixes_are_the_directories_holding_committed_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .put("p/repository.json", ObjectClass::Control, b"{}")
            .unwrap();
        store
            .put("p/web1/etc/snapshots/a.manifest", ObjectClass::Control, b"m")
            .unwrap();
        store
            .put("p/web2/audit/t/1-1.jsonl", ObjectClass::Control, b"l")
            .unwrap();
        let mut pending = store
            .create("p/web3/etc/archives/x/0.archive", ObjectClass::Archive, None)
            .unwrap();
        pending.write_all(b"half").unwrap();
        pending.flush().unwrap();
        fs::create_dir_all(dir.path().join("p/empty/dir")).unwrap();
        assert_eq!(store.list_prefixes("p/").unwrap(), ["p/web1/", "p/web2/"]);
        assert_eq!(store.list_prefixes("").unwrap(), ["p/"]);
        assert_eq!(store.list_prefixes("p/web1/").unwrap(), ["p/web1/etc/"]);
        assert_eq!(store.list_prefixes("p/web").unwrap(), ["p/web1/", "p/web2/"]);
        assert!(store.list_prefixes("q/").unwrap().is_empty());
        drop(pending);
    }

    #[test]
    fn a_slice_of_a_listing_is_the_listing_between_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let names = ["p/a/1", "p/a/2", "p/a.b/1", "p/b/1/x", "p/b/2", "p/c", "p/d/1"];
        for name in names {
            store.put(name, ObjectClass::Control, b"x").unwrap();
        }
        let slice = |after: Option<&str>, before: Option<&str>| -> Vec<String> {
            let got: Vec<String> = store
                .list_between("p/", after, before)
                .unwrap()
                .into_iter()
                .map(|o| o.name)
                .collect();
            let mut want: Vec<String> = names
                .iter()
                .filter(|n| super::super::in_between(n, after, before))
                .map(|n| n.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "after {after:?}, before {before:?}");
            got
        };
        assert_eq!(slice(None, None).len(), 7);
        assert_eq!(slice(Some("p/a."), Some("p/b/")), ["p/a.b/1", "p/a/1", "p/a/2"]);
        assert_eq!(slice(Some("p/a/1"), Some("p/b/2")), ["p/a/2", "p/b/1/x"]);
        assert_eq!(slice(Some("p/b."), None), ["p/b/1/x", "p/b/2", "p/c", "p/d/1"]);
        assert_eq!(slice(None, Some("p/a/")), ["p/a.b/1"]);
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        let store = LocalStore::new("/nonexistent");
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/.x.pending-1"] {
            assert!(store.open(bad).is_err(), "{bad:?}");
        }
    }
}
