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
    assert!(f.objects(".manifest").is_empty(), "no empty snapshot was committed");
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
    assert!(run.stdout.contains(&format!("NOT BACKED UP: {}/b", missing.display())), "{}", run.stdout);
}
