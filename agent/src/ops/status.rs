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
    /// `ok`, `incomplete`, `failed` or `refused` (hardening).
    pub result: String,
    /// The error, when not ok.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The snapshot committed, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
    /// Regular files archived.
    pub files: u64,
    /// Bytes of file content read.
    pub bytes_read: u64,
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
    /// Runs so far.
    pub runs_total: u64,
    /// Failed, incomplete or refused runs so far.
    pub failures_total: u64,
    /// Runs refused by hardening so far.
    pub hardening_failures_total: u64,
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
    status.runs_total += 1;
    if run.result == "ok" {
        status.last_success = Some(run.clone());
    } else {
        status.failures_total += 1;
    }
    if run.result == "refused" {
        status.hardening_failures_total += 1;
    }
    if hardening.is_some() {
        status.last_hardening = hardening;
    }
    status.last_run = Some(run);
    let path = status_dir(state_dir).join(format!("{job}.json"));
    write_atomic(&path, &serde_json::to_vec_pretty(&status)?)?;
    Ok(status)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text exposition of `jobs`.
pub fn metrics_text(jobs: &[JobStatus]) -> String {
    type Getter = fn(&JobStatus) -> Option<f64>;
    let series: &[(&str, &str, &str, Getter)] = &[
        (
            "vaultline_last_success_timestamp_seconds",
            "gauge",
            "Start time of the last successful backup run.",
            |s| s.last_success.as_ref().map(|r| r.start_unix as f64),
        ),
        (
            "vaultline_last_run_timestamp_seconds",
            "gauge",
            "Start time of the last backup run.",
            |s| s.last_run.as_ref().map(|r| r.start_unix as f64),
        ),
        (
            "vaultline_last_run_success",
            "gauge",
            "1 if the last run succeeded, else 0.",
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
            "Files archived by the last run.",
            |s| s.last_run.as_ref().map(|r| r.files as f64),
        ),
        (
            "vaultline_last_run_read_bytes",
            "gauge",
            "Bytes read by the last run.",
            |s| s.last_run.as_ref().map(|r| r.bytes_read as f64),
        ),
        (
            "vaultline_last_run_stored_bytes",
            "gauge",
            "Bytes stored by the last run.",
            |s| s.last_run.as_ref().map(|r| r.bytes_stored as f64),
        ),
        ("vaultline_runs_total", "counter", "Backup runs.", |s| {
            Some(s.runs_total as f64)
        }),
        (
            "vaultline_failures_total",
            "counter",
            "Failed, incomplete or refused runs.",
            |s| Some(s.failures_total as f64),
        ),
        (
            "vaultline_hardening_failures_total",
            "counter",
            "Runs refused by bucket hardening checks.",
            |s| Some(s.hardening_failures_total as f64),
        ),
        (
            "vaultline_hardening_passed",
            "gauge",
            "1 if the last hardening check passed, else 0.",
            |s| {
                s.last_hardening
                    .as_ref()
                    .map(|h| if h.passed { 1.0 } else { 0.0 })
            },
        ),
    ];
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
    out
}

/// Rewrites the metrics file from the status of every job in `jobs`.
pub fn write_metrics(state_dir: &Path, path: &Path, jobs: &[String]) -> Result<()> {
    locked(state_dir, || {
        let statuses = jobs
            .iter()
            .map(|j| load(state_dir, j))
            .collect::<Result<Vec<_>>>()?;
        // node_exporter's textfile collector reads it, often as another
        // user: the metrics say nothing a dashboard would not.
        let dir = path.parent().context("a file path has a parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::state::write_atomic(path, metrics_text(&statuses).as_bytes(), 0o644)
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
            bytes_read: 1000,
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
        let text = metrics_text(&[s]);
        assert!(text.contains("vaultline_runs_total{job=\"etc\"} 2\n"), "{text}");
        assert!(
            text.contains("vaultline_last_run_success{job=\"etc\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("vaultline_last_success_timestamp_seconds{job=\"etc\"} 1795316400\n"));
        assert!(text.contains("# TYPE vaultline_failures_total counter\n"));
    }
}
