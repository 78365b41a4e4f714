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
    assert_eq!(
        fs::read(target.join(f.path().join("src/a.txt").strip_prefix("/").unwrap())).unwrap(),
        b"alpha\n"
    );
}

/// What a terminal shows after `raw` was written to it (`width` columns):
/// enough of a VT100 for progress bars and log lines (`\r`, `\n`, erase
/// line and display, cursor up and down, column; colours ignored).
fn screen(raw: &str, width: usize) -> Vec<String> {
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
            }
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut params = String::new();
                let mut last = ' ';
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() {
                        last = p;
                        break;
                    }
                    params.push(p);
                }
                let n = params.trim_start_matches('?').parse::<usize>().unwrap_or(0);
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                match last {
                    'K' if n == 2 => rows[row].clear(),
                    'K' => rows[row].truncate(col),
                    'J' => {
                        rows[row].truncate(col);
                        rows.truncate(row + 1);
                    }
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => row += n.max(1),
                    'G' => col = n.saturating_sub(1),
                    _ => {} // colours, cursor shown or hidden
                }
            }
            '\x1b' => {}
            c => {
                if col >= width {
                    row += 1;
                    col = 0;
                }
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let line = &mut rows[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .collect()
}

#[test]
fn the_terminal_emulation_of_these_tests_is_sound() {
    let raw = "bar 1\r\x1b[2Kbar 2\nline\r\n\x1b[1A\x1b[2Knew\x1b[31m red\x1b[0m";
    assert_eq!(screen(raw, 80), ["bar 2", "new red", ""]);
    assert_eq!(screen("abcdef", 4), ["abcd", "ef"]);
}

/// On a terminal, a log line written while the bar is shown does not
/// leave a frozen copy of the bar behind, the finished bar is cleared, and
/// the bar shows entries out of their total, with no `ETA 0s` at 0 B/s.
#[test]
fn progress_bars_leave_nothing_behind_on_a_terminal() {
    let f = Fixture::new("");
    let tree = f.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    // Big enough for the bar to be drawn while it is read.
    fs::write(tree.join("a-big"), crate::util::noise(48 << 20, 7)).unwrap();
    // vaultline's own directories inside the job: the walk logs each at
    // debug level (-v) while the bar is up, after the big file.
    fs::write(
        &f.config,
        format!(
            "[agent]\nhost = \"testhost\"\nstate-dir = {:?}\n\n[repository]\ntype = \"local\"\npath = {:?}\n\n\
             [key]\nstorage = \"file\"\n\n[[jobs]]\nname = \"data\"\npaths = [{:?}]\n",
            tree.join("state").display().to_string(),
            tree.join("repo").display().to_string(),
            tree.display().to_string()
        ),
    )
    .unwrap();
    f.init();
    let on_a_terminal = |args: &str| {
        let out = std::process::Command::new("script")
            .arg("-qec")
            .arg(format!(
                "stty cols 200 rows 60; exec {} --config {} {args}",
                crate::util::vaultline_bin().display(),
                f.config.display()
            ))
            .arg("/dev/null")
            .env("HOME", f.home())
            .env("TERM", "xterm")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let raw = on_a_terminal("-v backup now");
    let lines = screen(&raw, 200);
    let own = format!(
        "DEBUG not archiving {}: it is vaultline's own",
        tree.join("repo").display()
    );
    assert!(
        lines.iter().any(|l| l.trim() == own),
        "no clean log line; screen:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("backing up data")),
        "the bar left debris; screen:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.starts_with("data: snapshot ")),
        "{}",
        lines.join("\n")
    );
    assert!(raw.contains("/2 entries"), "no total of entries: {raw:?}");
    assert!(
        !raw.contains("ETA 0s") && !raw.contains(" 0 B/s"),
        "ETA or rate before they were known: {raw:?}"
    );

    // Verify and restore show a bar too, and clear it.
    let raw = on_a_terminal("verify");
    assert!(raw.contains("verifying "), "{raw:?}");
    assert!(
        !screen(&raw, 200).iter().any(|l| l.contains("verifying ")),
        "{raw:?}"
    );
    let target = f.path().join("r");
    let raw = on_a_terminal(&format!("restore latest --target {}", target.display()));
    assert!(raw.contains("restoring "), "{raw:?}");
    assert!(
        !screen(&raw, 200).iter().any(|l| l.contains("restoring ")),
        "{raw:?}"
    );
}

/// `forget --apply` on a local repository says nothing of versioned
/// buckets (an S3 matter), and counts in words that agree with the number.
#[test]
fn forget_on_a_local_repository_says_nothing_of_versioned_buckets() {
    let f = backed_up();
    f.run(&["backup", "now"]).ok();
    let run = f.run(&["forget", "--apply"]).ok();
    assert!(!run.stdout.contains("versioned bucket"), "{}", run.stdout);
    assert!(run.stdout.contains("  removed 1 snapshot and "), "{}", run.stdout);
}
