//! A hostile snapshot sealed with the repository's own key: authentication
//! passes, the archive matches its manifest entry for entry, and still
//! restore must not write anything outside its target.
//!
//! The snapshot is written straight into the local repository the way the
//! agent writes one (object names, encryption contexts, key envelopes,
//! manifest lines), with a tar built from raw header bytes because the `tar`
//! crate refuses to write `..` and absolute paths.

use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vaultline_crypto::{EncryptionContext, KeyEnvelope, KeyWrap, LocalKeyWrap, MasterKey, SealedWriter};

use crate::util::{Fixture, Run};

const HOST: &str = "testhost";
const JOB: &str = "data";
const PREFIX: &str = "vaultline";
const SNAPSHOT: &str = "20260101T000000Z-0000abcd";
const MTIME: i64 = 1_700_000_000;
const OK_CONTENT: &[u8] = b"harmless content\n";
const EVIL_CONTENT: &[u8] = b"written outside the target\n";

/// A random hex token, so parallel runs never share a path outside their
/// temporary directory.
fn random_token() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Removes paths outside the fixture's temporary directory on drop, so they
/// go even when an assertion fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

/// One archive entry, as both the tar header and the manifest line say it.
struct Item {
    path: String,
    kind: &'static str,
    content: Vec<u8>,
    target: Option<String>,
}

impl Item {
    fn file(path: &str, content: &[u8]) -> Item {
        Item {
            path: path.to_string(),
            kind: "file",
            content: content.to_vec(),
            target: None,
        }
    }

    fn symlink(path: &str, target: &str) -> Item {
        Item {
            path: path.to_string(),
            kind: "symlink",
            content: Vec::new(),
            target: Some(target.to_string()),
        }
    }

    fn mode(&self) -> u32 {
        if self.kind == "symlink" { 0o777 } else { 0o644 }
    }
}

/// Writes `value` as a NUL-terminated octal number filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert_eq!(digits.len(), field.len() - 1, "{value} does not fit");
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

/// A ustar header block built byte by byte: the name and link name are
/// copied verbatim, whatever they contain.
fn raw_header(item: &Item, uid: u32, gid: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = item.path.as_bytes();
    assert!(name.len() <= 100, "name too long for a plain ustar header");
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(item.mode()));
    octal(&mut h[108..116], u64::from(uid));
    octal(&mut h[116..124], u64::from(gid));
    octal(&mut h[124..136], item.content.len() as u64);
    octal(&mut h[136..148], MTIME as u64);
    h[156] = match item.kind {
        "file" => b'0',
        "symlink" => b'2',
        other => panic!("unsupported kind {other}"),
    };
    if let Some(t) = &item.target {
        assert!(t.len() <= 100);
        h[157..157 + t.len()].copy_from_slice(t.as_bytes());
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // Checksum: the sum of all bytes with the checksum field read as spaces,
    // as six octal digits, a NUL and a space.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(digits.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// The tar stream: each header, its content padded to 512 bytes, then the
/// two zero blocks that end an archive.
fn raw_tar(items: &[Item], uid: u32, gid: u32) -> (Vec<u8>, Vec<u64>) {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for item in items {
        offsets.push(out.len() as u64);
        out.extend_from_slice(&raw_header(item, uid, gid));
        out.extend_from_slice(&item.content);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    // The tar crate itself must read back exactly these paths and types.
    let mut archive = tar::Archive::new(out.as_slice());
    let read: Vec<(Vec<u8>, u8)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path_bytes().into_owned(), e.header().entry_type().as_byte())
        })
        .collect();
    let want: Vec<(Vec<u8>, u8)> = items
        .iter()
        .map(|i| {
            (
                i.path.as_bytes().to_vec(),
                if i.kind == "file" { b'0' } else { b'2' },
            )
        })
        .collect();
    assert_eq!(read, want, "the hand-built tar does not read back as built");
    (out, offsets)
}

/// The encryption context `Repo::context` builds.
fn context(kind: &str, object: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("format", vaultline_crypto::FORMAT_VERSION.to_string())
        .unwrap()
        .with("host", HOST)
        .unwrap()
        .with("job", JOB)
        .unwrap()
        .with("kind", kind)
        .unwrap()
        .with("object", object)
        .unwrap()
        .with("snapshot", SNAPSHOT)
        .unwrap()
}

/// Seals `plaintext` under a fresh data key for `context`.
fn seal(keys: &LocalKeyWrap, ctx: &EncryptionContext, plaintext: &[u8]) -> (Vec<u8>, KeyEnvelope) {
    let (key, envelope) = keys.generate(ctx).unwrap();
    let mut w = SealedWriter::new(Vec::new(), &key, envelope.clone(), ctx.clone()).unwrap();
    w.write_all(plaintext).unwrap();
    (w.finish().unwrap(), envelope)
}

/// The master key `init` wrote to the fixture's key file.
fn master_key(f: &Fixture) -> MasterKey {
    let text = fs::read_to_string(f.key_file()).unwrap();
    let hex_key = text
        .trim()
        .strip_prefix("vaultline-master-key-v1")
        .expect("key file tag")
        .trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).unwrap();
    MasterKey::from_bytes(bytes)
}

/// Writes snapshot [`SNAPSHOT`] of `items` into the fixture's repository,
/// as the agent would: the archive first, the manifest last.
fn write_snapshot(f: &Fixture, items: &[Item]) {
    let keys = LocalKeyWrap::new(&master_key(f));
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();

    let archive_name = format!("{PREFIX}/{HOST}/{JOB}/archives/{SNAPSHOT}/0.archive");
    let manifest_name = format!("{PREFIX}/{HOST}/{JOB}/snapshots/{SNAPSHOT}.manifest");

    let (tar, offsets) = raw_tar(items, uid, gid);
    // One zstd frame (the tar is far below the 4 MiB frame size).
    let compressed = zstd::encode_all(tar.as_slice(), 3).unwrap();
    let (archive, archive_env) = seal(&keys, &context("archive", &archive_name), &compressed);

    let mut lines = vec![json!({
        "vaultline_manifest": 2,
        "snapshot": SNAPSHOT,
        "host": HOST,
        "job": JOB,
        "parent": null,
        "chain": 0,
        "full_started": "2026-01-01T00:00:00Z",
        "started": "2026-01-01T00:00:00Z",
        "paths": [f.path().join("src").display().to_string()],
    })];
    let (mut files, mut symlinks, mut bytes) = (0u64, 0u64, 0u64);
    for (item, offset) in items.iter().zip(&offsets) {
        let mut entry = json!({
            "path": item.path,
            "type": item.kind,
            "mode": item.mode(),
            "uid": uid,
            "gid": gid,
            "mtime": MTIME,
        });
        if item.kind == "file" {
            entry["archive"] = json!(0);
            entry["offset"] = json!(offset);
            files += 1;
            bytes += item.content.len() as u64;
            if !item.content.is_empty() {
                entry["size"] = json!(item.content.len());
            }
        } else {
            symlinks += 1;
        }
        if let Some(t) = &item.target {
            entry["target"] = json!(t);
        }
        lines.push(entry);
    }
    lines.push(json!({"archives": [{
        "object": archive_name,
        "snapshot": SNAPSHOT,
        "envelope": {
            "provider": archive_env.provider,
            "key_id": archive_env.key_id,
            "wrapped": hex::encode(&archive_env.wrapped),
        },
        "size": archive.len(),
        "plain_size": tar.len(),
        "frame_size": 4 << 20,
        "frames": [compressed.len()],
    }]}));
    lines.push(json!({"end": {
        "finished": "2026-01-01T00:00:01Z",
        "files": files,
        "dirs": 0,
        "symlinks": symlinks,
        "hardlinks": 0,
        "bytes": bytes,
        "skipped": 0,
        "archived_files": files,
        "archived_bytes": bytes,
        "reused": 0,
        "deleted": 0,
    }}));
    let mut text = String::new();
    for line in &lines {
        text.push_str(&serde_json::to_string(line).unwrap());
        text.push('\n');
    }
    let compressed = zstd::encode_all(text.as_bytes(), 3).unwrap();
    let (manifest, _) = seal(&keys, &context("manifest", &manifest_name), &compressed);

    for (name, bytes) in [(&archive_name, &archive), (&manifest_name, &manifest)] {
        let path = f.repo().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    }
}

/// A fixture holding the hostile snapshot, and the paths it aims at.
struct Hostile {
    f: Fixture,
    /// Entry paths that must be refused, as stored.
    refused: Vec<String>,
    /// The `..` entry's name, relative to a target's parent.
    escape: String,
    /// Absolute paths outside the fixture that must never appear.
    outside: Vec<PathBuf>,
    _cleanup: Cleanup,
}

fn hostile() -> Hostile {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"{JOB}\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();

    let token = random_token();
    let escape = format!("escape-{token}");
    let abs = format!("/tmp/vaultline-abs-{token}");
    let through = format!("vaultline-through-{token}");
    let outside = vec![PathBuf::from(&abs), Path::new("/tmp").join(&through)];
    // Registered before anything can create them.
    let cleanup = Cleanup(outside.clone());
    for p in &outside {
        assert!(fs::symlink_metadata(p).is_err(), "{} exists already", p.display());
    }

    let refused = vec![format!("../{escape}"), abs.clone(), format!("link/tmp/{through}")];
    let items = [
        Item::file("ok.txt", OK_CONTENT),
        Item::file(&refused[0], EVIL_CONTENT),
        Item::file(&refused[1], EVIL_CONTENT),
        Item::symlink("link", "/"),
        Item::file(&refused[2], EVIL_CONTENT),
    ];
    write_snapshot(&f, &items);
    Hostile {
        f,
        refused,
        escape,
        outside,
        _cleanup: cleanup,
    }
}

/// Every name under `dir` starting with `.vaultline-restore-`, without
/// following symlinks.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".vaultline-restore-") {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(temp_files(&p));
        }
    }
    out
}

/// What must hold after restoring the hostile snapshot into `target`.
#[track_caller]
fn assert_contained(h: &Hostile, target: &Path, run: &Run) {
    assert_eq!(
        fs::read(target.join("ok.txt")).unwrap_or_default(),
        OK_CONTENT,
        "ok.txt was not restored intact\nstderr:\n{}",
        run.stderr
    );
    // The symlink may be restored; if so, it is a symlink inside the target.
    if let Ok(meta) = fs::symlink_metadata(target.join("link")) {
        assert!(meta.file_type().is_symlink(), "link is not a symlink");
        assert_eq!(fs::read_link(target.join("link")).unwrap(), Path::new("/"));
    }
    let escaped = target.join("..").join(&h.escape);
    assert!(
        fs::symlink_metadata(&escaped).is_err(),
        "{} was created outside the target",
        escaped.display()
    );
    for p in &h.outside {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "{} was created outside the target",
            p.display()
        );
    }
    // Nothing else appeared in the target: the refused entries left no
    // directories or files behind either.
    let mut names: Vec<String> = fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.retain(|n| n != "link");
    assert_eq!(names, ["ok.txt"], "unexpected entries in the target");
    let mut temps = temp_files(target);
    temps.extend(temp_files(target.parent().unwrap()));
    assert!(temps.is_empty(), "temporary files left behind: {temps:?}");
}

/// Restore refuses the `..`, absolute and through-a-symlink entries with the
/// integrity exit code, names each in its error, restores the harmless file,
/// and creates nothing outside the target.
#[test]
fn hostile_snapshot_with_a_valid_seal_cannot_write_outside_the_target() {
    let h = hostile();
    let target = h.f.path().join("restore");
    let run =
        h.f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
            .code(5);
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in stderr:\n{}", run.stderr));
    assert!(error.contains(SNAPSHOT), "{error}");
    for path in &h.refused {
        assert!(
            error.contains(path.as_str()),
            "the error does not name refused entry {path}:\n{error}"
        );
    }
    assert_contained(&h, &target, &run);
}

/// `--json` lists exactly the refused entries, each with a reason, and the
/// exit code is still the integrity one.
#[test]
fn hostile_snapshot_refusals_are_listed_in_json() {
    let h = hostile();
    let target = h.f.path().join("restore-json");
    let run =
        h.f.run(&[
            "--json",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ])
        .code(5);
    let report = run.json();
    assert_eq!(report["snapshot"], SNAPSHOT, "{report}");
    let refused = report["refused"].as_array().expect("refused is a list");
    let paths: Vec<&str> = refused.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let want: Vec<&str> = h.refused.iter().map(String::as_str).collect();
    assert_eq!(paths, want, "{report}");
    let reasons: Vec<&str> = refused.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().all(|r| !r.is_empty()), "{report}");
    assert!(reasons[0].contains(".."), "{report}");
    assert!(reasons[1].contains("absolute"), "{report}");
    assert!(reasons[2].contains("link"), "{report}");
    assert_eq!(report["existing"], Value::Array(Vec::new()), "{report}");
    assert_contained(&h, &target, &run);
}

/// Seals `plaintext` (a manifest's JSON lines) as the manifest of
/// [`SNAPSHOT`] in the fixture's repository, compressed as the agent would.
fn write_manifest(f: &Fixture, plaintext: &[u8]) {
    let keys = LocalKeyWrap::new(&master_key(f));
    let name = format!("{PREFIX}/{HOST}/{JOB}/snapshots/{SNAPSHOT}.manifest");
    let compressed = zstd::encode_all(plaintext, 3).unwrap();
    let (sealed, _) = seal(&keys, &context("manifest", &name), &compressed);
    let path = f.repo().join(&name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, sealed).unwrap();
}

/// A manifest sealed with the repository's own key (a compromised host can
/// make one) holding one line of 512 MiB, or an archive table of a million
/// archives: every command that reads it refuses it within a bounded
/// memory, and names what is wrong.
#[test]
fn a_hostile_manifest_of_any_size_is_refused_in_bounded_memory() {
    const BOUND_MIB: u64 = 100;
    let header = json!({
        "vaultline_manifest": 2, "snapshot": SNAPSHOT, "host": HOST, "job": JOB, "parent": null,
        "chain": 0, "full_started": "2026-01-01T00:00:00Z", "started": "2026-01-01T00:00:00Z", "paths": ["/x"],
    })
    .to_string();
    let long_line = {
        let mut text = format!("{header}\n{{\"path\":\"");
        text.push_str(&"a".repeat(512 << 20));
        text.push_str("\",\"type\":\"file\",\"mode\":420,\"uid\":0,\"gid\":0,\"mtime\":0}\n");
        text
    };
    let many_archives = {
        let one = r#"{"object":"o","snapshot":"s","envelope":{"provider":"local","key_id":"k","wrapped":"00"},"size":1,"plain_size":1,"frame_size":1,"frames":[1]}"#;
        let mut table = String::from("{\"archives\":[");
        table.push_str(&vec![one; 200].join(","));
        table.push_str("]}");
        format!("{header}\n{table}\n{{\"end\":{{}}}}\n")
    };
    for (case, plaintext, why) in [
        (
            "a 512 MiB line",
            long_line,
            "line 2 is longer than 8 MiB: not a manifest vaultline wrote",
        ),
        (
            "200 archives",
            many_archives,
            "its archive table lists 200 archives, more than a chain can have (128)",
        ),
    ] {
        let f = Fixture::new(&format!("[[jobs]]\nname = \"{JOB}\"\npaths = [\"/x\"]\n"));
        f.init();
        write_manifest(&f, plaintext.as_bytes());
        drop(plaintext);
        let target = f.path().join("t").display().to_string();
        for args in [
            vec!["verify", "--all"],
            vec!["snapshots"],
            vec!["restore", "latest", "--target", &target],
            vec!["forget", "--dry-run"],
        ] {
            let (run, peak_kib) = f.run_measured(&args);
            assert!(
                run.stderr.contains(why),
                "{case}: {args:?} does not say {why:?}:\n{}",
                run.stderr
            );
            let want = if args[0] == "forget" { 0 } else { 5 };
            assert_eq!(run.code, want, "{case}: {args:?}: {}", run.stderr);
            assert!(
                peak_kib < BOUND_MIB << 10,
                "{case}: {args:?} peaked at {peak_kib} KiB, over {BOUND_MIB} MiB"
            );
            eprintln!("{case}: {args:?}: exit {}, peak {peak_kib} KiB", run.code);
        }
    }
}

/// Frame tables that cannot describe the sealed object they come with: a
/// frame of no bytes, frames longer together than the object. Every reader
/// refuses them by name before reading any archive.
#[test]
fn a_frame_table_that_does_not_fit_its_object_is_refused() {
    let header = json!({
        "vaultline_manifest": 2, "snapshot": SNAPSHOT, "host": HOST, "job": JOB, "parent": null,
        "chain": 0, "full_started": "2026-01-01T00:00:00Z", "started": "2026-01-01T00:00:00Z", "paths": ["/x"],
    })
    .to_string();
    let entry = r#"{"path":"x/f","type":"file","mode":420,"uid":0,"gid":0,"mtime":0,"size":1,"archive":0,"offset":0}"#;
    let archive = format!("{PREFIX}/{HOST}/{JOB}/archives/{SNAPSHOT}/0.archive");
    for (case, frames, plain_size) in [
        ("a frame of no bytes", "[40,0]", 2),
        ("frames past the object", "[60,60]", 2),
    ] {
        let table = format!(
            r#"{{"archives":[{{"object":"{archive}","snapshot":"{SNAPSHOT}","envelope":{{"provider":"local","key_id":"k","wrapped":"00"}},"size":100,"plain_size":{plain_size},"frame_size":1,"frames":{frames}}}]}}"#
        );
        let f = Fixture::new(&format!("[[jobs]]\nname = \"{JOB}\"\npaths = [\"/x\"]\n"));
        f.init();
        write_manifest(
            &f,
            format!("{header}\n{entry}\n{table}\n{{\"end\":{{}}}}\n").as_bytes(),
        );
        let run = f.run(&["verify", "--all"]).code(5);
        assert!(
            run.stderr.contains(&format!(
                "archive {archive} has an impossible frame table (2 frames of 1 bytes for 2 bytes of tar in 100 bytes)"
            )),
            "{case}: {}",
            run.stderr
        );
    }
}
