//! Which snapshots a retention policy keeps, and why.
//!
//! The rules of `[jobs.retention]`, each over the job's snapshots from the
//! newest back. Times are UTC and are each snapshot's
//! [`time`](crate::repo::SnapshotRef::time): what its id claims, capped by
//! when the repository recorded it, so a client clock cannot move a
//! snapshot into a later period (future-dated snapshots never get here:
//! `forget` leaves them out).
//!
//! - `keep-last = N`: the N newest;
//! - `keep-hourly/daily/weekly/monthly/yearly = N`: for each of the N most
//!   recent hours (days, ISO weeks, months, years) that have a snapshot, the
//!   newest snapshot in it.
//!
//! A snapshot is kept when any rule keeps it; every rule that does is
//! listed as a reason. The newest snapshot is always kept: the next
//! incremental run builds on it. A policy of all zeros keeps everything.
//! What a kept snapshot's chain needs (archives of earlier snapshots) is
//! not decided here but in `forget`, from the manifests.

use std::collections::BTreeMap;

use vaultline_config::Retention;

/// The decision for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// Why it is kept; empty when it is to be forgotten.
    pub reasons: Vec<String>,
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dated {
    /// Snapshot id.
    pub id: String,
    /// When it was taken (see the module doc).
    pub time: jiff::Timestamp,
}

/// Applies `policy` to the snapshots of one job (any order).
pub fn apply(policy: &Retention, snapshots: &[Dated]) -> Vec<Decision> {
    let mut by_time: Vec<&Dated> = snapshots.iter().collect();
    by_time.sort_unstable_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let times: BTreeMap<&str, jiff::Timestamp> = by_time.iter().map(|d| (d.id.as_str(), d.time)).collect();
    let sorted: Vec<&String> = by_time.iter().map(|d| &d.id).collect();
    let mut reasons: BTreeMap<&str, Vec<String>> =
        sorted.iter().map(|id| (id.as_str(), Vec::new())).collect();
    let everything = *policy == Retention::default();
    if let Some(newest) = sorted.first() {
        reasons
            .entry(newest.as_str())
            .or_default()
            .push("newest (the next incremental run builds on it)".into());
    }
    if everything {
        for id in &sorted {
            reasons
                .entry(id.as_str())
                .or_default()
                .push("no retention policy: everything is kept".into());
        }
    }
    for (i, id) in sorted.iter().enumerate() {
        if (i as u32) < policy.keep_last {
            reasons
                .entry(id.as_str())
                .or_default()
                .push(format!("last {}", i + 1));
        }
    }
    type Bucket = fn(jiff::Timestamp) -> String;
    let rules: [(&str, u32, Bucket); 5] = [
        ("hourly", policy.keep_hourly, |t| {
            t.strftime("%Y-%m-%dT%H").to_string()
        }),
        ("daily", policy.keep_daily, |t| t.strftime("%Y-%m-%d").to_string()),
        ("weekly", policy.keep_weekly, week),
        ("monthly", policy.keep_monthly, |t| {
            t.strftime("%Y-%m").to_string()
        }),
        ("yearly", policy.keep_yearly, |t| t.strftime("%Y").to_string()),
    ];
    for (name, count, bucket_of) in rules {
        let mut seen: Vec<String> = Vec::new();
        for id in &sorted {
            if seen.len() as u32 >= count {
                break;
            }
            let bucket = bucket_of(times[id.as_str()]);
            if seen.last() == Some(&bucket) {
                continue;
            }
            reasons
                .entry(id.as_str())
                .or_default()
                .push(format!("{name} {bucket}"));
            seen.push(bucket);
        }
    }
    sorted
        .iter()
        .map(|id| Decision {
            id: id.to_string(),
            reasons: reasons.remove(id.as_str()).unwrap_or_default(),
        })
        .collect()
}

/// ISO week, `2026-W47`.
fn week(t: jiff::Timestamp) -> String {
    let w = t.to_zoned(jiff::tz::TimeZone::UTC).date().iso_week_date();
    format!("{}-W{:02}", w.year(), w.week())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Dated> {
        list.iter()
            .map(|s| Dated {
                id: s.to_string(),
                time: crate::repo::snapshot_timestamp(s),
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter()
            .filter(|d| !d.reasons.is_empty())
            .map(|d| d.id.as_str())
            .collect()
    }

    #[test]
    fn keep_last_and_daily_pick_the_newest_of_each_day() {
        let all = ids(&[
            "20261120T010000Z-00000001",
            "20261120T230000Z-00000002",
            "20261121T120000Z-00000003",
            "20261122T080000Z-00000004",
            "20261122T090000Z-00000005",
        ]);
        let policy = Retention {
            keep_last: 1,
            keep_daily: 2,
            ..Retention::default()
        };
        let d = apply(&policy, &all);
        assert_eq!(
            kept(&d),
            ["20261122T090000Z-00000005", "20261121T120000Z-00000003"]
        );
        let newest = &d[0];
        assert!(newest.reasons.contains(&"last 1".to_string()), "{newest:?}");
        assert!(
            newest.reasons.contains(&"daily 2026-11-22".to_string()),
            "{newest:?}"
        );
    }

    #[test]
    fn weekly_monthly_yearly_buckets() {
        let all = ids(&[
            "20241231T000000Z-00000001",
            "20251230T000000Z-00000002",
            "20260105T000000Z-00000003",
            "20260110T000000Z-00000004",
            "20260201T000000Z-00000005",
        ]);
        let weekly = apply(
            &Retention {
                keep_weekly: 2,
                ..Retention::default()
            },
            &all,
        );
        // 2026-02-01 is in 2026-W05; 2026-01-10 in W02 (2026-01-05 too: older, same week).
        assert_eq!(
            kept(&weekly),
            ["20260201T000000Z-00000005", "20260110T000000Z-00000004"]
        );
        let yearly = apply(
            &Retention {
                keep_yearly: 3,
                ..Retention::default()
            },
            &all,
        );
        assert_eq!(
            kept(&yearly),
            [
                "20260201T000000Z-00000005",
                "20251230T000000Z-00000002",
                "20241231T000000Z-00000001"
            ]
        );
        // 2025-12-30 is in ISO week 2026-W01.
        assert_eq!(
            week(crate::repo::snapshot_timestamp("20251230T000000Z-00000002")),
            "2026-W01"
        );
    }

    #[test]
    fn no_policy_keeps_everything_and_the_newest_is_always_kept() {
        let all = ids(&["20261120T010000Z-00000001", "20261121T010000Z-00000002"]);
        assert_eq!(kept(&apply(&Retention::default(), &all)).len(), 2);
        let hourly = apply(
            &Retention {
                keep_hourly: 0,
                keep_yearly: 0,
                keep_monthly: 0,
                keep_last: 0,
                keep_daily: 0,
                keep_weekly: 0,
            },
            &all,
        );
        assert_eq!(kept(&hourly).len(), 2);
        let one_day = Retention {
            keep_daily: 1,
            ..Retention::default()
        };
        let d = apply(&one_day, &all);
        assert_eq!(kept(&d), ["20261121T010000Z-00000002"]);
    }

    #[test]
    fn periods_and_order_come_from_the_times_given_not_the_ids() {
        // An id claiming a later day, recorded earlier: its time is what counts.
        let all = vec![
            Dated {
                id: "20261125T000000Z-00000001".into(),
                time: "2026-11-20T10:00:00Z".parse().unwrap(),
            },
            Dated {
                id: "20261121T000000Z-00000002".into(),
                time: "2026-11-21T00:00:00Z".parse().unwrap(),
            },
        ];
        let d = apply(
            &Retention {
                keep_daily: 1,
                ..Retention::default()
            },
            &all,
        );
        assert_eq!(kept(&d), ["20261121T000000Z-00000002"]);
        assert_eq!(
            d[0].reasons,
            [
                "newest (the next incremental run builds on it)",
                "daily 2026-11-21"
            ]
        );
    }
}
