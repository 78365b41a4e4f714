//! Bucket hardening: each misconfiguration is caught by exactly its check
//! and refuses the backup before anything is written; `harden --apply`
//! fixes a bare bucket idempotently without dropping what was there; a
//! setting the principal cannot read is unknown, never compliant.
//!
//! These tests use servers of their own: the account-level Block Public
//! Access setting is shared by every bucket on a server.

use std::fs;

use serde_json::Value;

use crate::util::Fixture;
use crate::util::moto::{ADMIN, Moto, aws_env, job, moto, s3_fixture, unique_bucket, write_s3_config};

const CHECKS: [&str; 13] = [
    "public-access-block",
    "no-public-policy",
    "acls-disabled",
    "versioning",
    "default-encryption",
    "tls-only",
    "access-logging",
    "lifecycle-archive",
    "lifecycle-abort-mpu",
    "lifecycle-no-early-expiry",
    "object-lock",
    "kms-key",
    // Last: it changes the whole (test) account.
    "account-public-access-block",
];

/// Every check set to abort, so each one alone refuses a backup.
fn all_abort() -> String {
    let mut s = String::from("[hardening.checks]\n");
    for c in CHECKS {
        s.push_str(&format!("{c} = \"abort\"\n"));
    }
    s
}

fn fixture(m: &Moto, bucket: &str, key: &str, extra: &str, src: &std::path::Path) -> Fixture {
    let mut fx = Fixture::new("");
    write_s3_config(&fx, m, bucket, key, &format!("{extra}\n{}", job("j", &[src])));
    fx.env = aws_env(ADMIN);
    fx
}

fn not_passing(audit: &Value) -> Vec<(String, String)> {
    audit["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn each_misconfiguration_fails_exactly_its_check_and_refuses_the_backup() {
    let m = Moto::start(&[]);
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();

    let hardened = |name: &str| {
        let bucket = unique_bucket(name);
        m.ctl(&["create-bucket", &bucket, "--object-lock"]);
        let key = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
        m.ctl(&["harden-fully", &bucket, &key]);
        (bucket, key)
    };

    // A fully hardened bucket passes every check, and backups run.
    let (bucket, key) = hardened("full");
    let fx = fixture(&m, &bucket, &key, &all_abort(), src.path());
    fx.init();
    let audit = fx.run(&["audit", "--json"]).ok().json();
    assert_eq!(not_passing(&audit), vec![], "{audit}");
    assert_eq!(audit["passed"], true);
    fx.run(&["backup", "now"]).ok();

    for check in CHECKS {
        let (bucket, key) = hardened(check);
        m.ctl(&["misconfigure", &bucket, check, &key]);
        let fx = fixture(&m, &bucket, &key, &all_abort(), src.path());
        fx.init();
        let run = fx.run(&["audit", "--json"]).code(3);
        let audit = run.json();
        assert_eq!(
            not_passing(&audit),
            vec![(check.to_string(), "fail".to_string())],
            "{check}: {audit}"
        );
        let finding = audit["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == check)
            .unwrap();
        assert!(
            !finding["fix"].as_str().unwrap().is_empty(),
            "{check} names its fix"
        );
        assert!(!finding["control"].as_str().unwrap().is_empty());

        let before = m.ctl(&["versions", &bucket]);
        let run = fx.run(&["backup", "now"]).code(3);
        assert!(
            run.stderr.contains(&format!("fails required check(s) {check} ")),
            "{check}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("FAIL    "),
            "the report is on stderr: {}",
            run.stderr
        );
        assert_eq!(
            m.ctl(&["versions", &bucket]),
            before,
            "{check}: nothing was written"
        );
    }
}

#[test]
fn harden_apply_fixes_a_bare_bucket_keeping_what_was_there() {
    let m = Moto::start(&[]);
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let bucket = unique_bucket("bare");
    m.ctl(&["create-bucket", &bucket, "--bare"]);
    let key = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();

    // An unrelated policy statement and a stricter abort-uploads rule.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    fs::write(
        &policy,
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Sid": "AuditorsMayList", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:role/auditor"},
            "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}]})
        .to_string(),
    )
    .unwrap();
    m.ctl(&["put-policy", &bucket, policy.to_str().unwrap()]);
    let strict = serde_json::json!([{"ID": "strict-abort", "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]);
    m.ctl(&["put-lifecycle", &bucket, &strict.to_string()]);

    let fx = fixture(&m, &bucket, &key, "", src.path());
    fx.init();
    let audit = fx.run(&["audit", "--json"]).code(3).json();
    let failing: Vec<String> = not_passing(&audit).into_iter().map(|(id, _)| id).collect();
    for required in [
        "public-access-block",
        "acls-disabled",
        "versioning",
        "default-encryption",
        "tls-only",
    ] {
        assert!(
            failing.contains(&required.to_string()),
            "{required} fails on a bare bucket: {audit}"
        );
    }
    fx.run(&["backup", "now"]).code(3);

    // Without --apply nothing changes.
    let plan = fx.run(&["harden", "--json"]).ok().json();
    assert!(plan["plan"]["changes"].as_array().unwrap().len() >= 5, "{plan}");
    fx.run(&["audit"]).code(3);

    let applied = fx.run(&["harden", "--apply", "--json"]).ok().json();
    assert_eq!(applied["applied"], true);
    let audit = fx.run(&["audit", "--json"]).ok().json();
    assert_eq!(audit["passed"], true, "{audit}");
    let again = fx.run(&["harden", "--apply", "--json"]).ok().json();
    assert_eq!(
        again["plan"]["changes"],
        serde_json::json!([]),
        "a second run changes nothing: {again}"
    );
    fx.run(&["backup", "now"]).ok();

    // The unrelated statement is still there, beside the TLS-only Deny.
    let policy = m.ctl(&["get-policy", &bucket]);
    let sids: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Sid"].as_str())
        .collect();
    assert_eq!(
        sids,
        vec!["AuditorsMayList", "VaultlineDenyInsecureTransport"],
        "{policy}"
    );
    // The stricter rule is kept and not duplicated by a weaker one.
    let rules = m.ctl(&["get-lifecycle", &bucket]);
    let ids: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["strict-abort", "vaultline-archive-tier"], "{rules}");
    let strict_rule = &rules.as_array().unwrap()[0];
    assert_eq!(
        strict_rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
        1
    );
}

#[test]
fn a_setting_the_principal_cannot_read_is_unknown_and_refuses_unless_accepted() {
    // IAM enforced after the three requests that create the admin user.
    let (m, admin) = Moto::start_with_iam();
    let dir = tempfile::tempdir().unwrap();
    let admin = (admin.0.as_str(), admin.1.as_str());
    let (bucket, key) = m.bucket_and_key_as(admin, "unknown");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();

    // Everything allowed except reading the versioning setting.
    let limited = dir.path().join("limited.json");
    fs::write(
        &limited,
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"*","Resource":"*"},
            {"Effect":"Deny","Action":"s3:GetBucketVersioning","Resource":"*"}]}"#,
    )
    .unwrap();
    let user = m.ctl_as(admin, &["iam-user", "limited", limited.to_str().unwrap()]);
    let user = (
        user["key"].as_str().unwrap().to_string(),
        user["secret"].as_str().unwrap().to_string(),
    );

    let mut fx = fixture(&m, &bucket, &key, "", src.path());
    fx.env = aws_env(admin);
    fx.init();
    fx.env = aws_env((&user.0, &user.1));
    let audit = fx.run(&["audit", "--json"]).code(3).json();
    let versioning = audit["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "versioning")
        .unwrap()
        .clone();
    assert_eq!(versioning["status"], "unknown", "{audit}");
    assert!(
        versioning["finding"]
            .as_str()
            .unwrap()
            .contains("not allowed to read"),
        "{versioning}"
    );
    let run = fx.run(&["backup", "now"]).code(3);
    assert!(run.stderr.contains("UNKNOWN versioning"), "{}", run.stderr);
    // Recorded for monitoring as a refusal.
    let status = fx.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["last_run"]["result"], "refused", "{status}");
    assert_eq!(status[0]["hardening_failures_total"], 1);
    assert_eq!(status[0]["last_hardening"]["passed"], false);
    assert_eq!(
        status[0]["last_hardening"]["blocking"],
        serde_json::json!(["versioning"])
    );
    let metrics = fs::read_to_string(fx.state().join("vaultline.prom")).unwrap();
    assert!(
        metrics.contains("vaultline_hardening_failures_total{job=\"j\"} 1\n"),
        "{metrics}"
    );

    // Accepting unknowns lets the run go ahead (and says so in the report).
    let text = fs::read_to_string(&fx.config).unwrap();
    fs::write(
        &fx.config,
        text.replace("[[jobs]]", "[hardening]\naccept-unknown = true\n\n[[jobs]]"),
    )
    .unwrap();
    fx.run(&["backup", "now"]).ok();
}

/// The finding of check `id` in an audit report.
fn finding<'a>(audit: &'a Value, id: &str) -> &'a Value {
    audit["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {audit}"))
}

#[test]
fn a_lifecycle_rule_that_deletes_backups_refuses_the_backup_but_transitions_pass() {
    // The shared server: this test never touches the account's settings, and
    // the checks it does not set up are `warn` by default.
    let m = moto();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let (bucket, key) = m.bucket_and_key("lc-expiry");
    let jobs = format!("{}\n[jobs.retention]\nkeep-daily = 14\n", job("j", &[src.path()]));
    let fx = s3_fixture(m, &bucket, &key, &jobs);
    fx.init();
    fx.run(&["backup", "now"]).ok();

    let archive = serde_json::json!({"ID": "archive", "Status": "Enabled",
        "Filter": {"Tag": {"Key": "vaultline-tier", "Value": "archive"}},
        "Transitions": [{"Days": 30, "StorageClass": "DEEP_ARCHIVE"}]});
    let abort = serde_json::json!({"ID": "abort-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}});
    let refused = |rules: Value, found: &str, fix: &str| {
        m.ctl(&["put-lifecycle", &bucket, &rules.to_string()]);
        let audit = fx.run(&["audit", "--json"]).code(3).json();
        assert_eq!(audit["passed"], false);
        let f = finding(&audit, "lifecycle-no-early-expiry");
        assert_eq!(f["status"], "fail", "{f}");
        assert_eq!(f["severity"], "high");
        assert_eq!(f["policy"], "abort");
        assert_eq!(f["finding"], found, "{f}");
        assert_eq!(f["fix"], fix, "{f}");
        // Every other required check passes: this rule alone refuses the run.
        let blocking: Vec<&str> = audit["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["policy"] == "abort" && c["status"] != "pass")
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(blocking, vec!["lifecycle-no-early-expiry"], "{audit}");

        let text = fx.run(&["audit"]).code(3);
        assert!(
            text.stdout
                .contains("FAIL    lifecycle-no-early-expiry   high     [abort] - | -")
                && text.stdout.contains(&format!("found: {found}")),
            "{}",
            text.stdout
        );
        let before = m.ctl(&["versions", &bucket]);
        let run = fx.run(&["backup", "now"]).code(3);
        assert!(
            run.stderr
                .contains("fails required check(s) lifecycle-no-early-expiry "),
            "{}",
            run.stderr
        );
        assert_eq!(m.ctl(&["versions", &bucket]), before, "nothing was written");
    };
    let edit = format!(
        " — edit the rules: aws s3api get-bucket-lifecycle-configuration --bucket {bucket} > rules.json, change \
         them, aws s3api put-bucket-lifecycle-configuration --bucket {bucket} --lifecycle-configuration \
         file://rules.json"
    );

    // Expiring current versions under the repository's prefix.
    refused(
        serde_json::json!([archive, abort, {"ID": "expire-old", "Status": "Enabled",
            "Filter": {"Prefix": "vaultline/"}, "Expiration": {"Days": 30}}]),
        "rule expire-old expires current versions after 30 days under prefix vaultline/: S3 would delete live \
         backups",
        &format!(
            "rule expire-old: remove its Expiration, or narrow its filter so that it leaves vaultline/ alone \
             (vaultline forget deletes what the retention policy lets go){edit}"
        ),
    );
    // Expiring noncurrent versions sooner than the retention policy keeps them.
    refused(
        serde_json::json!([archive, {"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7}}]),
        "rule tidy expires noncurrent versions 7 days after they become noncurrent on every object, sooner than \
         the 14 days job j keeps snapshots (keep-daily = 14): a deleted backup would be gone for good before the \
         configuration lets it go",
        &format!(
            "rule tidy: raise NoncurrentDays to at least 14, or remove its NoncurrentVersionExpiration{edit}"
        ),
    );

    // Transitions, aborted uploads and noncurrent versions kept long enough
    // delete nothing vaultline still needs.
    m.ctl(&[
        "put-lifecycle",
        &bucket,
        &serde_json::json!([archive, abort, {"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": "vaultline/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 14}},
            {"ID": "old-logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 1}},
            {"ID": "paused", "Status": "Disabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}])
        .to_string(),
    ]);
    let audit = fx.run(&["audit", "--json"]).ok().json();
    assert_eq!(
        finding(&audit, "lifecycle-no-early-expiry")["status"],
        "pass",
        "{audit}"
    );
    fx.run(&["backup", "now"]).ok();
}
