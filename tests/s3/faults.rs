//! Interrupted runs: a backup killed in the middle of a multipart upload
//! commits nothing, and the next run aborts the leftover upload and completes.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::moto::{job, moto, repository_settings, s3_fixture};
use crate::util::{assert_same_tree, restored};

/// `len` bytes of incompressible, deterministic data (xorshift64*).
pub fn write_noise(path: &std::path::Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

#[test]
fn sigkill_during_multipart_upload_commits_nothing_and_the_next_run_cleans_up() {
    let m = moto();
    let (bucket, key) = m.bucket_and_key("sigkill");
    let src = tempfile::tempdir().unwrap();
    write_noise(&src.path().join("big.bin"), 300 << 20, 42);
    fs::write(src.path().join("small.txt"), b"small").unwrap();
    let fx = s3_fixture(m, &bucket, &key, &job("big", &[src.path()]));
    repository_settings(&fx, "part-size-mib = 5\nparts-in-flight = 2\n");
    fx.init();

    let mut child = fx
        .command(&["backup", "now"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let uploads = m.ctl(&["uploads", &bucket]);
        if !uploads.as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no multipart upload started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let left = m.ctl(&["uploads", &bucket]);
    assert_eq!(
        left.as_array().unwrap().len(),
        1,
        "the killed run left its upload: {left}"
    );
    let snaps = fx.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(snaps, serde_json::json!([]), "no snapshot was committed");

    let run = fx.run(&["backup", "now"]).ok();
    assert!(
        run.stderr.contains("aborting an incomplete upload of s3://")
            && run.stderr.contains("left by an interrupted run"),
        "{}",
        run.stderr
    );
    assert_eq!(
        m.ctl(&["uploads", &bucket]),
        serde_json::json!([]),
        "no parts left behind"
    );
    let snaps = fx.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let target = fx.path().join("t");
    fx.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(src.path(), &restored(&target, src.path()));
}

/// Peak resident memory of a running process, polled from /proc until it
/// exits (VmHWM is the kernel's own high-water mark, so polling only has to
/// catch the last value before exit).
fn wait_with_peak_rss(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Ok(status) = fs::read_to_string(&status_path) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn backup_of_several_gib_through_s3_stays_within_a_fixed_memory_bound() {
    const BOUND_MIB: u64 = 256;
    const INPUT: u64 = 3 << 30;
    let m = moto();
    let (bucket, key) = m.bucket_and_key("memory");
    let src = tempfile::tempdir().unwrap();
    write_noise(&src.path().join("large.bin"), INPUT, 7);
    let fx = s3_fixture(m, &bucket, &key, &job("large", &[src.path()]));
    fx.init();
    let child = fx
        .command(&["backup", "now", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_kib) = wait_with_peak_rss(child);
    assert!(status.success(), "backup failed: {status}");
    eprintln!(
        "backup of {} GiB through S3: peak RSS {:.1} MiB",
        INPUT >> 30,
        peak_kib as f64 / 1024.0
    );
    assert!(
        peak_kib < BOUND_MIB * 1024,
        "peak RSS {peak_kib} KiB exceeds {BOUND_MIB} MiB"
    );
    let objects = m.ctl(&["objects", &bucket]);
    let stored: u64 = objects
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["key"].as_str().unwrap().ends_with(".archive"))
        .map(|o| o["size"].as_u64().unwrap())
        .sum();
    assert!(stored > INPUT, "the whole input was uploaded ({stored} bytes)");
}
