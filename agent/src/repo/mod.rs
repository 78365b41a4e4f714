//! The repository: what is stored where, and opening it with its identity
//! checked.
//!
//! This module holds the layout (object names, the repository marker,
//! snapshot ids) and [`Repo::open_sealed`]; below it:
//!
//! - [`manifest`]: the snapshot manifest format (writer and streaming reader);
//! - [`store`]: object stores, [`store::local`] (a directory) and
//!   [`store::s3`] (a bucket), behind one [`store::ObjectStore`] trait;
//! - [`retention`]: which snapshots a retention policy keeps, and why;
//! - [`lock`]: one run per job at a time.
//!
//! Uses: `keys` (only to compare key ids), `cloud` (the S3 client, through
//! `store::s3`), `error`. Knows nothing of walking files, commands or output.
//!
//! Layout, under the configured prefix:
//!
//! ```text
//! PREFIX/repository.json                          marker: format, key provider and key id (plain JSON)
//! PREFIX/HOST/JOB/archives/SNAPSHOT/N.archive     sealed tar.zst, written first
//! PREFIX/HOST/JOB/nodes/SNAPSHOT.nodes           sealed segments of the tree listing a run wrote (shared by later snapshots)
//! PREFIX/HOST/JOB/snapshots/SNAPSHOT.manifest     sealed manifest, written last: the commit point
//! PREFIX/HOST/audit/TRAIL/FIRST-LAST.jsonl        a shipped segment of a host's audit trail (plain JSON lines)
//! ```
//!
//! A snapshot exists exactly when its manifest exists. Every sealed object's
//! encryption context names host, job, snapshot, kind and object name, and
//! [`Repo::open_sealed`] refuses an object whose authenticated context is not
//! the one its name implies, so an archive copied over another snapshot's
//! archive is caught as such.

pub mod lock;
pub mod manifest;
pub mod retention;
pub mod store;

use std::io::{self, BufReader, Read};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use vaultline_crypto::{DataKey, EncryptionContext, Header, KeyEnvelope, KeyWrap, SealedReader};

use crate::error::{IntegrityError, UsageError};
use crate::repo::store::{ObjectClass, ObjectInfo, ObjectStore, Retention, is_not_found};

/// Version of the repository layout: 2 since manifests carry whole trees,
/// frame tables and offsets (schema 2) and archives are framed. A
/// repository of version 1 (no releases were made with it) is refused up
/// front rather than failing at its first manifest.
pub const REPOSITORY_VERSION: u32 = 2;
/// Buffer for reading objects: holds several 64 KiB chunks, so the sealed
/// reader usually decrypts straight from it.
pub const READ_BUFFER: usize = 1 << 20;

/// The plain-JSON marker written by `init`. It lets every command say early
/// and clearly when the configured key is not the repository's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoMarker {
    /// Always [`REPOSITORY_VERSION`] for now.
    pub vaultline_repository: u32,
    /// Key provider id (`local`, `aws-kms`).
    pub key_provider: String,
    /// The key id: the local key's fingerprint, or the KMS key ARN.
    pub key_id: String,
    /// When the repository was created (RFC 3339).
    pub created: String,
}

/// What kind of sealed object; part of every encryption context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tar.zst archive.
    Archive,
    /// A snapshot manifest.
    Manifest,
    /// A node pack: segments of tree listings.
    Nodes,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Archive => "archive",
            Kind::Manifest => "manifest",
            Kind::Nodes => "nodes",
        }
    }
}

/// A repository: a store plus the layout.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// How far the time a snapshot id claims may run ahead of the time the
/// repository recorded its manifest before the snapshot is treated as
/// future-dated. Runs take time, so a real id is older than its manifest;
/// 15 minutes is also how far S3 lets a client's clock drift before it
/// refuses the client's signed requests (RequestTimeTooSkewed).
pub const FUTURE_TOLERANCE: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);

/// A committed snapshot found by listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// Host that made it.
    pub host: String,
    /// Job it belongs to.
    pub job: String,
    /// Its id.
    pub id: String,
    /// Size of its manifest object.
    pub manifest_size: u64,
    /// When the repository recorded its manifest (the listing's time), if
    /// the store says.
    pub recorded: Option<jiff::Timestamp>,
}

impl SnapshotRef {
    /// The time its id claims (the client's clock when the run started).
    pub fn claimed(&self) -> jiff::Timestamp {
        snapshot_timestamp(&self.id)
    }

    /// When the snapshot was taken, as far as the repository can vouch for
    /// it: the time its id claims, but never later than the time the
    /// repository recorded its manifest. A client can make a snapshot look
    /// older than it is, never newer. Snapshots are ordered by this (ties
    /// by id), and retention periods count it.
    pub fn time(&self) -> jiff::Timestamp {
        match self.recorded {
            Some(r) => r.min(self.claimed()),
            None => self.claimed(),
        }
    }

    /// True when its id claims a time more than [`FUTURE_TOLERANCE`] after
    /// the repository recorded it: a client clock far ahead, or a planted
    /// snapshot trying to become "latest". Such snapshots are listed as
    /// future-dated and ignored by `latest`, `forget` and incremental runs.
    pub fn future_dated(&self) -> bool {
        self.recorded.is_some_and(|r| {
            r.checked_add(FUTURE_TOLERANCE)
                .is_ok_and(|limit| self.claimed() > limit)
        })
    }

    /// Why it is future-dated, for a warning.
    pub fn future_note(&self) -> String {
        format!(
            "snapshot {} of job {} claims {} but the repository recorded it at {}: future-dated (a clock \
             ahead, or a planted snapshot), ignored",
            self.id,
            self.job,
            self.claimed(),
            self.recorded.map_or_else(|| "?".to_string(), |r| r.to_string())
        )
    }
}

impl Repo {
    /// A repository in `store` under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Repo {
            store,
            prefix: prefix.to_string(),
        }
    }

    /// The same store under another prefix.
    pub fn with_prefix(&self, prefix: &str) -> Repo {
        Repo::new(Arc::clone(&self.store), prefix)
    }

    /// The prefix everything is under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying store.
    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Name of the repository marker.
    pub fn marker_name(&self) -> String {
        self.join("repository.json")
    }

    /// Prefix of everything the repository holds: `PREFIX/` (empty when
    /// the repository is the whole bucket).
    pub fn root_prefix(&self) -> String {
        self.join("")
    }

    /// Prefix of everything one host stores: its jobs and audit trails.
    pub fn host_prefix(&self, host: &str) -> String {
        self.join(&format!("{host}/"))
    }

    /// Every host with objects in the repository, sorted: the names one
    /// level below the prefix, found with a delimiter listing (a page per
    /// thousand hosts, however many objects they hold).
    pub fn list_hosts(&self) -> Result<Vec<String>> {
        let root = self.root_prefix();
        let dirs = self
            .store
            .list_prefixes(&root)
            .with_context(|| format!("cannot list the hosts in {}", self.store.describe()))?;
        Ok(dirs
            .iter()
            .filter_map(|d| d.strip_prefix(&root)?.strip_suffix('/'))
            .map(str::to_string)
            .collect())
    }

    /// The committed snapshot `object` is the manifest of, when it is one
    /// (a listing entry under [`Repo::host_prefix`] of `host`).
    pub fn snapshot_in_listing(&self, host: &str, object: &ObjectInfo) -> Option<SnapshotRef> {
        let rest = object.name.strip_prefix(&self.host_prefix(host))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if let [job, "snapshots", file] = parts[..]
            && let Some(id) = file.strip_suffix(".manifest")
            && valid_snapshot_id(id)
        {
            return Some(SnapshotRef {
                host: host.to_string(),
                job: job.to_string(),
                id: id.to_string(),
                manifest_size: object.size,
                recorded: object.modified,
            });
        }
        None
    }

    /// Prefix of everything one job of one host stores.
    pub fn job_prefix(&self, host: &str, job: &str) -> String {
        self.join(&format!("{host}/{job}/"))
    }

    /// Name of a snapshot's manifest.
    pub fn manifest_name(&self, host: &str, job: &str, id: &str) -> String {
        self.join(&format!("{host}/{job}/snapshots/{id}.manifest"))
    }

    /// Name of a segment of audit trail `trail` holding lines `first..=last`.
    pub fn audit_segment_name(&self, host: &str, trail: &str, first: u64, last: u64) -> String {
        self.join(&format!("{host}/audit/{trail}/{first:012}-{last:012}.jsonl"))
    }

    /// Name of the node pack a snapshot wrote.
    pub fn nodes_name(&self, host: &str, job: &str, id: &str) -> String {
        self.join(&format!("{host}/{job}/nodes/{id}.nodes"))
    }

    /// Name of a snapshot's archive number `n`.
    pub fn archive_name(&self, host: &str, job: &str, id: &str, n: u32) -> String {
        self.join(&format!("{host}/{job}/archives/{id}/{n}.archive"))
    }

    /// The marker, or `None` when the repository was never initialized.
    pub fn read_marker(&self) -> Result<Option<RepoMarker>> {
        let name = self.marker_name();
        match self.store.get(&name) {
            Ok(bytes) => {
                let marker = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "repository marker {name} in {} is not valid",
                        self.store.describe()
                    )
                })?;
                Ok(Some(marker))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the marker of {}", self.store.describe())),
        }
    }

    /// Writes the marker (only ever once).
    pub fn write_marker(&self, marker: &RepoMarker) -> Result<()> {
        self.store
            .put(&self.marker_name(), ObjectClass::Control, &marker_bytes(marker)?)?;
        Ok(())
    }

    /// Replaces the marker (`rewrap` switching keys), keeping `retention`.
    pub fn replace_marker(&self, marker: &RepoMarker, retention: Option<&Retention>) -> Result<()> {
        let name = self.marker_name();
        self.store
            .replace(&name, &marker_bytes(marker)?, retention)
            .with_context(|| format!("cannot replace the repository marker {name}"))?;
        Ok(())
    }

    /// Checks the repository exists and was made for `keys`: the early, clear
    /// form of "sealed with key X, you have key Y".
    pub fn check_key(&self, keys: &dyn KeyWrap) -> Result<RepoMarker> {
        let Some(marker) = self.read_marker()? else {
            return Err(UsageError(format!(
                "no vaultline repository in {} (no {}); run `vaultline init` first",
                self.store.describe(),
                self.marker_name()
            ))
            .into());
        };
        if marker.vaultline_repository != REPOSITORY_VERSION {
            bail!(
                "repository {} has layout version {}; this vaultline reads version {REPOSITORY_VERSION}",
                self.store.describe(),
                marker.vaultline_repository
            );
        }
        let same_key = marker.key_id == keys.key_id()
            || (marker.key_provider == crate::keys::kms::PROVIDER
                && crate::keys::kms::same_multi_region_key(&marker.key_id, keys.key_id()));
        if marker.key_provider != keys.provider_id() || !same_key {
            // A local key can only come back from the operator's key backup.
            let hint = if marker.key_provider == vaultline_crypto::LOCAL_PROVIDER {
                format!(
                    ": move the configured key aside and put key {} back from your key backup with `vaultline \
                     key import FILE`",
                    marker.key_id
                )
            } else {
                String::new()
            };
            return Err(UsageError(format!(
                "this repository was sealed with {} key {}, but the configured key is {} key {}{hint}",
                marker.key_provider,
                marker.key_id,
                keys.provider_id(),
                keys.key_id()
            ))
            .into());
        }
        Ok(marker)
    }

    /// The encryption context of an object.
    pub fn context(
        &self,
        host: &str,
        job: &str,
        snapshot: &str,
        kind: Kind,
        object: &str,
    ) -> Result<EncryptionContext> {
        Ok(EncryptionContext::new()
            .with("format", vaultline_crypto::FORMAT_VERSION.to_string())?
            .with("host", host)?
            .with("job", job)?
            .with("kind", kind.as_str())?
            .with("object", object)?
            .with("snapshot", snapshot)?)
    }

    /// Opens a sealed object, checks that its header's context is `expected`
    /// and unwraps its data key (from `envelope` when given, e.g. a manifest's
    /// current copy; else from the header). Returns a reader that yields only
    /// authenticated plaintext.
    pub fn open_sealed(
        &self,
        name: &str,
        keys: &dyn KeyWrap,
        expected: &EncryptionContext,
        envelope: Option<&KeyEnvelope>,
    ) -> Result<SealedReader<BufReader<Box<dyn Read + Send>>>> {
        let raw = self
            .store
            .open(name)
            .with_context(|| format!("cannot open {name}"))?;
        let mut input = BufReader::with_capacity(READ_BUFFER, raw);
        let (header, data_key) = self.unseal_header(name, &mut input, keys, expected, envelope)?;
        SealedReader::new(input, &header, &data_key).with_context(|| format!("object {name}"))
    }

    /// Reads a sealed object's header from `input`, checks its context is
    /// `expected` and unwraps the data key (from `envelope` when given).
    pub fn unseal_header(
        &self,
        name: &str,
        input: &mut impl Read,
        keys: &dyn KeyWrap,
        expected: &EncryptionContext,
        envelope: Option<&KeyEnvelope>,
    ) -> Result<(Header, DataKey)> {
        let header = Header::read_from(input).with_context(|| format!("object {name}: unreadable header"))?;
        if header.context() != expected {
            return Err(IntegrityError(format!(
                "object {name} is not what its name says: it was sealed as [{}], expected [{expected}] \
                 (an object was copied or moved under another name)",
                header.context()
            ))
            .into());
        }
        let envelope = envelope.unwrap_or(header.envelope());
        let data_key = keys
            .unwrap(envelope, header.context())
            .with_context(|| format!("object {name}: cannot unwrap its data key"))?;
        Ok((header, data_key))
    }

    /// Committed snapshots of `host`, for one job or all, oldest first by
    /// [`SnapshotRef::time`] (future-dated ones included: callers decide).
    pub fn list_snapshots(&self, host: &str, job: Option<&str>) -> Result<Vec<SnapshotRef>> {
        let prefix = match job {
            Some(j) => self.join(&format!("{host}/{j}/snapshots/")),
            None => self.join(&format!("{host}/")),
        };
        let objects: Vec<ObjectInfo> = self
            .store
            .list(&prefix)
            .with_context(|| format!("cannot list {}", self.store.describe()))?;
        let mut out: Vec<SnapshotRef> = objects
            .iter()
            .filter_map(|o| self.snapshot_in_listing(host, o))
            .collect();
        sort_snapshots(&mut out);
        Ok(out)
    }
}

/// Orders snapshots oldest first by [`SnapshotRef::time`], ties by id and
/// then job: the order every listing of snapshots is in.
pub fn sort_snapshots(snapshots: &mut [SnapshotRef]) {
    snapshots.sort_by(|a, b| {
        a.time()
            .cmp(&b.time())
            .then(a.id.cmp(&b.id))
            .then(a.job.cmp(&b.job))
    });
}

/// The marker as stored: pretty JSON and a newline.
fn marker_bytes(marker: &RepoMarker) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(marker)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A new snapshot id: the UTC time to the second and 8 random hex digits,
/// `20261122T103000Z-1a2b3c4d`, so ids sort by time and never collide.
pub fn new_snapshot_id() -> Result<String> {
    snapshot_id_at(jiff::Timestamp::now())
}

/// A snapshot id for a run that started at `now`: its second and
/// millisecond are the manifest's `started` (docs/FORMAT.md §12).
pub fn snapshot_id_at(now: jiff::Timestamp) -> Result<String> {
    // Three hex digits of milliseconds, then five random ones: ids of one
    // job sort by start time to the millisecond (its runs never overlap),
    // and stay unique across hosts and jobs.
    let millis = now.subsec_millisecond().clamp(0, 999) as u32;
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let random = u32::from_be_bytes(random) & 0xF_FFFF;
    Ok(format!(
        "{}-{millis:03x}{random:05x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
    ))
}

/// True for ids of the form [`new_snapshot_id`] makes.
pub fn valid_snapshot_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 25
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The time a snapshot id names (the second; ids carry milliseconds too,
/// in hex, after the dash). An id that passed [`valid_snapshot_id`] always
/// parses; anything else reads as the epoch.
pub fn snapshot_timestamp(id: &str) -> jiff::Timestamp {
    let parsed = (|| -> Option<jiff::Timestamp> {
        let num = |r: std::ops::Range<usize>| id.get(r)?.parse::<i16>().ok();
        let date = jiff::civil::Date::new(num(0..4)?, num(4..6)? as i8, num(6..8)? as i8).ok()?;
        let time =
            jiff::civil::Time::new(num(9..11)? as i8, num(11..13)? as i8, num(13..15)? as i8, 0).ok()?;
        let millis = id
            .get(17..20)
            .and_then(|m| i64::from_str_radix(m, 16).ok())
            .unwrap_or(0)
            .min(999);
        let at = date
            .to_datetime(time)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        at.checked_add(jiff::SignedDuration::from_millis(millis)).ok()
    })();
    parsed.unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The time a snapshot id names, as RFC 3339.
pub fn snapshot_time(id: &str) -> String {
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_sort_by_time_and_validate() {
        let id = new_snapshot_id().unwrap();
        assert!(valid_snapshot_id(&id), "{id}");
        assert!(valid_snapshot_id("20261122T103000Z-1a2b3c4d"));
        assert!(!valid_snapshot_id("20261122T103000Z-1A2B3C4D"));
        assert!(!valid_snapshot_id("../../etc/passwd"));
        assert!("20261122T103000Z-ffffffff" < "20261122T103001Z-00000000");
        assert_eq!(snapshot_time("20261122T103000Z-1a2b3c4d"), "2026-11-22T10:30:00Z");
        assert_eq!(
            snapshot_timestamp("20261122T103000Z-1a2b3c4d").to_string(),
            "2026-11-22T10:30:00.418Z",
            "the hex milliseconds (0x1a2) count"
        );
        assert_eq!(
            snapshot_timestamp("20261322T103000Z-1a2b3c4d"),
            jiff::Timestamp::UNIX_EPOCH
        );
    }

    fn snap(id: &str, recorded: Option<&str>) -> SnapshotRef {
        SnapshotRef {
            host: "h".into(),
            job: "j".into(),
            id: id.into(),
            manifest_size: 1,
            recorded: recorded.map(|r| r.parse().unwrap()),
        }
    }

    #[test]
    fn the_repository_time_caps_what_an_id_claims() {
        let honest = snap("20261122T103000Z-00000000", Some("2026-11-22T10:31:10Z"));
        assert_eq!(honest.time().to_string(), "2026-11-22T10:30:00Z");
        assert!(!honest.future_dated());
        let skewed = snap("20261122T104400Z-00000000", Some("2026-11-22T10:31:10Z"));
        assert!(
            !skewed.future_dated(),
            "a clock within the tolerance is not future-dated"
        );
        assert_eq!(skewed.time().to_string(), "2026-11-22T10:31:10Z");
        let planted = snap("20960101T000000Z-00000000", Some("2026-11-22T10:31:10Z"));
        assert!(planted.future_dated());
        assert_eq!(
            planted.time().to_string(),
            "2026-11-22T10:31:10Z",
            "never newer than recorded"
        );
        let unknown = snap("20960101T000000Z-00000000", None);
        assert!(!unknown.future_dated());
    }

    #[test]
    fn snapshot_ids_sort_by_start_time_to_the_millisecond() {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(new_snapshot_id().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "ids made 2 ms apart sort in creation order");
    }
}
