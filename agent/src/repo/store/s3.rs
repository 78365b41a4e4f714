//! The S3 store: objects in a bucket, written by multipart upload in bounded
//! memory.
//!
//! Writing: bytes fill a part buffer; each full buffer is hashed (SHA-256,
//! sent as the part's checksum, which S3 verifies) and uploaded while the
//! next one fills. At most `parts-in-flight` parts are in the air, so memory
//! is `(parts-in-flight + 1) × part size`; buffers come back to a small pool
//! once their part is acknowledged. Part sizes start at `part-size-mib` and
//! double every 900 parts, so any archive S3 accepts (5 TiB) fits in the
//! 10,000-part limit while ordinary archives keep small buffers (see
//! [`part_size`]). An object smaller than one part is a single PutObject.
//!
//! Nothing is visible under the name until `commit` completes the upload
//! (`If-None-Match: *`: an existing object is never replaced). Any failure,
//! and dropping an uncommitted object, aborts the multipart upload so no
//! parts are left behind; parts orphaned by a killed process are aborted by
//! [`S3Store::clean_pending`] at the start of the job's next run.
//!
//! Archive objects get the configured storage class and tier tag; control
//! objects (manifests, the marker) are always STANDARD and untagged.
//!
//! Reading streams the object; when the connection breaks mid-body, the
//! reader resumes with a ranged GET pinned to the same ETag, within the
//! retry budget.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode, StorageClass,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use vaultline_config::{Aws, S3Repository};

use super::{
    ObjectClass, ObjectInfo, ObjectMeta, ObjectStore, PendingObject, RestoreRequest, Retention, StoreError,
    Thaw,
};
use crate::cloud::aws::{block_on, describe, error_code, runtime, source_chain};

/// S3's limit on parts per upload.
pub const MAX_PARTS: i32 = 10_000;
/// S3's limit on one part.
const MAX_PART_SIZE: u64 = 5 << 30;
/// Parts per size step: part sizes double after every this many parts.
const PARTS_PER_STEP: i32 = 900;

/// The size of part `n` (1-based) for a first part size of `base`: `base`
/// for parts 1–900, `2 × base` for 901–1800, and so on, capped at 5 GiB.
/// With the default 8 MiB, archives up to 7 GiB use 8 MiB parts; 10,000
/// parts hold over 5 TiB (S3's object limit) even from a 5 MiB start.
pub fn part_size(base: u64, n: i32) -> u64 {
    let step = ((n.max(1) - 1) / PARTS_PER_STEP) as u32;
    base.saturating_mul(1u64 << step.min(20)).min(MAX_PART_SIZE)
}

/// An S3 bucket as an object store.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    settings: S3Repository,
    /// Attempts for resuming a broken download.
    max_attempts: u32,
    /// Per-attempt timeout for small requests; parts get more (see `part_timeout`).
    timeout_secs: u64,
}

impl S3Store {
    /// A store over `settings.bucket` using `client`, with the retry budget
    /// and timeouts of `aws`.
    pub fn new(client: Client, mut settings: S3Repository, aws: &Aws) -> Self {
        settings.parts_in_flight = settings.parts_in_flight.max(1);
        settings.part_size = settings.part_size.max(5 << 20);
        S3Store {
            inner: Arc::new(Inner {
                client,
                bucket: settings.bucket.clone(),
                settings,
                max_attempts: aws.max_attempts.max(1),
                timeout_secs: aws.timeout_secs,
            }),
        }
    }
}

impl S3Store {
    /// An object's current retention: GetObjectRetention (allowed to the
    /// write-only backup role, which cannot HEAD archives), else HEAD.
    fn retention_of(&self, name: &str) -> io::Result<Option<Retention>> {
        let inner = &self.inner;
        let req = inner
            .client
            .get_object_retention()
            .bucket(&inner.bucket)
            .key(name);
        match block_on(req.send()).map_err(io_err)? {
            Ok(out) => {
                let r = out.retention();
                retention_from(
                    r.and_then(|r| r.mode()).map(|m| m.as_str()),
                    r.and_then(|r| r.retain_until_date()),
                )
                .map_err(|e| io::Error::other(format!("GetObjectRetention {}: {e}", inner.url(name))))
            }
            Err(e) if error_code(&e).as_deref() == Some("NoSuchObjectLockConfiguration") => Ok(None),
            Err(e) => {
                tracing::debug!(
                    "GetObjectRetention {}: {}; asking HEAD",
                    inner.url(name),
                    describe(&e)
                );
                Ok(self.head(name)?.retention)
            }
        }
    }
}

impl Inner {
    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// `vaultline-tier=archive`, URL-encoded as the Tagging header wants it.
    fn tagging(&self) -> String {
        let t = &self.settings.tier_tag;
        format!("{}={}", url_encode(&t.key), url_encode(&t.value))
    }

    fn storage_class(&self, class: ObjectClass) -> StorageClass {
        match class {
            ObjectClass::Archive => StorageClass::from(self.settings.storage_class.as_str()),
            ObjectClass::Control => StorageClass::Standard,
        }
    }

    fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id);
        match block_on(req.send())? {
            Ok(_) => Ok(()),
            // Already gone (completed or aborted by someone else): nothing left over.
            Err(e) if error_code(&e).as_deref() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(anyhow!(
                "AbortMultipartUpload {} (upload {upload_id}): {}",
                self.url(key),
                describe(&e)
            )),
        }
    }
}

/// Reads S3's `x-amz-restore` header: `ongoing-request="true"`, or
/// `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`.
fn parse_restore_header(value: &str) -> Thaw {
    if value.contains("ongoing-request=\"true\"") {
        return Thaw::InProgress;
    }
    let expiry = value
        .split_once("expiry-date=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(date, _)| date.to_string());
    Thaw::Restored { expiry }
}

/// A retention as S3 reports it (mode and date, both or neither).
fn retention_from(
    mode: Option<&str>,
    until: Option<&aws_smithy_types::DateTime>,
) -> Result<Option<Retention>, jiff::Error> {
    let (Some(mode), Some(until)) = (mode, until) else {
        return Ok(None);
    };
    Ok(Some(Retention {
        mode: mode.to_string(),
        until: jiff::Timestamp::from_second(until.secs())?,
    }))
}

/// The Object Lock headers that set `r` on an upload.
fn lock_headers(r: &Retention) -> (ObjectLockMode, aws_smithy_types::DateTime) {
    (
        ObjectLockMode::from(r.mode.as_str()),
        aws_smithy_types::DateTime::from_secs(r.until.as_second()),
    )
}

fn io_err(e: anyhow::Error) -> io::Error {
    io::Error::other(format!("{e:#}"))
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sha256_b64(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(Sha256::digest(data))
}

/// Keys asked for per ListObjectsV2 page: S3's own maximum (and default).
const MAX_KEYS_PER_PAGE: i32 = 1000;

/// Pages a listing may take. A server can keep a listing going forever
/// with fresh continuation tokens, so some bound is needed; this one is far
/// above any repository vaultline writes: 10,000 full pages are ten million
/// objects under one prefix, while a job backing up every hour adds about
/// three (manifest, archive, audit segment), 26,000 a year. The listing is
/// held in memory (about 150 bytes an object for vaultline's names), so the
/// bound also caps what a listing can cost.
const MAX_LIST_PAGES: usize = 10_000;

/// The continuation tokens of one listing so far. A server that hands back
/// a token it gave before would make the listing loop forever; one that
/// says "truncated" without a token would make it end early, and callers
/// act on what is missing from a listing (`forget` deletes archives no
/// listed manifest refers to), so both are errors.
#[derive(Default)]
struct Pages {
    /// SHA-256 of every token seen: a server choosing huge tokens cannot
    /// make remembering them expensive.
    seen: std::collections::HashSet<[u8; 32]>,
    count: usize,
}

impl Pages {
    /// The token for the next page after one that said `truncated` and
    /// `token`; `None` when the listing is complete.
    fn next(&mut self, truncated: bool, token: Option<&str>) -> Result<Option<String>, String> {
        self.count += 1;
        if !truncated {
            return Ok(None);
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(
                "the server said the listing is truncated but gave no continuation token: \
                        refusing an incomplete listing"
                    .to_string(),
            );
        };
        let shown: String = token.chars().take(100).collect();
        if !self.seen.insert(Sha256::digest(token.as_bytes()).into()) {
            return Err(format!(
                "the server repeated continuation token {shown:?}: refusing to list forever"
            ));
        }
        if self.count >= MAX_LIST_PAGES {
            return Err(format!(
                "the listing did not end after {MAX_LIST_PAGES} pages: refusing to list forever"
            ));
        }
        Ok(Some(token.to_string()))
    }
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        match &self.inner.settings.endpoint {
            Some(url) => format!("S3 bucket {} at {url}", self.inner.bucket),
            None => format!("S3 bucket {}", self.inner.bucket),
        }
    }

    fn create(
        &self,
        name: &str,
        class: ObjectClass,
        retention: Option<&Retention>,
    ) -> io::Result<Box<dyn PendingObject>> {
        let mut pending = S3Pending::new(self.inner.clone(), name, class);
        pending.retention = retention.cloned();
        Ok(Box::new(pending))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_range(name, 0, None)
    }

    fn open_range(&self, name: &str, start: u64, end: Option<u64>) -> io::Result<Box<dyn Read + Send>> {
        let mut reader = S3Reader {
            inner: self.inner.clone(),
            key: name.to_string(),
            etag: None,
            body: None,
            chunk: Bytes::new(),
            pos: start,
            end,
            attempts_left: self.inner.max_attempts,
            started: false,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Box::new(io::empty()));
        }
        reader.request()?;
        Ok(Box::new(reader))
    }

    fn head(&self, name: &str) -> io::Result<ObjectMeta> {
        let inner = &self.inner;
        let req = inner.client.head_object().bucket(&inner.bucket).key(name);
        let out = match block_on(req.send()).map_err(io_err)? {
            Ok(out) => out,
            Err(e) => {
                if matches!(error_code(&e).as_deref(), Some("NoSuchKey" | "NotFound"))
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
                {
                    return Err(io::Error::other(StoreError::NotFound {
                        name: name.to_string(),
                        store: format!("bucket {}", inner.bucket),
                    }));
                }
                return Err(io::Error::other(format!(
                    "HeadObject {}: {}",
                    inner.url(name),
                    describe(&e)
                )));
            }
        };
        let storage_class = out.storage_class().map(|c| c.as_str().to_string());
        let archived = matches!(storage_class.as_deref(), Some("GLACIER" | "DEEP_ARCHIVE"));
        let thaw = match (archived, out.restore()) {
            (false, _) => Thaw::Readable,
            (true, None) => Thaw::Frozen,
            (true, Some(r)) => parse_restore_header(r),
        };
        let retention = retention_from(
            out.object_lock_mode().map(|m| m.as_str()),
            out.object_lock_retain_until_date(),
        )
        .map_err(|e| io::Error::other(format!("HeadObject {}: {e}", inner.url(name))))?;
        // A legal hold protects a version with no end date: to `forget` it
        // is a lock that never expires by itself.
        let retention = match out.object_lock_legal_hold_status() {
            Some(s) if s.as_str() == "ON" => Some(Retention {
                mode: "LEGAL HOLD".to_string(),
                until: jiff::Timestamp::MAX,
            }),
            _ => retention,
        };
        Ok(ObjectMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            storage_class,
            thaw,
            retention,
        })
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        let inner = &self.inner;
        let req = inner.client.delete_object().bucket(&inner.bucket).key(name);
        block_on(req.send())
            .map_err(io_err)?
            .map_err(|e| io::Error::other(format!("DeleteObject {}: {}", inner.url(name), describe(&e))))?;
        Ok(())
    }

    fn replace(&self, name: &str, bytes: &[u8], retention: Option<&Retention>) -> io::Result<ObjectInfo> {
        let inner = &self.inner;
        let mut req = inner
            .client
            .put_object()
            .bucket(&inner.bucket)
            .key(name)
            .content_length(bytes.len() as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256_b64(bytes))
            .storage_class(StorageClass::Standard)
            .body(ByteStream::from(bytes.to_vec()));
        if let Some((mode, until)) = retention.map(lock_headers) {
            req = req.object_lock_mode(mode).object_lock_retain_until_date(until);
        }
        block_on(req.send())
            .map_err(io_err)?
            .map_err(|e| io::Error::other(format!("PutObject {}: {}", inner.url(name), describe(&e))))?;
        Ok(ObjectInfo {
            name: name.to_string(),
            size: bytes.len() as u64,
            modified: None,
        })
    }

    fn object_lock_enabled(&self) -> io::Result<bool> {
        let inner = &self.inner;
        let req = inner.client.get_object_lock_configuration().bucket(&inner.bucket);
        match block_on(req.send()).map_err(io_err)? {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled")),
            Err(e) if error_code(&e).as_deref() == Some("ObjectLockConfigurationNotFoundError") => Ok(false),
            Err(e) => Err(io::Error::other(format!(
                "GetObjectLockConfiguration s3://{}: {}",
                inner.bucket,
                describe(&e)
            ))),
        }
    }

    fn extend_retention(&self, name: &str, retention: &Retention) -> io::Result<()> {
        use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
        let current = self.retention_of(name)?;
        if current.as_ref().is_some_and(|c| c.until >= retention.until) {
            return Ok(());
        }
        let inner = &self.inner;
        let req = inner
            .client
            .put_object_retention()
            .bucket(&inner.bucket)
            .key(name)
            .retention(
                ObjectLockRetention::builder()
                    .mode(ObjectLockRetentionMode::from(retention.mode.as_str()))
                    .retain_until_date(lock_headers(retention).1)
                    .build(),
            );
        block_on(req.send()).map_err(io_err)?.map_err(|e| {
            io::Error::other(format!(
                "PutObjectRetention {}: {}",
                inner.url(name),
                describe(&e)
            ))
        })?;
        Ok(())
    }

    fn request_restore(&self, name: &str, days: u32, tier: &str) -> io::Result<RestoreRequest> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest as S3Restore, Tier};
        let inner = &self.inner;
        let request = S3Restore::builder()
            .days(days as i32)
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::from(tier))
                    .build()
                    .map_err(|e| io::Error::other(e.to_string()))?,
            )
            .build();
        let req = inner
            .client
            .restore_object()
            .bucket(&inner.bucket)
            .key(name)
            .restore_request(request);
        match block_on(req.send()).map_err(io_err)? {
            // 202 Accepted: started; 200 OK: a restored copy exists already.
            Ok(_) => Ok(RestoreRequest::Started),
            Err(e) => match error_code(&e).as_deref() {
                Some("RestoreAlreadyInProgress") => Ok(RestoreRequest::AlreadyInProgress),
                Some("InvalidObjectState") => Ok(RestoreRequest::NotNeeded),
                _ => Err(io::Error::other(format!(
                    "RestoreObject {} ({tier}, {days} days): {}",
                    inner.url(name),
                    describe(&e)
                ))),
            },
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.list_between(prefix, None, None)
    }

    fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> io::Result<Vec<ObjectInfo>> {
        let inner = &self.inner;
        let refuse = |why: String| io::Error::other(format!("ListObjectsV2 {}: {why}", inner.url(prefix)));
        let mut out = Vec::new();
        let mut pages = Pages::default();
        let mut token: Option<String> = None;
        let mut last_key: Option<String> = None;
        loop {
            // StartAfter for the first page; the token carries on from there.
            let start_after = if token.is_none() { after } else { None };
            let req = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(prefix)
                .max_keys(MAX_KEYS_PER_PAGE)
                .set_start_after(start_after.map(str::to_string))
                .set_continuation_token(token.take());
            let page = block_on(req.send()).map_err(io_err)?.map_err(|e| {
                io::Error::other(format!("ListObjectsV2 {}: {}", inner.url(prefix), describe(&e)))
            })?;
            if page.contents().len() > MAX_KEYS_PER_PAGE as usize {
                return Err(refuse(format!(
                    "the server sent {} keys in one page, more than the {MAX_KEYS_PER_PAGE} asked for",
                    page.contents().len()
                )));
            }
            let mut reached_end = false;
            for obj in page.contents() {
                let key = obj.key().unwrap_or_default();
                // Callers take names apart after the prefix; a name outside
                // it is a server answering another question (or lying).
                if !key.starts_with(prefix) {
                    return Err(refuse(format!(
                        "the server answered with key {key:?}, which does not start with the prefix asked for \
                         ({prefix:?}); refusing a listing from a misbehaving server"
                    )));
                }
                if let Some(a) = after
                    && key <= a
                {
                    return Err(refuse(format!(
                        "the server answered with key {key:?}, which does not come after the key the listing \
                         was asked to start after ({a:?}); refusing a listing from a misbehaving server"
                    )));
                }
                // A slice stops at the first key past its end, which is
                // only right when keys come in order (as S3 sends them);
                // a server that does not would cut the slice short.
                if before.is_some() {
                    if last_key.as_deref().is_some_and(|last| key <= last) {
                        return Err(refuse(format!(
                            "the server answered with key {key:?} after {:?}: not in order, so the end of the \
                             slice cannot be told; refusing a listing from a misbehaving server",
                            last_key.as_deref().unwrap_or_default()
                        )));
                    }
                    last_key = Some(key.to_string());
                }
                if before.is_some_and(|b| key >= b) {
                    reached_end = true;
                    continue;
                }
                let size = obj
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or_else(|| refuse(format!("the server listed {key:?} without a valid size")))?;
                out.push(ObjectInfo {
                    name: key.to_string(),
                    size,
                    modified: obj
                        .last_modified()
                        .and_then(|t| jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()),
                });
            }
            token = pages
                .next(page.is_truncated() == Some(true), page.next_continuation_token())
                .map_err(refuse)?;
            if token.is_none() || reached_end {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(twice) = out.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(refuse(format!(
                "the server listed {:?} more than once",
                twice[0].name
            )));
        }
        Ok(out)
    }

    fn list_prefixes(&self, prefix: &str) -> io::Result<Vec<String>> {
        let inner = &self.inner;
        let refuse = |why: String| {
            io::Error::other(format!(
                "ListObjectsV2 {} (delimiter /): {why}",
                inner.url(prefix)
            ))
        };
        let mut out = Vec::new();
        let mut pages = Pages::default();
        let mut token: Option<String> = None;
        loop {
            let req = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(prefix)
                .delimiter("/")
                .max_keys(MAX_KEYS_PER_PAGE)
                .set_continuation_token(token.take());
            let page = block_on(req.send())
                .map_err(io_err)?
                .map_err(|e| refuse(describe(&e)))?;
            let entries = page.contents().len() + page.common_prefixes().len();
            if entries > MAX_KEYS_PER_PAGE as usize {
                return Err(refuse(format!(
                    "the server sent {entries} keys and prefixes in one page, more than the \
                     {MAX_KEYS_PER_PAGE} asked for"
                )));
            }
            // Objects right at this level (the marker) are not prefixes;
            // they must still be inside what was asked for.
            for key in page.contents().iter().map(|o| o.key().unwrap_or_default()) {
                let rest = key.strip_prefix(prefix);
                if rest.is_none_or(|r| r.contains('/')) {
                    return Err(refuse(format!(
                        "the server answered with key {key:?}, which is not directly under the prefix \
                         asked for ({prefix:?}); refusing a listing from a misbehaving server"
                    )));
                }
            }
            for common in page.common_prefixes() {
                let name = common.prefix().unwrap_or_default();
                // One level below the prefix, ending in the delimiter:
                // callers take the name between as a host.
                let one_level = name
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix('/'))
                    .is_some_and(|dir| !dir.is_empty() && !dir.contains('/'));
                if !one_level {
                    return Err(refuse(format!(
                        "the server answered with common prefix {name:?}, which is not one level below \
                         the prefix asked for ({prefix:?}); refusing a listing from a misbehaving server"
                    )));
                }
                out.push(name.to_string());
            }
            token = pages
                .next(page.is_truncated() == Some(true), page.next_continuation_token())
                .map_err(refuse)?;
            if token.is_none() {
                break;
            }
        }
        out.sort();
        if let Some(twice) = out.windows(2).find(|w| w[0] == w[1]) {
            return Err(refuse(format!("the server listed {:?} more than once", twice[0])));
        }
        Ok(out)
    }

    fn clean_pending(&self, prefix: &str) -> io::Result<usize> {
        let inner = &self.inner;
        let mut aborted = 0;
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let req = inner
                .client
                .list_multipart_uploads()
                .bucket(&inner.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take());
            let page = block_on(req.send()).map_err(io_err)?.map_err(|e| {
                io::Error::other(format!(
                    "ListMultipartUploads {}: {}",
                    inner.url(prefix),
                    describe(&e)
                ))
            })?;
            for up in page.uploads() {
                if let (Some(key), Some(id)) = (up.key(), up.upload_id()) {
                    tracing::warn!(
                        "aborting an incomplete upload of {} left by an interrupted run (started {})",
                        inner.url(key),
                        up.initiated().map(|t| t.to_string()).unwrap_or_default()
                    );
                    inner.abort(key, id).map_err(io_err)?;
                    aborted += 1;
                }
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(aborted)
    }
}

type PartResult = std::result::Result<(CompletedPart, Bytes), String>;

/// An object being uploaded.
struct S3Pending {
    inner: Arc<Inner>,
    key: String,
    class: ObjectClass,
    /// The part being filled.
    buf: Vec<u8>,
    /// The size the current part is sent at.
    limit: usize,
    /// Set once the object outgrows one part.
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<JoinHandle<PartResult>>,
    done: Vec<CompletedPart>,
    /// Buffers of acknowledged parts, for reuse.
    spare: Vec<Vec<u8>>,
    size: u64,
    /// Set when a part failed: the object can only be dropped.
    failed: bool,
    /// Object Lock retention to set on the object.
    retention: Option<Retention>,
}

impl S3Pending {
    fn new(inner: Arc<Inner>, key: &str, class: ObjectClass) -> Self {
        let base = inner.settings.part_size as usize;
        S3Pending {
            inner,
            key: key.to_string(),
            class,
            buf: Vec::with_capacity(base),
            limit: base,
            upload_id: None,
            next_part: 1,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            spare: Vec::new(),
            size: 0,
            failed: false,
            retention: None,
        }
    }

    fn lock_mode(&self) -> Option<(ObjectLockMode, aws_smithy_types::DateTime)> {
        self.retention.as_ref().map(lock_headers)
    }

    fn start_upload(&mut self) -> Result<String> {
        let inner = &self.inner;
        let mut req = inner
            .client
            .create_multipart_upload()
            .bucket(&inner.bucket)
            .key(&self.key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .storage_class(inner.storage_class(self.class));
        if self.class == ObjectClass::Archive {
            req = req.tagging(inner.tagging());
        }
        if let Some((mode, until)) = self.lock_mode() {
            req = req.object_lock_mode(mode).object_lock_retain_until_date(until);
        }
        let out = block_on(req.send())?
            .map_err(|e| anyhow!("CreateMultipartUpload {}: {}", inner.url(&self.key), describe(&e)))?;
        out.upload_id().map(str::to_string).with_context(|| {
            format!(
                "CreateMultipartUpload {}: the response has no upload id",
                inner.url(&self.key)
            )
        })
    }

    /// Sends the filled buffer as the next part.
    fn send_part(&mut self) -> Result<()> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.start_upload()?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= self.max_in_flight() {
            self.wait_oldest()?;
        }
        let number = self.next_part;
        if number > MAX_PARTS {
            return Err(anyhow!(
                "{} is larger than S3 allows in {MAX_PARTS} parts",
                self.inner.url(&self.key)
            ));
        }
        self.next_part += 1;
        let next_limit = part_size(self.inner.settings.part_size, self.next_part) as usize;
        let fresh = self.take_buffer(next_limit);
        let data = Bytes::from(std::mem::replace(&mut self.buf, fresh));
        self.limit = next_limit;
        let inner = self.inner.clone();
        let key = self.key.clone();
        let attempt_timeout = Duration::from_secs(inner.timeout_secs + data.len() as u64 / (1 << 20));
        let task = runtime()?.spawn(async move {
            let hashed = data.clone();
            let checksum = tokio::task::spawn_blocking(move || sha256_b64(&hashed))
                .await
                .map_err(|e| format!("hashing part {number}: {e}"))?;
            let req = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(data.len() as i64)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(data.clone()));
            let out = req
                .customize()
                .config_override(
                    aws_sdk_s3::config::Builder::default().timeout_config(
                        TimeoutConfig::builder()
                            .operation_attempt_timeout(attempt_timeout)
                            .build(),
                    ),
                )
                .send()
                .await
                .map_err(|e| format!("UploadPart {} part {number}: {}", inner.url(&key), describe(&e)))?;
            let part = CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_sha256(out.checksum_sha256().unwrap_or(&checksum))
                .build();
            Ok((part, data))
        });
        self.in_flight.push_back(task);
        Ok(())
    }

    /// Parts allowed in the air: `parts-in-flight` while parts have their
    /// first size, fewer as they grow, so an upload never holds more than
    /// `max((parts-in-flight + 1) × part-size, 2 × current part)`.
    fn max_in_flight(&self) -> usize {
        let s = &self.inner.settings;
        let budget = s.parts_in_flight as u64 * s.part_size;
        (budget / (self.limit as u64).max(1)).clamp(1, s.parts_in_flight as u64) as usize
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (part, data) = block_on(task)?
            .map_err(|e| anyhow!("upload task failed: {e}"))?
            .map_err(|e| anyhow!(e))?;
        self.done.push(part);
        // Reclaim the buffer when no one else holds it (the SDK has let go).
        if self.spare.len() <= self.inner.settings.parts_in_flight
            && let Ok(buf) = data.try_into_mut()
        {
            let mut v = Vec::from(buf);
            v.clear();
            self.spare.push(v);
        }
        Ok(())
    }

    fn take_buffer(&mut self, size: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) if v.capacity() >= size => {
                v.clear();
                v
            }
            _ => Vec::with_capacity(size),
        }
    }

    fn finish(&mut self) -> Result<ObjectInfo> {
        let inner = self.inner.clone();
        let Some(upload_id) = self.upload_id.clone() else {
            // Fits in one part: a single PutObject.
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let mut req = inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(&self.key)
                .if_none_match("*")
                .content_length(body.len() as i64)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(sha256_b64(&body))
                .storage_class(inner.storage_class(self.class))
                .body(ByteStream::from(body));
            if self.class == ObjectClass::Archive {
                req = req.tagging(inner.tagging());
            }
            if let Some((mode, until)) = self.lock_mode() {
                req = req.object_lock_mode(mode).object_lock_retain_until_date(until);
            }
            return match block_on(req.send())? {
                Ok(_) => Ok(ObjectInfo {
                    name: self.key.clone(),
                    size: self.size,
                    modified: None,
                }),
                Err(e) => Err(self.put_error("PutObject", &e)),
            };
        };
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let req = inner
            .client
            .complete_multipart_upload()
            .bucket(&inner.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        match block_on(req.send())? {
            Ok(_) => {
                self.upload_id = None;
                Ok(ObjectInfo {
                    name: self.key.clone(),
                    size: self.size,
                    modified: None,
                })
            }
            Err(e) => Err(self.put_error("CompleteMultipartUpload", &e)),
        }
    }

    fn put_error<E>(&self, op: &str, e: &aws_sdk_s3::error::SdkError<E, HttpResponse>) -> anyhow::Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        if error_code(e).as_deref() == Some("PreconditionFailed") {
            return StoreError::AlreadyExists {
                name: self.key.clone(),
                store: format!("bucket {}", self.inner.bucket),
            }
            .into();
        }
        anyhow!("{op} {}: {}", self.inner.url(&self.key), describe(e))
    }

    fn failed_error(&self) -> io::Error {
        io::Error::other(format!(
            "{}: an earlier part failed; the upload was aborted",
            self.inner.url(&self.key)
        ))
    }

    /// Aborts the multipart upload, if one was started. Parts still in the
    /// air are cancelled and waited for first, so none lands after the abort.
    fn abandon(&mut self) {
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        for task in self.in_flight.drain(..) {
            task.abort();
            if !on_runtime {
                let _ = block_on(task);
            }
        }
        if let Some(id) = self.upload_id.take() {
            let inner = self.inner.clone();
            let key = self.key.clone();
            // On a runtime thread (never in practice) block_on would panic:
            // hand the abort to the runtime instead of waiting for it.
            if on_runtime {
                if let Ok(rt) = runtime() {
                    rt.spawn_blocking(move || {
                        if let Err(e) = inner.abort(&key, &id) {
                            tracing::warn!("{e:#}; the next run of this job aborts it");
                        }
                    });
                }
            } else if let Err(e) = inner.abort(&key, &id) {
                tracing::warn!("{e:#}; the next run of this job aborts it");
            }
        }
    }
}

impl Write for S3Pending {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(self.failed_error());
        }
        let room = self.limit - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == self.limit {
            if let Err(e) = self.send_part() {
                self.failed = true;
                self.abandon();
                return Err(io_err(e));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PendingObject for S3Pending {
    fn commit(mut self: Box<Self>) -> io::Result<ObjectInfo> {
        if self.failed {
            return Err(self.failed_error());
        }
        match self.finish() {
            Ok(info) => Ok(info),
            Err(e) => {
                self.abandon();
                // A StoreError keeps its type, so callers can act on it.
                Err(match e.downcast::<StoreError>() {
                    Ok(store_err) => io::Error::other(store_err),
                    Err(e) => io_err(e),
                })
            }
        }
    }
}

impl Drop for S3Pending {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// A streaming GET that resumes where it broke off.
struct S3Reader {
    inner: Arc<Inner>,
    key: String,
    /// The ETag of the first response: a resumed read must get the same object.
    etag: Option<String>,
    body: Option<ByteStream>,
    chunk: Bytes,
    /// Offset in the object of the next byte.
    pos: u64,
    /// Offset where the read ends (exclusive); from the first response
    /// when not asked for.
    end: Option<u64>,
    attempts_left: u32,
    /// Whether the first response (which fixes ETag and length) was seen.
    started: bool,
}

impl S3Reader {
    fn request(&mut self) -> io::Result<()> {
        let inner = &self.inner;
        let mut req = inner.client.get_object().bucket(&inner.bucket).key(&self.key);
        match self.end {
            Some(end) => req = req.range(format!("bytes={}-{}", self.pos, end - 1)),
            None if self.pos > 0 => req = req.range(format!("bytes={}-", self.pos)),
            None => {}
        }
        if let Some(etag) = &self.etag {
            req = req.if_match(etag);
        }
        let out = match block_on(req.send()).map_err(io_err)? {
            Ok(out) => out,
            Err(e) => {
                let code = error_code(&e);
                let code = code.as_deref();
                if matches!(code, Some("NoSuchKey" | "NotFound")) {
                    return Err(io::Error::other(StoreError::NotFound {
                        name: self.key.clone(),
                        store: format!("bucket {}", inner.bucket),
                    }));
                }
                if code == Some("InvalidObjectState") {
                    return Err(io::Error::other(format!(
                        "{} is in a Glacier storage class and must be restored (thawed) before it can be read: {}",
                        inner.url(&self.key),
                        describe(&e)
                    )));
                }
                let hint = match code {
                    Some("AccessDenied") => {
                        " — these credentials may not read backups (a write-only backup role cannot, by \
                         design); restore with credentials allowed by `vaultline policy iam --role restore`"
                    }
                    Some("NoSuchBucket") => " — the bucket does not exist",
                    _ => "",
                };
                return Err(io::Error::other(format!(
                    "GetObject {}: {}{hint}",
                    inner.url(&self.key),
                    describe(&e)
                )));
            }
        };
        // The body is held to the Content-Length (by HTTP and the SDK's
        // own check on GET bodies: one that ends early is an error, which
        // `read` resumes from; nothing past it is read). What is left to
        // check is that the length is the one asked for, so a reader never
        // gets more or fewer bytes than its range, and an unranged read
        // knows where the object ends.
        let misbehaved = |why: String| io::Error::other(format!("GetObject {}: {why}", inner.url(&self.key)));
        let Some(length) = out.content_length().and_then(|l| u64::try_from(l).ok()) else {
            return Err(misbehaved(
                "the server sent no Content-Length: refusing a body of unknown length".to_string(),
            ));
        };
        if let Some(range) = out.content_range() {
            let start = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('-'))
                .and_then(|(start, _)| start.parse::<u64>().ok());
            if start != Some(self.pos) {
                return Err(misbehaved(format!(
                    "asked for bytes from {}, the server's Content-Range is {range:?}",
                    self.pos
                )));
            }
        }
        match self.end {
            Some(end) if length != end.saturating_sub(self.pos) => {
                return Err(misbehaved(format!(
                    "asked for bytes {}-{} ({} bytes), the server's Content-Length is {length}",
                    self.pos,
                    end - 1,
                    end - self.pos
                )));
            }
            Some(_) => {}
            None => self.end = Some(self.pos.saturating_add(length)),
        }
        if !self.started {
            self.started = true;
            self.etag = out.e_tag().map(str::to_string);
        } else if self.etag.is_none() {
            // Without an ETag a resumed read cannot be pinned to the same
            // object version; refuse rather than splice two versions.
            return Err(io::Error::other(format!(
                "GetObject {}: the connection broke and the server gave no ETag to resume safely",
                inner.url(&self.key)
            )));
        }
        self.body = Some(out.body);
        Ok(())
    }
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            match block_on(body.try_next()).map_err(io_err)? {
                Ok(Some(b)) => self.chunk = b,
                Ok(None) if self.end.is_some_and(|end| self.pos >= end) => {
                    self.body = None;
                    return Ok(0);
                }
                result => {
                    let at = format!("at byte {} of {}", self.pos, self.end.unwrap_or_default());
                    let why = match result {
                        Err(e) => format!("the body broke off {at}: {}", source_chain(&e)),
                        _ => format!("the body ended {at}"),
                    };
                    if self.attempts_left <= 1 {
                        return Err(io::Error::other(format!(
                            "GetObject {}: {why} (no retries left)",
                            self.inner.url(&self.key)
                        )));
                    }
                    self.attempts_left -= 1;
                    tracing::warn!(
                        "GetObject {}: {why}; resuming at byte {}",
                        self.inner.url(&self.key),
                        self.pos
                    );
                    self.request()?;
                }
            }
        }
        let n = self.chunk.len().min(out.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_fit_s3_object_limit_in_max_parts() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 900), base);
        assert_eq!(part_size(base, 901), 2 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(5 << 20, n)).sum();
        assert!(total >= 5 << 40, "10,000 parts hold only {total} bytes");
        assert!((1..=MAX_PARTS).all(|n| part_size(5 << 20, n) <= MAX_PART_SIZE));
    }

    /// A store whose endpoint refuses connections, with no retries.
    fn unreachable_store() -> S3Store {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new("k", "s", None, None, "test"))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build();
        let settings = S3Repository {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            path_style: true,
            storage_class: vaultline_config::StorageClass::Standard,
            tier_tag: vaultline_config::Tag {
                key: "t".into(),
                value: "v".into(),
            },
            part_size: 5 << 20,
            parts_in_flight: 2,
            request_checksum: vaultline_config::ChecksumPolicy::WhenSupported,
            restore_tier: "Standard".into(),
            restore_days: 1,
        };
        let aws = Aws {
            region: None,
            profile: None,
            ca_bundle: None,
            allow_http: true,
            max_attempts: 1,
            timeout_secs: 5,
            sns_endpoint: None,
        };
        S3Store::new(Client::from_conf(conf), settings, &aws)
    }

    #[test]
    fn a_failed_upload_stays_failed_and_never_commits() {
        let store = unreachable_store();
        let mut obj = store.create("x/0.archive", ObjectClass::Archive, None).unwrap();
        let part = vec![0u8; 5 << 20];
        let err = obj.write_all(&part).unwrap_err();
        assert!(
            err.to_string()
                .contains("CreateMultipartUpload s3://b/x/0.archive"),
            "{err}"
        );
        let again = obj.write(b"more").unwrap_err();
        assert!(again.to_string().contains("an earlier part failed"), "{again}");
        let commit = obj.commit().unwrap_err();
        assert!(commit.to_string().contains("an earlier part failed"), "{commit}");
    }

    #[test]
    fn fewer_parts_fly_as_parts_grow() {
        let store = unreachable_store();
        let mut p = S3Pending::new(store.inner.clone(), "k", ObjectClass::Control);
        assert_eq!(p.max_in_flight(), 2);
        p.limit = 10 << 20;
        assert_eq!(p.max_in_flight(), 1);
        p.limit = 80 << 20;
        assert_eq!(p.max_in_flight(), 1, "never zero");
    }

    #[test]
    fn a_listing_ends_when_the_server_says_so_and_only_then() {
        let mut pages = Pages::default();
        assert_eq!(pages.next(true, Some("t1")), Ok(Some("t1".to_string())));
        assert_eq!(pages.next(true, Some("t2")), Ok(Some("t2".to_string())));
        assert_eq!(pages.next(false, Some("ignored")), Ok(None));
        assert_eq!(
            Pages::default().next(true, None),
            Err(
                "the server said the listing is truncated but gave no continuation token: refusing an \
                 incomplete listing"
                    .to_string()
            )
        );
        assert!(
            Pages::default().next(true, Some("")).is_err(),
            "an empty token is none"
        );
    }

    #[test]
    fn a_repeated_continuation_token_ends_the_listing() {
        let mut pages = Pages::default();
        for t in ["a", "b", "c"] {
            pages.next(true, Some(t)).unwrap();
        }
        assert_eq!(
            pages.next(true, Some("b")),
            Err("the server repeated continuation token \"b\": refusing to list forever".to_string())
        );
    }

    #[test]
    fn a_listing_of_fresh_tokens_without_end_is_cut_off() {
        let mut pages = Pages::default();
        for n in 1..MAX_LIST_PAGES {
            assert!(pages.next(true, Some(&n.to_string())).is_ok(), "page {n}");
        }
        assert_eq!(
            pages.next(true, Some("last")),
            Err(format!(
                "the listing did not end after {MAX_LIST_PAGES} pages: refusing to list forever"
            ))
        );
    }

    #[test]
    fn tags_are_url_encoded() {
        assert_eq!(url_encode("vaultline-tier"), "vaultline-tier");
        assert_eq!(url_encode("a b+c=d/e:f@g"), "a%20b%2Bc%3Dd%2Fe%3Af%40g");
    }
}
