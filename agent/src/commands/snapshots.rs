//! `vaultline snapshots [JOB]`: the committed snapshots of a host, oldest
//! first, with their totals (read from each manifest's end record).

use anyhow::Result;
use serde::Serialize;

use crate::app::App;
use crate::cli::SnapshotsArgs;
use crate::output::human_bytes;
use crate::repo::snapshot_time;
use crate::snapshot::SnapshotReader;

#[derive(Serialize)]
struct Listed {
    id: String,
    host: String,
    job: String,
    time: String,
    parent: Option<String>,
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
        let (header, end) = SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone())?.summary()?;
        listed.push(Listed {
            time: snapshot_time(&snap.id),
            id: snap.id,
            host: snap.host,
            job: snap.job,
            parent: header.parent,
            paths: header.paths,
            files: end.files,
            dirs: end.dirs,
            bytes: end.bytes,
            stored_bytes: end.archive_sizes.iter().sum::<u64>() + manifest_size,
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
            "{:<25}  {:<16}  {:<20}  {:>9}  {:>10}  {:>10}",
            "SNAPSHOT", "JOB", "TIME", "FILES", "SIZE", "STORED"
        );
        for s in &listed {
            t.push_str(&format!(
                "\n{:<25}  {:<16}  {:<20}  {:>9}  {:>10}  {:>10}",
                s.id,
                s.job,
                s.time,
                s.files,
                human_bytes(s.bytes),
                human_bytes(s.stored_bytes)
            ));
        }
        t
    })
}
