//! A throwaway PostgreSQL cluster for the tests that back up a live
//! database: `initdb` into a temporary directory of its own, a server
//! listening on a Unix socket in that directory only (no TCP), on a port
//! no other test uses, run as an unprivileged user when the tests run as
//! root (CI does; PostgreSQL refuses to run as root). Stopped and removed
//! when dropped.
//!
//! The binaries are Debian's (`/usr/lib/postgresql/VERSION/bin`), which
//! `tests/run` installs. Without them a test is skipped with a note, except
//! under CI (`CI` set), where it fails.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The newest PostgreSQL's binaries, if one is installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// PostgreSQL's binaries, or `None` (with a note) outside CI when it is not
/// installed; under CI its absence is a failure.
pub fn available_or_explain(test: &str) -> Option<PathBuf> {
    if let Some(bin) = bin_dir() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs PostgreSQL (/usr/lib/postgresql/*/bin/initdb), which tests/run installs \
         (apt-get install postgresql)"
    );
    eprintln!(
        "{test}: PostgreSQL is not installed; run tests/run (or apt-get install postgresql) to exercise it"
    );
    None
}

/// The user a server runs as when the tests run as root: `postgres` (made
/// by Debian's package), else `nobody`.
fn server_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let postgres = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse().ok(), f[3].parse().ok()))
    });
    match postgres {
        Some((Some(uid), Some(gid))) => Some((uid, gid)),
        _ => Some((65534, 65534)),
    }
}

/// A running cluster with the superuser `vl` (trust authentication over
/// its socket).
pub struct Cluster {
    /// Owns the directory (data, socket, log).
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Where the socket is.
    pub socket_dir: PathBuf,
    /// The port (it names the socket: no TCP is listened on).
    pub port: u16,
    user: Option<(u32, u32)>,
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start(bin: &Path) -> Cluster {
        let user = server_user();
        // Another user's server must reach its directory: under /tmp, not
        // under a TMPDIR that may be private to root.
        let mut builder = tempfile::Builder::new();
        builder.prefix("vaultline-pg-");
        let dir = match user {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        for d in [&data, &socket_dir] {
            fs::create_dir(d).expect("mkdir");
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).expect("chmod");
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut c = Cluster {
            dir,
            bin: bin.to_path_buf(),
            socket_dir,
            port: 0,
            user,
        };
        c.as_server("initdb")
            .args([
                "--auth=trust",
                "--username=vl",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .checked("initdb");
        // A port no one listens on: with no TCP it only names the socket,
        // which is in our own directory anyway.
        c.port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = format!(
            "-p {} -c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c \
             synchronous_commit=off",
            c.port,
            c.socket_dir.display()
        );
        let log = c.dir.path().join("server.log");
        if let Some((uid, gid)) = user {
            fs::write(&log, "").expect("log");
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown");
        }
        c.as_server("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "start"])
            .stdout(Stdio::null())
            .checked_with_log("pg_ctl start", &log);
        c
    }

    /// A server-side program, run as the server's user.
    fn as_server(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// A client program (`psql`, `pg_dump`, …) with its path.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// The connection options for clients: `-h SOCKET_DIR -p PORT -U vl`.
    pub fn conn(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "vl".into(),
        ]
    }

    /// The same, as shell words for a command line.
    pub fn conn_shell(&self) -> String {
        format!("-h '{}' -p {} -U vl", self.socket_dir.display(), self.port)
    }

    /// A `psql` for `db`: no psqlrc, unaligned tuples only, stop on error.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin("psql"));
        c.args(self.conn())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db])
            .stdin(Stdio::null());
        c
    }

    /// Runs `sql` in `db`; its output, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_command(db).args(["-c", sql]).checked("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .as_server("pg_ctl")
            .args(["-m", "immediate", "-w", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command and asserts it succeeded.
trait Checked {
    fn checked(&mut self, what: &str) -> Output;
    fn checked_with_log(&mut self, what: &str, log: &Path) -> Output;
}

impl Checked for Command {
    fn checked(&mut self, what: &str) -> Output {
        let out = self.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn checked_with_log(&mut self, what: &str, log: &Path) -> Output {
        let out = self.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(log).unwrap_or_default()
        );
        out
    }
}
