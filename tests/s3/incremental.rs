//! Incremental snapshots, partial restores with ranged reads, retention
//! (`forget`) and Object Lock, against the local S3 + KMS server.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::moto::{job, moto, s3_fixture, unique_bucket};
use crate::util::{Fixture, assert_same_tree, files_under, make_corpus, mutate_corpus, noise, restored};

/// A copy of `src` as it is now (modes, times, links kept) at `to` (which
/// must not exist), to compare a later restore of this moment with.
fn copy_of(src: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(to).status().unwrap();
    assert!(status.success());
}

fn backup(fx: &Fixture) -> Value {
    fx.run(&["--json", "backup", "now"]).ok().json()[0].clone()
}

fn restore_into(fx: &Fixture, snapshot: &str, target: &Path, extra: &[&str]) {
    let mut args = vec!["restore", snapshot, "--target", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    fx.run(&args).ok();
}

/// Bytes of the files that are new or whose content differs in `after`.
fn changed_bytes(before: &Path, after: &Path) -> (u64, Vec<u8>) {
    let mut total = 0;
    let mut all = Vec::new();
    for f in files_under(after) {
        let rel = f.strip_prefix(after).unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        if !meta.is_file() {
            continue;
        }
        let now = fs::read(&f).unwrap();
        if fs::read(before.join(rel)).ok().as_deref() != Some(&now[..]) {
            total += now.len() as u64;
            all.extend_from_slice(&now);
        }
    }
    (total, all)
}

/// A chain: full backup, 5 % mutation, incremental, mutation, incremental.
/// Every snapshot restores exactly its own tree; the incrementals record
/// their parent and deletions; a run with no change uploads no archive;
/// the archive of a 5 % change is within a small factor of the changed
/// bytes compressed.
#[test]
fn a_chain_of_incrementals_restores_every_snapshot_exactly() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("chain");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_corpus(&src, 24, 11);
    let fx = s3_fixture(m, &bucket, &key, &job("data", &[&src]));
    fx.init();

    let full = backup(&fx);
    assert!(full["parent"].is_null(), "{full}");
    assert!(
        full["full_reason"].as_str().unwrap().contains("no local record"),
        "{full}"
    );
    copy_of(&src, &work.path().join("at0"));

    let mut states = vec![(
        full["snapshot"].as_str().unwrap().to_string(),
        work.path().join("at0"),
    )];
    for (round, seed) in [(1, 21), (2, 22)] {
        let before = m.object_sizes(&bucket);
        mutate_corpus(&src, 5, seed);
        let (changed, changed_content) = changed_bytes(&states.last().unwrap().1, &src);
        let r = backup(&fx);
        let id = r["snapshot"].as_str().unwrap().to_string();
        assert_eq!(r["parent"], states.last().unwrap().0.as_str(), "{r}");
        assert!(
            r["deleted"].as_u64().unwrap() > 0,
            "the mutation deletes files: {r}"
        );
        assert!(
            r["reused"].as_u64().unwrap() > r["archived_files"].as_u64().unwrap() * 5,
            "{r}"
        );
        // What this run uploaded: one new archive, one node pack (the
        // segments of the tree listing that changed) and one manifest.
        let after = m.object_sizes(&bucket);
        let new: Vec<(&String, &u64)> = after
            .iter()
            .filter(|(k, _)| !before.contains_key(*k) && !k.contains("/audit/"))
            .collect();
        assert_eq!(new.len(), 3, "{new:?}");
        assert_eq!(
            new.iter().filter(|(k, _)| k.ends_with(".nodes")).count(),
            1,
            "{new:?}"
        );
        let archive_bytes: u64 = new
            .iter()
            .filter(|(k, _)| k.ends_with(".archive"))
            .map(|(_, s)| **s)
            .sum();
        let compressed = zstd::encode_all(&changed_content[..], 3).unwrap().len() as u64;
        assert!(
            archive_bytes <= compressed * 2 + (256 << 10),
            "round {round}: archive {archive_bytes} bytes for {changed} changed bytes ({compressed} compressed)"
        );
        let at = work.path().join(format!("at{round}"));
        copy_of(&src, &at);
        states.push((id, at));
    }

    // A run with nothing changed: a manifest and no archive.
    let before = m.object_sizes(&bucket);
    let idle = backup(&fx);
    assert!(idle["archive"].is_null(), "{idle}");
    assert_eq!(idle["archived_files"], 0, "{idle}");
    let after = m.object_sizes(&bucket);
    let new: Vec<&String> = after
        .keys()
        .filter(|k| !before.contains_key(*k) && !k.contains("/audit/"))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].ends_with(".manifest"), "{new:?}");

    for (i, (id, tree)) in states.iter().enumerate() {
        let target = work.path().join(format!("restore{i}"));
        restore_into(&fx, id, &target, &[]);
        assert_same_tree(tree, &restored(&target, &src));
    }
    fx.run(&["verify", "--all"]).ok();
    let listed = fx.run(&["--json", "snapshots"]).ok().json();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["full", "incremental", "incremental", "incremental"]);
}

/// Without its local record, a run is full and says so; `--full` too.
#[test]
fn a_missing_local_record_makes_a_full_run_that_says_why() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("norecord");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"alpha").unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("data", &[src.path()]));
    fx.init();
    backup(&fx);
    let second = backup(&fx);
    assert!(second["parent"].is_string(), "{second}");
    fs::remove_dir_all(fx.state().join("incremental")).unwrap();
    let third = backup(&fx);
    assert!(third["parent"].is_null(), "{third}");
    assert!(
        third["full_reason"]
            .as_str()
            .unwrap()
            .contains("there is no local record of an earlier run of job data"),
        "{third}"
    );
    // A damaged record: the run is full and says so, it does not fail.
    let dir = fx.state().join("incremental");
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".entries.zst"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    fs::write(
        &entries[0],
        zstd::encode_all(&b"{\"not\": \"a record line\"}\n"[..], 1).unwrap(),
    )
    .unwrap();
    let damaged = backup(&fx);
    assert!(damaged["parent"].is_null(), "{damaged}");
    assert!(
        damaged["full_reason"]
            .as_str()
            .unwrap()
            .contains("is damaged: its entries do not match the checksum in its header"),
        "{damaged}"
    );
    let forced = fx.run(&["--json", "backup", "now", "--full"]).ok().json()[0].clone();
    assert_eq!(forced["full_reason"], "a full snapshot was asked for (--full)");
    let text = fx.run(&["backup", "now"]).ok();
    assert!(text.stdout.contains("incremental on"), "{}", text.stdout);
}

/// One file out of a large archive: the server sends a small fraction of
/// the archive (counted by the test server), and the file is exact.
#[test]
fn a_single_file_restore_fetches_a_small_part_of_a_large_archive() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("onefile");
    let src = tempfile::tempdir().unwrap();
    // 48 MiB that does not compress, in 48 files, and one small file in the middle.
    for i in 0..48 {
        fs::write(src.path().join(format!("bulk-{i:02}")), noise(1 << 20, i + 1)).unwrap();
        if i == 24 {
            fs::write(src.path().join("bulk-24-wanted.conf"), b"the one file we need\n").unwrap();
        }
    }
    let fx = s3_fixture(m, &bucket, &key, &job("data", &[src.path()]));
    fx.init();
    backup(&fx);
    let archive_size: u64 = m
        .object_sizes(&bucket)
        .iter()
        .filter(|(k, _)| k.ends_with(".archive"))
        .map(|(_, s)| *s)
        .sum();
    assert!(archive_size > 48 << 20, "{archive_size}");

    let before = m.ctl(&["stats", &bucket])["get_bytes"].as_u64().unwrap();
    let target = tempfile::tempdir().unwrap();
    let wanted = src.path().join("bulk-24-wanted.conf");
    restore_into(&fx, "latest", target.path(), &[wanted.to_str().unwrap()]);
    let fetched = m.ctl(&["stats", &bucket])["get_bytes"].as_u64().unwrap() - before;
    let got = files_under(target.path());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(fs::read(&got[0]).unwrap(), b"the one file we need\n");
    assert!(
        fetched * 10 < archive_size,
        "fetched {fetched} bytes for one small file out of a {archive_size}-byte archive"
    );

    // --include / --exclude select the same way, and a whole restore still reads everything.
    let t2 = tempfile::tempdir().unwrap();
    restore_into(
        &fx,
        "latest",
        t2.path(),
        &["--include", "**/bulk-0*", "--exclude", "**/bulk-00"],
    );
    let names: Vec<String> = files_under(t2.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(!names.contains(&"bulk-00".to_string()), "{names:?}");
    let none = fx.run(&[
        "restore",
        "latest",
        "--target",
        t2.path().to_str().unwrap(),
        "/no/such/path",
    ]);
    let none = none.code(2);
    assert!(none.stderr.contains("nothing in snapshot"), "{}", none.stderr);
}

/// A large file changed in the middle, restored alone from the incremental
/// snapshot: its chunks come from two archives, and the server sends about
/// the file, not the archives around it (counted by the test server).
#[test]
fn a_chunked_file_restored_alone_fetches_its_chunks_only() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("chunked");
    let src = tempfile::tempdir().unwrap();
    for i in 0..32 {
        fs::write(src.path().join(format!("bulk-{i:02}")), noise(1 << 20, i + 100)).unwrap();
    }
    let image = src.path().join("disk.img");
    fs::write(&image, noise(16 << 20, 7)).unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("data", &[src.path()]));
    fx.init();
    backup(&fx);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        f.write_all_at(&noise(65536, 8), 9 << 20).unwrap();
    }
    for i in 0..32 {
        fs::write(src.path().join(format!("bulk-{i:02}")), noise(1 << 20, i + 200)).unwrap();
    }
    let second = backup(&fx);
    assert!(
        second["new_bytes"].as_u64().unwrap() < 32 * (1 << 20) + (8 << 20),
        "{second}"
    );
    let archives: u64 = m
        .object_sizes(&bucket)
        .iter()
        .filter(|(k, _)| k.ends_with(".archive"))
        .map(|(_, s)| *s)
        .sum();
    assert!(archives > 80 << 20, "{archives}");

    let before = m.ctl(&["stats", &bucket])["get_bytes"].as_u64().unwrap();
    let target = tempfile::tempdir().unwrap();
    restore_into(&fx, "latest", target.path(), &[image.to_str().unwrap()]);
    let fetched = m.ctl(&["stats", &bucket])["get_bytes"].as_u64().unwrap() - before;
    let got = files_under(target.path());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(fs::read(&got[0]).unwrap(), fs::read(&image).unwrap());
    // The file's 16 MiB, plus at most a frame and a sealed chunk at each
    // end of each run read, plus the manifest and node pack.
    assert!(
        fetched < (16 << 20) + (20 << 20) && fetched * 2 < archives,
        "fetched {fetched} bytes for a 16 MiB file out of {archives} bytes of archives"
    );
}

/// A policy that would naively delete the full a kept incremental needs:
/// the full's archive stays (the incremental's unchanged files are in it),
/// its manifest goes; orphans left by crashed runs are deleted; the kept
/// snapshot restores exactly.
#[test]
fn forget_keeps_archives_kept_snapshots_need_and_removes_orphans() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("forget");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        fs::write(numbered(&src, i), format!("file {i}\n")).unwrap();
    }
    let fx = s3_fixture(
        m,
        &bucket,
        &key,
        &format!("{}\n[jobs.retention]\nkeep-last = 1\n", job("data", &[&src])),
    );
    fx.init();
    let full = backup(&fx)["snapshot"].as_str().unwrap().to_string();
    fs::write(numbered(&src, 3), "changed\n").unwrap();
    let mid = backup(&fx)["snapshot"].as_str().unwrap().to_string();
    // An archive a crashed run committed without its manifest (before the
    // newest snapshot: one recorded after it may be a run in progress).
    let orphan = "vaultline/testhost/data/archives/20200101T000000Z-00000000/0.archive";
    let junk = work.path().join("junk");
    fs::write(&junk, b"left by a crash").unwrap();
    m.ctl(&["put", &bucket, orphan, junk.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(numbered(&src, 4), "changed too\n").unwrap();
    let last = backup(&fx)["snapshot"].as_str().unwrap().to_string();

    let dry = fx.run(&["--json", "forget", "--dry-run"]).ok().json();
    let plan = &dry[0];
    let action = |id: &str| {
        plan["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["action"]
            .clone()
    };
    assert_eq!(action(&full), "forget", "{plan}");
    assert_eq!(action(&mid), "forget", "{plan}");
    assert_eq!(action(&last), "keep", "{plan}");
    let archive_of = |id: &str| format!("vaultline/testhost/data/archives/{id}/0.archive");
    let decision = |object: &str| {
        plan["archives"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["object"] == object)
            .unwrap_or_else(|| panic!("{object} not in {plan}"))
            .clone()
    };
    let kept_full = decision(&archive_of(&full));
    assert_eq!(kept_full["action"], "keep", "{plan}");
    assert!(kept_full["why"].as_str().unwrap().contains(&last), "{kept_full}");
    assert_eq!(decision(orphan)["action"], "delete", "{plan}");
    assert!(
        decision(orphan)["why"].as_str().unwrap().starts_with("orphan"),
        "{plan}"
    );
    // The middle run archived file 3 only, which the last snapshot still uses.
    assert_eq!(decision(&archive_of(&mid))["action"], "keep", "{plan}");
    // A dry run changes nothing.
    assert!(m.object_sizes(&bucket).contains_key(orphan));

    let text = fx.run(&["forget", "--apply"]).ok();
    assert!(
        text.stdout
            .contains("removed 2 snapshots and 1 archive (2 node packs)"),
        "{}",
        text.stdout
    );
    let left = m.object_sizes(&bucket);
    assert!(!left.contains_key(orphan), "{left:?}");
    assert!(left.contains_key(&archive_of(&full)), "{left:?}");
    let listed = fx.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let target = work.path().join("t");
    restore_into(&fx, &last, &target, &[]);
    assert_same_tree(&src, &restored(&target, &src));
    // Nothing more to do.
    let again = fx.run(&["forget", "--apply"]).ok();
    assert!(
        again
            .stdout
            .contains("removed 0 snapshots and 0 archives (0 node packs)"),
        "{}",
        again.stdout
    );

    // Neither flag: a usage error.
    fx.run(&["forget"]).code(2);
}

fn numbered(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("f{i:02}"))
}

/// With Object Lock on the job, every object of a snapshot is locked;
/// forget leaves locked objects in place and reports them, without failing.
#[test]
fn forget_reports_objects_under_object_lock_and_leaves_them() {
    let m = moto();
    let bucket = unique_bucket("locked");
    m.ctl(&["create-bucket", &bucket, "--object-lock"]);
    let key = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"locked data").unwrap();
    let fx = s3_fixture(
        m,
        &bucket,
        &key,
        &format!(
            "{}\n[jobs.retention]\nkeep-last = 1\n\n[jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 1\n",
            job("data", &[src.path()])
        ),
    );
    fx.init();
    let first = fx.run(&["--json", "backup", "now", "--full"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    fx.run(&["backup", "now", "--full"]).ok();
    let mut segments = 0;
    for (name, _) in m.object_sizes(&bucket) {
        if name.ends_with(".archive") || name.ends_with(".manifest") || name.ends_with(".jsonl") {
            let r = m.ctl(&["retention", &bucket, &name]);
            assert_eq!(r["mode"], "GOVERNANCE", "{name}: {r}");
            segments += usize::from(name.ends_with(".jsonl"));
        }
    }
    assert_eq!(
        segments, 2,
        "each run's audit segment is locked like the job's objects"
    );
    let run = fx.run(&["--json", "forget", "--apply"]).ok().json();
    let locked = run[0]["locked"].as_array().unwrap();
    let manifest = format!("vaultline/testhost/data/snapshots/{first}.manifest");
    assert!(locked.iter().any(|l| l["object"] == manifest.as_str()), "{run}");
    let snap = run[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == first.as_str())
        .unwrap()
        .clone();
    assert_eq!(snap["action"], "keep", "{snap}");
    assert!(
        snap["reasons"][0]
            .as_str()
            .unwrap()
            .contains("Object Lock (GOVERNANCE)"),
        "{snap}"
    );
    assert!(m.object_sizes(&bucket).contains_key(&manifest));

    // An incremental run reuses the newest archive: its lock is extended
    // to the new snapshot's (every object a snapshot needs is locked as
    // long as the snapshot).
    let reused = m
        .object_sizes(&bucket)
        .into_keys()
        .filter(|k| k.ends_with(".archive"))
        .max()
        .unwrap();
    let before = m.ctl(&["retention", &bucket, &reused])["until"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let incr = fx.run(&["--json", "backup", "now"]).ok().json()[0].clone();
    assert!(incr["archive"].is_null(), "{incr}");
    let after = m.ctl(&["retention", &bucket, &reused])["until"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(after > before, "{before} -> {after}");

    // A job asking for a lock on a bucket without Object Lock is refused.
    let (plain, key2) = m.bucket_and_key("unlocked");
    let fx2 = s3_fixture(
        m,
        &plain,
        &key2,
        &format!(
            "{}\n[jobs.object-lock]\nmode = \"COMPLIANCE\"\ndays = 1\n",
            job("data", &[src.path()])
        ),
    );
    fx2.init();
    let refused = fx2.run(&["backup", "now"]).code(2);
    assert!(
        refused.stderr.contains("does not have Object Lock enabled"),
        "{}",
        refused.stderr
    );
}
