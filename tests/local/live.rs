//! Consistent backups of live services (docs/operations.md, "Backing up
//! databases" and "File-system snapshots"): command sources whose output
//! is backed up as a file, streamed and deduplicated; a dump that fails is
//! never committed as good; `before` and `after` hooks around every run
//! (a failing `before` uploads nothing, `after` runs after a failure and
//! after SIGTERM, a hook past its timeout is killed with its group); a
//! path read from a snapshot's mount point is recorded as the original;
//! `backup stdin` and `restore --to-stdout`; and a real PostgreSQL database
//! dumped while a writer keeps inserting, restored into a fresh cluster and
//! compared row for row.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::agent::{Agent, wait_until};
use crate::util::postgres::{self, Cluster};
use crate::util::{Fixture, noise, root_or_explain};

const MIB: usize = 1 << 20;

/// A TOML basic string holding `s` (ASCII).
fn q(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

fn q_path(p: &Path) -> String {
    q(p.display().to_string())
}

/// A fixture with job `db`: `paths` and the TOML lines in `extra`.
fn db_job(paths: &[&Path], extra: &str) -> Fixture {
    let list: Vec<String> = paths.iter().map(|p| q_path(p)).collect();
    let f = Fixture::new(&format!(
        "[[jobs]]\nname = \"db\"\npaths = [{}]\n{extra}",
        list.join(", ")
    ));
    f.init();
    f
}

fn command_source(name: &str, command: &str) -> String {
    format!(
        "[[jobs.commands]]\nname = {}\ncommand = {}\n",
        q(name),
        q(command)
    )
}

/// Runs the binary; its exit code, standard output as bytes, standard error.
fn run_bytes(f: &Fixture, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = f.command(args).output().expect("run vaultline");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The id of the job's newest snapshot.
fn newest(f: &Fixture) -> String {
    let snaps = f.run(&["snapshots", "db", "--json"]).ok().json();
    snaps
        .as_array()
        .and_then(|a| a.last())
        .and_then(|s| s["id"].as_str())
        .expect("a snapshot")
        .to_string()
}

/// Every path `ls -r` lists for the newest snapshot.
fn listed(f: &Fixture) -> Vec<String> {
    f.run(&["ls", "latest", "--job", "db"])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// The last line of standard error.
fn last_line(stderr: &str) -> &str {
    stderr.trim_end().lines().last().unwrap_or("")
}

/// The job's status record.
fn status(f: &Fixture) -> Value {
    f.run(&["status", "--json"]).ok().json()[0].clone()
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs
/// nothing).
fn gone(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for file in crate::util::files_under(dir) {
        let Ok(meta) = fs::symlink_metadata(&file) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let bytes = fs::read(&file).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Some(file);
        }
    }
    None
}

/// A command source's output is a file of the snapshot under
/// /vaultline-streams/, restored exactly (by `--to-stdout` and into a
/// directory), with the run's variables in its environment; the next run
/// stores nothing of a dump that did not change (its chunks are known);
/// and no byte of the dump is written to disk in plaintext on the way.
#[test]
fn command_sources_are_streamed_into_the_snapshot_and_restored_exactly() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"setting = 1\n").unwrap();
    let dump = noise(20 * MIB, 16);
    let dump_file = work.path().join("app.dump");
    fs::write(&dump_file, &dump).unwrap();
    let f = db_job(
        &[&src],
        &format!(
            "{}{}",
            command_source("postgres/app.dump", &format!("cat {}", dump_file.display())),
            command_source(
                "meta.txt",
                "echo \"$VAULTLINE_JOB $VAULTLINE_STREAM $VAULTLINE_HOST $VAULTLINE_SNAPSHOT\""
            )
        ),
    );
    // A dry run lists the command sources; it runs none.
    let dry = f.run(&["backup", "--dry-run"]).ok();
    assert!(
        dry.stdout
            .contains("  + /vaultline-streams/postgres/app.dump  (command source)\n"),
        "{}",
        dry.stdout
    );
    let tmp = f.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let out = f
        .command(&["--json", "backup", "now"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = first[0]["snapshot"].as_str().unwrap().to_string();
    assert_eq!(first[0]["files"], 3, "{first}");

    let ls = listed(&f);
    for want in [
        "/vaultline-streams",
        "/vaultline-streams/meta.txt",
        "/vaultline-streams/postgres",
        "/vaultline-streams/postgres/app.dump",
    ] {
        assert!(ls.iter().any(|l| l == want), "{want} not in {ls:?}");
    }
    assert!(ls.iter().any(|l| l.ends_with("/src/conf")), "{ls:?}");

    let (code, bytes, err) = run_bytes(
        &f,
        &[
            "restore",
            "latest",
            "--to-stdout",
            "/vaultline-streams/postgres/app.dump",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        bytes == dump,
        "the dump came back different ({} bytes)",
        bytes.len()
    );
    let (code, meta, err) = run_bytes(
        &f,
        &["restore", &id, "--to-stdout", "/vaultline-streams/meta.txt"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8(meta).unwrap(),
        format!("db meta.txt testhost {id}\n")
    );

    let target = work.path().join("restored");
    f.run(&[
        "restore",
        "latest",
        "/vaultline-streams/postgres",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    let restored = target.join("vaultline-streams/postgres/app.dump");
    assert!(fs::read(&restored).unwrap() == dump);
    assert_eq!(
        fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // No plaintext of the dump anywhere vaultline writes: repository, state,
    // temporary files.
    let needle = &dump[5 * MIB..5 * MIB + 64];
    assert_eq!(any_file_contains(f.path(), needle), None);

    // The same dump again: only what changed is stored (the meta file, whose
    // snapshot id changed), every chunk of the dump is known.
    let second = f.run(&["--json", "backup", "now"]).ok().json();
    assert_eq!(second[0]["parent"], id.as_str(), "{second}");
    assert_eq!(
        second[0]["archived_files"], 2,
        "both streams are read anew: {second}"
    );
    let meta_len = format!(
        "db meta.txt testhost {}\n",
        second[0]["snapshot"].as_str().unwrap()
    )
    .len();
    assert_eq!(second[0]["new_bytes"], meta_len as u64, "{second}");
}

/// A dump that fails halfway, and one killed at its timeout, are not
/// committed as good: the snapshot leaves them out (the other sources and
/// files are in it), the run is incomplete (exit 4, recorded so, `after`
/// told so) and the error names each command with how it ended and the
/// end of its standard error. What the snapshot holds still verifies.
#[test]
fn a_dump_that_fails_or_is_killed_is_never_committed_as_good() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let after = work.path().join("after");
    let f = db_job(
        &[&src],
        &format!(
            "[jobs.hooks]\nafter = {}\n{}{}{}timeout-secs = 1\n",
            q(format!("echo \"$VAULTLINE_STATUS\" > {}", after.display())),
            command_source("good.sql", "printf 'good dump\\n'"),
            command_source(
                "bad.dump",
                "head -c 5000000 /dev/urandom; echo 'pg_dump: error: connection to server lost' >&2; exit 3"
            ),
            command_source("slow.dump", "head -c 1000000 /dev/zero; exec sleep 60"),
        ),
    );
    let t = Instant::now();
    let run = f.run(&["-q", "backup", "now"]).code(4);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let id = newest(&f);
    assert_eq!(
        last_line(&run.stderr),
        format!(
            "error: backup incomplete: job db: snapshot {id} lacks 2 unreadable path(s); command source \
             bad.dump was not backed up: the command exited with status 3 after 5000000 bytes of output; its \
             standard error ends: \"pg_dump: error: connection to server lost\"; command source slow.dump was \
             not backed up: the command ran longer than its timeout of 1s and was killed after 1000000 bytes \
             of output (listed above)"
        )
    );
    let ls = listed(&f);
    assert!(ls.iter().any(|l| l == "/vaultline-streams/good.sql"), "{ls:?}");
    assert!(
        !ls.iter()
            .any(|l| l.contains("bad.dump") || l.contains("slow.dump")),
        "{ls:?}"
    );
    let (code, _, err) = run_bytes(
        &f,
        &["restore", "latest", "--to-stdout", "/vaultline-streams/bad.dump"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        last_line(&err),
        format!(
            "error: snapshot {id} has no /vaultline-streams/bad.dump (`vaultline ls {id} -r` lists what it holds)"
        )
    );
    let (code, good, _) = run_bytes(
        &f,
        &["restore", "latest", "--to-stdout", "/vaultline-streams/good.sql"],
    );
    assert_eq!((code, good.as_slice()), (0, &b"good dump\n"[..]));
    assert_eq!(fs::read_to_string(&after).unwrap(), "incomplete\n");
    assert_eq!(status(&f)["last_run"]["result"], "incomplete");
    f.run(&["verify", "latest", "--job", "db"]).ok();
}

/// A `before` hook that fails stops the run before anything is read: the
/// repository gets no object of the job (the audit trail's segment is
/// all it gets), the command sources never run, the run is recorded as
/// failed with the hook's error, `after` runs and is told `failed`.
#[test]
fn a_failing_before_hook_uploads_nothing_and_after_still_runs() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let after = work.path().join("after");
    let ran = work.path().join("dump-ran");
    let f = db_job(
        &[&src],
        &format!(
            "[jobs.hooks]\nbefore = {}\nafter = {}\n{}",
            q("echo 'cannot freeze the database' >&2; exit 7"),
            q(format!(
                "echo \"$VAULTLINE_STATUS $VAULTLINE_HOOK\" > {}",
                after.display()
            )),
            command_source("x.sql", &format!("touch {}; echo x", ran.display())),
        ),
    );
    let before = f.repo_files();
    let run = f.run(&["-q", "backup", "now"]).code(4);
    let error = "the before hook exited with status 7; its standard error ends: \"cannot freeze the database\": \
                 the run did not start, nothing was read or uploaded";
    assert_eq!(last_line(&run.stderr), format!("error: job db: {error}"));
    let new: Vec<String> = f
        .repo_files()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(
        new.iter().all(|p| p.starts_with("vaultline/testhost/audit/")),
        "objects other than the audit trail's: {new:?}"
    );
    assert!(
        !f.repo_files().iter().any(|p| p.contains("/db/")),
        "{:?}",
        f.repo_files()
    );
    assert!(!ran.exists(), "a command source ran");
    assert_eq!(fs::read_to_string(&after).unwrap(), "failed after\n");
    let s = status(&f);
    assert_eq!(s["last_run"]["result"], "failed");
    assert_eq!(s["last_run"]["error"], error);
}

/// An `after` hook that fails once the snapshot is committed leaves the
/// snapshot as it is (it verifies) and makes the run incomplete (exit 4),
/// naming the hook and the end of its standard error.
#[test]
fn a_failing_after_hook_leaves_the_snapshot_and_makes_the_run_incomplete() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let f = db_job(
        &[&src],
        &format!("[jobs.hooks]\nafter = {}\n", q("echo 'cannot thaw' >&2; exit 1")),
    );
    let run = f.run(&["-q", "backup", "now"]).code(4);
    let id = newest(&f);
    assert_eq!(
        last_line(&run.stderr),
        format!(
            "error: backup incomplete: job db: snapshot {id} is committed, but the after hook exited with status \
             1; its standard error ends: \"cannot thaw\" (listed above)"
        )
    );
    assert_eq!(status(&f)["last_run"]["result"], "incomplete");
    f.run(&["verify", &id, "--job", "db"]).ok();
}

/// A hook that outlives its timeout is killed with everything it started
/// (its process group), and the run does not start.
#[test]
fn a_hook_past_its_timeout_is_killed_with_its_group() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let pid = work.path().join("pid");
    let f = db_job(
        &[&src],
        &format!(
            "[jobs.hooks]\nbefore = {}\ntimeout-secs = 1\n",
            q(format!("sleep 60 & echo $! > {}; wait", pid.display()))
        ),
    );
    let t = Instant::now();
    let run = f.run(&["-q", "backup", "now"]).code(4);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        last_line(&run.stderr),
        "error: job db: the before hook ran longer than its timeout of 1s and was killed: the run did not start, \
         nothing was read or uploaded"
    );
    let pid = fs::read_to_string(&pid).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || gone(&pid).then_some(())).is_some(),
        "the hook's background process {} survived",
        pid.trim()
    );
    assert!(f.objects(".manifest").is_empty());
}

/// SIGTERM while a command source streams: its group is stopped, nothing
/// is committed, the run is recorded as interrupted (exit 130), and the
/// `after` hook runs and is told `interrupted`.
#[test]
fn sigterm_stops_the_dump_commits_nothing_and_after_runs() {
    let work = tempfile::tempdir().unwrap();
    let after = work.path().join("after");
    let pid = work.path().join("pid");
    let f = db_job(
        &[],
        &format!(
            "[jobs.hooks]\nafter = {}\n{}",
            q(format!("echo \"$VAULTLINE_STATUS\" > {}", after.display())),
            command_source(
                "db.dump",
                &format!(
                    "echo $$ > {}; head -c 3000000 /dev/urandom; exec sleep 120",
                    pid.display()
                )
            ),
        ),
    );
    let log = work.path().join("log");
    let mut child = f
        .command(&["backup", "now"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(30), || {
        (pid.exists()
            && fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("running command source"))
        .then_some(())
    });
    assert!(
        started.is_some(),
        "the dump never started: {}",
        fs::read_to_string(&log).unwrap()
    );
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status_code = wait_until(Duration::from_secs(30), || child.try_wait().unwrap());
    let Some(code) = status_code else {
        let _ = child.kill();
        panic!("vaultline did not stop: {}", fs::read_to_string(&log).unwrap());
    };
    let log = fs::read_to_string(&log).unwrap();
    assert_eq!(code.code(), Some(130), "{log}");
    assert_eq!(fs::read_to_string(&after).unwrap(), "interrupted\n", "{log}");
    assert!(f.objects(".manifest").is_empty(), "{:?}", f.repo_files());
    assert!(
        gone(&fs::read_to_string(&pid).unwrap()),
        "the dump's process survived"
    );
    assert_eq!(status(&f)["last_run"]["result"], "interrupted");
}

/// A path read from a file-system snapshot's mount point is recorded, and
/// restored, under its original path: the `before` hook makes the
/// snapshot (a copy stands in for `lvcreate` + `mount`) and the live tree
/// changes right after; the snapshot's content is what is backed up, the
/// `after` hook removes the snapshot. Without it, the job refuses to run.
#[test]
fn a_mapped_path_is_read_from_the_snapshot_and_recorded_as_the_original() {
    let work = tempfile::tempdir().unwrap();
    let live = work.path().join("srv");
    let snap = work.path().join("snap-srv");
    fs::create_dir_all(live.join("data")).unwrap();
    fs::write(live.join("data/a.txt"), b"as of the snapshot\n").unwrap();
    fs::write(live.join("data/b.txt"), b"unchanged\n").unwrap();
    let hooks = format!(
        "[jobs.hooks]\nbefore = {}\nafter = {}\n[[jobs.map]]\nfrom = {}\nto = {}\n",
        q(format!(
            "cp -a {live} {snap} && echo 'written after the snapshot' > {live}/data/a.txt",
            live = live.display(),
            snap = snap.display()
        )),
        q(format!("rm -rf {}", snap.display())),
        q_path(&snap),
        q_path(&live),
    );
    let f = db_job(&[&live], &hooks);
    f.run(&["-q", "backup", "now"]).ok();
    assert!(!snap.exists(), "the after hook did not remove the snapshot");
    let ls = listed(&f);
    let live_shown = live.display().to_string();
    assert!(ls.contains(&format!("{live_shown}/data/a.txt")), "{ls:?}");
    assert!(
        !ls.iter().any(|l| l.contains("snap-srv")),
        "the mount point is recorded: {ls:?}"
    );
    let target = work.path().join("restored");
    f.run(&[
        "restore",
        "latest",
        &format!("{live_shown}/data/a.txt"),
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        fs::read_to_string(crate::util::restored(&target, &live).join("data/a.txt")).unwrap(),
        "as of the snapshot\n"
    );

    // No snapshot mounted: nothing to read, and the job says where it looked.
    f.write_config(&format!(
        "[[jobs]]\nname = \"db\"\npaths = [{}]\n[[jobs.map]]\nfrom = {}\nto = {}\n",
        q_path(&live),
        q_path(&snap),
        q_path(&live)
    ));
    let run = f.run(&["-q", "backup", "now"]).code(2);
    assert_eq!(
        last_line(&run.stderr),
        format!(
            "error: job db: none of its paths exist ({}); nothing to back up (a typo in {}, or a file system that \
             is not mounted?)",
            snap.display(),
            f.config.display()
        )
    );
}

/// `backup stdin` commits a snapshot of the job holding the pipe's bytes
/// as one file; the job's next run still builds on its own last snapshot.
/// A bad name is refused before anything is read.
#[test]
fn backup_stdin_makes_a_snapshot_of_one_file_and_the_chain_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let f = db_job(&[&src], "");
    let first = f.run(&["--json", "backup", "now"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let piped = noise(12 * MIB, 3);
    let mut child = f
        .command(&["--json", "backup", "stdin", "db", "all.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = piped.clone();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, &data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let apart = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(report["files"], 1, "{report}");
    assert_eq!(report["parent"], Value::Null);
    assert_eq!(newest(&f), apart);
    let ls = listed(&f);
    assert_eq!(ls, ["/vaultline-streams", "/vaultline-streams/all.sql"]);
    let (code, bytes, err) = run_bytes(
        &f,
        &["restore", &apart, "--to-stdout", "/vaultline-streams/all.sql"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(bytes == piped);

    let next = f.run(&["--json", "backup", "now"]).ok().json();
    assert_eq!(next[0]["parent"], first.as_str(), "the chain goes on: {next}");
    assert_eq!(next[0]["full_reason"], Value::Null, "{next}");

    // SIGTERM while the pipe still flows: nothing is committed, exit 130.
    let before = f.objects(".manifest").len();
    let mut child = f
        .command(&["backup", "stdin", "db", "late.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let block = noise(MIB, 9);
        // Until vaultline stops reading (a broken pipe), at most 10 s.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if std::io::Write::write_all(&mut input, &block).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    std::thread::sleep(Duration::from_millis(1000));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(feeder.join().unwrap(), "vaultline read the pipe to its end");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.objects(".manifest").len(), before, "a snapshot was committed");

    let run = f
        .command(&["backup", "stdin", "db", "../etc/passwd"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        last_line(&String::from_utf8_lossy(&run.stderr)),
        "error: NAME: \"../etc/passwd\" must not contain empty, `.` or `..` components"
    );
}

/// `restore --to-stdout` writes only authenticated bytes: an archive
/// altered near its end fails the restore (exit 5) after what came before
/// the altered chunk, which is exactly the start of the file. A directory
/// is refused (exit 2) before anything is written.
#[test]
fn restore_to_stdout_stops_at_the_first_altered_byte() {
    let work = tempfile::tempdir().unwrap();
    let dump = noise(24 * MIB, 5);
    let dump_file = work.path().join("d");
    fs::write(&dump_file, &dump).unwrap();
    let f = db_job(
        &[],
        &command_source("big.dump", &format!("cat {}", dump_file.display())),
    );
    f.run(&["-q", "backup", "now"]).ok();
    let archive = f.objects(".archive").pop().expect("an archive");
    let mut bytes = fs::read(&archive).unwrap();
    let at = bytes.len() - 3 * MIB;
    bytes[at] ^= 0x40;
    fs::write(&archive, &bytes).unwrap();
    let (code, out, err) = run_bytes(
        &f,
        &["restore", "latest", "--to-stdout", "/vaultline-streams/big.dump"],
    );
    assert_eq!(code, 5, "{err}");
    assert!(out.len() < dump.len(), "all of it was written: {err}");
    assert!(out.len() > MIB, "{} bytes before the altered chunk", out.len());
    assert!(
        out[..] == dump[..out.len()],
        "what was written is not the file's start"
    );
    assert!(last_line(&err).starts_with("error: snapshot "), "{err}");

    let (code, out, err) = run_bytes(&f, &["restore", "latest", "--to-stdout", "/vaultline-streams"]);
    assert_eq!((code, out.len()), (2, 0));
    assert!(
        last_line(&err).starts_with("error: /vaultline-streams is a directory in snapshot "),
        "{err}"
    );
}

/// Memory stays bounded whatever a dump's size: 2 GiB streamed through a
/// command source peaks about where 64 MiB does.
#[test]
fn a_2_gib_dump_streams_in_bounded_memory() {
    const BOUND_MIB: u64 = 160;
    let measure = |bytes: u64| -> u64 {
        let f = db_job(
            &[],
            &command_source("big.dump", &format!("head -c {bytes} /dev/urandom")),
        );
        let (run, kib) = f.run_measured(&["-q", "backup", "now"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let r = f.run(&["--json", "snapshots", "db"]).ok().json();
        assert_eq!(r[0]["bytes"], bytes, "{r}");
        kib
    };
    let small = measure(64 << 20);
    let big = measure(2 << 30);
    eprintln!("peak RSS: 64 MiB dump {small} KiB, 2 GiB dump {big} KiB");
    assert!(big < BOUND_MIB << 10, "2 GiB dump peaked at {big} KiB");
    assert!(
        big < small + (32 << 10),
        "memory grows with the dump: {small} KiB for 64 MiB, {big} KiB for 2 GiB"
    );
}

/// The agent's scheduled runs go through the hooks too.
#[test]
fn the_agent_s_runs_run_the_hooks() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), b"x\n").unwrap();
    let log = work.path().join("hooks");
    let f = db_job(
        &[&src],
        &format!(
            "schedule = \"*/2 * * * * *\"\n[jobs.hooks]\nbefore = {}\nafter = {}\n",
            q(format!(
                "echo \"before $VAULTLINE_SNAPSHOT\" >> {}",
                log.display()
            )),
            q(format!(
                "echo \"after $VAULTLINE_STATUS $VAULTLINE_SNAPSHOT\" >> {}",
                log.display()
            )),
        ),
    );
    let mut agent = Agent::start(&f);
    let seen = wait_until(Duration::from_secs(30), || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.contains("after succeeded").then_some(text)
    });
    agent.signal(rustix::process::Signal::TERM);
    agent.wait_exit(Duration::from_secs(30));
    let text = seen.unwrap_or_else(|| panic!("no run's after hook; agent log:\n{}", agent.log()));
    let mut lines = text.lines();
    let (Some(before), Some(after)) = (lines.next(), lines.next()) else {
        panic!("{text}")
    };
    let id = before.strip_prefix("before ").unwrap();
    assert_eq!(after, format!("after succeeded {id}"));
    let snaps = f.run(&["snapshots", "db", "--json"]).ok().json();
    assert!(
        snaps.as_array().unwrap().iter().any(|s| s["id"] == id),
        "the before hook was told the snapshot's id: {snaps}"
    );
}

/// Run as root, a configuration with hooks or command sources that others
/// can change is refused: they choose what root runs.
#[test]
fn hooks_and_command_sources_need_a_configuration_only_root_can_change() {
    if !root_or_explain("hooks_and_command_sources_need_a_configuration_only_root_can_change") {
        return;
    }
    let f = Fixture::new(&format!(
        "[[jobs]]\nname = \"db\"\npaths = []\n[jobs.hooks]\nbefore = \"true\"\n{}",
        command_source("a.sql", "echo a")
    ));
    fs::set_permissions(&f.config, fs::Permissions::from_mode(0o664)).unwrap();
    let run = f.run(&["backup", "now"]).code(2);
    assert_eq!(
        last_line(&run.stderr),
        format!(
            "error: configuration file {} is writable by its group (mode 0664), and the configuration holds \
             commands vaultline runs as root (jobs \"db\" hooks.before, jobs \"db\" commands): anyone who can \
             change it chooses what root runs; fix with `chmod go-w {}`",
            f.config.display(),
            f.config.display()
        )
    );
}

/// Regression: run as root, a configuration named without a directory
/// (`--config config.toml`) that holds commands was refused with `cannot
/// stat : No such file or directory` (its directory is `.`).
#[test]
fn a_configuration_named_without_a_directory_may_hold_commands() {
    if !root_or_explain("a_configuration_named_without_a_directory_may_hold_commands") {
        return;
    }
    let f = db_job(&[], &command_source("a.sql", "echo a"));
    let out = Command::new(crate::util::vaultline_bin())
        .args(["--config", "config.toml", "-q", "backup", "now"])
        .current_dir(f.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", f.home())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(listed(&f), ["/vaultline-streams", "/vaultline-streams/a.sql"]);
}

/// Row count, highest id and a checksum of every row of table `t1` with
/// `id <= upto`, and the same of `t2`, and the writer's counter.
fn table_state(c: &Cluster, db: &str, upto: i64) -> (String, String, String) {
    (
        c.psql(
            db,
            &format!(
                "SELECT count(*) || ' ' || coalesce(max(id), 0) || ' ' || md5(coalesce(string_agg(id || ':' || \
                 payload, ',' ORDER BY id), '')) FROM t1 WHERE id <= {upto}"
            ),
        ),
        c.psql(
            db,
            "SELECT count(*) || ' ' || md5(string_agg(k || ':' || v, ',' ORDER BY k)) FROM t2",
        ),
        c.psql(db, "SELECT n FROM counter"),
    )
}

/// A real database, dumped by a command source (`pg_dump -Fc`) while a
/// writer keeps inserting, and restored into a fresh cluster by piping
/// `restore --to-stdout` into `pg_restore`: the restored database is
/// exactly the source as of the dump's snapshot — every row of t1 up to
/// the highest id the dump saw, t2 whole, and the writer's counter equal
/// to the rows it had inserted (inserts and counter go in one
/// transaction) — and rows were written before, during and after the dump.
#[test]
fn a_postgresql_database_dumped_while_written_restores_exactly() {
    let Some(bin) =
        postgres::available_or_explain("a_postgresql_database_dumped_while_written_restores_exactly")
    else {
        return;
    };
    let source = Cluster::start(&bin);
    source.create_db("app");
    const INITIAL: i64 = 100_000;
    source.psql(
        "app",
        &format!(
            "CREATE TABLE t1 (id bigserial PRIMARY KEY, payload text NOT NULL);
             CREATE TABLE t2 (k int PRIMARY KEY, v text NOT NULL);
             CREATE TABLE counter (n bigint NOT NULL);
             CREATE TABLE ctl (stop boolean NOT NULL);
             INSERT INTO counter VALUES (0);
             INSERT INTO ctl VALUES (false);
             INSERT INTO t1 (payload) SELECT md5(i::text) || repeat('x', 64) FROM generate_series(1, {INITIAL}) i;
             INSERT INTO t2 SELECT i, md5((i * 7)::text) FROM generate_series(1, 10000) i;"
        ),
    );
    // The writer: one row and the counter per transaction, until told to
    // stop.
    let mut writer = source
        .psql_command("app")
        .env("PGAPPNAME", "vaultline-test-writer")
        .args([
            "-c",
            "DO $$ BEGIN LOOP EXIT WHEN (SELECT stop FROM ctl); \
             INSERT INTO t1 (payload) VALUES (md5(clock_timestamp()::text)); \
             UPDATE counter SET n = n + 1; COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let max_id = |c: &Cluster| -> i64 { c.psql("app", "SELECT max(id) FROM t1").parse().unwrap() };
    assert!(
        wait_until(Duration::from_secs(30), || (max_id(&source) > INITIAL + 50)
            .then_some(()))
        .is_some(),
        "the writer does not write"
    );

    let f = db_job(
        &[],
        &command_source(
            "postgres/app.dump",
            &format!(
                "{} -Fc {} app",
                bin.join("pg_dump").display(),
                source.conn_shell()
            ),
        ),
    );
    let before = max_id(&source);
    f.run(&["-q", "backup", "now"]).ok();
    let after = max_id(&source);
    // Rows after the dump too, then the writer stops.
    wait_until(Duration::from_secs(30), || {
        (max_id(&source) > after + 20).then_some(())
    });
    source.psql("app", "UPDATE ctl SET stop = true");
    let writer_done = wait_until(Duration::from_secs(30), || writer.try_wait().unwrap());
    assert!(writer_done.is_some_and(|s| s.success()), "the writer failed");
    let mut werr = String::new();
    writer.stderr.take().unwrap().read_to_string(&mut werr).unwrap();
    assert!(werr.is_empty(), "writer: {werr}");
    let last = max_id(&source);
    assert!(
        before < after && after < last,
        "no writes during the backup: {before} {after} {last}"
    );

    let fresh = Cluster::start(&bin);
    fresh.create_db("app");
    let mut restore = f
        .command(&[
            "restore",
            "latest",
            "--to-stdout",
            "/vaultline-streams/postgres/app.dump",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pg_restore = Command::new(fresh.bin("pg_restore"))
        .args(fresh.conn())
        .args(["-d", "app", "--no-owner", "--exit-on-error"])
        .stdin(restore.stdout.take().unwrap())
        .output()
        .unwrap();
    let restored = restore.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(
        pg_restore.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&pg_restore.stderr)
    );

    let seen = max_id(&fresh);
    eprintln!(
        "t1 rows: {before} when the backup started, {seen} in the dump, {after} when it ended, {last} in all"
    );
    assert!(
        before <= seen && seen <= after,
        "the dump's snapshot ({seen}) is not within the backup ({before}..{after})"
    );
    let (t1, t2, counter) = table_state(&fresh, "app", i64::MAX);
    assert_eq!(
        (t1.clone(), t2, counter.clone()),
        {
            let (t1, t2, _) = table_state(&source, "app", seen);
            (t1, t2, (seen - INITIAL).to_string())
        },
        "restored database differs from the source as of the dump"
    );
    assert_eq!(counter.parse::<i64>().unwrap(), seen - INITIAL);
    assert!(t1.starts_with(&format!("{seen} {seen} ")), "{t1}");
}
