//! docs/FORMAT.md is precise enough to read a repository without
//! vaultline: `tests/support/format_reader.py`, written from FORMAT.md alone
//! by someone who read no vaultline code (Python, `cryptography` and
//! `zstandard` only), restores every snapshot of an incremental chain with
//! chunked files byte for byte, with modes, mtimes, symlinks and hard links,
//! both reading objects whole and by ranged reads, and refuses a tampered
//! archive as vaultline's `verify` does.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::moto::python;
use crate::util::{Fixture, assert_same_tree, noise, repo_root, restored};

const MIB: usize = 1 << 20;

fn reader(f: &Fixture, args: &[&str]) -> Output {
    Command::new(python())
        .arg(repo_root().join("tests/support/format_reader.py"))
        .arg(args[0])
        .arg("--repo")
        .arg(f.repo())
        .arg("--key-file")
        .arg(f.key_file())
        .args(&args[1..])
        .output()
        .expect("run the format reader")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn snapshot_args(id: &str) -> Vec<&str> {
    vec!["--host", "testhost", "--job", "data", "--snapshot", id]
}

fn copy_of(src: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(to).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_reader_written_from_format_md_alone_restores_every_snapshot_of_a_chunked_chain() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("etc/app")).unwrap();
    fs::create_dir_all(src.join("data")).unwrap();
    for i in 0..40 {
        fs::write(
            src.join(format!("etc/app/conf{i}.ini")),
            format!("[s{i}]\nkey={i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    let log: String = (0..300_000).map(|i| format!("line {i} of the log\n")).collect();
    fs::write(src.join("data/app.log"), log).unwrap();
    fs::write(src.join("data/disk.img"), noise(20 * MIB, 1)).unwrap();
    fs::write(src.join("data/small.bin"), noise(5000, 2)).unwrap();
    std::os::unix::fs::symlink("../etc/app/conf1.ini", src.join("data/link")).unwrap();
    fs::hard_link(src.join("data/small.bin"), src.join("data/hard.bin")).unwrap();

    let f = Fixture::with_job("data", &[&src]);
    f.init();
    let mut ids = Vec::new();
    let mut copies = Vec::new();
    let mut run = |f: &Fixture, n: usize| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let out = f.run(&["--json", "backup", "now"]).ok().json();
        ids.push(out[0]["snapshot"].as_str().unwrap().to_string());
        let copy = work.path().join(format!("copy{n}"));
        copy_of(&src, &copy);
        copies.push(copy);
    };
    run(&f, 0);

    // Appends, a rewrite in the middle of a chunked file, a copy of it,
    // a new file and a deletion.
    OpenOptions::new()
        .append(true)
        .open(src.join("data/app.log"))
        .unwrap()
        .write_all(b"one more line\n".repeat(50_000).as_slice())
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(src.join("data/disk.img"))
        .unwrap()
        .write_all_at(&noise(65536, 3), 10 * MIB as u64)
        .unwrap();
    fs::copy(src.join("data/disk.img"), src.join("data/disk-copy.img")).unwrap();
    fs::write(src.join("etc/app/new.ini"), "new\n").unwrap();
    fs::remove_file(src.join("etc/app/conf3.ini")).unwrap();
    run(&f, 1);

    // A truncation and a rename.
    OpenOptions::new()
        .write(true)
        .open(src.join("data/disk.img"))
        .unwrap()
        .set_len(9 * MIB as u64)
        .unwrap();
    fs::rename(src.join("data/disk-copy.img"), src.join("data/moved.img")).unwrap();
    run(&f, 2);

    let list = reader(&f, &["list"]);
    assert!(list.status.success(), "{}", text(&list));
    for id in &ids {
        assert!(
            String::from_utf8_lossy(&list.stdout).contains(id.as_str()),
            "{}",
            text(&list)
        );
    }
    for (i, (id, copy)) in ids.iter().zip(&copies).enumerate() {
        for mode in [None, Some("--ranged")] {
            let target = work.path().join(format!("restored{i}{}", mode.unwrap_or("")));
            let mut args = vec!["restore"];
            args.extend(snapshot_args(id));
            args.extend(["--target", target.to_str().unwrap()]);
            args.extend(mode);
            let out = reader(&f, &args);
            assert!(out.status.success(), "snapshot {i} {mode:?}: {}", text(&out));
            assert_same_tree(copy, &restored(&target, &src));
            let links = restored(&target, &src).join("data");
            assert_eq!(
                fs::metadata(links.join("hard.bin")).unwrap().ino(),
                fs::metadata(links.join("small.bin")).unwrap().ino(),
                "the hard link is one inode again"
            );

            let mut args = vec!["verify"];
            args.extend(snapshot_args(id));
            args.extend(mode);
            let out = reader(&f, &args);
            assert!(out.status.success(), "verify {i} {mode:?}: {}", text(&out));
        }
    }

    // A flipped byte in the first archive, about 2 MiB into disk.img (the
    // last large member: what follows it is a few KiB), which every snapshot
    // uses: the reader and vaultline both refuse every snapshot, exit 5.
    let archive = f
        .repo()
        .join(format!("vaultline/testhost/data/archives/{}/0.archive", ids[0]));
    let file = OpenOptions::new().read(true).write(true).open(&archive).unwrap();
    let at = file.metadata().unwrap().len() - 18 * MIB as u64;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    for id in &ids {
        let mut args = vec!["verify"];
        args.extend(snapshot_args(id));
        let out = reader(&f, &args);
        let ours = f.run(&["verify", id]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert_eq!(ours.code, 5, "{}", ours.stderr);
    }
}
