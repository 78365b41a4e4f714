//! Tampering with stored objects: every alteration of an archive or manifest
//! in the repository makes `restore` and `verify` fail with the integrity
//! exit code (5), naming the snapshot, the object and (where the crypto layer
//! has one) the byte offset, and no restored file differs from the source.
//!
//! Offsets are computed from FORMAT.md: the header is parsed with
//! `vaultline_crypto::Header::parse` to get its length `H`, and chunk `k`
//! starts at `H + 16 + k × (C + 20)`.

use std::fs;
use std::path::{Path, PathBuf};

use vaultline_crypto::{BINDING_SIZE, FRAME_SIZE, Header, TAG_SIZE};

use crate::util::{Fixture, Run, make_corpus, noise, restored, unverified_files};

/// Exit code for stored data that failed authentication.
const INTEGRITY: i32 = 5;
/// Corpus size: enough for an archive of dozens of 64 KiB chunks, fast to build.
const CORPUS_MB: u32 = 8;
const SEED: u32 = 41;
/// Offset of the salt in every header (FORMAT.md §2.1).
const SALT_OFFSET: usize = 14;
/// Offset of the encryption context in every header (FORMAT.md §2.1).
const CONTEXT_OFFSET: usize = 78;

/// One fixture with its own corpus and an initialized repository holding the
/// job `data`.
struct World {
    f: Fixture,
    source: PathBuf,
    restores: std::cell::Cell<u32>,
}

impl World {
    fn new() -> World {
        let f = Fixture::new("");
        let source = f.path().join("src");
        make_corpus(&source, CORPUS_MB, SEED);
        f.write_config(&format!(
            "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
            source.display().to_string()
        ));
        f.init();
        World {
            f,
            source,
            restores: std::cell::Cell::new(0),
        }
    }

    /// Backs up now; returns the new snapshot's id.
    fn backup(&self) -> String {
        let run = self.f.run(&["--json", "backup", "now", "--full"]).ok();
        let id = run.json()[0]["snapshot"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 25, "{}", run.stdout);
        id
    }

    /// Path of a snapshot's (only) archive.
    fn archive(&self, id: &str) -> PathBuf {
        self.object(&format!("testhost/data/archives/{id}/0.archive"))
    }

    /// Path of a snapshot's manifest.
    fn manifest(&self, id: &str) -> PathBuf {
        self.object(&format!("testhost/data/snapshots/{id}.manifest"))
    }

    /// The one object whose name ends with `/suffix` (whatever the
    /// configured prefix).
    fn object(&self, suffix: &str) -> PathBuf {
        let found = self.f.objects(&format!("/{suffix}"));
        let [one] = found.as_slice() else {
            panic!("not one object named */{suffix}: {:?}", self.f.repo_files());
        };
        one.clone()
    }

    /// The object's name as the repository (and its messages) call it.
    fn name(&self, object: &Path) -> String {
        object.strip_prefix(self.f.repo()).unwrap().display().to_string()
    }

    /// A fresh, not yet existing restore target.
    fn target(&self) -> PathBuf {
        let n = self.restores.get() + 1;
        self.restores.set(n);
        self.f.path().join(format!("restore-{n}"))
    }

    /// `restore ID --target DIR` into a fresh target, expected to fail with
    /// the integrity code and every `needle` in stderr; then checks that no
    /// restored file differs from the source and nothing temporary is left.
    #[track_caller]
    fn restore_rejected(&self, id: &str, needles: &[String]) -> (Run, PathBuf) {
        let target = self.target();
        let run = self.f.run(&["restore", id, "--target", target.to_str().unwrap()]);
        let run = expect_integrity(run, needles);
        self.assert_nothing_wrong_restored(&target);
        (run, target)
    }

    /// `verify ID`, expected to fail with the integrity code and `needles`.
    #[track_caller]
    fn verify_rejected(&self, id: &str, needles: &[String]) -> Run {
        expect_integrity(self.f.run(&["verify", id]), needles)
    }

    /// Nothing under `target` differs from the source, and no temporary
    /// restore file is left anywhere under it.
    #[track_caller]
    fn assert_nothing_wrong_restored(&self, target: &Path) {
        let bad = unverified_files(&self.source, &restored(target, &self.source));
        assert!(
            bad.is_empty(),
            "restore into {} left files that are not the source's:\n{}",
            target.display(),
            bad.join("\n")
        );
        let leftovers = temp_files(target);
        assert!(leftovers.is_empty(), "leftover temporary files: {leftovers:?}");
    }
}

/// Asserts exit code 5 and that stderr contains every needle.
#[track_caller]
fn expect_integrity(run: Run, needles: &[String]) -> Run {
    let run = run.code(INTEGRITY);
    for needle in needles {
        assert!(
            run.stderr.contains(needle.as_str()),
            "stderr does not mention {needle:?}\nstderr:\n{}",
            run.stderr
        );
    }
    run
}

/// Every `.vaultline-restore-*` file or link under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if e.file_name().to_string_lossy().starts_with(".vaultline-restore-") {
            out.push(p.clone());
        }
        if meta.is_dir() {
            out.extend(temp_files(&p));
        }
    }
    out
}

/// Number of regular files under `dir`.
fn regular_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                regular_files(&e.path())
            } else {
                usize::from(meta.is_file())
            }
        })
        .sum()
}

/// Where things are in a sealed object, from its header and length.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Header length `H`.
    header: usize,
    /// Length of the header's authenticated part `A` (where the MAC starts).
    authenticated: usize,
    /// Plaintext bytes per chunk `C`.
    chunk: usize,
    /// Number of chunks.
    chunks: usize,
    /// Object length.
    len: usize,
}

impl Layout {
    fn of(object: &Path) -> Layout {
        let bytes = fs::read(object).unwrap();
        let (header, len) = Header::parse(&bytes).unwrap();
        assert_eq!(len, header.encoded_len());
        let chunk = header.chunk_size() as usize;
        let authenticated = CONTEXT_OFFSET + header.context().to_bytes().len();
        let payload = len + BINDING_SIZE;
        let stride = FRAME_SIZE + chunk + TAG_SIZE;
        let chunks = (bytes.len() - payload).div_ceil(stride);
        let layout = Layout {
            header: len,
            authenticated,
            chunk,
            chunks,
            len: bytes.len(),
        };
        // The format's size rule: H + 16 + n + 20 × chunks, with every chunk
        // but the last holding exactly C bytes.
        let last = bytes.len() - layout.chunk_offset(chunks - 1);
        assert!(
            last > FRAME_SIZE + TAG_SIZE && last <= stride,
            "{object:?} does not have the documented layout: {layout:?}"
        );
        layout
    }

    /// Offset of chunk `k`'s frame word.
    fn chunk_offset(&self, k: usize) -> usize {
        self.header + BINDING_SIZE + k * (FRAME_SIZE + self.chunk + TAG_SIZE)
    }

    /// Offset of the first ciphertext byte of chunk `k`.
    fn ciphertext(&self, k: usize) -> usize {
        self.chunk_offset(k) + FRAME_SIZE
    }
}

/// Flips bit `bit` of the byte at `offset`.
fn flip(object: &Path, offset: usize, bit: u8) {
    let mut bytes = fs::read(object).unwrap();
    bytes[offset] ^= 1 << bit;
    fs::write(object, bytes).unwrap();
}

/// Runs `check` with `object` altered by `tamper`, then puts the original
/// bytes back (so one backup serves several cases).
fn with_tampered(object: &Path, tamper: impl FnOnce(&Path), check: impl FnOnce()) {
    let original = fs::read(object).unwrap();
    tamper(object);
    assert_ne!(fs::read(object).unwrap(), original, "tampering changed nothing");
    check();
    fs::write(object, original).unwrap();
}

/// Cuts the object to `len` bytes.
fn truncate(object: &Path, len: usize) {
    let file = fs::OpenOptions::new().write(true).open(object).unwrap();
    file.set_len(len as u64).unwrap();
}

/// Offset of `needle` within `haystack[from..to]`.
fn find(haystack: &[u8], needle: &[u8], from: usize, to: usize) -> usize {
    from + haystack[from..to]
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

fn chunk_failed(k: usize, offset: usize) -> String {
    format!("chunk {k} at offset {offset} failed authentication")
}

/// Bit flips in the archive header: in the encryption context, the salt, the
/// header MAC and the payload's binding tag. Each is refused before any
/// plaintext is released.
#[test]
fn bit_flips_in_the_archive_header_fail_restore_and_verify() {
    let w = World::new();
    let id = w.backup();
    let archive = w.archive(&id);
    let name = w.name(&archive);
    let layout = Layout::of(&archive);
    let bytes = fs::read(&archive).unwrap();

    // The context's `kind` value: "archive" becomes "`rchive".
    let kind = find(
        &bytes,
        b"\x00\x04kind\x00\x07archive",
        CONTEXT_OFFSET,
        layout.authenticated,
    ) + 8;
    with_tampered(
        &archive,
        |p| flip(p, kind, 0),
        || {
            let needles = [id.clone(), name.clone(), "not what its name says".into()];
            w.restore_rejected(&id, &needles);
            w.verify_rejected(&id, &needles);
        },
    );

    // A bit of the snapshot id in the context: the object now claims to be
    // part of another snapshot.
    let snap = find(&bytes, id.as_bytes(), CONTEXT_OFFSET, layout.authenticated) + 20;
    with_tampered(
        &archive,
        |p| flip(p, snap, 1),
        || {
            w.restore_rejected(&id, &[id.clone(), name.clone(), "not what its name says".into()]);
        },
    );

    // The salt: the data key no longer matches the key commitment.
    with_tampered(
        &archive,
        |p| flip(p, SALT_OFFSET + 7, 3),
        || {
            w.restore_rejected(&id, &[id.clone(), name.clone(), "key commitment mismatch".into()]);
        },
    );

    // The header MAC itself.
    with_tampered(
        &archive,
        |p| flip(p, layout.authenticated + 5, 6),
        || {
            w.restore_rejected(
                &id,
                &[
                    id.clone(),
                    name.clone(),
                    "sealed header failed authentication".into(),
                ],
            );
        },
    );

    // The binding tag that opens the payload, reported at offset H.
    with_tampered(
        &archive,
        |p| flip(p, layout.header + 3, 2),
        || {
            w.restore_rejected(
                &id,
                &[
                    id.clone(),
                    name.clone(),
                    format!("payload at offset {} does not belong", layout.header),
                ],
            );
        },
    );

    // Untampered again: restores exactly and verifies.
    let target = w.target();
    w.f.run(&["restore", &id, "--target", target.to_str().unwrap()])
        .ok();
    crate::util::assert_same_tree(&w.source, &restored(&target, &w.source));
    w.f.run(&["verify", &id]).ok();
}

/// A bit flip in the ciphertext of a chunk in the middle of the archive:
/// restore and verify both fail naming the chunk and its offset; whatever
/// was restored before the damaged chunk is exactly the source's.
#[test]
fn a_bit_flip_in_a_middle_chunk_fails_restore_and_verify() {
    let w = World::new();
    let id = w.backup();
    let archive = w.archive(&id);
    let name = w.name(&archive);
    let layout = Layout::of(&archive);
    assert!(
        layout.chunks >= 8,
        "archive too small to have a middle: {layout:?}"
    );
    let k = layout.chunks / 2;
    flip(&archive, layout.ciphertext(k) + 1000, 4);

    let needles = [id.clone(), name.clone(), chunk_failed(k, layout.chunk_offset(k))];
    w.restore_rejected(&id, &needles);
    w.verify_rejected(&id, &needles);
    // `verify` with no argument (the latest snapshot) and `--all` agree.
    expect_integrity(w.f.run(&["verify"]), &needles);
    expect_integrity(w.f.run(&["verify", "--all"]), &needles);
}

/// A bit flip in the final chunk, in its ciphertext and in its tag (the
/// object's very last byte): caught although every file may already have
/// been seen, because the archive is read to its authenticated end.
#[test]
fn a_bit_flip_in_the_last_chunk_fails_restore() {
    let w = World::new();
    let id = w.backup();
    let archive = w.archive(&id);
    let name = w.name(&archive);
    let layout = Layout::of(&archive);
    let last = layout.chunks - 1;
    let needles = [
        id.clone(),
        name.clone(),
        chunk_failed(last, layout.chunk_offset(last)),
    ];

    with_tampered(
        &archive,
        |p| flip(p, layout.ciphertext(last), 0),
        || {
            // Everything before the final chunk authenticates, so most of the
            // tree is restored before the failure: the check that no restored
            // file differs from the source has plenty to look at here.
            let target = w.restore_rejected(&id, &needles).1;
            let files = regular_files(&target);
            assert!(files > 100, "only {files} files restored before the final chunk");
            w.verify_rejected(&id, &needles);
        },
    );
    with_tampered(
        &archive,
        |p| flip(p, layout.len - 1, 7),
        || {
            w.restore_rejected(&id, &needles);
        },
    );
}

/// Truncation: inside a chunk, exactly at a chunk boundary, inside a frame
/// word, before the final chunk, and right after the binding tag (no chunk
/// at all). The reported offset is where the data ends.
#[test]
fn a_truncated_archive_fails_restore_and_verify() {
    let w = World::new();
    let id = w.backup();
    let archive = w.archive(&id);
    let name = w.name(&archive);
    let layout = Layout::of(&archive);
    assert!(layout.chunks >= 8, "{layout:?}");
    let k = layout.chunks / 2;

    let cuts = [
        ("inside a chunk", layout.ciphertext(k) + layout.chunk / 2),
        ("at a chunk boundary", layout.chunk_offset(k)),
        ("inside a frame word", layout.chunk_offset(k) + 2),
        ("before the final chunk", layout.chunk_offset(layout.chunks - 1)),
        ("inside the final tag", layout.len - 1),
        ("after the binding tag", layout.header + BINDING_SIZE),
    ];
    for (i, (what, len)) in cuts.into_iter().enumerate() {
        with_tampered(
            &archive,
            |p| truncate(p, len),
            || {
                let needles = [
                    id.clone(),
                    name.clone(),
                    "truncated".into(),
                    format!("ends at offset {len}"),
                ];
                eprintln!("cut {what} at {len}");
                w.restore_rejected(&id, &needles);
                if i < 2 {
                    w.verify_rejected(&id, &needles);
                }
            },
        );
    }
}

/// Two snapshots of the same job; chunk k of snapshot A's archive copied over
/// chunk k of snapshot B's (same size, same position): B fails, A still
/// verifies, and `verify --all` reports the failure and the good snapshot.
#[test]
fn a_chunk_moved_from_another_snapshot_is_caught() {
    let w = World::new();
    let a = w.backup();
    // Change one file between the two backups.
    let changed = w.source.join("changed-between-snapshots.txt");
    fs::write(&changed, b"written between snapshot A and snapshot B\n").unwrap();
    let b = w.backup();
    assert_ne!(a, b);

    let (archive_a, archive_b) = (w.archive(&a), w.archive(&b));
    let (la, lb) = (Layout::of(&archive_a), Layout::of(&archive_b));
    assert_eq!(la.chunk, lb.chunk);
    let k = la.chunks.min(lb.chunks) / 2;
    assert!(
        k + 1 < la.chunks && k + 1 < lb.chunks,
        "chunk {k} is not full: {la:?} {lb:?}"
    );
    let stride = FRAME_SIZE + la.chunk + TAG_SIZE;
    let from = fs::read(&archive_a).unwrap();
    let mut to = fs::read(&archive_b).unwrap();
    let (oa, ob) = (la.chunk_offset(k), lb.chunk_offset(k));
    // Same frame word (a full, non-final chunk), different sealed bytes.
    assert_eq!(from[oa..oa + FRAME_SIZE], to[ob..ob + FRAME_SIZE]);
    assert_ne!(from[oa..oa + stride], to[ob..ob + stride]);
    to[ob..ob + stride].copy_from_slice(&from[oa..oa + stride]);
    fs::write(&archive_b, &to).unwrap();

    let needles = [b.clone(), w.name(&archive_b), chunk_failed(k, ob)];
    w.restore_rejected(&b, &needles);
    w.verify_rejected(&b, &needles);

    // The untampered snapshot next to it still verifies.
    let ok = w.f.run(&["verify", &a]).ok();
    assert!(ok.stdout.contains(&format!("{a} (data): ok")), "{}", ok.stdout);
    let all = expect_integrity(w.f.run(&["verify", "--all"]), &needles);
    assert!(all.stdout.contains(&format!("{a} (data): ok")), "{}", all.stdout);
    assert!(all.stderr.contains("1 of 2 snapshot(s) failed"), "{}", all.stderr);
}

/// Snapshot A's whole archive copied over snapshot B's: every byte is
/// authentic, but the object is not the one its name (and B's manifest)
/// says; the agent's check of the authenticated context refuses it.
#[test]
fn an_archive_from_another_snapshot_in_its_place_is_caught() {
    let w = World::new();
    let a = w.backup();
    fs::write(w.source.join("new-file.txt"), b"only in snapshot B\n").unwrap();
    let b = w.backup();
    let (archive_a, archive_b) = (w.archive(&a), w.archive(&b));
    fs::copy(&archive_a, &archive_b).unwrap();

    let needles = [b.clone(), w.name(&archive_b), "not what its name says".into()];
    let (run, _) = w.restore_rejected(&b, &needles);
    // The message says what the object really is: snapshot A's archive.
    assert!(
        run.stderr.contains(&a),
        "stderr does not name {a}:\n{}",
        run.stderr
    );
    w.verify_rejected(&b, &needles);
    w.f.run(&["verify", &a]).ok();
}

/// A manifest with a flipped payload bit, cut short, with a flipped header
/// MAC bit, and replaced by another snapshot's manifest: restore and verify
/// fail with 5 and nothing wrong is written; the other snapshot still verifies.
#[test]
fn a_tampered_manifest_fails_restore_and_verify() {
    let w = World::new();
    let a = w.backup();
    fs::write(w.source.join("new-file.txt"), b"only in snapshot B\n").unwrap();
    let b = w.backup();
    let manifest = w.manifest(&b);
    let name = w.name(&manifest);
    let layout = Layout::of(&manifest);

    // A bit in the middle of the payload. (The message names the snapshot
    // and the chunk's offset; that it also names the manifest object is
    // checked by `a_tampered_manifest_payload_is_named_in_the_error`.)
    let (k, at) = middle_of_payload(&layout);
    with_tampered(
        &manifest,
        |p| flip(p, at, 5),
        || {
            let needles = [b.clone(), chunk_failed(k, layout.chunk_offset(k))];
            w.restore_rejected(&b, &needles);
            w.verify_rejected(&b, &needles);
            w.f.run(&["verify", &a]).ok();
        },
    );

    // Cut in the middle of the payload.
    with_tampered(
        &manifest,
        |p| truncate(p, at),
        || {
            w.restore_rejected(
                &b,
                &[b.clone(), "truncated".into(), format!("ends at offset {at}")],
            );
        },
    );

    // The header MAC.
    with_tampered(
        &manifest,
        |p| flip(p, layout.authenticated, 0),
        || {
            w.restore_rejected(
                &b,
                &[
                    b.clone(),
                    name.clone(),
                    "sealed header failed authentication".into(),
                ],
            );
        },
    );

    // Snapshot A's manifest in place of B's.
    let manifest_a = w.manifest(&a);
    with_tampered(
        &manifest,
        |p| {
            fs::copy(&manifest_a, p).unwrap();
        },
        || {
            w.restore_rejected(&b, &[b.clone(), name.clone(), "not what its name says".into()]);
        },
    );

    // Intact again: B restores.
    let target = w.target();
    w.f.run(&["restore", &b, "--target", target.to_str().unwrap()])
        .ok();
    crate::util::assert_same_tree(&w.source, &restored(&target, &w.source));
}

/// The chunk in the middle of an object's payload, and an offset inside its
/// ciphertext.
fn middle_of_payload(layout: &Layout) -> (usize, usize) {
    let payload = layout.chunk_offset(0);
    let middle = payload + (layout.len - payload) / 2;
    let k = (middle - payload) / (FRAME_SIZE + layout.chunk + TAG_SIZE);
    let at = middle.max(layout.ciphertext(k)).min(layout.len - TAG_SIZE - 1);
    (k, at)
}

/// A failure inside the manifest's payload should name the manifest object,
/// as every failure of an archive names the archive: the offset in the
/// message is meaningless without knowing which object it is in.
#[test]
fn a_tampered_manifest_payload_is_named_in_the_error() {
    let w = World::new();
    let id = w.backup();
    let manifest = w.manifest(&id);
    let layout = Layout::of(&manifest);
    let (k, at) = middle_of_payload(&layout);
    flip(&manifest, at, 5);
    let needles = [
        id.clone(),
        w.name(&manifest),
        chunk_failed(k, layout.chunk_offset(k)),
    ];
    w.restore_rejected(&id, &needles);
    w.verify_rejected(&id, &needles);
}

/// Ranged reads authenticate what they read: a flipped bit in a chunk that
/// holds one file fails the restore of that file (exit 5, nothing of it
/// written), while a file whose frames lie elsewhere in the same archive
/// restores, without the damaged chunk ever being read.
#[test]
fn a_partial_restore_authenticates_the_chunks_it_reads() {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for (seed, name) in [(1, "a"), (2, "b"), (3, "c")] {
        // 6 MiB that does not compress: file a fills tar bytes 0..6 MiB,
        // file c starts past 12 MiB (frame 3 of 4 MiB frames).
        let data = noise(6 << 20, seed);
        fs::write(src.join(name), data).unwrap();
    }
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    let id = f.run(&["--json", "backup", "now"]).ok().json()[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let found = f.objects(&format!("/testhost/data/archives/{id}/0.archive"));
    let archive = &found[0];
    let layout = Layout::of(archive);
    let k = 10;
    flip(archive, layout.ciphertext(k) + 100, 3);

    let target = f.path().join("t-a");
    let a = src.join("a");
    let run = f.run(&[
        "restore",
        "latest",
        a.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    expect_integrity(run, &[chunk_failed(k, layout.chunk_offset(k)), id.clone()]);
    assert!(
        !restored(&target, &src).join("a").exists(),
        "nothing of a is written"
    );
    assert!(temp_files(&target).is_empty());

    let target = f.path().join("t-c");
    let c = src.join("c");
    f.run(&[
        "restore",
        "latest",
        c.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        fs::read(restored(&target, &src).join("c")).unwrap(),
        fs::read(&c).unwrap()
    );
    // The whole snapshot does read the damaged chunk.
    f.run(&["verify", &id]).code(INTEGRITY);
}
