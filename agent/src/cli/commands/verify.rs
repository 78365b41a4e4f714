//! `vaultline verify [SNAPSHOT|--all]`: read every byte of snapshots back,
//! authenticate and decompress it, and check every file entry against the
//! archive that holds it (in an incremental snapshot, archives of earlier
//! snapshots of the chain too; only the frames the snapshot uses). With no
//! argument, the latest snapshot of each job. Every chosen snapshot is
//! checked even after a failure; the exit code is 5 if any failed
//! authentication or did not match its manifest.
//!
//! A check never passes on nothing: an unknown `--job` or `--host` is a
//! usage error naming the known ones (exit 2), and no snapshot to verify is
//! its own outcome (exit 8, [`NothingToCheck`]).

use std::io::Read;

use anyhow::Result;
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::VerifyArgs;
use crate::cli::exit::{Exit, classify};
use crate::cli::select::Scope;
use crate::error::{NothingToCheck, UsageError};
use crate::pipeline::snapshot::{SnapshotReader, resolve};
use crate::repo::SnapshotRef;

use crate::repo::manifest::Entry;
use crate::units::{count, human_bytes};

/// Bytes read from a file's content at a time (all of it is discarded).
const VERIFY_BUFFER: usize = 256 << 10;

#[derive(Serialize)]
struct Verified {
    snapshot: String,
    job: String,
    ok: bool,
    entries: u64,
    bytes: u64,
    error: Option<String>,
}

/// Runs `verify`.
pub fn run(app: &App, args: &VerifyArgs) -> Result<()> {
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let host = scope.host.as_str();
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    let what = match &scope.job {
        Some(j) => format!("job {j} of host {host}"),
        None => format!("host {host}"),
    };
    let nothing = || -> anyhow::Error {
        NothingToCheck(format!(
            "nothing to verify: {what} has no snapshots in {}",
            app.repo.store().describe()
        ))
        .into()
    };

    let chosen: Vec<SnapshotRef> = if args.all {
        scope.snapshots()
    } else if let Some(spec) = args.snapshot.as_deref().filter(|s| *s != "latest") {
        let id = scope.expand(spec)?;
        resolve(&app.repo, host, args.job.as_deref(), &configured, &id)?
            .into_iter()
            .take(1)
            .collect()
    } else {
        // The newest of each job (`latest`: of the one job), leaving out
        // future-dated ones.
        let all = scope.snapshots();
        let mut latest: Vec<SnapshotRef> = Vec::new();
        for s in all.into_iter().rev() {
            if s.future_dated() {
                tracing::warn!("{}", s.future_note());
            } else if !latest.iter().any(|l| l.job == s.job) {
                latest.push(s);
            }
        }
        latest.reverse();
        if args.snapshot.is_some() && latest.len() > 1 {
            let jobs: Vec<&str> = latest.iter().map(|s| s.job.as_str()).collect();
            return Err(UsageError(format!(
                "host {host} has snapshots of several jobs ({}); choose one with --job",
                jobs.join(", ")
            ))
            .into());
        }
        latest
    };
    if chosen.is_empty() {
        if app.out.json {
            app.out.result(&Vec::<Verified>::new(), String::new)?;
        }
        return Err(nothing());
    }

    let mut results = Vec::new();
    let mut worst: Option<anyhow::Error> = None;
    for snap in chosen {
        let mut buffer = vec![0u8; VERIFY_BUFFER];
        let outcome = SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone()).and_then(|r| {
            let plan = r.plan(&mut |_| true)?;
            let progress = app.out.progress(
                &format!("verifying {}", snap.id),
                Some(plan.bytes),
                Some(plan.entries),
            );
            let walked = r.read(
                &plan,
                &mut |_| true,
                &mut |entry: &Entry, data: Option<&mut dyn Read>| {
                    if let Some(data) = data {
                        // Large reads: `io::copy`'s 8 KiB buffer would cost
                        // a call down the tar reader per 8 KiB.
                        while data.read(&mut buffer)? != 0 {}
                    }
                    progress.add(entry.size, 1);
                    Ok(())
                },
            );
            progress.finish();
            walked
        });
        match outcome {
            Ok(w) => {
                app.out.line(&format!(
                    "{} ({}): ok, {}, {}",
                    snap.id,
                    snap.job,
                    count(w.entries, "entry", "entries"),
                    human_bytes(w.bytes)
                ))?;
                results.push(Verified {
                    snapshot: snap.id,
                    job: snap.job,
                    ok: true,
                    entries: w.entries,
                    bytes: w.bytes,
                    error: None,
                });
            }
            Err(e) => {
                tracing::error!("{} ({}): FAILED: {e:#}", snap.id, snap.job);
                results.push(Verified {
                    snapshot: snap.id,
                    job: snap.job,
                    ok: false,
                    entries: 0,
                    bytes: 0,
                    error: Some(format!("{e:#}")),
                });
                let replace = match &worst {
                    None => true,
                    Some(w) => classify(w) != Exit::Integrity && classify(&e) == Exit::Integrity,
                };
                if replace {
                    worst = Some(e);
                }
            }
        }
    }
    if app.out.json {
        app.out.result(&results, String::new)?;
    }
    match worst {
        Some(e) => Err(e.context(format!(
            "{} of {} snapshot(s) failed verification",
            results.iter().filter(|r| !r.ok).count(),
            results.len()
        ))),
        None => Ok(()),
    }
}
