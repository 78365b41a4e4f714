//! `vaultline backup now [JOB…]`: run jobs now, one after another, each under
//! its lock. A failing job does not stop the others; the exit code is that of
//! the first failure.

use anyhow::{Result, anyhow};

use crate::app::App;
use crate::archive::Walker;
use crate::backup::{self, BackupReport};
use crate::cli::BackupNowArgs;
use crate::lock::JobLock;
use crate::output::human_bytes;

/// Runs `backup now`: the run and its outcome go to the audit trail. Its
/// unshipped lines are uploaded after a run that committed a snapshot, so a
/// run that wrote nothing (refused by hardening, a wrong key, a busy job)
/// still writes nothing; its lines travel with the next successful run.
pub fn run(app: &App, args: &BackupNowArgs) -> Result<()> {
    let jobs = app.select_jobs(&args.jobs)?;
    let audit = app.audit("backup now");
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    audit.record("run-started", serde_json::json!({ "jobs": names }))?;
    let keys = match app.keys() {
        Ok(keys) => keys,
        Err(e) => {
            // No key, no run: still a failed run for status, metrics and the trail.
            record_all(app, &jobs, "failed", format!("{e:#}"), None);
            finish(app, &audit, &format!("{e:#}"), serde_json::Value::Null)?;
            return Err(e);
        }
    };
    let committed = std::cell::Cell::new(0u32);
    let result = run_checked(app, args, &jobs, &keys, &audit, &committed);
    let outcome = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    finish(app, &audit, &outcome, keys.usage())?;
    if committed.get() > 0 {
        match audit.ship(&app.repo, &app.config.agent.host) {
            Ok(Some(name)) => tracing::debug!("audit trail shipped as {name}"),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "{e:#}; kept locally in {}, shipped by the next run",
                audit.path().display()
            ),
        }
    }
    result
}

/// After a run: the metrics file from every job's status, and the
/// run-finished line of the audit trail.
fn finish(
    app: &App,
    audit: &crate::audit_log::AuditLog,
    result: &str,
    key_use: serde_json::Value,
) -> Result<()> {
    let all: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    if let Err(e) =
        crate::status::write_metrics(&app.config.agent.state_dir, &app.config.agent.metrics_file, &all)
    {
        tracing::error!("{e:#}");
    }
    audit.record(
        "run-finished",
        serde_json::json!({ "result": result, "key_use": key_use }),
    )
}

/// The key check, the hardening gate, then the jobs; every job's outcome
/// (refusals included) goes to its status record.
fn run_checked(
    app: &App,
    args: &BackupNowArgs,
    jobs: &[&vaultline_config::Job],
    keys: &crate::app::Keys,
    audit: &crate::audit_log::AuditLog,
    committed: &std::cell::Cell<u32>,
) -> Result<()> {
    // Failures before any job starts (wrong key, unreadable bucket settings)
    // are failed runs too, for status and the metrics.
    let early = (|| {
        app.repo.check_key(keys.as_ref())?;
        crate::commands::audit::gate(app, audit)
    })();
    let gate = match early {
        Ok(gate) => gate,
        Err(e) => {
            record_all(app, jobs, "failed", format!("{e:#}"), None);
            return Err(e);
        }
    };
    if let Some(refusal) = gate.refused {
        record_all(app, jobs, "refused", refusal.to_string(), gate.record);
        return Err(refusal.into());
    }
    run_jobs(app, args, jobs, keys, audit, committed, gate.record)
}

/// Records the same outcome for every job of a run that stopped before any
/// job started.
fn record_all(
    app: &App,
    jobs: &[&vaultline_config::Job],
    result: &str,
    error: String,
    hardening: Option<crate::status::HardeningRecord>,
) {
    let start = jiff::Timestamp::now();
    for job in jobs {
        record_status(
            app,
            &job.name,
            start,
            result,
            Some(error.clone()),
            None,
            hardening.clone(),
        );
    }
}

/// Records one job's run for `status` and the metrics; a failure to record
/// is logged, not fatal (the backup itself stands).
fn record_status(
    app: &App,
    job: &str,
    start: jiff::Timestamp,
    result: &str,
    error: Option<String>,
    report: Option<&BackupReport>,
    hardening: Option<crate::status::HardeningRecord>,
) {
    let run = crate::status::RunRecord {
        start: start.round(jiff::Unit::Second).unwrap_or(start).to_string(),
        start_unix: start.as_second(),
        duration_secs: (jiff::Timestamp::now().as_millisecond() - start.as_millisecond()) as f64 / 1000.0,
        result: result.to_string(),
        error,
        snapshot: report.map(|r| r.snapshot.clone()),
        files: report.map_or(0, |r| r.files),
        bytes_read: report.map_or(0, |r| r.bytes_read),
        bytes_stored: report.map_or(0, |r| r.bytes_stored),
        trigger: std::env::var("VAULTLINE_TRIGGER").unwrap_or_else(|_| "manual".into()),
    };
    if let Err(e) = crate::status::record_run(&app.config.agent.state_dir, job, run, hardening) {
        tracing::error!("cannot record the status of job {job}: {e:#}");
    }
}

fn run_jobs(
    app: &App,
    args: &BackupNowArgs,
    jobs: &[&vaultline_config::Job],
    keys: &crate::app::Keys,
    audit: &crate::audit_log::AuditLog,
    committed: &std::cell::Cell<u32>,
    hardening: Option<crate::status::HardeningRecord>,
) -> Result<()> {
    let host = &app.config.agent.host;
    let own = app.own_paths();

    let several = jobs.len() > 1;
    let mut reports = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    for job in jobs {
        let start = jiff::Timestamp::now();
        let outcome = (|| -> Result<BackupReport> {
            let _lock = JobLock::acquire(&app.config.agent.state_dir, &job.name, !args.no_wait)?;
            let total = app.out.interactive().then(|| estimate(job, &own));
            let progress = app.out.progress(&format!("backing up {}", job.name), total);
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
                let result = if report.is_complete() { "ok" } else { "incomplete" };
                record_status(
                    app,
                    &job.name,
                    start,
                    result,
                    None,
                    Some(&report),
                    hardening.clone(),
                );
                committed.set(committed.get() + 1);
                audit.record(
                    "snapshot-committed",
                    serde_json::json!({
                        "job": report.job,
                        "snapshot": report.snapshot,
                        "objects": report
                            .archive
                            .iter()
                            .cloned()
                            .chain([app.repo.manifest_name(host, &report.job, &report.snapshot)])
                            .collect::<Vec<_>>(),
                        "parent": report.parent,
                        "files": report.files,
                        "bytes_read": report.bytes_read,
                        "bytes_stored": report.bytes_stored,
                        "unreadable": report.unreadable.len(),
                    }),
                )?;
                if !app.out.json {
                    println!("{}", describe(&report));
                }
                reports.push(report);
            }
            Err(e) => {
                // With one job, main prints the error; with several, say
                // which failed as it happens, then summarize.
                if several {
                    tracing::error!("job {}: {e:#}", job.name);
                }
                let msg = format!("{e:#}");
                record_status(
                    app,
                    &job.name,
                    start,
                    "failed",
                    Some(msg),
                    None,
                    hardening.clone(),
                );
                audit.record(
                    "job-failed",
                    serde_json::json!({ "job": job.name, "error": format!("{e:#}") }),
                )?;
                failed.push((job.name.clone(), e.context(format!("job {}", job.name))));
            }
        }
    }
    if app.out.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
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

/// Bytes the job will read, for the progress bar's ETA (a metadata-only walk).
fn estimate(job: &vaultline_config::Job, own: &[std::path::PathBuf]) -> u64 {
    let mut total = 0;
    let _ = Walker::new(job, own).walk(
        |f| {
            if f.meta.is_file() {
                total += f.meta.len();
            }
            Ok(())
        },
        |_| {},
    );
    total
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
