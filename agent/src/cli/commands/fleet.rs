//! `vaultline fleet status|serve|report`: every host sharing the
//! repository, seen from the bucket (see [`crate::ops::fleet`]). These
//! commands list and read plain objects only; they need no key and record
//! nothing, so the auditor role (`vaultline policy iam --role auditor`),
//! which can write nothing and decrypt nothing, runs them.
//!
//! `status` exits 9 when a host or job is stale, so a cron job or a
//! monitoring check can page on it; `serve` answers Prometheus from the
//! last scan and rescans on an interval; `report` writes the auditors' page
//! and exits 0 once it is written, whatever it shows.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::{FleetReportArgs, FleetScanArgs, FleetServeArgs, FleetStatusArgs};
use crate::error::{StaleError, UsageError};
use crate::ops::fleet::html::{HardeningView, ReportInput, report_html};
use crate::ops::fleet::metrics::{Served, metrics_text, serve as serve_metrics};
use crate::ops::fleet::trails::{TrailCheck, verify_trails};
use crate::ops::fleet::{Fleet, ScanOptions, human_duration, scan};
use crate::repo::Repo;
use crate::units::human_bytes;

/// The repository to scan (the configured one, or `--prefix`), which must
/// exist: a mistyped prefix would otherwise be an empty fleet, all quiet.
fn repository(app: &App, args: &FleetScanArgs) -> Result<Repo> {
    let repo = match &args.prefix {
        Some(p) => app.repo.with_prefix(p.trim_end_matches('/')),
        None => app.repo.clone(),
    };
    if repo.read_marker()?.is_none() {
        return Err(UsageError(format!(
            "no vaultline repository in {} under prefix {:?} (no {})",
            repo.store().describe(),
            repo.prefix(),
            repo.marker_name()
        ))
        .into());
    }
    Ok(repo)
}

fn options(args: &FleetScanArgs) -> ScanOptions {
    ScanOptions {
        max_age: args.max_age,
        parallel: usize::from(args.parallel),
        ignore_hosts: args.ignore_host.clone(),
        now: jiff::Timestamp::now(),
    }
}

/// Writes `bytes` to `path` atomically, readable by all (a metrics
/// collector or a web server reads it as another user; neither holds
/// anything a listing of the bucket does not).
fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    let path: PathBuf = if path.is_relative() {
        std::env::current_dir()?.join(path)
    } else {
        path.to_path_buf()
    };
    crate::state::write_atomic(&path, bytes, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `fleet status`.
pub fn status(app: &App, args: &FleetStatusArgs) -> Result<()> {
    let repo = repository(app, &args.scan)?;
    let fleet = scan(&repo, &options(&args.scan))?;
    if let Some(path) = &args.metrics_file {
        write_public(path, metrics_text(&fleet).as_bytes())?;
    }
    app.out.result(&fleet, || table(&fleet))?;
    verdict(&fleet)
}

/// Exit 9 naming the stale hosts (the first ten), or Ok.
fn verdict(fleet: &Fleet) -> Result<()> {
    let stale: Vec<String> = fleet
        .hosts
        .iter()
        .filter(|h| h.stale)
        .map(|h| {
            if h.jobs.is_empty() {
                return format!("{} (no snapshot)", h.host);
            }
            let jobs: Vec<String> = h
                .jobs
                .iter()
                .filter(|j| j.is_stale())
                .map(|j| format!("{}: {}", j.job, j.reason.as_deref().unwrap_or("stale")))
                .collect();
            format!("{} ({})", h.host, jobs.join("; "))
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let more = stale.len().saturating_sub(10);
    Err(StaleError(format!(
        "{} of {} host(s) stale (maximum age {}): {}{}",
        stale.len(),
        fleet.summary.hosts,
        fleet.max_age,
        stale[..stale.len().min(10)].join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    ))
    .into())
}

/// The text table: a row per job (a host without snapshots gets one too).
fn table(fleet: &Fleet) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "HOST".into(),
        "JOB".into(),
        "STATUS".into(),
        "NEWEST SNAPSHOT".into(),
        "AGE".into(),
        "SNAPSHOTS".into(),
        "STORED".into(),
        "NOTE".into(),
    ]];
    for h in &fleet.hosts {
        if h.jobs.is_empty() {
            rows.push([
                h.host.clone(),
                "-".into(),
                "STALE".into(),
                "never".into(),
                "-".into(),
                "0".into(),
                human_bytes(h.stored_bytes),
                "no snapshot".into(),
            ]);
        }
        for j in &h.jobs {
            let mut note = j.reason.clone().unwrap_or_default();
            if j.newest_future_dated {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&format!(
                    "FUTURE-DATED newest manifest {}",
                    j.newest_manifest.as_deref().unwrap_or("?")
                ));
            } else if j.future_dated > 0 {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&format!("{} future-dated", j.future_dated));
            }
            rows.push([
                h.host.clone(),
                j.job.clone(),
                if j.is_stale() { "STALE" } else { "ok" }.into(),
                j.last_snapshot_time.clone().unwrap_or_else(|| "never".into()),
                j.age_seconds
                    .map(|s| human_duration(jiff::SignedDuration::from_secs(s)))
                    .unwrap_or_else(|| "-".into()),
                j.snapshots.to_string(),
                human_bytes(j.stored_bytes),
                note,
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut t = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let right = matches!(i, 5 | 6);
            let pad = " ".repeat(w - cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        t.push_str(line.trim_end());
        t.push('\n');
    }
    let s = &fleet.summary;
    t.push_str(&format!(
        "{} host(s), {} job(s), {} snapshot(s), {} stored: {} host(s) stale (maximum age {}); {} objects listed \
         in {} listing(s){} in {:.1}s",
        s.hosts,
        s.jobs,
        s.snapshots,
        human_bytes(s.stored_bytes),
        s.stale_hosts,
        fleet.max_age,
        fleet.scan.objects,
        fleet.scan.listings,
        fleet
            .scan
            .s3_requests
            .map(|n| format!(", {n} S3 request(s)"))
            .unwrap_or_default(),
        fleet.scan.seconds
    ));
    t
}

/// Runs `fleet serve`: the first scan before announcing the address, then
/// a rescan every `--refresh` on a thread of its own.
pub fn serve(app: &App, args: &FleetServeArgs) -> Result<()> {
    let repo = repository(app, &args.scan)?;
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let fleet = scan(&repo, &options(&args.scan))?;
    let served = Arc::new(Mutex::new(Served {
        text: metrics_text(&fleet),
        last_scan_ok: true,
        failures: 0,
    }));
    let addr = listener.local_addr()?;
    println!(
        "serving the figures of {} host(s) at http://{addr}/metrics, rescanning every {}",
        fleet.summary.hosts,
        human_duration(args.refresh)
    );
    std::io::stdout().flush()?;
    let refresh = std::time::Duration::from_secs(args.refresh.as_secs().max(1).unsigned_abs());
    let scan_args = (
        repo,
        args.scan.max_age,
        args.scan.parallel,
        args.scan.ignore_host.clone(),
    );
    let shared = Arc::clone(&served);
    std::thread::Builder::new()
        .name("vaultline-fleet-scan".into())
        .spawn(move || {
            let (repo, max_age, parallel, ignore_hosts) = scan_args;
            loop {
                std::thread::sleep(refresh);
                let options = ScanOptions {
                    max_age,
                    parallel: usize::from(parallel),
                    ignore_hosts: ignore_hosts.clone(),
                    now: jiff::Timestamp::now(),
                };
                let result = scan(&repo, &options);
                let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                match result {
                    Ok(fleet) => {
                        s.text = metrics_text(&fleet);
                        s.last_scan_ok = true;
                    }
                    Err(e) => {
                        tracing::warn!("fleet scan failed (serving the last good one): {e:#}");
                        s.last_scan_ok = false;
                        s.failures += 1;
                    }
                }
            }
        })
        .context("cannot start the scanning thread")?;
    serve_metrics(&listener, &served)
}

/// What `fleet report --json` prints.
#[derive(Serialize)]
struct ReportSummary<'a> {
    file: String,
    summary: &'a crate::ops::fleet::Summary,
    hardening_passed: Option<bool>,
    trails: &'a [TrailCheck],
}

/// Runs `fleet report`.
pub fn report(app: &App, args: &FleetReportArgs) -> Result<()> {
    let repo = repository(app, &args.scan)?;
    let options = options(&args.scan);
    let fleet = scan(&repo, &options)?;
    let trails = verify_trails(&repo, &fleet, options.parallel)?;
    let hardening = crate::cli::commands::audit::report(app)?;
    let view = match &hardening {
        Some(r) => HardeningView::Checked(r),
        None => HardeningView::NotApplicable(
            "The repository is a local directory: there is no bucket to check.".to_string(),
        ),
    };
    let page = report_html(&ReportInput {
        fleet: &fleet,
        hardening: view,
        trails: &trails,
        days: args.days,
        now: options.now,
    });
    write_public(&args.html, page.as_bytes())?;
    let failing = trails.iter().filter(|t| !t.verified()).count();
    let out = ReportSummary {
        file: args.html.display().to_string(),
        summary: &fleet.summary,
        hardening_passed: hardening.as_ref().map(|r| r.passed),
        trails: &trails,
    };
    app.out.result(&out, || {
        format!(
            "wrote {}: {} host(s), {} stale; {} audit trail(s), {failing} failing; hardening {}",
            args.html.display(),
            fleet.summary.hosts,
            fleet.summary.stale_hosts,
            trails.len(),
            match &hardening {
                Some(r) if r.passed => "passed",
                Some(_) => "FAILING",
                None => "not applicable",
            }
        )
    })
}
