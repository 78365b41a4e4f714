//! Loading and validating configurations: defaults, the example file, and
//! the exact message for each kind of mistake.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests a panic is the failure report

use std::path::{Path, PathBuf};

use vaultline_config::{
    CheckPolicy, ChecksumPolicy, Config, ConfigError, Environment, KeyConfig, KeyStorage, Repository,
    StorageClass, locate,
};

fn env() -> Environment {
    Environment {
        hostname: Some("web1".into()),
        is_root: false,
        config_of_root: false,
        home: Some("/home/op".into()),
        xdg_config_home: None,
        xdg_state_home: None,
        config_env: None,
    }
}

const MINIMAL: &str = r#"
[repository]
type = "local"
path = "/srv/backups"

[[jobs]]
name = "etc"
paths = ["/etc"]
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("config.toml"), &env())
}

fn error(text: &str) -> String {
    load(text).expect_err("config should be rejected").to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.agent.host, "web1");
    assert_eq!(
        c.agent.state_dir,
        PathBuf::from("/home/op/.local/state/vaultline")
    );
    assert_eq!(
        c.repository,
        Repository::Local {
            path: "/srv/backups".into(),
            prefix: "vaultline".into()
        }
    );
    assert_eq!(
        c.key,
        KeyConfig::Local {
            storage: KeyStorage::Auto,
            file: "/home/op/.local/state/vaultline/keys/master.key".into()
        }
    );
    let job = c.job("etc").unwrap();
    assert_eq!(job.compression_level, 3);
    assert_eq!(job.compression_threads, 0);
    assert!(!job.one_file_system && !job.watch && job.schedule.is_none());
    assert_eq!(c.hardening.policy("versioning"), Some(CheckPolicy::Abort));
    assert_eq!(c.hardening.policy("access-logging"), Some(CheckPolicy::Warn));
    assert!(!c.hardening.accept_unknown);
}

#[test]
fn root_state_dir_default() {
    let root = Environment {
        is_root: true,
        ..env()
    };
    let c = Config::parse(MINIMAL, Path::new("c.toml"), &root).unwrap();
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/vaultline"));
    // node_exporter, another user, could not read it inside the 0700 state
    // directory.
    assert_eq!(
        c.agent.metrics_file,
        PathBuf::from("/var/lib/vaultline-metrics/vaultline.prom")
    );
    let user = Config::parse(MINIMAL, Path::new("c.toml"), &env()).unwrap();
    assert_eq!(
        user.agent.state_dir,
        PathBuf::from("/home/op/.local/state/vaultline")
    );
    assert_eq!(
        user.agent.metrics_file,
        user.agent.state_dir.join("vaultline.prom")
    );
    // A user reading the system's configuration reads the system's state.
    let shared = Environment {
        config_of_root: true,
        ..env()
    };
    let c = Config::parse(MINIMAL, Path::new("c.toml"), &shared).unwrap();
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/vaultline"));
}

#[test]
fn the_packaged_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/vaultline.toml");
    let c = Config::load(&example, &env()).unwrap();
    let job = c.job("etc").unwrap();
    assert_eq!(job.schedule.as_ref().unwrap().expression(), "0 3 * * *");
    assert_eq!(job.retention.keep_daily, 14);
    assert!(job.exclude.is_excluded(Path::new("/etc/.x.swp")));
}

/// The example's hooks, command sources and map, uncommented, are a valid
/// configuration that says what their comments say.
#[test]
fn the_example_s_live_service_settings_are_valid_once_uncommented() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/vaultline.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let at = text
        .find("# [jobs.hooks]")
        .expect("the example shows [jobs.hooks]");
    let uncommented: String = text[at..]
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[') || rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::parse(&format!("{}{uncommented}", &text[..at]), &example, &env()).unwrap();
    let job = c.job("etc").unwrap();
    assert_eq!(job.hooks.before.as_deref(), Some("/etc/vaultline/hooks/snapshot"));
    assert_eq!(job.hooks.timeout_secs, 300);
    assert_eq!(job.commands.len(), 1);
    assert_eq!(job.commands[0].name, "postgres/app.dump");
    assert_eq!(job.commands[0].timeout_secs, Some(14400));
    assert_eq!(job.source_of(Path::new("/etc")), Path::new("/mnt/vaultline/etc"));
}

#[test]
fn lifecycle_rules_must_keep_history_as_long_as_the_jobs_do() {
    let floor = |jobs: &str| {
        load(&format!(
            "[repository]\ntype = \"local\"\npath = \"/srv/backups\"\n{jobs}"
        ))
        .unwrap()
        .retention_floor()
        .map(|f| (f.days, f.why))
    };
    let job = |name: &str, rest: &str| format!("\n[[jobs]]\nname = \"{name}\"\npaths = [\"/etc\"]\n{rest}");
    assert_eq!(floor(""), None, "no job, no minimum");
    assert_eq!(
        floor(&job("etc", "")),
        Some((
            30,
            "job etc keeps every snapshot (no retention policy: a noncurrent version is a deletion vaultline did \
             not make, to be noticed and undone)"
                .into()
        ))
    );
    assert_eq!(floor(&job("etc", "[jobs.retention]\nkeep-last = 5\n")), None);
    assert_eq!(
        floor(&format!(
            "{}{}",
            job("etc", "[jobs.retention]\nkeep-hourly = 25\nkeep-last = 5\n"),
            job("db", "[jobs.retention]\nkeep-daily = 3\nkeep-yearly = 1\n")
        )),
        Some((366, "job db keeps snapshots (keep-yearly = 1)".into()))
    );
    assert_eq!(
        load(MINIMAL)
            .unwrap()
            .hardening
            .policy("lifecycle-no-early-expiry"),
        Some(CheckPolicy::Abort)
    );
}

#[test]
fn excludes_match_names_and_paths() {
    let c = load(&format!(
        "{MINIMAL}exclude = [\"*.tmp\", \"/etc/ssl/private/**\", \"/etc/*/cache\"]\n"
    ))
    .unwrap();
    let ex = &c.jobs[0].exclude;
    assert!(ex.is_excluded(Path::new("/etc/deep/dir/x.tmp")));
    assert!(ex.is_excluded(Path::new("/etc/ssl/private/key.pem")));
    assert!(ex.is_excluded(Path::new("/etc/app/cache")));
    assert!(
        !ex.is_excluded(Path::new("/etc/app/sub/cache")),
        "`*` must not cross `/`"
    );
    assert!(!ex.is_excluded(Path::new("/etc/ssl/certs/a.pem")));
}

/// Each mistake, with the exact message (file:line:column: path: message).
#[test]
fn each_mistake_has_its_exact_message() {
    let cases: &[(&str, &str)] = &[
        // 1. TOML syntax
        (
            "[repository\ntype = 'local'\n",
            "config.toml:1:12: unclosed table, expected `]`",
        ),
        // 2. a misspelt key
        (
            &format!("{MINIMAL}schedul = '0 3 * * *'\n"),
            "config.toml:9:1: jobs[0].schedul: unknown key `schedul`: did you mean `schedule`?",
        ),
        // 3. a value of the wrong type
        (
            &format!("{MINIMAL}compression-level = 'high'\n"),
            "config.toml:9:21: jobs[0].compression-level: expected a whole number, found the string \"high\"",
        ),
        // 4. a required key missing
        (
            "[repository]\ntype = 'local'\npath = '/srv'\n[[jobs]]\nname = 'etc'\n",
            "config.toml:4:1: jobs[0]: missing key `paths`",
        ),
        // 5. an unknown repository type
        (
            "[repository]\ntype = 'ftp'\npath = '/srv'\n",
            "config.toml:2:8: repository.type: unknown value `ftp`: expected one of `local`, `s3`",
        ),
        // 6. a relative path
        (
            "[repository]\ntype = 'local'\npath = 'backups'\n",
            "config.toml:3:8: repository.path: \"backups\" must be an absolute path",
        ),
        // 7. an invalid cron expression
        (
            &format!("{MINIMAL}schedule = '61 * * * *'\n"),
            "config.toml:9:12: jobs[0].schedule: invalid cron expression \"61 * * * *\": minute must be 0-59",
        ),
        // 8. duplicate job names
        (
            &format!("{MINIMAL}\n[[jobs]]\nname = 'etc'\npaths = ['/srv']\n"),
            "config.toml:11:8: jobs[1].name: duplicate job name \"etc\" (also jobs[0].name)",
        ),
        // 9. an invalid job name
        (
            "[repository]\ntype = 'local'\npath = '/srv'\n[[jobs]]\nname = 'My Job'\npaths = ['/etc']\n",
            "config.toml:5:8: jobs[0].name: \"My Job\" is not a valid job name: use 1 to 64 lowercase letters, \
             digits, `-` or `_`, starting with a letter or digit",
        ),
        // 10. no paths
        (
            "[repository]\ntype = 'local'\npath = '/srv'\n[[jobs]]\nname = 'etc'\npaths = []\n",
            "config.toml:6:9: jobs[0].paths: at least one path is required (or a command source, [[jobs.commands]])",
        ),
        // 11. one path inside another
        (
            "[repository]\ntype = 'local'\npath = '/srv'\n[[jobs]]\nname = 'etc'\npaths = ['/etc', '/etc/ssh']\n",
            "config.toml:6:18: jobs[0].paths[1]: /etc/ssh is inside /etc (jobs[0].paths[0]); list only /etc",
        ),
        // 12. an invalid glob
        (
            &format!("{MINIMAL}exclude = ['*.tmp', '[abc']\n"),
            "config.toml:9:21: jobs[0].exclude[1]: invalid pattern \"[abc\": unclosed character class; missing ']'",
        ),
        // 13. compression level out of range
        (
            &format!("{MINIMAL}compression-level = 25\n"),
            "config.toml:9:21: jobs[0].compression-level: 25 is out of range: expected 1 to 19",
        ),
        // 14. a misspelt hardening check id
        (
            &format!("{MINIMAL}[hardening.checks]\nversionin = 'warn'\n"),
            "config.toml:10:1: hardening.checks.versionin: unknown key `versionin`: did you mean `versioning`?",
        ),
        // 15. a hardening policy that is neither abort nor warn
        (
            &format!("{MINIMAL}[hardening.checks]\nversioning = 'ignore'\n"),
            "config.toml:10:14: hardening.checks.versioning: unknown value `ignore`: expected one of `abort`, `warn`",
        ),
        // 16. no [repository] at all
        (
            "[[jobs]]\nname = 'etc'\npaths = ['/etc']\n",
            "config.toml:1:1: missing key `repository`",
        ),
        // 17. a path with `..`
        (
            "[repository]\ntype = 'local'\npath = '/srv/../tmp'\n",
            "config.toml:3:8: repository.path: \"/srv/../tmp\" must not contain `.` or `..` components",
        ),
        // 18. an invalid storage value
        (
            &format!("{MINIMAL}[key]\nstorage = 'vault'\n"),
            "config.toml:10:11: key.storage: unknown value `vault`: expected one of `auto`, `keyring`, `file`",
        ),
    ];
    assert!(cases.len() >= 12);
    for (text, want) in cases {
        assert_eq!(&error(text), want, "config:\n{text}");
    }
}

#[test]
fn all_validation_problems_are_reported_in_file_order() {
    let text = "[repository]\ntype = 'local'\npath = 'rel'\n[[jobs]]\nname = 'etc'\npaths = ['/etc']\n\
                compression-level = 0\nschedule = '* * *'\n";
    let err = load(text).unwrap_err();
    let lines: Vec<String> = err.to_string().lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "config.toml:3:8: repository.path: \"rel\" must be an absolute path",
            "config.toml:7:21: jobs[0].compression-level: 0 is out of range: expected 1 to 19",
            "config.toml:8:12: jobs[0].schedule: invalid cron expression \"* * *\": expected 5 fields \
             (minute hour day-of-month month day-of-week) or 6 (with a leading second), found 3",
        ]
    );
    assert_eq!(err.problems().len(), 3);
}

#[test]
fn search_order() {
    let dir = std::env::temp_dir().join(format!("vaultline-config-locate-{}", std::process::id()));
    let user = dir.join("xdg/vaultline/config.toml");
    std::fs::create_dir_all(user.parent().unwrap()).unwrap();
    std::fs::write(&user, MINIMAL).unwrap();
    let e = Environment {
        xdg_config_home: Some(dir.join("xdg")),
        ..env()
    };
    // --config wins, then $VAULTLINE_CONFIG; both are taken even if missing.
    assert_eq!(
        locate(Some(Path::new("/x.toml")), &e).unwrap(),
        PathBuf::from("/x.toml")
    );
    let with_env = Environment {
        config_env: Some("/y.toml".into()),
        ..e.clone()
    };
    assert_eq!(locate(None, &with_env).unwrap(), PathBuf::from("/y.toml"));
    // Otherwise the first existing of /etc/vaultline/config.toml and the user file.
    if !Path::new("/etc/vaultline/config.toml").exists() {
        assert_eq!(locate(None, &e).unwrap(), user);
        let nowhere = Environment {
            xdg_config_home: Some(dir.join("none")),
            ..env()
        };
        assert_eq!(
            locate(None, &nowhere).unwrap_err().to_string(),
            format!(
                "no configuration file found; looked in: /etc/vaultline/config.toml, {}",
                dir.join("none/vaultline/config.toml").display()
            )
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

const S3: &str = r#"
[aws]
region = "eu-west-1"

[repository]
type = "s3"
bucket = "acme-backups"

[key]
provider = "kms"
key-id = "alias/vaultline"

[[jobs]]
name = "etc"
paths = ["/etc"]
"#;

#[test]
fn s3_and_kms_get_documented_defaults() {
    let c = load(S3).unwrap();
    let Repository::S3(s3) = &c.repository else {
        panic!("expected an S3 repository, got {:?}", c.repository)
    };
    assert_eq!(s3.bucket, "acme-backups");
    assert_eq!(s3.prefix, "vaultline");
    assert_eq!(s3.endpoint, None);
    assert!(!s3.path_style);
    assert_eq!(s3.storage_class, StorageClass::Standard);
    assert_eq!(
        (s3.tier_tag.key.as_str(), s3.tier_tag.value.as_str()),
        ("vaultline-tier", "archive")
    );
    assert_eq!(s3.part_size, 8 << 20);
    assert_eq!(s3.parts_in_flight, 4);
    assert_eq!(s3.request_checksum, ChecksumPolicy::WhenSupported);
    assert_eq!(
        c.key,
        KeyConfig::Kms {
            key_id: "alias/vaultline".into(),
            endpoint: None,
            accepted_keys: Vec::new(),
        }
    );
    assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
    assert!(!c.aws.allow_http);
    assert_eq!((c.aws.max_attempts, c.aws.timeout_secs), (5, 120));
}

#[test]
fn accepted_keys_are_key_arns_only() {
    let old = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let text = S3.replace(
        "key-id = \"alias/vaultline\"",
        &format!("key-id = \"alias/vaultline\"\naccepted-keys = [\"{old}\"]"),
    );
    assert_ne!(text, S3, "the fixture has the key-id line");
    let c = load(&text).unwrap();
    let KeyConfig::Kms { accepted_keys, .. } = &c.key else {
        panic!("expected a KMS key")
    };
    assert_eq!(accepted_keys, &[old.to_string()]);

    let text = S3.replace(
        "key-id = \"alias/vaultline\"",
        "key-id = \"alias/vaultline\"\naccepted-keys = [\"alias/old\"]",
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.contains(
            "key.accepted-keys[0]: \"alias/old\" is not a KMS key ARN: accepted keys must be full key ARNs"
        ),
        "{e}"
    );
}

#[test]
fn s3_settings_are_read() {
    let text = S3
        .replace(
            "bucket = \"acme-backups\"",
            "bucket = \"acme-backups\"\nendpoint = \"https://minio.lan:9000/\"\npath-style = true\n\
             storage-class = \"DEEP_ARCHIVE\"\ntier-tag = \"tier=cold\"\npart-size-mib = 16\n\
             parts-in-flight = 2\nrequest-checksum = \"when-required\"",
        )
        .replace(
            "region = \"eu-west-1\"",
            "region = \"eu-west-1\"\nallow-http = true\nmax-attempts = 3",
        );
    let c = load(&text).unwrap();
    let Repository::S3(s3) = &c.repository else {
        panic!()
    };
    assert_eq!(s3.endpoint.as_deref(), Some("https://minio.lan:9000"));
    assert!(s3.path_style);
    assert_eq!(s3.storage_class, StorageClass::DeepArchive);
    assert_eq!(s3.tier_tag.key, "tier");
    assert_eq!(s3.part_size, 16 << 20);
    assert_eq!(s3.parts_in_flight, 2);
    assert_eq!(s3.request_checksum, ChecksumPolicy::WhenRequired);
    assert_eq!(c.aws.max_attempts, 3);
}

#[test]
fn each_s3_and_kms_mistake_has_its_exact_message() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "bucket = \"acme-backups\"",
            "bucket = \"acme-backups\"\nendpoint = \"http://minio.lan:9000\"",
            "config.toml:8:12: repository.endpoint: plain-http endpoint \"http://minio.lan:9000\" refused: \
             requests, data and signatures would cross the network unencrypted; use https, or set \
             aws.allow-http = true for a trusted test network",
        ),
        (
            "bucket = \"acme-backups\"",
            "bucket = \"Acme_Backups\"",
            "config.toml:7:10: repository.bucket: \"Acme_Backups\" is not a valid bucket name: use only \
             lowercase letters, digits, `.` and `-`",
        ),
        (
            "bucket = \"acme-backups\"",
            "path = \"/srv\"",
            "config.toml:5:1: repository: missing key `bucket` (required when type = \"s3\")\n\
             config.toml:7:8: repository.path: is only used with type = \"local\"",
        ),
        (
            "bucket = \"acme-backups\"",
            "bucket = \"acme-backups\"\npart-size-mib = 4",
            "config.toml:8:17: repository.part-size-mib: 4 is out of range: expected 5 to 5120 (S3 parts \
             are 5 MiB to 5 GiB)",
        ),
        (
            "bucket = \"acme-backups\"",
            "bucket = \"acme-backups\"\nstorage-class = \"GLACIER_DEEP\"",
            "config.toml:8:17: repository.storage-class: unknown value `GLACIER_DEEP`: expected one of \
             `STANDARD`, `GLACIER_IR`, `GLACIER`, `DEEP_ARCHIVE`",
        ),
        (
            "bucket = \"acme-backups\"",
            "bucket = \"acme-backups\"\ntier-tag = \"archive\"",
            "config.toml:8:12: repository.tier-tag: \"archive\" is not a valid tag: expected KEY=VALUE",
        ),
        (
            "key-id = \"alias/vaultline\"",
            "key-id = \"vaultline key\"",
            "config.toml:11:10: key.key-id: \"vaultline key\" is not a KMS key id: expected a key id \
             (1234abcd-…), an alias (alias/NAME) or a key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/…)",
        ),
        (
            "key-id = \"alias/vaultline\"",
            "file = \"/etc/vaultline/master.key\"",
            "config.toml:10:12: key: missing key `key-id` (required when provider = \"kms\")\n\
             config.toml:11:8: key.file: is only used with provider = \"local\"",
        ),
        (
            "region = \"eu-west-1\"",
            "region = \"eu-west-1\"\nca-bundle = \"certs/ca.pem\"",
            "config.toml:4:13: aws.ca-bundle: \"certs/ca.pem\" must be an absolute path",
        ),
    ];
    for (from, to, want) in cases {
        let text = S3.replace(from, to);
        let got = error(&text);
        assert_eq!(&got, want, "for {to:?}");
    }
}

#[test]
fn hardening_lifecycle_settings_and_their_mistakes() {
    let c = load(S3).unwrap();
    let lc = c.hardening.lifecycle;
    assert_eq!(lc.archive_after_days, 30);
    assert_eq!(lc.archive_class, StorageClass::DeepArchive);
    assert_eq!(lc.abort_incomplete_uploads_days, 7);
    assert_eq!((lc.noncurrent_transition_days, lc.noncurrent_expire_days), (0, 0));
    assert_eq!(c.hardening.access_log_bucket, None);
    assert_eq!(c.hardening.access_log_prefix, "s3-access-logs/");

    let text = format!(
        "{S3}\n[hardening]\narchive-class = \"GLACIER\"\narchive-after-days = 90\naccess-log-bucket = \"acme-logs\"\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.hardening.lifecycle.archive_class, StorageClass::Glacier);
    assert_eq!(c.hardening.lifecycle.archive_after_days, 90);
    assert_eq!(c.hardening.access_log_bucket.as_deref(), Some("acme-logs"));

    let line = S3.lines().count() + 2;
    assert_eq!(
        error(&format!("{S3}\n[hardening]\narchive-class = \"STANDARD\"\n")),
        format!(
            "config.toml:{}:17: hardening.archive-class: unknown value `STANDARD`: expected one of \
             `GLACIER_IR`, `GLACIER`, `DEEP_ARCHIVE`",
            line + 1
        )
    );
    assert_eq!(
        error(&format!("{S3}\n[hardening]\nabort-incomplete-uploads-days = 0\n")),
        format!(
            "config.toml:{}:33: hardening.abort-incomplete-uploads-days: 0 is out of range: expected 1 to \
             36500 (days)",
            line + 1
        )
    );
}

#[test]
fn incremental_lock_and_thaw_settings_and_their_mistakes() {
    let c = load(S3).unwrap();
    let job = &c.jobs[0];
    assert_eq!((job.full_every_runs, job.full_every_days), (30, 30));
    assert_eq!(job.object_lock, None);
    let Repository::S3(s3) = &c.repository else {
        panic!("s3")
    };
    assert_eq!((s3.restore_tier.as_str(), s3.restore_days), ("Standard", 7));

    let text = S3.replace(
        "bucket = \"acme-backups\"",
        "bucket = \"acme-backups\"\nrestore-tier = \"Bulk\"\nrestore-days = 2",
    ) + "full-every-runs = 7\nfull-every-days = 0\n[jobs.object-lock]\nmode = \"COMPLIANCE\"\ndays = 35\n";
    let c = load(&text).unwrap();
    let job = &c.jobs[0];
    assert_eq!((job.full_every_runs, job.full_every_days), (7, 0));
    let lock = job.object_lock.as_ref().unwrap();
    assert_eq!((lock.mode.as_str(), lock.days), ("COMPLIANCE", 35));
    let Repository::S3(s3) = &c.repository else {
        panic!("s3")
    };
    assert_eq!((s3.restore_tier.as_str(), s3.restore_days), ("Bulk", 2));

    let cases: &[(String, &str)] = &[
        (
            format!("{S3}full-every-runs = 0\n"),
            "config.toml:16:19: jobs[0].full-every-runs: 0 is out of range: expected 1 to 100 (runs per chain \
             of incremental snapshots; 1 makes every run full)",
        ),
        (
            format!("{S3}[jobs.object-lock]\nmode = \"LEGAL\"\ndays = 0\n"),
            "config.toml:17:8: jobs[0].object-lock.mode: \"LEGAL\" is not a lock mode: expected \"GOVERNANCE\" or \
             \"COMPLIANCE\"\nconfig.toml:18:8: jobs[0].object-lock.days: 0 is out of range: expected 1 to 36500 \
             (days each snapshot's objects stay locked)",
        ),
        (
            S3.replace(
                "bucket = \"acme-backups\"",
                "bucket = \"acme-backups\"\nrestore-tier = \"Fast\"",
            ),
            "config.toml:8:16: repository.restore-tier: \"Fast\" is not a retrieval tier: expected \"Standard\", \
             \"Bulk\" or \"Expedited\"",
        ),
        (
            format!("{MINIMAL}[jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 1\n"),
            "config.toml:9:1: jobs[0].object-lock: needs an S3 repository (type = \"s3\"): a local repository \
             has no Object Lock",
        ),
        (
            MINIMAL.replace(
                "path = \"/srv/backups\"",
                "path = \"/srv/backups\"\nrestore-days = 3",
            ),
            "config.toml:5:16: repository.restore-days: is only used with type = \"s3\"",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&error(text), want, "for {text}");
    }
}

#[test]
fn hooks_command_sources_and_path_maps_are_read() {
    let text = "[repository]\ntype = \"local\"\npath = \"/srv/backups\"\n\n[[jobs]]\nname = \"db\"\n\
                paths = [\"/srv\", \"/etc\"]\n[jobs.hooks]\nbefore = \"lvcreate -s -n snap vg/srv\"\n\
                after = \"lvremove -f vg/snap\"\n[[jobs.commands]]\nname = \"postgres/app.dump\"\n\
                command = \"pg_dump -Fc app\"\ntimeout-secs = 3600\n[[jobs.commands]]\nname = \"roles.sql\"\n\
                command = \"pg_dumpall --roles-only\"\n[[jobs.map]]\nfrom = \"/mnt/snap/srv\"\nto = \"/srv\"\n";
    let c = load(text).unwrap();
    let job = c.job("db").unwrap();
    assert_eq!(job.hooks.before.as_deref(), Some("lvcreate -s -n snap vg/srv"));
    assert_eq!(job.hooks.after.as_deref(), Some("lvremove -f vg/snap"));
    assert_eq!(
        job.hooks.timeout_secs,
        vaultline_config::DEFAULT_HOOK_TIMEOUT_SECS
    );
    let names: Vec<(&str, &str, Option<u64>)> = job
        .commands
        .iter()
        .map(|c| (c.name.as_str(), c.command.as_str(), c.timeout_secs))
        .collect();
    assert_eq!(
        names,
        [
            ("postgres/app.dump", "pg_dump -Fc app", Some(3600)),
            ("roles.sql", "pg_dumpall --roles-only", None)
        ]
    );
    assert_eq!(job.source_of(Path::new("/srv")), Path::new("/mnt/snap/srv"));
    assert_eq!(job.source_of(Path::new("/etc")), Path::new("/etc"));
    assert_eq!(
        vaultline_config::stream_path("postgres/app.dump"),
        Path::new("/vaultline-streams/postgres/app.dump")
    );
    // Command lines may hold a password: Debug does not show them.
    let shown = format!("{job:?}");
    assert!(
        !shown.contains("pg_dump") && !shown.contains("lvcreate"),
        "{shown}"
    );

    // A job of command sources alone needs no paths.
    let only = "[repository]\ntype = \"local\"\npath = \"/srv/backups\"\n[[jobs]]\nname = \"db\"\n\
                [[jobs.commands]]\nname = \"all.sql\"\ncommand = \"pg_dumpall\"\n";
    assert!(load(only).unwrap().jobs[0].paths.is_empty());
}

#[test]
fn each_hook_command_source_and_map_mistake_has_its_exact_message() {
    let job =
        "[repository]\ntype = 'local'\npath = '/srv/backups'\n[[jobs]]\nname = 'db'\npaths = ['/srv']\n";
    let cmd = |name: &str| format!("[[jobs.commands]]\nname = {name:?}\ncommand = 'true'\n");
    let cases: &[(String, &str)] = &[
        (
            format!("{job}[jobs.hooks]\nbefore = ' '\ntimeout-secs = 0\n"),
            "config.toml:8:10: jobs[0].hooks.before: must not be empty (leave it out for no hook)\n\
             config.toml:9:16: jobs[0].hooks.timeout-secs: 0 is out of range: expected 1 to 86400 (seconds \
             each hook may take before it is killed)",
        ),
        (
            format!("{job}[jobs.hooks]\nbefor = 'x'\n"),
            "config.toml:8:1: jobs[0].hooks.befor: unknown key `befor`: did you mean `before`?",
        ),
        (
            format!("{job}{}", cmd("../etc/passwd")),
            "config.toml:8:8: jobs[0].commands[0].name: \"../etc/passwd\" must not contain empty, `.` or `..` \
             components",
        ),
        (
            format!("{job}{}", cmd("/abs")),
            "config.toml:8:8: jobs[0].commands[0].name: \"/abs\" must be a relative path (it is placed under \
             /vaultline-streams/)",
        ),
        (
            format!("{job}{}", cmd("")),
            "config.toml:8:8: jobs[0].commands[0].name: must not be empty",
        ),
        (
            format!("{job}{}", cmd("a\nb")),
            "config.toml:8:8: jobs[0].commands[0].name: \"a\\nb\" must not contain control characters",
        ),
        (
            format!("{job}{}{}", cmd("db.sql"), cmd("db.sql")),
            "config.toml:11:8: jobs[0].commands[1].name: duplicate command name \"db.sql\" (also \
             jobs[0].commands[0].name)",
        ),
        (
            format!("{job}{}{}", cmd("pg"), cmd("pg/app.dump")),
            "config.toml:11:8: jobs[0].commands[1].name: \"pg/app.dump\" and \"pg\" (jobs[0].commands[0].name) \
             collide: \"pg\" would be a file and the directory of \"pg/app.dump\"",
        ),
        (
            format!("{job}[[jobs.commands]]\nname = 'x'\ncommand = ''\ntimeout-secs = -1\n"),
            "config.toml:9:11: jobs[0].commands[0].command: must not be empty\n\
             config.toml:10:16: jobs[0].commands[0].timeout-secs: -1 is out of range: expected 1 to 604800 \
             (seconds the command may take before it is killed)",
        ),
        (
            format!("{job}[[jobs.commands]]\nname = 'x'\n"),
            "config.toml:7:1: jobs[0].commands[0]: missing key `command`",
        ),
        (
            job.replace("['/srv']", "['/vaultline-streams/x']") + &cmd("x"),
            "config.toml:6:10: jobs[0].paths: /vaultline-streams/x is where the job's command sources are \
             placed (/vaultline-streams/NAME): it cannot also be one of its paths",
        ),
        (
            job.replace("paths = ['/srv']\n", "paths = []\n"),
            "config.toml:6:9: jobs[0].paths: at least one path is required (or a command source, \
             [[jobs.commands]])",
        ),
        (
            format!("{job}[[jobs.map]]\nfrom = '/mnt/snap/var'\nto = '/var'\n"),
            "config.toml:9:6: jobs[0].map[0].to: /var is not one of the job's paths: a mapping says where one \
             of them is read from",
        ),
        (
            format!("{job}[[jobs.map]]\nfrom = 'snap'\nto = '/srv'\n"),
            "config.toml:8:8: jobs[0].map[0].from: \"snap\" must be an absolute path",
        ),
        (
            format!("{job}[[jobs.map]]\nfrom = '/srv'\nto = '/srv'\n"),
            "config.toml:8:8: jobs[0].map[0].from: /srv is read from itself: leave the mapping out",
        ),
        (
            format!("{job}[[jobs.map]]\nfrom = '/a'\nto = '/srv'\n[[jobs.map]]\nfrom = '/b'\nto = '/srv'\n"),
            "config.toml:12:6: jobs[0].map[1].to: /srv is mapped twice (also jobs[0].map[0].to)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&error(text), want, "for:\n{text}");
    }
}
