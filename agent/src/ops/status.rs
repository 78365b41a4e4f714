//! What monitoring reads: per-job run records in `STATE/status/JOB.json`,
//! updated after every run (manual, scheduled or watched), and the
//! Prometheus text file built from them for node_exporter's textfile
//! collector. Both are written atomically (temporary file, fsync, rename),
//! so a reader never sees half a file.

use std::fmt::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Start (RFC 3339, UTC).
    pub start: String,
    /// Start, seconds since the epoch (for the metrics).
    pub start_unix: i64,
    /// Wall time.
    pub duration_secs: f64,
    /// `ok`, `incomplete`, `failed`, `refused` (hardening), `interrupted`
    /// (SIGINT, SIGTERM: nothing committed) or `skipped` (another run of
    /// the job was in progress and `--no-wait` was given).
    pub result: String,
    /// The error, when not ok.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The snapshot committed, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
    /// Regular files in the snapshot committed.
    pub files: u64,
    /// Of them, files read and archived (new or changed since the snapshot
    /// the run built on; all of them in a full run).
    #[serde(default)]
    pub archived_files: u64,
    /// Bytes of file content read: those of the archived files. (Records
    /// written before 0.1.1 held the snapshot's content here.)
    pub bytes_read: u64,
    /// Bytes of file content in the snapshot committed.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// Bytes written to the repository.
    pub bytes_stored: u64,
    /// What started it: `manual`, `schedule`, `watch`, `catch-up`.
    pub trigger: String,
}

/// The last hardening result seen by a run of the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardeningRecord {
    /// When (RFC 3339).
    pub time: String,
    /// Whether every required check passed.
    pub passed: bool,
    /// The checks that refused the run.
    pub blocking: Vec<String>,
}

/// Everything kept about a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    /// The job.
    pub job: String,
    /// The most recent run.
    pub last_run: Option<RunRecord>,
    /// The most recent successful run.
    pub last_success: Option<RunRecord>,
    /// The most recent hardening result (S3 repositories).
    pub last_hardening: Option<HardeningRecord>,
    /// The most recent run skipped because another one was in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<RunRecord>,
    /// Runs so far (skipped ones are not runs).
    pub runs_total: u64,
    /// Failed, incomplete or refused runs so far.
    pub failures_total: u64,
    /// Runs refused by hardening so far.
    pub hardening_failures_total: u64,
    /// Runs interrupted (SIGINT, SIGTERM) so far.
    #[serde(default)]
    pub interrupted_total: u64,
    /// Runs skipped so far because another run of the job was in progress.
    #[serde(default)]
    pub skipped_total: u64,
}

fn status_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("status")
}

/// The stored status of `job` (empty when it never ran).
pub fn load(state_dir: &Path, job: &str) -> Result<JobStatus> {
    let path = status_dir(state_dir).join(format!("{job}.json"));
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .and_then(|mut f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
        });
    match read {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobStatus {
            job: job.to_string(),
            ..JobStatus::default()
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Whether the watcher marked `job` dirty (changes since its last run).
pub fn is_dirty(state_dir: &Path, job: &str) -> bool {
    status_dir(state_dir).join(format!("{job}.dirty")).exists()
}

/// Writes `bytes` to `path` atomically (a private file in a private
/// directory; see [`crate::state`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, crate::state::PRIVATE)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    crate::state::private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::state::write_atomic(path, bytes, mode).with_context(|| format!("cannot write {}", path.display()))
}

/// Holds an exclusive lock on `STATE/status/.lock` while `f` runs: status
/// files are read, changed and rewritten, and the metrics rebuilt from
/// them, by concurrent runs.
fn locked<T>(state_dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let dir = status_dir(state_dir);
    crate::state::private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = crate::state::open_rw(&dir.join(".lock"), crate::state::PRIVATE)
        .with_context(|| format!("cannot open the status lock in {}", dir.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .context("cannot lock the status files")?;
    f()
}

/// Records a run of `job` (and the hardening result it saw, if any).
pub fn record_run(
    state_dir: &Path,
    job: &str,
    run: RunRecord,
    hardening: Option<HardeningRecord>,
) -> Result<JobStatus> {
    locked(state_dir, || record_run_unlocked(state_dir, job, run, hardening))
}

fn record_run_unlocked(
    state_dir: &Path,
    job: &str,
    run: RunRecord,
    hardening: Option<HardeningRecord>,
) -> Result<JobStatus> {
    // A status file that cannot be read (damaged, or a link someone put in
    // its place) is started afresh rather than stopping every later record.
    let mut status = load(state_dir, job).unwrap_or_else(|e| {
        tracing::warn!("{e:#}; starting the status of job {job} afresh");
        JobStatus::default()
    });
    status.job = job.to_string();
    if hardening.is_some() {
        status.last_hardening = hardening;
    }
    match run.result.as_str() {
        // Nothing ran: the last run is still the one that did.
        "skipped" => {
            status.skipped_total += 1;
            status.last_skipped = Some(run);
        }
        result => {
            status.runs_total += 1;
            match result {
                "ok" => status.last_success = Some(run.clone()),
                "interrupted" => status.interrupted_total += 1,
                "refused" => {
                    status.failures_total += 1;
                    status.hardening_failures_total += 1;
                }
                _ => status.failures_total += 1,
            }
            status.last_run = Some(run);
        }
    }
    let path = status_dir(state_dir).join(format!("{job}.json"));
    write_atomic(&path, &serde_json::to_vec_pretty(&status)?)?;
    Ok(status)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every result a run can have, for `vaultline_last_run_result`.
const RESULTS: [&str; 5] = ["ok", "incomplete", "failed", "refused", "interrupted"];

/// The Prometheus text exposition of `jobs`. The hardening series are
/// there only for repositories that have hardening checks (`hardened`: S3
/// buckets); a local repository has none to report.
pub fn metrics_text(jobs: &[JobStatus], hardened: bool) -> String {
    type Getter = fn(&JobStatus) -> Option<f64>;
    let mut series: Vec<(&str, &str, &str, Getter)> = vec![
        (
            "vaultline_last_success_timestamp_seconds",
            "gauge",
            "Start time of the last successful backup run.",
            |s| s.last_success.as_ref().map(|r| r.start_unix as f64),
        ),
        (
            "vaultline_last_run_timestamp_seconds",
            "gauge",
            "Start time of the last backup run (skipped runs are not runs).",
            |s| s.last_run.as_ref().map(|r| r.start_unix as f64),
        ),
        (
            "vaultline_last_run_success",
            "gauge",
            "1 if the last run succeeded, else 0 (failed, incomplete, refused or interrupted).",
            |s| {
                s.last_run
                    .as_ref()
                    .map(|r| if r.result == "ok" { 1.0 } else { 0.0 })
            },
        ),
        (
            "vaultline_last_run_duration_seconds",
            "gauge",
            "Wall time of the last run.",
            |s| s.last_run.as_ref().map(|r| r.duration_secs),
        ),
        (
            "vaultline_last_run_files",
            "gauge",
            "Regular files in the snapshot the last run committed.",
            |s| s.last_run.as_ref().map(|r| r.files as f64),
        ),
        (
            "vaultline_last_run_archived_files",
            "gauge",
            "Files the last run read and archived (new or changed; all of them in a full run).",
            |s| s.last_run.as_ref().map(|r| r.archived_files as f64),
        ),
        (
            "vaultline_last_run_read_bytes",
            "gauge",
            "Bytes of file content the last run read (the files it archived).",
            |s| s.last_run.as_ref().map(|r| r.bytes_read as f64),
        ),
        (
            "vaultline_last_run_snapshot_bytes",
            "gauge",
            "Bytes of file content in the snapshot the last run committed.",
            |s| s.last_run.as_ref().map(|r| r.snapshot_bytes as f64),
        ),
        (
            "vaultline_last_run_stored_bytes",
            "gauge",
            "Bytes the last run wrote to the repository (archive and manifest).",
            |s| s.last_run.as_ref().map(|r| r.bytes_stored as f64),
        ),
        (
            "vaultline_runs_total",
            "counter",
            "Backup runs (skipped runs are not counted).",
            |s| Some(s.runs_total as f64),
        ),
        (
            "vaultline_failures_total",
            "counter",
            "Failed, incomplete or refused runs.",
            |s| Some(s.failures_total as f64),
        ),
        (
            "vaultline_interrupted_total",
            "counter",
            "Runs interrupted by SIGINT or SIGTERM (nothing was committed).",
            |s| Some(s.interrupted_total as f64),
        ),
        (
            "vaultline_skipped_total",
            "counter",
            "Runs skipped because another run of the job was in progress (--no-wait).",
            |s| Some(s.skipped_total as f64),
        ),
    ];
    if hardened {
        series.push((
            "vaultline_hardening_failures_total",
            "counter",
            "Runs refused by bucket hardening checks.",
            |s| Some(s.hardening_failures_total as f64),
        ));
        series.push((
            "vaultline_hardening_passed",
            "gauge",
            "1 if the last hardening check passed, else 0.",
            |s| {
                s.last_hardening
                    .as_ref()
                    .map(|h| if h.passed { 1.0 } else { 0.0 })
            },
        ));
    }
    let mut out = String::new();
    for (name, kind, help, get) in series {
        let values: Vec<(String, f64)> = jobs
            .iter()
            .filter_map(|s| get(s).map(|v| (escape_label(&s.job), v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (job, v) in values {
            let _ = writeln!(out, "{name}{{job=\"{job}\"}} {v}");
        }
    }
    // The last run's result as a label: 1 for the result it had, 0 for the
    // others, so a dashboard can tell an interrupted run from a failed one.
    let ran: Vec<(&JobStatus, &str)> = jobs
        .iter()
        .filter_map(|s| s.last_run.as_ref().map(|r| (s, r.result.as_str())))
        .collect();
    if !ran.is_empty() {
        let name = "vaultline_last_run_result";
        let _ = writeln!(
            out,
            "# HELP {name} 1 for the result of the last run ({}), 0 for the others.",
            RESULTS.join(", ")
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (s, result) in ran {
            for r in RESULTS {
                let v = u8::from(r == result);
                let _ = writeln!(
                    out,
                    "{name}{{job=\"{}\",result=\"{r}\"}} {v}",
                    escape_label(&s.job)
                );
            }
        }
    }
    out
}

/// Rewrites the metrics file from the status of every job in `jobs`
/// (`hardened`: whether the repository has hardening checks to report).
pub fn write_metrics(state_dir: &Path, path: &Path, jobs: &[String], hardened: bool) -> Result<()> {
    locked(state_dir, || {
        let statuses = jobs
            .iter()
            .map(|j| load(state_dir, j))
            .collect::<Result<Vec<_>>>()?;
        // node_exporter's textfile collector reads it, often as another
        // user: the metrics say nothing a dashboard would not, and their
        // directory is created open to others (never the private state
        // directory; see agent.metrics-file).
        let dir = path.parent().context("a file path has a parent")?;
        if !dir.exists() {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::state::write_atomic(path, metrics_text(&statuses, hardened).as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(result: &str) -> RunRecord {
        RunRecord {
            start: "2026-11-22T03:00:00Z".into(),
            start_unix: 1_795_316_400,
            duration_secs: 12.5,
            result: result.into(),
            error: None,
            snapshot: None,
            files: 10,
            archived_files: 3,
            bytes_read: 1000,
            snapshot_bytes: 5000,
            bytes_stored: 400,
            trigger: "manual".into(),
        }
    }

    #[test]
    fn runs_accumulate_and_metrics_follow() {
        let dir = tempfile::tempdir().unwrap();
        record_run(dir.path(), "etc", run("ok"), None).unwrap();
        record_run(
            dir.path(),
            "etc",
            run("refused"),
            Some(HardeningRecord {
                time: "t".into(),
                passed: false,
                blocking: vec!["versioning".into()],
            }),
        )
        .unwrap();
        let s = load(dir.path(), "etc").unwrap();
        assert_eq!(
            (s.runs_total, s.failures_total, s.hardening_failures_total),
            (2, 1, 1)
        );
        assert_eq!(s.last_success.as_ref().unwrap().result, "ok");
        let text = metrics_text(&[s], true);
        assert!(text.contains("vaultline_runs_total{job=\"etc\"} 2\n"), "{text}");
        assert!(
            text.contains("vaultline_last_run_success{job=\"etc\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("vaultline_last_success_timestamp_seconds{job=\"etc\"} 1795316400\n"));
        assert!(text.contains("# TYPE vaultline_failures_total counter\n"));
        assert!(
            text.contains("vaultline_hardening_passed{job=\"etc\"} 0\n"),
            "{text}"
        );
        let s = load(dir.path(), "etc").unwrap();
        assert!(
            !metrics_text(&[s], false).contains("hardening"),
            "no hardening series without checks"
        );
    }

    #[test]
    fn skipped_runs_are_counted_apart_and_interrupted_ones_are_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        record_run(dir.path(), "etc", run("ok"), None).unwrap();
        let s = record_run(dir.path(), "etc", run("skipped"), None).unwrap();
        assert_eq!((s.runs_total, s.skipped_total, s.failures_total), (1, 1, 0));
        assert_eq!(
            s.last_run.as_ref().unwrap().result,
            "ok",
            "a skipped run is not the last run"
        );
        assert_eq!(s.last_skipped.as_ref().unwrap().result, "skipped");
        let s = record_run(dir.path(), "etc", run("interrupted"), None).unwrap();
        assert_eq!((s.runs_total, s.interrupted_total, s.failures_total), (2, 1, 0));
        let text = metrics_text(&[s], false);
        assert!(
            text.contains("vaultline_last_run_success{job=\"etc\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("vaultline_last_run_result{job=\"etc\",result=\"interrupted\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("vaultline_last_run_result{job=\"etc\",result=\"ok\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("vaultline_skipped_total{job=\"etc\"} 1\n"),
            "{text}"
        );
    }
}
