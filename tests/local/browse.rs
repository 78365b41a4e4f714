//! Looking inside without restoring: `ls` and `find` read manifests only,
//! snapshot ids may be shortened to a unique prefix, `backup --dry-run`
//! shows what a run would take, and `backup` alone runs the jobs, as
//! restic users expect.

use std::fs;
use std::path::PathBuf;

use crate::util::{Fixture, Run};

/// Job `data` over a small tree (one file excluded), initialized.
fn fixture() -> (Fixture, PathBuf) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("etc/ssh")).unwrap();
    fs::write(src.join("etc/app.conf"), b"conf\n").unwrap();
    fs::write(src.join("etc/ssh/ssh_config"), b"Host *\n").unwrap();
    fs::write(src.join("notes.txt"), vec![b'n'; 2048]).unwrap();
    fs::write(src.join("notes.txt.swp"), b"swap").unwrap();
    std::os::unix::fs::symlink("etc/app.conf", src.join("link")).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\nexclude = [\"*.swp\"]\n",
        src.display().to_string()
    ));
    f.init();
    (f, src)
}

fn ids(f: &Fixture) -> Vec<String> {
    let listed = f.run(&["--json", "snapshots"]).ok().json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ls_lists_a_snapshot_from_its_manifest_alone() {
    let (f, src) = fixture();
    f.run(&["backup"]).ok();
    // No archive is read: with every archive gone, ls still works.
    for a in f.objects(".archive") {
        fs::remove_file(a).unwrap();
    }
    let s = src.display();
    let run = f.run(&["ls", "latest"]).ok();
    assert_eq!(
        run.stdout,
        format!(
            "{s}\n{s}/etc\n{s}/etc/app.conf\n{s}/etc/ssh\n{s}/etc/ssh/ssh_config\n{s}/link -> etc/app.conf\n\
             {s}/notes.txt\n"
        )
    );
    // A path and what is directly in it; everything below with -r.
    let etc = format!("{s}/etc");
    let run = f.run(&["ls", "latest", &etc]).ok();
    assert_eq!(run.stdout, format!("{s}/etc\n{s}/etc/app.conf\n{s}/etc/ssh\n"));
    let run = f.run(&["ls", "-r", "latest", &format!("{etc}/")]).ok();
    assert_eq!(
        run.stdout,
        format!("{s}/etc\n{s}/etc/app.conf\n{s}/etc/ssh\n{s}/etc/ssh/ssh_config\n")
    );
    // The long format, as ls -l shows it.
    let run = f.run(&["ls", "-l", "latest", &format!("{s}/notes.txt")]).ok();
    let line = run.stdout.trim_end();
    assert!(line.starts_with("-rw-r--r--"), "{line}");
    assert!(line.contains(" 2.0 KiB  "), "{line}");
    assert!(line.ends_with(&format!("  {s}/notes.txt")), "{line}");
    let json = f
        .run(&["--json", "ls", "latest", &format!("{s}/link")])
        .ok()
        .json();
    assert_eq!(json[0]["type"], "symlink");
    assert_eq!(json[0]["target"], "etc/app.conf");
    // A path the snapshot does not have is named.
    let run = f.run(&["ls", "latest", "/nope"]);
    let id = &ids(&f)[0];
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            2,
            format!("error: snapshot {id} of job data has no /nope\n").as_str()
        )
    );
}

#[test]
fn find_matches_entries_of_every_snapshot_with_the_one_pattern_language() {
    let (f, src) = fixture();
    f.run(&["backup"]).ok();
    fs::write(src.join("etc/extra.conf"), b"new\n").unwrap();
    f.run(&["backup"]).ok();
    let ids = ids(&f);
    let s = src.display();
    let run = f.run(&["find", "*.conf"]).ok();
    let rows: Vec<(String, String)> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].to_string(), cols[cols.len() - 1].to_string())
        })
        .collect();
    assert!(run.stdout.starts_with("SNAPSHOT "), "{}", run.stdout);
    assert_eq!(
        rows,
        [
            (ids[0].clone(), format!("{s}/etc/app.conf")),
            (ids[1].clone(), format!("{s}/etc/app.conf")),
            (ids[1].clone(), format!("{s}/etc/extra.conf")),
        ]
    );
    // With a `/`: a path from the root; one snapshot by a prefix of its id.
    let json = f
        .run(&[
            "--json",
            "find",
            &format!("{s}/etc/**"),
            "--snapshot",
            &ids[1][17..23],
        ])
        .ok()
        .json();
    let paths: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            format!("{s}/etc/app.conf"),
            format!("{s}/etc/extra.conf"),
            format!("{s}/etc/ssh"),
            format!("{s}/etc/ssh/ssh_config")
        ]
    );
    assert_eq!(json[0]["snapshot"], ids[1].as_str());
    let run = f.run(&["find", "nothing-like-this"]).ok();
    assert_eq!(
        run.stdout,
        "no entry of 2 snapshots of host testhost matches nothing-like-this\n"
    );
    assert_eq!(f.run(&["find", "x", "--job", "ect"]).code, 2);
}

#[test]
fn a_unique_id_prefix_is_accepted_wherever_an_id_is() {
    let (f, src) = fixture();
    f.run(&["backup"]).ok();
    f.run(&["backup"]).ok();
    let ids = ids(&f);
    let short = &ids[0][17..]; // the hex digits after the dash, like restic's short ids
    let target = f.path().join("r");
    f.run(&["restore", short, "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(crate::util::restored(&target, &src).join("etc/app.conf")).unwrap(),
        b"conf\n"
    );
    let run = f.run(&["verify", &short[..5]]).ok();
    assert!(
        run.stdout.starts_with(&format!("{} (data): ok", ids[0])),
        "{}",
        run.stdout
    );
    f.run(&["ls", &ids[1][..ids[1].len() - 1]]).ok();

    // A prefix both ids share is refused, naming them.
    let common = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect::<String>();
    let run = f.run(&["verify", &common]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            2,
            format!(
                "error: {common:?} is ambiguous: 2 snapshots of host testhost match: {} (data), {} (data); give \
                 more characters\n",
                ids[0], ids[1]
            )
            .as_str()
        )
    );
}

#[test]
fn backup_dry_run_lists_what_would_be_archived_and_left_out_and_writes_nothing() {
    let (f, src) = fixture();
    // No key and no repository yet: a dry run needs neither.
    fs::remove_dir_all(f.repo()).unwrap();
    fs::remove_file(f.key_file()).unwrap();
    let state_before = crate::util::files_under(&f.state());
    let s = src.display();
    let run = f.run(&["backup", "--dry-run"]).ok();
    assert_eq!(
        run.stdout,
        format!(
            "job data: dry run, nothing was read or written\n  + {s}  (dir)\n  + {s}/etc  (dir)\n  + {s}/etc/app.conf  \
             (5 B)\n  + {s}/etc/ssh  (dir)\n  + {s}/etc/ssh/ssh_config  (7 B)\n  + {s}/link  (symlink)\n  + \
             {s}/notes.txt  (2.0 KiB)\n  - {s}/notes.txt.swp  (excluded by \"*.swp\")\n  would archive 3 files \
             (2.0 KiB) in 7 entries; 1 excluded, 0 skipped, 0 unreadable\n"
        )
    );
    assert!(!f.repo().exists(), "a dry run wrote into the repository");
    assert_eq!(
        crate::util::files_under(&f.state()),
        state_before,
        "a dry run wrote state"
    );
    let json = f.run(&["--json", "backup", "now", "--dry-run"]).ok().json();
    assert_eq!(json[0]["files"], 3);
    assert_eq!(json[0]["excluded"][0]["why"], "excluded by \"*.swp\"");
    // A mistyped flag gets the real one suggested, not `-- --dryrun`.
    let run: Run = f.run(&["backup", "--dryrun"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("tip: a similar argument exists: '--dry-run'"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("as a value"), "{}", run.stderr);
    let run = f.run(&["restore", "latest", "--target", "/tmp/x", "--frobnicate"]);
    assert_eq!(run.code, 2);
    assert!(!run.stderr.contains("as a value"), "{}", run.stderr);
}

#[test]
fn backup_alone_runs_the_jobs_like_backup_now() {
    let (f, _) = fixture();
    let run = f.run(&["backup"]).ok();
    assert!(run.stdout.starts_with("data: snapshot "), "{}", run.stdout);
    f.run(&["backup", "data"]).ok();
    f.run(&["backup", "now", "data"]).ok();
    f.run(&["backup", "now"]).ok();
    assert_eq!(ids(&f).len(), 4);
    // restore --dry-run says what it would do and writes nothing.
    let target = f.path().join("r");
    let run = f
        .run(&[
            "restore",
            "latest",
            "--dry-run",
            "--target",
            target.to_str().unwrap(),
        ])
        .ok();
    assert!(
        run.stdout
            .starts_with("dry run: would restore 7 entries (2.0 KiB of content)"),
        "{}",
        run.stdout
    );
    assert!(!target.exists());
}
