//! `vaultline snapshots [JOB]`: the committed snapshots of a host, oldest
//! first, with their totals (read from each manifest's end record): full or
//! incremental, files in the snapshot and files it archived, and the bytes
//! it added to the repository (its own archive and its manifest).

use anyhow::Result;
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::SnapshotsArgs;
use crate::pipeline::snapshot::SnapshotReader;
use crate::repo::snapshot_time;
use crate::units::human_bytes;

#[derive(Serialize)]
struct Listed {
    id: String,
    host: String,
    job: String,
    time: String,
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
    if let Some(job) = &args.job {
        app.select_jobs(std::slice::from_ref(job)).or_else(|e| {
            // A job no longer configured may still have snapshots; only warn.
            tracing::debug!("{e}");
            Ok::<_, anyhow::Error>(Vec::new())
        })?;
    }
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    let host = app.host(&args.host);
    let mut listed = Vec::new();
    for snap in app.repo.list_snapshots(host, args.job.as_deref())? {
        let manifest_size = snap.manifest_size;
        let reader = SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone())?;
        let own_archives: u64 = reader
            .archives()
            .iter()
            .flatten()
            .filter(|a| a.snapshot == snap.id)
            .map(|a| a.size)
            .sum();
        let (header, end) = reader.summary()?;
        listed.push(Listed {
            time: snapshot_time(&snap.id),
            id: snap.id,
            host: snap.host,
            job: snap.job,
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
        }
        t
    })
}
