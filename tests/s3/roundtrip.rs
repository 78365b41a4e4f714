//! Backup and restore through S3 + KMS, and what the bucket holds afterwards.

use std::fs;

use crate::util::moto::{job, moto, s3_fixture};
use crate::util::{assert_same_tree, restored};

#[test]
fn small_tree_round_trips_through_s3_and_kms() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("small");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), b"hello s3").unwrap();
    fs::create_dir(src.path().join("dir")).unwrap();
    fs::write(src.path().join("dir/b.bin"), vec![7u8; 100_000]).unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("small", &[src.path()]));
    fx.init();
    fx.run(&["backup", "now"]).ok();
    let target = fx.path().join("target");
    fx.run(&[
        "restore",
        "latest",
        "--job",
        "small",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));
}
