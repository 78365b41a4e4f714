//! `vaultline agent`: the service. It runs every job on its cron schedule
//! (tokio-cron-scheduler, in `agent.timezone`), watches `watch = true` jobs
//! (notify) and runs them after changes settle when `on-change` says so,
//! catches up a missed run at start when `catch-up = true`, and talks to
//! systemd (`Type=notify`: READY, STATUS, WATCHDOG).
//!
//! Each run is a child process, `vaultline backup now JOB`, exactly what an
//! operator would type: the job lock is the same (a manual run and a
//! scheduled one never overlap), status, metrics and the audit trail are
//! written the same way, and a crash or a leak in one run cannot take the
//! agent down. The agent itself holds no keys.
//!
//! Signals: SIGTERM/SIGINT stop new runs and give running ones
//! `grace-period-secs` to finish; then they are killed, and the agent aborts
//! what they left (multipart uploads) under the job lock before exiting 0.
//! SIGHUP reloads the configuration; an invalid one is logged with its exact
//! error and the old one kept.

mod sd_notify;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use vaultline_config::Config;

use crate::cli::app::{App, process_environment};
use crate::repo::lock::JobLock;

/// What drives the service loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// Start a run of `job`.
    Fire { job: String, trigger: &'static str },
    /// The watcher saw a change under `job`'s paths.
    Changed { job: String },
    /// `job`'s debounce period after change number `seq` ended.
    Settled { job: String, seq: u64 },
    /// A run ended.
    Done { job: String, ok: bool, killed: bool },
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop(&'static str),
}

struct Running {
    pid: Option<u32>,
    started: Instant,
    /// When, for the record of a run the agent has to kill.
    started_at: jiff::Timestamp,
    trigger: &'static str,
}

struct Service {
    config: Config,
    exe: PathBuf,
    tx: UnboundedSender<Event>,
    scheduler: Option<JobScheduler>,
    watchers: Vec<watch::JobWatch>,
    running: HashMap<String, Running>,
    /// Per job: the number of the latest change, and when a change-run last started.
    changes: HashMap<String, u64>,
    last_change_run: HashMap<String, Instant>,
    stopping: Option<Instant>,
}

/// Runs the agent until it is stopped.
pub fn run(app: &App) -> Result<()> {
    let rt = crate::cloud::aws::runtime()?;
    let exe = std::env::current_exe().context("cannot find the vaultline executable")?;
    rt.block_on(async {
        let (tx, mut rx) = unbounded_channel();
        signals(&tx)?;
        let mut svc = Service {
            config: app.config.clone(),
            exe,
            tx: tx.clone(),
            scheduler: None,
            watchers: Vec::new(),
            running: HashMap::new(),
            changes: HashMap::new(),
            last_change_run: HashMap::new(),
            stopping: None,
        };
        svc.start().await?;
        svc.catch_up();
        sd_notify::notify("READY=1");
        svc.status_line();
        if let Some(interval) = sd_notify::watchdog_interval() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    sd_notify::notify("WATCHDOG=1");
                }
            });
        }
        tracing::info!(
            "agent started: {} job(s), schedules in {}",
            svc.config.jobs.len(),
            svc.config.agent.timezone
        );
        loop {
            let event = match svc.stopping {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rx.recv()).await {
                        Ok(e) => e,
                        Err(_) => {
                            svc.kill_running().await;
                            break;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(event) = event else { break };
            svc.handle(event).await;
            if svc.stopping.is_some() && svc.running.is_empty() {
                break;
            }
        }
        sd_notify::notify("STOPPING=1");
        tracing::info!("agent stopped");
        Ok(())
    })
}

fn signals(tx: &UnboundedSender<Event>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, event) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut s = signal(kind).with_context(|| format!("cannot handle {event}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let e = if event == "SIGHUP" {
                    Event::Reload
                } else {
                    Event::Stop(event)
                };
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

impl Service {
    /// Schedules and watches for the current configuration.
    async fn start(&mut self) -> Result<()> {
        let tz: chrono_tz::Tz = self
            .config
            .agent
            .timezone
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown time zone {}", self.config.agent.timezone))?;
        let sched = JobScheduler::new().await.context("cannot start the scheduler")?;
        for job in &self.config.jobs {
            let Some(schedule) = &job.schedule else { continue };
            let tx = self.tx.clone();
            let name = job.name.clone();
            let cron = CronJob::new_async_tz(schedule.with_seconds().as_str(), tz, move |_, _| {
                let tx = tx.clone();
                let name = name.clone();
                Box::pin(async move {
                    let _ = tx.send(Event::Fire {
                        job: name,
                        trigger: "schedule",
                    });
                })
            })
            .with_context(|| format!("job {}: cannot schedule {:?}", job.name, schedule.expression()))?;
            sched.add(cron).await.context("cannot add a scheduled job")?;
        }
        sched.start().await.context("cannot start the scheduler")?;
        self.scheduler = Some(sched);
        let own = crate::cli::app::own_paths(&self.config);
        self.watchers = self
            .config
            .jobs
            .iter()
            .filter(|j| j.watch)
            .map(|j| {
                watch::JobWatch::start(
                    j,
                    self.config.agent.scan_interval_secs,
                    own.clone(),
                    self.tx.clone(),
                )
            })
            .collect();
        Ok(())
    }

    async fn stop_triggers(&mut self) {
        if let Some(mut s) = self.scheduler.take() {
            let _ = s.shutdown().await;
        }
        self.watchers.clear();
    }

    /// Runs once now each `catch-up` job whose last scheduled time passed
    /// without a run (the machine was off).
    fn catch_up(&self) {
        let now = jiff::Timestamp::now().as_second();
        for job in self.config.jobs.iter().filter(|j| j.catch_up) {
            let Some(schedule) = &job.schedule else { continue };
            let Some(missed) = schedule.previous_before(now, &self.config.agent.timezone) else {
                continue;
            };
            let last = crate::ops::status::load(&self.config.agent.state_dir, &job.name)
                .ok()
                .and_then(|s| s.last_run)
                .map_or(i64::MIN, |r| r.start_unix);
            if last < missed {
                tracing::info!(
                    "job {}: the run due at {} was missed; running it now",
                    job.name,
                    fmt_time(missed)
                );
                let _ = self.tx.send(Event::Fire {
                    job: job.name.clone(),
                    trigger: "catch-up",
                });
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Fire { job, trigger } => self.fire(&job, trigger),
            Event::Changed { job } => self.changed(&job),
            Event::Settled { job, seq } => self.settled(&job, seq),
            Event::Done { job, ok, killed } => {
                let took = self.running.remove(&job).map(|r| r.started.elapsed());
                let took = took
                    .map(|d| format!(" after {:.1}s", d.as_secs_f64()))
                    .unwrap_or_default();
                if killed {
                    tracing::warn!("job {job}: run stopped{took}");
                } else if ok {
                    tracing::info!("job {job}: run finished{took}");
                } else {
                    tracing::error!("job {job}: run failed{took} (see its log above and `vaultline status`)");
                    self.on_failure(&job);
                }
                self.status_line();
            }
            // A reload during shutdown would restart the triggers.
            Event::Reload if self.stopping.is_some() => {}
            Event::Reload => self.reload().await,
            Event::Stop(signal) => {
                if self.stopping.is_some() {
                    tracing::warn!("{signal} again: stopping running backups now");
                    self.stopping = Some(Instant::now());
                } else {
                    let grace = Duration::from_secs(self.config.agent.grace_period_secs);
                    tracing::info!(
                        "{signal}: stopping; {} run(s) in progress get {}s to finish",
                        self.running.len(),
                        grace.as_secs()
                    );
                    sd_notify::notify("STOPPING=1");
                    // Ask systemd for the grace period plus time to clean up,
                    // whatever the unit's TimeoutStopSec.
                    sd_notify::notify(&format!(
                        "EXTEND_TIMEOUT_USEC={}",
                        (grace + Duration::from_secs(60)).as_micros()
                    ));
                    self.stop_triggers().await;
                    self.stopping = Some(Instant::now() + grace);
                }
            }
        }
    }

    fn fire(&mut self, job: &str, trigger: &'static str) {
        if self.stopping.is_some() {
            return;
        }
        if self.running.contains_key(job) {
            tracing::info!("job {job}: still running; the {trigger} run is skipped");
            return;
        }
        // Changes from now on belong to the next run.
        let _ = std::fs::remove_file(
            self.config
                .agent
                .state_dir
                .join("status")
                .join(format!("{job}.dirty")),
        );
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.config.file)
            .args(["backup", "now", job])
            .env("VAULTLINE_TRIGGER", trigger)
            .stdin(std::process::Stdio::null())
            // Its own process group: a Ctrl-C at the agent's terminal is
            // the agent's to handle (a grace period), not the run's.
            .process_group(0)
            .kill_on_drop(false);
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(
                    "job {job}: {trigger} run started (process {})",
                    child.id().unwrap_or(0)
                );
                self.running.insert(
                    job.to_string(),
                    Running {
                        pid: child.id(),
                        started: Instant::now(),
                        started_at: jiff::Timestamp::now(),
                        trigger,
                    },
                );
                let tx = self.tx.clone();
                let name = job.to_string();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    // A run stopped by a signal, or that stopped itself
                    // cleanly on one (exit 130), was stopped, not failed.
                    let (ok, killed) = match status {
                        Ok(s) => (
                            s.success(),
                            std::os::unix::process::ExitStatusExt::signal(&s).is_some()
                                || s.code() == Some(crate::cli::exit::Exit::Interrupted as i32),
                        ),
                        Err(_) => (false, false),
                    };
                    let _ = tx.send(Event::Done {
                        job: name,
                        ok,
                        killed,
                    });
                });
            }
            Err(e) => tracing::error!("job {job}: cannot start a run: {e}"),
        }
        self.status_line();
    }

    fn changed(&mut self, job: &str) {
        let dirty = self
            .config
            .agent
            .state_dir
            .join("status")
            .join(format!("{job}.dirty"));
        if !dirty.exists() {
            let _ = crate::ops::status::write_atomic(&dirty, b"");
        }
        let Some(on_change) = self.config.job(job).and_then(|j| j.on_change) else {
            return;
        };
        let seq = self.changes.entry(job.to_string()).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let tx = self.tx.clone();
        let name = job.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(on_change.debounce_secs)).await;
            let _ = tx.send(Event::Settled { job: name, seq });
        });
    }

    fn settled(&mut self, job: &str, seq: u64) {
        if self.changes.get(job) != Some(&seq) {
            return; // a later change restarted the quiet period
        }
        let Some(on_change) = self.config.job(job).and_then(|j| j.on_change) else {
            return;
        };
        let min = Duration::from_secs(on_change.min_interval_secs);
        if let Some(last) = self.last_change_run.get(job)
            && last.elapsed() < min
        {
            let wait = min - last.elapsed();
            tracing::info!(
                "job {job}: changes settled; next change run allowed in {}s",
                wait.as_secs()
            );
            let tx = self.tx.clone();
            let name = job.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Event::Settled { job: name, seq });
            });
            return;
        }
        self.last_change_run.insert(job.to_string(), Instant::now());
        self.fire(job, "watch");
    }

    fn on_failure(&self, job: &str) {
        if self.config.job(job).is_some_and(|j| j.on_failure_sns.is_some()) {
            let config = self.config.clone();
            let name = job.to_string();
            tokio::task::spawn_blocking(move || {
                match App::from_config(config).and_then(|app| app.notify_failure(&name)) {
                    Ok(()) => tracing::info!("job {name}: failure published to SNS"),
                    Err(e) => tracing::error!("job {name}: cannot publish the failure to SNS: {e:#}"),
                }
            });
        }
        let Some(hook) = self.config.job(job).and_then(|j| j.on_failure.clone()) else {
            return;
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&hook)
            .env("VAULTLINE_JOB", job)
            .env("VAULTLINE_HOST", &self.config.agent.host)
            .env(
                "VAULTLINE_STATUS_FILE",
                self.config
                    .agent
                    .state_dir
                    .join("status")
                    .join(format!("{job}.json")),
            )
            .stdin(std::process::Stdio::null());
        let job = job.to_string();
        tokio::spawn(async move {
            match cmd.status().await {
                Ok(s) if s.success() => tracing::info!("job {job}: on-failure hook ran"),
                Ok(s) => tracing::error!("job {job}: on-failure hook failed ({s})"),
                Err(e) => tracing::error!("job {job}: cannot run the on-failure hook: {e}"),
            }
        });
    }

    async fn reload(&mut self) {
        let mut env = process_environment();
        env.config_of_root = crate::cli::app::config_of_root(&self.config.file);
        match Config::load(&self.config.file, &env) {
            Ok(new) => {
                tracing::info!("SIGHUP: configuration {} reloaded", new.file.display());
                self.stop_triggers().await;
                let old = std::mem::replace(&mut self.config, new);
                if let Err(e) = self.start().await {
                    tracing::error!(
                        "the reloaded configuration cannot be scheduled ({e:#}); keeping the old one"
                    );
                    self.stop_triggers().await;
                    self.config = old;
                    if let Err(e) = self.start().await {
                        tracing::error!("cannot restore the old schedule: {e:#}");
                    }
                }
                self.status_line();
            }
            Err(e) => tracing::error!(
                "SIGHUP: the configuration was not reloaded, the old one stays in force:\n{e}"
            ),
        }
    }

    /// Stops runs still going after the grace period: SIGTERM first (a run
    /// stops cleanly, aborts its uploads and records itself as
    /// interrupted), SIGKILL for one still there 10 s later; then aborts
    /// what they left (open multipart uploads) under each job's lock.
    async fn kill_running(&mut self) {
        let jobs: Vec<(String, Option<u32>)> = self.running.iter().map(|(j, r)| (j.clone(), r.pid)).collect();
        let mut killed: Vec<(String, jiff::Timestamp, &'static str)> = Vec::new();
        let pids = |jobs: &[(String, Option<u32>)]| -> Vec<(String, rustix::process::Pid)> {
            jobs.iter()
                .filter_map(|(j, p)| {
                    p.and_then(|p| rustix::process::Pid::from_raw(p as i32))
                        .map(|p| (j.clone(), p))
                })
                .collect()
        };
        for (job, pid) in pids(&jobs) {
            tracing::warn!(
                "job {job}: grace period over; stopping its run (process {})",
                pid.as_raw_nonzero()
            );
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let alive = |pid: rustix::process::Pid| {
            std::path::Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids(&jobs).into_iter().any(|(_, p)| alive(p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (job, pid) in pids(&jobs) {
            if alive(pid) {
                tracing::warn!("job {job}: its run did not stop; killing it");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                if let Some(r) = self.running.get(&job) {
                    killed.push((job.clone(), r.started_at, r.trigger));
                }
            }
        }
        // Wait for them to be reaped (their Done events).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.running.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Done events are processed by the caller's loop normally; here
            // we only need the processes gone: poll /proc.
            self.running.retain(|_, r| {
                r.pid
                    .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            });
        }
        let config = self.config.clone();
        let names: Vec<String> = jobs.into_iter().map(|(j, _)| j).collect();
        let _ = tokio::task::spawn_blocking(move || cleanup(&config, &names, &killed)).await;
    }

    fn status_line(&self) {
        let text = if self.running.is_empty() {
            let now = jiff::Timestamp::now().as_second();
            let next = self
                .config
                .jobs
                .iter()
                .filter_map(|j| {
                    j.schedule
                        .as_ref()
                        .and_then(|s| s.next_after_in(now, &self.config.agent.timezone))
                        .map(|t| (t, j.name.clone()))
                })
                .min();
            match next {
                Some((t, job)) => format!("idle; next: {job} at {}", fmt_time(t)),
                None => "idle; nothing scheduled".into(),
            }
        } else {
            let mut names: Vec<&str> = self.running.keys().map(String::as_str).collect();
            names.sort();
            format!("running: {}", names.join(", "))
        };
        sd_notify::notify(&format!("STATUS={text}"));
    }
}

fn fmt_time(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// After stopped runs: abort their open multipart uploads, holding each
/// job's lock so no new run races the cleanup. A run that had to be killed
/// could not record itself: it is recorded here as interrupted (a run that
/// stopped on SIGTERM did so itself).
fn cleanup(config: &Config, jobs: &[String], killed: &[(String, jiff::Timestamp, &'static str)]) {
    let app = match App::from_config(config.clone()) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("cannot clean up after stopped runs: {e:#}");
            return;
        }
    };
    for job in jobs {
        let result = (|| -> Result<usize> {
            // Not waiting: if another run took the lock meanwhile, it
            // cleans up itself when it starts.
            let _lock = JobLock::acquire(&config.agent.state_dir, job, false)?;
            let prefix = app.repo.job_prefix(&config.agent.host, job);
            Ok(app.repo.store().clean_pending(&prefix)?)
        })();
        match result {
            // Whether its snapshot was committed is the run's own record
            // (a stop that reaches a run past its last check lets it commit).
            Ok(n) => tracing::info!("job {job}: stopped run cleaned up ({n} incomplete upload(s) aborted)"),
            Err(e) => tracing::error!(
                "job {job}: cleanup after the stopped run failed: {e:#}; the next run retries"
            ),
        }
    }
    for (job, start, trigger) in killed {
        let recorder = app.recorder_triggered("agent", trigger);
        let recorded = recorder
            .job(&crate::ops::report::JobRun {
                job: job.clone(),
                start: *start,
                outcome: crate::ops::report::JobOutcome::Interrupted(
                    "SIGKILL (it did not stop within 10 s of SIGTERM)".into(),
                ),
                hardening: None,
            })
            .and_then(|()| {
                recorder.finish(
                    "interrupted: killed after the grace period",
                    serde_json::Value::Null,
                )
            });
        if let Err(e) = recorded {
            tracing::error!("job {job}: cannot record the killed run: {e:#}");
        }
    }
}
