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
use crate::util::moto::{ADMIN, Moto, aws_env, job, unique_bucket, write_s3_config};

const CHECKS: [&str; 12] = [
    "public-access-block",
    "no-public-policy",
    "acls-disabled",
    "versioning",
    "default-encryption",
    "tls-only",
    "access-logging",
    "lifecycle-archive",
    "lifecycle-abort-mpu",
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
