//! A hostile S3-compatible server: listings with foreign keys or endless
//! pages, bodies shorter or longer than listed or than their
//! Content-Length, a manifest that never ends. Every read-only command gets
//! an error naming the misbehaviour (exit 4; 5 where the data is not what
//! vaultline wrote), never a panic, a loop or unbounded memory.
//!
//! The repository is real (made with a local master key on a directory and
//! served by tests/support/hostile_s3.py); only the server's faults are not.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::util::hostile::{BUCKET, HostileS3, Watched, point_at, run_within};
use crate::util::moto::job;
use crate::util::{Fixture, assert_same_tree, files_under, noise, restored};

const DEADLINE: Duration = Duration::from_secs(60);

/// A repository made locally: one snapshot of job `j` holding `files`.
struct Made {
    fx: Fixture,
    src: tempfile::TempDir,
    jobs: String,
    id: String,
}

impl Made {
    fn new(files: &[(&str, Vec<u8>)]) -> Made {
        let src = tempfile::tempdir().unwrap();
        for (name, data) in files {
            fs::write(src.path().join(name), data).unwrap();
        }
        let jobs = job("j", &[src.path()]);
        let fx = Fixture::new(&jobs);
        fx.init();
        fx.run(&["backup", "now"]).ok();
        let listed = fx.run(&["snapshots", "--json"]).ok().json();
        let id = listed[0]["id"].as_str().unwrap().to_string();
        Made { fx, src, jobs, id }
    }

    /// Two small files: one archive of one chunk.
    fn small() -> Made {
        Made::new(&[("a.txt", b"alpha\n".to_vec()), ("b.txt", b"bravo\n".to_vec())])
    }

    /// Two files of 6 MiB that do not compress: an archive of three
    /// frames, so restoring only the first file reads byte ranges.
    fn framed() -> Made {
        Made::new(&[("a.bin", noise(6 << 20, 1)), ("b.bin", noise(6 << 20, 2))])
    }

    /// Serves the repository misbehaving as `mode` on objects whose key
    /// ends with `suffix`, and points the fixture at the server.
    fn serve(&mut self, mode: &str, suffix: &str) -> HostileS3 {
        let server = HostileS3::start(&self.fx.repo(), mode, suffix);
        point_at(&mut self.fx, &server, &self.jobs);
        server
    }

    fn manifest(&self) -> String {
        format!("vaultline/testhost/j/snapshots/{}.manifest", self.id)
    }

    fn archive(&self) -> String {
        format!("vaultline/testhost/j/archives/{}/0.archive", self.id)
    }

    fn size(&self, object: &str) -> u64 {
        fs::metadata(self.fx.repo().join(object)).unwrap().len()
    }

    fn target(&self) -> PathBuf {
        self.fx.path().join("target")
    }

    /// `snapshots`, `verify`, `restore latest` and `forget --dry-run`,
    /// each watched.
    fn run_all(&self, deadline: Duration) -> Vec<(&'static str, Watched)> {
        let target = self.target().display().to_string();
        [
            ("snapshots", vec!["snapshots"]),
            ("verify", vec!["verify"]),
            ("restore", vec!["restore", "latest", "--target", &target]),
            ("forget", vec!["forget", "--dry-run"]),
        ]
        .into_iter()
        .map(|(name, args)| (name, run_within(&self.fx, &args, deadline)))
        .collect()
    }

    /// Restores only a.bin (of [`Made::framed`]): ranged reads.
    fn restore_first_file(&self) -> Watched {
        let target = self.target().display().to_string();
        let a = self.src.path().join("a.bin").display().to_string();
        run_within(
            &self.fx,
            &["restore", "latest", "--target", &target, &a],
            DEADLINE,
        )
    }

    #[track_caller]
    fn assert_nothing_restored(&self) {
        assert_eq!(
            files_under(&self.target()),
            Vec::<PathBuf>::new(),
            "nothing restored"
        );
    }
}

/// What each command prints when listing `prefix` fails with `why`.
fn listing_failure(command: &str, server: &HostileS3, why: impl Fn(&str) -> String) -> String {
    let list = |prefix: &str| {
        format!(
            "cannot list S3 bucket {BUCKET} at {}: ListObjectsV2 s3://{BUCKET}/{prefix}: {}",
            server.endpoint,
            why(prefix)
        )
    };
    match command {
        "forget" => format!(
            "error: planning forget for job j: {}",
            list("vaultline/testhost/j/snapshots/")
        ),
        _ => format!("error: {}", list("vaultline/testhost/")),
    }
}

/// How each command ends when opening snapshot `id`'s manifest fails
/// with `why`: verify reports each snapshot, then the count; snapshots
/// lists it as unreadable and fails; forget leaves it alone (an
/// unreadable manifest is set aside, never a reason to delete or to stop).
/// What each command prints when fetching snapshot `id`'s manifest fails
/// with `why` (not an integrity failure: every command stops on it).
fn transport_failure(command: &str, id: &str, why: &str) -> String {
    match command {
        "verify" => {
            format!("ERROR {id} (j): FAILED: {why}\nerror: 1 of 1 snapshot(s) failed verification: {why}")
        }
        "forget" => format!("error: planning forget for job j: {why}"),
        _ => format!("error: {why}"),
    }
}

fn manifest_failure(command: &str, id: &str, why: &str) -> (i32, String) {
    match command {
        "verify" => (
            5,
            format!("ERROR {id} (j): FAILED: {why}\nerror: 1 of 1 snapshot(s) failed verification: {why}"),
        ),
        "snapshots" => (
            5,
            format!(
                "ERROR snapshot {id} of job j: {why}\nerror: 1 snapshot manifest(s) could not be read: {id} (see \
                 `vaultline verify`)"
            ),
        ),
        "forget" => (
            0,
            format!(" WARN snapshot {id} of job j: unreadable manifest, left alone: {why}"),
        ),
        _ => (5, format!("error: {why}")),
    }
}

#[track_caller]
fn assert_failed(command: &str, w: &Watched, code: i32, stderr: &str) {
    assert_eq!(
        (w.run.code, w.run.stderr.trim_end()),
        (code, stderr),
        "{command}: exit code and error\nstdout:\n{}",
        w.run.stdout
    );
}

#[test]
fn a_listed_key_outside_the_prefix_asked_for_is_an_error_not_a_panic() {
    let mut made = Made::small();
    let server = made.serve("foreign-key", ".manifest");
    for (command, w) in made.run_all(DEADLINE) {
        let expected = listing_failure(command, &server, |prefix| {
            format!(
                "the server answered with key \"outside/x.manifest\", which does not start with the prefix \
                 asked for ({prefix:?}); refusing a listing from a misbehaving server"
            )
        });
        assert_failed(command, &w, 4, &expected);
    }
    made.assert_nothing_restored();
}

#[test]
fn a_continuation_token_the_server_repeats_ends_the_listing_with_an_error() {
    let mut made = Made::small();
    let server = made.serve("repeat-token", ".manifest");
    for (command, w) in made.run_all(DEADLINE) {
        let expected = listing_failure(command, &server, |_| {
            "the server repeated continuation token \"vaultline-hostile-token\": refusing to list forever"
                .into()
        });
        assert_failed(command, &w, 4, &expected);
    }
    made.assert_nothing_restored();
}

#[test]
fn a_manifest_shorter_than_listed_is_an_integrity_error() {
    let mut made = Made::small();
    let _server = made.serve("short-body", ".manifest");
    let listed = made.size(&made.manifest());
    let why = format!(
        "manifest {}: the server sent 100 bytes, the listing said {listed}",
        made.manifest()
    );
    for (command, w) in made.run_all(DEADLINE) {
        let (code, stderr) = manifest_failure(command, &made.id, &why);
        assert_failed(command, &w, code, &stderr);
    }
    made.assert_nothing_restored();
}

#[test]
fn a_manifest_longer_than_listed_is_an_integrity_error() {
    let mut made = Made::small();
    let _server = made.serve("long-body", ".manifest");
    let listed = made.size(&made.manifest());
    let why = format!(
        "manifest {}: the server sent more than {listed} bytes, the listing said {listed}",
        made.manifest()
    );
    for (command, w) in made.run_all(DEADLINE) {
        let (code, stderr) = manifest_failure(command, &made.id, &why);
        assert_failed(command, &w, code, &stderr);
    }
    made.assert_nothing_restored();
}

#[test]
fn a_manifest_that_never_ends_is_cut_at_its_listed_size_in_bounded_memory() {
    const BOUND_MIB: u64 = 100;
    let mut made = Made::small();
    let _server = made.serve("huge-manifest", ".manifest");
    let listed = made.size(&made.manifest());
    let why = format!(
        "manifest {}: the server sent more than {listed} bytes, the listing said {listed}",
        made.manifest()
    );
    // The server streams a terabyte: only stopping at the listed size ends
    // a command in time.
    for (command, w) in made.run_all(Duration::from_secs(30)) {
        let (code, stderr) = manifest_failure(command, &made.id, &why);
        assert_failed(command, &w, code, &stderr);
        assert!(
            w.peak_kib < BOUND_MIB << 10,
            "{command}: peak RSS {} KiB exceeds {BOUND_MIB} MiB",
            w.peak_kib
        );
    }
    made.assert_nothing_restored();
}

#[test]
fn a_body_that_breaks_off_before_its_content_length_fails_once_resuming_does_not_help() {
    let mut made = Made::small();
    let _server = made.serve("short-body-lying-length", ".manifest");
    let (m, size) = (made.manifest(), made.size(&made.manifest()));
    let broke = format!(
        "GetObject s3://{BUCKET}/{m}: the body broke off at byte {} of {size}: streaming error: error reading \
         a body from connection: end of file before message length reached",
        size / 2
    );
    // [aws] max-attempts = 3: the first GET and two resumed ones.
    let warning = format!(" WARN {broke}; resuming at byte {}\n", size / 2).repeat(2);
    let why = format!("snapshot {}: reading {m}: {broke} (no retries left)", made.id);
    for (command, w) in made.run_all(DEADLINE) {
        let expected = format!("{warning}{}", transport_failure(command, &made.id, &why));
        assert_failed(command, &w, 4, &expected);
    }
    made.assert_nothing_restored();
}

#[test]
fn bytes_a_server_sends_past_its_content_length_are_never_read() {
    let mut made = Made::framed();
    // Every object, whole or ranged: 4 KiB of zeros after each body.
    let _server = made.serve("long-body-lying-length", "");
    for (command, w) in made.run_all(DEADLINE) {
        assert_eq!(w.run.code, 0, "{command}: {}", w.run.stderr);
    }
    assert_same_tree(made.src.path(), &restored(&made.target(), made.src.path()));
    fs::remove_dir_all(made.target()).unwrap();
    made.restore_first_file().run.ok();
    assert_eq!(
        fs::read(restored(&made.target(), made.src.path()).join("a.bin")).unwrap(),
        fs::read(made.src.path().join("a.bin")).unwrap()
    );
}

/// The error of a partial restore whose ranged GET of the archive got
/// `length` bytes instead of those asked for.
fn wrong_length(made: &Made, (first, last): (u64, u64), length: u64) -> String {
    let a = made.archive();
    format!(
        "error: snapshot {id}: reading archive {a}: cannot open {a}: GetObject s3://{BUCKET}/{a}: asked for \
         bytes {first}-{last} ({} bytes), the server's Content-Length is {length}",
        last - first + 1,
        id = made.id,
    )
}

/// The progress line of restoring only a.bin.
fn selected(made: &Made) -> String {
    format!(
        " INFO snapshot {}: 1 entry selected, 6.0 MiB of content, from 1 archive; fetching 8.0 MiB\n",
        made.id
    )
}

#[test]
fn a_ranged_read_answered_with_fewer_bytes_than_asked_for_is_refused() {
    let mut made = Made::framed();
    let server = made.serve("short-body", ".archive");
    let w = made.restore_first_file();
    // The server has only the first 100 bytes of the archive: the read of
    // its header gets them, and nothing after them is asked.
    let ranges = server.ranges_asked(&made.archive());
    assert_eq!(ranges, [(0, (64 << 10) - 1)], "the header, and nothing after it");
    let expected = selected(&made) + &wrong_length(&made, ranges[0], 100);
    assert_failed("restore", &w, 4, &expected);
    made.assert_nothing_restored();
}

#[test]
fn a_ranged_read_answered_with_more_bytes_than_asked_for_is_refused() {
    let mut made = Made::framed();
    let server = made.serve("long-body", ".archive");
    let w = made.restore_first_file();
    let ranges = server.ranges_asked(&made.archive());
    assert_eq!(ranges, [(0, (64 << 10) - 1)], "the header, and nothing after it");
    let expected = selected(&made) + &wrong_length(&made, ranges[0], (64 << 10) + 4096);
    assert_failed("restore", &w, 4, &expected);
    made.assert_nothing_restored();
}

#[test]
fn a_ranged_body_that_breaks_off_fails_once_resuming_does_not_help() {
    let mut made = Made::framed();
    let server = made.serve("short-body-lying-length", ".archive");
    let w = made.restore_first_file();
    let a = made.archive();
    let half = made.size(&a) / 2;
    let ranges = server.ranges_asked(&a);
    assert_eq!(
        ranges.len(),
        4,
        "the header, the chunks, resumed twice: {ranges:?}"
    );
    let end = ranges[1].1 + 1;
    let broke = format!(
        "GetObject s3://{BUCKET}/{a}: the body broke off at byte {half} of {end}: streaming error: error \
         reading a body from connection: end of file before message length reached"
    );
    let expected = format!(
        "{}{}error: snapshot {}: reading archive {a}: {broke} (no retries left)",
        selected(&made),
        format!(" WARN {broke}; resuming at byte {half}\n").repeat(2),
        made.id
    );
    assert_failed("restore", &w, 4, &expected);
    assert_eq!(&ranges[2..], [(half, end - 1), (half, end - 1)]);
    made.assert_nothing_restored();
}

#[test]
fn archives_shorter_or_longer_than_sealed_fail_authentication() {
    for mode in ["short-body", "long-body"] {
        let mut made = Made::small();
        let _server = made.serve(mode, ".archive");
        let a = made.archive();
        let why = match mode {
            "short-body" => format!(
                "object {a}: unreadable header: sealed header is truncated: the object ends inside field \
                 `context.value`"
            ),
            _ => format!(
                "unexpected data after the final chunk, at offset {}",
                made.size(&a)
            ),
        };
        let why = format!("snapshot {}: reading archive {a}: {why}", made.id);
        let target = made.target().display().to_string();
        let w = run_within(&made.fx, &["verify"], DEADLINE);
        assert_failed("verify", &w, 5, &manifest_failure("verify", &made.id, &why).1);
        let w = run_within(&made.fx, &["restore", "latest", "--target", &target], DEADLINE);
        let progress = format!(
            " INFO snapshot {}: 3 entries selected, 12 B of content, from 1 archive; fetching {} B\n",
            made.id,
            made.size(&a)
        );
        assert_failed("restore", &w, 5, &format!("{progress}error: {why}"));
        made.assert_nothing_restored();
    }
}
