//! One run per job at a time, across processes.
//!
//! Each job has a lock file `STATE_DIR/locks/JOB.lock`, held with `flock` for
//! the whole run. The kernel drops the lock when the holder exits or dies,
//! so a crashed run never leaves a stale lock. The holder writes its pid into
//! the file so that a waiting or refused run can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, flock};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{BusyError, Interrupted};

/// A held job lock; released on drop.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

impl JobLock {
    /// Takes the lock of `job`. When another run holds it: with `wait`, logs
    /// who holds it and blocks until it is free; without, fails with
    /// [`BusyError`] (exit code 6).
    pub fn acquire(state_dir: &Path, job: &str, wait: bool) -> Result<JobLock> {
        JobLock::acquire_unless(state_dir, job, wait, &AtomicBool::new(false))
    }

    /// Like [`JobLock::acquire`]; a wait ends with
    /// [`Interrupted`](crate::error::Interrupted) as soon as `cancel` is
    /// set (Ctrl-C while waiting for another run).
    pub fn acquire_unless(state_dir: &Path, job: &str, wait: bool, cancel: &AtomicBool) -> Result<JobLock> {
        let dir = state_dir.join("locks");
        crate::state::private_dir(&dir)
            .with_context(|| format!("cannot create lock directory {}", dir.display()))?;
        let path = dir.join(format!("{job}.lock"));
        let mut file = crate::state::open_rw(&path, crate::state::PRIVATE)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = holder(&mut file);
                if !wait {
                    // The caller adds "job NAME" as context.
                    return Err(BusyError(format!(
                        "already running ({holder}); not waiting because of --no-wait"
                    ))
                    .into());
                }
                tracing::warn!("job {job} is already running ({holder}); waiting for it to finish");
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Interrupted(None).into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                        Ok(()) => break,
                        Err(rustix::io::Errno::WOULDBLOCK) => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(JobLock { _file: file })
    }
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("process {pid}"),
        Err(_) => "another process".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_without_wait_and_gets_it_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = JobLock::acquire(dir.path(), "etc", false).unwrap();
        let err = JobLock::acquire(dir.path(), "etc", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "already running (process {}); not waiting because of --no-wait",
                std::process::id()
            )
        );
        assert!(JobLock::acquire(dir.path(), "other", false).is_ok());
        drop(first);
        JobLock::acquire(dir.path(), "etc", false).unwrap();
    }
}
