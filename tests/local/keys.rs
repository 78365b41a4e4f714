//! The local master key: missing, replaced by another key, or readable by
//! other users. Each is refused before anything touches the repository or a
//! restore target, with a message that says what to do.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{Fixture, Run, files_under};

/// A fixture with a small source tree and one job `data`, initialized; one
/// snapshot taken. Returns the `init --json` report.
fn backed_up() -> (Fixture, serde_json::Value) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    fs::write(src.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    let init = f.run(&["--json", "init"]).ok().json();
    assert_eq!(init["key_created"], true, "{init}");
    f.run(&["backup", "now"]).ok();
    (f, init)
}

/// Repository file names with their contents, to show nothing changed.
fn repo_contents(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    f.repo_files()
        .into_iter()
        .map(|name| {
            let bytes = fs::read(f.repo().join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Runs `args`, asserts exit `code` and that stderr is exactly `error: want`.
#[track_caller]
fn refused(f: &Fixture, args: &[&str], code: i32, want: &str) -> Run {
    let run = f.run(args);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (code, format!("error: {want}\n").as_str()),
        "vaultline {args:?}\nstdout:\n{}",
        run.stdout
    );
    run
}

/// The key file was deleted after init: every command that needs the key
/// fails with exit 2 (a configuration problem), names the key file it looked
/// for and says to run `vaultline init`; the repository and the restore
/// target are untouched.
#[test]
fn missing_master_key_is_refused_clearly() {
    let (f, _) = backed_up();
    fs::remove_file(f.key_file()).unwrap();
    let before = repo_contents(&f);
    let want = format!(
        "no local master key found (looked in key file {}); run `vaultline init` to create one",
        f.key_file().display()
    );

    refused(&f, &["backup", "now"], 2, &want);
    let target = f.path().join("restore");
    let target_arg = target.to_str().unwrap();
    refused(&f, &["restore", "latest", "--target", target_arg], 2, &want);
    refused(&f, &["verify"], 2, &want);
    refused(&f, &["snapshots"], 2, &want);

    assert_eq!(repo_contents(&f), before, "the repository changed");
    assert!(
        files_under(&target).is_empty(),
        "restore wrote {:?}",
        files_under(&target)
    );
    assert!(
        !f.key_file().exists(),
        "a key was created by a command other than init"
    );
}

/// The key file holds another key than the one the repository was sealed
/// with: backup, restore, verify and snapshots each exit 2 naming both
/// fingerprints, change nothing, and restore nothing. Putting the right key
/// back makes everything work again.
#[test]
fn wrong_master_key_is_refused_naming_both_fingerprints() {
    let (a, init_a) = backed_up();
    let original = init_a["key_id"].as_str().unwrap().to_string();
    assert_eq!(init_a["key_provider"], "local");

    let b = Fixture::new("");
    let init_b = b.run(&["--json", "init"]).ok().json();
    let other = init_b["key_id"].as_str().unwrap().to_string();
    assert_ne!(original, other, "two inits made the same key");

    let original_key = fs::read(a.key_file()).unwrap();
    fs::copy(b.key_file(), a.key_file()).unwrap();
    assert_eq!(
        fs::metadata(a.key_file()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = repo_contents(&a);
    let want = format!(
        "this repository was sealed with local key {original}, but the configured key is local key {other}"
    );

    let target = a.path().join("restore");
    let target_arg = target.to_str().unwrap();
    refused(&a, &["backup", "now"], 2, &want);
    refused(&a, &["restore", "latest", "--target", target_arg], 2, &want);
    refused(&a, &["verify", "--all"], 2, &want);
    refused(&a, &["snapshots"], 2, &want);
    // init does not "repair" it either: it checks the existing repository.
    refused(&a, &["init"], 2, &want);

    assert_eq!(repo_contents(&a), before, "the repository changed");
    assert!(
        files_under(&target).is_empty(),
        "restore wrote {:?}",
        files_under(&target)
    );
    assert_eq!(fs::read(b.key_file()).unwrap(), fs::read(a.key_file()).unwrap());

    // With the original key back, the repository is intact and usable.
    fs::write(a.key_file(), &original_key).unwrap();
    a.run(&["verify", "--all"]).ok();
    let snapshots = a.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
}

/// A key file readable by group or others is refused, with the exact fix;
/// it is neither used, nor changed, nor replaced, and nothing is written.
#[test]
fn key_file_readable_by_others_is_refused() {
    let (f, _) = backed_up();
    let key = f.key_file();
    let key_bytes = fs::read(&key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let before = repo_contents(&f);
    let k = key.display();
    let want = format!("key file {k} is accessible by other users (mode 0644); run `chmod 600 {k}`");

    for args in [&["backup", "now"][..], &["snapshots"], &["verify"]] {
        let run = f.run(args);
        // A key file others can read is a configuration problem, like a
        // missing key: exit 2.
        assert_eq!(run.code, 2, "vaultline {args:?} accepted a 0644 key file");
        assert_eq!(run.stderr, format!("error: {want}\n"), "vaultline {args:?}");
    }
    let target = f.path().join("restore");
    let run = f.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr, format!("error: {want}\n"));
    // init neither accepts nor replaces it.
    let run = f.run(&["init"]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        format!("error: setting up the local master key: {want}\n")
    );

    assert_eq!(repo_contents(&f), before, "the repository changed");
    assert!(files_under(&target).is_empty());
    assert_eq!(fs::read(&key).unwrap(), key_bytes, "the key file changed");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o644,
        "vaultline changed the key file's mode itself"
    );

    // After the suggested fix, it works.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    f.run(&["verify"]).ok();
}
