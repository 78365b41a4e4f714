//! Large files stored as content-defined chunks, and tree listings shared
//! between snapshots (docs/FORMAT.md §13 and §15): a run costs what changed,
//! every snapshot still restores exactly on its own, `verify` reads every
//! chunk a snapshot uses, `forget` keeps what chunks need.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{Fixture, assert_same_tree, noise, restored};

const MIB: u64 = 1 << 20;
/// Largest chunk (`agent/src/pipeline/chunks.rs`).
const MAX_CHUNK: u64 = 4 * MIB;

fn backup(f: &Fixture) -> Value {
    // A file changed within a timestamp tick of the walk is archived anew
    // on the next run ("racy"); the cost assertions below want none.
    std::thread::sleep(std::time::Duration::from_millis(50));
    f.run(&["--json", "backup", "now"]).ok().json()[0].clone()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// A copy of `src` as it is now, to compare a later restore with.
fn copy_of(src: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(to).status().unwrap();
    assert!(status.success());
}

fn append(path: &Path, data: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

fn overwrite(path: &Path, at: u64, data: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(data, at)
        .unwrap();
}

/// Sealed bytes of the objects a snapshot wrote (archive, node pack,
/// manifest).
fn written_by(f: &Fixture, snapshot: &str) -> u64 {
    f.repo_files()
        .iter()
        .filter(|p| p.contains(snapshot))
        .map(|p| fs::metadata(f.repo().join(p)).unwrap().len())
        .sum()
}

/// A job `j` over `src` whose chunking key is fixed (written where the agent
/// keeps it, in its documented format), so cut points, and so the costs
/// asserted, are the same on every run of the test.
fn fixture_with_fixed_chunk_key(src: &Path, extra: &str) -> Fixture {
    let f = Fixture::new(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n{extra}",
        src.display().to_string()
    ));
    let dir = f.state().join("incremental");
    fs::create_dir_all(&dir).unwrap();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("j.chunkkey"))
        .unwrap()
        .write_all(format!("{}\n", "5a".repeat(32)).as_bytes())
        .unwrap();
    f.init();
    f
}

/// Grown, rewritten in the middle, truncated, grown again, copied, renamed
/// and changed, shifted by a cut at the start: each run stores about what
/// changed (a chunk or two around each change), and every snapshot of the
/// chain restores exactly.
#[test]
fn large_files_that_change_cost_their_change_and_every_snapshot_restores() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::create_dir_all(src.join("logs")).unwrap();
    fs::write(src.join("db/main.db"), noise(24 * MIB as usize, 1)).unwrap();
    fs::write(src.join("logs/app.log"), noise(12 * MIB as usize, 2)).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("logs/small-{i:02}")), format!("small {i}\n")).unwrap();
    }
    let f = fixture_with_fixed_chunk_key(&src, "");
    let mut states: Vec<(String, PathBuf)> = Vec::new();
    let mut step = |f: &Fixture, label: &str| -> Value {
        let r = backup(f);
        let copy = work.path().join(label);
        copy_of(&src, &copy);
        states.push((r["snapshot"].as_str().unwrap().to_string(), copy));
        r
    };

    let full = step(&f, "full");
    assert!(num(&full, "new_bytes") >= 36 * MIB, "{full}");

    // 1 MiB appended to the log, 64 KiB rewritten in the middle of the db.
    append(&src.join("logs/app.log"), &noise(MIB as usize, 3));
    overwrite(&src.join("db/main.db"), 12 * MIB, &noise(64 << 10, 4));
    let r = step(&f, "appended");
    assert_eq!(num(&r, "archived_files"), 2, "{r}");
    // The log: its old last chunk (cut at the old end) and the new MiB; the
    // db: the chunk or two the rewrite touches.
    assert!(num(&r, "new_bytes") <= MIB + 3 * MAX_CHUNK, "{r}");
    assert!(num(&r, "new_bytes") * 4 < 36 * MIB, "{r}");
    let id = r["snapshot"].as_str().unwrap();
    assert!(
        written_by(&f, id) <= num(&r, "new_bytes") + (256 << 10),
        "a run stores its new bytes and little else: {} for {r}",
        written_by(&f, id)
    );

    // Truncated: the chunks before the cut are kept, one chunk is new.
    OpenOptions::new()
        .write(true)
        .open(src.join("db/main.db"))
        .unwrap()
        .set_len(10 * MIB)
        .unwrap();
    let r = step(&f, "truncated");
    assert!(num(&r, "new_bytes") <= MAX_CHUNK, "{r}");

    // Grown again, past its old size, with new content.
    append(&src.join("db/main.db"), &noise(14 * MIB as usize, 5));
    let r = step(&f, "regrown");
    assert!(num(&r, "new_bytes") <= 14 * MIB + MAX_CHUNK, "{r}");
    assert!(num(&r, "new_bytes") >= 13 * MIB, "{r}");

    // A copy costs nothing; a renamed file changed at its start costs the
    // chunk it changed.
    fs::copy(src.join("logs/app.log"), src.join("logs/app.log.1")).unwrap();
    fs::rename(src.join("db/main.db"), src.join("db/moved.db")).unwrap();
    overwrite(&src.join("db/moved.db"), 0, &noise(64 << 10, 6));
    let r = step(&f, "copied");
    assert_eq!(num(&r, "archived_files"), 2, "{r}");
    assert!(num(&r, "new_bytes") <= 2 * MAX_CHUNK, "{r}");
    assert_eq!(num(&r, "deleted"), 1, "{r}");

    // The first MiB cut off the log: everything after it shifts.
    let log = fs::read(src.join("logs/app.log")).unwrap();
    fs::write(src.join("logs/app.log"), &log[MIB as usize..]).unwrap();
    let r = step(&f, "shifted");
    assert!(num(&r, "new_bytes") <= 2 * MAX_CHUNK, "{r}");

    // Nothing changed: no archive, no node pack, a small manifest.
    let r = step(&f, "idle");
    assert!(r["archive"].is_null(), "{r}");
    assert_eq!(num(&r, "new_bytes"), 0, "{r}");
    assert_eq!(num(&r, "new_segments"), 0, "{r}");
    let id = r["snapshot"].as_str().unwrap();
    let files: Vec<String> = f.repo_files().into_iter().filter(|p| p.contains(id)).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(written_by(&f, id) < 4096, "{files:?}: {}", written_by(&f, id));

    for (id, tree) in &states {
        let target = work.path().join(format!("restore-{id}"));
        f.run(&["restore", id, "--target", target.to_str().unwrap()]).ok();
        assert_same_tree(tree, &restored(&target, &src));
    }
    f.run(&["verify", "--all"]).ok();

    // One chunked file alone.
    let one = work.path().join("one");
    let wanted = src.join("db/moved.db");
    f.run(&[
        "restore",
        "latest",
        "--target",
        one.to_str().unwrap(),
        wanted.to_str().unwrap(),
    ])
    .ok();
    let got = one.join(wanted.strip_prefix("/").unwrap());
    assert_eq!(fs::read(&got).unwrap(), fs::read(&wanted).unwrap());
}

/// Identical content within one run is stored once: a full run of two
/// copies of a file stores one.
#[test]
fn copies_in_one_run_are_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = noise(20 * MIB as usize, 7);
    fs::write(src.join("a.img"), &data).unwrap();
    fs::write(src.join("b.img"), &data).unwrap();
    let f = fixture_with_fixed_chunk_key(&src, "");
    let r = backup(&f);
    assert_eq!(num(&r, "new_bytes"), 20 * MIB, "{r}");
    let archive = f.objects(".archive");
    assert_eq!(archive.len(), 1);
    let size = fs::metadata(&archive[0]).unwrap().len();
    assert!(size < 21 * MIB, "{size}");
    let target = work.path().join("t");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&target, &src));
}

/// A chunk the latest snapshot uses lies in the full's archive: a byte
/// changed there is caught by `verify` (exit 5, naming the archive) and by
/// `restore`, which leaves no part of the file behind.
#[test]
fn a_tampered_chunk_of_an_earlier_archive_is_caught() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("disk.img"), noise(16 * MIB as usize, 8)).unwrap();
    let f = fixture_with_fixed_chunk_key(&src, "");
    let full = backup(&f);
    let full_id = full["snapshot"].as_str().unwrap().to_string();
    overwrite(&src.join("disk.img"), 14 * MIB, &noise(4096, 9));
    let r = backup(&f);
    assert!(num(&r, "new_bytes") < 8 * MIB, "{r}");
    f.run(&["verify"]).ok();

    // The full's archive holds only chunks of disk.img: flip a byte an
    // eighth of the way in (the chunk the change replaced starts 10 MiB in
    // at the earliest: the latest snapshot uses this one).
    let archive = f
        .objects(".archive")
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&full_id))
        .unwrap();
    let mut file = OpenOptions::new().read(true).write(true).open(&archive).unwrap();
    let len = file.metadata().unwrap().len();
    file.seek(SeekFrom::Start(len / 8)).unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], len / 8).unwrap();
    drop(file);

    let run = f.run(&["verify"]).code(5);
    assert!(run.stderr.contains(&full_id), "{}", run.stderr);
    let target = work.path().join("t");
    let run = f
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .code(5);
    assert!(run.stderr.contains(&full_id), "{}", run.stderr);
    let left: Vec<_> = walk_files(&target);
    assert!(
        left.iter().all(|p| !p.to_string_lossy().contains("disk.img")),
        "nothing of the file is left: {left:?}"
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(list) = fs::read_dir(dir) {
        for e in list.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// keep-last 1 after a change inside a large file: the full snapshot goes,
/// its archive stays (the kept snapshot's chunks are in it, and forget
/// says so), its node pack goes, and the kept snapshot restores exactly.
#[test]
fn forget_keeps_the_archives_whose_chunks_a_kept_snapshot_uses() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("vm.img"), noise(16 * MIB as usize, 10)).unwrap();
    fs::write(src.join("small"), b"small").unwrap();
    let f = fixture_with_fixed_chunk_key(&src, "[jobs.retention]\nkeep-last = 1\n");
    let full = backup(&f)["snapshot"].as_str().unwrap().to_string();
    overwrite(&src.join("vm.img"), 4 * MIB, &noise(4096, 11));
    fs::write(src.join("small"), b"changed").unwrap();
    let last = backup(&f)["snapshot"].as_str().unwrap().to_string();

    let plan = f.run(&["--json", "forget", "--dry-run"]).ok().json();
    let plan = &plan[0];
    let object = |name: &str| {
        plan["archives"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["object"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in {plan}"))
            .clone()
    };
    let full_archive = object(&format!("archives/{full}/0.archive"));
    assert_eq!(full_archive["action"], "keep", "{plan}");
    let why = full_archive["why"].as_str().unwrap();
    assert!(why.contains(&last) && why.contains("chunks"), "{why}");
    // The last run changed the one small file's segment: the full's node
    // pack is used by nobody kept.
    assert_eq!(
        object(&format!("nodes/{full}.nodes"))["action"],
        "delete",
        "{plan}"
    );
    assert_eq!(object(&format!("nodes/{last}.nodes"))["action"], "keep", "{plan}");

    f.run(&["forget", "--apply"]).ok();
    let target = work.path().join("t");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&target, &src));
    f.run(&["verify", "--all"]).ok();
}

/// A tree of 20,000 files: a run that changes one file writes one new
/// segment of the tree listing and shares the others; a run that changes
/// nothing writes a manifest of a few KiB and no node pack.
#[test]
fn tree_listings_are_shared_between_snapshots() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..200 {
            fs::write(dir.join(format!("f{i:03}")), format!("{d} {i}\n")).unwrap();
        }
    }
    let f = fixture_with_fixed_chunk_key(&src, "");
    let full = backup(&f);
    assert!(num(&full, "new_segments") >= 5, "{full}");
    let full_listing = written_by(&f, full["snapshot"].as_str().unwrap())
        - fs::metadata(f.objects(".archive").pop().unwrap()).unwrap().len();

    fs::write(src.join("d050/f100"), b"changed\n").unwrap();
    let one = backup(&f);
    assert_eq!(num(&one, "new_segments"), 1, "{one}");
    assert_eq!(
        num(&one, "reused"),
        num(&full, "files") + num(&full, "dirs") - 1,
        "{one}"
    );

    let idle = backup(&f);
    assert_eq!(num(&idle, "new_segments"), 0, "{idle}");
    let id = idle["snapshot"].as_str().unwrap();
    let written: Vec<String> = f.repo_files().into_iter().filter(|p| p.contains(id)).collect();
    assert_eq!(written.len(), 1, "only a manifest: {written:?}");
    let size = written_by(&f, id);
    assert!(
        size < 4096 && size * 20 < full_listing,
        "{size} bytes (the full's listing: {full_listing})"
    );

    // `snapshots` reads manifests only; every snapshot restores on its own.
    let listed = f.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let target = work.path().join("t");
    f.run(&["restore", id, "--target", target.to_str().unwrap()]).ok();
    assert_same_tree(&src, &restored(&target, &src));
}
