//! `vaultline forget --dry-run|--apply [JOB]`: apply the jobs' retention
//! policies.
//!
//! For each job: the policy decides which snapshots are kept and why
//! (`retention`); every snapshot's manifest is read for its archive and
//! node pack tables, and an archive (or node pack) is kept while any kept
//! snapshot refers to it, so a full whose archive a kept incremental still
//! needs (for files it did not change, or chunks of files it did) stays,
//! whatever its own snapshot's fate. An object no remaining manifest refers
//! to is deleted:
//! those of forgotten snapshots, and orphans that a run committed before it
//! crashed (never one newer than the newest snapshot: that may be a run in
//! progress). Objects under an unexpired Object Lock retention are never
//! deleted; they are reported, and a snapshot whose manifest is locked is
//! kept with that reason.
//!
//! `--apply` deletes manifests first (the snapshot is gone), then archives,
//! so a failure midway leaves orphans the next `forget` removes, never a
//! snapshot without its archives. It takes each job's local lock, so it
//! never runs beside a backup of the same job on this host; on the host
//! that makes the backups it also aborts uploads a crashed run left.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::app::App;
use crate::cli::args::ForgetArgs;
use crate::error::is_integrity;
use crate::pipeline::snapshot::SnapshotReader;
use crate::repo::lock::JobLock;
use crate::repo::retention;
use crate::repo::store::ObjectInfo;
use crate::repo::{SnapshotRef, valid_snapshot_id};
use crate::units::{count, human_bytes};

#[derive(Serialize)]
struct SnapshotAction {
    id: String,
    kind: &'static str,
    action: &'static str,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct ObjectAction {
    object: String,
    size: u64,
    action: &'static str,
    why: String,
    /// Forgotten snapshots that refer to it (their manifests must be gone
    /// before it may go).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    forgotten_refs: Vec<String>,
}

#[derive(Serialize)]
struct JobPlan {
    host: String,
    job: String,
    policy: String,
    snapshots: Vec<SnapshotAction>,
    archives: Vec<ObjectAction>,
    /// Objects the plan would delete but Object Lock protects.
    locked: Vec<ObjectAction>,
    /// Bytes of archives deleted (or to be deleted).
    freed_bytes: u64,
    applied: bool,
}

/// Runs `forget`.
pub fn run(app: &App, args: &ForgetArgs) -> Result<()> {
    let keys = app.keys()?;
    app.repo.check_key(keys.as_ref())?;
    // Another host must be one with snapshots (a typo is a usage error,
    // not an empty plan); this one needs no check.
    if args.host.is_some() {
        crate::cli::select::Scope::new(app, &args.host, None)?;
    }
    let host = app.host(&args.host);
    let jobs = match &args.job {
        Some(j) => app.select_jobs(std::slice::from_ref(j))?,
        None => app.select_jobs(&[])?,
    };
    let recorder = app.recorder("forget");
    recorder.reached();
    let mut plans = Vec::new();
    for job in jobs {
        let _lock = JobLock::acquire(&app.config.agent.state_dir, &job.name, true)?;
        let plan = plan_job(app, keys.as_ref(), host, job)
            .with_context(|| format!("planning forget for job {}", job.name))?;
        let plan = if args.apply {
            if host == app.config.agent.host {
                let aborted = app
                    .repo
                    .store()
                    .clean_pending(&app.repo.job_prefix(host, &job.name))?;
                if aborted > 0 {
                    tracing::info!("aborted {aborted} incomplete upload(s) of job {}", job.name);
                }
            }
            apply(app, plan)?
        } else {
            plan
        };
        recorder.event(
            if args.apply { "forget-applied" } else { "forget-planned" },
            serde_json::json!({
                "job": plan.job,
                "forgotten": plan.snapshots.iter().filter(|s| s.action == "forget").map(|s| &s.id).collect::<Vec<_>>(),
                "deleted": plan.archives.iter().filter(|a| a.action == "delete").map(|a| &a.object).collect::<Vec<_>>(),
                "locked": plan.locked.iter().map(|a| &a.object).collect::<Vec<_>>(),
            }),
        )?;
        plans.push(plan);
    }
    let versioned = matches!(app.config.repository, vaultline_config::Repository::S3(_));
    if args.apply {
        app.out.summary(&plans, || render(&plans, true, versioned))
    } else {
        app.out.result(&plans, || render(&plans, false, versioned))
    }
}

fn policy_text(r: &vaultline_config::Retention) -> String {
    let parts: Vec<String> = [
        ("keep-last", r.keep_last),
        ("keep-hourly", r.keep_hourly),
        ("keep-daily", r.keep_daily),
        ("keep-weekly", r.keep_weekly),
        ("keep-monthly", r.keep_monthly),
        ("keep-yearly", r.keep_yearly),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{k} {n}"))
    .collect();
    if parts.is_empty() {
        "no retention policy: keep everything".into()
    } else {
        parts.join(", ")
    }
}

fn plan_job(
    app: &App,
    keys: &(dyn vaultline_crypto::KeyWrap + Sync),
    host: &str,
    job: &vaultline_config::Job,
) -> Result<JobPlan> {
    let store = app.repo.store();
    let listed = app.repo.list_snapshots(host, Some(&job.name))?;
    let now = jiff::Timestamp::now();

    // Every manifest's archive table. A future-dated snapshot and one whose
    // manifest fails authentication or does not parse (planted, damaged, or
    // under a key this configuration does not trust) take no part in the
    // policy: they could otherwise push real snapshots out of it. They are
    // kept and reported. A manifest that cannot be fetched at all stops the
    // plan (nothing is deleted on a doubt).
    let mut tables: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    let mut judged = Vec::new();
    let mut set_aside: Vec<(SnapshotRef, String)> = Vec::new();
    for s in listed {
        if s.future_dated() {
            tracing::warn!("{}", s.future_note());
            let why = format!(
                "future-dated: it claims {} but the repository recorded it at {}; left alone",
                s.claimed(),
                s.recorded.map_or_else(|| "?".to_string(), |r| r.to_string())
            );
            if let Ok(reader) = SnapshotReader::open(&app.repo, keys, s.clone()) {
                let objects = needed_objects(&reader);
                tables.insert(s.id.clone(), (objects, reader.header().parent.is_none()));
            }
            set_aside.push((s, why));
            continue;
        }
        match SnapshotReader::open(&app.repo, keys, s.clone()) {
            Ok(reader) => {
                let objects = needed_objects(&reader);
                tables.insert(s.id.clone(), (objects, reader.header().parent.is_none()));
                judged.push(s);
            }
            Err(e) if is_integrity(&e) => {
                tracing::warn!(
                    "snapshot {} of job {}: unreadable manifest, left alone: {e:#}",
                    s.id,
                    job.name
                );
                set_aside.push((s, format!("unreadable manifest, left alone: {e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    // An unreadable manifest may be a real snapshot whose tables we cannot
    // see: no archive is deleted while one is there.
    let unreadable: Vec<String> = set_aside
        .iter()
        .filter(|(s, _)| !tables.contains_key(&s.id))
        .map(|(s, _)| s.id.clone())
        .collect();
    let dated: Vec<retention::Dated> = judged
        .iter()
        .map(|s| retention::Dated {
            id: s.id.clone(),
            time: s.time(),
        })
        .collect();
    let decisions = retention::apply(&job.retention, &dated);
    // Archives recorded after the newest snapshot may belong to a run in
    // progress. Recorded times, not ids: a planted id far in the future
    // must not make a real run's archives look old.
    let newest = judged.iter().max_by_key(|s| (s.time(), s.id.clone())).cloned();

    let mut snapshots = Vec::new();
    let mut locked = Vec::new();
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for d in decisions {
        let mut reasons = d.reasons;
        if reasons.is_empty() {
            let name = app.repo.manifest_name(host, &job.name, &d.id);
            if let Some(r) = store.head(&name)?.retention.filter(|r| r.until > now) {
                reasons.push(format!(
                    "its manifest is under Object Lock ({}) until {}",
                    r.mode, r.until
                ));
                locked.push(ObjectAction {
                    object: name,
                    size: 0,
                    action: "locked",
                    why: format!("{} until {}", r.mode, r.until),
                    forgotten_refs: Vec::new(),
                });
            }
        }
        let full = tables.get(&d.id).is_some_and(|t| t.1);
        if !reasons.is_empty() {
            kept.insert(d.id.clone());
        }
        snapshots.push(SnapshotAction {
            kind: if full { "full" } else { "incremental" },
            action: if reasons.is_empty() { "forget" } else { "keep" },
            id: d.id,
            reasons,
        });
    }
    for (s, why) in &set_aside {
        kept.insert(s.id.clone());
        snapshots.push(SnapshotAction {
            id: s.id.clone(),
            kind: match tables.get(&s.id) {
                Some((_, true)) => "full",
                Some((_, false)) => "incremental",
                None => "unreadable",
            },
            action: "keep",
            reasons: vec![why.clone()],
        });
    }
    snapshots.sort_by(|a, b| a.id.cmp(&b.id));

    // Which kept snapshots need each archive.
    let mut needed_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut referenced_by_forgotten: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, (objects, _)) in &tables {
        for o in objects {
            if kept.contains(id) {
                needed_by.entry(o.clone()).or_default().push(id.clone());
            } else {
                referenced_by_forgotten
                    .entry(o.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
    }
    let archives_prefix = format!("{}archives/", app.repo.job_prefix(host, &job.name));
    let nodes_prefix = format!("{}nodes/", app.repo.job_prefix(host, &job.name));
    let mut archives = Vec::new();
    let mut freed = 0;
    let listed = store
        .list(&archives_prefix)?
        .into_iter()
        .map(|o| (o, false))
        .chain(store.list(&nodes_prefix)?.into_iter().map(|o| (o, true)));
    for (o, is_nodes) in listed {
        // A name outside the prefix (the S3 store refuses such listings)
        // has no snapshot id: kept, never a panic.
        let snapshot = if is_nodes {
            o.name
                .strip_prefix(nodes_prefix.as_str())
                .and_then(|rest| rest.strip_suffix(".nodes"))
        } else {
            o.name
                .strip_prefix(archives_prefix.as_str())
                .and_then(|rest| rest.split('/').next())
        }
        .unwrap_or("")
        .to_string();
        let (action, why) = if let Some(by) = needed_by.get(&o.name) {
            let own = by.contains(&snapshot);
            let what = if is_nodes {
                "their tree listing is in it"
            } else {
                "their files or chunks are in it"
            };
            let why = if own && by.len() == 1 {
                format!("snapshot {snapshot} is kept")
            } else {
                format!("needed by kept snapshot(s) {} ({what})", by.join(", "))
            };
            ("keep", why)
        } else if !valid_snapshot_id(&snapshot) {
            (
                "keep",
                "not under a snapshot id: not vaultline's, left alone".to_string(),
            )
        } else if recorded_after(&o, &snapshot, newest.as_ref()) {
            (
                "keep",
                "recorded after the newest snapshot: a run may be writing it".to_string(),
            )
        } else if !unreadable.is_empty() {
            (
                "keep",
                format!(
                    "snapshot(s) {} could not be read, and may need it",
                    unreadable.join(", ")
                ),
            )
        } else if let Some(by) = referenced_by_forgotten.get(&o.name) {
            (
                "delete",
                format!("only forgotten snapshots refer to it ({})", by.join(", ")),
            )
        } else {
            (
                "delete",
                "orphan: no snapshot refers to it (a run that stopped before committing)".to_string(),
            )
        };
        let forgotten_refs = referenced_by_forgotten.remove(&o.name).unwrap_or_default();
        if action == "delete" {
            if let Some(r) = store.head(&o.name)?.retention.filter(|r| r.until > now) {
                locked.push(ObjectAction {
                    object: o.name.clone(),
                    size: o.size,
                    action: "locked",
                    why: format!("{} until {}: {why}", r.mode, r.until),
                    forgotten_refs: Vec::new(),
                });
                archives.push(ObjectAction {
                    object: o.name,
                    size: o.size,
                    action: "keep",
                    why: format!("under Object Lock ({}) until {}", r.mode, r.until),
                    forgotten_refs,
                });
                continue;
            }
            freed += o.size;
        }
        archives.push(ObjectAction {
            object: o.name,
            size: o.size,
            action,
            why,
            forgotten_refs,
        });
    }
    Ok(JobPlan {
        host: host.to_string(),
        job: job.name.clone(),
        policy: policy_text(&job.retention),
        snapshots,
        archives,
        locked,
        freed_bytes: freed,
        applied: false,
    })
}

/// The objects a snapshot needs besides its manifest: the archives its
/// files and chunks are in, and the node packs its tree listing is in.
fn needed_objects(reader: &SnapshotReader<'_>) -> Vec<String> {
    reader
        .archives()
        .iter()
        .flatten()
        .map(|a| a.object.clone())
        .chain(reader.nodes().iter().flatten().map(|n| n.object.clone()))
        .collect()
}

/// True when archive object `o` (of snapshot id `snapshot`) may be newer
/// than the newest snapshot: recorded after its manifest (or, where the
/// store gives no times, named by a later id).
fn recorded_after(o: &ObjectInfo, snapshot: &str, newest: Option<&SnapshotRef>) -> bool {
    let Some(newest) = newest else {
        return true;
    };
    match (o.modified, newest.recorded) {
        (Some(archive), Some(manifest)) => archive > manifest,
        _ => snapshot >= newest.id.as_str(),
    }
}

/// Carries out a plan: manifests first, then archives. An object whose
/// deletion fails (a lock set since planning, a legal hold, a network
/// error) is reported, not fatal; an archive a snapshot whose manifest could
/// not be deleted still refers to is kept, so no snapshot is left without
/// its data.
fn apply(app: &App, mut plan: JobPlan) -> Result<JobPlan> {
    let store = app.repo.store();
    let mut still_there: Vec<String> = Vec::new();
    for s in plan.snapshots.iter_mut().filter(|s| s.action == "forget") {
        let name = app.repo.manifest_name(&plan.host, &plan.job, &s.id);
        if let Err(e) = store.delete(&name) {
            s.action = "keep";
            s.reasons
                .push(format!("its manifest could not be deleted: {e:#}"));
            still_there.push(s.id.clone());
            plan.locked.push(ObjectAction {
                object: name,
                size: 0,
                action: "not-deleted",
                why: format!("{e:#}"),
                forgotten_refs: Vec::new(),
            });
        }
    }
    for a in plan.archives.iter_mut().filter(|a| a.action == "delete") {
        if let Some(id) = a.forgotten_refs.iter().find(|r| still_there.contains(r)) {
            plan.freed_bytes -= a.size;
            a.action = "keep";
            a.why = format!("snapshot {id} is still there (its manifest could not be deleted)");
        }
    }
    let mut failed = Vec::new();
    for a in plan.archives.iter_mut().filter(|a| a.action == "delete") {
        if let Err(e) = store.delete(&a.object) {
            plan.freed_bytes -= a.size;
            a.action = "keep";
            failed.push(ObjectAction {
                object: a.object.clone(),
                size: a.size,
                action: "not-deleted",
                why: format!("{e:#}"),
                forgotten_refs: Vec::new(),
            });
        }
    }
    plan.locked.extend(failed);
    plan.applied = true;
    Ok(plan)
}

/// The plan as text; the note on versioned buckets only for an S3
/// repository (`versioned`).
fn render(plans: &[JobPlan], applied: bool, versioned: bool) -> String {
    let mut t = String::new();
    for p in plans {
        t.push_str(&format!("job {} ({}):\n", p.job, p.policy));
        for s in &p.snapshots {
            t.push_str(&format!(
                "  {:<7} {}  {:<11}  {}\n",
                s.action,
                s.id,
                s.kind,
                if s.reasons.is_empty() {
                    "no rule keeps it".to_string()
                } else {
                    s.reasons.join("; ")
                }
            ));
        }
        for a in &p.archives {
            t.push_str(&format!(
                "  {:<7} {}  {}  {}\n",
                a.action,
                a.object,
                human_bytes(a.size),
                a.why
            ));
        }
        for l in &p.locked {
            t.push_str(&format!("  {:<7} {}  {}\n", l.action, l.object, l.why));
        }
        let forgotten = p.snapshots.iter().filter(|s| s.action == "forget").count();
        let deleted = |nodes: bool| {
            p.archives
                .iter()
                .filter(|a| a.action == "delete" && a.object.ends_with(".nodes") == nodes)
                .count()
        };
        t.push_str(&format!(
            "  {} {} and {} ({}), {}{}\n",
            if applied { "removed" } else { "would remove" },
            count(forgotten as u64, "snapshot", "snapshots"),
            count(deleted(false) as u64, "archive", "archives"),
            count(deleted(true) as u64, "node pack", "node packs"),
            human_bytes(p.freed_bytes),
            if p.locked.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} locked or refused deletion, left in place",
                    count(p.locked.len() as u64, "object", "objects")
                )
            }
        ));
    }
    if !applied {
        t.push_str("dry run: nothing was changed (run with --apply to carry this out)\n");
    } else if versioned {
        t.push_str(
            "in a versioned bucket the removed objects remain as noncurrent versions until the lifecycle \
             rule expires them (docs/retention.md)\n",
        );
    }
    t.trim_end().to_string()
}
