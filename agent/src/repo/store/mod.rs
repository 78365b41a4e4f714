//! Object stores: where sealed objects live.
//!
//! An [`ObjectStore`] holds immutable objects under `/`-separated names. It
//! is written through [`PendingObject`]s: bytes stream in, and the object
//! appears under its name only at [`PendingObject::commit`], atomically and
//! durably. A pending object that is dropped or aborted leaves nothing under
//! its name. That is what lets a snapshot commit by writing its manifest last.
//!
//! The trait is synchronous: the pipeline that feeds it runs on blocking
//! threads. [`local`] is a directory on disk; the S3 store implements the
//! same trait.

pub mod local;
pub mod memory;
pub mod s3;

use std::io::{self, Read, Write};

/// How an object will be used; stores may place the classes differently
/// (S3: archive objects get the tier tag and storage class, control objects
/// stay in STANDARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectClass {
    /// Bulk archive data, read only to restore or verify.
    Archive,
    /// Small objects read to list, plan and prune: manifests, markers.
    Control,
}

/// What a listing or commit reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full object name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When the store recorded the object (S3: `LastModified` of its
    /// current version; a local repository: the file's mtime, which copies
    /// with `cp -a` and `rsync -a` keep). Set by listings; `None` where a
    /// store does not say (and in what a commit returns). This, not the
    /// time a client wrote into a name, orders snapshots.
    pub modified: Option<jiff::Timestamp>,
}

/// Object Lock retention (S3 Object Lock): the object version cannot be
/// deleted or overwritten before `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `GOVERNANCE` (privileged users may lift it) or `COMPLIANCE` (nobody can).
    pub mode: String,
    /// RFC 3339 time the lock ends.
    pub until: jiff::Timestamp,
}

/// Where an archived (Glacier) object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thaw {
    /// Readable now: not in an archive storage class.
    Readable,
    /// In GLACIER or DEEP_ARCHIVE and no restore was requested.
    Frozen,
    /// A restore was requested and is still running.
    InProgress,
    /// A restored copy is readable until `expiry` (as the server says it).
    Restored {
        /// When the restored copy goes away.
        expiry: Option<String>,
    },
}

/// What a HEAD reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Storage class, when the store has them (`STANDARD`, `GLACIER`, …).
    pub storage_class: Option<String>,
    /// Whether it can be read now.
    pub thaw: Thaw,
    /// Its Object Lock retention, if any.
    pub retention: Option<Retention>,
}

/// The answer to a restore (thaw) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreRequest {
    /// A new restore was started.
    Started,
    /// One was running already (not requested again).
    AlreadyInProgress,
    /// The object is readable already (not archived, or restored).
    NotNeeded,
}

/// Errors with a meaning callers act on. Other failures are plain `io::Error`s
/// with context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object has this name.
    #[error("object {name} does not exist in {store}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The store, described.
        store: String,
    },
    /// An object with this name exists already (objects are never replaced).
    #[error("object {name} already exists in {store}")]
    AlreadyExists {
        /// The name.
        name: String,
        /// The store, described.
        store: String,
    },
}

/// Writing into a store failed, and the store is at fault (full, read-only,
/// not the running user's), whatever was being written into it: the
/// message names the store and the file, never the source being archived.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct StoreWriteError {
    /// The store, described (`local repository /srv/backups`).
    pub store: String,
    /// The file that could not be written.
    pub path: String,
    /// Why.
    pub reason: io::Error,
}

impl StoreWriteError {
    /// As an `io::Error` of the same kind, so callers that branch on the
    /// kind still can.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.reason.kind(), self)
    }

    fn describe(&self) -> String {
        if self.reason.kind() == io::ErrorKind::StorageFull {
            format!(
                "{} is full: cannot write {}: {}; free space there (`vaultline forget --apply` removes the \
                 snapshots the retention policies no longer keep) and run again",
                self.store, self.path, self.reason
            )
        } else {
            format!("{}: cannot write {}: {}", self.store, self.path, self.reason)
        }
    }
}

/// The [`StoreWriteError`] in an error chain, if a store write failed.
pub fn store_write_error(err: &anyhow::Error) -> Option<&StoreWriteError> {
    err.chain().find_map(|cause| {
        cause.downcast_ref::<StoreWriteError>().or_else(|| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<StoreWriteError>())
        })
    })
}

/// A place that stores named, immutable objects.
pub trait ObjectStore: Send + Sync {
    /// A human description for messages: `local repository /srv/backups`.
    fn describe(&self) -> String;

    /// Starts writing object `name`, locked with `retention` when given.
    /// Nothing is visible under `name` until the returned object is
    /// committed.
    fn create(
        &self,
        name: &str,
        class: ObjectClass,
        retention: Option<&Retention>,
    ) -> io::Result<Box<dyn PendingObject>>;

    /// Reads object `name` from the start. `StoreError::NotFound` (inside the
    /// `io::Error`) when it does not exist.
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>>;

    /// Reads bytes `start..end` of object `name` (`end` = None: to its end).
    fn open_range(&self, name: &str, start: u64, end: Option<u64>) -> io::Result<Box<dyn Read + Send>>;

    /// Size, storage class, thaw state and lock of object `name`.
    fn head(&self, name: &str) -> io::Result<ObjectMeta>;

    /// Removes object `name`. In a versioned bucket this hides it behind a
    /// delete marker; the lifecycle rules remove the noncurrent version.
    fn delete(&self, name: &str) -> io::Result<()>;

    /// Replaces a small control object (a re-wrapped manifest, the marker),
    /// atomically: readers see the old or the new object, never a mix. In a
    /// versioned bucket the old one stays as a noncurrent version; the new
    /// one gets `retention` when given.
    fn replace(&self, name: &str, bytes: &[u8], retention: Option<&Retention>) -> io::Result<ObjectInfo>;

    /// Whether objects can be locked (S3 Object Lock on the bucket).
    fn object_lock_enabled(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// Extends the Object Lock retention of an existing object to
    /// `retention` (never shortens it).
    fn extend_retention(&self, name: &str, retention: &Retention) -> io::Result<()> {
        let _ = retention;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: {name} cannot be locked: this store has no Object Lock",
                self.describe()
            ),
        ))
    }

    /// Asks for an archived object to be made readable for `days` days at
    /// retrieval `tier` (`Standard`, `Bulk`, `Expedited`).
    fn request_restore(&self, name: &str, days: u32, tier: &str) -> io::Result<RestoreRequest> {
        let _ = (days, tier);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: {name} cannot be thawed: this store has no archive storage classes",
                self.describe()
            ),
        ))
    }

    /// Every object whose name starts with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>>;

    /// The objects under `prefix` whose names sort strictly after `after`
    /// and strictly before `before` (each bound optional), sorted by name:
    /// a slice of [`ObjectStore::list`], so that a listing can be cut into
    /// slices listed side by side. S3 starts at `after` (StartAfter) and
    /// stops at the first page that reaches `before`, so the slices of one
    /// listing cost about the pages of the whole. This default filters
    /// the whole listing.
    fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> io::Result<Vec<ObjectInfo>> {
        let mut objects = self.list(prefix)?;
        objects.retain(|o| in_between(&o.name, after, before));
        Ok(objects)
    }

    /// The "directories" directly below `prefix` (empty, or ending in
    /// `/`): every distinct `prefix` + `NAME/` that some object's name
    /// starts with, sorted. S3 answers this with a delimiter listing, a
    /// page per thousand names however many objects lie below them, which
    /// is how the fleet view finds the hosts of a bucket without listing
    /// their objects. This default derives it from [`ObjectStore::list`].
    fn list_prefixes(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(prefixes_below(
            prefix,
            self.list(prefix)?.iter().map(|o| o.name.as_str()),
        ))
    }

    /// Removes leftovers of writes that never committed under `prefix`
    /// (a crashed run). Callers hold the lock that excludes live writers.
    fn clean_pending(&self, prefix: &str) -> io::Result<usize>;

    /// Writes a small object in one go.
    fn put(&self, name: &str, class: ObjectClass, bytes: &[u8]) -> io::Result<ObjectInfo> {
        let mut obj = self.create(name, class, None)?;
        obj.write_all(bytes)?;
        obj.commit()
    }

    /// Reads a whole object; for small objects only.
    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open(name)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// An object being written.
pub trait PendingObject: Write + Send {
    /// Publishes the object under its name, durably; fails if the name is
    /// taken. Returns its final size. Dropping a pending object without
    /// committing it discards everything written.
    fn commit(self: Box<Self>) -> io::Result<ObjectInfo>;
}

/// Whether `name` sorts strictly between `after` and `before` (each bound
/// optional).
pub fn in_between(name: &str, after: Option<&str>, before: Option<&str>) -> bool {
    after.is_none_or(|a| name > a) && before.is_none_or(|b| name < b)
}

/// The distinct `prefix` + `NAME/` that `names` (all starting with
/// `prefix`) lie below, sorted.
pub fn prefixes_below<'a>(prefix: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?;
            let dir = rest.split_once('/')?.0;
            Some(format!("{prefix}{dir}/"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// True when `err` is (or wraps) [`StoreError::NotFound`].
pub fn is_not_found(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|e| matches!(e.downcast_ref::<StoreError>(), Some(StoreError::NotFound { .. })))
}
