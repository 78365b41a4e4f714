//! `vaultline harden [--apply]`: shows the changes that make the bucket pass
//! its checks, and with `--apply` makes them (idempotently; see
//! hardening::harden).

use anyhow::{Context, Result};
use serde::Serialize;
use vaultline_config::Repository;

use crate::cli::app::App;
use crate::cli::output::Output;
use crate::cloud::hardening::{BucketState, evaluate, harden};
use crate::error::UsageError;

#[derive(Serialize)]
struct HardenReport<'a> {
    bucket: &'a str,
    applied: bool,
    plan: &'a harden::Plan,
}

/// Runs `harden`.
pub fn run(app: &App, apply: bool) -> Result<()> {
    let Repository::S3(s3) = &app.config.repository else {
        return Err(UsageError(
            "harden changes S3 buckets; this configuration uses a local repository".into(),
        )
        .into());
    };
    let (sdk, client) = app.aws().context("AWS clients")?;
    let state = BucketState::read(sdk, &app.config, s3, client)
        .with_context(|| format!("reading the settings of bucket {}", s3.bucket))?;
    let report = evaluate(&state, &app.config);
    let plan = harden::plan(&state, &report, &app.config, s3)?;
    if apply && !plan.changes.is_empty() {
        let recorder = app.recorder("harden --apply");
        recorder.reached();
        let result = harden::apply(
            client,
            sdk,
            &app.config,
            &s3.bucket,
            &plan,
            &mut |change, result| {
                recorder.event(
                    "harden-change",
                    serde_json::json!({
                        "bucket": s3.bucket,
                        "check": change.check,
                        "change": change.change,
                        "result": match result { Ok(()) => "applied".to_string(), Err(e) => e.clone() },
                    }),
                )
            },
        );
        result?;
    }
    let out = HardenReport {
        bucket: &s3.bucket,
        applied: apply,
        plan: &plan,
    };
    // The plan is what `harden` is asked for; what `--apply` did is a
    // summary (`-q` leaves it out).
    let print = if apply { Output::summary } else { Output::result };
    print(&app.out, &out, || {
        let mut t = String::new();
        if plan.changes.is_empty() {
            t.push_str(&format!("bucket {}: no changes needed\n", s3.bucket));
        } else {
            t.push_str(&format!(
                "bucket {}: {} {} change(s):\n",
                s3.bucket,
                if apply { "applied" } else { "would make" },
                plan.changes.len()
            ));
            for c in &plan.changes {
                t.push_str(&format!("  [{}] {}\n", c.check, c.change));
            }
            if !apply {
                t.push_str("run `vaultline harden --apply` to make them\n");
            }
        }
        for m in &plan.manual {
            t.push_str(&format!("  by hand: {m}\n"));
        }
        t.trim_end().to_string()
    })
}
