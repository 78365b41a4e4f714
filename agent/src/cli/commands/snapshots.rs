//! `vaultline snapshots [JOB]`: the committed snapshots of a host, oldest
//! first (by the time the repository vouches for, see `SnapshotRef::time`),
//! with their totals (read from each manifest's end record): full or
//! incremental, files in the snapshot and files it archived, and the bytes
//! it added to the repository (its own archive and its manifest).
//!
//! A future-dated snapshot (its id claims a time well after the repository
//! recorded it) is listed and marked. A manifest that fails authentication
//! or does not parse is listed as unreadable with the reason, the others
//! are still listed, and the command exits with code 5.

use anyhow::Result;
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::SnapshotsArgs;
use crate::cli::select::Scope;
use crate::error::{IntegrityError, is_integrity};
use crate::pipeline::snapshot::SnapshotReader;
use crate::repo::snapshot_time;
use crate::units::human_bytes;

#[derive(Serialize, Default)]
struct Listed {
    id: String,
    host: String,
    job: String,
    /// What the id claims (the client's clock at the start of the run).
    time: String,
    /// When the repository recorded the manifest.
    recorded: Option<String>,
    /// The id claims a time well after `recorded`: ignored by `latest`,
    /// `forget` and incremental runs.
    future_dated: bool,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    kind: &'static str,
    parent: Option<String>,
    archived_files: u64,
    deleted: u64,
    paths: Vec<String>,
    files: u64,
    dirs: u64,
    bytes: u64,
    stored_bytes: u64,
}

/// Runs `snapshots`.
pub fn run(app: &App, args: &SnapshotsArgs) -> Result<()> {
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    // A job no longer configured may still have snapshots; one that is
    // neither configured nor in the repository is a usage error.
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let host = scope.host.as_str();
    let mut listed = Vec::new();
    let mut unreadable = Vec::new();
    for snap in scope.snapshots() {
        let manifest_size = snap.manifest_size;
        let base = Listed {
            time: snapshot_time(&snap.id),
            recorded: snap
                .recorded
                .map(|r| r.round(jiff::Unit::Second).unwrap_or(r).to_string()),
            future_dated: snap.future_dated(),
            id: snap.id.clone(),
            host: snap.host.clone(),
            job: snap.job.clone(),
            ..Listed::default()
        };
        if base.future_dated {
            tracing::warn!("{}", snap.future_note());
        }
        let reader = match SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone()) {
            Ok(reader) => reader,
            Err(e) if is_integrity(&e) => {
                tracing::error!("snapshot {} of job {}: {e:#}", snap.id, snap.job);
                unreadable.push(snap.id.clone());
                listed.push(Listed {
                    kind: "unreadable",
                    error: Some(format!("{e:#}")),
                    stored_bytes: manifest_size,
                    ..base
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let own_archives: u64 = reader
            .archives()
            .iter()
            .flatten()
            .filter(|a| a.snapshot == snap.id)
            .map(|a| a.size)
            .sum();
        let (header, end) = reader.summary()?;
        listed.push(Listed {
            kind: if header.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            parent: header.parent,
            archived_files: end.archived_files,
            deleted: end.deleted,
            paths: header.paths,
            files: end.files,
            dirs: end.dirs,
            bytes: end.bytes,
            stored_bytes: own_archives + manifest_size,
            ..base
        });
    }
    app.out.result(&listed, || {
        if listed.is_empty() {
            return format!(
                "no snapshots of host {host}{}",
                args.job.as_ref().map_or(String::new(), |j| format!(", job {j}"))
            );
        }
        let mut t = format!(
            "{:<25}  {:<16}  {:<20}  {:<11}  {:>9}  {:>9}  {:>10}  {:>10}",
            "SNAPSHOT", "JOB", "TIME", "KIND", "FILES", "ARCHIVED", "SIZE", "STORED"
        );
        for s in &listed {
            t.push_str(&format!(
                "\n{:<25}  {:<16}  {:<20}  {:<11}  {:>9}  {:>9}  {:>10}  {:>10}",
                s.id,
                s.job,
                s.time,
                s.kind,
                s.files,
                s.archived_files,
                human_bytes(s.bytes),
                human_bytes(s.stored_bytes)
            ));
            if s.future_dated {
                t.push_str(&format!(
                    "  FUTURE-DATED (recorded {}; ignored by latest, forget and incremental runs)",
                    s.recorded.as_deref().unwrap_or("?")
                ));
            }
        }
        t
    })?;
    if unreadable.is_empty() {
        Ok(())
    } else {
        Err(IntegrityError(format!(
            "{} snapshot manifest(s) could not be read: {} (see `vaultline verify`)",
            unreadable.len(),
            unreadable.join(", ")
        ))
        .into())
    }
}
