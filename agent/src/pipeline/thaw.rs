//! Glacier-aware restore: making the archives a restore needs readable.
//!
//! Archive objects may be in GLACIER or DEEP_ARCHIVE (uploaded there, or
//! moved by a lifecycle rule); S3 refuses to read them (InvalidObjectState)
//! until a RestoreObject request has made a temporary copy. Before reading,
//! restore asks HEAD about exactly the archives its plan needs and:
//!
//! - reads at once what is readable (another class, or already restored);
//! - requests a restore, at the configured tier and for the configured
//!   days, of each archive that is frozen and has no restore running;
//! - never requests again one whose restore is running (HEAD says
//!   `ongoing-request="true"`, or S3 answers RestoreAlreadyInProgress);
//! - then either waits, polling HEAD with a growing interval and showing
//!   how many are ready, or (`--request-only`) exits with code 7 and says
//!   when to run the same command again. A rerun starts over from HEAD, so
//!   it picks up where the last one left off.
//!
//! Manifests are never in a Glacier class (control objects stay STANDARD),
//! so planning never waits.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::ThawingError;
use crate::pipeline::snapshot::Plan;
use crate::repo::store::{ObjectStore, RestoreRequest, Thaw};
use crate::units::human_bytes;

/// First wait between polls; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_secs(15);
/// Longest wait between polls.
const MAX_POLL: Duration = Duration::from_secs(15 * 60);

/// How long a thaw usually takes, for the message.
fn typical(tier: &str, class: &str) -> &'static str {
    match (class, tier) {
        ("DEEP_ARCHIVE", "Bulk") => "within 48 hours",
        ("DEEP_ARCHIVE", _) => "within 12 hours",
        (_, "Expedited") => "1–5 minutes",
        (_, "Bulk") => "5–12 hours",
        _ => "3–5 hours",
    }
}

/// DEEP_ARCHIVE has no Expedited tier: Standard is the fastest it offers.
fn tier_for<'t>(tier: &'t str, class: &str) -> &'t str {
    if class == "DEEP_ARCHIVE" && tier == "Expedited" {
        "Standard"
    } else {
        tier
    }
}

/// An archive that is not readable yet.
struct Waiting {
    object: String,
    size: u64,
    class: String,
}

/// Makes every archive `plan` needs readable, or says when it will be;
/// thaws are requested at retrieval `tier` for `days` days.
pub fn ensure_readable(
    store: &dyn ObjectStore,
    tier: &str,
    days: u32,
    plan: &Plan,
    request_only: bool,
) -> Result<()> {
    let mut waiting = Vec::new();
    for (_, p) in &plan.archives {
        let name = &p.archive.object;
        let meta = store
            .head(name)
            .with_context(|| format!("cannot look up {name}"))?;
        let class = meta.storage_class.clone().unwrap_or_default();
        let state = match meta.thaw {
            Thaw::Readable => continue,
            Thaw::Restored { expiry } => {
                tracing::info!(
                    "{name} ({class}) is restored{}",
                    expiry.map_or(String::new(), |e| format!(" until {e}"))
                );
                continue;
            }
            Thaw::InProgress => "restore in progress (requested earlier)",
            Thaw::Frozen => match store.request_restore(name, days, tier_for(tier, &class))? {
                RestoreRequest::Started => "restore requested now",
                RestoreRequest::AlreadyInProgress => "restore in progress (requested earlier)",
                RestoreRequest::NotNeeded => continue,
            },
        };
        say(&format!(
            "{name}: {class}, {}: {state} ({tier} tier, kept {days} day(s))",
            human_bytes(meta.size)
        ));
        waiting.push(Waiting {
            object: name.clone(),
            size: meta.size,
            class,
        });
    }
    if waiting.is_empty() {
        return Ok(());
    }
    let slowest = if waiting.iter().any(|w| w.class == "DEEP_ARCHIVE") {
        "DEEP_ARCHIVE"
    } else {
        "GLACIER"
    };
    let total: u64 = waiting.iter().map(|w| w.size).sum();
    let summary = format!(
        "{} archive(s) ({}) must be thawed from {slowest} before this restore can read them; at the {tier} tier \
         that takes {}",
        waiting.len(),
        human_bytes(total),
        typical(tier, slowest)
    );
    if request_only {
        return Err(ThawingError(format!(
            "{summary}. The restore requests are made: run the same command again then; it continues where \
             this one stopped and does not request them again"
        ))
        .into());
    }
    say(&format!(
        "{summary}; waiting (Ctrl-C is safe: a rerun picks up the same requests)"
    ));
    wait(store, waiting, tier, days)
}

/// A line for the person waiting, on stderr (a closed stderr is no reason
/// to stop a restore).
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Polls HEAD until every archive is readable. Every poll looks at all of
/// them, so a copy that expired while others were still thawing (a short
/// `restore-days`, a slow tier) is requested again rather than found
/// missing when the read starts.
fn wait(store: &dyn ObjectStore, all: Vec<Waiting>, tier: &str, days: u32) -> Result<()> {
    let started = Instant::now();
    let total = all.len();
    let mut interval = first_poll();
    loop {
        std::thread::sleep(interval);
        interval = (interval * 2).min(MAX_POLL);
        let mut ready = 0;
        for w in &all {
            match store.head(&w.object)?.thaw {
                Thaw::Readable | Thaw::Restored { .. } => ready += 1,
                Thaw::InProgress => {}
                Thaw::Frozen => {
                    // The restored copy expired before we got to it, or the
                    // request was lost: ask again.
                    store.request_restore(&w.object, days, tier_for(tier, &w.class))?;
                }
            }
        }
        say(&format!(
            "thawing: {ready} of {total} archive(s) ready after {}s",
            started.elapsed().as_secs()
        ));
        if ready == total {
            return Ok(());
        }
    }
}

/// The first poll interval; `VAULTLINE_THAW_POLL_SECS` shortens it for tests
/// against a server whose restores take seconds.
fn first_poll() -> Duration {
    std::env::var("VAULTLINE_THAW_POLL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(FIRST_POLL, Duration::from_secs)
}
