//! `vaultline agent`: scheduled runs, change-triggered runs after the
//! debounce (and not before), and SIGHUP reloads.

use std::fs;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::util::Fixture;
use crate::util::agent::{Agent, wait_until};

/// Runs recorded for `job`, from its status file (readable whatever the
/// configuration file currently says).
fn runs(f: &Fixture, job: &str) -> u64 {
    fs::read(f.state().join("status").join(format!("{job}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["runs_total"].as_u64())
        .unwrap_or(0)
}

fn job(name: &str, src: &std::path::Path, extra: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\npaths = [{:?}]\n{extra}\n",
        src.display().to_string()
    )
}

#[test]
fn scheduled_runs_commit_snapshots_while_the_agent_runs() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"tick").unwrap();
    let f = Fixture::new(&job("tick", src.path(), "schedule = \"*/2 * * * * *\""));
    f.init();
    let mut agent = Agent::start(&f);
    let done = wait_until(Duration::from_secs(30), || (runs(&f, "tick") >= 2).then_some(()));
    assert!(done.is_some(), "no two scheduled runs; log:\n{}", agent.log());
    agent.signal(Signal::TERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");

    let status = f.run(&["status", "--json"]).ok().json();
    let tick = &status[0];
    let n = tick["runs_total"].as_u64().unwrap();
    assert!(n >= 2);
    assert_eq!(tick["failures_total"], 0);
    assert_eq!(tick["last_run"]["trigger"], "schedule");
    let snaps = f.run(&["snapshots", "tick", "--json"]).ok().json();
    assert_eq!(snaps.as_array().unwrap().len() as u64, n, "one snapshot per run");
    assert_eq!(
        tick["last_success"]["snapshot"],
        snaps.as_array().unwrap().last().unwrap()["id"]
    );
}

#[test]
fn a_watched_job_runs_once_changes_settle_and_not_before() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"v1").unwrap();
    let f = Fixture::new(&job(
        "docs",
        src.path(),
        "watch = true\non-change = { debounce-secs = 3, min-interval-secs = 0 }",
    ));
    f.init();
    let mut agent = Agent::start(&f);

    fs::write(src.path().join("f"), b"v2").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    fs::write(src.path().join("g"), b"new").unwrap(); // restarts the quiet period
    let last_change = Instant::now();
    let dirty = f.run(&["status", "--json"]).ok().json();
    assert_eq!(dirty[0]["dirty"], true, "changes mark the job dirty");
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        runs(&f, "docs"),
        0,
        "no run before the tree was quiet for 3 s; log:\n{}",
        agent.log()
    );

    let ran = wait_until(Duration::from_secs(20), || {
        (runs(&f, "docs") >= 1).then_some(Instant::now())
    });
    let ran = ran.unwrap_or_else(|| panic!("no change-triggered run; log:\n{}", agent.log()));
    assert!(ran.duration_since(last_change) >= Duration::from_secs(3));
    let status = f.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["last_run"]["trigger"], "watch");
    assert_eq!(status[0]["last_run"]["files"], 2, "the run saw both changes");
    assert_eq!(status[0]["dirty"], false);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        runs(&f, "docs"),
        1,
        "one run for one burst of changes (its own writes are not changes)"
    );

    agent.signal(Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).0.success());
}

#[test]
fn sighup_keeps_the_old_configuration_on_errors_and_applies_a_good_one() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let f = Fixture::new(&job("data", src.path(), ""));
    f.init();
    let mut agent = Agent::start(&f);

    // A broken configuration: rejected with its exact error, the old one stays.
    f.write_config(&job("data", src.path(), "schedule = \"61 * * * *\""));
    agent.signal(Signal::HUP);
    let line = format!(
        "{}:15:12: jobs[0].schedule: invalid cron expression \"61 * * * *\": minute must be 0-59",
        f.config.display()
    );
    agent.wait_for_log(&line, Duration::from_secs(10));
    assert!(
        agent
            .log()
            .contains("the configuration was not reloaded, the old one stays in force")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(&f, "data"), 0);

    // A good one: its schedule takes effect.
    f.write_config(&job("data", src.path(), "schedule = \"* * * * * *\""));
    agent.signal(Signal::HUP);
    agent.wait_for_log("reloaded", Duration::from_secs(10));
    let ran = wait_until(Duration::from_secs(20), || (runs(&f, "data") >= 1).then_some(()));
    assert!(ran.is_some(), "the new schedule never ran; log:\n{}", agent.log());

    agent.signal(Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).0.success());
}

#[test]
fn catch_up_runs_a_missed_schedule_at_start_and_systemd_hears_about_it() {
    use std::os::unix::net::UnixDatagram;

    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    // Daily at 03:00: the last one was missed (the job never ran).
    let mut f = Fixture::new(&job(
        "nightly",
        src.path(),
        "schedule = \"0 3 * * *\"\ncatch-up = true",
    ));
    f.init();
    let socket_path = f.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    f.env
        .push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    f.env.push(("WATCHDOG_USEC".into(), "400000".into()));

    let mut agent = Agent::start(&f);
    let ran = wait_until(Duration::from_secs(20), || {
        (runs(&f, "nightly") >= 1).then_some(())
    });
    assert!(
        ran.is_some(),
        "the missed run was not caught up; log:\n{}",
        agent.log()
    );
    let status = f.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["last_run"]["trigger"], "catch-up");

    // What systemd was told: READY, a STATUS line, watchdog pings.
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    while !(heard.iter().any(|m: &String| m == "READY=1")
        && heard.iter().any(|m| m.starts_with("STATUS="))
        && heard.iter().any(|m| m == "WATCHDOG=1"))
    {
        let n = socket.recv(&mut buf).expect("a notification within 20 s");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        heard
            .iter()
            .any(|m| m.starts_with("STATUS=running: nightly")
                || m.starts_with("STATUS=idle; next: nightly at ")),
        "{heard:?}"
    );
    agent.signal(Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).0.success());
}

#[test]
fn a_failed_run_calls_the_jobs_hook() {
    let src = tempfile::tempdir().unwrap();
    let marker = src.path().join("hook-ran");
    let missing = src.path().join("does-not-exist");
    let f = Fixture::new(&job(
        "broken",
        &missing,
        &format!(
            "schedule = \"* * * * * *\"\non-failure = \"echo $VAULTLINE_JOB $VAULTLINE_HOST > {}\"",
            marker.display()
        ),
    ));
    f.init();
    let mut agent = Agent::start(&f);
    let hooked = wait_until(Duration::from_secs(20), || fs::read_to_string(&marker).ok());
    let hooked = hooked.unwrap_or_else(|| panic!("the hook never ran; log:\n{}", agent.log()));
    assert_eq!(hooked.trim(), "broken testhost");
    assert!(agent.log().contains("job broken: run failed"));
    let status = f.run(&["status", "--json"]).ok().json();
    assert_ne!(status[0]["last_run"]["result"], "ok");
    agent.signal(Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).0.success());
}
