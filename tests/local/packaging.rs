//! The Debian package: built with cargo-deb through packaging/build-deb.sh,
//! its file list asserted, and its systemd units verified by
//! `systemd-analyze verify` inside the unpacked package.

use std::path::PathBuf;
use std::process::Command;

use crate::util::repo_root;

fn tool(env: &str, default: &str, hint: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    assert!(p.exists(), "{} is missing: {hint}", p.display());
    p
}

#[test]
fn the_deb_builds_with_the_expected_files_and_its_units_verify() {
    let cargo_deb = tool(
        "VAULTLINE_CARGO_DEB",
        ".test-tools/bin/cargo-deb",
        "run tests/run, which installs the pinned cargo-deb into .test-tools/",
    );
    let out = Command::new(repo_root().join("packaging/build-deb.sh"))
        .args(["--profile", "dev"])
        .env("CARGO_DEB", &cargo_deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-deb.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];

    let list = Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap();
    assert!(list.status.success());
    let listing = String::from_utf8_lossy(&list.stdout);
    let mut files: Vec<(String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[5].trim_start_matches('.').to_string(), cols[0].to_string())
        })
        .collect();
    files.sort();
    // A man page per command: every page the pages refer to is there.
    type Listed = Vec<(String, String)>;
    let (man, files): (Listed, Listed) = files
        .into_iter()
        .partition(|(p, _)| p.starts_with("/usr/share/man/man1/"));
    let want = [
        ("/etc/vaultline/config.toml", "-rw-r-----"),
        ("/lib/systemd/system/vaultline-backup@.service", "-rw-r--r--"),
        ("/lib/systemd/system/vaultline-backup@.timer", "-rw-r--r--"),
        ("/lib/systemd/system/vaultline.service", "-rw-r--r--"),
        ("/usr/bin/vaultline", "-rwxr-xr-x"),
        ("/usr/share/bash-completion/completions/vaultline", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/FORMAT.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/README.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/copyright", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/hardening.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/key-rotation.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/operations.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/patterns.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/retention.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/s3.md", "-rw-r--r--"),
        ("/usr/share/doc/vaultline/threat-model.md", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/vaultline.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_vaultline", "-rw-r--r--"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(files, want, "package file list:\n{listing}");

    // Unpack; verify the packaged units with systemd's own unit set, their
    // ExecStart pointed at the packaged binary (it is not installed in /usr).
    let root = tempfile::tempdir().unwrap();
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(x.success());
    let analyze = tool(
        "VAULTLINE_SYSTEMD_ANALYZE",
        "/usr/bin/systemd-analyze",
        "install Debian's systemd package (tests/run does)",
    );
    let units = tempfile::tempdir().unwrap();
    let binary = root.path().join("usr/bin/vaultline");
    for unit in [
        "vaultline.service",
        "vaultline-backup@.service",
        "vaultline-backup@.timer",
    ] {
        let text = std::fs::read_to_string(root.path().join("lib/systemd/system").join(unit)).unwrap();
        assert!(
            unit.ends_with(".timer") || text.contains("ExecStart=/usr/bin/vaultline "),
            "{unit}"
        );
        std::fs::write(
            units.path().join(unit),
            text.replace("/usr/bin/vaultline", binary.to_str().unwrap()),
        )
        .unwrap();
    }
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(units.path().join("vaultline.service"))
        .arg(units.path().join("vaultline-backup@etc.service"))
        .arg(units.path().join("vaultline-backup@etc.timer"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );

    // The man pages come from the real command line: one per command, and
    // every `vaultline-X(1)` a page refers to is installed.
    let page = |name: &str| -> String {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(
                root.path()
                    .join("usr/share/man/man1")
                    .join(format!("{name}.1.gz")),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "no man page {name}.1.gz");
        String::from_utf8_lossy(&out.stdout).replace("\\-", "-")
    };
    let installed: std::collections::BTreeSet<String> = man
        .iter()
        .map(|(p, mode)| {
            assert_eq!(mode, "-rw-r--r--", "{p}");
            p.trim_start_matches("/usr/share/man/man1/")
                .trim_end_matches(".1.gz")
                .to_string()
        })
        .collect();
    let mut referred = std::collections::BTreeSet::from(["vaultline".to_string()]);
    let mut todo = vec!["vaultline".to_string()];
    while let Some(name) = todo.pop() {
        let text = page(&name);
        for (i, _) in text.match_indices("(1)") {
            let start = text[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |p| p + 1);
            let other = &text[start..i];
            if other.starts_with("vaultline-") && referred.insert(other.to_string()) {
                todo.push(other.to_string());
            }
        }
    }
    assert_eq!(installed, referred, "man pages installed vs referred to");
    for sub in [
        "init",
        "backup",
        "restore",
        "ls",
        "find",
        "key-export",
        "key-import",
        "completions",
    ] {
        assert!(
            installed.contains(&format!("vaultline-{sub}")),
            "no man page for {sub}"
        );
    }
    assert!(page("vaultline-restore").contains("--include"));
}
