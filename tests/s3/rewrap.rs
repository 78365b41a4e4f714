//! `vaultline rewrap --to-key`: every data key moves to another KMS key by
//! rewriting manifests only; archives keep their bytes (and their S3
//! version), and the old key can be disabled.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::util::moto::{job, moto, s3_fixture, write_s3_config};
use crate::util::{Fixture, files_under, noise, restored};

/// Relative path → content of every file under `dir`.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            (rel, fs::read(&p).unwrap())
        })
        .collect()
}

fn snapshot_ids(fx: &Fixture) -> Vec<String> {
    let list = fx.run(&["snapshots", "--json"]).ok().json();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The current version of every object but the audit segments (every
/// command ships its own record: new segments are expected).
fn versions(m: &crate::util::moto::Moto, bucket: &str) -> BTreeMap<String, String> {
    let v = m.ctl(&["object-versions", bucket]);
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.contains("/audit/"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn rewrap_moves_every_key_to_the_new_key_without_touching_archives() {
    let m = moto();
    let (bucket, old_key) = m.bucket_and_key("rewrap");
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("sub")).unwrap();
    fs::write(src.path().join("a"), b"first version of a").unwrap();
    fs::write(src.path().join("b"), b"b, deleted before the second run").unwrap();
    // Incompressible, so that reading any archive would show in the GET bytes.
    fs::write(src.path().join("sub/c"), noise(300_000, 7)).unwrap();
    let jobs = job("j", &[src.path()]);
    let fx = s3_fixture(m, &bucket, &old_key, &jobs);
    fx.init();

    // A full, an incremental (one file changed, one deleted), a full.
    let mut expected = Vec::new();
    fx.run(&["backup", "now"]).ok();
    expected.push(contents(src.path()));
    fs::write(src.path().join("a"), b"second, longer version of a").unwrap();
    fs::remove_file(src.path().join("b")).unwrap();
    fx.run(&["backup", "now"]).ok();
    expected.push(contents(src.path()));
    fs::write(src.path().join("sub/d"), b"new in the third run").unwrap();
    fx.run(&["backup", "now", "--full"]).ok();
    expected.push(contents(src.path()));
    let ids = snapshot_ids(&fx);
    assert_eq!(ids.len(), 3, "{ids:?}");

    let before = versions(m, &bucket);
    let archives: Vec<&String> = before.keys().filter(|k| k.ends_with(".archive")).collect();
    let manifests: Vec<&String> = before.keys().filter(|k| k.ends_with(".manifest")).collect();
    assert!(archives.len() >= 2, "{before:?}");
    assert_eq!(manifests.len(), 3, "{before:?}");

    let sizes = m.object_sizes(&bucket);
    // A new key that cannot be used stops the rewrap before anything changes.
    let unusable = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
    m.ctl(&["disable-key", &unusable]);
    let run = fx.run(&["rewrap", "--to-key", &unusable]).code(4);
    assert!(
        run.stderr.contains(&format!(
            "aws-kms key {unusable}: GenerateDataKey failed: DisabledException"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(versions(m, &bucket), before, "nothing written");

    let gets = |stats: &Value| stats["get_bytes"].as_u64().unwrap();
    let stats_before = m.ctl(&["stats", &bucket]);

    let new_key = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
    let run = fx.run(&["rewrap", "--to-key", &new_key]).ok();
    assert!(
        run.stdout
            .contains(&format!("to aws-kms key {new_key}: 3 manifest(s) rewritten"))
            && run.stdout.contains("no archive was read or rewritten"),
        "{}",
        run.stdout
    );

    // No archive was read: rewrap fetched the marker and each manifest (whole,
    // and its header again), nothing else.
    let read = gets(&m.ctl(&["stats", &bucket])) - gets(&stats_before);
    let bound =
        sizes["vaultline/repository.json"] + 2 * manifests.iter().map(|name| sizes[*name]).sum::<u64>();
    assert!(
        archives.iter().filter(|a| sizes[**a] > 300_000).count() >= 2,
        "both fulls hold the incompressible file: {sizes:?}"
    );
    assert!(
        read <= bound,
        "rewrap read {read} bytes, more than the marker and manifests ({bound})"
    );

    // Archives untouched (same version), every manifest and the marker replaced.
    let after = versions(m, &bucket);
    for a in &archives {
        assert_eq!(after[*a], before[*a], "archive {a} was rewritten");
    }
    for name in &manifests {
        assert_ne!(after[*name], before[*name], "manifest {name} was not rewritten");
    }
    let marker = "vaultline/repository.json";
    assert_ne!(after[marker], before[marker], "the marker names the new key");
    let audit = fs::read_to_string(fx.state().join("audit.jsonl")).unwrap();
    let finished: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|l| l["what"] == "rewrap-finished")
        .expect("the rewrap is in the audit trail");
    assert_eq!(finished["details"]["result"], "ok", "{finished}");
    assert_eq!(finished["details"]["manifests_rewritten"], 3, "{finished}");

    // Run again from the old configuration (the marker names the new key
    // already, as in a resumed rewrap): accepted, nothing left to do.
    let run = fx.run(&["rewrap", "--to-key", &new_key]).ok();
    assert!(run.stdout.starts_with("nothing to do"), "{}", run.stdout);
    assert_eq!(versions(m, &bucket), after, "nothing rewritten twice");

    // A host still configured with the old key is refused before any work.
    let run = fx.run(&["backup", "now"]).code(2);
    assert!(
        run.stderr.contains(&format!(
            "this repository was sealed with aws-kms key {new_key}, but the configured key is aws-kms key {old_key}"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        versions(m, &bucket),
        after,
        "nothing written by the refused backup"
    );

    // With the new key configured and the old one disabled, every snapshot
    // restores byte for byte and verifies.
    write_s3_config(&fx, m, &bucket, &new_key, &jobs);
    m.ctl(&["disable-key", &old_key]);
    for (i, id) in [(2, "latest"), (0, ids[0].as_str()), (1, ids[1].as_str())] {
        let target = fx.path().join(format!("restore-{i}"));
        fx.run(&["restore", id, "--target", target.to_str().unwrap()])
            .ok();
        assert_eq!(
            contents(&restored(&target, src.path())),
            expected[i],
            "snapshot {id} restored after the rewrap"
        );
    }
    fx.run(&["verify", "--all"]).ok();

    // Again: nothing left to do, nothing written.
    let run = fx.run(&["rewrap", "--to-key", &new_key]).ok();
    assert!(run.stdout.starts_with("nothing to do"), "{}", run.stdout);
    let run = fx.run(&["--json", "rewrap", "--to-key", &new_key]).ok().json();
    assert_eq!(run["manifests_rewritten"], 0, "{run}");
    assert_eq!(run["manifests_skipped"], 3, "{run}");
    assert_eq!(run["marker_updated"], false, "{run}");
    assert_eq!(versions(m, &bucket), after, "a second rewrap writes nothing");
}

#[test]
fn rewrap_with_a_local_key_is_a_usage_error() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"local").unwrap();
    let fx = Fixture::with_job("j", &[src.path()]);
    fx.init();
    let run = fx
        .run(&[
            "rewrap",
            "--to-key",
            "arn:aws:kms:us-east-1:123456789012:key/none",
        ])
        .code(2);
    assert!(
        run.stderr.contains("works only with the aws-kms key provider"),
        "{}",
        run.stderr
    );
}
