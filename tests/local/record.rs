//! The local change record (`STATE/incremental/`) under damage: what a run
//! trusts of it, and what it costs when it cannot.
//!
//! The header keeps the BLAKE3 of the entries file and of the chunk list and
//! the entries' count; a record that does not match them makes the run full
//! and says why (never a failed run, never a wrong incremental). A record of
//! an earlier release (no checksums) is read through line by line instead,
//! so an upgrade costs no full run. A record that matches its checksums but
//! is wrong inside (written wrong) fails that one run, and is set aside so
//! that the next run is full.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{Fixture, noise, restored};

fn world() -> (Fixture, PathBuf) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        fs::write(
            src.join("d").join(format!("f{i:02}")),
            format!("small file {i}\n"),
        )
        .unwrap();
    }
    // Chunked (at least 1 MiB): its chunks' names are in the chunk list.
    fs::write(src.join("big"), noise(5 << 20, 17)).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    (f, src)
}

fn backup(f: &Fixture) -> Value {
    f.run(&["--json", "backup", "now"]).ok().json()[0].clone()
}

fn incremental(f: &Fixture) -> PathBuf {
    f.state().join("incremental")
}

/// The record's one file ending in `suffix`.
fn record_file(f: &Fixture, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(incremental(f))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn header(f: &Fixture) -> (PathBuf, Value) {
    let path = incremental(f).join("j.json");
    let value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    (path, value)
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

fn full_reason(run: &Value) -> String {
    assert!(run["parent"].is_null(), "{run}");
    run["full_reason"].as_str().unwrap().to_string()
}

/// A header of an earlier release: no checksums, no chunk list. The next
/// run is incremental all the same, and the big file's unchanged chunks
/// are found through the lines (a small change stores a chunk or two).
#[test]
fn a_record_of_an_earlier_release_without_checksums_still_makes_the_next_run_incremental() {
    let (f, src) = world();
    let first = backup(&f);
    let (path, mut h) = header(&f);
    for field in ["entries", "entries_blake3", "chunks_blake3"] {
        assert!(h.get(field).is_some(), "{field} missing in {h}");
        h.as_object_mut().unwrap().remove(field);
    }
    fs::write(&path, serde_json::to_vec(&h).unwrap()).unwrap();
    fs::remove_file(record_file(&f, ".chunks")).unwrap();

    // 4 KiB rewritten in the middle of the 5 MiB file, one small file changed.
    let mut big = fs::read(src.join("big")).unwrap();
    big[2 << 20..(2 << 20) + 4096].copy_from_slice(&noise(4096, 99));
    fs::write(src.join("big"), &big).unwrap();
    fs::write(src.join("d/f03"), "changed\n").unwrap();
    let second = backup(&f);
    assert_eq!(second["parent"], first["snapshot"], "{second}");
    assert_eq!(second["archived_files"], 2, "{second}");
    let stored = second["bytes_stored"].as_u64().unwrap();
    assert!(
        stored < 3 << 20,
        "{stored} bytes stored for a 4 KiB change of a chunked file: {second}"
    );
    // The record it wrote has checksums again, and a chunk list.
    let (_, h) = header(&f);
    assert_eq!(h["entries"], 23, "{h}"); // the root, d, 20 files, big
    assert!(h["entries_blake3"].as_str().is_some_and(|s| s.len() == 64), "{h}");
    assert!(fs::metadata(record_file(&f, ".chunks")).unwrap().len() >= 32 * 3);

    let target = f.path().join("restore");
    f.run(&[
        "restore",
        second["snapshot"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(fs::read(restored(&target, &src).join("big")).unwrap(), big);
    assert_eq!(
        fs::read_to_string(restored(&target, &src).join("d/f03")).unwrap(),
        "changed\n"
    );
}

/// Each part of the record altered after it was written: the run is full,
/// says which part, and commits; the run after it is incremental again.
#[test]
fn a_record_whose_entries_chunk_list_or_count_were_altered_makes_the_run_full_and_says_why() {
    let (f, src) = world();
    backup(&f);

    flip_byte(&record_file(&f, ".entries.zst"), 100);
    let why = full_reason(&backup(&f));
    assert!(
        why.contains("is damaged: its entries do not match the checksum in its header"),
        "{why}"
    );

    flip_byte(&record_file(&f, ".chunks"), 5);
    let why = full_reason(&backup(&f));
    assert!(
        why.contains("is damaged: its chunk list does not match the checksum in its header"),
        "{why}"
    );

    let (path, mut h) = header(&f);
    h["entries"] = Value::from(22);
    fs::write(&path, serde_json::to_vec(&h).unwrap()).unwrap();
    let why = full_reason(&backup(&f));
    assert!(
        why.contains("is damaged: its segments do not match its Some(22) entries"),
        "{why}"
    );

    // A chunk list truncated by a torn write, its sum made to match.
    let chunks = record_file(&f, ".chunks");
    let mut bytes = fs::read(&chunks).unwrap();
    bytes.truncate(bytes.len() - 7);
    fs::write(&chunks, &bytes).unwrap();
    let (path, mut h) = header(&f);
    h["chunks_blake3"] = Value::from(blake3::hash(&bytes).to_hex().to_string());
    fs::write(&path, serde_json::to_vec(&h).unwrap()).unwrap();
    let why = full_reason(&backup(&f));
    assert!(
        why.contains("its chunk list does not match the checksum in its header"),
        "{why}"
    );

    fs::write(src.join("d/f00"), "after the damage\n").unwrap();
    let healed = backup(&f);
    assert!(!healed["parent"].is_null(), "{healed}");
    assert_eq!(healed["archived_files"], 1, "{healed}");
}

/// Lines swapped and the checksum made to match (what a writer bug would
/// leave): the join cannot trust the order, so the run fails naming the
/// line, the record is set aside, and the next run is full and succeeds.
#[test]
fn a_record_that_matches_its_checksums_but_is_out_of_order_fails_one_run_and_the_next_is_full() {
    let (f, src) = world();
    backup(&f);
    let entries = record_file(&f, ".entries.zst");
    let plain = zstd::decode_all(&fs::read(&entries).unwrap()[..]).unwrap();
    let mut lines: Vec<&[u8]> = plain.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.swap(3, 4);
    let mut text = lines.join(&b'\n');
    text.push(b'\n');
    let packed = zstd::encode_all(&text[..], 1).unwrap();
    fs::write(&entries, &packed).unwrap();
    let (path, mut h) = header(&f);
    h["entries_blake3"] = Value::from(blake3::hash(&packed).to_hex().to_string());
    fs::write(&path, serde_json::to_vec(&h).unwrap()).unwrap();

    fs::write(src.join("d/f05"), "changed\n").unwrap();
    let failed = f.run(&["backup", "now"]).code(4);
    assert!(
        failed.stderr.contains("is damaged: line 5:") && failed.stderr.contains("is out of order"),
        "{}",
        failed.stderr
    );
    assert!(
        failed
            .stderr
            .contains("j.json was removed: the next run is a full one"),
        "{}",
        failed.stderr
    );
    let snapshots = f.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(
        snapshots.as_array().unwrap().len(),
        1,
        "nothing committed by the failed run: {snapshots}"
    );

    let next = backup(&f);
    assert!(
        full_reason(&next).contains("there is no local record of an earlier run of job j"),
        "{next}"
    );
    let target = f.path().join("restore");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read_to_string(restored(&target, &src).join("d/f05")).unwrap(),
        "changed\n"
    );
}
