//! What the user sees: logs and warnings on stderr, results on stdout (text
//! or `--json`), and progress.
//!
//! Two kinds of results: what a query prints ([`Output::result`]: a
//! listing, a status, a policy) is printed whatever `-q` says; what an
//! action reports when it is done ([`Output::summary`]: a backup's,
//! restore's or verify's summary) is left out by `-q`, so that a cron job
//! mails only warnings and errors. `--json` prints both.
//!
//! Standard output may be a pipe whose reader goes away (`vaultline
//! snapshots | head -1`): everything on stdout goes through [`print_line`],
//! which drops the rest of the output quietly then (no panic, no message);
//! the command itself still finishes, and its exit code says how it went.
//! Listings check [`stdout_closed`] to stop early.
//!
//! Progress is a bar (bytes and entries done out of their totals, the rate,
//! the time left once it can be told) when stderr is a terminal and neither
//! `--quiet` nor `--json` is set; otherwise a plain log line every ten
//! seconds, which is what belongs in a journal or a cron mail. While a bar
//! is drawn, log lines are written around it (cleared, line, redrawn), and
//! a finished bar is cleared: nothing is left on screen but the lines.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::units::human_bytes;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

/// Output settings from the global flags.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
    /// `--log-format json`: log lines as JSON objects.
    pub log_json: bool,
}

impl Output {
    /// Sets up logging to stderr.
    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => Level::WARN,
            (false, 0) => Level::INFO,
            (false, 1) => Level::DEBUG,
            (false, _) => Level::TRACE,
        };
        // The AWS SDK and its HTTP stack log retries and credential-chain
        // probing as warnings; our own messages say what matters. Their
        // detail is shown from -vv on.
        let libraries = if self.verbose >= 2 { level } else { Level::ERROR };
        let filter = Targets::new()
            .with_default(level)
            .with_target("aws", libraries)
            .with_target("hyper", libraries)
            .with_target("rustls", libraries)
            .with_target("h2", libraries)
            .with_target("tokio_cron_scheduler", libraries);
        if self.log_json {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(log_writer)
                .with_max_level(level)
                .with_target(false)
                .finish()
                .with(filter);
            let _ = tracing::subscriber::set_global_default(subscriber);
            return;
        }
        // journald adds its own timestamps.
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log_writer)
            .with_max_level(level)
            .with_target(false)
            .without_time()
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter);
        let _ = tracing::subscriber::set_global_default(subscriber);
    }

    /// Whether to draw a progress bar.
    pub fn interactive(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// Prints the result of a query: JSON on stdout with `--json`, else
    /// `text` (also with `-q`: the listing is what was asked for).
    pub fn result<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            print_line(&serde_json::to_string_pretty(value)?)?;
        } else {
            let t = text();
            if !t.is_empty() {
                print_line(&t)?;
            }
        }
        Ok(())
    }

    /// Prints the summary of an action that is done: JSON with `--json`,
    /// else `text`, which `-q` leaves out (warnings and errors are logged).
    pub fn summary<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.quiet && !self.json {
            return Ok(());
        }
        self.result(value, text)
    }

    /// Prints one line of an action's running account (not with `--json`,
    /// whose document comes at the end, nor with `-q`).
    pub fn line(&self, text: &str) -> anyhow::Result<()> {
        if self.json || self.quiet {
            return Ok(());
        }
        print_line(text)?;
        Ok(())
    }

    /// A progress display for `what` (`backing up etc`), out of
    /// `total_bytes` of content in `total_entries` entries when known.
    pub fn progress(&self, what: &str, total_bytes: Option<u64>, total_entries: Option<u64>) -> Progress {
        let id = NEXT_BAR.fetch_add(1, Ordering::Relaxed);
        let bar = if self.interactive() {
            let bar = ProgressBar::with_draw_target(total_bytes, ProgressDrawTarget::stderr());
            let template = if total_bytes.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {prefix} {rate} {eta}"
            } else {
                "{msg} {spinner} {bytes} {prefix} {rate}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                let style = style
                    .progress_chars("=> ")
                    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&rate_text(s.pos(), s.elapsed()));
                    })
                    .with_key("eta", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&eta_text(s.pos(), s.len(), s.elapsed()));
                    });
                bar.set_style(style);
            }
            bar.set_message(what.to_string());
            bar.set_prefix(entries_text(0, total_entries));
            // Log lines from now on are written around the bar.
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = Some((id, bar.clone()));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        Progress {
            id,
            bar,
            what: what.to_string(),
            log: !self.quiet,
            total_bytes,
            total_entries,
            state: Mutex::new(State {
                bytes: 0,
                entries: 0,
                last_log: Instant::now(),
                started: Instant::now(),
            }),
        }
    }
}

/// The bar on screen, if any: the log writer clears it, writes the line
/// and redraws it, so no log line leaves a frozen copy of the bar behind.
static ACTIVE_BAR: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_BAR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Standard error for log lines, around the bar when one is drawn.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|(_, b)| b.clone()));
        match bar {
            // (The formatter hands over whole lines, one write each.)
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn log_writer() -> LogWriter {
    LogWriter
}

/// `12/345 entries`, or `12 entries` when the total is not known.
fn entries_text(done: u64, total: Option<u64>) -> String {
    let noun = if total.unwrap_or(done) == 1 {
        "entry"
    } else {
        "entries"
    };
    match total {
        Some(t) => format!("{done}/{t} {noun}"),
        None => format!("{done} {noun}"),
    }
}

/// The rate once there is one to show (a second in, something done).
fn rate_text(pos: u64, elapsed: Duration) -> String {
    if pos == 0 || elapsed < Duration::from_secs(1) {
        return String::new();
    }
    format!("{}/s", human_bytes((pos as f64 / elapsed.as_secs_f64()) as u64))
}

/// The time left once it can be told (a second in, something done, a
/// total known): nothing rather than `ETA 0s` at 0 B/s.
fn eta_text(pos: u64, len: Option<u64>, elapsed: Duration) -> String {
    let Some(len) = len else { return String::new() };
    if pos == 0 || elapsed < Duration::from_secs(1) || pos >= len {
        return String::new();
    }
    let left = ((len - pos) as f64 * elapsed.as_secs_f64() / pos as f64).round() as u64;
    let (h, m, s) = (left / 3600, left / 60 % 60, left % 60);
    match (h, m) {
        (0, 0) => format!("ETA {s}s"),
        (0, _) => format!("ETA {m}m {s:02}s"),
        _ => format!("ETA {h}h {m:02}m"),
    }
}

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// True once standard output's reader went away (`| head`): whatever is
/// left to print is dropped, and a listing may stop.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes `text` and a newline to standard output. A reader that went away
/// (a broken pipe) is not an error: the output is dropped from then on
/// (see [`stdout_closed`]). Other write errors (a full disk behind a
/// redirection) are.
pub fn print_line(text: &str) -> std::io::Result<()> {
    if stdout_closed() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

struct State {
    bytes: u64,
    entries: u64,
    last_log: Instant,
    started: Instant,
}

/// Reports progress of one run.
pub struct Progress {
    id: u64,
    bar: Option<ProgressBar>,
    what: String,
    log: bool,
    total_bytes: Option<u64>,
    total_entries: Option<u64>,
    state: Mutex<State>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    /// `bytes` more processed, `entries` more entries done.
    pub fn add(&self, bytes: u64, entries: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.bytes += bytes;
        s.entries += entries;
        if let Some(bar) = &self.bar {
            bar.set_position(s.bytes);
            if entries > 0 {
                bar.set_prefix(entries_text(s.entries, self.total_entries));
            }
        } else if self.log && s.last_log.elapsed() >= LOG_EVERY {
            s.last_log = Instant::now();
            let bytes = match self.total_bytes {
                Some(t) => format!("{} of {}", human_bytes(s.bytes), human_bytes(t)),
                None => human_bytes(s.bytes),
            };
            let rate = rate_text(s.bytes, s.started.elapsed());
            tracing::info!(
                "{}: {}, {bytes}{}",
                self.what,
                entries_text(s.entries, self.total_entries),
                if rate.is_empty() {
                    String::new()
                } else {
                    format!(", {rate}")
                }
            );
        }
    }

    /// A warning, printed above the bar (which the log writer suspends).
    pub fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }

    /// Removes the bar, leaving the screen as it was before it.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            if let Ok(mut active) = ACTIVE_BAR.lock()
                && active.as_ref().is_some_and(|(id, _)| *id == self.id)
            {
                *active = None;
            }
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl crate::pipeline::Progress for Progress {
    fn add(&self, bytes: u64, files: u64) {
        Progress::add(self, bytes, files);
    }

    fn warn(&self, message: &str) {
        Progress::warn(self, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_or_eta_until_they_can_be_told() {
        let sec = Duration::from_secs;
        assert_eq!(
            eta_text(0, Some(300 << 20), sec(5)),
            "",
            "nothing done yet: no ETA 0s"
        );
        assert_eq!(eta_text(10, Some(100), Duration::from_millis(200)), "");
        assert_eq!(eta_text(10, None, sec(5)), "", "no total, no ETA");
        assert_eq!(eta_text(100, Some(100), sec(5)), "");
        assert_eq!(eta_text(25, Some(100), sec(10)), "ETA 30s");
        assert_eq!(eta_text(1, Some(100), sec(10)), "ETA 16m 30s");
        assert_eq!(eta_text(1, Some(1000), sec(10)), "ETA 2h 46m");
        assert_eq!(rate_text(0, sec(3)), "");
        assert_eq!(rate_text(3 << 20, sec(3)), "1.0 MiB/s");
        assert_eq!(entries_text(3, Some(40)), "3/40 entries");
        assert_eq!(entries_text(3, None), "3 entries");
        assert_eq!(entries_text(0, Some(1)), "0/1 entry");
    }
}
