//! Configuration mistakes, through the real binary: each one exits 2 with the
//! exact `error: FILE:LINE:COL: TOML.PATH: message` line, and nothing is
//! written anywhere (repository, state directory, HOME).
//!
//! Every fixture is first initialized with its valid configuration, so the
//! repository and the key exist; then the mistake is written and
//! `backup now` is run. The standard header of [`Fixture::write_config`] is
//! 11 lines, so `extra` starts on line 12.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{Fixture, Run, vaultline_bin};

/// Name of every file and directory under `dir`, with its size and mtime.
fn tree_state(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).expect("lstat");
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (meta.len(), meta.modified().ok()));
        }
    }
    out
}

/// Everything in the fixture except the configuration file itself.
fn fixture_state(f: &Fixture) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    let mut s = tree_state(f.path());
    s.remove(&f.config);
    s
}

/// A fixture with a source directory and one valid job, initialized.
fn initialized() -> (Fixture, String) {
    let f = Fixture::new("");
    let src = f.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"content").unwrap();
    let src = src.display().to_string();
    f.write_config(&format!("[[jobs]]\nname = \"data\"\npaths = [{src:?}]\n"));
    f.init();
    (f, src)
}

/// Runs `args`, asserts exit 2, that stderr is exactly `error: ` + `want`,
/// and that nothing in the fixture changed.
#[track_caller]
fn rejected_with(f: &Fixture, args: &[&str], want: &str) -> Run {
    let before = fixture_state(f);
    let repo_before = f.repo_files();
    let run = f.run(args).code(2);
    assert_eq!(
        run.stderr,
        format!("error: {want}\n"),
        "config:\n{}",
        fs::read_to_string(&f.config).unwrap()
    );
    assert_eq!(f.repo_files(), repo_before, "the repository changed");
    assert_eq!(fixture_state(f), before, "something was written");
    assert!(!f.state().join("locks").exists(), "a job lock was taken");
    run
}

/// Writes `text` as the whole configuration, runs `backup now`, and checks
/// the single error line `CONFIG:POSITION: rest`.
#[track_caller]
fn config_rejected(f: &Fixture, text: &str, position_and_message: &str) {
    fs::write(&f.config, text).unwrap();
    rejected_with(
        f,
        &["backup", "now"],
        &format!("{}:{position_and_message}", f.config.display()),
    );
}

/// The fixture's standard configuration with one valid job over `src`, plus
/// `after_job` appended right after the job's `paths` line (line 15 on).
fn with_job_line(f: &Fixture, src: &str, after_job: &str) -> String {
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{src:?}]\n{after_job}"
    ));
    fs::read_to_string(&f.config).unwrap()
}

/// The standard configuration (valid job included) with `from` replaced.
fn replaced(f: &Fixture, src: &str, from: &str, to: &str) -> String {
    let text = with_job_line(f, src, "");
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    text.replacen(from, to, 1)
}

#[test]
fn toml_syntax_error() {
    let (f, src) = initialized();
    let text = replaced(&f, &src, "[repository]", "[repository");
    config_rejected(&f, &text, "5:12: unclosed table, expected `]`");
}

#[test]
fn unknown_key() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "schedul = \"0 3 * * *\"\n");
    config_rejected(
        &f,
        &text,
        "15:1: jobs[0].schedul: unknown key `schedul`: did you mean `schedule`?",
    );
}

#[test]
fn value_of_the_wrong_type() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "compression-level = \"high\"\n");
    config_rejected(
        &f,
        &text,
        "15:21: jobs[0].compression-level: expected a whole number, found the string \"high\"",
    );
}

#[test]
fn missing_required_key() {
    let (f, _) = initialized();
    f.write_config("[[jobs]]\nname = \"data\"\n");
    let text = fs::read_to_string(&f.config).unwrap();
    config_rejected(&f, &text, "12:1: jobs[0]: missing key `paths`");
}

#[test]
fn unknown_repository_type() {
    let (f, src) = initialized();
    let text = replaced(&f, &src, "type = \"local\"", "type = \"ftp\"");
    config_rejected(
        &f,
        &text,
        "6:8: repository.type: unknown value `ftp`: expected one of `local`, `s3`",
    );
}

#[test]
fn relative_repository_path() {
    let (f, src) = initialized();
    let repo_line = format!("path = {:?}", f.repo().display().to_string());
    let text = replaced(&f, &src, &repo_line, "path = \"backups\"");
    config_rejected(
        &f,
        &text,
        "7:8: repository.path: \"backups\" must be an absolute path",
    );
    assert!(!f.path().join("backups").exists());
}

#[test]
fn invalid_cron_expression() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "schedule = \"61 * * * *\"\n");
    config_rejected(
        &f,
        &text,
        "15:12: jobs[0].schedule: invalid cron expression \"61 * * * *\": minute must be 0-59",
    );
}

#[test]
fn duplicate_job_name() {
    let (f, src) = initialized();
    // Lines 16-18: the second job.
    let text = with_job_line(
        &f,
        &src,
        &format!("\n[[jobs]]\nname = \"data\"\npaths = [{src:?}]\n"),
    );
    config_rejected(
        &f,
        &text,
        "17:8: jobs[1].name: duplicate job name \"data\" (also jobs[0].name)",
    );
}

#[test]
fn invalid_job_name() {
    let (f, src) = initialized();
    let text = replaced(&f, &src, "name = \"data\"", "name = \"My Job\"");
    config_rejected(
        &f,
        &text,
        "13:8: jobs[0].name: \"My Job\" is not a valid job name: use 1 to 64 lowercase letters, \
         digits, `-` or `_`, starting with a letter or digit",
    );
}

#[test]
fn job_without_paths() {
    let (f, src) = initialized();
    let text = replaced(&f, &src, &format!("paths = [{src:?}]"), "paths = []");
    config_rejected(
        &f,
        &text,
        "14:9: jobs[0].paths: at least one path is required (or a command source, [[jobs.commands]])",
    );
}

#[test]
fn path_inside_another_path() {
    let (f, src) = initialized();
    let inner = format!("{src}/sub");
    let paths_line = format!("paths = [{src:?}, {inner:?}]");
    let text = replaced(&f, &src, &format!("paths = [{src:?}]"), &paths_line);
    // The second element starts after `paths = [`, the quoted first one and `, `.
    let column = "paths = [".len() + format!("{src:?}").len() + ", ".len() + 1;
    config_rejected(
        &f,
        &text,
        &format!(
            "14:{column}: jobs[0].paths[1]: {inner} is inside {src} (jobs[0].paths[0]); list only {src}"
        ),
    );
}

#[test]
fn invalid_exclude_glob() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "exclude = [\"*.tmp\", \"[abc\"]\n");
    config_rejected(
        &f,
        &text,
        "15:21: jobs[0].exclude[1]: invalid pattern \"[abc\": unclosed character class; missing ']'",
    );
}

#[test]
fn compression_level_out_of_range() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "compression-level = 25\n");
    config_rejected(
        &f,
        &text,
        "15:21: jobs[0].compression-level: 25 is out of range: expected 1 to 19",
    );
}

#[test]
fn misspelt_hardening_check() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "\n[hardening.checks]\nversionin = \"warn\"\n");
    config_rejected(
        &f,
        &text,
        "17:1: hardening.checks.versionin: unknown key `versionin`: did you mean `versioning`?",
    );
}

#[test]
fn invalid_key_storage() {
    let (f, src) = initialized();
    let text = replaced(&f, &src, "storage = \"file\"", "storage = \"vault\"");
    config_rejected(
        &f,
        &text,
        "10:11: key.storage: unknown value `vault`: expected one of `auto`, `keyring`, `file`",
    );
}

#[test]
fn repository_path_with_dot_dot() {
    let (f, src) = initialized();
    let repo_line = format!("path = {:?}", f.repo().display().to_string());
    let bad = format!("{}/../elsewhere", f.repo().display());
    let text = replaced(&f, &src, &repo_line, &format!("path = {bad:?}"));
    config_rejected(
        &f,
        &text,
        &format!("7:8: repository.path: {bad:?} must not contain `.` or `..` components"),
    );
    assert!(!f.path().join("elsewhere").exists());
}

/// Every problem is reported, one line each, in file order.
#[test]
fn several_mistakes_are_all_reported() {
    let (f, src) = initialized();
    let text = with_job_line(&f, &src, "compression-level = 0\nschedule = \"61 * * * *\"\n");
    let c = f.config.display();
    fs::write(&f.config, &text).unwrap();
    rejected_with(
        &f,
        &["backup", "now"],
        &format!(
            "{c}:15:21: jobs[0].compression-level: 0 is out of range: expected 1 to 19\n\
             {c}:16:12: jobs[0].schedule: invalid cron expression \"61 * * * *\": minute must be 0-59"
        ),
    );
}

/// `--config` naming a file that does not exist: exit 2, the message names
/// the file, and nothing is created (not even under HOME, where the default
/// state directory would be).
#[test]
fn configuration_file_that_does_not_exist() {
    let f = Fixture::new("");
    let missing = "/nonexistent/x.toml";
    assert!(!Path::new(missing).exists());
    let out = Command::new(vaultline_bin())
        .args(["--config", missing, "backup", "now"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", f.home())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("error: cannot read configuration file {missing}: ")),
        "stderr:\n{stderr}"
    );
    assert_eq!(
        first,
        format!("error: cannot read configuration file {missing}: No such file or directory (os error 2)"),
        "the cause is printed once"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr:\n{stderr}");
    assert!(
        fs::read_dir(f.home()).unwrap().next().is_none(),
        "HOME was written"
    );
    assert!(!f.repo().exists() && !f.state().exists());
}

/// `backup now nosuchjob`: exit 2, naming the configured jobs.
#[test]
fn unknown_job_on_the_command_line() {
    let (f, src) = initialized();
    let other = f.path().join("other");
    fs::create_dir_all(&other).unwrap();
    f.write_config(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{src:?}]\n\n[[jobs]]\nname = \"logs\"\npaths = [{:?}]\n",
        other.display().to_string()
    ));
    rejected_with(
        &f,
        &["backup", "now", "nosuchjob"],
        &format!(
            "no job named \"nosuchjob\" in {} (jobs: data, logs)",
            f.config.display()
        ),
    );
    // Naming a valid job too changes nothing: the command is refused whole.
    rejected_with(
        &f,
        &["backup", "now", "data", "nosuchjob"],
        &format!(
            "no job named \"nosuchjob\" in {} (jobs: data, logs)",
            f.config.display()
        ),
    );
}
