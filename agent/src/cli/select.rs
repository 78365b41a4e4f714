//! Which snapshots a reading command means.
//!
//! `--host` and `--job` are checked against what exists before anything is
//! read, so that a typo is a usage error naming the known ones rather than
//! an empty answer that looks like a pass: a host must have snapshots in
//! the repository (or be this configuration's host); a job must be in the
//! configuration or have snapshots of that host in the repository.
//!
//! A snapshot id may be given in full, as `latest`, or as a unique prefix
//! (at least [`MIN_PREFIX`] characters) of the id or of its 8 hex digits
//! after the dash (`20261122T1030`, `1a2b3c`); an ambiguous prefix is a
//! usage error listing the candidates.

use anyhow::Result;

use crate::cli::app::App;
use crate::error::UsageError;
use crate::repo::{SnapshotRef, valid_snapshot_id};

/// Shortest snapshot id prefix accepted.
pub const MIN_PREFIX: usize = 4;

/// Where the dash of a snapshot id is: its hex digits follow.
const HEX_START: usize = 17;

/// A host, and a job if one was named, known to exist, with the host's
/// snapshots.
pub struct Scope {
    /// The host.
    pub host: String,
    /// The job named, if any.
    pub job: Option<String>,
    /// Every committed snapshot of the host (all jobs), oldest first.
    pub all: Vec<SnapshotRef>,
}

impl Scope {
    /// Checks `--host` (default: the configured host) and `job`.
    pub fn new(app: &App, host: &Option<String>, job: Option<&str>) -> Result<Scope> {
        let host = app.host(host).to_string();
        let all = app.repo.list_snapshots(&host, None)?;
        if all.is_empty() && host != app.config.agent.host {
            // Only on this error path: hosts (found by a delimiter
            // listing) that hold a committed snapshot, the first few (each
            // costs a listing of that host).
            const NAMED: usize = 20;
            let mut hosts = Vec::new();
            for h in app.repo.list_hosts()? {
                if hosts.len() == NAMED {
                    hosts.push("…".to_string());
                    break;
                }
                if !app.repo.list_snapshots(&h, None)?.is_empty() {
                    hosts.push(h);
                }
            }
            return Err(UsageError(format!(
                "no snapshots of host {host:?} in {} ({})",
                app.repo.store().describe(),
                if hosts.is_empty() {
                    "no host has snapshots there yet".to_string()
                } else {
                    format!("hosts with snapshots: {}", hosts.join(", "))
                }
            ))
            .into());
        }
        if let Some(job) = job {
            let mut known: Vec<&str> = app.config.jobs.iter().map(|j| j.name.as_str()).collect();
            known.extend(all.iter().map(|s| s.job.as_str()));
            known.sort_unstable();
            known.dedup();
            if !known.contains(&job) {
                return Err(UsageError(format!(
                    "no job {job:?}: {} has no such job and host {host} has no snapshots of it in {} (jobs: {})",
                    app.config.file.display(),
                    app.repo.store().describe(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
                .into());
            }
        }
        Ok(Scope {
            host,
            job: job.map(str::to_string),
            all,
        })
    }

    /// The snapshots of the job named (all jobs when none was), oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotRef> {
        self.all
            .iter()
            .filter(|s| self.job.as_deref().is_none_or(|j| s.job == j))
            .cloned()
            .collect()
    }

    /// `spec` with a prefix expanded to the full id it names; `latest` and
    /// full ids as they are.
    pub fn expand(&self, spec: &str) -> Result<String> {
        if spec == "latest" || valid_snapshot_id(spec) {
            return Ok(spec.to_string());
        }
        let shaped = spec.len() >= MIN_PREFIX
            && spec.len() < 25
            && spec.bytes().all(|b| {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'T' || b == b'Z' || b == b'-'
            });
        if !shaped {
            return Err(UsageError(format!(
                "{spec:?} is not a snapshot id (like 20261122T103000Z-1a2b3c4d), a unique prefix of one (at \
                 least {MIN_PREFIX} characters, of the id or of its hex digits after the dash), or `latest`"
            ))
            .into());
        }
        let candidates = self.snapshots();
        let mut matches: Vec<&SnapshotRef> = candidates
            .iter()
            .filter(|s| s.id.starts_with(spec) || s.id.get(HEX_START..).is_some_and(|h| h.starts_with(spec)))
            .collect();
        matches.dedup_by(|a, b| a.id == b.id);
        let scope = match &self.job {
            Some(j) => format!("job {j} of host {}", self.host),
            None => format!("host {}", self.host),
        };
        match matches[..] {
            [one] => Ok(one.id.clone()),
            [] => Err(UsageError(format!(
                "no snapshot of {scope} has an id starting with {spec:?} (see `vaultline snapshots`)"
            ))
            .into()),
            _ => {
                let shown: Vec<String> = matches
                    .iter()
                    .take(10)
                    .map(|s| format!("{} ({})", s.id, s.job))
                    .collect();
                Err(UsageError(format!(
                    "{spec:?} is ambiguous: {} snapshots of {scope} match: {}{}; give more characters",
                    matches.len(),
                    shown.join(", "),
                    if matches.len() > shown.len() { ", …" } else { "" }
                ))
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(ids: &[(&str, &str)]) -> Scope {
        Scope {
            host: "h".into(),
            job: None,
            all: ids
                .iter()
                .map(|(id, job)| SnapshotRef {
                    host: "h".into(),
                    job: job.to_string(),
                    id: id.to_string(),
                    manifest_size: 1,
                    recorded: None,
                })
                .collect(),
        }
    }

    #[test]
    fn prefixes_of_the_id_or_of_its_hex_digits_expand_when_unique() {
        let s = scope(&[
            ("20261122T103000Z-1a2b3c4d", "etc"),
            ("20261123T103000Z-213a811a", "etc"),
            ("20261123T110000Z-99990000", "www"),
        ]);
        assert_eq!(s.expand("213a811a").unwrap(), "20261123T103000Z-213a811a");
        assert_eq!(s.expand("1a2b").unwrap(), "20261122T103000Z-1a2b3c4d");
        assert_eq!(s.expand("20261122").unwrap(), "20261122T103000Z-1a2b3c4d");
        assert_eq!(s.expand("latest").unwrap(), "latest");
        let ambiguous = s.expand("20261123").unwrap_err().to_string();
        assert_eq!(
            ambiguous,
            "\"20261123\" is ambiguous: 2 snapshots of host h match: 20261123T103000Z-213a811a (etc), \
             20261123T110000Z-99990000 (www); give more characters"
        );
        assert!(
            s.expand("abc")
                .unwrap_err()
                .to_string()
                .contains("at least 4 characters")
        );
        assert!(s.expand("../x").is_err());
        assert_eq!(
            s.expand("ffff").unwrap_err().to_string(),
            "no snapshot of host h has an id starting with \"ffff\" (see `vaultline snapshots`)"
        );
    }
}
