//! What reaches the screen, a pipe or a cron mail: `-q` leaves only
//! warnings and errors, a reader that goes away (`| head -1`) ends the
//! output quietly, and progress bars on a terminal leave nothing behind.

use std::fs;
use std::process::Stdio;

use crate::util::{Fixture, Run};

/// A fixture with job `data` over a small tree, initialized and backed up.
fn backed_up() -> Fixture {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    fs::write(src.join("sub/b.bin"), vec![7u8; 50_000]).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\n\n[jobs.retention]\nkeep-last = 1\n",
        src.display().to_string()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();
    f
}

#[test]
fn quiet_prints_only_warnings_and_errors() {
    let f = backed_up();
    // The documented cron line: nothing to mail after a good run.
    let run = f.run(&["-q", "backup", "now"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let target = f.path().join("r");
    let run = f
        .run(&["-q", "restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let run = f.run(&["-q", "verify", "--all"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let run = f.run(&["-q", "forget", "--apply"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));

    // A warning still gets through, alone.
    let sock = f.path().join("src/app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let run = f.run(&["-q", "backup", "now"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            " WARN skipped {}: a socket: sockets are not archived (they are made by the program that listens on \
             them)\n",
            sock.display()
        )
    );

    // What was asked for is printed, -q or not.
    let run = f.run(&["-q", "snapshots"]).ok();
    assert!(run.stdout.starts_with("SNAPSHOT "), "{}", run.stdout);
    let run = f.run(&["-q", "--json", "backup", "now"]).ok();
    assert_eq!(run.json()[0]["job"], "data");
}

/// Runs `args` with standard output a pipe whose reader is already gone.
fn into_closed_pipe(f: &Fixture, args: &[&str]) -> Run {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let out = f
        .command(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_ends_quietly_in_every_command() {
    let f = backed_up();
    for args in [
        &["snapshots"][..],
        &["--json", "snapshots"],
        &["forget", "--dry-run"],
        &["verify"],
        &["--json", "verify", "--all"],
        &["status"],
        &["init"],
        &["audit-log", "verify"],
        &["--json", "backup", "now"],
        &["backup", "now"],
    ] {
        let run = into_closed_pipe(&f, args);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "vaultline {args:?} with its reader gone"
        );
    }
    // The backups above were recorded like any other, output or not.
    let status = f.run(&["--json", "status"]).ok().json();
    assert_eq!(status[0]["runs_total"], 3, "{status}");
    assert_eq!(status[0]["failures_total"], 0, "{status}");
    let target = f.path().join("r");
    let run = into_closed_pipe(&f, &["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(fs::read(target.join(f.path().join("src/a.txt").strip_prefix("/").unwrap())).unwrap(), b"alpha\n");
}
