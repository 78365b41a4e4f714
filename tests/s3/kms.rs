//! KMS: data keys are bound to their encryption context, and a key that
//! cannot be used stops a run with an error naming key, object and operation.

use std::fs;

use crate::roundtrip::backed_up;
use crate::util::files_under;
use crate::util::moto::moto;

#[test]
fn a_wrapped_key_presented_under_another_context_is_refused() {
    let m = moto();
    let (fx, _src, bucket, _key) = backed_up("context", &[("f", b"first".as_slice())]);
    fx.run(&["backup", "now", "--full"]).ok();
    let snaps = fx.run(&["snapshots", "--json"]).ok().json();
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{snaps}");
    let (a, b) = (&ids[0], &ids[1]);
    assert_eq!(a.len(), b.len());

    // Objects of B with their headers rewritten to claim to be A's (same
    // lengths, so only the context strings change), stored under A's names:
    // the name check passes.
    let archive = |id: &str| format!("vaultline/testhost/j/archives/{id}/0.archive");
    let manifest = |id: &str| format!("vaultline/testhost/j/snapshots/{id}.manifest");
    let relabel = |from: &str, to: &str| {
        let local = fx.path().join("object");
        m.ctl(&["get", &bucket, from, local.to_str().unwrap()]);
        let mut bytes = fs::read(&local).unwrap();
        let header_len = 2048.min(bytes.len());
        let mut replaced = 0;
        for i in 0..header_len - b.len() {
            if &bytes[i..i + b.len()] == b.as_bytes() {
                bytes[i..i + b.len()].copy_from_slice(a.as_bytes());
                replaced += 1;
            }
        }
        assert!(
            replaced >= 2,
            "the header names the snapshot in `snapshot` and `object`"
        );
        fs::write(&local, &bytes).unwrap();
        m.ctl(&["put", &bucket, to, local.to_str().unwrap()]);
    };
    let target = fx.path().join("target");
    let restore_a = || {
        fx.run(&["restore", a, "--job", "j", "--target", target.to_str().unwrap()])
            .code(5)
    };

    // The archive: its wrapped key is taken from A's manifest (the current
    // copy), so KMS unwraps A's key, which the commitment in B's header rejects.
    relabel(&archive(b), &archive(a));
    let run = restore_a();
    assert!(run.stderr.contains("key commitment mismatch"), "{}", run.stderr);
    assert_eq!(
        files_under(&target),
        Vec::<std::path::PathBuf>::new(),
        "nothing restored"
    );

    // The manifest: its wrapped key is B's, presented to KMS under A's
    // context; KMS must refuse it.
    relabel(&manifest(b), &manifest(a));
    let run = restore_a();
    assert!(
        run.stderr.contains(&format!(
            "KMS Decrypt refused it for object {}: InvalidCiphertextException",
            manifest(a)
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        files_under(&target),
        Vec::<std::path::PathBuf>::new(),
        "nothing restored"
    );
}

#[test]
fn a_disabled_key_stops_restore_and_backup_naming_key_object_and_operation() {
    let m = moto();
    let (fx, _src, bucket, key) = backed_up("disabled", &[("f", b"data".as_slice())]);
    let before = m.ctl(&["objects", &bucket]);
    m.ctl(&["disable-key", &key]);

    let target = fx.path().join("target");
    let run = fx
        .run(&[
            "restore",
            "latest",
            "--job",
            "j",
            "--target",
            target.to_str().unwrap(),
        ])
        .code(4);
    let snaps = m.ctl(&["objects", &bucket]);
    let manifest = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .find(|k| k.ends_with(".manifest"))
        .unwrap();
    assert!(
        run.stderr
            .contains(&format!("aws-kms key {key}: Decrypt failed: DisabledException"))
            && run.stderr.contains(&format!("(object {manifest})")),
        "{}",
        run.stderr
    );
    assert_eq!(
        files_under(&target),
        Vec::<std::path::PathBuf>::new(),
        "nothing restored"
    );

    let run = fx.run(&["backup", "now"]).code(4);
    assert!(
        run.stderr.contains(&format!(
            "aws-kms key {key}: GenerateDataKey failed: DisabledException"
        )),
        "{}",
        run.stderr
    );
    // No archive or manifest; only the audit trail of what was tried.
    let data = |objects: serde_json::Value| -> Vec<serde_json::Value> {
        objects
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| !o["key"].as_str().unwrap().contains("/audit/"))
            .cloned()
            .collect()
    };
    assert_eq!(
        data(m.ctl(&["objects", &bucket])),
        data(before.clone()),
        "nothing uploaded"
    );
}

#[test]
fn a_configured_key_other_than_the_repositorys_is_refused_before_any_work() {
    let m = moto();
    let (fx, _src, bucket, key) = backed_up("otherkey", &[("f", b"data".as_slice())]);
    let other = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
    let text = fs::read_to_string(&fx.config).unwrap().replace(&key, &other);
    fs::write(&fx.config, text).unwrap();
    let before = m.ctl(&["objects", &bucket]);
    let run = fx.run(&["backup", "now"]).code(2);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "error: this repository was sealed with aws-kms key {key}, but the configured key is aws-kms key \
             {other}"
        )
    );
    assert_eq!(m.ctl(&["objects", &bucket]), before, "nothing uploaded");
}

#[test]
fn credentials_never_reach_the_output_even_with_sdk_debug_logs() {
    let (fx, _src, _bucket, _key) = backed_up("secrets", &[("f", b"data".as_slice())]);
    let secret = crate::util::moto::ADMIN.1;
    let run = fx.run(&["-vv", "backup", "now"]).ok();
    assert!(run.stderr.len() > 1000, "-vv shows the SDK's debug logs");
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    let target = fx.path().join("t");
    let run = fx
        .run(&["-vv", "restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
}

/// A writer to the bucket (another account's role, or anyone who can put
/// objects) plants a newer snapshot sealed under a KMS key of its own. KMS
/// would decrypt it for anyone allowed to use that key; vaultline refuses
/// it because the key is not one the operator configured, and goes on with
/// the real snapshots. Listing the planted key as accepted (a rotation
/// window) is what makes it readable.
#[test]
fn objects_sealed_under_another_kms_key_are_refused_by_name() {
    let m = moto();
    let (bucket, key_a) = m.bucket_and_key("pinned-a");
    let (other_bucket, key_b) = m.bucket_and_key("pinned-b");
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    fs::write(&file, b"real").unwrap();
    let jobs = crate::util::moto::job("j", &[src.path()]);
    let fx = crate::util::moto::s3_fixture(m, &bucket, &key_a, &jobs);
    fx.init();
    let real = fx.run(&["--json", "backup", "now"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // The same host, job and prefix in another bucket under key B; its
    // objects are copied into the real bucket under the same names.
    fs::write(&file, b"planted").unwrap();
    let attacker = crate::util::moto::s3_fixture(m, &other_bucket, &key_b, &jobs);
    attacker.init();
    let planted = attacker.run(&["--json", "backup", "now"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = fx.path().join("object");
    for name in m.object_sizes(&other_bucket).keys() {
        if name.contains(&planted) {
            m.ctl(&["get", &other_bucket, name, copy.to_str().unwrap()]);
            m.ctl(&["put", &bucket, name, copy.to_str().unwrap()]);
        }
    }
    fs::write(&file, b"real").unwrap();
    let refusal = format!("is wrapped by key {key_b}, which is not a trusted key (trusted: {key_a})");

    let listed = fx.run(&["--json", "snapshots"]).code(5);
    let list = listed.json();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == planted.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["kind"], "unreadable", "{row}");
    assert!(row["error"].as_str().unwrap().contains(&refusal), "{row}");

    let target = fx.path().join("t");
    let run = fx
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert!(
        run.stderr.contains(&format!("skipping snapshot {planted}")),
        "{}",
        run.stderr
    );
    let restored = files_under(&target);
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(fs::read(&restored[0]).unwrap(), b"real");

    let direct = fx
        .run(&[
            "restore",
            &planted,
            "--target",
            fx.path().join("t2").to_str().unwrap(),
        ])
        .code(5);
    assert!(direct.stderr.contains(&refusal), "{}", direct.stderr);
    assert!(
        files_under(&fx.path().join("t2")).is_empty(),
        "nothing of it was written"
    );

    let verify = fx.run(&["verify", "--all"]).code(5);
    assert!(
        verify.stdout.contains(&format!("{real} (j): ok")),
        "{}",
        verify.stdout
    );
    assert!(verify.stderr.contains(&refusal), "{}", verify.stderr);

    // Accepted by the operator (e.g. the old key of a rotation): readable.
    let config = fs::read_to_string(&fx.config).unwrap();
    let accepting = config.replacen(
        &format!("key-id = \"{key_a}\"\n"),
        &format!("key-id = \"{key_a}\"\naccepted-keys = [\"{key_b}\"]\n"),
        1,
    );
    assert_ne!(accepting, config);
    fs::write(&fx.config, accepting).unwrap();
    let t3 = fx.path().join("t3");
    fx.run(&["restore", &planted, "--target", t3.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(&files_under(&t3)[0]).unwrap(), b"planted");
}
