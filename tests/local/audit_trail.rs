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
    assert_eq!(records[2]["details"]["key_use"]["data_keys_generated"], 2);
    assert_eq!(records[4]["details"]["result"], "ok");
    assert!(
        records[4]["details"]["key_use"]["data_keys_unwrapped"]
            .as_u64()
            .unwrap()
            >= 2
    );

    // Shipped to the repository next to the snapshots.
    let segments = f.objects(".jsonl");
    assert_eq!(segments.len(), 1, "{:?}", f.repo_files());
    let shipped = fs::read_to_string(&segments[0]).unwrap();
    assert_eq!(
        shipped.lines().collect::<Vec<_>>(),
        &lines[..3],
        "the backup's lines were shipped"
    );

    let ok = f.run(&["audit-log", "verify"]).ok();
    assert!(
        ok.stdout.contains("5 line(s), hash chain intact"),
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

    // Cutting lines off the end leaves a valid chain, but three lines were
    // already shipped.
    write(&lines[..2]);
    bad("it ends at line 2 but lines up to 3 were already shipped");

    write(&lines);
    f.run(&["audit-log", "verify"]).ok();
}
