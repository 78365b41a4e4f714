//! `vaultline restore SNAPSHOT|latest --target DIR`: write a snapshot (or the
//! entries matching `--include`) below DIR. See `extract` for the safety
//! rules. Entries refused as unsafe make the command fail with the integrity
//! exit code (vaultline never archives such entries, so the archive is not
//! what vaultline wrote); existing files left alone make it fail with the
//! run-failed code, after everything else has been restored.

use std::io::Read;

use anyhow::Result;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::app::App;
use crate::cli::RestoreArgs;
use crate::exit::{IntegrityError, UsageError};
use crate::extract::{Extractor, Refused};
use crate::manifest::Entry;
use crate::output::human_bytes;
use crate::snapshot::{SnapshotReader, resolve};

#[derive(Serialize)]
struct RestoreReport {
    snapshot: String,
    host: String,
    job: String,
    target: String,
    entries: u64,
    files: u64,
    bytes: u64,
    refused: Vec<Refused>,
    existing: Vec<String>,
}

/// Runs `restore`, recording it in the audit trail (kept locally: a
/// restore principal may not write to the bucket; the next backup ships it).
pub fn run(app: &App, args: &RestoreArgs) -> Result<()> {
    let audit = app.audit("restore");
    audit.record(
        "restore-started",
        serde_json::json!({ "snapshot": args.snapshot, "job": args.job, "target": args.target }),
    )?;
    let keys = app.keys()?;
    let result = restore(app, args, &keys);
    audit.record(
        "restore-finished",
        serde_json::json!({
            "snapshot": args.snapshot,
            "target": args.target,
            "result": match &result { Ok(()) => "ok".to_string(), Err(e) => format!("{e:#}") },
            "key_use": keys.usage(),
        }),
    )?;
    result
}

fn restore(app: &App, args: &RestoreArgs, keys: &crate::app::Keys) -> Result<()> {
    let include = include_set(&args.include)?;
    app.repo.check_key(keys.as_ref())?;
    let host = app.host(&args.host);
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    let snap = resolve(&app.repo, host, args.job.as_deref(), &configured, &args.snapshot)?;

    let total = if app.out.interactive() {
        Some(
            SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone())?
                .summary()?
                .1
                .bytes,
        )
    } else {
        None
    };
    let progress = app.out.progress(&format!("restoring {}", snap.id), total);
    let reader = SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone())?;
    let mut extractor = Extractor::new(&args.target, args.overwrite)?;
    let mut entries = 0u64;
    reader.walk(|entry: &Entry, data: Option<&mut dyn Read>| {
        if !is_included(include.as_ref(), &entry.path.0) {
            return Ok(());
        }
        entries += 1;
        extractor.place(entry, data)?;
        progress.add(entry.size, 1);
        Ok(())
    })?;
    progress.finish();
    let extracted = extractor.finish()?;

    let report = RestoreReport {
        snapshot: snap.id.clone(),
        host: snap.host.clone(),
        job: snap.job.clone(),
        target: args.target.display().to_string(),
        entries,
        files: extracted.files,
        bytes: extracted.bytes,
        refused: extracted.refused,
        existing: extracted.existing,
    };
    app.out.result(&report, || {
        format!(
            "restored snapshot {} of {}/{} into {}: {} entries, {} in files",
            report.snapshot,
            report.host,
            report.job,
            report.target,
            report.entries - report.refused.len() as u64 - report.existing.len() as u64,
            human_bytes(report.bytes)
        )
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

fn include_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p.trim_start_matches('/').trim_end_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| UsageError(format!("--include {p:?}: invalid glob: {}", e.kind())))?;
        set.add(glob);
    }
    Ok(Some(
        set.build().map_err(|e| UsageError(format!("--include: {e}")))?,
    ))
}

/// An entry is included when it or one of its parent directories matches, so
/// `--include etc/ssh` restores the directory and all it contains.
fn is_included(set: Option<&GlobSet>, path: &[u8]) -> bool {
    let Some(set) = set else { return true };
    let text = String::from_utf8_lossy(path);
    let mut candidate: &str = &text;
    loop {
        if set.is_match(candidate) {
            return true;
        }
        match candidate.rfind('/') {
            Some(i) => candidate = &candidate[..i],
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_match_entries_and_everything_below_a_matching_directory() {
        let set = include_set(&["/etc/ssh".into(), "**/*.conf".into()]).unwrap();
        assert!(is_included(set.as_ref(), b"etc/ssh"));
        assert!(is_included(set.as_ref(), b"etc/ssh/sshd_config"));
        assert!(is_included(set.as_ref(), b"var/app/x.conf"));
        assert!(!is_included(set.as_ref(), b"etc/sshd"));
        assert!(!is_included(set.as_ref(), b"etc/hosts"));
        assert!(is_included(None, b"anything"));
    }
}
