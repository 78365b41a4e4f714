//! The file-system layer against real server data and real attackers:
//! one unreadable file costs that file (the snapshot commits), pseudo file
//! systems are read to their end or not entered, a local user racing the
//! walk gets no root-only byte into a snapshot, and everything a server
//! has (xattrs, capabilities, ACLs, holes, FIFOs, devices, hard links to
//! symlinks, big ids) comes back.
//!
//! These tests act as root (mounting, mknod, setcap, other users): CI runs
//! the suite as root. Run as another user outside CI, they say so and
//! return.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::moto::python;
use crate::util::{Fixture, files_under, repo_root, restored, root_or_explain};

/// A mounted [`failing_fs.py`](../support/failing_fs.py).
struct FailingFs {
    mount: PathBuf,
    child: Child,
}

impl FailingFs {
    fn mount(at: &Path) -> FailingFs {
        fs::create_dir_all(at).unwrap();
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/support/failing_fs.py"))
            .arg(at)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the failing file system");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "the failing file system did not mount");
        FailingFs {
            mount: at.to_path_buf(),
            child,
        }
    }
}

impl Drop for FailingFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unreadable_file_costs_that_file_and_the_snapshot_still_commits() {
    if !root_or_explain("an_unreadable_file_costs_that_file") {
        return;
    }
    let f = Fixture::new("");
    let normal = f.path().join("normal");
    fs::create_dir_all(&normal).unwrap();
    fs::write(normal.join("notes"), b"ordinary data").unwrap();
    let disk = FailingFs::mount(&f.path().join("failing"));
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}, {:?}]\n",
        disk.mount.display().to_string(),
        normal.display().to_string()
    ));
    f.init();
    for run in 0..2 {
        let out = f.run(&["--json", "backup", "now"]).code(4);
        let report = &out.json()[0];
        let unreadable: Vec<String> = report["unreadable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                format!(
                    "{} | {}",
                    u["path"].as_str().unwrap(),
                    u["reason"].as_str().unwrap()
                )
            })
            .collect();
        let bad = disk.mount.join("bad").display().to_string();
        let bad_first = disk.mount.join("bad-first").display().to_string();
        assert_eq!(
            unreadable,
            [
                format!("{bad} | read error: Input/output error (os error 5) after 8192 of 20000 bytes"),
                format!("{bad_first} | read error: Input/output error (os error 5) after 0 of 4096 bytes"),
            ],
            "run {run}: each failing file once, with why"
        );
        assert!(
            out.stderr.contains("lacks 2 unreadable path(s)"),
            "run {run}: {}",
            out.stderr
        );
        // The text report names each once too.
        let text = f.run(&["backup", "now"]).code(4);
        assert_eq!(
            text.stdout.matches(&format!("NOT BACKED UP: {bad} ")).count(),
            1,
            "{}",
            text.stdout
        );
    }
    // What could be read is in the snapshot, exactly; the rest is not.
    let target = f.path().join("t");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let back = restored(&target, &disk.mount);
    assert_eq!(
        fs::read(back.join("good")).unwrap(),
        fs::read(disk.mount.join("good")).unwrap()
    );
    assert_eq!(fs::read(back.join("sub/also")).unwrap(), b"also fine.\n\n");
    assert!(!back.join("bad").exists() && !back.join("bad-first").exists());
    assert_eq!(
        fs::read(restored(&target, &normal).join("notes")).unwrap(),
        b"ordinary data"
    );
    f.run(&["verify"]).ok();
}

#[test]
fn pseudo_file_systems_are_read_to_their_end_or_not_entered() {
    if !root_or_explain("pseudo_file_systems") {
        return;
    }
    let f = Fixture::new("");
    let tree = f.path().join("tree");
    fs::create_dir_all(tree.join("proc")).unwrap();
    fs::write(tree.join("data"), b"real").unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(tree.join("proc"))
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t proc");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tree.join("proc"));
    // A kernel file whose size is 0 to stat, and a proc mount inside a tree.
    let ostype = Path::new("/proc/sys/kernel/ostype");
    assert_eq!(fs::metadata(ostype).unwrap().len(), 0);
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}, {:?}]\n",
        tree.display().to_string(),
        ostype.display().to_string()
    ));
    f.init();
    let out = f.run(&["--json", "backup", "now"]).ok();
    let report = &out.json()[0];
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains(&format!("{}/proc", tree.display()))
            && skipped.contains("a proc file system: not data, and its sizes lie"),
        "{skipped}"
    );
    let target = f.path().join("t");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(restored(&target, ostype)).unwrap(),
        fs::read(ostype).unwrap(),
        "read to its real end, not to the 0 bytes stat says"
    );
    assert!(fs::read(restored(&target, ostype)).unwrap().starts_with(b"Linux"));
    let back = restored(&target, &tree);
    assert_eq!(fs::read(back.join("data")).unwrap(), b"real");
    let inside: Vec<_> = fs::read_dir(back.join("proc"))
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(inside.is_empty() || inside == [0], "nothing of /proc: {inside:?}");
}

#[test]
fn a_local_user_swapping_directories_gets_no_root_only_byte_into_a_snapshot() {
    if !root_or_explain("swapping_directories") {
        return;
    }
    let f = Fixture::new("");
    // Others must traverse the fixture to reach the user's directory.
    fs::set_permissions(f.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let marker = format!("ROOT-ONLY-{:016x}", std::process::id() as u64 * 7919);
    let secret = f.path().join("secret");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    for i in 0..20 {
        fs::write(secret.join(format!("f{i}")), marker.repeat(50)).unwrap();
        fs::set_permissions(secret.join(format!("f{i}")), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let nobody = rustix::fs::Uid::from_raw(65534);
    let nogroup = rustix::fs::Gid::from_raw(65534);
    let home = f.path().join("users");
    let d = home.join("d");
    fs::create_dir_all(&d).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("f{i}")), b"the user's own data").unwrap();
        rustix::fs::chown(d.join(format!("f{i}")), Some(nobody), Some(nogroup)).unwrap();
    }
    std::os::unix::fs::symlink(&secret, home.join("alt")).unwrap();
    for p in [&home, &d] {
        rustix::fs::chown(p, Some(nobody), Some(nogroup)).unwrap();
    }
    std::os::unix::fs::lchown(home.join("alt"), Some(65534), Some(65534)).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n",
        home.display().to_string()
    ));
    f.init();

    let stop = f.path().join("stop");
    let swapper = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(python())
        .arg(repo_root().join("tests/support/swapper.py"))
        .arg(&home)
        .args(["d", "alt"])
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the swapper");
    std::thread::sleep(Duration::from_millis(300));
    let backups = 25;
    let mut leaked = 0usize;
    let mut archived_user_files = 0u64;
    for i in 0..backups {
        // Full runs: every file is opened and read every time.
        let run = f.run(&["--json", "backup", "now", "--full"]);
        assert!(run.code == 0 || run.code == 4, "backup {i}: {run:?}");
        archived_user_files += run.json()[0]["files"].as_u64().unwrap_or(0);
        let target = f.path().join(format!("t{i}"));
        f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
            .ok();
        for file in files_under(&target) {
            if !fs::symlink_metadata(&file).unwrap().is_file() {
                continue;
            }
            let bytes = fs::read(&file).unwrap();
            leaked += bytes
                .windows(marker.len())
                .filter(|w| *w == marker.as_bytes())
                .count()
                * marker.len();
        }
        fs::remove_dir_all(&target).unwrap();
    }
    fs::write(&stop, b"").unwrap();
    let out = swapper.wait_with_output().unwrap();
    assert!(out.status.success(), "the swapper failed: {out:?}");
    let swaps: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!(
        "race: {swaps} swaps during {backups} backups ({archived_user_files} user files archived), {leaked} root-only bytes leaked"
    );
    assert!(swaps > 10_000, "the attack ran: {swaps} swaps");
    assert!(
        archived_user_files > 0,
        "the user's own files were backed up when the walk saw them"
    );
    assert_eq!(
        leaked, 0,
        "bytes of root-only files restored from {backups} snapshots"
    );
}

/// `getfattr -d -m - -h --absolute-names` for `path`, less the first line.
fn xattr_dump(path: &Path) -> String {
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-", "-h", "-e", "hex", "--absolute-names"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_ok(program: &str, args: &[&str], path: &Path) {
    let status = Command::new(program).args(args).arg(path).status().unwrap();
    assert!(status.success(), "{program} {args:?} {}", path.display());
}

#[test]
fn everything_a_server_has_comes_back() {
    if !root_or_explain("everything_a_server_has_comes_back") {
        return;
    }
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("shared/inherits")).unwrap();
    // Extended attributes in every namespace root may write, capabilities, ACLs.
    fs::write(src.join("attrs"), b"attributes").unwrap();
    run_ok(
        "setfattr",
        &["-n", "user.origin", "-v", "vaultline test"],
        &src.join("attrs"),
    );
    run_ok(
        "setfattr",
        &["-n", "user.binary", "-v", "0x00ff10"],
        &src.join("attrs"),
    );
    run_ok(
        "setfattr",
        &["-n", "trusted.tier", "-v", "gold"],
        &src.join("attrs"),
    );
    fs::write(src.join("daemon"), b"\x7fELF pretend").unwrap();
    fs::set_permissions(src.join("daemon"), fs::Permissions::from_mode(0o755)).unwrap();
    run_ok("setcap", &["cap_net_bind_service+ep"], &src.join("daemon"));
    fs::write(src.join("acl"), b"shared with uid 1234").unwrap();
    run_ok("setfacl", &["-m", "u:1234:rw-,g:2345:r--"], &src.join("acl"));
    run_ok("setfacl", &["-d", "-m", "u:1234:rwx"], &src.join("shared"));
    // A sparse file: 1 GiB with 4 KiB of data in the middle.
    let sparse = src.join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut s = fs::File::create(&sparse).unwrap();
        s.seek(SeekFrom::Start(512 << 20)).unwrap();
        s.write_all(&[0x5a; 4096]).unwrap();
        s.set_len(1 << 30).unwrap();
    }
    // FIFOs, devices, a hard link to a symlink, ns times, big ids.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("loop"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 200),
    )
    .unwrap();
    std::os::unix::fs::symlink("attrs", src.join("link")).unwrap();
    fs::hard_link(src.join("link"), src.join("link-again")).unwrap();
    fs::write(src.join("bigid"), b"owned far away").unwrap();
    rustix::fs::chown(
        src.join("bigid"),
        Some(rustix::fs::Uid::from_raw(3_000_000_000)),
        Some(rustix::fs::Gid::from_raw(3_000_000_001)),
    )
    .unwrap();
    let t = fs::File::options().write(true).open(src.join("bigid")).unwrap();
    t.set_modified(std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 987_654_321))
        .unwrap();
    drop(t);

    f.write_config(&format!(
        "[[jobs]]\nname = \"fidelity\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    let backup = f.run(&["--json", "backup", "now"]).ok().json();
    assert!(
        backup[0]["bytes_stored"].as_u64().unwrap() < 1 << 20,
        "holes are not stored: {backup}"
    );
    let target = f.path().join("t");
    f.run(&[
        "restore",
        "latest",
        "--keep-privileges",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    let back = restored(&target, &src);

    crate::util::assert_same_tree(&src, &back);
    for name in [
        "attrs",
        "daemon",
        "acl",
        "shared",
        "shared/inherits",
        "link",
        "fifo",
        "null",
        "loop",
        "bigid",
    ] {
        assert_eq!(
            xattr_dump(&back.join(name)),
            xattr_dump(&src.join(name)),
            "{name}"
        );
    }
    assert!(
        xattr_dump(&back.join("attrs")).contains("trusted.tier"),
        "{}",
        xattr_dump(&back.join("attrs"))
    );
    let caps = Command::new("getcap").arg(back.join("daemon")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("cap_net_bind_service=ep"),
        "{caps:?}"
    );
    let acl = Command::new("getfacl")
        .args(["-cn"])
        .arg(back.join("acl"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("user:1234:rw-"),
        "{acl:?}"
    );
    let s = fs::metadata(back.join("sparse")).unwrap();
    assert_eq!(s.len(), 1 << 30);
    assert!(
        s.blocks() * 512 <= 1 << 20,
        "allocated {} bytes",
        s.blocks() * 512
    );
    assert!(fs::metadata(back.join("fifo")).unwrap().file_type().is_fifo());
    let null = fs::metadata(back.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    let lp = fs::metadata(back.join("loop")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 200));
    let (a, b) = (
        fs::symlink_metadata(back.join("link")).unwrap(),
        fs::symlink_metadata(back.join("link-again")).unwrap(),
    );
    assert!(
        a.file_type().is_symlink() && a.ino() == b.ino(),
        "a hard link to the symlink"
    );
    let big = fs::metadata(back.join("bigid")).unwrap();
    assert_eq!((big.uid(), big.gid()), (3_000_000_000, 3_000_000_001));
    assert_eq!((big.mtime(), big.mtime_nsec()), (1_700_000_000, 987_654_321));

    // Without --keep-privileges the capability stays behind, and restore says so.
    let plain = f.path().join("plain");
    let run = f
        .run(&["restore", "latest", "--target", plain.to_str().unwrap()])
        .ok();
    assert!(!xattr_dump(&restored(&plain, &src).join("daemon")).contains("security.capability"));
    assert!(
        run.stderr
            .contains("restored without their setuid/setgid bits or file capabilities"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_hard_link_restored_alone_and_a_restore_run_again_both_succeed() {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("a/first"), b"one inode, two names").unwrap();
    fs::hard_link(src.join("a/first"), src.join("b/second")).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();

    // Only the second name: restored from the first name's data.
    let target = f.path().join("t");
    let only = format!("{}/b/second", src.display());
    f.run(&["restore", "latest", &only, "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(restored(&target, &src).join("b/second")).unwrap(),
        b"one inode, two names"
    );
    assert!(!restored(&target, &src).join("a/first").exists());

    // A whole restore, then the same again: nothing is in the way.
    let whole = f.path().join("whole");
    f.run(&["restore", "latest", "--target", whole.to_str().unwrap()])
        .ok();
    let again = f
        .run(&["--json", "restore", "latest", "--target", whole.to_str().unwrap()])
        .ok();
    let report = again.json();
    assert!(report["already"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["existing"], serde_json::json!([]), "{report}");
    crate::util::assert_same_tree(&src, &restored(&whole, &src));
}

#[test]
fn restore_leaves_an_existing_directory_as_it_was() {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("open")).unwrap();
    fs::set_permissions(src.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(src.join("open/f"), b"x").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();
    let target = f.path().join("t");
    let existing = restored(&target, &src).join("open");
    fs::create_dir_all(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o750)).unwrap();
    let before = fs::metadata(&existing).unwrap();
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let after = fs::metadata(&existing).unwrap();
    assert_eq!(
        (after.mode() & 0o7777, after.mtime(), after.uid()),
        (before.mode() & 0o7777, before.mtime(), before.uid()),
        "a snapshot may not open up a directory that existed"
    );
    assert_eq!(fs::read(existing.join("f")).unwrap(), b"x");
    // Asked to overwrite, it gets the snapshot's mode.
    f.run(&[
        "restore",
        "latest",
        "--overwrite",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(fs::metadata(&existing).unwrap().mode() & 0o7777, 0o777);
}

/// A file whose PAX header is larger than any path can make it (72 KiB of
/// user xattrs on tmpfs), placed so its header begins 40 KiB before the
/// archive's first frame boundary, restored alone: the ranged read planned
/// for it must reach past its header into the next frame, by the xattrs
/// the manifest lists.
#[test]
fn a_file_with_a_large_pax_header_is_restored_alone() {
    let shm = Path::new("/dev/shm");
    let src = tempfile::tempdir_in(shm).unwrap();
    // The tar stream: the job root's headers, then "a-filler"'s (each a
    // PAX block, its records and a ustar block: 1536 bytes for these short
    // names), then "b-tagged"'s header. 4 MiB frames (docs/FORMAT.md §13).
    let root_headers = 1536u64;
    let filler_headers = 1536u64;
    let before_boundary = 40 << 10;
    let filler = (4u64 << 20) - root_headers - filler_headers - before_boundary;
    assert_eq!(filler % 512, 0);
    fs::write(
        src.path().join("a-filler"),
        crate::util::noise(filler as usize, 3),
    )
    .unwrap();
    let tagged = src.path().join("b-tagged");
    fs::write(&tagged, b"tagged content").unwrap();
    for i in 0..6 {
        let value = format!("0x{}", hex_of(&crate::util::noise(12000, 10 + i)));
        let status = Command::new("setfattr")
            .args(["-n", &format!("user.big{i}"), "-v", &value])
            .arg(&tagged)
            .status()
            .unwrap();
        assert!(status.success(), "setfattr on tmpfs");
    }
    fs::write(src.path().join("c-after"), crate::util::noise(1 << 20, 4)).unwrap();

    let fx = Fixture::with_job("shm", &[src.path()]);
    fx.run(&["init"]).ok();
    fx.run(&["backup", "now"]).ok();
    // Restored onto tmpfs too (ext4 holds at most a block of xattrs).
    let target = tempfile::tempdir_in(shm).unwrap();
    let run = fx
        .run(&[
            "restore",
            "latest",
            tagged.to_str().unwrap(),
            "--target",
            target.path().to_str().unwrap(),
        ])
        .ok();
    assert!(!run.stderr.contains("not restored"), "{}", run.stderr);
    let back = restored(target.path(), src.path()).join("b-tagged");
    assert_eq!(fs::read(&back).unwrap(), b"tagged content");
    assert_eq!(xattr_dump(&back), xattr_dump(&tagged));
    assert!(xattr_dump(&back).contains("user.big5"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
