//! Every host's shipped audit trails, checked on their own: for each trail
//! id found under `PREFIX/HOST/audit/`, [`ShippedTrail::fetch`] (segments
//! that disagree about a line fail) and [`ShippedTrail::verify_chain`]
//! (lines from 1 without a gap, each chained to the one before). No local
//! trail is needed: this is what an auditor can say about hosts they never
//! log into. It reads the segments, which are plain and small; never an
//! archive or a manifest.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use serde::Serialize;

use super::Fleet;
use crate::error::is_integrity;
use crate::ops::audit_log::ShippedTrail;
use crate::repo::Repo;

/// One trail's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TrailCheck {
    /// The host it was shipped under.
    pub host: String,
    /// The trail id.
    pub trail: String,
    /// `verified` or `failed`.
    pub status: &'static str,
    /// Segments read (`None` when they could not all be read as one
    /// trail: two of them disagree, or one is not a segment).
    pub segments: Option<u64>,
    /// Lines shipped, when they form a chain.
    pub lines: Option<u64>,
    /// Hash of the last line, when they form a chain.
    pub head: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TrailCheck {
    /// Whether the trail verified.
    pub fn verified(&self) -> bool {
        self.status == "verified"
    }
}

/// Checks every trail of every host of `fleet`, `parallel` at a time, in
/// host and trail order. A trail whose segments are not consistent is a
/// `failed` row; a failure to read them (permissions, network) is an error.
pub fn verify_trails(repo: &Repo, fleet: &Fleet, parallel: usize) -> Result<Vec<TrailCheck>> {
    let work: Vec<(&str, &str)> = fleet
        .hosts
        .iter()
        .flat_map(|h| h.audit_trails.iter().map(move |t| (h.host.as_str(), t.as_str())))
        .collect();
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, Result<TrailCheck>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, 256).min(work.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(host, trail)) = work.get(i) else { break };
                    let result = check(repo, host, trail);
                    done.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((i, result));
                }
            });
        }
    });
    let mut done = done
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn check(repo: &Repo, host: &str, trail: &str) -> Result<TrailCheck> {
    let failed = |segments: Option<u64>, e: anyhow::Error| TrailCheck {
        host: host.to_string(),
        trail: trail.to_string(),
        status: "failed",
        segments,
        lines: None,
        head: None,
        error: Some(format!("{e:#}")),
    };
    let shipped = match ShippedTrail::fetch(repo, host, trail) {
        Ok(shipped) => shipped,
        Err(e) if is_integrity(&e) => return Ok(failed(None, e)),
        Err(e) => return Err(e),
    };
    Ok(match shipped.verify_chain(trail) {
        Ok(chain) => TrailCheck {
            host: host.to_string(),
            trail: trail.to_string(),
            status: "verified",
            segments: Some(chain.segments),
            lines: Some(chain.lines),
            head: Some(chain.head),
            error: None,
        },
        Err(e) => failed(Some(shipped.segments), e),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::audit_log::{AuditLog, How};
    use crate::ops::fleet::scan;
    use crate::ops::fleet::tests::options;
    use crate::repo::store::ObjectStore;
    use crate::repo::store::memory::MemoryStore;

    fn shipped_trail(repo: &Repo, host: &str, lines: usize) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let how = How {
            command: "backup now".into(),
            host: host.into(),
            version: "0",
            config_sha256: "c".into(),
        };
        let log = AuditLog::new(dir.path(), "tester".into(), how);
        for i in 0..lines {
            log.record("event", serde_json::json!({ "i": i })).unwrap();
            log.ship(repo, host, None).unwrap();
        }
        let trail = crate::ops::audit_log::trail_identity(log.path())
            .unwrap()
            .1
            .unwrap();
        (dir, trail)
    }

    #[test]
    fn each_trail_of_each_host_is_checked_on_its_own() {
        let store = MemoryStore::new();
        let repo = Repo::new(Arc::new(store.clone()), "p");
        let (_a, good) = shipped_trail(&repo, "web1", 3);
        let (_b, second) = shipped_trail(&repo, "web1", 1);
        let (_c, cut) = shipped_trail(&repo, "web2", 3);
        store
            .delete(&format!("p/web2/audit/{cut}/000000000002-000000000002.jsonl"))
            .unwrap();
        let (_d, rewritten) = shipped_trail(&repo, "web3", 2);
        let line = String::from_utf8(
            store
                .get(&format!(
                    "p/web3/audit/{rewritten}/000000000002-000000000002.jsonl"
                ))
                .unwrap(),
        )
        .unwrap();
        store.insert(
            &format!("p/web3/audit/{rewritten}/000000000002-000000000003.jsonl"),
            line.replace("\"i\":1", "\"i\":5").into_bytes(),
        );
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "1d")).unwrap();
        let checks = verify_trails(&repo, &fleet, 3).unwrap();
        let mut want = vec![
            ("web1", good.as_str(), "verified", Some(3)),
            ("web1", second.as_str(), "verified", Some(1)),
            ("web2", cut.as_str(), "failed", None),
            ("web3", rewritten.as_str(), "failed", None),
        ];
        want[..2].sort_by_key(|w| w.1);
        let got: Vec<(&str, &str, &str, Option<u64>)> = checks
            .iter()
            .map(|c| (c.host.as_str(), c.trail.as_str(), c.status, c.lines))
            .collect();
        assert_eq!(got, want);
        let segments: Vec<Option<u64>> = checks.iter().map(|c| c.segments).collect();
        let (first, second) = if good < second { (3, 1) } else { (1, 3) };
        assert_eq!(segments, [Some(first), Some(second), Some(2), None]);
        assert_eq!(
            checks[2].error.as_deref(),
            Some(
                format!(
                    "audit trail {cut}: line 2 is missing from the shipped segments (the next line shipped is 3, \
                     in p/web2/audit/{cut}/000000000003-000000000003.jsonl): a segment was removed"
                )
                .as_str()
            )
        );
        assert!(
            checks[3]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("disagree about line 2: a line was rewritten and shipped again")),
            "{:?}",
            checks[3]
        );
    }
}
