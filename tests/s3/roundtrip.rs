//! Backup and restore through S3 + KMS, restore on a fresh machine from the
//! configuration alone, and what an independent client sees in the bucket.

use std::fs;

use serde_json::Value;

use crate::util::moto::{job, moto, repository_settings, s3_fixture};
use crate::util::{Fixture, assert_same_tree, corpus, restored};

/// Strings planted in file contents and file names; none may appear in any
/// stored object.
const MARKERS: [&str; 3] = [
    "VAULTLINE-CANARY-CONTENT-7f3a",
    "vaultline-canary-name-91c2",
    "canary-dir-55e0",
];

fn plant_markers(dir: &std::path::Path) {
    fs::create_dir_all(dir.join(MARKERS[2])).unwrap();
    fs::write(
        dir.join(MARKERS[2]).join(format!("{}.txt", MARKERS[1])),
        format!("secret: {}\n", MARKERS[0]).repeat(50),
    )
    .unwrap();
    fs::write(dir.join("notes.txt"), MARKERS[0]).unwrap();
}

#[test]
fn corpus_round_trips_and_restores_on_a_fresh_machine() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("roundtrip");
    let tree = corpus(200, 7);
    let canaries = tempfile::tempdir().unwrap();
    plant_markers(canaries.path());
    let jobs = job("data", &[&tree, canaries.path()]);
    let fx = s3_fixture(m, &bucket, &key, &jobs);
    fx.init();
    fx.run(&["backup", "now"]).ok();

    // A fresh machine: another state directory, no cache, only the config.
    let fresh = s3_fixture(m, &bucket, &key, &jobs);
    let list = fresh.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let target = fresh.path().join("target");
    fresh
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(&tree, &restored(&target, &tree));
    assert_same_tree(canaries.path(), &restored(&target, canaries.path()));
    fresh.run(&["verify", "--all"]).ok();

    // The bucket, seen by boto3: archives tagged and in the configured
    // class, manifests and the marker plain STANDARD and untagged.
    let objects = m.ctl(&["objects", &bucket]);
    let objects = objects.as_array().unwrap();
    let (archives, others): (Vec<&Value>, Vec<&Value>) = objects
        .iter()
        .partition(|o| o["key"].as_str().unwrap().ends_with(".archive"));
    assert_eq!(archives.len(), 1, "{objects:?}");
    for a in &archives {
        assert_eq!(a["storage_class"], "STANDARD", "{a}");
        assert_eq!(a["tags"]["vaultline-tier"], "archive", "{a}");
        assert!(
            a["size"].as_u64().unwrap() > 8 << 20,
            "archive went through multipart: {a}"
        );
    }
    assert_eq!(
        others.len(),
        5,
        "a manifest, its node pack, the marker, and an audit segment of each machine's trail (the backup's, \
         the fresh machine's restore): {objects:?}"
    );
    for o in &others {
        let key = o["key"].as_str().unwrap();
        if key.ends_with(".nodes") || key.ends_with(".manifest") {
            assert_eq!(o["storage_class"], "STANDARD", "{o}");
            assert!(
                o["tags"].as_object().unwrap().is_empty(),
                "never moved to a cold tier: {o}"
            );
        }
    }
    let local = fs::read_to_string(fx.state().join("audit.jsonl")).unwrap();
    let first: Value = serde_json::from_str(local.lines().next().unwrap()).unwrap();
    let trail = first["trail"].as_str().unwrap();
    let segment = others
        .iter()
        .find(|o| {
            o["key"]
                .as_str()
                .unwrap()
                .starts_with(&format!("vaultline/testhost/audit/{trail}/"))
        })
        .expect("the audit trail was shipped under the host's audit prefix");
    assert!(
        first["who"].as_str().unwrap().starts_with("arn:aws:"),
        "who is the caller identity from STS: {first}"
    );
    assert_eq!(
        segment["size"].as_u64().unwrap(),
        local.len() as u64,
        "every line was shipped"
    );
    for o in &others {
        assert_eq!(o["storage_class"], "STANDARD", "{o}");
        assert_eq!(
            o["tags"],
            serde_json::json!({}),
            "control objects are untagged: {o}"
        );
    }

    // Nothing leaks in plaintext, names included.
    let mut args = vec!["scan", bucket.as_str()];
    args.extend(MARKERS);
    let scan = m.ctl(&args);
    assert_eq!(
        scan["objects"].as_u64(),
        Some(objects.len() as u64),
        "every object is scanned (the archive and the others above)"
    );
    assert_eq!(
        scan["found"],
        serde_json::json!([]),
        "plaintext in the bucket: {scan}"
    );
}

#[test]
fn archives_go_to_the_configured_storage_class_and_tag() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("class");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"cold data").unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("cold", &[src.path()]));
    repository_settings(
        &fx,
        "storage-class = \"GLACIER_IR\"\ntier-tag = \"lifecycle=cold\"\n",
    );
    fx.init();
    fx.run(&["backup", "now"]).ok();
    let objects = m.ctl(&["objects", &bucket]);
    for o in objects.as_array().unwrap() {
        let name = o["key"].as_str().unwrap();
        if name.ends_with(".archive") {
            assert_eq!(o["storage_class"], "GLACIER_IR", "{o}");
            assert_eq!(o["tags"], serde_json::json!({"lifecycle": "cold"}), "{o}");
        } else {
            assert_eq!(o["storage_class"], "STANDARD", "{o}");
            assert_eq!(o["tags"], serde_json::json!({}), "{o}");
        }
    }
    // GLACIER_IR is readable at once: restore works without a thaw.
    let target = fx.path().join("t");
    fx.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));
}

#[test]
fn tls_only_bucket_accepts_the_agent_and_plain_http_is_refused() {
    let m = moto();
    let bucket = crate::util::moto::unique_bucket("tlsonly");
    m.ctl(&["create-bucket", &bucket]); // hardened: its policy denies requests without TLS
    let key = m.ctl(&["create-key"])["arn"].as_str().unwrap().to_string();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"over tls").unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("tls", &[src.path()]));
    fx.init();
    fx.run(&["backup", "now"]).ok();
    let target = fx.path().join("t");
    fx.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));

    // The same configuration pointed at http:// is refused before any request.
    let http = m.endpoint.replace("https://", "http://");
    let text = fs::read_to_string(&fx.config)
        .unwrap()
        .replacen(&m.endpoint, &http, 1);
    fs::write(&fx.config, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("endpoint = \"http://"))
        .unwrap()
        + 1;
    let run = fx.run(&["snapshots"]).code(2);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "error: {}:{line}:12: repository.endpoint: plain-http endpoint \"{http}\" refused: requests, \
             data and signatures would cross the network unencrypted; use https, or set aws.allow-http = \
             true for a trusted test network",
            fx.config.display()
        )
    );
}

/// A fixture on the shared server with one small job, initialized and backed up.
pub fn backed_up(test: &str, files: &[(&str, &[u8])]) -> (Fixture, tempfile::TempDir, String, String) {
    let m = moto();
    let (bucket, key) = m.bucket_and_key(test);
    let src = tempfile::tempdir().unwrap();
    for (name, data) in files {
        fs::write(src.path().join(name), data).unwrap();
    }
    let fx = s3_fixture(m, &bucket, &key, &job("j", &[src.path()]));
    fx.init();
    fx.run(&["backup", "now"]).ok();
    (fx, src, bucket, key)
}
