//! What the user sees: logs and warnings on stderr, results on stdout (text
//! or `--json`), and progress.
//!
//! Progress is a bar (bytes, files, rate, ETA) when stderr is a terminal and
//! neither `--quiet` nor `--json` is set; otherwise a plain log line every
//! few seconds, which is what belongs in a journal or a cron mail.

use std::io::IsTerminal;
use std::sync::Mutex;

use crate::units::human_bytes;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
                .with_writer(std::io::stderr)
                .with_max_level(level)
                .with_target(false)
                .finish()
                .with(filter);
            let _ = tracing::subscriber::set_global_default(subscriber);
            return;
        }
        // journald adds its own timestamps.
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
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

    /// Prints a result: JSON on stdout with `--json`, else `text`.
    pub fn result<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{t}");
            }
        }
        Ok(())
    }

    /// A progress display for `what` (`backing up etc`).
    pub fn progress(&self, what: &str, total_bytes: Option<u64>) -> Progress {
        let bar = if self.interactive() {
            let bar = match total_bytes {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total_bytes.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {prefix}"
            } else {
                "{msg} {spinner} {bytes} {binary_bytes_per_sec} {prefix}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        Progress {
            bar,
            what: what.to_string(),
            log: !self.quiet,
            state: Mutex::new(State {
                bytes: 0,
                files: 0,
                last_log: Instant::now(),
                started: Instant::now(),
            }),
        }
    }
}

struct State {
    bytes: u64,
    files: u64,
    last_log: Instant,
    started: Instant,
}

/// Reports progress of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    log: bool,
    state: Mutex<State>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    /// `bytes` more processed, `files` more entries done.
    pub fn add(&self, bytes: u64, files: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.bytes += bytes;
        s.files += files;
        if let Some(bar) = &self.bar {
            bar.set_position(s.bytes);
            if files > 0 {
                bar.set_prefix(format!("{} files", s.files));
            }
        } else if self.log && s.last_log.elapsed() >= LOG_EVERY {
            s.last_log = Instant::now();
            let secs = s.started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                "{}: {} files, {}, {}/s",
                self.what,
                s.files,
                human_bytes(s.bytes),
                human_bytes((s.bytes as f64 / secs) as u64)
            );
        }
    }

    /// Prints a line above the bar (or logs it).
    pub fn warn(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::warn!("{message}")),
            None => tracing::warn!("{message}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
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
