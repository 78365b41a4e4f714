//! Running `vaultline agent` as a child in a fixture: its log in a file,
//! signals, and waiting for conditions with a deadline.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Fixture;

/// A running agent.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl Agent {
    /// Starts `vaultline agent` for `fx` and waits until it says it started.
    pub fn start(fx: &Fixture) -> Agent {
        let log = fx.path().join(format!("agent-{}.log", std::process::id()));
        let child = fx
            .command(&["agent"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent { child, log };
        agent.wait_for_log("agent started", Duration::from_secs(20));
        agent
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    #[track_caller]
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let log = wait_until(timeout, || {
            let l = self.log();
            l.contains(text).then_some(l)
        });
        assert!(
            log.is_some(),
            "the agent never logged {text:?}; log:\n{}",
            self.log()
        );
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for the agent to exit; panics after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("the agent did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
