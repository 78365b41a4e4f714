//! Checks never pass on nothing: a job or host that does not exist is a
//! usage error naming the ones that do (exit 2), and a check with nothing
//! to check (`verify` with no snapshot, `audit-log verify` with no trail)
//! is its own outcome (exit 8), never a quiet exit 0.

use std::fs;

use crate::util::{Fixture, Run};

/// A fixture with job `data` over a small tree; initialized, not backed up.
fn fixture() -> Fixture {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    f.init();
    f
}

/// Asserts exit `code`, stderr exactly `error: want`, and stdout `stdout`.
#[track_caller]
fn refused(run: Run, code: i32, want: &str, stdout: &str) {
    assert_eq!(
        (run.code, run.stderr.as_str(), run.stdout.as_str()),
        (code, format!("error: {want}\n").as_str(), stdout),
    );
}

#[test]
fn an_unknown_job_is_a_usage_error_naming_the_known_jobs() {
    let f = fixture();
    f.run(&["backup", "now"]).ok();
    let want = format!(
        "no job \"ect\": {} has no such job and host testhost has no snapshots of it in local repository {} \
         (jobs: data)",
        f.config.display(),
        f.repo().display()
    );
    refused(f.run(&["verify", "--job", "ect"]), 2, &want, "");
    refused(f.run(&["verify", "--all", "--job", "ect"]), 2, &want, "");
    refused(f.run(&["--json", "verify", "--job", "ect"]), 2, &want, "");
    refused(f.run(&["snapshots", "ect"]), 2, &want, "");
    let target = f.path().join("r");
    refused(
        f.run(&[
            "restore",
            "latest",
            "--job",
            "ect",
            "--target",
            target.to_str().unwrap(),
        ]),
        2,
        &want,
        "",
    );

    // A job taken out of the configuration still has its snapshots: known
    // from the repository, listed and verified, and named among the jobs.
    let src = f.path().join("src");
    f.write_config(&format!(
        "[[jobs]]\nname = \"renamed\"\npaths = [{:?}]\n",
        src.display().to_string()
    ));
    let listed = f.run(&["--json", "snapshots", "data"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    f.run(&["verify", "--job", "data"]).ok();
    let run = f.run(&["verify", "--job", "ect"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.ends_with("(jobs: data, renamed)\n"), "{}", run.stderr);
}

#[test]
fn an_unknown_host_is_a_usage_error_naming_the_hosts_with_snapshots() {
    let f = fixture();
    let repo = f.repo().display().to_string();
    let none = format!(
        "no snapshots of host \"otherhost\" in local repository {repo} (no host has snapshots there yet)"
    );
    refused(f.run(&["verify", "--host", "otherhost"]), 2, &none, "");
    f.run(&["backup", "now"]).ok();
    let want = format!(
        "no snapshots of host \"otherhost\" in local repository {repo} (hosts with snapshots: testhost)"
    );
    refused(f.run(&["verify", "--host", "otherhost"]), 2, &want, "");
    refused(
        f.run(&["--json", "verify", "--all", "--host", "otherhost"]),
        2,
        &want,
        "",
    );
    refused(f.run(&["snapshots", "--host", "otherhost"]), 2, &want, "");
    refused(
        f.run(&["forget", "--dry-run", "--host", "otherhost"]),
        2,
        &want,
        "",
    );
    let target = f.path().join("r");
    refused(
        f.run(&[
            "restore",
            "latest",
            "--host",
            "otherhost",
            "--target",
            target.to_str().unwrap(),
        ]),
        2,
        &want,
        "",
    );
    // The configured host given by name is this host, with or without snapshots.
    f.run(&["verify", "--host", "testhost"]).ok();
}

#[test]
fn verify_with_no_snapshot_to_check_exits_8_not_0() {
    let f = fixture();
    let repo = f.repo().display().to_string();
    let host = format!("nothing to verify: host testhost has no snapshots in local repository {repo}");
    refused(f.run(&["verify"]), 8, &host, "");
    refused(f.run(&["verify", "--all"]), 8, &host, "");
    refused(f.run(&["verify", "latest"]), 8, &host, "");
    // --json still prints a document: an empty list, and the same exit code.
    refused(f.run(&["--json", "verify", "--all"]), 8, &host, "[]\n");
    let job =
        format!("nothing to verify: job data of host testhost has no snapshots in local repository {repo}");
    refused(f.run(&["verify", "--job", "data"]), 8, &job, "");

    // Once there is one, verify passes and says what it checked.
    f.run(&["backup", "now"]).ok();
    let run = f.run(&["verify"]).ok();
    assert!(
        run.stdout.ends_with(" (data): ok, 2 entries, 6 B\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn audit_log_verify_with_no_trail_is_nothing_to_check_or_a_missing_trail() {
    // A fresh state directory and repository: nothing recorded anywhere.
    let f = Fixture::new("");
    let trail = f.state().join("audit.jsonl");
    let want = format!(
        "nothing to verify: no audit trail at {} (nothing has been recorded with this state directory yet) and \
         local repository {} holds none shipped by host testhost",
        trail.display(),
        f.repo().display()
    );
    refused(f.run(&["audit-log", "verify"]), 8, &want, "");

    // A trail that was shipped and then removed locally is not "nothing".
    let f = fixture();
    f.run(&["backup", "now"]).ok();
    let trail_id = f.objects(".jsonl")[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    fs::remove_file(f.state().join("audit.jsonl")).unwrap();
    let want = format!(
        "no audit trail at {}, but local repository {} holds 1 audit segment shipped by host testhost (trail \
         {trail_id}): the local trail was removed, or agent.state-dir is not the state directory that wrote it",
        f.state().join("audit.jsonl").display(),
        f.repo().display()
    );
    refused(f.run(&["audit-log", "verify"]), 5, &want, "");
}
