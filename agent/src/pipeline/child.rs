//! Commands the operator configured, run as children: a job's hooks and its
//! command sources.
//!
//! Each runs as `sh -c COMMAND`, with standard input from `/dev/null`,
//! vaultline's environment plus the `VAULTLINE_*` variables the caller
//! gives, in a **process group of its own**: a Ctrl-C at vaultline's
//! terminal reaches vaultline alone (which decides what to stop), and a
//! timeout or an interruption stops everything the command started — the
//! group — not only the shell.
//!
//! A supervisor waits for the shell *without reaping it* (`waitid` with
//! `WNOWAIT`): while the shell is unreaped its process id, which is also
//! the group's id, cannot be given to another process, so signalling the
//! group can never hit a stranger. On a timeout, an interruption, or a
//! consumer that stopped reading, it sends SIGTERM to the group and SIGKILL
//! [`KILL_GRACE`] later, and reaps the shell last.
//!
//! Standard error (and a hook's standard output) is read by threads of
//! their own that log each line (at most [`MAX_LOG_LINE`] bytes of it, control
//! characters replaced) and keep the last [`TAIL`] bytes of standard error
//! for the error message. Nothing a child writes is held beyond that: a
//! command source's standard output is handed to the caller as a stream
//! ([`stream`]), whose end says whether the command succeeded.
//!
//! Command lines are never logged or put into errors (they may hold a
//! password); a child is named by what it is (`the before hook of job db`,
//! `command source postgres/app.dump`).

use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// Bytes of standard error kept for the error message.
pub const TAIL: usize = 2048;
/// Longest line logged; a longer one is cut into pieces.
pub const MAX_LOG_LINE: usize = 4096;
/// Time between SIGTERM and SIGKILL to a group being stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output is waited for once the shell exited: a process the
/// command left running in the background may keep the pipe open, and is
/// not waited for (its output is no longer logged).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How often the supervisor looks at the shell.
const POLL: Duration = Duration::from_millis(10);

/// A command to run.
pub struct Spec<'a> {
    /// What it is, for logs and errors: `the before hook of job db`.
    pub what: String,
    /// The command line, run with `sh -c`.
    pub command: &'a str,
    /// Variables added to vaultline's environment.
    pub env: Vec<(&'static str, String)>,
    /// How long it may take before its group is killed.
    pub timeout: Option<Duration>,
    /// When set (a signal arrived), the group is stopped; `None` for what
    /// must run to its end whatever happens (the `after` hook).
    pub cancel: Option<&'a AtomicBool>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal vaultline did not send ended it.
    Signaled(i32),
    /// It ran past its timeout and its group was killed.
    TimedOut(Duration),
    /// The run was interrupted and its group was stopped.
    Cancelled,
    /// Its output was no longer read (the backup stopped taking it) and its
    /// group was stopped.
    Abandoned,
}

/// A command that ended, with the end of its standard error.
#[derive(Debug, Clone)]
pub struct Finished {
    /// How.
    pub ended: Ended,
    /// The last [`TAIL`] bytes of its standard error (lossy UTF-8).
    pub stderr_tail: String,
    /// How long it ran.
    pub took: Duration,
}

impl Finished {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.ended == Ended::Exited(0)
    }

    /// How it ended, worded to follow the command's name: `exited with
    /// status 3`, `was killed by signal 9 (SIGKILL)`, ….
    pub fn outcome(&self) -> String {
        match &self.ended {
            Ended::Exited(code) => format!("exited with status {code}"),
            Ended::Signaled(sig) => format!("was killed by signal {sig}{}", signal_name(*sig)),
            Ended::TimedOut(limit) => format!(
                "ran longer than its timeout of {}s and was killed",
                limit.as_secs()
            ),
            Ended::Cancelled => "was stopped: the run was interrupted".into(),
            Ended::Abandoned => "was stopped: its output was no longer read".into(),
        }
    }

    /// `; its standard error ends: "…"` (the last lines, quoted with
    /// control characters escaped), or nothing when it wrote none.
    pub fn stderr_note(&self) -> String {
        let tail = self.stderr_tail.trim();
        if tail.is_empty() {
            return String::new();
        }
        // The message shows the end; the log has every line.
        let mut start = tail.len().saturating_sub(512);
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        format!("; its standard error ends: {:?}", &tail[start..])
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// A command source whose command did not succeed: the error its stream
/// ends with, in words (`the command exited with status 3 after 5000000
/// bytes of output; its standard error ends: "…"`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandFailed(pub String);

/// Runs a hook to its end: its standard output and error are logged, and
/// how it ended is returned (an error only when it could not be started).
pub fn run(spec: &Spec<'_>) -> Result<Finished> {
    let started = Instant::now();
    let mut child = spawn(spec)?;
    let stdout = child
        .stdout
        .take()
        .map(|out| log_lines(out, spec.what.clone(), false));
    let stderr = child
        .stderr
        .take()
        .map(|err| log_lines(err, spec.what.clone(), true));
    let never = AtomicBool::new(false);
    let ended = supervise(child, spec, &never)?;
    let tail = collect(stderr, true);
    collect(stdout, false);
    Ok(Finished {
        ended,
        stderr_tail: tail,
        took: started.elapsed(),
    })
}

/// Runs a command source: `consume` gets its standard output, which ends
/// with an error ([`CommandFailed`], inside an `io::Error`) instead of a
/// clean end when the command did not succeed; a consumer that stops
/// reading early gets the command stopped. Returns what `consume` returned
/// and how the command ended.
pub fn stream<R>(spec: &Spec<'_>, consume: impl FnOnce(&mut dyn Read) -> R) -> Result<(R, Finished)> {
    let started = Instant::now();
    let mut child = spawn(spec)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{}: no standard output to read", spec.what))?;
    let stderr = child
        .stderr
        .take()
        .map(|err| log_lines(err, spec.what.clone(), true));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let supervisor = scope.spawn(|| supervise(child, spec, &stop));
        let mut output = Output {
            stdout: Some(stdout),
            read: 0,
            supervisor: Some(supervisor),
            stderr,
            started,
            finished: None,
            failed: None,
        };
        let result = consume(&mut output);
        // Whatever the consumer left unread stops the command: the pipe
        // closes (a writer gets SIGPIPE) and the group is stopped.
        output.stdout = None;
        stop.store(true, Ordering::SeqCst);
        let finished = output.finish()?;
        Ok((result, finished))
    })
}

/// A command source's standard output, as the consumer reads it.
struct Output<'s> {
    stdout: Option<ChildStdout>,
    read: u64,
    supervisor: Option<std::thread::ScopedJoinHandle<'s, Result<Ended>>>,
    stderr: Option<LogThread>,
    started: Instant,
    finished: Option<Finished>,
    /// The error the stream ended with, repeated to later reads.
    failed: Option<String>,
}

impl Output<'_> {
    /// Waits for the command to end (once).
    fn finish(&mut self) -> Result<Finished> {
        if let Some(f) = &self.finished {
            return Ok(f.clone());
        }
        let ended = match self.supervisor.take() {
            Some(s) => s
                .join()
                .map_err(|_| anyhow!("the thread watching a command panicked"))??,
            None => return Err(anyhow!("the command was waited for already")),
        };
        let tail = collect(self.stderr.take(), true);
        let f = Finished {
            ended,
            stderr_tail: tail,
            took: self.started.elapsed(),
        };
        self.finished = Some(f.clone());
        Ok(f)
    }
}

impl Read for Output<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(CommandFailed(why.clone())));
        }
        let Some(out) = self.stdout.as_mut() else {
            return Ok(0);
        };
        let n = out.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.read += n as u64;
            return Ok(n);
        }
        // The end of its output: the stream is good only if the command
        // exited with 0.
        self.stdout = None;
        let f = self.finish().map_err(|e| io::Error::other(format!("{e:#}")))?;
        if f.success() {
            return Ok(0);
        }
        let why = format!(
            "the command {} after {} bytes of output{}",
            f.outcome(),
            self.read,
            f.stderr_note()
        );
        self.failed = Some(why.clone());
        Err(io::Error::other(CommandFailed(why)))
    }
}

fn spawn(spec: &Spec<'_>) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(spec.command)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: stopped as a whole, and out of reach of the
        // terminal's Ctrl-C (vaultline decides).
        .process_group(0);
    cmd.spawn().with_context(|| format!("cannot start {}", spec.what))
}

/// Waits for the shell to exit, stopping its group when it must; reaps it
/// last. `stop`: the consumer no longer reads.
fn supervise(mut child: Child, spec: &Spec<'_>, stop: &AtomicBool) -> Result<Ended> {
    use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process_group, waitid};
    let pid = Pid::from_raw(child.id() as i32).ok_or_else(|| anyhow!("{}: no process id", spec.what))?;
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    // Why the group is being stopped, and when SIGTERM went.
    let mut stopping: Option<(Ended, Instant)> = None;
    let mut killed = false;
    loop {
        let exited = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        )
        .with_context(|| format!("waiting for {}", spec.what))?;
        if exited.is_some() {
            break;
        }
        let now = Instant::now();
        match &stopping {
            None => {
                let why = if spec.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                    Some(Ended::Cancelled)
                } else if let (Some(d), Some(t)) = (deadline, spec.timeout)
                    && now >= d
                {
                    Some(Ended::TimedOut(t))
                } else if stop.load(Ordering::SeqCst) {
                    Some(Ended::Abandoned)
                } else {
                    None
                };
                if let Some(why) = why {
                    match &why {
                        Ended::TimedOut(t) => tracing::warn!(
                            "{} ran longer than its timeout of {}s: stopping it",
                            spec.what,
                            t.as_secs()
                        ),
                        Ended::Cancelled => tracing::warn!("{}: stopping it (interrupted)", spec.what),
                        _ => tracing::debug!("{}: stopping it (its output is not read)", spec.what),
                    }
                    // The shell is not reaped yet: the group id is ours.
                    let _ = kill_process_group(pid, Signal::TERM);
                    stopping = Some((why, now));
                }
            }
            Some((_, at)) if !killed && now.duration_since(*at) >= KILL_GRACE => {
                tracing::warn!(
                    "{} did not stop within {}s of SIGTERM: killing its process group",
                    spec.what,
                    KILL_GRACE.as_secs()
                );
                let _ = kill_process_group(pid, Signal::KILL);
                killed = true;
            }
            Some(_) => {}
        }
        std::thread::sleep(POLL);
    }
    if stopping.is_some() {
        // What the shell started may outlive it: the whole group goes, while
        // the unreaped shell still holds the group's id.
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", spec.what))?;
    Ok(match stopping {
        Some((why, _)) => why,
        None => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signaled(sig),
                (None, None) => Ended::Exited(-1),
            }
        }
    })
}

/// A thread logging one output stream of a child line by line, keeping the
/// tail; it tells `done` when the stream ends.
struct LogThread {
    tail: Arc<Mutex<Vec<u8>>>,
    done: Receiver<()>,
}

fn log_lines(mut from: impl Read + Send + 'static, what: String, is_stderr: bool) -> LogThread {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let (tx, done) = channel();
    let kept = Arc::clone(&tail);
    let name = if is_stderr { "stderr" } else { "stdout" };
    let spawned = std::thread::Builder::new()
        .name(format!("child {name}"))
        .spawn(move || {
            let mut line: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            let emit = |line: &[u8]| {
                let text: String = String::from_utf8_lossy(line)
                    .chars()
                    .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                    .collect();
                tracing::info!("{what}: {name}: {}", text.trim_end());
            };
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let data = &buf[..n];
                if is_stderr && let Ok(mut t) = kept.lock() {
                    t.extend_from_slice(data);
                    let excess = t.len().saturating_sub(TAIL);
                    t.drain(..excess);
                }
                for &b in data {
                    if b == b'\n' {
                        emit(&line);
                        line.clear();
                    } else {
                        line.push(b);
                        if line.len() >= MAX_LOG_LINE {
                            emit(&line);
                            line.clear();
                        }
                    }
                }
            }
            if !line.is_empty() {
                emit(&line);
            }
            let _ = tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot log the output of a command: {e}");
    }
    LogThread { tail, done }
}

/// Waits (a little, the command having exited) for a stream to end; its
/// tail.
fn collect(thread: Option<LogThread>, is_stderr: bool) -> String {
    let Some(t) = thread else {
        return String::new();
    };
    let _ = t.done.recv_timeout(OUTPUT_GRACE);
    if !is_stderr {
        return String::new();
    }
    let bytes = t.tail.lock().map(|t| t.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str) -> Spec<'_> {
        Spec {
            what: "test command".into(),
            command,
            env: vec![("VAULTLINE_TEST", "42".into())],
            timeout: Some(Duration::from_secs(20)),
            cancel: None,
        }
    }

    #[test]
    fn a_hook_s_status_and_the_end_of_its_stderr_are_returned() {
        let f = run(&spec("echo out; echo \"err $VAULTLINE_TEST\" >&2; exit 3")).unwrap();
        assert_eq!(f.ended, Ended::Exited(3));
        assert_eq!(f.stderr_tail, "err 42\n");
        assert_eq!(f.outcome(), "exited with status 3");
        assert_eq!(f.stderr_note(), "; its standard error ends: \"err 42\"");
        assert!(run(&spec("true")).unwrap().success());
    }

    #[test]
    fn the_stderr_kept_is_bounded_to_its_tail() {
        let f = run(&spec("head -c 100000 /dev/zero | tr '\\0' x >&2; echo last >&2")).unwrap();
        assert!(f.success());
        assert_eq!(f.stderr_tail.len(), TAIL);
        assert!(
            f.stderr_tail.ends_with("xxxlast\n"),
            "{:?}",
            &f.stderr_tail[TAIL - 20..]
        );
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild");
        // The grandchild would write the marker after 3 s; killing only
        // the shell would let it.
        let cmd = format!("(sleep 3; touch {}) & sleep 60", marker.display());
        let mut s = spec(&cmd);
        s.timeout = Some(Duration::from_millis(300));
        let t = Instant::now();
        let f = run(&s).unwrap();
        assert_eq!(f.ended, Ended::TimedOut(Duration::from_millis(300)));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "the grandchild survived the timeout");
    }

    #[test]
    fn a_group_that_ignores_sigterm_is_killed() {
        let mut s = spec("trap '' TERM; sleep 60 & wait");
        s.timeout = Some(Duration::from_millis(100));
        let t = Instant::now();
        let f = run(&s).unwrap();
        assert!(matches!(f.ended, Ended::TimedOut(_)));
        assert!(
            t.elapsed() < KILL_GRACE + Duration::from_secs(3),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn cancelling_stops_the_command_unless_it_must_finish() {
        let cancel = AtomicBool::new(true);
        let mut s = spec("sleep 60");
        s.cancel = Some(&cancel);
        assert_eq!(run(&s).unwrap().ended, Ended::Cancelled);
        let mut s = spec("sleep 0.2; exit 0");
        s.cancel = None;
        assert!(run(&s).unwrap().success());
    }

    #[test]
    fn a_stream_ends_with_an_error_when_its_command_fails() {
        let (read, f) = stream(&spec("head -c 70000 /dev/zero; echo boom >&2; exit 3"), |out| {
            let mut got = Vec::new();
            let err = out.read_to_end(&mut got).unwrap_err();
            (got.len(), err.to_string())
        })
        .unwrap();
        assert_eq!(read.0, 70000);
        assert_eq!(
            read.1,
            "the command exited with status 3 after 70000 bytes of output; its standard error ends: \"boom\""
        );
        assert_eq!(f.ended, Ended::Exited(3));

        let ((), f) = stream(&spec("printf abc"), |out| {
            let mut got = String::new();
            out.read_to_string(&mut got).unwrap();
            assert_eq!(got, "abc");
        })
        .unwrap();
        assert!(f.success());
    }

    #[test]
    fn a_consumer_that_stops_reading_stops_the_command() {
        let t = Instant::now();
        let (_, f) = stream(&spec("trap '' PIPE; while :; do echo y; done"), |out| {
            let mut buf = [0u8; 100];
            out.read_exact(&mut buf).unwrap();
        })
        .unwrap();
        assert!(!f.success());
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    }
}
