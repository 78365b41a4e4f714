//! Backup and restore reproduce a tree exactly.

use crate::util::{Fixture, assert_same_tree, corpus, restored};

/// The 200 MB corpus (`make-corpus.sh DIR 200 7`): content, modes, mtimes,
/// symlinks, hard links and empty directories come back exactly, compared by
/// walking both trees (not by vaultline's own verify).
#[test]
fn round_trip_of_the_200mb_corpus() {
    let source = corpus(200, 7);
    let f = Fixture::with_job("data", &[&source]);
    f.init();
    let backup = f.run(&["--json", "backup", "now"]).ok();
    let report = &backup.json()[0];
    assert!(report["files"].as_u64().unwrap() > 10_000, "{report}");
    assert!(report["bytes_read"].as_u64().unwrap() > 200_000_000);
    assert!(report["unreadable"].as_array().unwrap().is_empty());

    let target = f.path().join("restore");
    let out = f
        .run(&[
            "--json",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ])
        .ok();
    assert!(out.json()["refused"].as_array().unwrap().is_empty());
    assert_same_tree(&source, &restored(&target, &source));

    f.run(&["verify"]).ok();
}

/// Hard links, empty directories, long and non-UTF-8 names, sub-second
/// mtimes and special modes, built by hand so each case is certain to exist.
#[test]
fn round_trip_of_the_hard_cases() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    let f = Fixture::new("");
    let src = f.path().join("src");
    std::fs::create_dir_all(src.join("empty/nested-empty")).unwrap();
    std::fs::write(src.join("a"), b"shared content").unwrap();
    std::fs::hard_link(src.join("a"), src.join("a-link")).unwrap();
    let long_dir = src.join("d".repeat(150));
    std::fs::create_dir(&long_dir).unwrap();
    std::fs::write(long_dir.join("f".repeat(200)), b"long").unwrap();
    std::os::unix::fs::symlink("x".repeat(180), src.join("long-target")).unwrap();
    std::os::unix::fs::symlink("../outside/dangling", src.join("dangling")).unwrap();
    let latin1 = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::write(&latin1, b"not utf-8 name").unwrap();
    std::fs::write(src.join("setuid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("setuid"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let t = std::fs::File::options().write(true).open(src.join("a")).unwrap();
    t.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789))
        .unwrap();
    drop(t);

    f.write_config(&format!(
        "[[jobs]]\nname = \"hard\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();
    let target = f.path().join("restore");
    f.run(&[
        "restore",
        "latest",
        "--keep-privileges",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_same_tree(&src, &restored(&target, &src));

    // Without asking, setuid/setgid bits do not come back, and restore says so.
    let plain = f.path().join("plain");
    let run = f
        .run(&["restore", "latest", "--target", plain.to_str().unwrap()])
        .ok();
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(restored(&plain, &src).join("setuid"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o750);
    assert!(
        run.stderr
            .contains("1 file(s) restored without their setuid/setgid bits or file capabilities")
            && run.stderr.contains("setuid"),
        "{}",
        run.stderr
    );
}

/// A job over a directory that contains the repository and the state
/// directory (as a job over `/` does) never archives vaultline's own files.
#[test]
fn the_repository_and_state_directory_are_never_archived() {
    let f = Fixture::new("");
    std::fs::write(f.path().join("data.txt"), b"mine").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"all\"\npaths = [{:?}]\n",
        f.path().display().to_string()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();
    let target = tempfile::tempdir().unwrap();
    f.run(&["restore", "latest", "--target", target.path().to_str().unwrap()])
        .ok();
    let root = restored(target.path(), f.path());
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.toml", "data.txt", "home"],
        "repo/ and state/ must not be archived"
    );
}

/// A full run of a tree without file content still writes the tar of the
/// tree, and its manifest names it: `forget` keeps it as the snapshot's
/// archive, never as an orphan nobody refers to.
#[test]
fn a_full_run_without_file_content_names_its_archive() {
    let f = Fixture::new("");
    let src = f.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("c")).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"dirs\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    let id = f.run(&["--json", "backup", "now"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(f.objects(".archive").len(), 1);
    let plan = f.run(&["--json", "forget", "--dry-run"]).ok().json();
    let archive = plan[0]["archives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["object"].as_str().unwrap().ends_with(".archive"))
        .unwrap()
        .clone();
    assert_eq!(archive["action"], "keep", "{plan}");
    assert_eq!(archive["why"], format!("snapshot {id} is kept"), "{plan}");
    let target = f.path().join("restore");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&target, &src));
}
