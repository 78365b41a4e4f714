//! One pattern language (docs/patterns.md): what a job's `exclude` means in
//! the configuration, restore's `--include`, `--exclude` and PATHs mean on
//! the command line.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{Fixture, files_under, restored};

/// Files restored under `target`, relative to the source `src`.
fn restored_names(target: &Path, src: &Path) -> Vec<String> {
    let base = restored(target, src);
    files_under(&base)
        .iter()
        .map(|p| p.strip_prefix(&base).unwrap().display().to_string())
        .collect()
}

fn tree() -> (Fixture, PathBuf) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(src.join("ssh/keys")).unwrap();
    fs::create_dir_all(src.join("app/deep")).unwrap();
    for (name, body) in [
        ("a.conf", "a"),
        ("ssh/ssh_config", "s"),
        ("ssh/keys/host.key", "k"),
        ("app/deep/c.conf", "c"),
        ("app/deep/c.conf.bak", "b"),
        ("app/notes.swp", "swap"),
        ("app/deep/more.swp", "swap"),
        ("keep.txt", "keep"),
    ] {
        fs::write(src.join(name), body).unwrap();
    }
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\nexclude = [\"*.swp\", \"{}/ssh/keys\"]\n",
        src.display().to_string(),
        src.display()
    ));
    f.init();
    f.run(&["backup", "now"]).ok();
    (f, src)
}

#[test]
fn restore_patterns_mean_what_config_excludes_mean() {
    let (f, src) = tree();
    let restore = |name: &str, args: &[&str]| {
        let target = f.path().join(name);
        let mut all = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        all.extend_from_slice(args);
        f.run(&all).ok();
        restored_names(&target, &src)
    };
    // The configuration's `*.swp` (a name anywhere) and its anchored path
    // kept those out of the snapshot.
    assert_eq!(
        restore("all", &[]),
        [
            "a.conf",
            "app/deep/c.conf",
            "app/deep/c.conf.bak",
            "keep.txt",
            "ssh/ssh_config"
        ]
    );
    // The same text on the command line: a name anywhere.
    assert_eq!(
        restore("inc", &["--include", "*.conf"]),
        ["a.conf", "app/deep/c.conf"]
    );
    assert_eq!(restore("name", &["--include", "ssh_config"]), ["ssh/ssh_config"]);
    assert_eq!(
        restore("exc", &["--exclude", "*.conf"]),
        ["app/deep/c.conf.bak", "keep.txt", "ssh/ssh_config"]
    );
    // A directory's name brings (or keeps out) everything below it.
    assert_eq!(
        restore("dir", &["--include", "deep"]),
        ["app/deep/c.conf", "app/deep/c.conf.bak"]
    );
    // With a `/`: anchored at the root, with or without the leading `/`.
    let app = src.join("app").display().to_string();
    assert_eq!(
        restore("anchored", &["--include", &format!("{app}/**/*.conf")]),
        ["app/deep/c.conf"]
    );
    assert_eq!(
        restore("relative", &["--include", app.trim_start_matches('/')]),
        ["app/deep/c.conf", "app/deep/c.conf.bak"]
    );
    // A PATH is anchored at the root even without a `/`: `app` is /app,
    // which the snapshot does not hold.
    let target = f.path().join("none");
    let run = f.run(&["restore", "latest", "app", "--target", target.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn a_bad_pattern_is_named_the_same_way_everywhere() {
    let (f, _) = tree();
    let target = f.path().join("r");
    let run = f.run(&[
        "restore",
        "latest",
        "--include",
        "[abc",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            2,
            "error: --include: invalid pattern \"[abc\": unclosed character class; missing ']'\n"
        )
    );
}
