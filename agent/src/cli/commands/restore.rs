//! `vaultline restore SNAPSHOT|latest [PATH…] --target DIR`: write a
//! snapshot, or the entries selected by paths, `--include` and `--exclude`,
//! below DIR. Only the archives (and within them, the frames) that hold the
//! selected files are fetched; archives in a Glacier class are thawed first
//! (`thaw`). See `extract` for the safety
//! rules. Entries refused as unsafe make the command fail with the integrity
//! exit code (vaultline never archives such entries, so the archive is not
//! what vaultline wrote); existing files left alone make it fail with the
//! run-failed code, after everything else has been restored.
//!
//! `restore SNAPSHOT --to-stdout PATH` writes one file's content to
//! standard output instead (a dump for `pg_restore`, say). The bytes come
//! from authenticated sealed chunks only, as a restore's do; but a pipe
//! cannot take back what it was given, so a failure midway (an altered
//! archive: exit 5) leaves the reader with what was written until then.

use std::io::Read;

use anyhow::Result;
use serde::Serialize;
use vaultline_config::Patterns;

use crate::cli::app::App;
use crate::cli::args::RestoreArgs;
use crate::cli::select::Scope;
use crate::error::{IntegrityError, UsageError};
use crate::ops::report::Recorder;
use std::collections::HashMap;
use std::path::Path;

use crate::pipeline::extract::{Extractor, Options, Refused};
use crate::pipeline::snapshot::{SnapshotReader, open_first, resolve};
use crate::repo::manifest::{EncodedPath, Entry, EntryKind};
use crate::units::{count, human_bytes};

#[derive(Serialize)]
struct RestoreReport {
    snapshot: String,
    host: String,
    job: String,
    target: String,
    entries: u64,
    files: u64,
    bytes: u64,
    /// Entries found in place already, identical (a restore run again).
    already: u64,
    refused: Vec<Refused>,
    blocked: Vec<Refused>,
    existing: Vec<String>,
    /// What was restored only in part, by kind.
    notes: Vec<String>,
    /// Files restored without their setuid/setgid bits or capabilities.
    dropped_privileges: Vec<String>,
}

/// Runs `restore`, recording it in the audit trail.
pub fn run(app: &App, args: &RestoreArgs) -> Result<()> {
    if args.dry_run {
        // Nothing is restored, so nothing is recorded.
        let keys = app.keys()?;
        return restore(app, args, &keys, None);
    }
    let recorder = app.recorder("restore");
    let target = match (&args.target, &args.to_stdout) {
        (Some(t), _) => t.display().to_string(),
        (None, Some(path)) => format!("standard output ({path})"),
        (None, None) => String::new(),
    };
    recorder.event(
        "restore-started",
        serde_json::json!({ "snapshot": args.snapshot, "job": args.job, "target": target }),
    )?;
    let keys = app.keys()?;
    let result = restore(app, args, &keys, Some(&recorder));
    recorder.event(
        "restore-finished",
        serde_json::json!({
            "snapshot": args.snapshot,
            "target": target,
            "result": match &result { Ok(()) => "ok".to_string(), Err(e) => format!("{e:#}") },
            "key_use": keys.usage(),
        }),
    )?;
    result
}

/// What `restore --dry-run` reports.
#[derive(Serialize)]
struct RestorePlan {
    snapshot: String,
    host: String,
    job: String,
    target: String,
    entries: u64,
    bytes: u64,
    archives: u64,
    fetch_bytes: u64,
}

fn restore(
    app: &App,
    args: &RestoreArgs,
    keys: &crate::keys::Keys,
    recorder: Option<&Recorder>,
) -> Result<()> {
    if let Some(path) = &args.to_stdout {
        return to_stdout(app, args, path, keys, recorder);
    }
    let target = args
        .target
        .as_deref()
        .ok_or_else(|| UsageError("give --target DIR, or --to-stdout PATH".into()))?;
    let selection = Selection::new(&args.paths, &args.include, &args.exclude)?;
    app.repo.check_key(keys.as_ref())?;
    if let Some(recorder) = recorder {
        recorder.reached();
    }
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let host = scope.host.as_str();
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    let id = scope.expand(&args.snapshot)?;
    let candidates = resolve(&app.repo, host, args.job.as_deref(), &configured, &id)?;
    let reader = open_first(&app.repo, keys.as_ref(), candidates)?;
    let snap = reader.snapshot().clone();
    let donors = donors(&reader, &selection)?;
    let mut select = |e: &Entry| selection.selects(&e.path.0) || donors.contains_key(&e.path.0);
    let plan = reader.plan(&mut select)?;
    if plan.entries == 0 && !selection.is_all() {
        return Err(UsageError(format!(
            "nothing in snapshot {} matches the paths and patterns given",
            snap.id
        ))
        .into());
    }
    let fetch: u64 = plan
        .archives
        .iter()
        .map(|(_, p)| p.fetch_bytes(reader.chunk_size()))
        .sum();
    tracing::info!(
        "snapshot {}: {} selected, {} of content, from {}; fetching {}",
        snap.id,
        count(plan.entries, "entry", "entries"),
        human_bytes(plan.bytes),
        count(plan.archives.len() as u64, "archive", "archives"),
        human_bytes(fetch)
    );
    if args.dry_run {
        let p = RestorePlan {
            snapshot: snap.id.clone(),
            host: snap.host.clone(),
            job: snap.job.clone(),
            target: target.display().to_string(),
            entries: plan.entries,
            bytes: plan.bytes,
            archives: plan.archives.len() as u64,
            fetch_bytes: fetch,
        };
        return app.out.result(&p, || {
            format!(
                "dry run: would restore {} ({} of content) of snapshot {} of {}/{} into {}, fetching {} from \
                 {}; nothing was written",
                count(p.entries, "entry", "entries"),
                human_bytes(p.bytes),
                p.snapshot,
                p.host,
                p.job,
                p.target,
                human_bytes(p.fetch_bytes),
                count(p.archives, "archive", "archives")
            )
        });
    }
    ensure_readable(app, &plan, args.request_only)?;

    let progress = app.out.progress(
        &format!("restoring {}", snap.id),
        Some(plan.bytes),
        Some(plan.entries),
    );
    let onto_root = target.canonicalize().is_ok_and(|t| t == Path::new("/"));
    let options = Options {
        overwrite: args.overwrite,
        // Setuid/setgid bits and file capabilities grant privileges: a
        // snapshot (from a host that may be compromised) gets them only
        // when asked, or when root puts a system back where it was.
        keep_privileges: args.keep_privileges || (onto_root && rustix::process::geteuid().is_root()),
        journal: Some(restore_journal(&app.config.agent.state_dir, target, &snap.id)),
    };
    let mut extractor = Extractor::new(target, options)?;
    let walked = reader.read(
        &plan,
        &mut select,
        &mut |entry: &Entry, data: Option<&mut dyn Read>| {
            // A hard link whose first name is not selected is restored from
            // that name's data, under its own name.
            if let Some(link) = donors.get(&entry.path.0) {
                let mut as_link = entry.clone();
                as_link.path = link.clone();
                as_link.linked = true;
                extractor.place(&as_link, data)?;
            } else if entry.kind == EntryKind::Hardlink
                && let Some(link) = entry.target.as_ref().and_then(|t| donors.get(&t.0))
                && *link != entry.path
            {
                let mut retargeted = entry.clone();
                retargeted.target = Some(link.clone());
                extractor.place(&retargeted, data)?;
            } else if entry.kind != EntryKind::Hardlink || !donors.values().any(|l| *l == entry.path) {
                extractor.place(entry, data)?;
            }
            progress.add(entry.size, 1);
            Ok(())
        },
    )?;
    let entries = walked.entries - donors.len() as u64;
    progress.finish();
    let extracted = extractor.finish()?;

    let report = RestoreReport {
        snapshot: snap.id.clone(),
        host: snap.host.clone(),
        job: snap.job.clone(),
        target: target.display().to_string(),
        entries,
        files: extracted.files,
        bytes: extracted.bytes,
        already: extracted.already,
        refused: extracted.refused,
        blocked: extracted.blocked,
        existing: extracted.existing,
        notes: extracted.notes,
        dropped_privileges: extracted.dropped_privileges,
    };
    for n in &report.notes {
        tracing::warn!("{n}");
    }
    if !report.dropped_privileges.is_empty() {
        let shown: Vec<&str> = report
            .dropped_privileges
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            "{} file(s) restored without their setuid/setgid bits or file capabilities (restore with \
             --keep-privileges to keep them): {}{}",
            report.dropped_privileges.len(),
            shown.join(", "),
            if report.dropped_privileges.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    app.out.summary(&report, || {
        let mut t = format!(
            "restored snapshot {} of {}/{} into {}: {}, {} in files",
            report.snapshot,
            report.host,
            report.job,
            report.target,
            count(
                report.entries
                    - report.refused.len() as u64
                    - report.blocked.len() as u64
                    - report.existing.len() as u64,
                "entry",
                "entries"
            ),
            human_bytes(report.bytes)
        );
        if report.already > 0 {
            t.push_str(&format!(" ({} already in place)", report.already));
        }
        t
    })?;
    if !report.refused.is_empty() {
        let list: Vec<String> = report
            .refused
            .iter()
            .map(|r| format!("{} ({})", r.path, r.reason))
            .collect();
        return Err(IntegrityError(format!(
            "snapshot {} contains {} unsafe entr{} that were not restored: {}",
            report.snapshot,
            list.len(),
            if list.len() == 1 { "y" } else { "ies" },
            list.join("; ")
        ))
        .into());
    }
    if !report.blocked.is_empty() {
        let list: Vec<String> = report
            .blocked
            .iter()
            .take(5)
            .map(|r| format!("{} ({})", r.path, r.reason))
            .collect();
        anyhow::bail!(
            "{} entr{} could not be restored into {}: {}{}",
            report.blocked.len(),
            if report.blocked.len() == 1 { "y" } else { "ies" },
            report.target,
            list.join("; "),
            if report.blocked.len() > list.len() {
                "; …"
            } else {
                ""
            }
        );
    }
    if !report.existing.is_empty() {
        let shown: Vec<&str> = report.existing.iter().take(5).map(String::as_str).collect();
        anyhow::bail!(
            "{} entr{} already exist in {} and were left alone (use --overwrite to replace files): {}{}",
            report.existing.len(),
            if report.existing.len() == 1 { "y" } else { "ies" },
            report.target,
            shown.join(", "),
            if report.existing.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `restore SNAPSHOT --to-stdout PATH`: the content of the file PATH of
/// the snapshot on standard output (a hard link's, its inode's). Refused
/// before anything is fetched when standard output is a terminal, or when
/// PATH is not a file of the snapshot.
fn to_stdout(
    app: &App,
    args: &RestoreArgs,
    path: &str,
    keys: &crate::keys::Keys,
    recorder: Option<&Recorder>,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    if std::io::stdout().is_terminal() {
        return Err(UsageError(
            "standard output is a terminal: --to-stdout writes a file's bytes; send them to a file or a pipe \
             (`… --to-stdout PATH > FILE`, `… | pg_restore …`)"
                .into(),
        )
        .into());
    }
    let mut wanted = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .as_bytes()
        .to_vec();
    if wanted.is_empty() {
        return Err(UsageError(format!("--to-stdout {path:?}: name a file of the snapshot")).into());
    }
    app.repo.check_key(keys.as_ref())?;
    if let Some(recorder) = recorder {
        recorder.reached();
    }
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    let id = scope.expand(&args.snapshot)?;
    let candidates = resolve(
        &app.repo,
        scope.host.as_str(),
        args.job.as_deref(),
        &configured,
        &id,
    )?;
    let reader = open_first(&app.repo, keys.as_ref(), candidates)?;
    let snap = reader.snapshot().clone();
    // What PATH is: a file (a hard link: its inode's first name, which
    // holds the content), or a precise refusal.
    let find = |want: &[u8]| -> Result<Option<Entry>> {
        let mut pass = reader.pass()?;
        while let Some(e) = pass.next_entry()? {
            if e.path.0 == want {
                return Ok(Some(e));
            }
        }
        Ok(None)
    };
    let entry = find(&wanted)?.ok_or_else(|| {
        UsageError(format!(
            "snapshot {} has no {path} (`vaultline ls {} -r` lists what it holds)",
            snap.id, snap.id
        ))
    })?;
    let entry = match entry.kind {
        EntryKind::File => entry,
        EntryKind::Hardlink => {
            let target = entry.target.clone().unwrap_or_default();
            wanted = target.0.clone();
            find(&wanted)?
                .filter(|e| e.kind == EntryKind::File)
                .ok_or_else(|| {
                    IntegrityError(format!(
                        "snapshot {}: {path} is a hard link to {}, which is not a file of the snapshot",
                        snap.id,
                        target.display()
                    ))
                })?
        }
        other => {
            return Err(UsageError(format!(
                "{path} is a {} in snapshot {}: --to-stdout writes the content of one file",
                match other {
                    EntryKind::Dir => "directory",
                    EntryKind::Symlink => "symbolic link",
                    EntryKind::Fifo => "FIFO",
                    _ => "device node",
                },
                snap.id
            ))
            .into());
        }
    };
    let mut select = |e: &Entry| e.path.0 == wanted;
    let plan = reader.plan(&mut select)?;
    ensure_readable(app, &plan, args.request_only)?;
    tracing::info!(
        "snapshot {}: writing {path} ({}) to standard output",
        snap.id,
        human_bytes(entry.size)
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut written = 0u64;
    reader.read(
        &plan,
        &mut select,
        &mut |_e: &Entry, data: Option<&mut dyn Read>| {
            if let Some(data) = data {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = data.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])
                        .map_err(|e| anyhow::Error::new(e).context("writing to standard output"))?;
                    written += n as u64;
                }
            }
            Ok(())
        },
    )?;
    out.flush()
        .map_err(|e| anyhow::Error::new(e).context("writing to standard output"))?;
    if written != entry.size {
        return Err(IntegrityError(format!(
            "snapshot {}: {path} holds {} bytes, {written} were read",
            snap.id, entry.size
        ))
        .into());
    }
    tracing::info!(
        "snapshot {}: wrote {path} to standard output ({} bytes)",
        snap.id,
        written
    );
    Ok(())
}

/// Where the journal of a restore of `snapshot` into `target` is kept: one
/// per (target, snapshot), so only a rerun of the same restore reads it.
/// Archives of `plan` in a Glacier class are thawed (or, with
/// `request_only`, their thaw requested) before anything is read: S3 only.
fn ensure_readable(app: &App, plan: &crate::pipeline::snapshot::Plan, request_only: bool) -> Result<()> {
    if let vaultline_config::Repository::S3(s3) = &app.config.repository {
        crate::pipeline::thaw::ensure_readable(
            app.repo.store(),
            &s3.restore_tier,
            s3.restore_days,
            plan,
            request_only,
        )?;
    }
    Ok(())
}

fn restore_journal(state_dir: &Path, target: &Path, snapshot: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let target = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    let key = hex::encode(&sha2::Sha256::digest(target.as_os_str().as_encoded_bytes())[..8]);
    state_dir
        .join("restores")
        .join(format!("{snapshot}-{key}.journal"))
}

/// Selected hard links whose first name is not selected: that name's entry
/// (by path) → the first selected link's path, which it is restored as.
fn donors(reader: &SnapshotReader<'_>, selection: &Selection) -> Result<HashMap<Vec<u8>, EncodedPath>> {
    let mut donors: HashMap<Vec<u8>, EncodedPath> = HashMap::new();
    if selection.is_all() {
        return Ok(donors);
    }
    let mut pass = reader.pass()?;
    while let Some(e) = pass.next_entry()? {
        if e.kind == EntryKind::Hardlink
            && selection.selects(&e.path.0)
            && let Some(target) = &e.target
            && !selection.selects(&target.0)
        {
            donors.entry(target.0.clone()).or_insert(e.path);
        }
    }
    Ok(donors)
}

/// Which entries a restore takes: those a PATH or an `--include` pattern
/// matches (all when none is given), minus those an `--exclude` pattern
/// matches, in the one pattern language of [`Patterns`] (docs/patterns.md):
/// PATHs are anchored at the root, a pattern without `/` is a name
/// anywhere, and a matching directory brings (or keeps out) everything
/// below it.
struct Selection {
    paths: Patterns,
    include: Patterns,
    exclude: Patterns,
}

impl Selection {
    fn new(paths: &[String], include: &[String], exclude: &[String]) -> Result<Self> {
        let usage = |flag: &str, e: vaultline_config::PatternError| UsageError(format!("{flag}: {e}"));
        Ok(Selection {
            paths: Patterns::anchored(paths).map_err(|e| usage("PATH", e))?,
            include: Patterns::new(include).map_err(|e| usage("--include", e))?,
            exclude: Patterns::new(exclude).map_err(|e| usage("--exclude", e))?,
        })
    }

    fn is_all(&self) -> bool {
        self.paths.is_empty() && self.include.is_empty() && self.exclude.is_empty()
    }

    fn selects(&self, path: &[u8]) -> bool {
        let wanted = (self.paths.is_empty() && self.include.is_empty())
            || self.paths.matches_within(path)
            || self.include.matches_within(path);
        wanted && !self.exclude.matches_within(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_match_entries_and_everything_below_a_matching_directory() {
        let s = Selection::new(&[], &["/etc/ssh".into(), "**/*.conf".into()], &[]).unwrap();
        assert!(s.selects(b"etc/ssh"));
        assert!(s.selects(b"etc/ssh/sshd_config"));
        assert!(s.selects(b"var/app/x.conf"));
        assert!(!s.selects(b"etc/sshd"));
        assert!(!s.selects(b"etc/hosts"));
        assert!(Selection::new(&[], &[], &[]).unwrap().selects(b"anything"));
    }

    #[test]
    fn paths_select_exactly_and_excludes_win() {
        let s = Selection::new(
            &["/etc/ssh/".into()],
            &[],
            &["**/*.key".into(), "etc/ssh/keys".into()],
        )
        .unwrap();
        assert!(s.selects(b"etc/ssh"));
        assert!(s.selects(b"etc/ssh/sshd_config"));
        assert!(!s.selects(b"etc/ssh-old"));
        assert!(!s.selects(b"etc/ssh/host.key"));
        assert!(!s.selects(b"etc/ssh/keys/a"));
        let only_exclude = Selection::new(&[], &[], &["tmp".into()]).unwrap();
        assert!(only_exclude.selects(b"etc/hosts"));
        assert!(!only_exclude.selects(b"tmp/x"));
        assert!(
            !only_exclude.selects(b"var/tmp/x"),
            "a name anywhere, as in the configuration"
        );
        assert!(Selection::new(&["/".into()], &[], &[]).is_err());
    }

    #[test]
    fn patterns_without_a_slash_match_names_anywhere_as_config_excludes_do() {
        let s = Selection::new(&[], &["*.conf".into(), "ssh_config".into()], &[]).unwrap();
        assert!(s.selects(b"etc/nginx/nginx.conf"));
        assert!(s.selects(b"etc/ssh/ssh_config"));
        assert!(!s.selects(b"etc/hosts"));
        let s = Selection::new(&[], &[], &["*.conf".into()]).unwrap();
        assert!(!s.selects(b"etc/nginx/nginx.conf"));
        assert!(s.selects(b"etc/hosts"));
    }
}
