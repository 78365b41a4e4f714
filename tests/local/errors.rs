//! Errors name the thing at fault: a job with nothing to back up, the
//! repository when it is full, the path and the user when permission is
//! denied.

use std::fs;

use crate::util::Fixture;

#[test]
fn a_job_none_of_whose_paths_exist_refuses_to_run() {
    let f = Fixture::new("");
    let missing = f.path().join("not-mounted");
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}, {:?}]\n",
        missing.join("a").display().to_string(),
        missing.join("b").display().to_string()
    ));
    f.init();
    let want = format!(
        "error: job data: none of its paths exist ({m}/a, {m}/b); nothing to back up (a typo in {}, or a file \
         system that is not mounted?)\n",
        f.config.display(),
        m = missing.display()
    );
    let run = f.run(&["backup", "now"]);
    assert_eq!((run.code, run.stderr.as_str()), (2, want.as_str()));
    assert!(
        f.objects(".manifest").is_empty(),
        "no empty snapshot was committed"
    );
    let run = f.run(&["backup", "--dry-run"]);
    assert_eq!((run.code, run.stderr.as_str()), (2, want.as_str()));
    // It is a failed run for monitoring.
    let status = f.run(&["--json", "status"]).ok().json();
    assert_eq!(status[0]["last_run"]["result"], "failed", "{status}");

    // One path there is enough: the missing one is reported, the run goes on.
    fs::create_dir_all(missing.join("a")).unwrap();
    fs::write(missing.join("a/x"), b"x").unwrap();
    let run = f.run(&["backup", "now"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("NOT BACKED UP: {}/b", missing.display())),
        "{}",
        run.stdout
    );
}

/// A repository disk that fills up is named as what is at fault (with the
/// file it could not write and what to do), never the source file being
/// archived at the time; nothing is left half-written.
#[test]
fn a_full_repository_is_named_not_the_file_being_archived() {
    if !crate::util::root_or_explain("a_full_repository") {
        return;
    }
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file.zip"), crate::util::noise(4 << 20, 3)).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    fs::create_dir_all(f.repo()).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(f.repo())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(f.repo());
    f.init();
    let run = f.run(&["backup", "now"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let repo = f.repo().display().to_string();
    let prefix = format!(
        "error: job data: local repository {repo} is full: cannot write {repo}/vaultline/testhost/data/archives/"
    );
    let error = run.stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with(&prefix), "{}", run.stderr);
    assert!(
        error.ends_with(
            "/0.archive: No space left on device (os error 28); free space there (`vaultline forget --apply` \
             removes the snapshots the retention policies no longer keep) and run again"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("file.zip"),
        "the source is not at fault: {}",
        run.stderr
    );
    let left: Vec<String> = f
        .repo_files()
        .into_iter()
        .filter(|n| n.contains(".pending-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let status = f.run(&["--json", "status"]).ok().json();
    assert_eq!(status[0]["last_run"]["result"], "failed");
}
