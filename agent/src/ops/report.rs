//! The run report and its recorder: the one place where what a command did
//! becomes the job status files, the metrics file and the audit trail.
//!
//! A command makes one [`Recorder`] for its invocation and tells it what
//! happens, as it happens: [`Recorder::event`] for an action worth an
//! audit line (a restore starting, a hardening check, a forget plan),
//! [`Recorder::job`] for each job of a backup run as it ends (its
//! [`JobRun`]: committed, failed, refused, interrupted, or skipped because
//! another run of it was in progress), and [`Recorder::finish`] once, with
//! the run's overall result. The recorder decides what each of these means
//! for each observer:
//!
//! | told | status (`STATE/status/JOB.json`) | metrics file | audit trail |
//! |---|---|---|---|
//! | `event` | – | – | one line |
//! | `job` | the job's run record (a skipped run: only counted, the last run stays) | – | `snapshot-committed` / `job-failed` / `job-interrupted` / `job-skipped` |
//! | `finish` | – | rewritten from every job's status | `run-finished` (backups) |
//! | (dropped) | – | – | unshipped lines go to the repository |
//!
//! The numbers a run record carries say what happened: files and bytes
//! *in the snapshot*, and files archived and bytes *read* (only new or
//! changed files are read: a run with no change reads nothing).
//!
//! When the recorder goes out of scope, whatever the command's outcome,
//! the trail's unshipped lines are shipped to the repository (under the
//! jobs' Object Lock retention, if any), so no command's record stays on
//! the host only, provided the command reached the repository: it calls
//! [`Recorder::reached`] once it knows the repository is the configured
//! one (its key checked) and fit to write to (a backup's bucket passed
//! hardening). A command refused before that writes nothing there; its
//! lines travel with the next shipment.
//! A new observer (a webhook, say) is added here, and nowhere else.
//! Recording is best-effort where the run itself stands (a status file that
//! cannot be written is logged), and strict for the audit trail: an action
//! that cannot be audited is an error.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{Value, json};

use crate::ops::audit_log::AuditLog;
use crate::ops::status::{HardeningRecord, RunRecord, record_run, write_metrics};
use crate::pipeline::backup::BackupReport;
use crate::repo::Repo;
use crate::repo::store::Retention;

/// How one job of a backup run ended.
#[derive(Debug)]
pub enum JobOutcome {
    /// A snapshot was committed (complete, or lacking unreadable paths).
    Committed(Box<BackupReport>),
    /// The job ran and failed: nothing was committed.
    Failed(String),
    /// The run was stopped by this signal (`SIGINT`, `SIGTERM`) and cleaned
    /// up: nothing was committed.
    Interrupted(String),
    /// The job did not run: another run of it was in progress and the
    /// command was not to wait (why).
    Skipped(String),
    /// The run stopped before the job started (a wrong key, a store that
    /// cannot be read): `result` is `failed`, or `refused` by hardening.
    NotStarted {
        /// `failed` or `refused`.
        result: &'static str,
        /// Why.
        error: String,
    },
}

/// One job's run, as the recorder needs it.
#[derive(Debug)]
pub struct JobRun {
    /// The job.
    pub job: String,
    /// When its run started.
    pub start: jiff::Timestamp,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The hardening result the run saw (S3 repositories).
    pub hardening: Option<HardeningRecord>,
}

/// Where the recorder writes.
pub struct Recorder {
    audit: AuditLog,
    state_dir: PathBuf,
    metrics_file: PathBuf,
    /// Every configured job: the metrics file covers them all.
    jobs: Vec<String>,
    /// Where the audit trail is shipped.
    repo: Repo,
    host: String,
    /// What started the run: `manual`, `schedule`, `watch`, `catch-up`.
    trigger: String,
    /// Object Lock for shipped segments: mode and days.
    lock: Option<(String, u32)>,
    /// Whether the repository has hardening checks (an S3 bucket): only
    /// then are hardening metrics written.
    hardened: bool,
    /// Until [`Recorder::reached`]: nothing is shipped.
    held: std::cell::Cell<bool>,
}

/// Where a recorder writes, besides the audit trail.
pub struct Destinations {
    /// The state directory (status files).
    pub state_dir: PathBuf,
    /// The metrics file.
    pub metrics_file: PathBuf,
    /// Every configured job.
    pub jobs: Vec<String>,
    /// The repository the audit trail is shipped to.
    pub repo: Repo,
    /// This host.
    pub host: String,
    /// What started the run.
    pub trigger: String,
    /// Object Lock for shipped audit segments (mode, days), if any job
    /// locks its objects.
    pub lock: Option<(String, u32)>,
    /// Whether the repository has hardening checks (an S3 bucket).
    pub hardened: bool,
}

impl Recorder {
    /// A recorder writing `audit` lines and to `to`.
    pub fn new(audit: AuditLog, to: Destinations) -> Self {
        Recorder {
            audit,
            state_dir: to.state_dir,
            metrics_file: to.metrics_file,
            jobs: to.jobs,
            repo: to.repo,
            host: to.host,
            trigger: to.trigger,
            lock: to.lock,
            hardened: to.hardened,
            held: std::cell::Cell::new(true),
        }
    }

    /// One action for the audit trail.
    pub fn event(&self, what: &str, details: Value) -> Result<()> {
        self.audit.record(what, details)
    }

    /// A backup job's run ended: its status record and its audit line.
    pub fn job(&self, run: &JobRun) -> Result<()> {
        let (result, error, report) = match &run.outcome {
            JobOutcome::Committed(r) => (
                if r.is_complete() { "ok" } else { "incomplete" },
                None,
                Some(&**r),
            ),
            JobOutcome::Failed(e) => ("failed", Some(e.clone()), None),
            JobOutcome::Interrupted(signal) => (
                "interrupted",
                Some(format!("interrupted by {signal}: nothing was committed")),
                None,
            ),
            JobOutcome::Skipped(why) => ("skipped", Some(why.clone()), None),
            JobOutcome::NotStarted { result, error } => (*result, Some(error.clone()), None),
        };
        let record = RunRecord {
            start: run
                .start
                .round(jiff::Unit::Second)
                .unwrap_or(run.start)
                .to_string(),
            start_unix: run.start.as_second(),
            duration_secs: (jiff::Timestamp::now().as_millisecond() - run.start.as_millisecond()) as f64
                / 1000.0,
            result: result.to_string(),
            error,
            snapshot: report.map(|r| r.snapshot.clone()),
            files: report.map_or(0, |r| r.files),
            archived_files: report.map_or(0, |r| r.archived_files),
            // Only new and changed files are read; the report's
            // `bytes_read` is the content of the whole snapshot.
            bytes_read: report.map_or(0, |r| r.archived_bytes),
            snapshot_bytes: report.map_or(0, |r| r.bytes_read),
            bytes_stored: report.map_or(0, |r| r.bytes_stored),
            trigger: self.trigger.clone(),
        };
        // The backup itself stands: a status that cannot be written is logged.
        if let Err(e) = record_run(&self.state_dir, &run.job, record, run.hardening.clone()) {
            tracing::error!("cannot record the status of job {}: {e:#}", run.job);
        }
        match &run.outcome {
            JobOutcome::Committed(r) => self.audit.record(
                "snapshot-committed",
                json!({
                    "job": r.job,
                    "snapshot": r.snapshot,
                    "objects": r
                        .archive
                        .iter()
                        .cloned()
                        .chain([self.repo.manifest_name(&self.host, &r.job, &r.snapshot)])
                        .collect::<Vec<_>>(),
                    "parent": r.parent,
                    "files": r.files,
                    "archived_files": r.archived_files,
                    "bytes_read": r.archived_bytes,
                    "snapshot_bytes": r.bytes_read,
                    "bytes_stored": r.bytes_stored,
                    "unreadable": r.unreadable.len(),
                }),
            ),
            JobOutcome::Failed(error) => self
                .audit
                .record("job-failed", json!({ "job": run.job, "error": error })),
            JobOutcome::Interrupted(signal) => self.audit.record(
                "job-interrupted",
                json!({ "job": run.job, "signal": signal, "committed": false }),
            ),
            JobOutcome::Skipped(why) => self
                .audit
                .record("job-skipped", json!({ "job": run.job, "why": why })),
            JobOutcome::NotStarted { .. } => Ok(()),
        }
    }

    /// A backup run ended with `result` (`ok` or the error): the metrics
    /// file from every job's status and the `run-finished` line.
    pub fn finish(&self, result: &str, key_use: Value) -> Result<()> {
        if let Err(e) = write_metrics(&self.state_dir, &self.metrics_file, &self.jobs, self.hardened) {
            tracing::error!("{e:#}");
        }
        self.audit
            .record("run-finished", json!({ "result": result, "key_use": key_use }))
    }

    /// The command reached the repository (its key matched, its bucket
    /// may be written to): the trail is shipped when the recorder goes.
    pub fn reached(&self) {
        self.held.set(false);
    }

    /// Ships nothing after all (a backup whose every job was busy wrote
    /// nothing): its lines travel with the next command's shipment.
    pub fn hold(&self) {
        self.held.set(true);
    }

    /// Ships the trail's unshipped lines now; a failure is a warning (the
    /// lines stay and go with the next shipment).
    pub fn ship(&self) {
        let retention = self.lock.as_ref().and_then(|(mode, days)| {
            let until = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_hours(i64::from(*days) * 24))
                .ok()?;
            Some(Retention {
                mode: mode.clone(),
                until,
            })
        });
        match self.audit.ship(&self.repo, &self.host, retention.as_ref()) {
            Ok(Some(name)) => tracing::debug!("audit trail shipped as {name}"),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "{e:#}; kept locally in {}, shipped by the next command",
                self.audit.path().display()
            ),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.held.get() {
            self.ship();
        }
    }
}
