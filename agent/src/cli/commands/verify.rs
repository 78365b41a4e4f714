//! `vaultline verify [SNAPSHOT|--all]`: read every byte of snapshots back,
//! authenticate and decompress it, and check every file entry against the
//! archive that holds it (in an incremental snapshot, archives of earlier
//! snapshots of the chain too; only the frames the snapshot uses). With no argument, the latest snapshot of each job. Every chosen
//! snapshot is checked even after a failure; the exit code is 5 if any failed
//! authentication or did not match its manifest.

use std::io::{self, Read};

use anyhow::Result;
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::VerifyArgs;
use crate::cli::exit::{Exit, classify};
use crate::pipeline::snapshot::{SnapshotReader, resolve};
use crate::repo::SnapshotRef;
use crate::repo::manifest::Entry;
use crate::units::human_bytes;

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
    let host = app.host(&args.host);
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();

    let chosen: Vec<SnapshotRef> = if args.all {
        app.repo.list_snapshots(host, args.job.as_deref())?
    } else if let Some(spec) = &args.snapshot {
        // `latest` means the newest that is not future-dated.
        resolve(&app.repo, host, args.job.as_deref(), &configured, spec)?
            .into_iter()
            .take(1)
            .collect()
    } else {
        // The newest of each job, leaving out future-dated ones.
        let all = app.repo.list_snapshots(host, args.job.as_deref())?;
        let mut latest: Vec<SnapshotRef> = Vec::new();
        for s in all.into_iter().rev() {
            if s.future_dated() {
                tracing::warn!("{}", s.future_note());
            } else if !latest.iter().any(|l| l.job == s.job) {
                latest.push(s);
            }
        }
        latest.reverse();
        latest
    };

    let mut results = Vec::new();
    let mut worst: Option<anyhow::Error> = None;
    for snap in chosen {
        let outcome = SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone()).and_then(|r| {
            let plan = r.plan(&mut |_| true)?;
            r.read(
                &plan,
                &mut |_| true,
                &mut |_entry: &Entry, data: Option<&mut dyn Read>| {
                    if let Some(data) = data {
                        io::copy(data, &mut io::sink())?;
                    }
                    Ok(())
                },
            )
        });
        match outcome {
            Ok(w) => {
                if !app.out.json {
                    println!(
                        "{} ({}): ok, {} entries, {}",
                        snap.id,
                        snap.job,
                        w.entries,
                        human_bytes(w.bytes)
                    );
                }
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
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if results.is_empty() {
        println!("no snapshots to verify for host {host}");
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
