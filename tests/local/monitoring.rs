//! What monitoring sees: `status --json` after runs, and the Prometheus
//! text file, parsed with a real parser.

use std::fs;

use crate::util::Fixture;

#[test]
fn status_and_metrics_follow_the_runs() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"hello").unwrap();
    fs::write(src.path().join("b"), vec![1u8; 5000]).unwrap();
    let f = Fixture::new(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\nschedule = \"0 3 * * *\"\n\n\
         [[jobs]]\nname = \"never\"\npaths = [{:?}]\n",
        src.path().display().to_string(),
        src.path().display().to_string()
    ));
    f.init();
    let before = f.run(&["status", "--json"]).ok().json();
    assert_eq!(before[0]["runs_total"], 0);
    assert_eq!(before[0]["last_run"], serde_json::Value::Null);

    // Files changed within a timestamp tick of the walk are "racy" and
    // archived again next run; the no-change run below wants none.
    std::thread::sleep(std::time::Duration::from_millis(50));
    f.run(&["backup", "now", "data"]).ok();
    let first = f.run(&["status", "--json"]).ok().json();
    assert_eq!(
        first[0]["last_run"]["bytes_read"], 5005,
        "a full run reads everything"
    );
    assert_eq!(first[0]["last_run"]["archived_files"], 2);
    // No change: the second run opens no file, and says so.
    let run = f.run(&["backup", "now", "data"]).ok();
    assert!(
        run.stdout.contains("\n  in the snapshot: 2 files (4.9 KiB), 1 dir, 0 symlinks, 0 hard links\n  read 0 B (0 files archived), stored "),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("/s)"),
        "no rate for nothing read: {}",
        run.stdout
    );
    let json = f.run(&["--json", "backup", "now", "data"]).ok().json();
    assert_eq!(
        (json[0]["read_bytes"].as_u64(), json[0]["snapshot_bytes"].as_u64()),
        (Some(0), Some(5005))
    );
    let status = f.run(&["status", "--json"]).ok().json();
    let data = &status[0];
    assert_eq!(data["job"], "data");
    assert_eq!(data["runs_total"], 3);
    assert_eq!(data["failures_total"], 0);
    assert_eq!(data["last_run"]["result"], "ok");
    assert_eq!(data["last_run"]["files"], 2);
    assert_eq!(data["last_run"]["archived_files"], 0);
    assert_eq!(data["last_run"]["bytes_read"], 0);
    assert_eq!(data["last_run"]["snapshot_bytes"], 5005);
    assert_eq!(data["last_run"]["trigger"], "manual");
    assert_eq!(data["last_success"], data["last_run"]);
    let snaps = f.run(&["snapshots", "data", "--json"]).ok().json();
    assert_eq!(
        data["last_run"]["snapshot"],
        snaps.as_array().unwrap().last().unwrap()["id"]
    );
    assert_eq!(data["schedule"], "0 3 * * *");
    assert!(
        data["next_run"].as_str().unwrap().ends_with("T03:00:00Z"),
        "{data}"
    );
    assert_eq!(status[1]["runs_total"], 0);
    assert!(f.run(&["status"]).ok().stdout.contains("job data\n  last run:"));

    // The metrics file, as node_exporter's textfile collector reads it.
    let text = fs::read_to_string(f.state().join("vaultline.prom")).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let value = |name: &str| {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("job") == Some("data"))
            .unwrap_or_else(|| panic!("no {name} for job data in:\n{text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        }
    };
    assert_eq!(value("vaultline_runs_total"), 3.0);
    assert_eq!(value("vaultline_failures_total"), 0.0);
    assert_eq!(value("vaultline_last_run_success"), 1.0);
    assert_eq!(value("vaultline_last_run_files"), 2.0);
    assert_eq!(value("vaultline_last_run_archived_files"), 0.0);
    assert_eq!(value("vaultline_last_run_read_bytes"), 0.0);
    assert_eq!(value("vaultline_last_run_snapshot_bytes"), 5005.0);
    assert_eq!(value("vaultline_interrupted_total"), 0.0);
    assert_eq!(value("vaultline_skipped_total"), 0.0);
    // HELP says what each number is.
    let help = |name: &str| scrape.docs.get(name).cloned().unwrap_or_default();
    assert_eq!(
        help("vaultline_last_run_files"),
        "Regular files in the snapshot the last run committed."
    );
    assert_eq!(
        help("vaultline_last_run_archived_files"),
        "Files the last run read and archived (new or changed; all of them in a full run)."
    );
    // A local repository has no hardening checks: no hardening series.
    assert!(!text.contains("vaultline_hardening"), "{text}");
    assert!(
        text.contains("vaultline_last_run_result{job=\"data\",result=\"ok\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("vaultline_last_run_result{job=\"data\",result=\"interrupted\"} 0\n"),
        "{text}"
    );
    assert!(value("vaultline_last_run_stored_bytes") > 0.0);
    assert_eq!(
        value("vaultline_last_success_timestamp_seconds"),
        value("vaultline_last_run_timestamp_seconds")
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.get("job") == Some("never")
                && s.metric == "vaultline_last_run_timestamp_seconds"),
        "a job that never ran has no last-run time"
    );
    assert!(
        scrape.docs.contains_key("vaultline_runs_total"),
        "HELP lines are there"
    );
}

/// Holds job `job`'s lock from another process (`flock`) until dropped.
struct HeldLock(std::process::Child);

impl HeldLock {
    fn take(f: &Fixture, job: &str) -> HeldLock {
        let dir = f.state().join("locks");
        fs::create_dir_all(&dir).unwrap();
        let lock = dir.join(format!("{job}.lock"));
        let ready = f.path().join(format!("{job}.held"));
        let child = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sh", "-c"])
            .arg(format!("touch {}; exec sleep 60", ready.display()))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "flock did not take the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        HeldLock(child)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(f: &Fixture, name: &str) -> Option<f64> {
    let text = fs::read_to_string(f.state().join("vaultline.prom")).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("job") == Some("data"))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn one_job() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"hello").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    (f, src)
}

/// A `--no-wait` run that finds the job running does nothing, and is
/// recorded as skipped: not a failure, and not the last run.
#[test]
fn a_run_skipped_because_the_job_is_running_is_not_a_failure() {
    let (f, _) = one_job();
    f.run(&["backup", "now"]).ok();
    let held = HeldLock::take(&f, "data");
    let run = f.run(&["backup", "now", "--no-wait"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: job data: already running (process "),
        "{}",
        run.stderr
    );
    drop(held);
    let status = f.run(&["--json", "status"]).ok().json();
    assert_eq!(
        (
            &status[0]["runs_total"],
            &status[0]["failures_total"],
            &status[0]["skipped_total"],
            &status[0]["last_run"]["result"]
        ),
        (&1.into(), &0.into(), &1.into(), &"ok".into()),
        "{status}"
    );
    assert!(
        status[0]["last_skipped"]["error"]
            .as_str()
            .unwrap()
            .contains("not waiting because of --no-wait")
    );
    assert_eq!(metric(&f, "vaultline_last_run_success"), Some(1.0));
    assert_eq!(metric(&f, "vaultline_failures_total"), Some(0.0));
    assert_eq!(metric(&f, "vaultline_skipped_total"), Some(1.0));
    let text = f.run(&["status"]).ok().stdout;
    assert!(
        text.contains("  totals:       1 run, 0 failed, 0 interrupted, 1 skipped"),
        "{text}"
    );
    let trail = fs::read_to_string(f.state().join("audit.jsonl")).unwrap();
    assert!(trail.contains("\"what\":\"job-skipped\""), "{trail}");
}

/// Ctrl-C while a run waits for another run of its job: it stops at once,
/// says so, exits 130, and is recorded as interrupted.
#[test]
fn a_run_interrupted_while_waiting_for_its_lock_is_recorded() {
    let (f, _) = one_job();
    let held = HeldLock::take(&f, "data");
    let mut child = f
        .command(&["backup", "now"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains("is already running"), "{line}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    drop(held);
    assert_eq!(status.code(), Some(130), "{rest}");
    assert_eq!(
        rest,
        " WARN SIGINT: interrupted, cleaning up (again to stop at once)\nerror: interrupted by SIGINT: job data \
         stopped and cleaned up, nothing was committed\n"
    );
    let st = f.run(&["--json", "status"]).ok().json();
    assert_eq!(st[0]["last_run"]["result"], "interrupted", "{st}");
    assert_eq!(st[0]["interrupted_total"], 1);
    assert_eq!(st[0]["failures_total"], 0);
    assert_eq!(metric(&f, "vaultline_interrupted_total"), Some(1.0));
}

/// Ctrl-C in the middle of a run (a file's read held by a FUSE file
/// system, so the test knows where the run is): "interrupted, cleaning
/// up", exit 130, no snapshot and no pending object left in the
/// repository, the run recorded as interrupted in the status, the metrics
/// and the audit trail; the next run works as usual.
#[test]
fn a_backup_interrupted_mid_run_commits_nothing_and_is_recorded() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    if !crate::util::root_or_explain("a_backup_interrupted_mid_run") {
        return;
    }
    let f = Fixture::new("");
    let mount = f.path().join("held");
    fs::create_dir_all(&mount).unwrap();
    let release = f.path().join("release");
    let mut fs_proc = Command::new(crate::util::moto::python())
        .arg(crate::util::repo_root().join("tests/support/held_fs.py"))
        .arg(&mount)
        .arg(&release)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start held_fs.py");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let mut fs_out = BufReader::new(fs_proc.stdout.take().unwrap());
    let mut line = String::new();
    fs_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY");
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        mount.display().to_string()
    ));
    f.init();

    let mut child = f
        .command(&["backup", "now"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    line.clear();
    fs_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "HELD", "the run never reached the held file");
    // Mid-run: the archive and the manifest are being written.
    let pending = |f: &Fixture| -> Vec<String> {
        f.repo_files()
            .into_iter()
            .filter(|n| n.contains(".pending-"))
            .collect()
    };
    assert_eq!(pending(&f).len(), 2, "{:?}", f.repo_files());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::write(&release, b"").unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(" WARN SIGINT: interrupted, cleaning up (again to stop at once)\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(
            "error: interrupted by SIGINT: job data stopped and cleaned up, nothing was committed\n"
        ),
        "{stderr}"
    );
    assert!(pending(&f).is_empty(), "left behind: {:?}", f.repo_files());
    assert!(
        f.objects(".manifest").is_empty() && f.objects(".archive").is_empty(),
        "{:?}",
        f.repo_files()
    );

    let st = f.run(&["--json", "status"]).ok().json();
    assert_eq!(st[0]["last_run"]["result"], "interrupted", "{st}");
    assert_eq!(
        st[0]["last_run"]["error"],
        "interrupted by SIGINT: nothing was committed"
    );
    assert_eq!(
        (&st[0]["interrupted_total"], &st[0]["failures_total"]),
        (&1.into(), &0.into())
    );
    assert_eq!(metric(&f, "vaultline_last_run_success"), Some(0.0));
    assert_eq!(metric(&f, "vaultline_interrupted_total"), Some(1.0));
    let trail = fs::read_to_string(f.state().join("audit.jsonl")).unwrap();
    let whats: Vec<String> = trail
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["what"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        whats,
        ["run-started", "job-interrupted", "run-finished"],
        "{trail}"
    );

    // The next run is an ordinary one.
    f.run(&["backup", "now"]).ok();
    assert_eq!(f.objects(".manifest").len(), 1);
    let _ = fs_proc.kill();
    let _ = fs_proc.wait();
}

/// A user reading the system's configuration (root's, with no state-dir)
/// reads the system's state directory: refused with the path and the fix,
/// never a quiet `last run: never` from an empty state of their own.
#[test]
fn status_as_another_user_reads_the_systems_state_or_says_why_not() {
    if !crate::util::root_or_explain("status_as_another_user") {
        return;
    }
    let system = std::path::Path::new("/var/lib/vaultline");
    // As systemd makes it, if this machine has none; removed afterwards.
    struct Made(bool);
    impl Drop for Made {
        fn drop(&mut self) {
            if self.0 {
                let _ = fs::remove_dir_all("/var/lib/vaultline");
            }
        }
    }
    let _made = Made(!system.exists());
    if _made.0 {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(system).unwrap();
    }
    let f = Fixture::new("");
    fs::write(
        &f.config,
        format!(
            "[agent]\nhost = \"testhost\"\n\n[repository]\ntype = \"local\"\npath = {:?}\n\n[[jobs]]\nname = \
             \"data\"\npaths = [\"/etc\"]\n",
            f.repo().display().to_string()
        ),
    )
    .unwrap();
    let home = f.path().join("nobody");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let run = f.run_as_nobody(&home, &["status"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            4,
            "error: cannot read /var/lib/vaultline/status/data.json: Permission denied (os error 13)\nhint: \
             permission denied, and vaultline runs as user nobody (uid 65534), not root: a system \
             installation's configuration, state and repository belong to root; run it as root (`sudo \
             vaultline …`), or as the user that owns the path above\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        !home.join(".local").exists(),
        "a state directory of nobody's own was used"
    );
}
