//! The fleet view: every host and job in a repository that many servers
//! share, and whether each is protected, computed from listings alone.
//!
//! A scan ([`scan`]) finds the hosts with one delimiter listing of
//! `PREFIX/` ([`Repo::list_hosts`]: a page per thousand hosts), then lists
//! their objects in slices of consecutive hosts, side by side: about the
//! requests of one listing of everything, in parallel. From the names, sizes and
//! recorded times it learns, per job: the snapshots (a manifest is a
//! snapshot), the newest one's time as the repository vouches for it
//! ([`SnapshotRef::time`]: the id's claim, never later than the recorded
//! time; future-dated snapshots are counted and flagged, never "newest"),
//! the bytes stored (every object under the job), and whether it is
//! *stale*: no trustworthy snapshot within the maximum age. Nothing is
//! downloaded and no key is used: a principal that may list the bucket and
//! nothing more can run it (`vaultline policy iam --role auditor`).
//!
//! What a listing cannot show: a manifest planted with an honest-looking
//! id by someone who can write the host's prefix counts as a snapshot
//! until `vaultline verify` (which decrypts) says otherwise; bytes are
//! those of current object versions.
//!
//! Below this module: [`metrics`] (the Prometheus text of a scan and the
//! small scrape server), [`html`] (the auditors' report page, with its
//! inline SVG charts), [`trails`] (every host's shipped audit trails,
//! checked on their own).
//!
//! Uses: `repo` (listings and layout), `ops::audit_log` (shipped trails),
//! `cloud::hardening` (its findings, for the report), `units`. Knows
//! nothing of the command line or exit codes.

pub mod html;
pub mod metrics;
pub mod trails;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::repo::store::ObjectInfo;
use crate::repo::{Repo, SnapshotRef, snapshot_timestamp, sort_snapshots, valid_snapshot_id};

/// The folder of a host's shipped audit trails (`PREFIX/HOST/audit/TRAIL/…`).
pub const AUDIT_DIR: &str = "audit";
/// A job's folders (`PREFIX/HOST/JOB/snapshots/…`, `…/archives/…`,
/// `…/nodes/…`); they tell a job named `audit` from the audit trails.
pub const JOB_DIRS: [&str; 3] = ["snapshots", "archives", "nodes"];

/// What a scan looks for.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// A job whose newest trustworthy snapshot is older than this is stale.
    pub max_age: SignedDuration,
    /// Hosts listed at once.
    pub parallel: usize,
    /// Hosts left out (machines that only restore or audit, and ship
    /// audit trails under their own name).
    pub ignore_hosts: Vec<String>,
    /// "Now", for ages.
    pub now: Timestamp,
}

/// The whole fleet as one scan saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// The store, described.
    pub store: String,
    /// The repository prefix scanned.
    pub prefix: String,
    /// When the scan started (RFC 3339).
    pub scanned_at: String,
    /// The maximum age, in seconds.
    pub max_age_seconds: i64,
    /// The maximum age, as given (`36h`).
    pub max_age: String,
    /// Every host, by name.
    pub hosts: Vec<HostView>,
    /// Counts over all hosts.
    pub summary: Summary,
    /// What the scan cost.
    pub scan: ScanCost,
}

/// Counts over the fleet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Hosts found (ignored ones left out).
    pub hosts: usize,
    /// Jobs found.
    pub jobs: usize,
    /// Hosts with a stale job, or without any snapshot.
    pub stale_hosts: usize,
    /// Stale jobs.
    pub stale_jobs: usize,
    /// Jobs whose newest manifest is future-dated.
    pub future_dated_jobs: usize,
    /// Snapshots over all jobs.
    pub snapshots: u64,
    /// Bytes stored over all hosts.
    pub stored_bytes: u64,
}

/// What a scan cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanCost {
    /// Wall time.
    pub seconds: f64,
    /// Listings made: one to find the hosts and one per slice of hosts
    /// (each a page per thousand objects).
    pub listings: u64,
    /// Objects listed.
    pub objects: u64,
    /// S3 requests sent (every attempt, counted in the client); `None` for
    /// a local repository.
    pub s3_requests: Option<u64>,
}

/// One host.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// Its name (the folder under the prefix).
    pub host: String,
    /// Its jobs, by name.
    pub jobs: Vec<JobView>,
    /// Stale: a stale job, or no snapshot at all.
    pub stale: bool,
    /// Ids of the audit trails it shipped.
    pub audit_trails: Vec<String>,
    /// Bytes of its shipped audit segments.
    pub audit_bytes: u64,
    /// Objects under it that are neither a job's nor an audit segment
    /// (nothing vaultline writes), and their bytes.
    pub other_objects: u64,
    /// Their bytes.
    pub other_bytes: u64,
    /// Bytes under the host: jobs, audit trails and the rest.
    pub stored_bytes: u64,
}

/// One job of one host.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// The job.
    pub job: String,
    /// `ok` or `stale`.
    pub status: &'static str,
    /// Why it is stale, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newest snapshot that is not future-dated.
    pub last_snapshot: Option<String>,
    /// Its time as the repository vouches for it (RFC 3339).
    pub last_snapshot_time: Option<String>,
    /// The same, seconds since the epoch.
    pub last_snapshot_unix: Option<i64>,
    /// How long ago, in seconds.
    pub age_seconds: Option<i64>,
    /// Committed snapshots (manifests), future-dated ones included.
    pub snapshots: u64,
    /// Future-dated snapshots among them.
    pub future_dated: u64,
    /// Whether the manifest recorded last is future-dated: the host's
    /// clock runs ahead now, or someone planted a "latest".
    pub newest_future_dated: bool,
    /// The id of the manifest recorded last.
    pub newest_manifest: Option<String>,
    /// Objects under the job (manifests, archives and node packs).
    pub objects: u64,
    /// Their bytes.
    pub stored_bytes: u64,
    /// Snapshots for the report's chart.
    #[serde(skip)]
    pub history: Vec<SnapshotPoint>,
    /// Every object's time and size, for the report's chart.
    #[serde(skip)]
    pub stored: Vec<(Timestamp, u64)>,
}

/// A snapshot on the report's time line.
#[derive(Debug, Clone)]
pub struct SnapshotPoint {
    /// Its id.
    pub id: String,
    /// Its time ([`SnapshotRef::time`]).
    pub time: Timestamp,
    /// Whether it is future-dated.
    pub future_dated: bool,
}

impl JobView {
    /// Whether the job is stale.
    pub fn is_stale(&self) -> bool {
        self.status == "stale"
    }
}

/// Scans `repo`: finds the hosts, then lists the repository in slices
/// side by side, `options.parallel` at a time.
///
/// A slice is the listing of a run of consecutive hosts (twice as many
/// slices as workers, for balance), from just before its first host's
/// prefix to its next slice's first host: S3 starts it there (StartAfter)
/// and stops at the first page past it. So a scan costs about as many
/// requests as listing the whole repository in one go (a page per thousand
/// objects), plus one per slice, rather than one or more per host, and
/// still runs in parallel.
pub fn scan(repo: &Repo, options: &ScanOptions) -> Result<Fleet> {
    let started = std::time::Instant::now();
    let requests_before = crate::cloud::aws::s3_requests_sent();
    let hosts: Vec<String> = repo
        .list_hosts()?
        .into_iter()
        .filter(|h| !options.ignore_hosts.contains(h))
        .collect();
    let parallel = options.parallel.clamp(1, 256);
    let slices = slices(repo, &hosts, 2 * parallel);
    let index: HashMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.as_str(), i)).collect();
    let next = AtomicUsize::new(0);
    let found: Mutex<BTreeMap<usize, Result<SliceViews>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.min(slices.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slice) = slices.get(i) else { break };
                    let result = scan_slice(repo, &hosts, &index, slice, options);
                    let failed = result.is_err();
                    found
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(i, result);
                    if failed {
                        // The others stop at their next slice.
                        next.store(slices.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let mut views = Vec::with_capacity(hosts.len());
    let mut objects = 0;
    for (_, result) in found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        for (view, listed) in result? {
            objects += listed;
            views.push(view);
        }
    }
    let summary = Summary {
        hosts: views.len(),
        jobs: views.iter().map(|h| h.jobs.len()).sum(),
        stale_hosts: views.iter().filter(|h| h.stale).count(),
        stale_jobs: views
            .iter()
            .flat_map(|h| &h.jobs)
            .filter(|j| j.is_stale())
            .count(),
        future_dated_jobs: views
            .iter()
            .flat_map(|h| &h.jobs)
            .filter(|j| j.newest_future_dated)
            .count(),
        snapshots: views.iter().flat_map(|h| &h.jobs).map(|j| j.snapshots).sum(),
        stored_bytes: views.iter().map(|h| h.stored_bytes).sum(),
    };
    // Only an S3 store's client counts requests; a scan of one sends at
    // least the listing of the hosts.
    let requests = crate::cloud::aws::s3_requests_sent() - requests_before;
    Ok(Fleet {
        store: repo.store().describe(),
        prefix: repo.prefix().to_string(),
        scanned_at: second(options.now),
        max_age_seconds: options.max_age.as_secs(),
        max_age: human_duration(options.max_age),
        summary,
        scan: ScanCost {
            seconds: started.elapsed().as_secs_f64(),
            listings: slices.len() as u64 + 1,
            objects,
            s3_requests: (requests > 0).then_some(requests),
        },
        hosts: views,
    })
}

/// The views of a slice's hosts, with the number of objects listed for each.
type SliceViews = Vec<(HostView, u64)>;

/// A run of consecutive hosts and the bounds of their part of the
/// repository's listing.
struct Slice {
    /// Indexes into the hosts.
    hosts: std::ops::Range<usize>,
    /// List names after this (just before the first host's prefix: `.`
    /// sorts right before `/`).
    after: Option<String>,
    /// List names before this (the next slice's first host's prefix).
    before: Option<String>,
}

/// `count` slices (at most one per host) of near-equal numbers of hosts.
fn slices(repo: &Repo, hosts: &[String], count: usize) -> Vec<Slice> {
    let root = repo.root_prefix();
    let n = hosts.len();
    let count = count.clamp(1, n.max(1));
    (0..count)
        .map(|c| (c * n / count, (c + 1) * n / count))
        .filter(|(i, j)| i < j)
        .map(|(i, j)| Slice {
            hosts: i..j,
            after: (i > 0).then(|| format!("{root}{}.", hosts[i])),
            before: (j < n).then(|| format!("{root}{}/", hosts[j])),
        })
        .collect()
}

/// One slice of the listing, taken apart by host. A name that falls in
/// the slice but under another host (one named so that its prefix sorts
/// between, or one left out) is not this slice's to count. Returns each
/// host's view and the number of its objects listed.
fn scan_slice(
    repo: &Repo,
    hosts: &[String],
    index: &HashMap<&str, usize>,
    slice: &Slice,
    options: &ScanOptions,
) -> Result<SliceViews> {
    let root = repo.root_prefix();
    let listed = repo
        .store()
        .list_between(&root, slice.after.as_deref(), slice.before.as_deref())
        .with_context(|| {
            format!(
                "cannot list hosts {}..{} in {}",
                hosts[slice.hosts.start],
                hosts[slice.hosts.end - 1],
                repo.store().describe()
            )
        })?;
    let mut per_host: Vec<Vec<ObjectInfo>> = vec![Vec::new(); slice.hosts.len()];
    for o in listed {
        let host = o
            .name
            .strip_prefix(&root)
            .and_then(|rest| rest.split_once('/'))
            .map(|(h, _)| h);
        if let Some(&i) = host.and_then(|h| index.get(h))
            && slice.hosts.contains(&i)
        {
            per_host[i - slice.hosts.start].push(o);
        }
    }
    Ok(slice
        .hosts
        .clone()
        .zip(per_host)
        .map(|(i, objects)| {
            (
                host_view(repo, &hosts[i], &objects, options),
                objects.len() as u64,
            )
        })
        .collect())
}

/// Where an object under a host belongs.
enum Place<'a> {
    /// A job's object; the snapshot whose archive or manifest it is, when
    /// its name says.
    Job(&'a str, Option<&'a str>),
    /// A segment of an audit trail.
    Audit(&'a str),
    /// Nothing vaultline writes.
    Other,
}

fn place(rest: &str) -> Place<'_> {
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        [job, "snapshots", file] => Place::Job(
            job,
            file.strip_suffix(".manifest").filter(|id| valid_snapshot_id(id)),
        ),
        [job, "archives", id, _] => Place::Job(job, valid_snapshot_id(id).then_some(id)),
        [job, "nodes", file] => Place::Job(
            job,
            file.strip_suffix(".nodes").filter(|id| valid_snapshot_id(id)),
        ),
        [job, dir, ..] if JOB_DIRS.contains(&dir) => Place::Job(job, None),
        [AUDIT_DIR, trail, file] if file.ends_with(".jsonl") => Place::Audit(trail),
        _ => Place::Other,
    }
}

/// What a host's listing holds of one job.
#[derive(Default)]
struct JobObjects {
    snapshots: Vec<SnapshotRef>,
    objects: u64,
    bytes: u64,
    /// Every object's time and size.
    stored: Vec<(Timestamp, u64)>,
}

/// The view of `host` from the listing of its prefix.
pub fn host_view(repo: &Repo, host: &str, objects: &[ObjectInfo], options: &ScanOptions) -> HostView {
    let prefix = repo.host_prefix(host);
    let mut jobs: BTreeMap<&str, JobObjects> = BTreeMap::new();
    let mut trails: Vec<String> = Vec::new();
    let (mut audit_bytes, mut other_objects, mut other_bytes) = (0, 0, 0);
    for o in objects {
        let Some(rest) = o.name.strip_prefix(&prefix) else {
            continue;
        };
        match place(rest) {
            Place::Job(job, snapshot) => {
                let entry = jobs.entry(job).or_default();
                entry.objects += 1;
                entry.bytes += o.size;
                // An object's time on the chart is its snapshot's, as the
                // repository vouches for it: never later than recorded.
                let recorded = o.modified.unwrap_or(options.now);
                let time = snapshot.map_or(recorded, |id| snapshot_timestamp(id).min(recorded));
                entry.stored.push((time, o.size));
                if let Some(snap) = repo.snapshot_in_listing(host, o) {
                    entry.snapshots.push(snap);
                }
            }
            Place::Audit(trail) => {
                audit_bytes += o.size;
                if trails.last().is_none_or(|t| t != trail) {
                    trails.push(trail.to_string());
                }
            }
            Place::Other => {
                other_objects += 1;
                other_bytes += o.size;
            }
        }
    }
    trails.sort();
    trails.dedup();
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .map(|(job, mut found)| {
            sort_snapshots(&mut found.snapshots);
            job_view(job, found, options)
        })
        .collect();
    let stored_bytes = jobs.iter().map(|j| j.stored_bytes).sum::<u64>() + audit_bytes + other_bytes;
    HostView {
        host: host.to_string(),
        stale: jobs.is_empty() || jobs.iter().any(JobView::is_stale),
        jobs,
        audit_trails: trails,
        audit_bytes,
        other_objects,
        other_bytes,
        stored_bytes,
    }
}

fn job_view(job: &str, found: JobObjects, options: &ScanOptions) -> JobView {
    let snaps = &found.snapshots;
    let last = snaps.iter().rev().find(|s| !s.future_dated());
    let newest = snaps
        .iter()
        .max_by(|a, b| a.recorded.cmp(&b.recorded).then(a.claimed().cmp(&b.claimed())));
    let age = last.map(|s| options.now.duration_since(s.time()));
    let reason = match (last, age) {
        (None, _) if snaps.is_empty() => Some("no snapshot".to_string()),
        (None, _) => Some(format!(
            "no snapshot that is not future-dated ({} future-dated)",
            snaps.len()
        )),
        (Some(_), Some(age)) if age > options.max_age => Some(format!(
            "newest snapshot {} ago, more than {}",
            human_duration(age),
            human_duration(options.max_age)
        )),
        _ => None,
    };
    JobView {
        job: job.to_string(),
        status: if reason.is_some() { "stale" } else { "ok" },
        reason,
        last_snapshot: last.map(|s| s.id.clone()),
        last_snapshot_time: last.map(|s| second(s.time())),
        last_snapshot_unix: last.map(|s| s.time().as_second()),
        age_seconds: age.map(|a| a.as_secs()),
        snapshots: snaps.len() as u64,
        future_dated: snaps.iter().filter(|s| s.future_dated()).count() as u64,
        newest_future_dated: newest.is_some_and(SnapshotRef::future_dated),
        newest_manifest: newest.map(|s| s.id.clone()),
        objects: found.objects,
        stored_bytes: found.bytes,
        history: snaps
            .iter()
            .map(|s| SnapshotPoint {
                id: s.id.clone(),
                time: s.time(),
                future_dated: s.future_dated(),
            })
            .collect(),
        stored: found.stored,
    }
}

/// A time to the second, RFC 3339.
pub fn second(t: Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

/// Parses a duration as people write one: a number and a unit (`s`, `m`,
/// `h`, `d`, `w`), or several (`1d12h`).
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let invalid = |why: &str| {
        format!("invalid duration {text:?}: {why} (write a number and a unit: 90m, 36h, 2d, 1w, 1d12h)")
    };
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid("it is empty"));
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid("a number is missing"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let secs: i64 = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "" => return Err(invalid("a unit is missing")),
            _ => return Err(invalid(&format!("unknown unit {:?}", &rest[..unit_len]))),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .filter(|t| *t <= 100 * 365 * 86_400)
            .ok_or_else(|| invalid("longer than a century"))?;
    }
    if total == 0 {
        return Err(invalid("it is zero"));
    }
    Ok(SignedDuration::from_secs(total))
}

/// `3d 4h`, `2h 5m`, `45s`: the two largest units.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    let sign = if secs < 0 { "-" } else { "" };
    let secs = secs.unsigned_abs();
    let units = [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut left = secs;
    for (name, size) in units {
        if left >= size && parts.len() < 2 {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        } else if !parts.is_empty() {
            // Only adjacent units: "1w 3h" would read as more precise than it is.
            break;
        }
    }
    if parts.is_empty() {
        return "0s".to_string();
    }
    format!("{sign}{}", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::store::ObjectStore;
    use crate::repo::store::memory::MemoryStore;

    pub(crate) fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    pub(crate) fn options(now: &str, max_age: &str) -> ScanOptions {
        ScanOptions {
            max_age: parse_duration(max_age).expect("a duration"),
            parallel: 4,
            ignore_hosts: Vec::new(),
            now: at(now),
        }
    }

    /// A snapshot of `host`/`job` with id time `id_time`, recorded at
    /// `recorded`, whose archive holds `bytes`.
    pub(crate) fn snapshot(
        store: &MemoryStore,
        host: &str,
        job: &str,
        id_time: &str,
        recorded: &str,
        bytes: usize,
    ) {
        let id = format!("{}-00012345", at(id_time).strftime("%Y%m%dT%H%M%SZ"));
        let time = at(recorded);
        store.insert_at(
            &format!("p/{host}/{job}/archives/{id}/0.archive"),
            vec![0; bytes],
            time,
        );
        store.insert_at(
            &format!("p/{host}/{job}/snapshots/{id}.manifest"),
            vec![0; 10],
            time,
        );
    }

    pub(crate) fn fleet_store() -> (MemoryStore, Repo) {
        let store = MemoryStore::new();
        store.insert("p/repository.json", b"{}".to_vec());
        // web1: daily snapshots, the last 3 hours ago.
        for day in 1..=3 {
            let t = format!("2026-11-{:02}T09:00:00Z", 19 + day);
            snapshot(&store, "web1", "etc", &t, &t, 100 * day as usize);
        }
        // web1/db: last snapshot 3 days ago.
        snapshot(
            &store,
            "web1",
            "db",
            "2026-11-19T12:00:00Z",
            "2026-11-19T12:05:00Z",
            1000,
        );
        // web2: an honest snapshot 2 h ago, and a manifest recorded last
        // whose id claims a year from now.
        snapshot(
            &store,
            "web2",
            "etc",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:01:00Z",
            50,
        );
        snapshot(
            &store,
            "web2",
            "etc",
            "2027-11-22T10:00:00Z",
            "2026-11-22T11:00:00Z",
            5,
        );
        // web3: only an audit trail (every run refused), and a stray object.
        store.insert_at(
            "p/web3/audit/0011223344556677/000000000001-000000000002.jsonl",
            vec![1; 7],
            at("2026-11-22T11:00:00Z"),
        );
        store.insert_at("p/web3/stray", vec![1; 3], at("2026-11-22T11:00:00Z"));
        let repo = Repo::new(Arc::new(store.clone()), "p");
        (store, repo)
    }

    #[test]
    fn every_host_and_job_with_its_newest_trustworthy_snapshot() {
        let (_store, repo) = fleet_store();
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        type Row<'a> = (String, String, &'a str, Option<String>, u64, u64, bool);
        let rows: Vec<Row<'_>> = fleet
            .hosts
            .iter()
            .flat_map(|h| {
                h.jobs.iter().map(|j| {
                    (
                        h.host.clone(),
                        j.job.clone(),
                        j.status,
                        j.last_snapshot_time.clone(),
                        j.snapshots,
                        j.stored_bytes,
                        j.newest_future_dated,
                    )
                })
            })
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            rows,
            vec![
                (
                    s("web1"),
                    s("db"),
                    "stale",
                    Some(s("2026-11-19T12:00:00Z")),
                    1,
                    1010,
                    false
                ),
                (
                    s("web1"),
                    s("etc"),
                    "ok",
                    Some(s("2026-11-22T09:00:00Z")),
                    3,
                    630,
                    false
                ),
                (
                    s("web2"),
                    s("etc"),
                    "ok",
                    Some(s("2026-11-22T10:00:00Z")),
                    2,
                    75,
                    true
                ),
            ]
        );
        let web1 = &fleet.hosts[0];
        assert_eq!(
            web1.jobs[0].reason.as_deref(),
            Some("newest snapshot 3d ago, more than 1d 12h")
        );
        assert_eq!(web1.jobs[0].age_seconds, Some(3 * 86_400));
        let web2 = &fleet.hosts[1].jobs[0];
        assert_eq!(
            (web2.future_dated, web2.newest_manifest.as_deref()),
            (1, Some("20271122T100000Z-00012345"))
        );
        let web3 = &fleet.hosts[2];
        assert_eq!(
            (
                web3.host.as_str(),
                web3.jobs.len(),
                web3.stale,
                web3.audit_trails.clone(),
                web3.audit_bytes,
                web3.other_bytes
            ),
            ("web3", 0, true, vec![s("0011223344556677")], 7, 3)
        );
        assert_eq!(
            (
                fleet.summary.hosts,
                fleet.summary.jobs,
                fleet.summary.stale_hosts,
                fleet.summary.stale_jobs
            ),
            (3, 3, 2, 1)
        );
        assert_eq!((fleet.summary.future_dated_jobs, fleet.summary.snapshots), (1, 6));
        assert_eq!(fleet.summary.stored_bytes, 1010 + 630 + 75 + 10);
        assert_eq!(
            (fleet.scan.listings, fleet.scan.objects, fleet.scan.s3_requests),
            (4, 14, None)
        );
    }

    #[test]
    fn a_future_dated_snapshot_never_makes_a_job_fresh() {
        let (store, repo) = fleet_store();
        // Planted in web1/db: claims tomorrow, recorded now. The listing's
        // time would make it the newest; it is ignored.
        snapshot(
            &store,
            "web1",
            "db",
            "2026-11-23T12:00:00Z",
            "2026-11-22T11:59:00Z",
            1,
        );
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        let db = &fleet.hosts[0].jobs[0];
        assert_eq!(
            (db.job.as_str(), db.status, db.newest_future_dated),
            ("db", "stale", true)
        );
        assert_eq!(db.last_snapshot.as_deref(), Some("20261119T120000Z-00012345"));
        // A job with nothing but future-dated snapshots has none.
        snapshot(
            &store,
            "web4",
            "etc",
            "2030-01-01T00:00:00Z",
            "2026-11-22T11:00:00Z",
            1,
        );
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        let web4 = fleet.hosts.iter().find(|h| h.host == "web4").unwrap();
        assert_eq!(
            web4.jobs[0].reason.as_deref(),
            Some("no snapshot that is not future-dated (1 future-dated)")
        );
        assert_eq!(web4.jobs[0].last_snapshot_time, None);
    }

    #[test]
    fn the_maximum_age_and_ignored_hosts_decide_what_is_stale() {
        let (_store, repo) = fleet_store();
        let mut o = options("2026-11-22T12:00:00Z", "4d");
        o.ignore_hosts = vec!["web3".into()];
        let fleet = scan(&repo, &o).unwrap();
        assert_eq!((fleet.summary.hosts, fleet.summary.stale_hosts), (2, 0));
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "2h")).unwrap();
        let stale: Vec<(&str, &str)> = fleet
            .hosts
            .iter()
            .flat_map(|h| {
                h.jobs
                    .iter()
                    .filter(|j| j.is_stale())
                    .map(|j| (h.host.as_str(), j.job.as_str()))
            })
            .collect();
        assert_eq!(stale, [("web1", "db"), ("web1", "etc")]);
    }

    #[test]
    fn a_job_named_audit_is_a_job_and_trails_stay_trails() {
        let store = MemoryStore::new();
        snapshot(
            &store,
            "h",
            "audit",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00Z",
            4,
        );
        store.insert(
            "p/h/audit/0011223344556677/000000000001-000000000001.jsonl",
            vec![0; 2],
        );
        let repo = Repo::new(Arc::new(store), "p");
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "1d")).unwrap();
        let h = &fleet.hosts[0];
        assert_eq!(
            (h.jobs.len(), h.jobs[0].job.as_str(), h.jobs[0].stored_bytes),
            (1, "audit", 14)
        );
        assert_eq!((h.audit_trails.len(), h.audit_bytes), (1, 2));
    }

    #[test]
    fn node_packs_count_as_stored_bytes_of_their_job() {
        let store = MemoryStore::new();
        snapshot(
            &store,
            "h",
            "etc",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00Z",
            4,
        );
        store.insert("p/h/etc/nodes/20261122T100000Z-00012345.nodes", vec![0; 7]);
        let repo = Repo::new(Arc::new(store), "p");
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "1d")).unwrap();
        let h = &fleet.hosts[0];
        assert_eq!(
            (h.jobs.len(), h.jobs[0].snapshots, h.jobs[0].stored_bytes),
            (1, 1, 4 + 10 + 7)
        );
    }

    #[test]
    fn slices_of_the_listing_give_what_host_by_host_listings_give() {
        let store = MemoryStore::new();
        // Names whose prefixes sort between others': "a.b/" and "a-c/"
        // come before "a/", "a/x" is a job of a, not a host.
        for host in ["a", "a.b", "a-c", "a0", "b", "c", "d"] {
            snapshot(
                &store,
                host,
                "etc",
                "2026-11-22T10:00:00Z",
                "2026-11-22T10:00:00Z",
                host.len(),
            );
        }
        store.insert("p/repository.json", Vec::new());
        store.insert("p/a.", vec![0; 5]);
        let repo = Repo::new(Arc::new(store.clone()), "p");
        let by_host = |ignore: &[&str]| -> Vec<(String, u64)> {
            let mut o = options("2026-11-22T12:00:00Z", "1d");
            o.ignore_hosts = ignore.iter().map(|h| h.to_string()).collect();
            repo.list_hosts()
                .unwrap()
                .into_iter()
                .filter(|h| !o.ignore_hosts.contains(h))
                .map(|h| {
                    let objects = store.list(&repo.host_prefix(&h)).unwrap();
                    let view = host_view(&repo, &h, &objects, &o);
                    (h, view.stored_bytes)
                })
                .collect()
        };
        for parallel in [1, 2, 3, 8] {
            for ignore in [&[][..], &["a.b", "c"][..]] {
                let mut o = options("2026-11-22T12:00:00Z", "1d");
                o.parallel = parallel;
                o.ignore_hosts = ignore.iter().map(|h| h.to_string()).collect();
                let fleet = scan(&repo, &o).unwrap();
                let got: Vec<(String, u64)> = fleet
                    .hosts
                    .iter()
                    .map(|h| (h.host.clone(), h.stored_bytes))
                    .collect();
                assert_eq!(got, by_host(ignore), "parallel {parallel}, ignoring {ignore:?}");
                let hosts = got.len();
                assert_eq!(fleet.scan.listings as usize, 1 + hosts.min(2 * parallel));
                assert_eq!(fleet.scan.objects as usize, 2 * hosts);
            }
        }
    }

    #[test]
    fn durations_parse_as_people_write_them() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("36h"), Ok(36 * 3600));
        assert_eq!(secs("2d"), Ok(2 * 86_400));
        assert_eq!(secs("1d12h"), Ok(36 * 3600));
        assert_eq!(secs("90m"), Ok(5400));
        assert_eq!(secs("1w"), Ok(7 * 86_400));
        assert_eq!(
            secs("36"),
            Err("invalid duration \"36\": a unit is missing (write a number and a unit: 90m, 36h, 2d, 1w, 1d12h)".into())
        );
        assert!(secs("2y").unwrap_err().contains("unknown unit \"y\""));
        assert!(secs("h").unwrap_err().contains("a number is missing"));
        assert!(secs("0h").unwrap_err().contains("it is zero"));
        assert!(
            secs("99999999999999d")
                .unwrap_err()
                .contains("longer than a century")
        );
        assert_eq!(
            human_duration(SignedDuration::from_secs(3 * 86_400 + 4 * 3600 + 5)),
            "3d 4h"
        );
        assert_eq!(
            human_duration(SignedDuration::from_secs(7 * 86_400 + 3 * 3600)),
            "1w"
        );
        assert_eq!(human_duration(SignedDuration::from_secs(45)), "45s");
        assert_eq!(human_duration(SignedDuration::from_secs(36 * 3600)), "1d 12h");
    }
}
