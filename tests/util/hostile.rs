//! A misbehaving S3-compatible server (tests/support/hostile_s3.py) serving
//! a repository that was made for real on a local directory, and running
//! the binary against it with a deadline and its peak memory measured.
//!
//! The repository is made with a local master key (`init` and `backup` on
//! the embedded default), then the same fixture is pointed at the server as
//! an S3 repository: the server's objects are the repository's files (their
//! relative paths are the keys), so every object it serves is one vaultline
//! sealed, and only the faults of its mode are not.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::moto::{aws_env, python};
use super::{Fixture, Run, repo_root};

/// The bucket name the fixture is configured with (the server serves any).
pub const BUCKET: &str = "hostile";

/// A running hostile server.
pub struct HostileS3 {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The CA that signed its certificate.
    pub ca: PathBuf,
    /// Its request log.
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for HostileS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostileS3 {
    /// Serves `repo` (a local repository directory) misbehaving as `mode`,
    /// with body faults on objects whose key ends with `suffix`.
    pub fn start(repo: &Path, mode: &str, suffix: &str) -> HostileS3 {
        let dir = tempfile::Builder::new()
            .prefix("vaultline-hostile-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("server.log");
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/support/hostile_s3.py"))
            .arg(dir.path())
            .arg(repo)
            .arg(mode)
            .arg(suffix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("start hostile_s3.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's READY line");
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("hostile_s3.py did not start: {line:?}\n{text}")
            });
        HostileS3 {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca: dir.path().join("ca.pem"),
            log,
            child,
            _dir: dir,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The byte ranges asked of object `key`, in order: `(first, last)`.
    pub fn ranges_asked(&self, key: &str) -> Vec<(u64, u64)> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once(&format!("range {key} bytes="))?.1.split_once('-'))
            .filter_map(|(a, b)| Some((a.parse().ok()?, b.trim().parse().ok()?)))
            .collect()
    }
}

/// Points `fx` (whose repository and key were made locally) at `server`
/// as an S3 repository with the same local master key; `jobs` as in the
/// local configuration.
pub fn point_at(fx: &mut Fixture, server: &HostileS3, jobs: &str) {
    let text = format!(
        "[agent]\nhost = \"testhost\"\nstate-dir = {state:?}\n\n\
         [aws]\nregion = \"us-east-1\"\nca-bundle = {ca:?}\nmax-attempts = 3\ntimeout-secs = 10\n\n\
         [repository]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{ep}\"\npath-style = true\n\n\
         [key]\nstorage = \"file\"\n\n{jobs}",
        state = fx.state().display().to_string(),
        ca = server.ca.display().to_string(),
        ep = server.endpoint,
    );
    std::fs::write(&fx.config, text).expect("write config");
    fx.env = aws_env(("AKIAVAULTLINEHOSTILE", "hostile-secret"));
}

/// A run of the binary watched until it ends: its result, how long it
/// took and its peak resident memory.
pub struct Watched {
    /// Exit code, output.
    pub run: Run,
    /// Wall time.
    pub took: Duration,
    /// Peak resident set (the kernel's VmHWM), KiB.
    pub peak_kib: u64,
}

/// Runs the binary with `args`; kills it and fails the test if it has not
/// ended after `deadline` (a loop, or a download that never ends).
#[track_caller]
pub fn run_within(fx: &Fixture, args: &[&str], deadline: Duration) -> Watched {
    let out = fx.path().join("watched.out");
    let err = fx.path().join("watched.err");
    let mut child = fx
        .command(args)
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run vaultline");
    let status_path = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak_kib = 0;
    let status = loop {
        // VmHWM is the kernel's own high-water mark: polling only has to
        // see its last value before the exit.
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vaultline {args:?} did not end within {deadline:?} (killed)\nstderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    assert!(
        run.code != 101 && !run.stderr.contains("panicked"),
        "vaultline {args:?} panicked:\n{}",
        run.stderr
    );
    Watched {
        run,
        took: start.elapsed(),
        peak_kib,
    }
}
