//! Two runs of one job at once: the second is refused with `--no-wait` (exit
//! 6) or waits for the first without `--no-wait`; both committed snapshots are
//! intact and nothing pending is left behind.
//!
//! Overlap is made certain rather than hoped for: run A backs up a large
//! random file, and once it holds the job lock and has pending objects in the
//! repository it is paused with SIGSTOP while B and C are started, then
//! resumed with SIGCONT. No sleep decides the outcome.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::util::Fixture;

/// Size of the random file run A backs up: big enough that A is mid-run for
/// a good fraction of a second (about 0.5 s in a debug build here).
const BIG: u64 = 128 << 20;
/// Upper bound for anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// A child that is resumed, killed and reaped if the test fails early, so no
/// stopped or orphaned `vaultline` is left behind.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_child(self.0.as_ref().expect("child"));
        kill_process(pid, sig).expect("signal the child");
    }

    fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
            .is_none()
    }

    /// Waits (at most [`PATIENCE`]) and returns exit code, stdout, stderr.
    fn finish(mut self) -> (i32, String, String) {
        let mut child = self.0.take().expect("child");
        let deadline = Instant::now() + PATIENCE;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take();
        let out_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vaultline (pid {}) did not finish in {PATIENCE:?}", child.id());
            }
            thread::sleep(Duration::from_millis(10));
        };
        (
            status.code().unwrap_or(-1),
            out_reader.join().expect("stdout reader"),
            err_reader.join().expect("stderr reader"),
        )
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `cond` until true, at most [`PATIENCE`].
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

fn pending(f: &Fixture) -> Vec<String> {
    f.repo_files()
        .into_iter()
        .filter(|n| n.contains(".pending-"))
        .collect()
}

fn spawn(f: &Fixture, args: &[&str]) -> Guard {
    Guard(Some(
        f.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vaultline"),
    ))
}

#[test]
fn second_run_of_a_job_is_refused_with_no_wait_and_waits_without() {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut urandom = fs::File::open("/dev/urandom").unwrap().take(BIG);
    let mut big = fs::File::create(src.join("big.bin")).unwrap();
    assert_eq!(std::io::copy(&mut urandom, &mut big).unwrap(), BIG);
    drop(big);
    fs::write(src.join("small.txt"), b"small\n").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    let lock = f.state().join("locks/data.lock");

    // A: starts, takes the lock (writes its pid into the lock file) and
    // starts writing its objects; then it is paused mid-run.
    let mut a = spawn(&f, &["--json", "backup", "now"]);
    let a_pid = a.pid();
    wait_until("run A holds the job lock", || {
        fs::read_to_string(&lock).is_ok_and(|t| t.trim() == a_pid.to_string())
    });
    wait_until("run A has pending objects", || !pending(&f).is_empty());
    a.signal(Signal::STOP);
    assert!(a.running(), "run A finished before it could be paused");
    let a_pending = pending(&f);
    let repo_during_a = f.repo_files();

    // B: --no-wait is refused at once with exit 6, naming A's pid.
    let b = spawn(&f, &["backup", "now", "--no-wait"]);
    let (code, stdout, stderr) = b.finish();
    assert_eq!(code, 6, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "error: job data: already running (process {a_pid}); \
                 not waiting because of --no-wait"
            )
            .as_str()
        ),
        "stderr:\n{stderr}"
    );
    assert_eq!(f.repo_files(), repo_during_a, "run B wrote to the repository");

    // C: without --no-wait it says it waits, and blocks.
    let mut c = spawn(&f, &["--json", "backup", "now"]);
    let c_pid = c.pid();
    let c_stderr = c.0.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let c_log = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(c_stderr).lines() {
            let line = line.unwrap_or_default();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let waiting = format!("WARN job data is already running (process {a_pid}); waiting for it to finish");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.trim() == waiting => break,
            Ok(_) => {}
            Err(e) => panic!("run C never said it was waiting ({e})"),
        }
    }
    assert!(c.running(), "run C did not wait");
    // While C waits, A's in-flight objects are left alone (C must not clean
    // up "interrupted" objects of a run that holds the lock).
    assert_eq!(pending(&f), a_pending);
    assert_eq!(f.repo_files(), repo_during_a, "run C wrote while waiting");

    // A resumes and finishes; then C gets the lock and runs.
    a.signal(Signal::CONT);
    let (a_code, a_out, a_err) = a.finish();
    assert_eq!(a_code, 0, "run A failed:\n{a_err}");
    let (c_code, c_out, _) = c.finish();
    let c_err = c_log.join().unwrap();
    assert_eq!(c_code, 0, "run C failed:\n{c_err}");
    assert!(
        !c_err.contains("incomplete object"),
        "run C found leftovers of A:\n{c_err}"
    );

    let a_report: serde_json::Value = serde_json::from_str(&a_out).unwrap();
    let c_report: serde_json::Value = serde_json::from_str(&c_out).unwrap();
    let a_snap = a_report[0]["snapshot"].as_str().unwrap().to_string();
    let c_snap = c_report[0]["snapshot"].as_str().unwrap().to_string();
    assert_ne!(a_snap, c_snap);
    for r in [&a_report[0], &c_report[0]] {
        assert_eq!(r["bytes_read"].as_u64(), Some(BIG + 6), "{r}");
    }
    assert_eq!(
        fs::read_to_string(&lock).unwrap().trim(),
        c_pid.to_string(),
        "the last holder of the lock was not C"
    );

    let listed = f.run(&["--json", "snapshots"]).ok().json();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![a_snap.as_str(), c_snap.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "{listed}");

    f.run(&["verify", "--all"]).ok();
    assert_eq!(pending(&f), Vec::<String>::new(), "pending objects left");
}
