//! The fleet view against the local S3 server: a bucket shared by many
//! hosts, most of them simulated (objects created by
//! tests/support/fleet_fill.py under the repository's names, not by real
//! backups), some real. What an admin or auditor sees from listings alone:
//! every host and job, the newest snapshot as the repository recorded it,
//! counts and bytes, stale and future-dated ones, at an exact number of
//! requests; the same figures for Prometheus, as a file and scraped; the
//! auditors' HTML page, rendered by a real browser; and the auditor role on
//! a server that enforces IAM. The 1,000-host run is bench/fleet.sh.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::browser;
use crate::util::moto::{ADMIN, Moto, aws_env, job, moto, python, s3_fixture, write_s3_config};
use crate::util::{Fixture, repo_root};

/// Runs fleet_fill.py against `bucket` as `creds`; returns its JSON.
fn fill(m: &Moto, creds: (&str, &str), bucket: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo_root().join("tests/support/fleet_fill.py"))
        .arg(bucket)
        .args(args)
        .env("AWS_ENDPOINT_URL", &m.endpoint)
        .env("AWS_CA_BUNDLE", &m.ca)
        .env("AWS_ACCESS_KEY_ID", creds.0)
        .env("AWS_SECRET_ACCESS_KEY", creds.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run fleet_fill.py");
    assert!(
        out.status.success(),
        "fleet_fill.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fleet_fill.py prints JSON")
}

/// A parsed Prometheus exposition: value of `name` with exactly `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"));
    match s.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

/// The time a snapshot id names, in seconds (ids here have 000 ms).
fn id_seconds(id: &str) -> i64 {
    let script = "import datetime,sys; print(int(datetime.datetime.strptime(sys.argv[1][:16], \
                  '%Y%m%dT%H%M%SZ').replace(tzinfo=datetime.timezone.utc).timestamp()))";
    let out = Command::new(python()).args(["-c", script, id]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn fleet_status_of_50_hosts_counts_every_snapshot_and_pages_on_the_stale() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("fleet-status");
    let fx = s3_fixture(m, &bucket, &key, "");
    fx.init();
    // 50 hosts × 6 daily snapshots of job etc, the newest an hour old;
    // every 10th host's newest is 3 days old; every 7th also has a
    // manifest whose id claims a year from now.
    let filled = fill(
        m,
        ADMIN,
        &bucket,
        &[
            "--hosts",
            "50",
            "--snapshots",
            "6",
            "--stale-every",
            "10",
            "--future-every",
            "7",
        ],
    );
    assert_eq!(filled["objects"], 50 * 12 + 8 * 2);
    // The admin's own host checks the bucket: that ships its audit trail,
    // and it has no snapshot (like a host whose every run is refused).
    fx.run(&["audit"]).ok();

    let run = fx.run(&["--json", "fleet", "status", "--max-age", "36h"]).code(9);
    let v = run.json();
    let hosts = v["hosts"].as_array().unwrap();
    // The 50 simulated hosts, and testhost.
    assert_eq!(hosts.len(), 51);
    let testhost = &hosts[50];
    assert_eq!(testhost["host"], "testhost");
    assert_eq!(
        (
            testhost["stale"].as_bool(),
            testhost["jobs"].as_array().unwrap().len()
        ),
        (Some(true), 0)
    );
    assert_eq!(testhost["audit_trails"].as_array().unwrap().len(), 1);
    for (i, h) in hosts[..50].iter().enumerate() {
        let (stale, future) = (i % 10 == 0, i % 7 == 0);
        let snapshots = if future { 7 } else { 6 };
        assert_eq!(h["host"], format!("fleet{i:04}"));
        assert_eq!(h["stale"], stale, "{h}");
        let jobs = h["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(j["job"], "etc");
        assert_eq!(j["status"], if stale { "stale" } else { "ok" }, "{j}");
        assert_eq!(j["snapshots"], snapshots);
        assert_eq!(j["objects"], 2 * snapshots);
        assert_eq!(j["stored_bytes"], (64 + 256) * snapshots);
        assert_eq!(j["future_dated"], u64::from(future));
        assert_eq!(j["newest_future_dated"], future);
        // The newest snapshot is never the future-dated one, and its time
        // is its id's (recorded later, when the helper wrote it).
        let last = j["last_snapshot"].as_str().unwrap();
        assert_eq!(j["last_snapshot_unix"].as_i64().unwrap(), id_seconds(last));
        let newest = j["newest_manifest"].as_str().unwrap();
        if future {
            let ahead = id_seconds(newest) - j["last_snapshot_unix"].as_i64().unwrap();
            assert!(ahead > 364 * 86_400, "{newest} claims a year ahead");
        } else {
            assert_eq!(newest, last);
        }
        let age = j["age_seconds"].as_i64().unwrap();
        let newest = if stale { 72 * 3600 } else { 3600 };
        assert!((newest..newest + 600).contains(&age), "{i}: age {age}");
        if stale {
            assert_eq!(j["reason"], "newest snapshot 3d ago, more than 1d 12h");
        }
    }
    assert_eq!(
        v["summary"],
        serde_json::json!({
            "hosts": 51, "jobs": 50, "stale_hosts": 6, "stale_jobs": 5, "future_dated_jobs": 8,
            "snapshots": 50 * 6 + 8, "stored_bytes": (50 * 6 + 8) * 320 + testhost["stored_bytes"].as_u64().unwrap()
        })
    );
    // One listing of the hosts, then 32 slices of them (twice the 16
    // workers), a page each: 33 requests, where a listing per host would
    // take 52.
    assert_eq!(v["scan"]["listings"], 33);
    assert_eq!(v["scan"]["s3_requests"], 33);
    // Every object once: the fleet's, and the one segment `audit` shipped.
    assert_eq!(v["scan"]["objects"], filled["objects"].as_u64().unwrap() + 1);
    assert!(
        run.stderr.contains(
            "error: 6 of 51 host(s) stale (maximum age 1d 12h): fleet0000 (etc: newest snapshot 3d ago, more than \
             1d 12h), fleet0010 (etc: newest snapshot 3d ago, more than 1d 12h)"
        ) && run.stderr.contains("testhost (no snapshot)"),
        "{}",
        run.stderr
    );

    // Text: a row per job, the stale ones and the future-dated marked.
    let text = fx.run(&["fleet", "status", "--max-age", "36h"]).code(9).stdout;
    let row = |host: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("no row for {host}:\n{text}"))
            .to_string()
    };
    assert!(row("fleet0010").contains(" etc  STALE "), "{}", row("fleet0010"));
    assert!(row("fleet0001").contains(" etc  ok "), "{}", row("fleet0001"));
    assert!(
        row("fleet0007").contains("FUTURE-DATED newest manifest"),
        "{}",
        row("fleet0007")
    );
    assert!(row("testhost").contains("no snapshot"), "{}", row("testhost"));

    // A longer maximum age and the admin's own host left out: nothing
    // stale, exit 0; and the figures for Prometheus as a text file.
    let prom = fx.path().join("fleet.prom");
    fx.run(&[
        "fleet",
        "status",
        "--max-age",
        "4d",
        "--ignore-host",
        "testhost",
        "--metrics-file",
        prom.to_str().unwrap(),
    ])
    .ok();
    let text = fs::read_to_string(&prom).unwrap();
    let scrape = parse_metrics(&text);
    fn f(h: &str) -> [(&str, &str); 2] {
        [("host", h), ("job", "etc")]
    }
    assert_eq!(sample(&scrape, "vaultline_fleet_hosts", &[]), 50.0);
    assert_eq!(sample(&scrape, "vaultline_fleet_stale_hosts", &[]), 0.0);
    assert_eq!(sample(&scrape, "vaultline_fleet_snapshots", &f("fleet0007")), 7.0);
    assert_eq!(
        sample(&scrape, "vaultline_fleet_stored_bytes", &f("fleet0001")),
        1920.0
    );
    assert_eq!(sample(&scrape, "vaultline_fleet_stale", &f("fleet0010")), 0.0);
    assert_eq!(
        sample(&scrape, "vaultline_fleet_future_dated_snapshots", &f("fleet0014")),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "vaultline_fleet_newest_manifest_future_dated",
            &f("fleet0014")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "vaultline_fleet_newest_manifest_future_dated",
            &f("fleet0015")
        ),
        0.0
    );
    assert_eq!(
        sample(&scrape, "vaultline_fleet_max_age_seconds", &[]),
        4.0 * 86_400.0
    );
    assert_eq!(sample(&scrape, "vaultline_fleet_scan_requests", &[]), 33.0);
    let last = sample(
        &scrape,
        "vaultline_fleet_last_snapshot_timestamp_seconds",
        &f("fleet0003"),
    );
    let age = sample(&scrape, "vaultline_fleet_scan_timestamp_seconds", &[]) - last;
    assert!((3600.0..4200.0).contains(&age), "{age}");
    assert_eq!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "vaultline_fleet_last_snapshot_timestamp_seconds")
            .count(),
        50
    );
    let mode = fs::metadata(&prom).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o644);

    // A mistyped prefix is an error, not an empty fleet.
    let run = fx.run(&["fleet", "status", "--prefix", "valtline"]).code(2);
    assert!(
        run.stderr.contains(&format!(
            "no vaultline repository in S3 bucket {bucket} at {} under prefix \"valtline\" (no \
             valtline/repository.json)",
            m.endpoint
        )),
        "{}",
        run.stderr
    );
    let run = fx.run(&["fleet", "status", "--max-age", "36"]).code(2);
    assert!(
        run.stderr.contains("invalid duration \"36\": a unit is missing"),
        "{}",
        run.stderr
    );
}

#[test]
fn fleet_serve_answers_prometheus_from_its_last_scan_and_rescans() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("fleet-serve");
    let fx = s3_fixture(m, &bucket, &key, "");
    fx.init();
    fill(m, ADMIN, &bucket, &["--hosts", "3", "--snapshots", "2"]);
    let mut child = fx
        .command(&[
            "fleet",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--refresh",
            "1s",
            "--ignore-host",
            "testhost",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _child = Kill(child);
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(
        line.starts_with("serving the figures of 3 host(s) at http://127.0.0.1:"),
        "{line}"
    );
    let scrape = |path: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = scrape("/metrics");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let s = parse_metrics(body);
    assert_eq!(sample(&s, "vaultline_fleet_hosts", &[]), 3.0);
    assert_eq!(sample(&s, "vaultline_fleet_scan_success", &[]), 1.0);
    assert_eq!(
        sample(
            &s,
            "vaultline_fleet_snapshots",
            &[("host", "fleet0002"), ("job", "etc")]
        ),
        2.0
    );
    assert!(scrape("/other").starts_with("HTTP/1.1 404 Not Found\r\n"));

    // A new host appears in the bucket; a later scan finds it, scrapes in
    // between are answered from the last one.
    fill(
        m,
        ADMIN,
        &bucket,
        &["--host", "late-host", "--snapshots", "1", "--newest-hours", "50"],
    );
    let found = crate::util::agent::wait_until(Duration::from_secs(30), || {
        let answer = scrape("/metrics");
        let s = parse_metrics(answer.split_once("\r\n\r\n").unwrap().1);
        (sample(&s, "vaultline_fleet_hosts", &[]) == 4.0).then_some(s)
    })
    .expect("the rescan found the new host");
    assert_eq!(
        sample(&found, "vaultline_fleet_host_stale", &[("host", "late-host")]),
        1.0
    );
    assert_eq!(
        sample(
            &found,
            "vaultline_fleet_stale",
            &[("host", "late-host"), ("job", "etc")]
        ),
        1.0
    );
}

/// The fixture of a real host `host` backing up `src` into the bucket.
fn real_host(m: &Moto, bucket: &str, key: &str, host: &str, src: &std::path::Path) -> Fixture {
    let fx = s3_fixture(m, bucket, key, &job("data", &[src]));
    let text = fs::read_to_string(&fx.config).unwrap().replacen(
        "host = \"testhost\"",
        &format!("host = \"{host}\""),
        1,
    );
    fs::write(&fx.config, text).unwrap();
    fx
}

#[test]
fn fleet_report_renders_in_a_real_browser() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("fleet-report");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("ledger"), b"every host backs up").unwrap();
    // Two real hosts, each backing up twice (each run ships its audit
    // segment).
    let web1 = real_host(m, &bucket, &key, "web1", src.path());
    web1.init();
    let web2 = real_host(m, &bucket, &key, "web2", src.path());
    for fx in [&web1, &web2] {
        fx.run(&["backup", "now"]).ok();
        fx.run(&["backup", "now"]).ok();
    }
    // web2's trail is tampered with: a segment rewriting its line 2 is
    // added (the original can be neither replaced nor hidden by the host).
    let objects: Vec<String> = m
        .ctl(&["objects", &bucket])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    let segment = objects
        .iter()
        .find(|k| k.starts_with("vaultline/web2/audit/"))
        .expect("web2 shipped its trail")
        .clone();
    let local = web2.path().join("segment");
    m.ctl(&["get", &bucket, &segment, local.to_str().unwrap()]);
    let text = fs::read_to_string(&local).unwrap();
    let line2 =
        text.lines()
            .nth(1)
            .expect("a second line")
            .replacen("\"who\":\"", "\"who\":\"someone else, ", 1);
    let trail_dir = segment.rsplit_once('/').unwrap().0;
    fs::write(&local, format!("{line2}\n")).unwrap();
    m.ctl(&[
        "put",
        &bucket,
        &format!("{trail_dir}/000000000002-000000000002.jsonl"),
        local.to_str().unwrap(),
    ]);
    // A simulated host whose last snapshot is 5 days old, and one named
    // like markup (a bucket writer can choose names).
    let hostile = "<img src=x onerror=alert(1)>";
    fill(
        m,
        ADMIN,
        &bucket,
        &["--host", "old-host", "--snapshots", "3", "--newest-hours", "120"],
    );
    fill(m, ADMIN, &bucket, &["--host", hostile, "--snapshots", "2"]);

    let dir = browser::artefacts_dir();
    let page = dir.join("fleet-report.html");
    let run = web1
        .run(&[
            "--json",
            "fleet",
            "report",
            "--html",
            page.to_str().unwrap(),
            "--max-age",
            "36h",
            "--days",
            "14",
        ])
        .ok();
    let v = run.json();
    assert_eq!(v["summary"]["hosts"], 4);
    assert_eq!(v["summary"]["stale_hosts"], 1);
    assert_eq!(
        v["hardening_passed"], true,
        "every required check passes (those failing are warn-only)"
    );
    let trails: Vec<(String, String)> = v["trails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["host"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        trails,
        [
            ("web1".to_string(), "verified".to_string()),
            ("web2".to_string(), "failed".to_string())
        ]
    );
    let html = fs::read_to_string(&page).unwrap();
    // Nothing that loads or runs anything (the hostile name is there as
    // escaped text only: `&lt;img src=x ...`).
    for reference in [
        "src=\"", "href=", "url(", "@import", "<link", "<script", "<img", "<iframe",
    ] {
        assert!(
            !html.contains(reference),
            "{reference} in the page: it must load nothing"
        );
    }

    // What a browser makes of it.
    let dom = browser::dump_dom(&page);
    let row = |attrs: &str| {
        assert!(dom.contains(attrs), "no {attrs} in the rendered DOM:\n{dom}");
    };
    row("<tr data-host=\"web1\" data-job=\"data\" data-status=\"ok\">");
    row("<tr data-host=\"web2\" data-job=\"data\" data-status=\"ok\">");
    row("<tr data-host=\"old-host\" data-job=\"etc\" data-status=\"stale\">");
    row("<tr data-host=\"&lt;img src=x onerror=alert(1)&gt;\" data-job=\"etc\" data-status=\"ok\">");
    assert!(
        dom.contains("<td>&lt;img src=x onerror=alert(1)&gt;</td>"),
        "the hostile name is text in a cell"
    );
    assert!(!dom.contains("<img"), "the browser made no image element");
    assert_eq!(
        dom.matches("<tr data-host=").count(),
        4 + 4,
        "a job row and an audit row per host"
    );
    row("STALE: newest snapshot 5d ago, more than 1d 12h");
    // Hardening, with the Security Hub controls.
    row("<tr data-check=\"versioning\" data-status=\"pass\" data-control=\"S3.14\">");
    row("<tr data-check=\"public-access-block\" data-status=\"pass\" data-control=\"S3.8\">");
    row("<tr data-check=\"access-logging\" data-status=\"fail\" data-control=\"S3.9\">");
    row("<tr data-check=\"object-lock\" data-status=\"fail\" data-control=\"S3.15\">");
    assert_eq!(dom.matches("<tr data-check=").count(), 13, "every check");
    // Audit trails: web1's verify, web2's rewritten line is named.
    let web1_trail = objects
        .iter()
        .find(|k| k.starts_with("vaultline/web1/audit/"))
        .unwrap()
        .split('/')
        .nth(3)
        .unwrap()
        .to_string();
    row(&format!(
        "<tr data-host=\"web1\" data-trail=\"{web1_trail}\" data-status=\"verified\">"
    ));
    row("data-status=\"failed\"");
    row("disagree about line 2: a line was rewritten and shipped again");
    row("<tr data-host=\"old-host\" data-trail=\"\" data-status=\"none\">");
    // Charts: one per job, bars and snapshot dots drawn.
    assert_eq!(dom.matches("<figure data-host=").count(), 4);
    assert_eq!(dom.matches("class=\"snapshot\"").count(), 2 + 2 + 3 + 2);
    assert!(dom.contains("class=\"bar\""));

    // A screenshot, kept for CI.
    let png = dir.join("fleet-report.png");
    let _ = fs::remove_file(&png);
    browser::screenshot(&page, &png, 1280, 3200);
    let bytes = fs::read(&png).unwrap();
    assert_eq!(browser::png_size(&bytes), (1280, 3200));
    assert!(
        bytes.len() > 50_000,
        "a page of tables and charts, not a blank one: {} bytes",
        bytes.len()
    );
}

/// The auditor's policy as moto can enforce it: KMS statements on `*`
/// (moto authorizes KMS against `*`), conditions ignored (moto evaluates
/// none; the auditor's one conditioned Allow then allows without it).
fn for_moto(mut policy: Value) -> Value {
    for st in policy["Statement"].as_array_mut().unwrap() {
        let kms = st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("kms:"));
        if kms {
            st["Resource"] = Value::from("*");
        }
    }
    policy
}

#[test]
fn the_auditor_role_runs_the_fleet_commands_and_reads_no_backup() {
    let (m, admin) = Moto::start_with_iam();
    let admin = (admin.0.as_str(), admin.1.as_str());
    let (bucket, key) = m.bucket_and_key_as(admin, "fleet-auditor");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("payroll.csv"), b"alice,100\n").unwrap();
    let mut host = Fixture::new("");
    write_s3_config(&host, &m, &bucket, &key, &job("data", &[src.path()]));
    host.env = aws_env(admin);
    host.init();
    host.run(&["backup", "now"]).ok();

    let policy: Value =
        serde_json::from_str(&host.run(&["policy", "iam", "--role", "auditor"]).ok().stdout).unwrap();
    for st in policy["Statement"].as_array().unwrap() {
        if st["Effect"] == "Allow" {
            let actions = st["Action"].to_string();
            assert!(
                !actions.contains("kms:Decrypt")
                    && !actions.contains("s3:Put")
                    && !actions.contains("s3:Delete"),
                "{st}"
            );
        }
    }
    let file = host.path().join("auditor.json");
    fs::write(&file, for_moto(policy).to_string()).unwrap();
    let creds = m.ctl_as(admin, &["iam-user", "auditor", file.to_str().unwrap()]);
    let creds = (creds["key"].as_str().unwrap(), creds["secret"].as_str().unwrap());

    let mut auditor = Fixture::new("");
    write_s3_config(&auditor, &m, &bucket, &key, "");
    let text = fs::read_to_string(&auditor.config).unwrap().replacen(
        "host = \"testhost\"",
        "host = \"auditor-desk\"",
        1,
    );
    fs::write(&auditor.config, text).unwrap();
    auditor.env = aws_env(creds);

    // The fleet commands work with what the role allows...
    let v = auditor.run(&["--json", "fleet", "status"]).ok().json();
    assert_eq!(v["summary"]["hosts"], 1);
    assert_eq!(v["hosts"][0]["host"], "testhost");
    assert_eq!(v["hosts"][0]["jobs"][0]["status"], "ok");
    let page = auditor.path().join("report.html");
    let v = auditor
        .run(&["--json", "fleet", "report", "--html", page.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(v["trails"][0]["status"], "verified", "{v}");
    let html = fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<tr data-check=\"versioning\" data-status=\"pass\""),
        "hardening was read"
    );

    // ...and nothing else: no manifest, no archive, no node pack, no data
    // key, no write.
    let keys: Vec<String> = m
        .ctl_as(admin, &["objects", &bucket])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    let manifest = keys.iter().find(|k| k.ends_with(".manifest")).unwrap();
    let archive = keys.iter().find(|k| k.ends_with(".archive")).unwrap();
    let nodes = keys.iter().find(|k| k.ends_with(".nodes")).unwrap();
    let as_auditor = |args: &[&str]| {
        Command::new(python())
            .arg(repo_root().join("tests/support/awsctl.py"))
            .args(args)
            .env("AWS_ENDPOINT_URL", &m.endpoint)
            .env("AWS_CA_BUNDLE", &m.ca)
            .env("AWS_ACCESS_KEY_ID", creds.0)
            .env("AWS_SECRET_ACCESS_KEY", creds.1)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let out = auditor.path().join("stolen");
    for name in [manifest, archive, nodes] {
        let r = as_auditor(&["get", &bucket, name, out.to_str().unwrap()]);
        assert!(!r.status.success(), "the auditor read {name}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("403"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    fs::write(&out, b"planted").unwrap();
    let r = as_auditor(&[
        "put",
        &bucket,
        "vaultline/testhost/data/snapshots/x.manifest",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success(), "the auditor wrote into the bucket");
    let run = auditor
        .run(&[
            "restore",
            "latest",
            "--host",
            "testhost",
            "--target",
            out.with_extension("d").to_str().unwrap(),
        ])
        .code(4);
    assert!(run.stderr.contains("AccessDenied"), "{}", run.stderr);
}
