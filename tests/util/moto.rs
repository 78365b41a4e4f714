//! The local S3 + KMS server (moto, pinned in tests/requirements.txt) for the
//! S3 suites: started over TLS on a free loopback port with a certificate
//! generated per run, which the agent trusts through `aws.ca-bundle`.
//!
//! One shared server per test process serves every test that does not need
//! special server settings; each test makes its own bucket and KMS key, so
//! tests stay independent and parallel. A test that needs IAM enforcement
//! starts its own server. The server exits when the test process does.
//!
//! The Python tools are found through `VAULTLINE_TEST_PYTHON` (set by
//! tests/run) or `.venv/` in the repository. When neither exists the tests
//! fail with instructions: these suites never skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Fixture, repo_root};

/// Credentials of moto's default (unrestricted) principal.
pub const ADMIN: (&str, &str) = ("AKIAVAULTLINETESTADM", "vaultline-test-admin-secret");
/// moto's region for the suites.
pub const REGION: &str = "us-east-1";

/// The venv's Python with moto and boto3.
pub fn python() -> PathBuf {
    let p = std::env::var_os("VAULTLINE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "the S3 suites need the pinned local S3 + KMS server: {} does not exist. Run `tests/run`, \
         which creates .venv/ from tests/requirements.txt",
        p.display()
    );
    p
}

/// A running moto server.
pub struct Moto {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The CA certificate that signed the server's certificate.
    pub ca: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared server.
pub fn moto() -> &'static Moto {
    static SERVER: OnceLock<Moto> = OnceLock::new();
    SERVER.get_or_init(|| Moto::start(&[]))
}

impl Moto {
    /// Starts a server with extra environment for moto.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let dir = tempfile::Builder::new()
            .prefix("vaultline-moto-")
            .tempdir()
            .expect("tempdir");
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/support/moto_server.py"))
            .arg(dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("server.log")).expect("log"),
            ))
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read moto's READY line");
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("moto did not start: {line:?}\n{log}")
            });
        Moto {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca: dir.path().join("ca.pem"),
            child,
            _dir: dir,
        }
    }

    /// A server that enforces IAM after the three requests creating an
    /// admin user (CreateUser, PutUserPolicy, CreateAccessKey); returns it
    /// with that user's credentials.
    pub fn start_with_iam() -> (Moto, (String, String)) {
        let m = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
        let policy = m._dir.path().join("admin-policy.json");
        std::fs::write(
            &policy,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .expect("write admin policy");
        let admin = m.ctl_as(
            ADMIN,
            &["iam-user", "admin", policy.to_str().expect("utf-8 path")],
        );
        let admin = (
            admin["key"].as_str().expect("key").to_string(),
            admin["secret"].as_str().expect("secret").to_string(),
        );
        (m, admin)
    }

    /// Runs tests/support/awsctl.py as the admin principal; returns its JSON.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> serde_json::Value {
        self.ctl_as(ADMIN, args)
    }

    /// Runs awsctl.py with the given credentials.
    #[track_caller]
    pub fn ctl_as(&self, creds: (&str, &str), args: &[&str]) -> serde_json::Value {
        let out = Command::new(python())
            .arg(repo_root().join("tests/support/awsctl.py"))
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_CA_BUNDLE", &self.ca)
            .env("AWS_ACCESS_KEY_ID", creds.0)
            .env("AWS_SECRET_ACCESS_KEY", creds.1)
            .env("AWS_DEFAULT_REGION", REGION)
            .output()
            .expect("run awsctl.py");
        assert!(
            out.status.success(),
            "awsctl.py {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("awsctl.py prints JSON")
    }

    /// Every object of `bucket` (boto3's view): name → size.
    pub fn object_sizes(&self, bucket: &str) -> std::collections::BTreeMap<String, u64> {
        self.ctl(&["objects", bucket])
            .as_array()
            .expect("objects: a JSON array")
            .iter()
            .map(|o| {
                (
                    o["key"].as_str().expect("key").to_string(),
                    o["size"].as_u64().expect("size"),
                )
            })
            .collect()
    }

    /// A fresh (hardened) bucket and KMS key for one test.
    pub fn bucket_and_key(&self, test: &str) -> (String, String) {
        self.bucket_and_key_as(ADMIN, test)
    }

    /// The same, made with `creds` (on a server that enforces IAM).
    pub fn bucket_and_key_as(&self, creds: (&str, &str), test: &str) -> (String, String) {
        let bucket = unique_bucket(test);
        self.ctl_as(creds, &["create-bucket", &bucket]);
        let key = self.ctl_as(creds, &["create-key"])["arn"]
            .as_str()
            .expect("arn")
            .to_string();
        (bucket, key)
    }
}

/// `vl-TEST-PID-N`, valid as a bucket name.
pub fn unique_bucket(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    format!(
        "vl-{clean}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fixture whose repository is `bucket` on `moto` and whose key is the
/// KMS key `key_arn`; `extra` adds jobs and settings.
pub fn s3_fixture(moto: &Moto, bucket: &str, key_arn: &str, extra: &str) -> Fixture {
    let mut fx = Fixture::new("");
    write_s3_config(&fx, moto, bucket, key_arn, extra);
    fx.env = aws_env(ADMIN);
    fx
}

/// Environment for the agent: credentials, and no instance-metadata probing.
pub fn aws_env(creds: (&str, &str)) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), creds.0.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), creds.1.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// Writes the S3 + KMS configuration for `fx`.
pub fn write_s3_config(fx: &Fixture, moto: &Moto, bucket: &str, key_arn: &str, extra: &str) {
    let text = format!(
        "[agent]\nhost = \"testhost\"\nstate-dir = {state:?}\n\n\
         [aws]\nregion = \"{REGION}\"\nca-bundle = {ca:?}\n\n\
         [repository]\ntype = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{ep}\"\npath-style = true\n\n\
         [key]\nprovider = \"kms\"\nkey-id = \"{key_arn}\"\nendpoint = \"{ep}\"\n\n{extra}",
        state = fx.state().display().to_string(),
        ca = moto.ca.display().to_string(),
        ep = moto.endpoint,
    );
    std::fs::write(&fx.config, text).expect("write config");
}

/// Adds `settings` (TOML lines) to the fixture's `[repository]` table:
/// they go right after its last line `write_s3_config` writes.
pub fn repository_settings(fx: &Fixture, settings: &str) {
    let text = std::fs::read_to_string(&fx.config).expect("read config");
    assert!(text.contains("path-style = true\n"), "not an S3 fixture");
    let text = text.replacen(
        "path-style = true\n",
        &format!("path-style = true\n{settings}"),
        1,
    );
    std::fs::write(&fx.config, text).expect("write config");
}

/// A job block backing up `paths`.
pub fn job(name: &str, paths: &[&Path]) -> String {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[[jobs]]\nname = \"{name}\"\npaths = [{}]\n", list.join(", "))
}
