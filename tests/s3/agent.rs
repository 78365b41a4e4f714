//! Stopping the agent in the middle of a large backup to S3: it exits 0
//! within the grace period (plus cleanup), commits no snapshot, leaves no
//! incomplete multipart upload, and releases the job lock.

use std::fs;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::faults::write_noise;
use crate::util::agent::{Agent, wait_until};
use crate::util::moto::{job, moto, s3_fixture};

#[test]
fn sigterm_during_a_large_backup_stops_cleanly() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("agentstop");
    let src = tempfile::tempdir().unwrap();
    write_noise(&src.path().join("big.bin"), 400 << 20, 3);
    let extra = format!("{}schedule = \"* * * * * *\"\n", job("big", &[src.path()]));
    let fx = s3_fixture(m, &bucket, &key, &extra);
    let text = fs::read_to_string(&fx.config)
        .unwrap()
        .replace(
            "path-style = true\n",
            "path-style = true\npart-size-mib = 5\nparts-in-flight = 2\n",
        )
        // No grace: the run is told to stop as soon as its upload began.
        // With 2 s, a backup that got fast enough (400 MiB in under 2 s
        // after its first part) committed first, legitimately, and the
        // test measured the machine instead of the stop.
        .replace("[agent]\n", "[agent]\ngrace-period-secs = 0\n");
    fs::write(&fx.config, text).unwrap();
    fx.init();

    let mut agent = Agent::start(&fx);
    let uploading = wait_until(Duration::from_secs(60), || {
        (!m.ctl(&["uploads", &bucket]).as_array().unwrap().is_empty()).then_some(())
    });
    assert!(
        uploading.is_some(),
        "no multipart upload started; log:\n{}",
        agent.log()
    );
    let stop = Instant::now();
    agent.signal(Signal::TERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(60));
    let took = stop.elapsed();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(took < Duration::from_secs(20), "stopping took {took:?}");
    let log = agent.log();
    assert!(
        log.contains("grace period over"),
        "the run outlived the grace period:\n{log}"
    );
    // Stopped by SIGTERM (it aborted its own upload) or, still reading its
    // one big file 10 s later, killed (the agent aborted it): either way
    // cleaned up and recorded as interrupted.
    assert!(
        log.contains("job big: stopped run cleaned up (1 incomplete upload(s) aborted)")
            || log.contains("job big: stopped run cleaned up (0 incomplete upload(s) aborted)"),
        "{log}"
    );
    let status = fx.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["last_run"]["result"], "interrupted", "{status}");

    assert_eq!(
        m.ctl(&["uploads", &bucket]),
        serde_json::json!([]),
        "no parts left behind"
    );
    let snaps = fx.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(snaps, serde_json::json!([]), "no snapshot was committed");
    // The lock is free: a run that refuses to wait gets it.
    fs::remove_file(src.path().join("big.bin")).unwrap();
    fs::write(src.path().join("small"), b"s").unwrap();
    fx.run(&["backup", "now", "--no-wait"]).ok();
}

#[test]
fn a_failed_run_is_published_to_the_jobs_sns_topic() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("snsfail");
    let sns = m.ctl(&["sns-queue", &crate::util::moto::unique_bucket("alerts")]);
    let topic = sns["topic"].as_str().unwrap();
    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let extra = format!(
        "{}schedule = \"* * * * * *\"\non-failure-sns = \"{topic}\"\n",
        job("lost", &[&missing])
    );
    let fx = s3_fixture(m, &bucket, &key, &extra);
    let text = fs::read_to_string(&fx.config)
        .unwrap()
        .replace("[aws]\n", &format!("[aws]\nsns-endpoint = \"{}\"\n", m.endpoint));
    fs::write(&fx.config, text).unwrap();
    fx.init();
    // The backup role may publish to that topic.
    let policy = fx.run(&["policy", "iam", "--role", "backup"]).ok().json();
    assert!(
        policy
            .to_string()
            .contains(&format!("\"Resource\":[\"{topic}\"]")),
        "{policy}"
    );

    let mut agent = Agent::start(&fx);
    let url = sns["queue_url"].as_str().unwrap();
    let got = wait_until(Duration::from_secs(40), || {
        let msgs = m.ctl(&["receive", url, "2"]);
        msgs.as_array().unwrap().first().cloned()
    });
    let msg = got.unwrap_or_else(|| panic!("nothing published; log:\n{}", agent.log()));
    // A job none of whose paths exist is refused (nothing to back up), not
    // committed as an empty, incomplete snapshot.
    assert_eq!(msg["Subject"], "vaultline: job lost on testhost: failed", "{msg}");
    let body: serde_json::Value = serde_json::from_str(msg["Message"].as_str().unwrap()).unwrap();
    assert_eq!(body["job"], "lost");
    assert_eq!(body["status"]["last_run"]["result"], "failed");
    assert!(
        body["status"]["last_run"]["error"]
            .as_str()
            .unwrap()
            .starts_with("none of its paths exist ("),
        "{body}"
    );
    agent.signal(Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).0.success());
}
