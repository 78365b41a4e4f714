//! Shared helpers for the end-to-end suites: running the real `vaultline`
//! binary in an isolated fixture, generating the deterministic corpus, and
//! comparing trees independently of vaultline's own checks.

#![allow(dead_code)] // each suite uses a different subset

pub mod agent;
pub mod browser;
pub mod hostile;
pub mod moto;
pub mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `vaultline` binary of this build, next to the test binary's `deps/`
/// directory. Once per test process it asks cargo to build it (a no-op when
/// it is up to date), so `cargo test -p vaultline-tests` never runs a stale
/// binary. `VAULTLINE_BIN` overrides.
pub fn vaultline_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VAULTLINE_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "vaultline-agent", "--bin", "vaultline"])
            .current_dir(repo_root());
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building vaultline failed");
        profile_dir.join("vaultline")
    })
    .clone()
}

/// True when the test may act as root (mount, chown, run as another user);
/// false (with a note) outside CI for another user. In CI, which runs the
/// suites as root, not being root is a failure.
pub fn root_or_explain(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI runs the suites as root"
    );
    eprintln!("{test}: not root; run the suite as root to exercise it");
    false
}

/// The result of running the binary.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code(self, want: i32) -> Run {
        assert_eq!(
            self.code, want,
            "expected exit code {want}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// An isolated world for one test: its own temp dir, state dir, repository,
/// HOME and configuration file. Nothing is shared between tests.
pub struct Fixture {
    /// Owns the temporary directory.
    pub dir: tempfile::TempDir,
    /// The configuration file.
    pub config: PathBuf,
    /// Extra environment for the child (credentials for S3 suites).
    pub env: Vec<(String, String)>,
}

impl Fixture {
    /// A fixture whose config has a local repository, a file-stored key and
    /// the given `[[jobs]]` (and anything else) in `extra`.
    pub fn new(extra: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("vaultline-e2e-")
            .tempdir()
            .expect("tempdir");
        let f = Fixture {
            config: dir.path().join("config.toml"),
            dir,
            env: Vec::new(),
        };
        f.write_config(extra);
        fs::create_dir_all(f.home()).expect("home");
        f
    }

    /// A fixture with one job `name` backing up `paths`.
    pub fn with_job(name: &str, paths: &[&Path]) -> Fixture {
        let list: Vec<String> = paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        Fixture::new(&format!(
            "[[jobs]]\nname = \"{name}\"\npaths = [{}]\n",
            list.join(", ")
        ))
    }

    /// Rewrites the config: the standard header plus `extra`.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[agent]\nhost = \"testhost\"\nstate-dir = {:?}\n\n[repository]\ntype = \"local\"\npath = {:?}\n\n\
             [key]\nstorage = \"file\"\n\n{extra}",
            self.state().display().to_string(),
            self.repo().display().to_string(),
        );
        fs::write(&self.config, text).expect("write config");
    }

    /// The fixture's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The repository directory.
    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    /// HOME for the child.
    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// The key file.
    pub fn key_file(&self) -> PathBuf {
        self.state().join("keys/master.key")
    }

    /// A command running the binary with this fixture's config and a clean,
    /// isolated environment (no D-Bus, so no keyring; its own HOME).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_via(&[], args)
    }

    /// Like [`Fixture::command`], with the binary started through `wrapper`
    /// (e.g. `["faketime", "-f", "+70y"]`: a host whose clock runs ahead).
    pub fn command_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(vaultline_bin());
                c
            }
            None => Command::new(vaultline_bin()),
        };
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary and waits.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run vaultline"))
    }

    /// Runs the binary as user `nobody` (uid 65534) with `home` as HOME:
    /// the fixture's directory and configuration are opened to others
    /// first, as a shared system configuration would be.
    pub fn run_as_nobody(&self, home: &Path, args: &[&str]) -> Run {
        fs::set_permissions(self.path(), fs::Permissions::from_mode(0o755)).expect("chmod fixture");
        fs::set_permissions(&self.config, fs::Permissions::from_mode(0o644)).expect("chmod config");
        let mut cmd = self.command_via(
            &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
            args,
        );
        cmd.env("HOME", home);
        Run::from(cmd.output().expect("run vaultline as nobody"))
    }

    /// Runs the binary through `wrapper` (see [`Fixture::command_via`]).
    pub fn run_via(&self, wrapper: &[&str], args: &[&str]) -> Run {
        Run::from(self.command_via(wrapper, args).output().expect("run vaultline"))
    }

    /// Runs the binary and returns what it did with its peak resident
    /// memory in KiB: the kernel's account of the child (`ru_maxrss`, via
    /// a Python wrapper whose only child it is), exact however short the
    /// run.
    pub fn run_measured(&self, args: &[&str]) -> (Run, u64) {
        let report = self.path().join(format!("maxrss-{}", std::process::id()));
        let script = "import resource, subprocess, sys\n\
                      code = subprocess.call(sys.argv[2:])\n\
                      open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
                      sys.exit(code)\n";
        let python = moto::python();
        let wrapper = [
            python.to_str().expect("utf-8 path"),
            "-c",
            script,
            report.to_str().expect("utf-8 path"),
        ];
        let run = self.run_via(&wrapper, args);
        let kib = fs::read_to_string(&report)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX);
        (run, kib)
    }

    /// `init`, which must succeed.
    pub fn init(&self) -> Run {
        self.run(&["init"]).ok()
    }

    /// Every file under the repository, relative, sorted.
    pub fn repo_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_files(&self.repo(), &self.repo(), &mut out);
        out.sort();
        out
    }

    /// Repository objects whose relative name ends with `suffix`.
    pub fn objects(&self, suffix: &str) -> Vec<PathBuf> {
        self.repo_files()
            .into_iter()
            .filter(|f| f.ends_with(suffix))
            .map(|f| self.repo().join(f))
            .collect()
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            collect_files(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// The deterministic corpus of `bench/make-corpus.sh` (`mb` MB, `seed`),
/// generated once per build directory and shared read-only between tests.
pub fn corpus(mb: u32, seed: u32) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corpus-{mb}-{seed}"));
    let done = base.join(".complete");
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corpus-{mb}-{seed}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    if !done.exists() {
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).expect("corpus dir");
        make_corpus(&base.join("tree"), mb, seed);
        fs::write(&done, "").expect("marker");
    }
    base.join("tree")
}

/// `len` bytes that do not compress (xorshift from `seed`), for tests that
/// need archives as large as their input.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    // Spread the seed's bits first: xorshift from a small seed starts out
    // with long runs of small values, which compress.
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `bench/make-corpus.sh DIR MB SEED`.
pub fn make_corpus(dir: &Path, mb: u32, seed: u32) {
    let status = Command::new(repo_root().join("bench/make-corpus.sh"))
        .arg(dir)
        .arg(mb.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("run make-corpus.sh");
    assert!(status.success(), "make-corpus.sh failed");
}

/// Runs `bench/mutate-corpus.sh DIR PERCENT SEED`.
pub fn mutate_corpus(dir: &Path, percent: u32, seed: u32) {
    let status = Command::new(repo_root().join("bench/mutate-corpus.sh"))
        .arg(dir)
        .arg(percent.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("run mutate-corpus.sh");
    assert!(status.success(), "mutate-corpus.sh failed");
}

/// Every file (non-directory) under `dir`; none when it does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Where a source directory lands under a restore target.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").expect("absolute source"))
}

/// What the comparison looks at for one path.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    size: u64,
    uid: u32,
    gid: u32,
    link: Option<PathBuf>,
}

fn node(path: &Path, meta: &fs::Metadata, owners: bool) -> Node {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    Node {
        kind,
        // Symlink permission bits are meaningless on Linux.
        mode: if ft.is_symlink() {
            0
        } else {
            meta.permissions().mode() & 0o7777
        },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        size: if ft.is_file() { meta.len() } else { 0 },
        uid: if owners { meta.uid() } else { 0 },
        gid: if owners { meta.gid() } else { 0 },
        link: if ft.is_symlink() {
            fs::read_link(path).ok()
        } else {
            None
        },
    }
}

fn walk(root: &Path) -> BTreeMap<PathBuf, (PathBuf, fs::Metadata)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.expect("dir entry");
            let p = e.path();
            let meta = fs::symlink_metadata(&p).expect("lstat");
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.strip_prefix(root).expect("under root").to_path_buf(), (p, meta));
        }
    }
    out
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// Differences between two trees: entry sets, kinds, modes, mtimes (ns),
/// sizes, contents, symlink targets, hard-link structure, and owners when
/// running as root. Empty when they are the same.
pub fn tree_differences(expected: &Path, actual: &Path) -> Vec<String> {
    let owners = rustix::process::geteuid().is_root();
    let a = walk(expected);
    let b = walk(actual);
    let mut diffs = Vec::new();
    for rel in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("missing: {}", rel.display()));
    }
    for rel in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("unexpected: {}", rel.display()));
    }
    // Hard links: paths sharing an inode in one tree must share one in the other.
    let mut inode_groups: HashMap<(u64, u64), Vec<&PathBuf>> = HashMap::new();
    for (rel, (path, ma)) in &a {
        let Some((bp, mb)) = b.get(rel) else { continue };
        let (na, nb) = (node(path, ma, owners), node(bp, mb, owners));
        if na != nb {
            diffs.push(format!("{}: expected {na:?}, got {nb:?}", rel.display()));
        } else if na.kind == "file" && !same_content(path, bp) {
            diffs.push(format!("{}: content differs", rel.display()));
        }
        if ma.is_file() && ma.nlink() > 1 {
            inode_groups.entry((ma.dev(), ma.ino())).or_default().push(rel);
        }
    }
    for group in inode_groups.values().filter(|g| g.len() > 1) {
        let inodes: Vec<Option<u64>> = group.iter().map(|r| b.get(*r).map(|(_, m)| m.ino())).collect();
        if inodes.windows(2).any(|w| w[0] != w[1]) {
            diffs.push(format!("hard links not preserved: {group:?}"));
        }
    }
    diffs
}

/// Asserts two trees are the same (see [`tree_differences`]).
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let diffs = tree_differences(expected, actual);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}, first ones:\n{}",
        diffs.len(),
        expected.display(),
        actual.display(),
        diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every regular file under `target` that is not byte-identical to its
/// counterpart under `source`, plus any leftover temporary file.
pub fn unverified_files(source: &Path, target: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    if !target.exists() {
        return bad;
    }
    for (rel, (path, meta)) in walk(target) {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(".vaultline-restore-") {
            bad.push(format!("leftover temporary file {}", rel.display()));
        } else if meta.is_file() && !same_content(&source.join(&rel), &path) {
            bad.push(format!("{} differs from the source", rel.display()));
        }
    }
    bad
}
