//! Write-only hosts, proven against a server that really denies: moto with
//! IAM enforcement on. The backup role printed by `vaultline policy iam`
//! can back up but not read its own history; the restore role can restore;
//! a role without `kms:Decrypt` fails precisely and writes nothing.
//!
//! Two adaptations to moto, both to statements moto cannot evaluate: it
//! authorizes every KMS call against the resource `*` (not the key ARN), so
//! the Resource of the printed KMS statements is widened to `*`; and it
//! evaluates no condition of an identity policy at all (moto 5.2.5,
//! `moto/iam/access_control.py`: S3 requests are checked without request
//! context, so every condition matches), which would turn each conditioned
//! Deny (`NeverOverwrite`, `NoLocks`, `NoOtherLockMode`, `NoLongerLock`)
//! into "deny every upload", so those are left out. Every other statement,
//! conditioned Allows included (they are then unconditional), is used
//! exactly as printed. What the conditions allow and deny is asserted
//! statement by statement in the unit tests of `agent/src/cloud/iam.rs`.

use std::fs;

use serde_json::Value;

use crate::util::moto::{ADMIN, Moto, aws_env, job, unique_bucket, write_s3_config};
use crate::util::{Fixture, assert_same_tree, restored};

fn creds(v: &Value) -> (String, String) {
    (
        v["key"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

/// The printed policy, adapted to moto's KMS resource model and to its
/// ignoring conditions.
fn for_moto(mut policy: Value) -> Value {
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|st| !(st["Effect"] == "Deny" && st.get("Condition").is_some()));
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
fn backup_role_cannot_read_back_restore_role_can() {
    let (m, admin) = Moto::start_with_iam();
    let dir = tempfile::tempdir().unwrap();
    let admin = (admin.0.as_str(), admin.1.as_str());

    // From here on every request is authenticated and authorized.
    let denied = std::process::Command::new(crate::util::moto::python())
        .arg(crate::util::repo_root().join("tests/support/awsctl.py"))
        .args(["create-key"])
        .env("AWS_ENDPOINT_URL", &m.endpoint)
        .env("AWS_CA_BUNDLE", &m.ca)
        .env("AWS_ACCESS_KEY_ID", ADMIN.0)
        .env("AWS_SECRET_ACCESS_KEY", ADMIN.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "the server enforces IAM: unknown credentials are refused"
    );

    let (bucket, key) = m.bucket_and_key_as(admin, "iam");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("payroll.csv"), b"alice,100\nbob,200\n").unwrap();
    // Large enough to be stored as chunks (docs/FORMAT.md §15.1).
    fs::write(src.path().join("ledger.db"), crate::util::noise(12 << 20, 5)).unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/notes"), b"n").unwrap();
    let jobs = job("data", &[src.path()]);

    let as_principal = |creds: (&str, &str)| {
        let mut fx = Fixture::new("");
        write_s3_config(&fx, &m, &bucket, &key, &jobs);
        fx.env = aws_env(creds);
        fx
    };
    let adm = as_principal(admin);
    adm.init();
    let policy = |role: &str| {
        let v: Value =
            serde_json::from_str(&adm.run(&["policy", "iam", "--role", role]).ok().stdout).unwrap();
        let path = dir.path().join(format!("{role}.json"));
        fs::write(&path, serde_json::to_string(&for_moto(v.clone())).unwrap()).unwrap();
        (v, path)
    };
    let (backup_policy, backup_file) = policy("backup");
    let (_, restore_file) = policy("restore");

    // The printed backup policy is write-only by construction.
    let text = backup_policy.to_string();
    assert!(!text.contains("kms:Decrypt"), "{text}");
    for st in backup_policy["Statement"].as_array().unwrap() {
        if st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "s3:GetObject")
        {
            assert_eq!(
                st["Resource"],
                format!("arn:aws:s3:::{bucket}/vaultline/repository.json"),
                "GetObject only on the repository marker"
            );
        }
    }

    // A restore policy without kms:Decrypt: may read objects, not unwrap keys.
    let mut no_decrypt: Value = serde_json::from_str(&fs::read_to_string(&restore_file).unwrap()).unwrap();
    no_decrypt["Statement"].as_array_mut().unwrap().retain(|st| {
        !st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "kms:Decrypt")
    });
    let no_decrypt_file = dir.path().join("no-decrypt.json");
    fs::write(&no_decrypt_file, no_decrypt.to_string()).unwrap();

    let user = |name: &str, file: &std::path::Path| {
        creds(&m.ctl_as(admin, &["iam-user", name, file.to_str().unwrap()]))
    };
    let backup_creds = user("backup", &backup_file);
    let restore_creds = user("restore", &restore_file);
    let no_decrypt_creds = user("nodecrypt", &no_decrypt_file);

    // The backup role backs up...
    let backup = as_principal((&backup_creds.0, &backup_creds.1));
    backup.run(&["backup", "now"]).ok();
    // ...and cannot read what it wrote.
    let target = backup.path().join("target");
    let run = backup
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .code(4);
    assert!(
        run.stderr.contains("AccessDenied")
            && run.stderr.contains("a write-only backup role cannot, by design"),
        "{}",
        run.stderr
    );
    assert!(
        !target.join("payroll.csv").exists()
            && fs::read_dir(&target).map_or(true, |mut d| d.next().is_none())
    );

    // An incremental run over a changed large file, on the role that reads
    // nothing back: what it needs to find its chunks and share its tree
    // listing is in its local record.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(src.path().join("ledger.db"))
            .unwrap();
        f.write_all_at(&crate::util::noise(65536, 6), 6 << 20).unwrap();
    }
    fs::write(src.path().join("sub/notes"), b"n2").unwrap();
    let second = backup.run(&["--json", "backup", "now"]).ok().json()[0].clone();
    assert!(second["parent"].is_string(), "an incremental run: {second}");
    assert_eq!(second["archived_files"], 2, "{second}");
    assert!(
        second["new_bytes"].as_u64().unwrap() < 6 << 20,
        "the chunks around the change, not the 12 MiB file: {second}"
    );

    // Without kms:Decrypt the objects can be fetched but not opened.
    let nd = as_principal((&no_decrypt_creds.0, &no_decrypt_creds.1));
    let target = nd.path().join("target");
    let run = nd
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .code(4);
    assert!(
        run.stderr
            .contains(&format!("aws-kms key {key}: Decrypt failed: AccessDenied")),
        "{}",
        run.stderr
    );
    assert!(
        fs::read_dir(&target).map_or(true, |mut d| d.next().is_none()),
        "nothing written"
    );

    // The restore role restores.
    let rs = as_principal((&restore_creds.0, &restore_creds.1));
    let target = rs.path().join("target");
    let run = rs
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));
    // ... and ships its own audit record before it exits, with what the
    // printed restore policy allows.
    assert!(
        !run.stderr.contains("shipped by the next command"),
        "{}",
        run.stderr
    );
    let segments: Vec<String> = m
        .ctl_as(admin, &["objects", &bucket])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .filter(|k| k.contains("/audit/"))
        .collect();
    let mut restores = 0;
    for name in &segments {
        let local = rs.path().join("segment");
        m.ctl_as(admin, &["get", &bucket, name, local.to_str().unwrap()]);
        restores += fs::read_to_string(&local)
            .unwrap()
            .matches("\"restore-finished\"")
            .count();
    }
    assert!(
        restores >= 1,
        "the restore's record reached the bucket: {segments:?}"
    );
}

#[test]
fn backup_role_locks_within_the_bound_it_is_printed_with() {
    let (m, admin) = Moto::start_with_iam();
    let dir = tempfile::tempdir().unwrap();
    let admin = (admin.0.as_str(), admin.1.as_str());
    let bucket = unique_bucket("iam-lock");
    m.ctl_as(admin, &["create-bucket", &bucket, "--object-lock"]);
    let key = m.ctl_as(admin, &["create-key"])["arn"]
        .as_str()
        .unwrap()
        .to_string();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("ledger"), b"locked for three days").unwrap();
    let jobs = format!(
        "{}\n[jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 3\n",
        job("data", &[src.path()])
    );
    let as_principal = |creds: (&str, &str)| {
        let mut fx = Fixture::new("");
        write_s3_config(&fx, &m, &bucket, &key, &jobs);
        fx.env = aws_env(creds);
        fx
    };
    let adm = as_principal(admin);
    adm.init();

    // The printed policy grants locks only in the job's mode and for at
    // most its days plus one, and denies any other lock on uploads.
    let policy: Value =
        serde_json::from_str(&adm.run(&["policy", "iam", "--role", "backup"]).ok().stdout).unwrap();
    let sid = |s: &str| {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["Sid"] == s)
            .unwrap_or_else(|| panic!("no statement {s}: {policy}"))
            .clone()
    };
    let objects = format!("arn:aws:s3:::{bucket}/vaultline/testhost/*");
    assert_eq!(
        sid("LockOwnObjectsWithinConfiguredRetention"),
        serde_json::json!({"Sid": "LockOwnObjectsWithinConfiguredRetention", "Effect": "Allow",
            "Action": ["s3:PutObjectRetention"], "Resource": objects,
            "Condition": {"StringEquals": {"s3:object-lock-mode": ["GOVERNANCE"]},
                "NumericLessThanEquals": {"s3:object-lock-remaining-retention-days": "4"}}})
    );
    assert_eq!(
        sid("NoLongerLock")["Condition"],
        serde_json::json!({"NumericGreaterThan": {"s3:object-lock-remaining-retention-days": "4"}})
    );
    assert_eq!(sid("NoOtherLockMode")["Effect"], "Deny");
    let file = dir.path().join("backup.json");
    fs::write(&file, for_moto(policy.clone()).to_string()).unwrap();
    let backup_creds = creds(&m.ctl_as(admin, &["iam-user", "backup", file.to_str().unwrap()]));

    // The backup role writes a locked snapshot...
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let start = secs();
    as_principal((&backup_creds.0, &backup_creds.1))
        .run(&["backup", "now"])
        .ok();
    let end = secs();
    // ...whose every object is locked in the configured mode until its start
    // plus three days: within the printed bound, so the conditions the
    // policy carries on AWS allow exactly these requests.
    let locked: Vec<String> = m
        .ctl_as(admin, &["objects", &bucket])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .filter(|k| k.ends_with(".manifest") || k.ends_with(".archive"))
        .collect();
    assert!(locked.len() >= 2, "a manifest and an archive: {locked:?}");
    for name in &locked {
        let r = m.ctl_as(admin, &["retention", &bucket, name]);
        assert_eq!(r["mode"], "GOVERNANCE", "{name}: {r}");
        let until = r["until_epoch"].as_i64().unwrap();
        let days = 3 * 86_400;
        assert!(
            (start - 1 + days..=end + days).contains(&until),
            "{name}: locked until {until}, the run took {start}..{end}"
        );
        assert!(until - start < 4 * 86_400, "within the printed bound");
    }
}
