//! What vaultline keeps on the host is private, and nothing it writes can
//! be turned against another file: the state directory is 0700 and its
//! files 0600; a configuration that others can change while it holds a
//! command run as root is refused; a key file someone else owns is refused.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::util::Fixture;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn backed_up(extra_job: &str) -> Fixture {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"j\"\npaths = [{:?}]\n{extra_job}",
        src.display().to_string()
    ));
    f.init();
    f
}

#[test]
fn the_state_directory_and_its_files_are_private() {
    let f = backed_up("");
    // An older version left it open to everyone.
    fs::set_permissions(f.state(), fs::Permissions::from_mode(0o755)).unwrap();
    f.run(&["backup", "now"]).ok();
    let state = f.state();
    assert_eq!(mode(&state), 0o700);
    for sub in ["status", "locks", "incremental", "keys"] {
        assert_eq!(mode(&state.join(sub)), 0o700, "{sub}");
    }
    for file in [
        "audit.jsonl",
        "audit.shipped",
        "status/j.json",
        "incremental/j.json",
        "keys/master.key",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
}

#[test]
fn state_files_are_never_written_through_a_symlink() {
    let f = backed_up("");
    f.run(&["backup", "now"]).ok();
    // Someone who could write here plants links at every name vaultline writes.
    let victim = f.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let state = f.state();
    for name in ["status/j.json", "incremental/j.json", "audit.shipped"] {
        fs::remove_file(state.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(name)).unwrap();
    }
    f.run(&["backup", "now"]).ok();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    for name in ["status/j.json", "incremental/j.json", "audit.shipped"] {
        assert!(
            !fs::symlink_metadata(state.join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}"
        );
    }
    // The audit trail is appended to, never through a link: the command fails.
    fs::rename(state.join("audit.jsonl"), state.join("audit.saved")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("audit.jsonl")).unwrap();
    let run = f.run(&["backup", "now"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("cannot open audit trail"), "{}", run.stderr);
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_configuration_others_can_change_may_not_hold_commands_run_as_root() {
    let f = backed_up("on-failure = \"logger vaultline failed\"\n");
    fs::set_permissions(&f.config, fs::Permissions::from_mode(0o666)).unwrap();
    let run = f.run(&["status"]);
    if !is_root() {
        // Not root: nothing runs as root; the configuration is the user's own.
        assert_eq!(run.code, 0, "{run:?}");
        return;
    }
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        format!(
            "error: configuration file {} is writable by everyone (mode 0666), and the configuration holds \
             commands vaultline runs as root (jobs \"j\" on-failure): anyone who can change it chooses what \
             root runs; fix with `chmod go-w {}`",
            f.config.display(),
            f.config.display()
        )
    );
    fs::set_permissions(&f.config, fs::Permissions::from_mode(0o644)).unwrap();
    rustix::fs::chown(&f.config, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    let run = f.run(&["status"]).code(2);
    assert!(
        run.stderr.contains(&format!(
            "configuration file {} is owned by uid 65534, and the configuration holds commands",
            f.config.display()
        )) && run
            .stderr
            .contains(&format!("fix with `chown root: {}`", f.config.display())),
        "{}",
        run.stderr
    );
    rustix::fs::chown(&f.config, Some(rustix::fs::Uid::ROOT), None).unwrap();
    f.run(&["status"]).ok();
    // Without commands, a readable-by-all, group-writable file is the operator's business.
    let plain = backed_up("");
    fs::set_permissions(&plain.config, fs::Permissions::from_mode(0o664)).unwrap();
    plain.run(&["status"]).ok();
}

#[test]
fn a_key_file_owned_by_someone_else_is_refused() {
    let f = backed_up("");
    if !is_root() {
        // Only root can give a file away; as another user the file is ours.
        assert_eq!(
            fs::metadata(f.key_file()).unwrap().uid(),
            rustix::process::geteuid().as_raw()
        );
        return;
    }
    rustix::fs::chown(f.key_file(), Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    let run = f.run(&["backup", "now"]).code(2);
    assert!(
        run.stderr.contains(&format!(
            "key file {} is owned by uid 65534, not by this user (uid 0): if it is the right key, run `chown 0 {}`",
            f.key_file().display(),
            f.key_file().display()
        )),
        "{}",
        run.stderr
    );
}
