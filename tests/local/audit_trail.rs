//! The audit trail through the binary: what a backup and a restore record,
//! and `audit-log verify` naming the first tampered line.

use std::fs;

use serde_json::Value;

use crate::util::Fixture;

fn trail(f: &Fixture) -> Vec<String> {
    fs::read_to_string(f.state().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn runs_are_recorded_chained_and_tampering_is_named() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let f = Fixture::with_job("j", &[src.path()]);
    f.init();
    f.run(&["backup", "now"]).ok();
    let target = f.path().join("t");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();

    let lines = trail(&f);
    let records: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let whats: Vec<&str> = records.iter().map(|r| r["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        [
            "run-started",
            "snapshot-committed",
            "run-finished",
            "restore-started",
            "restore-finished"
        ]
    );
    let committed = &records[1];
    assert!(
        committed["who"].as_str().unwrap().starts_with("local user "),
        "{committed}"
    );
    assert_eq!(committed["how"]["command"], "backup now");
    assert_eq!(committed["how"]["host"], "testhost");
    assert_eq!(committed["how"]["config_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(committed["details"]["job"], "j");
    // The archive, the node pack and the manifest.
    assert_eq!(records[2]["details"]["key_use"]["data_keys_generated"], 3);
    assert_eq!(records[4]["details"]["result"], "ok");
    assert!(
        records[4]["details"]["key_use"]["data_keys_unwrapped"]
            .as_u64()
            .unwrap()
            >= 2
    );

    // Shipped to the repository next to the snapshots: each command's
    // lines before it exited, the restore's too.
    let mut segments = f.objects(".jsonl");
    segments.sort();
    assert_eq!(segments.len(), 2, "{:?}", f.repo_files());
    let shipped = |i: usize| fs::read_to_string(&segments[i]).unwrap();
    assert_eq!(
        shipped(0).lines().collect::<Vec<_>>(),
        &lines[..3],
        "the backup's lines were shipped"
    );
    assert_eq!(
        shipped(1).lines().collect::<Vec<_>>(),
        &lines[3..],
        "the restore's lines were shipped"
    );

    let ok = f.run(&["audit-log", "verify"]).ok();
    assert!(
        ok.stdout.contains("5 line(s), hash chain intact")
            && ok
                .stdout
                .contains("the 5 line(s) shipped to the repository match"),
        "{}",
        ok.stdout
    );

    let path = f.state().join("audit.jsonl");
    let write = |ls: &[String]| fs::write(&path, ls.join("\n") + "\n").unwrap();
    let bad = |want: &str| {
        let run = f.run(&["audit-log", "verify"]).code(5);
        assert!(run.stderr.contains(want), "want {want:?}:\n{}", run.stderr);
    };

    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"job\":\"j\"", "\"job\":\"x\"");
    write(&edited);
    bad("line 3: its prev hash does not match line 2: line 2 was altered");

    let mut removed = lines.clone();
    removed.remove(2);
    write(&removed);
    bad("line 3: sequence number 4 where 3 belongs: a line before it was removed, or lines were reordered");

    let mut reordered = lines.clone();
    reordered.swap(0, 1);
    write(&reordered);
    bad("line 1: sequence number 2 where 1 belongs");

    // Cutting lines off the end leaves a valid chain, but five lines were
    // already shipped.
    write(&lines[..2]);
    bad("it ends at line 2 but lines up to 5 were already shipped");

    // The attacker who also rewrites the local marker and recomputes the
    // chain: the shipped copy still says what happened.
    let marker = f.state().join("audit.shipped");
    write(&lines[..3]);
    fs::write(&marker, "3\n").unwrap();
    bad("it ends at line 3 but lines up to 5 were shipped (last in ");
    let mut rewritten = lines.clone();
    rewritten[3] = rewritten[3].replace("\"restore-started\"", "\"status-viewed\"");
    assert_ne!(rewritten[3], lines[3]);
    rechain(&mut rewritten);
    write(&rewritten);
    bad("line 4 differs from the copy shipped in ");
    bad("it was altered after it was shipped");

    write(&lines);
    fs::write(&marker, "5\n").unwrap();
    f.run(&["audit-log", "verify"]).ok();

    // An auditor's copy, without any configuration: the chain alone, and
    // the output says that is all it checked.
    let copy = f.path().join("copy.jsonl");
    rechain(&mut rewritten);
    fs::write(&copy, rewritten.join("\n") + "\n").unwrap();
    let alone = std::process::Command::new(crate::util::vaultline_bin())
        .args(["audit-log", "verify", "--file", copy.to_str().unwrap()])
        .env_clear()
        .env("HOME", f.home())
        .env("VAULTLINE_CONFIG", f.path().join("no-such-config.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&alone.stdout);
    assert_eq!(
        alone.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    assert!(
        stdout.contains("5 line(s), hash chain intact")
            && stdout.contains("NOT compared with the shipped copy"),
        "{stdout}"
    );
    // With the configuration, the same copy is compared with what its host shipped.
    let compared = f
        .run(&["audit-log", "verify", "--file", copy.to_str().unwrap()])
        .code(5);
    assert!(
        compared
            .stderr
            .contains("line 4 differs from the copy shipped in"),
        "{}",
        compared.stderr
    );
}

/// Recomputes every `prev` hash, as someone rewriting the file would.
fn rechain(lines: &mut [String]) {
    use sha2::Digest;
    let mut prev = "0".repeat(64);
    for line in lines.iter_mut() {
        let at = line.find("\"prev\":\"").unwrap() + "\"prev\":\"".len();
        line.replace_range(at..at + 64, &prev);
        prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
    }
}

/// "Who" is the uid the kernel says and its name in the password database,
/// not `$USER`, which anyone sets: `USER=alice` is not believed, and an
/// unset `USER` is no `local user ?`.
#[test]
fn who_comes_from_the_uid_not_from_user() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let f = Fixture::with_job("j", &[src.path()]);
    f.init();
    let uid = rustix::process::getuid().as_raw();
    let name = fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let v: Vec<&str> = l.split(':').collect();
            (v.get(2) == Some(&uid.to_string().as_str())).then(|| v[0].to_string())
        })
        .expect("the running uid is in /etc/passwd");
    let out = f
        .command(&["backup", "now"])
        .env("USER", "alice")
        .output()
        .unwrap();
    assert!(out.status.success());
    f.run(&["backup", "now"]).ok(); // USER unset
    let whos: Vec<String> = trail(&f)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["who"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want = format!("local user {name} (uid {uid})");
    assert!(!whos.is_empty());
    assert!(whos.iter().all(|w| *w == want), "{whos:?}");
}
