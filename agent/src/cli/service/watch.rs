//! Watching a job's paths: `notify` (inotify) recursive watches that turn
//! any change into an `Event::Changed`. When the kernel's watch limit is
//! reached (or watching fails otherwise), the job falls back to a periodic
//! scan of sizes and modification times, said once in the log; the agent
//! neither crashes nor spins.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;
use vaultline_config::Job;

use super::Event;

/// A running watch; dropping it stops watching.
pub enum JobWatch {
    /// Kernel notifications.
    Notify(#[allow(dead_code)] notify::RecommendedWatcher),
    /// The fallback scanner task.
    Scan(tokio::task::JoinHandle<()>),
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        if let JobWatch::Scan(task) = self {
            task.abort();
        }
    }
}

impl JobWatch {
    /// Starts watching `job`'s paths.
    /// Events only under `ignore` (vaultline's own state directory and
    /// local repository, which every run writes to) are not changes.
    pub fn start(
        job: &Job,
        scan_interval_secs: u64,
        ignore: Vec<std::path::PathBuf>,
        tx: UnboundedSender<Event>,
    ) -> JobWatch {
        let name = job.name.clone();
        let notify_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !ev.kind.is_access()
                && !ev.paths.iter().all(|p| ignore.iter().any(|i| p.starts_with(i)))
            {
                let _ = notify_tx.send(Event::Changed { job: name.clone() });
            }
        });
        let attempt = watcher.and_then(|mut w| {
            for p in &job.paths {
                w.watch(p, RecursiveMode::Recursive)?;
            }
            Ok(w)
        });
        match attempt {
            Ok(w) => {
                tracing::debug!("job {}: watching {} path(s)", job.name, job.paths.len());
                JobWatch::Notify(w)
            }
            Err(e) => {
                let why = match e.kind {
                    notify::ErrorKind::MaxFilesWatch => {
                        "the kernel's inotify watch limit is reached (raise fs.inotify.max_user_watches)"
                            .to_string()
                    }
                    _ => e.to_string(),
                };
                tracing::warn!(
                    "job {}: cannot watch its paths ({why}); scanning them every {scan_interval_secs}s instead",
                    job.name
                );
                let paths = job.paths.clone();
                let name = job.name.clone();
                JobWatch::Scan(tokio::spawn(async move {
                    // Tree walks block: keep them off the async workers.
                    let p = paths.clone();
                    let Ok(mut last) = tokio::task::spawn_blocking(move || fingerprint(&p)).await else {
                        return;
                    };
                    loop {
                        tokio::time::sleep(Duration::from_secs(scan_interval_secs)).await;
                        let p = paths.clone();
                        let now = tokio::task::spawn_blocking(move || fingerprint(&p))
                            .await
                            .unwrap_or(last);
                        if now != last {
                            last = now;
                            if tx.send(Event::Changed { job: name.clone() }).is_err() {
                                break;
                            }
                        }
                    }
                }))
            }
        }
    }
}

/// A cheap summary of a tree: entries, total size, latest modification.
fn fingerprint(paths: &[std::path::PathBuf]) -> (u64, u64, i64) {
    let mut fp = (0u64, 0u64, 0i64);
    for p in paths {
        walk(p, &mut fp);
    }
    fp
}

fn walk(root: &Path, fp: &mut (u64, u64, i64)) {
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if let Ok(meta) = entry.metadata() {
            use std::os::unix::fs::MetadataExt;
            fp.0 += 1;
            fp.1 = fp.1.wrapping_add(meta.len());
            let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
            fp.2 =
                fp.2.max(ns(meta.mtime(), meta.mtime_nsec()))
                    .max(ns(meta.ctime(), meta.ctime_nsec()));
        }
    }
}
