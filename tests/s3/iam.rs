//! Write-only hosts, proven against a server that really denies: moto with
//! IAM enforcement on. The backup role printed by `vaultline policy iam`
//! can back up but not read its own history; the restore role can restore;
//! a role without `kms:Decrypt` fails precisely and writes nothing.
//!
//! Two adaptations to moto, both to statements moto cannot evaluate: it
//! authorizes every KMS call against the resource `*` (not the key ARN), so
//! the Resource of the printed KMS statements is widened to `*`; and it
//! treats condition keys it does not know (`s3:if-none-match`,
//! `s3:ObjectCreationOperation`) as always matching, which would turn the
//! `NeverOverwrite` Deny into "deny every upload", so that statement is left
//! out. Every other statement is used exactly as printed.

use std::fs;

use serde_json::Value;

use crate::util::moto::{ADMIN, Moto, aws_env, job, write_s3_config};
use crate::util::{Fixture, assert_same_tree, restored};

fn creds(v: &Value) -> (String, String) {
    (
        v["key"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

/// The printed policy, adapted to moto's KMS resource model.
fn for_moto(mut policy: Value) -> Value {
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|st| st["Sid"] != "NeverOverwrite");
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
    rs.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));
}
