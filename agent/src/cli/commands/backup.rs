//! `vaultline backup now [JOB…]`: run jobs now, one after another, each under
//! its lock. A failing job does not stop the others; the exit code is that of
//! the first failure. The run report goes to the invocation's recorder
//! ([`crate::ops::report`]): status, metrics and audit trail are its job.

use anyhow::{Context, Result, anyhow};

use crate::cli::app::App;
use crate::cli::args::BackupNowArgs;
use crate::ops::report::{JobOutcome, JobRun, Recorder};
use crate::pipeline::backup::{self, BackupReport};
use crate::pipeline::walk::{Kind, Walker};
use crate::repo::lock::JobLock;
use crate::error::UsageError;
use crate::units::{count, human_bytes};
use serde::Serialize;

/// Runs `backup now`. Everything the run does is told to its
/// [`Recorder`], which writes the status, the metrics and the audit trail.
pub fn run(app: &App, args: &BackupNowArgs) -> Result<()> {
    // `backup now [JOB…]` is `backup [JOB…]`, unless a job is called `now`.
    let names = match args.jobs.split_first() {
        Some((now, rest)) if now == "now" && app.config.job("now").is_none() => rest,
        _ => &args.jobs[..],
    };
    let jobs = app.select_jobs(names)?;
    if args.dry_run {
        return dry_run(app, &jobs);
    }
    let recorder = app.recorder("backup now");
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    recorder.event("run-started", serde_json::json!({ "jobs": names }))?;
    let keys = match app.keys() {
        Ok(keys) => keys,
        Err(e) => {
            // No key, no run: still a failed run for status, metrics and the
            // trail, which waits for a command that reaches the repository.
            not_started(&recorder, &jobs, "failed", &e, None)?;
            recorder.finish(&format!("{e:#}"), serde_json::Value::Null)?;
            return Err(e);
        }
    };
    let result = run_checked(app, args, &jobs, &keys, &recorder);
    let outcome = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    recorder.finish(&outcome, keys.usage())?;
    result
}

/// The key check, the hardening gate, then the jobs; every job's outcome
/// (refusals included) goes to the recorder.
fn run_checked(
    app: &App,
    args: &BackupNowArgs,
    jobs: &[&vaultline_config::Job],
    keys: &crate::keys::Keys,
    recorder: &Recorder,
) -> Result<()> {
    // Failures before any job starts (wrong key, unreadable bucket settings)
    // are failed runs too, for status and the metrics.
    let early = (|| {
        app.repo.check_key(keys.as_ref())?;
        crate::cli::commands::audit::gate(app, recorder)
    })();
    let gate = match early {
        Ok(gate) => gate,
        Err(e) => {
            not_started(recorder, jobs, "failed", &e, None)?;
            return Err(e);
        }
    };
    if let Some(refusal) = gate.refused {
        // Nothing is written into a bucket that failed hardening.
        let e = anyhow::Error::from(refusal);
        not_started(recorder, jobs, "refused", &e, gate.record)?;
        return Err(e);
    }
    recorder.reached();
    run_jobs(app, args, jobs, keys, recorder, gate.record)
}

/// Tells the recorder that every job of a run that stopped before any job
/// started ended with `result`.
fn not_started(
    recorder: &Recorder,
    jobs: &[&vaultline_config::Job],
    result: &'static str,
    error: &anyhow::Error,
    hardening: Option<crate::ops::status::HardeningRecord>,
) -> Result<()> {
    let start = jiff::Timestamp::now();
    for job in jobs {
        recorder.job(&JobRun {
            job: job.name.clone(),
            start,
            outcome: JobOutcome::NotStarted {
                result,
                error: format!("{error:#}"),
            },
            hardening: hardening.clone(),
        })?;
    }
    Ok(())
}

fn run_jobs(
    app: &App,
    args: &BackupNowArgs,
    jobs: &[&vaultline_config::Job],
    keys: &crate::keys::Keys,
    recorder: &Recorder,
    hardening: Option<crate::ops::status::HardeningRecord>,
) -> Result<()> {
    let host = &app.config.agent.host;
    let own = app.own_paths();

    let several = jobs.len() > 1;
    let mut reports = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    for job in jobs {
        let start = jiff::Timestamp::now();
        let outcome = (|| -> Result<BackupReport> {
            require_a_path(app, job)?;
            let _lock = JobLock::acquire(&app.config.agent.state_dir, &job.name, !args.no_wait)?;
            let (bytes, entries) = match app.out.interactive() {
                true => {
                    let (b, e) = estimate(job, &own);
                    (Some(b), Some(e))
                }
                false => (None, None),
            };
            let progress = app
                .out
                .progress(&format!("backing up {}", job.name), bytes, entries);
            let opts = backup::RunOptions {
                own: &own,
                state_dir: &app.config.agent.state_dir,
                force_full: args.full,
            };
            let report = backup::run(&app.repo, keys.as_ref(), host, job, &opts, &progress)?;
            progress.finish();
            Ok(report)
        })();
        match outcome {
            Ok(report) => {
                let run = JobRun {
                    job: job.name.clone(),
                    start,
                    outcome: JobOutcome::Committed(Box::new(report)),
                    hardening: hardening.clone(),
                };
                // Recorded before anything is printed: the record stands
                // whatever happens to the output.
                recorder.job(&run)?;
                if let JobOutcome::Committed(report) = run.outcome {
                    app.out.line(&describe(&report))?;
                    reports.push(*report);
                }
            }
            Err(e) => {
                // With one job, main prints the error; with several, say
                // which failed as it happens, then summarize.
                if several {
                    tracing::error!("job {}: {e:#}", job.name);
                }
                recorder.job(&JobRun {
                    job: job.name.clone(),
                    start,
                    outcome: JobOutcome::Failed(format!("{e:#}")),
                    hardening: hardening.clone(),
                })?;
                failed.push((job.name.clone(), e.context(format!("job {}", job.name))));
            }
        }
    }
    if app.out.json {
        app.out.result(&reports, String::new)?;
    }
    let busy = |e: &anyhow::Error| e.chain().any(|c| c.is::<crate::error::BusyError>());
    if reports.is_empty() && !failed.is_empty() && failed.iter().all(|(_, e)| busy(e)) {
        // Every job was running already: this run wrote nothing.
        recorder.hold();
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
        let summary = format!(
            "{} of {} jobs failed ({})",
            failed.len(),
            jobs.len(),
            names.join(", ")
        );
        // The first failure's chain decides the exit code.
        let (_, first) = failed.remove(0);
        return Err(if several { first.context(summary) } else { first });
    }
    let incomplete: Vec<&BackupReport> = reports.iter().filter(|r| !r.is_complete()).collect();
    if !incomplete.is_empty() {
        let detail: Vec<String> = incomplete
            .iter()
            .map(|r| {
                format!(
                    "job {}: snapshot {} lacks {} unreadable path(s)",
                    r.job,
                    r.snapshot,
                    r.unreadable.len()
                )
            })
            .collect();
        return Err(anyhow!("backup incomplete: {} (listed above)", detail.join("; ")));
    }
    Ok(())
}

/// One path `--dry-run` reports.
#[derive(Serialize)]
struct DryEntry {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

/// A path `--dry-run` says is left out, and why.
#[derive(Serialize)]
struct DryLeftOut {
    path: String,
    why: String,
}

/// What `--dry-run` found for one job.
#[derive(Serialize)]
struct DryRun {
    job: String,
    archive: Vec<DryEntry>,
    excluded: Vec<DryLeftOut>,
    skipped: Vec<DryLeftOut>,
    unreadable: Vec<DryLeftOut>,
    files: u64,
    bytes: u64,
}

/// `backup --dry-run`: walks each job as a run would (same excludes, same
/// file systems left out) and lists what would be archived and what is
/// left out and why. Reads no content, takes no lock, needs no key and
/// writes nothing anywhere.
fn dry_run(app: &App, jobs: &[&vaultline_config::Job]) -> Result<()> {
    let own = app.own_paths();
    let mut reports = Vec::new();
    for job in jobs {
        require_a_path(app, job).with_context(|| format!("job {}", job.name))?;
        let mut r = DryRun {
            job: job.name.clone(),
            archive: Vec::new(),
            excluded: Vec::new(),
            skipped: Vec::new(),
            unreadable: Vec::new(),
            files: 0,
            bytes: 0,
        };
        let left_out = |s: crate::pipeline::walk::Skipped| DryLeftOut {
            path: s.path.display().to_string(),
            why: s.reason,
        };
        let mut skipped = Vec::new();
        let mut excluded = Vec::new();
        Walker::new(job, &own).walk_reporting(
            |f| {
                let size = (f.kind == Kind::File).then(|| f.stat.st_size.max(0) as u64);
                if let Some(size) = size {
                    r.files += 1;
                    r.bytes += size;
                }
                r.archive.push(DryEntry {
                    path: f.abs.display().to_string(),
                    kind: match f.kind {
                        Kind::File => "file",
                        Kind::Dir => "dir",
                        Kind::Symlink => "symlink",
                        Kind::Fifo => "fifo",
                        Kind::CharDevice => "chardev",
                        Kind::BlockDevice => "blockdev",
                    },
                    size,
                });
                Ok(())
            },
            |s| skipped.push(s),
            |s| excluded.push(s),
        )?;
        r.excluded = excluded.into_iter().map(left_out).collect();
        for s in skipped {
            if s.is_error {
                r.unreadable.push(left_out(s));
            } else {
                r.skipped.push(left_out(s));
            }
        }
        reports.push(r);
    }
    app.out.result(&reports, || {
        let mut t = String::new();
        for r in &reports {
            t.push_str(&format!(
                "job {}: dry run, nothing was read or written\n",
                r.job
            ));
            for e in &r.archive {
                match e.size {
                    Some(size) => t.push_str(&format!("  + {}  ({})\n", e.path, human_bytes(size))),
                    None => t.push_str(&format!("  + {}  ({})\n", e.path, e.kind)),
                }
            }
            for (mark, list) in [("-", &r.excluded), ("-", &r.skipped), ("!", &r.unreadable)] {
                for l in list {
                    t.push_str(&format!("  {mark} {}  ({})\n", l.path, l.why));
                }
            }
            t.push_str(&format!(
                "  would archive {} ({}) in {}; {} excluded, {} skipped, {} unreadable\n",
                count(r.files, "file", "files"),
                human_bytes(r.bytes),
                count(r.archive.len() as u64, "entry", "entries"),
                r.excluded.len(),
                r.skipped.len(),
                r.unreadable.len()
            ));
        }
        t.trim_end().to_string()
    })
}

/// A job none of whose paths exist has nothing to back up: most likely a
/// typo or a disk that is not mounted. Refused (as restic refuses), rather
/// than committing an empty snapshot every run.
fn require_a_path(app: &App, job: &vaultline_config::Job) -> Result<()> {
    let exists = |p: &std::path::Path| match std::fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if job.paths.iter().any(|p| exists(p)) {
        return Ok(());
    }
    let paths: Vec<String> = job.paths.iter().map(|p| p.display().to_string()).collect();
    Err(UsageError(format!(
        "none of its paths exist ({}); nothing to back up (a typo in {}, or a file system that is not \
         mounted?)",
        paths.join(", "),
        app.config.file.display()
    ))
    .into())
}

/// Bytes of content and entries the job will walk, for the progress bar's
/// totals (a metadata-only walk).
fn estimate(job: &vaultline_config::Job, own: &[std::path::PathBuf]) -> (u64, u64) {
    let (mut bytes, mut entries) = (0, 0);
    let _ = Walker::new(job, own).walk(
        |f| {
            entries += 1;
            if f.kind == Kind::File {
                bytes += f.stat.st_size.max(0) as u64;
            }
            Ok(())
        },
        |_| {},
    );
    (bytes, entries)
}

fn describe(r: &BackupReport) -> String {
    let rate = if r.duration_secs > 0.0 {
        (r.bytes_read as f64 / r.duration_secs) as u64
    } else {
        0
    };
    let mut t = format!(
        "{}: snapshot {} committed\n  {} files, {} dirs, {} symlinks, {} hard links; read {}, stored {} ({:.1}%) in {:.1}s ({}/s)",
        r.job,
        r.snapshot,
        r.files,
        r.dirs,
        r.symlinks,
        r.hardlinks,
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_stored),
        r.ratio * 100.0,
        r.duration_secs,
        human_bytes(rate),
    );
    match (&r.parent, &r.full_reason) {
        (Some(parent), _) => t.push_str(&format!(
            "\n  incremental on {parent}: archived {} new or changed file(s) ({}), {} entries unchanged, {} deleted",
            r.archived_files,
            human_bytes(r.archived_bytes),
            r.reused,
            r.deleted
        )),
        (None, Some(why)) => t.push_str(&format!("\n  full snapshot: {why}")),
        (None, None) => t.push_str("\n  full snapshot"),
    }
    if !r.skipped.is_empty() {
        t.push_str(&format!(
            "\n  skipped {} special or vanished path(s)",
            r.skipped.len()
        ));
    }
    for c in &r.changed {
        t.push_str(&format!("\n  changed while reading: {} ({})", c.path, c.reason));
    }
    for u in &r.unreadable {
        t.push_str(&format!("\n  NOT BACKED UP: {} ({})", u.path, u.reason));
    }
    t
}
