//! A real headless browser for the pages vaultline writes: Debian's
//! `chromium` (installed by tests/run; `VAULTLINE_CHROMIUM` overrides),
//! run with its own fresh profile and nothing in the background that would
//! reach for the network. The suites never skip: a missing browser fails
//! with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser binary.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("VAULTLINE_CHROMIUM") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the report tests need a headless browser: no `chromium` in PATH. Run `tests/run`, which installs \
             Debian's chromium package, or `apt-get install chromium`"
        )
    })
}

/// Where tests keep what CI should archive: `target/test-artefacts/`.
pub fn artefacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("test-artefacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artefacts");
    dir
}

/// Runs the browser on `page` with `what` (e.g. `--dump-dom`) and a fresh
/// profile; returns stdout. Fails the test after two minutes.
fn run(page: &Path, what: &[&str]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("vaultline-chromium-")
        .tempdir()
        .expect("profile dir");
    let out = profile.path().join("stdout");
    let err = profile.path().join("stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(what)
        .arg(format!(
            "file://{}",
            page.canonicalize().expect("page path").display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {what:?} did not finish in 2 minutes:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium {what:?} failed ({status}):\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    std::fs::read_to_string(&out).expect("chromium's output")
}

/// The page's DOM after the browser parsed and laid it out.
pub fn dump_dom(page: &Path) -> String {
    run(page, &["--dump-dom"])
}

/// A screenshot of the page, `width` × `height`, written to `png`.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    run(
        page,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
        ],
    );
}

/// Width and height from a PNG's header; panics when `bytes` is no PNG.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}
