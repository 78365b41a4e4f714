//! `vaultline status [--json]`: per job, the last run (start, duration,
//! result, files, bytes read and stored), the last success, the next
//! scheduled run, whether the watcher saw changes since (dirty), and the
//! last hardening result. Read from the state directory only: it works
//! while the agent runs and needs no credentials.

use anyhow::Result;
use serde::Serialize;

use crate::cli::app::App;
use crate::ops::status::{self, JobStatus};
use crate::units::{count, human_bytes};

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    status: JobStatus,
    schedule: Option<String>,
    next_run: Option<String>,
    watch: bool,
    dirty: bool,
}

/// Runs `status`.
pub fn run(app: &App) -> Result<()> {
    let hardened = matches!(app.config.repository, vaultline_config::Repository::S3(_));
    let state = &app.config.agent.state_dir;
    if !state.exists() {
        tracing::warn!(
            "no state directory {}: no run has been recorded with this configuration yet",
            state.display()
        );
    }
    let now = jiff::Timestamp::now().as_second();
    let mut rows = Vec::new();
    for job in &app.config.jobs {
        let st = status::load(&app.config.agent.state_dir, &job.name)?;
        let next_run = job
            .schedule
            .as_ref()
            .and_then(|s| s.next_after_in(now, &app.config.agent.timezone))
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.to_string());
        rows.push(Row {
            status: st,
            schedule: job.schedule.as_ref().map(|s| s.expression().to_string()),
            next_run,
            watch: job.watch,
            dirty: status::is_dirty(&app.config.agent.state_dir, &job.name),
        });
    }
    app.out.result(&rows, || {
        let mut t = String::new();
        for r in &rows {
            let s = &r.status;
            t.push_str(&format!("job {}\n", s.job));
            match &s.last_run {
                Some(run) => t.push_str(&format!(
                    "  last run:     {} ({}, {:.1}s, {}, read {}, stored {}){}\n",
                    run.start,
                    run.result,
                    run.duration_secs,
                    count(run.files, "file", "files"),
                    human_bytes(run.bytes_read),
                    human_bytes(run.bytes_stored),
                    run.error
                        .as_ref()
                        .map(|e| format!("\n                {e}"))
                        .unwrap_or_default()
                )),
                None => t.push_str("  last run:     never\n"),
            }
            t.push_str(&format!(
                "  last success: {}\n",
                s.last_success
                    .as_ref()
                    .map(|r| format!("{} (snapshot {})", r.start, r.snapshot.as_deref().unwrap_or("?")))
                    .unwrap_or_else(|| "never".into())
            ));
            t.push_str(&format!(
                "  next run:     {}\n",
                match (&r.next_run, &r.schedule) {
                    (Some(n), Some(s)) => format!("{n} (schedule \"{s}\" in {})", app.config.agent.timezone),
                    _ => "not scheduled".into(),
                }
            ));
            if r.watch {
                t.push_str(&format!(
                    "  watched:      {}\n",
                    if r.dirty {
                        "changes since the last run"
                    } else {
                        "no changes seen"
                    }
                ));
            }
            if let Some(h) = &s.last_hardening {
                t.push_str(&format!(
                    "  hardening:    {} at {}{}\n",
                    if h.passed { "passed" } else { "FAILED" },
                    h.time,
                    if h.blocking.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", h.blocking.join(", "))
                    }
                ));
            }
            if let Some(skip) = &s.last_skipped {
                t.push_str(&format!(
                    "  last skipped: {} ({})\n",
                    skip.start,
                    skip.error.as_deref().unwrap_or("another run was in progress")
                ));
            }
            t.push_str(&format!(
                "  totals:       {}, {} failed, {} interrupted, {} skipped{}\n",
                count(s.runs_total, "run", "runs"),
                s.failures_total,
                s.interrupted_total,
                s.skipped_total,
                if hardened {
                    format!(", {} refused by hardening", s.hardening_failures_total)
                } else {
                    String::new()
                }
            ));
        }
        t.trim_end().to_string()
    })
}
