//! `vaultline backup [now] [JOB…]`: run jobs now, one after another, each
//! under its lock. A failing job does not stop the others; the exit code is
//! that of the first failure. A job already running elsewhere is waited for,
//! or with `--no-wait` skipped (exit 6, recorded as skipped, not failed).
//! SIGINT or SIGTERM stops the run cleanly (`cli::interrupt`): the job
//! running is recorded as interrupted, nothing of it is committed, the jobs
//! after it do not start, and the command exits 130. The run report goes to
//! the invocation's recorder ([`crate::ops::report`]): status, metrics and
//! audit trail are its job.
//!
//! `--dry-run` walks the jobs and lists what a run would take and leave
//! out, and why, without reading content, taking locks or needing the key
//! (nor running hooks or command sources: it lists them).
//!
//! Each job runs under its lock between its `before` and `after` hooks
//! ([`hooks::around`]): the one place every run goes through, whoever
//! started it (an operator, the agent, a timer: each is a `backup now
//! JOB`).
//!
//! `backup stdin JOB NAME` backs up standard input as one file of a
//! snapshot of its own ([`backup::run_stream`]); it runs no hooks, is
//! recorded in the audit trail, and leaves the job's status (its last run,
//! what the agent and the metrics follow) to the job's own runs.

use anyhow::{Context, Result, anyhow};

use crate::cli::app::App;
use crate::cli::args::{BackupArgs, BackupCommand, BackupNowArgs, BackupStdinArgs};
use crate::error::{BusyError, Interrupted, UsageError};
use crate::ops::report::{JobOutcome, JobRun, Recorder};
use crate::pipeline::backup::{self, BackupReport};
use crate::pipeline::hooks;
use crate::pipeline::walk::{Kind, Walker};
use crate::repo::lock::JobLock;
use crate::repo::store::store_write_error;
use crate::units::{count, human_bytes};
use serde::Serialize;

/// Runs `backup [now]` or `backup stdin`.
pub fn run(app: &App, args: &BackupArgs) -> Result<()> {
    match &args.command {
        Some(BackupCommand::Stdin(stdin)) => run_stdin(app, stdin),
        None => run_now(app, &args.now),
    }
}

/// Runs `backup now`. Everything the run does is told to its
/// [`Recorder`], which writes the status, the metrics and the audit trail.
fn run_now(app: &App, args: &BackupNowArgs) -> Result<()> {
    // `backup now [JOB…]` is `backup [JOB…]`, unless a job is called `now`.
    let names = match args.jobs.split_first() {
        Some((now, rest)) if now == "now" && app.config.job("now").is_none() => rest,
        _ => &args.jobs[..],
    };
    let jobs = app.select_jobs(names)?;
    if args.dry_run {
        return dry_run(app, &jobs);
    }
    // From here on, Ctrl-C and SIGTERM stop the run cleanly and are recorded.
    crate::cli::interrupt::install()?;
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
    let cancel = crate::cli::interrupt::flag();
    let mut reports = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    let mut skipped: Vec<(String, anyhow::Error)> = Vec::new();
    let mut stopped: Option<String> = None;
    for (i, job) in jobs.iter().enumerate() {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            // Interrupted between jobs: the rest do not start.
            let rest: Vec<&str> = jobs[i..].iter().map(|j| j.name.as_str()).collect();
            stopped.get_or_insert_with(|| format!("jobs not started: {}", rest.join(", ")));
            break;
        }
        let start = jiff::Timestamp::now();
        let outcome = (|| -> Result<BackupReport> {
            let _lock =
                JobLock::acquire_unless(&app.config.agent.state_dir, &job.name, !args.no_wait, cancel)?;
            let begun = backup::Start::now()?;
            let id = begun.id.clone();
            // The hooks run around everything the run reads: a file-system
            // snapshot the `before` hook mounts is there to be found.
            hooks::around(job, host, &id, cancel, || {
                require_a_path(app, job)?;
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
                    cancel,
                    start: begun,
                };
                let report = backup::run(&app.repo, keys.as_ref(), host, job, &opts, &progress)?;
                progress.finish();
                Ok(report)
            })
        })();
        let record = |outcome: JobOutcome| {
            recorder.job(&JobRun {
                job: job.name.clone(),
                start,
                outcome,
                hardening: hardening.clone(),
            })
        };
        match outcome {
            Ok(report) => {
                // Recorded before anything is printed: the record stands
                // whatever happens to the output.
                let run = JobRun {
                    job: job.name.clone(),
                    start,
                    outcome: JobOutcome::Committed(Box::new(report)),
                    hardening: hardening.clone(),
                };
                recorder.job(&run)?;
                if let JobOutcome::Committed(report) = run.outcome {
                    app.out.line(&describe(&report))?;
                    reports.push(*report);
                }
            }
            Err(e) if e.chain().any(|c| c.is::<Interrupted>()) => {
                // The pending objects were dropped on the way up: nothing
                // of this run is committed.
                let signal = crate::cli::interrupt::signal().unwrap_or("a signal");
                record(JobOutcome::Interrupted(signal.to_string()))?;
                stopped = Some(format!(
                    "interrupted by {signal}: job {} stopped and cleaned up, nothing was committed",
                    job.name
                ));
                let rest: Vec<&str> = jobs[i + 1..].iter().map(|j| j.name.as_str()).collect();
                if !rest.is_empty() {
                    stopped = stopped.map(|s| format!("{s}; jobs not started: {}", rest.join(", ")));
                }
                break;
            }
            Err(e) if e.chain().any(|c| c.is::<BusyError>()) => {
                // Nothing ran: a skipped run, not a failed one.
                if several {
                    tracing::warn!("job {}: skipped: {e:#}", job.name);
                }
                record(JobOutcome::Skipped(format!("{e:#}")))?;
                skipped.push((job.name.clone(), e.context(format!("job {}", job.name))));
            }
            Err(e) => {
                // A full repository is the repository's fault, not that of
                // the file being archived when it filled up.
                let e = match store_write_error(&e) {
                    Some(w) => anyhow!("{w}"),
                    None => e,
                };
                // With one job, main prints the error; with several, say
                // which failed as it happens, then summarize.
                if several {
                    tracing::error!("job {}: {e:#}", job.name);
                }
                record(JobOutcome::Failed(format!("{e:#}")))?;
                failed.push((job.name.clone(), e.context(format!("job {}", job.name))));
            }
        }
    }
    if app.out.json {
        let json: Vec<Reported<'_>> = reports.iter().map(Reported::from).collect();
        app.out.result(&json, String::new)?;
    }
    if let Some(what) = stopped {
        return Err(Interrupted(Some(what)).into());
    }
    if reports.is_empty() && failed.is_empty() && !skipped.is_empty() {
        // Every job was running already: this run wrote nothing.
        recorder.hold();
    }
    if !failed.is_empty() || !skipped.is_empty() {
        let names = |list: &[(String, anyhow::Error)]| {
            list.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut summary = Vec::new();
        if !failed.is_empty() {
            summary.push(format!(
                "{} of {} failed ({})",
                failed.len(),
                count(jobs.len() as u64, "job", "jobs"),
                names(&failed)
            ));
        }
        if !skipped.is_empty() {
            summary.push(format!(
                "{} skipped, already running ({})",
                skipped.len(),
                names(&skipped)
            ));
        }
        // The first failure's chain decides the exit code (a skipped job's
        // when none failed).
        let (_, first) = if failed.is_empty() {
            skipped.remove(0)
        } else {
            failed.remove(0)
        };
        return Err(if several {
            first.context(summary.join("; "))
        } else {
            first
        });
    }
    let incomplete: Vec<&BackupReport> = reports.iter().filter(|r| !r.is_complete()).collect();
    if !incomplete.is_empty() {
        let detail: Vec<String> = incomplete.iter().map(|r| lacking(r)).collect();
        return Err(anyhow!("backup incomplete: {} (listed above)", detail.join("; ")));
    }
    Ok(())
}

/// What a committed snapshot lacks, in words: unreadable paths counted,
/// each command source that failed named with how.
fn lacking(r: &BackupReport) -> String {
    let mut what = Vec::new();
    if !r.unreadable.is_empty() {
        what.push(format!(
            "snapshot {} lacks {} unreadable path(s)",
            r.snapshot,
            r.unreadable.len()
        ));
    }
    let streams = format!("{}/", vaultline_config::STREAMS_ROOT);
    for u in &r.unreadable {
        if let Some(name) = u.path.strip_prefix(&streams) {
            what.push(format!("command source {name} was not backed up: {}", u.reason));
        }
    }
    if let Some(hook) = &r.after_hook {
        what.push(format!("snapshot {} is committed, but {hook}", r.snapshot));
    }
    format!("job {}: {}", r.job, what.join("; "))
}

/// Runs `backup stdin JOB NAME`: standard input as one file of a snapshot
/// of its own. Recorded in the audit trail (not in the job's status).
fn run_stdin(app: &App, args: &BackupStdinArgs) -> Result<()> {
    let job = *app
        .select_jobs(std::slice::from_ref(&args.job))?
        .first()
        .ok_or_else(|| UsageError(format!("no job named {:?}", args.job)))?;
    vaultline_config::check_stream_name(&args.name).map_err(|why| UsageError(format!("NAME: {why}")))?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(UsageError(
            "standard input is a terminal: `backup stdin` backs up a pipe or a file (`pg_dumpall | vaultline \
             backup stdin JOB NAME`)"
                .into(),
        )
        .into());
    }
    crate::cli::interrupt::install()?;
    let recorder = app.recorder("backup stdin");
    let path = vaultline_config::stream_path(&args.name).display().to_string();
    recorder.event(
        "stdin-started",
        serde_json::json!({ "job": job.name, "path": path }),
    )?;
    let keys = match app.keys() {
        Ok(keys) => keys,
        Err(e) => {
            recorder.event(
                "job-failed",
                serde_json::json!({ "job": job.name, "stream": path, "error": format!("{e:#}") }),
            )?;
            recorder.finish(&format!("{e:#}"), serde_json::Value::Null)?;
            return Err(e);
        }
    };
    let result = (|| -> Result<BackupReport> {
        app.repo.check_key(keys.as_ref())?;
        let gate = crate::cli::commands::audit::gate(app, &recorder)?;
        if let Some(refusal) = gate.refused {
            return Err(refusal.into());
        }
        recorder.reached();
        let cancel = crate::cli::interrupt::flag();
        let _lock = JobLock::acquire_unless(&app.config.agent.state_dir, &job.name, !args.no_wait, cancel)?;
        let own = app.own_paths();
        let progress = app
            .out
            .progress(&format!("backing up standard input as {path}"), None, None);
        let opts = backup::RunOptions {
            own: &own,
            state_dir: &app.config.agent.state_dir,
            force_full: true,
            cancel,
            start: backup::Start::now()?,
        };
        let mut stdin = std::io::stdin().lock();
        let report = backup::run_stream(
            &app.repo,
            keys.as_ref(),
            &app.config.agent.host,
            job,
            &opts,
            &args.name,
            &mut stdin,
            &progress,
        )?;
        progress.finish();
        Ok(report)
    })();
    let result = result.map_err(|e| match store_write_error(&e) {
        Some(w) => anyhow!("{w}"),
        None => e,
    });
    match &result {
        Ok(r) => recorder.event(
            "snapshot-committed",
            serde_json::json!({
                "job": r.job,
                "snapshot": r.snapshot,
                "stream": path,
                "objects": r
                    .archive
                    .iter()
                    .cloned()
                    .chain([app.repo.manifest_name(&app.config.agent.host, &r.job, &r.snapshot)])
                    .collect::<Vec<_>>(),
                "bytes_read": r.archived_bytes,
                "bytes_stored": r.bytes_stored,
            }),
        )?,
        Err(e) if e.chain().any(|c| c.is::<Interrupted>()) => recorder.event(
            "job-interrupted",
            serde_json::json!({
                "job": job.name,
                "stream": path,
                "signal": crate::cli::interrupt::signal().unwrap_or("a signal"),
                "committed": false,
            }),
        )?,
        Err(e) => recorder.event(
            "job-failed",
            serde_json::json!({ "job": job.name, "stream": path, "error": format!("{e:#}") }),
        )?,
    }
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    recorder.finish(&outcome, keys.usage())?;
    let report = result?;
    app.out.summary(&Reported::from(&report), || describe(&report))?;
    Ok(())
}

/// A report as `--json` prints it: the pipeline's report, whose
/// `bytes_read` is the content in the snapshot (kept for compatibility),
/// with clearly named totals beside it.
#[derive(Serialize)]
struct Reported<'a> {
    #[serde(flatten)]
    report: &'a BackupReport,
    /// Bytes of file content read: the new and changed files archived.
    read_bytes: u64,
    /// Bytes of file content in the snapshot (as `bytes_read`).
    snapshot_bytes: u64,
}

impl<'a> From<&'a BackupReport> for Reported<'a> {
    fn from(report: &'a BackupReport) -> Self {
        Reported {
            report,
            read_bytes: report.archived_bytes,
            snapshot_bytes: report.bytes_read,
        }
    }
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
        // Command sources are not run: what they would write is unknown.
        for c in &job.commands {
            r.archive.push(DryEntry {
                path: vaultline_config::stream_path(&c.name).display().to_string(),
                kind: "command source",
                size: None,
            });
        }
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
            t.push_str(&format!("job {}: dry run, nothing was read or written\n", r.job));
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
    // A job of command sources alone reads no path; a mapped path is read
    // where its mapping says.
    if job.paths.is_empty() || job.paths.iter().any(|p| exists(job.source_of(p))) {
        return Ok(());
    }
    let paths: Vec<String> = job
        .paths
        .iter()
        .map(|p| job.source_of(p).display().to_string())
        .collect();
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

/// The summary of a committed snapshot: what it holds, and what the run
/// read (only new and changed files are read) and stored.
fn describe(r: &BackupReport) -> String {
    let mut holds = vec![
        format!(
            "{} ({})",
            count(r.files, "file", "files"),
            human_bytes(r.bytes_read)
        ),
        count(r.dirs, "dir", "dirs"),
        count(r.symlinks, "symlink", "symlinks"),
        count(r.hardlinks, "hard link", "hard links"),
    ];
    if r.specials > 0 {
        holds.push(count(r.specials, "special file", "special files"));
    }
    let read = r.archived_bytes;
    let mut t = format!(
        "{}: snapshot {} committed\n  in the snapshot: {}\n  read {} ({} archived), stored {}",
        r.job,
        r.snapshot,
        holds.join(", "),
        human_bytes(read),
        count(r.archived_files, "file", "files"),
        human_bytes(r.bytes_stored),
    );
    if read > 0 {
        t.push_str(&format!(
            " ({:.1}% of what was read)",
            r.bytes_stored as f64 * 100.0 / read as f64
        ));
    }
    t.push_str(&format!(" in {:.1}s", r.duration_secs));
    if read > 0 && r.duration_secs > 0.0 {
        t.push_str(&format!(
            " ({}/s)",
            human_bytes((read as f64 / r.duration_secs) as u64)
        ));
    }
    match (&r.parent, &r.full_reason) {
        (Some(parent), _) => t.push_str(&format!(
            "\n  incremental on {parent}: {} new or changed, {} unchanged, {} deleted",
            count(r.archived_files, "file", "files"),
            count(r.reused, "entry", "entries"),
            r.deleted
        )),
        (None, Some(why)) => t.push_str(&format!("\n  full snapshot: {why}")),
        (None, None) => t.push_str("\n  full snapshot"),
    }
    if !r.skipped.is_empty() {
        t.push_str(&format!(
            "\n  skipped {}",
            count(
                r.skipped.len() as u64,
                "special or vanished path",
                "special or vanished paths"
            )
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
