//! `vaultline ls SNAPSHOT [PATH]` and `vaultline find PATTERN…`: what
//! snapshots hold, read from their manifests alone (no archive is fetched,
//! so this works on archives in Glacier too).
//!
//! `ls` lists one snapshot: all of it, or a PATH and what is directly in it
//! (everything below it with `--recursive`). `find` lists the entries of
//! every snapshot of the host (or of one job, or one snapshot) that match
//! patterns of the one pattern language (docs/patterns.md). Both stop early
//! when their reader goes away (`| head`). A manifest that cannot be
//! trusted is reported; `find` goes on with the others and exits 5.

use anyhow::Result;
use serde::Serialize;
use vaultline_config::Patterns;

use crate::cli::app::App;
use crate::cli::args::{FindArgs, LsArgs};
use crate::cli::output::{print_line, stdout_closed};
use crate::cli::select::Scope;
use crate::error::{IntegrityError, UsageError, is_integrity};
use crate::pipeline::snapshot::{SnapshotReader, open_first, resolve};
use crate::repo::manifest::{Entry, EntryKind};
use crate::units::{count, human_bytes};

/// One entry as listed.
#[derive(Serialize)]
struct Listed {
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    /// Absolute, as backed up (lossy UTF-8 for names that are not).
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    /// Permission bits in octal.
    mode: String,
    uid: u32,
    gid: u32,
    /// Modification time (RFC 3339, UTC).
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl Listed {
    fn of(e: &Entry, snapshot: Option<(&str, &str)>) -> Listed {
        Listed {
            snapshot: snapshot.map(|(s, _)| s.to_string()),
            job: snapshot.map(|(_, j)| j.to_string()),
            path: absolute(&e.path.0),
            kind: kind_name(e.kind),
            size: e.size,
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            mtime: jiff::Timestamp::from_second(e.mtime)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            target: e.target.as_ref().map(|t| t.display().into_owned()),
        }
    }

    /// `ls` text: the path, or with `long` an `ls -l`-like line.
    fn line(&self, e: &Entry, long: bool) -> String {
        let name = match (&self.target, e.kind) {
            (Some(t), EntryKind::Symlink) => format!("{} -> {t}", self.path),
            (Some(t), EntryKind::Hardlink) => format!("{} => /{}", self.path, t.trim_start_matches('/')),
            _ => self.path.clone(),
        };
        if !long {
            return name;
        }
        let time = jiff::Timestamp::from_second(e.mtime)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let size = if e.kind == EntryKind::File {
            human_bytes(e.size)
        } else {
            String::new()
        };
        format!(
            "{}  {:>5}:{:<5}  {:>10}  {time}  {name}",
            mode_text(e.kind, e.mode),
            e.uid,
            e.gid,
            size
        )
    }
}

fn absolute(path: &[u8]) -> String {
    if path == b"." {
        return "/".into();
    }
    format!("/{}", String::from_utf8_lossy(path))
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hardlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "chardev",
        EntryKind::BlockDevice => "blockdev",
    }
}

/// `drwxr-xr-x`, as `ls -l` shows it.
fn mode_text(kind: EntryKind, mode: u32) -> String {
    let mut t = String::with_capacity(10);
    t.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
        EntryKind::Fifo => 'p',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::File => '-',
    });
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        t.push(if bits & 4 != 0 { 'r' } else { '-' });
        t.push(if bits & 2 != 0 { 'w' } else { '-' });
        t.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    t
}

/// Runs `ls`.
pub fn run(app: &App, args: &LsArgs) -> Result<()> {
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
    let id = scope.expand(&args.snapshot)?;
    let candidates = resolve(&app.repo, &scope.host, args.job.as_deref(), &configured, &id)?;
    let reader = open_first(&app.repo, keys.as_ref(), candidates)?;
    let snap = reader.snapshot().clone();

    let under: Option<Vec<u8>> = match &args.path {
        Some(p) => {
            let trimmed = p.trim_matches('/');
            Some(if trimmed.is_empty() {
                b".".to_vec()
            } else {
                trimmed.as_bytes().to_vec()
            })
        }
        None => None,
    };
    let wanted = |path: &[u8]| -> bool {
        let Some(dir) = &under else { return true };
        if path == &dir[..] || dir == b"." {
            return true;
        }
        let Some(rest) = path.strip_prefix(&dir[..]).and_then(|r| r.strip_prefix(b"/")) else {
            return false;
        };
        args.recursive || !rest.contains(&b'/')
    };
    let mut found = false;
    let mut listed = Vec::new();
    let mut pass = reader.pass()?;
    while let Some(e) = pass.next_entry()? {
        if !wanted(&e.path.0) {
            continue;
        }
        found = true;
        let item = Listed::of(&e, None);
        if app.out.json {
            listed.push(item);
        } else {
            print_line(&item.line(&e, args.long))?;
            if stdout_closed() {
                return Ok(());
            }
        }
    }
    if let (Some(p), false) = (&args.path, found) {
        return Err(UsageError(format!(
            "snapshot {} of job {} has no {}",
            snap.id,
            snap.job,
            absolute(p.trim_matches('/').as_bytes())
        ))
        .into());
    }
    if app.out.json {
        app.out.result(&listed, String::new)?;
    }
    Ok(())
}

/// Runs `find`.
pub fn find(app: &App, args: &FindArgs) -> Result<()> {
    let patterns = Patterns::new(&args.patterns).map_err(|e| UsageError(e.to_string()))?;
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    let scope = Scope::new(app, &args.host, args.job.as_deref())?;
    let snapshots = match &args.snapshot {
        Some(spec) => {
            let configured: Vec<String> = app.config.jobs.iter().map(|j| j.name.clone()).collect();
            let id = scope.expand(spec)?;
            resolve(&app.repo, &scope.host, args.job.as_deref(), &configured, &id)?
                .into_iter()
                .take(1)
                .collect()
        }
        None => scope.snapshots(),
    };
    let (mut matches, mut listed, mut unreadable) = (0u64, Vec::new(), Vec::new());
    for snap in &snapshots {
        let reader = match SnapshotReader::open(&app.repo, keys.as_ref(), snap.clone()) {
            Ok(r) => r,
            Err(e) if is_integrity(&e) => {
                tracing::error!("snapshot {} of job {}: {e:#}", snap.id, snap.job);
                unreadable.push(snap.id.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut pass = reader.pass()?;
        while let Some(e) = pass.next_entry()? {
            if !patterns.matches(&e.path.0) {
                continue;
            }
            matches += 1;
            let item = Listed::of(&e, Some((&snap.id, &snap.job)));
            if app.out.json {
                listed.push(item);
                continue;
            }
            let time = jiff::Timestamp::from_second(e.mtime)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let size = if e.kind == EntryKind::File {
                human_bytes(e.size)
            } else {
                kind_name(e.kind).to_string()
            };
            if matches == 1 {
                print_line(&format!(
                    "{:<25}  {:<16}  {:<19}  {:>10}  PATH",
                    "SNAPSHOT", "JOB", "MODIFIED", "SIZE"
                ))?;
            }
            print_line(&format!(
                "{:<25}  {:<16}  {time:<19}  {size:>10}  {}",
                snap.id,
                snap.job,
                item.line(&e, false)
            ))?;
            if stdout_closed() {
                return Ok(());
            }
        }
    }
    if app.out.json {
        app.out.result(&listed, String::new)?;
    } else if matches == 0 {
        print_line(&format!(
            "no entry of {} of host {} matches {}",
            count(snapshots.len() as u64, "snapshot", "snapshots"),
            scope.host,
            args.patterns.join(", ")
        ))?;
    }
    if unreadable.is_empty() {
        Ok(())
    } else {
        Err(IntegrityError(format!(
            "{} could not be read: {} (see `vaultline verify`)",
            count(unreadable.len() as u64, "snapshot manifest", "snapshot manifests"),
            unreadable.join(", ")
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(mode_text(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_text(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_text(EntryKind::File, 0o2640), "-rw-r-S---");
        assert_eq!(mode_text(EntryKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_text(EntryKind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(absolute(b"etc/hosts"), "/etc/hosts");
        assert_eq!(absolute(b"."), "/");
    }
}
