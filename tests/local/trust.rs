//! Order and freshness come from what the repository recorded, never from
//! what a client claims: a host whose clock runs far ahead (or an attacker
//! planting snapshots dated decades ahead) takes over neither `latest`,
//! nor `forget`, nor the incremental base; a damaged or planted manifest
//! costs only itself.
//!
//! The "attacker" here is a second configuration on the same repository
//! and key with its own state directory, run under `faketime` so its
//! snapshot ids carry a clock 70 and 490 years ahead; the local
//! repository records each manifest's real write time (its mtime).

use std::fs;

use serde_json::Value;

use crate::util::{Fixture, restored};

const RETENTION: &str = "[jobs.retention]\nkeep-last = 3\nkeep-daily = 7\n";

fn world() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n{RETENTION}",
        src.display().to_string()
    ));
    f.init();
    (f, src)
}

/// A configuration on `f`'s repository and key, with its own state.
fn attacker(f: &Fixture, src: &std::path::Path) -> Fixture {
    let a = Fixture::new("");
    let text = format!(
        "[agent]\nhost = \"testhost\"\nstate-dir = {:?}\n\n[repository]\ntype = \"local\"\npath = {:?}\n\n\
         [key]\nstorage = \"file\"\nfile = {:?}\n\n[[jobs]]\nname = \"j\"\npaths = [{:?}]\n",
        a.path().join("state").display().to_string(),
        f.repo().display().to_string(),
        f.key_file().display().to_string(),
        src.display().to_string(),
    );
    fs::write(&a.config, text).unwrap();
    a
}

fn backup(f: &Fixture) -> Value {
    f.run(&["--json", "backup", "now"]).ok().json()[0].clone()
}

fn ids_with(list: &Value, what: &str, want: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s[what] == want)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_future_dated_snapshot_takes_over_neither_latest_nor_forget_nor_the_incremental_base() {
    let (f, src) = world();
    let file = src.join("a");
    let mut real = Vec::new();
    for i in 1..=3 {
        fs::write(&file, format!("real {i}")).unwrap();
        real.push(backup(&f)["snapshot"].as_str().unwrap().to_string());
    }

    // Planted from the same repository and key, clocks 70 and 490 years ahead.
    fs::write(&file, "planted").unwrap();
    let a = attacker(&f, &src);
    let mut planted = Vec::new();
    for ahead in ["+70y", "+490y"] {
        let run = a
            .run_via(&["faketime", "-f", ahead], &["--json", "backup", "now"])
            .ok();
        let id = run.json()[0]["snapshot"].as_str().unwrap().to_string();
        assert!(id > real[2], "{id}");
        planted.push(id);
    }
    assert!(planted[1].starts_with("25"), "{planted:?}");
    fs::write(&file, "real 3").unwrap();

    // Listed, and marked.
    let list = f.run(&["--json", "snapshots"]).ok().json();
    let mut future: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["future_dated"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    future.sort();
    assert_eq!(future, planted);
    let text = f.run(&["snapshots"]).ok();
    assert!(
        text.stdout.contains(&format!("{}  j", planted[1])) && text.stdout.contains("FUTURE-DATED"),
        "{}",
        text.stdout
    );

    // `latest` is the newest real one, and says what it passed over.
    let target = f.path().join("t");
    let run = f
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read_to_string(restored(&target, &file)).unwrap(), "real 3");
    for id in &planted {
        assert!(
            run.stderr.contains(&format!("snapshot {id} of job j claims"))
                && run.stderr.contains("future-dated"),
            "{}",
            run.stderr
        );
    }

    // forget keeps every real snapshot (3 runs today: keep-last 3) and
    // leaves the planted ones alone without letting them push real ones out.
    let plan = f.run(&["--json", "forget", "--dry-run"]).ok().json();
    let snaps = &plan[0]["snapshots"];
    let mut kept = ids_with(snaps, "action", "keep");
    kept.sort();
    let mut all: Vec<String> = real.iter().chain(&planted).cloned().collect();
    all.sort();
    assert_eq!(kept, all, "{plan:#}");
    assert!(ids_with(snaps, "action", "forget").is_empty(), "{plan:#}");
    for s in snaps.as_array().unwrap() {
        if planted.contains(&s["id"].as_str().unwrap().to_string()) {
            assert!(
                s["reasons"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("future-dated: it claims "),
                "{s}"
            );
        }
    }
    let deleted: Vec<&Value> = plan[0]["archives"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "delete")
        .collect();
    assert!(deleted.is_empty(), "nothing is deleted: {deleted:?}");

    // The real host's next run builds on its last real snapshot.
    fs::write(&file, "real 4").unwrap();
    let next = backup(&f);
    assert_eq!(next["parent"].as_str(), Some(real[2].as_str()), "{next:#}");
    assert!(next["full_reason"].is_null(), "{next:#}");
    let target = f.path().join("t2");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read_to_string(restored(&target, &file)).unwrap(), "real 4");
}

#[test]
fn an_unreadable_newest_manifest_is_skipped_reported_and_costs_no_history() {
    let (f, src) = world();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n[jobs.retention]\nkeep-last = 1\n",
        src.display().to_string()
    ));
    let file = src.join("a");
    fs::write(&file, "first").unwrap();
    let r1 = backup(&f)["snapshot"].as_str().unwrap().to_string();
    fs::write(&file, "second").unwrap();
    let r2 = backup(&f)["snapshot"].as_str().unwrap().to_string();

    // A manifest planted under a newer id: another snapshot's bytes (sealed
    // for another name), recorded now.
    let manifests = f.objects(".manifest");
    let r2_manifest = manifests
        .iter()
        .find(|p| p.to_string_lossy().contains(&r2))
        .unwrap();
    let bad = format!("{}-fffff00d", &jiff_now_id()[..16]);
    let planted = r2_manifest.with_file_name(format!("{bad}.manifest"));
    fs::copy(r2_manifest, &planted).unwrap();
    assert!(bad > r2, "{bad} sorts after {r2}");

    let target = f.path().join("t");
    let run = f
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read_to_string(restored(&target, &file)).unwrap(), "second");
    assert!(
        run.stderr.contains(&format!(
            "skipping snapshot {bad} of job j: its manifest cannot be trusted"
        )),
        "{}",
        run.stderr
    );

    let verify = f.run(&["verify", "--all"]).code(5);
    assert!(
        verify.stdout.contains(&format!("{r1} (j): ok")),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains(&format!("{r2} (j): ok")),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stderr.contains(&format!("{bad} (j): FAILED")),
        "{}",
        verify.stderr
    );
    assert!(
        verify.stderr.contains("1 of 3 snapshot(s) failed verification"),
        "{}",
        verify.stderr
    );

    let listed = f.run(&["--json", "snapshots"]).code(5);
    let list = listed.json();
    assert_eq!(ids_with(&list, "kind", "unreadable"), std::slice::from_ref(&bad));
    assert!(
        listed
            .stderr
            .contains(&format!("1 snapshot manifest(s) could not be read: {bad}")),
        "{}",
        listed.stderr
    );

    // forget works: the policy runs over the real snapshots, the unreadable
    // one is kept, and no archive goes while it cannot be read.
    let plan = f.run(&["--json", "forget", "--apply"]).ok().json();
    let snaps = &plan[0]["snapshots"];
    assert_eq!(
        ids_with(snaps, "action", "forget"),
        std::slice::from_ref(&r1),
        "{plan:#}"
    );
    let mut kept = ids_with(snaps, "action", "keep");
    kept.sort();
    assert_eq!(kept, [r2.clone(), bad.clone()], "{plan:#}");
    for a in plan[0]["archives"].as_array().unwrap() {
        assert_eq!(a["action"], "keep", "{a}");
    }
    let target = f.path().join("t2");
    f.run(&["restore", &r2, "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read_to_string(restored(&target, &file)).unwrap(), "second");
}

/// A snapshot id for the current time (its first 16 characters are
/// `YYYYMMDDTHHMMSSZ`).
fn jiff_now_id() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
