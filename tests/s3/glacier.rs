//! Glacier-aware restore: archives in GLACIER are thawed (RestoreObject)
//! before they are read, exactly those a restore needs, never requested
//! twice; `--request-only` exits with code 7 and a rerun continues.

use std::fs;

use crate::util::moto::{job, moto, repository_settings, s3_fixture};
use crate::util::{assert_same_tree, files_under, restored};

fn restores(m: &crate::util::moto::Moto, bucket: &str) -> u64 {
    m.ctl(&["stats", bucket])["restores"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn glacier_archives_are_thawed_once_and_a_rerun_continues() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("glacier");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("cold.txt"), b"frozen for a while\n").unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/more"), vec![7u8; 100_000]).unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("cold", &[src.path()]));
    repository_settings(
        &fx,
        "storage-class = \"GLACIER\"\nrestore-tier = \"Bulk\"\nrestore-days = 2\n",
    );
    fx.init();
    fx.run(&["backup", "now"]).ok();
    let archives: Vec<serde_json::Value> = m
        .ctl(&["objects", &bucket])
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["key"].as_str().unwrap().ends_with(".archive"))
        .cloned()
        .collect();
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0]["storage_class"], "GLACIER");
    let archive = archives[0]["key"].as_str().unwrap().to_string();

    // Restores in this bucket take 4 seconds, as if they took hours.
    m.ctl(&["restore-delay", &bucket, "4"]);
    let target = fx.path().join("t");
    let t = target.to_str().unwrap();
    let first = fx
        .run(&["restore", "latest", "--target", t, "--request-only"])
        .code(7);
    assert!(
        first.stderr.contains(&format!("{archive}: GLACIER")),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("restore requested now (Bulk tier, kept 2 day(s))"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("run the same command again"),
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains("5–12 hours"), "{}", first.stderr);
    assert_eq!(restores(m, &bucket), 1);
    assert!(files_under(&target).is_empty(), "nothing restored yet");

    // Still thawing: the rerun sees the restore in progress and does not ask again.
    let second = fx
        .run(&["restore", "latest", "--target", t, "--request-only"])
        .code(7);
    assert!(
        second.stderr.contains("restore in progress (requested earlier)"),
        "{}",
        second.stderr
    );
    assert_eq!(
        restores(m, &bucket),
        1,
        "a restore in progress is never requested again"
    );

    // Once thawed, the rerun restores.
    std::thread::sleep(std::time::Duration::from_secs(5));
    fx.run(&["restore", "latest", "--target", t, "--request-only"])
        .ok();
    assert_eq!(restores(m, &bucket), 1);
    assert_same_tree(src.path(), &restored(&target, src.path()));

    // Without --request-only a restore waits, polling, and then reads.
    let (bucket2, key2) = m.bucket_and_key("glacier-wait");
    let fx2 = s3_fixture(m, &bucket2, &key2, &job("cold", &[src.path()]));
    repository_settings(&fx2, "storage-class = \"GLACIER\"\n");
    fx2.init();
    fx2.run(&["backup", "now"]).ok();
    m.ctl(&["restore-delay", &bucket2, "2"]);
    let target2 = fx2.path().join("t");
    let mut cmd = fx2.command(&["restore", "latest", "--target", target2.to_str().unwrap()]);
    cmd.env("VAULTLINE_THAW_POLL_SECS", "1");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("waiting"), "{stderr}");
    assert!(stderr.contains("thawing: 1 of 1 archive(s) ready"), "{stderr}");
    assert_eq!(restores(m, &bucket2), 1);
    assert_same_tree(src.path(), &restored(&target2, src.path()));
}
