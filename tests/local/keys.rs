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
/// for and the key the repository needs, and says to put it back from the
/// key backup; `init` does the same and creates no key (a new key cannot
/// read the repository). The repository and the restore target are
/// untouched.
#[test]
fn missing_master_key_names_the_key_the_repository_needs() {
    let (f, init) = backed_up();
    let fingerprint = init["key_id"].as_str().unwrap();
    fs::remove_file(f.key_file()).unwrap();
    let before = repo_contents(&f);
    let want = format!(
        "no local master key found (looked in key file {}); local repository {} was sealed with local key \
         {fingerprint}: put that key back from your key backup with `vaultline key import FILE` \
         (docs/operations.md, \"The local master key\"); `vaultline init` cannot help, a new key cannot read \
         this repository",
        f.key_file().display(),
        f.repo().display()
    );

    refused(&f, &["backup", "now"], 2, &want);
    let target = f.path().join("restore");
    let target_arg = target.to_str().unwrap();
    refused(&f, &["restore", "latest", "--target", target_arg], 2, &want);
    refused(&f, &["verify"], 2, &want);
    refused(&f, &["snapshots"], 2, &want);
    refused(&f, &["init"], 2, &want);

    assert_eq!(repo_contents(&f), before, "the repository changed");
    assert!(
        files_under(&target).is_empty(),
        "restore wrote {:?}",
        files_under(&target)
    );
    assert!(
        !f.key_file().exists(),
        "a key was created for an existing repository"
    );

    // With no repository at all, init is the answer.
    let fresh = Fixture::new("");
    let want = format!(
        "no local master key found (looked in key file {}); local repository {} has no repository yet: run \
         `vaultline init` to create both",
        fresh.key_file().display(),
        fresh.repo().display()
    );
    refused(&fresh, &["snapshots"], 2, &want);
}

/// The documented way back from a lost key: export it for safekeeping,
/// lose it, import the export (a wrong one is refused, naming both keys),
/// restore. The export goes only where the operator chose, 0600, and the
/// audit trail records its fingerprint, never the key.
#[test]
fn a_lost_key_comes_back_from_its_export() {
    let (f, init) = backed_up();
    let fingerprint = init["key_id"].as_str().unwrap().to_string();
    let key_line = fs::read_to_string(f.key_file()).unwrap();
    let hex = key_line.split_whitespace().nth(1).unwrap().to_string();

    // To a new file of its own, 0600, never over an existing one.
    let export = f.path().join("master.key.backup");
    let run = f
        .run(&["key", "export", "--output", export.to_str().unwrap()])
        .ok();
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains(&format!(
        "master key {fingerprint} written to {}",
        export.display()
    )));
    assert_eq!(fs::metadata(&export).unwrap().permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&export).unwrap();
    assert!(
        text.starts_with(&format!("# vaultline master key, fingerprint {fingerprint}\n")),
        "{text}"
    );
    assert!(text.ends_with(&key_line), "{text}");
    let again = f.run(&["key", "export", "--output", export.to_str().unwrap()]);
    assert_eq!(
        (again.code, again.stderr.as_str()),
        (
            2,
            format!(
                "error: {} exists already; the key is written only into a new file\n",
                export.display()
            )
            .as_str()
        )
    );
    // To standard output redirected to a file others could read: made 0600.
    let redirected = f.path().join("redirected");
    fs::write(&redirected, b"").unwrap();
    fs::set_permissions(&redirected, fs::Permissions::from_mode(0o644)).unwrap();
    let out = f
        .command(&["key", "export"])
        .stdout(fs::File::create(&redirected).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        fs::metadata(&redirected).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let written = fs::read_to_string(&redirected).unwrap();
    assert!(
        written.starts_with(&format!("# vaultline master key, fingerprint {fingerprint}\n")),
        "{written}"
    );
    assert!(written.ends_with(&key_line), "{written}");
    // Never onto a terminal.
    let tty = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --config {} key export",
            crate::util::vaultline_bin().display(),
            f.config.display()
        ))
        .arg("/dev/null")
        .env("HOME", f.home())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(
        shown.contains("refusing to print the master key onto a terminal"),
        "{shown}"
    );
    assert!(!shown.contains(&hex), "the key reached the terminal");

    // The key is lost; init makes no new one, a wrong key is refused.
    fs::remove_file(f.key_file()).unwrap();
    assert_eq!(f.run(&["init"]).code, 2);
    assert!(!f.key_file().exists());
    let other = Fixture::new("");
    let other_fp = other.run(&["--json", "init"]).ok().json()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = f.run(&["key", "import", other.key_file().to_str().unwrap()]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            2,
            format!(
                "error: {} holds local key {other_fp}, but local repository {} was sealed with local key \
                 {fingerprint}: not imported (the backup of key {fingerprint} is the one to import)\n",
                other.key_file().display(),
                f.repo().display()
            )
            .as_str()
        )
    );
    assert!(!f.key_file().exists());

    // The right one comes back, from a file or standard input.
    let run = f.run(&["key", "import", export.to_str().unwrap()]).ok();
    assert_eq!(
        run.stdout,
        format!(
            "master key {fingerprint} imported into key file {}; it is the key local repository {} was sealed \
             with\n",
            f.key_file().display(),
            f.repo().display()
        )
    );
    assert_eq!(
        fs::metadata(f.key_file()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let run = f.run(&["key", "import", export.to_str().unwrap()]).ok();
    assert!(
        run.stdout.contains("is in place already in key file"),
        "{}",
        run.stdout
    );
    let target = f.path().join("restore");
    f.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let src = f.path().join("src");
    crate::util::assert_same_tree(&src, &crate::util::restored(&target, &src));

    // A key in place is never replaced, not even by the right one: a
    // wrong key must be moved aside by hand.
    let right = fs::read(f.key_file()).unwrap();
    fs::copy(other.key_file(), f.key_file()).unwrap();
    let run = f.run(&["key", "import", export.to_str().unwrap()]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            2,
            format!(
                "error: key file {} already holds local key {other_fp}; vaultline never replaces a key: move it \
                 aside first if it is the wrong one\n",
                f.key_file().display()
            )
            .as_str()
        )
    );
    assert_eq!(
        fs::read(other.key_file()).unwrap(),
        fs::read(f.key_file()).unwrap()
    );
    fs::write(f.key_file(), right).unwrap();

    // The audit trail names the fingerprint, never the key.
    let trail = fs::read_to_string(f.state().join("audit.jsonl")).unwrap();
    assert!(trail.contains("\"what\":\"key-exported\""), "{trail}");
    assert!(trail.contains("\"what\":\"key-imported\""), "{trail}");
    assert!(!trail.contains(&hex), "the key reached the audit trail");
}

/// A user who may not read the repository gets the path and the fix, and
/// `init` creates no key before it knows the repository can be written.
#[test]
fn init_as_a_user_without_access_names_the_path_and_creates_no_key() {
    if !crate::util::root_or_explain("init_as_a_user_without_access") {
        return;
    }
    let f = Fixture::new("");
    let home = f.path().join("nobody");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    fs::create_dir_all(f.repo()).unwrap();
    fs::set_permissions(f.repo(), fs::Permissions::from_mode(0o700)).unwrap();
    let state = home.join("state");
    let config = fs::read_to_string(&f.config).unwrap().replace(
        &format!("{:?}", f.state().display().to_string()),
        &format!("{:?}", state.display().to_string()),
    );
    fs::write(&f.config, config).unwrap();
    let run = f.run_as_nobody(&home, &["init"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            4,
            format!(
                "error: cannot read the marker of local repository {r}: {r}/vaultline/repository.json: Permission \
                 denied (os error 13)\nhint: permission denied, and vaultline runs as user nobody (uid 65534), not \
                 root: a system installation's configuration, state and repository belong to root; run it as \
                 root (`sudo vaultline …`), or as the user that owns the path above\n",
                r = f.repo().display()
            )
            .as_str()
        )
    );
    assert!(
        !state.join("keys").exists(),
        "a key was created for a repository that cannot be written"
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
        "this repository was sealed with local key {original}, but the configured key is local key {other}: \
         move the configured key aside and put key {original} back from your key backup with `vaultline key \
         import FILE`"
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
    assert_eq!(run.stderr, format!("error: {want}\n"));

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

/// `init` says what it did to the repository's directory: created it,
/// initialized an existing one, or found a repository; a directory that
/// already held other files is said to, never reported as created.
#[test]
fn init_says_what_it_did_to_the_repository_directory() {
    let first_line = |run: Run| run.stdout.lines().next().unwrap_or_default().to_string();
    let f = Fixture::new("");
    let repo = f.repo().display().to_string();
    assert_eq!(
        first_line(f.init()),
        format!("repository: local repository {repo} (created)")
    );
    assert_eq!(
        first_line(f.init()),
        format!("repository: local repository {repo} (exists, matches the key)")
    );

    let empty = Fixture::new("");
    fs::create_dir_all(empty.repo()).unwrap();
    assert_eq!(
        first_line(empty.init()),
        format!(
            "repository: local repository {} (initialized in an existing empty directory)",
            empty.repo().display()
        )
    );

    let busy = Fixture::new("");
    fs::create_dir_all(busy.repo().join("photos")).unwrap();
    fs::write(busy.repo().join("notes.txt"), b"mine").unwrap();
    let run = busy.init();
    let repo = busy.repo().display().to_string();
    assert_eq!(
        first_line(Run {
            stdout: run.stdout.clone(),
            stderr: String::new(),
            code: 0
        }),
        format!(
            "repository: local repository {repo} (initialized in an existing directory that already holds 2 other entries)"
        )
    );
    assert_eq!(
        run.stderr,
        format!(
            " WARN local repository {repo} already held 2 entries that vaultline did not write (is it the right \
             path?); vaultline leaves them alone\n"
        )
    );
    assert_eq!(fs::read(busy.repo().join("notes.txt")).unwrap(), b"mine");
}
