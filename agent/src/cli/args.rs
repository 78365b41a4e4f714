//! The command line: every subcommand and flag, as clap definitions.
//!
//! This is the stable surface described in PRODUCT.md. Each subcommand's
//! behaviour lives in its own module under `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// vaultline: encrypted, verified backups of server directories.
#[derive(Debug, Parser)]
#[command(
    name = "vaultline",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file [default: $VAULTLINE_CONFIG, /etc/vaultline/config.toml,
    /// $XDG_CONFIG_HOME/vaultline/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// More detail in logs (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors and warnings; no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Log lines as text (journald-friendly) or JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `LEVEL message`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the repository and the local master key (or check they exist).
    Init,

    /// Back up now: every job, or the JOBs named (`backup now JOB…` is the
    /// same); with --dry-run, only show what would be archived. `backup
    /// stdin JOB NAME` backs up a pipe.
    Backup(BackupArgs),

    /// List committed snapshots.
    Snapshots(SnapshotsArgs),

    /// List what a snapshot holds (from its manifest; no archive is read).
    Ls(LsArgs),

    /// Find entries matching patterns in every snapshot (from the
    /// manifests; no archive is read).
    Find(FindArgs),

    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),

    /// Download, decrypt and check snapshots against their manifests.
    Verify(VerifyArgs),

    /// Apply the jobs' retention policies: forget old snapshots, delete the
    /// archives no kept snapshot needs and those crashed runs left.
    Forget(ForgetArgs),

    /// Re-wrap every data key under another KMS key, rewriting only the
    /// small STANDARD objects (archives are neither read nor rewritten).
    Rewrap(RewrapArgs),

    /// Last runs per job, next scheduled runs, hardening results.
    Status,

    /// The service: run jobs on their schedules and on changes (systemd
    /// Type=notify; SIGHUP reloads, SIGTERM stops gracefully).
    Agent,

    /// Check the bucket's hardening (exit 3 when a required check fails).
    Audit,

    /// Show the changes that harden the bucket; make them with --apply.
    Harden {
        /// Make the changes (idempotent: a second run changes nothing).
        #[arg(long)]
        apply: bool,
    },

    /// The agent's own audit trail.
    #[command(subcommand, name = "audit-log")]
    AuditLog(AuditLogCommand),

    /// The local master key: export it for safekeeping, import a backed-up
    /// one (docs/operations.md, "The local master key").
    #[command(subcommand)]
    Key(KeyCommand),

    /// Write the man pages (DIR/man/, one per command) and the bash, zsh and
    /// fish completions (DIR/completions/), for packaging or installing.
    Generate {
        /// Directory to write man/ and completions/ into.
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },

    /// Print the completions for a shell, e.g.
    /// `vaultline completions bash > /etc/bash_completion.d/vaultline`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },

    /// Print policies for this configuration.
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// Every host and job in the repository: who is protected, and since
    /// when not (from listings alone: no key, no download of backups).
    #[command(subcommand)]
    Fleet(FleetCommand),
}

/// `fleet …`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every host and job, its newest snapshot, count and bytes stored;
    /// exit 9 when any is stale.
    Status(FleetStatusArgs),
    /// Serve the fleet's figures to Prometheus (GET /metrics), rescanning
    /// on an interval.
    Serve(FleetServeArgs),
    /// Write a self-contained HTML report for auditors: protection,
    /// history charts, bucket hardening, audit trails.
    Report(FleetReportArgs),
}

/// What every `fleet` command scans.
#[derive(Debug, Args)]
pub struct FleetScanArgs {
    /// The repository prefix to scan [default: the configured one].
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// A job whose newest snapshot is older than this is stale: 90m, 36h,
    /// 2d, 1w, 1d12h.
    #[arg(long, value_name = "DURATION", default_value = "26h",
          value_parser = crate::ops::fleet::parse_duration)]
    pub max_age: jiff::SignedDuration,

    /// Hosts listed at once.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,

    /// Leave this host out (a machine that only restores or audits, but
    /// ships its audit trail). Repeatable.
    #[arg(long, value_name = "HOST")]
    pub ignore_host: Vec<String>,
}

/// `fleet status`.
#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// What to scan.
    #[command(flatten)]
    pub scan: FleetScanArgs,

    /// Also write the figures as a Prometheus text file here (atomically,
    /// mode 0644), for node_exporter's textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `fleet serve`.
#[derive(Debug, Args)]
pub struct FleetServeArgs {
    /// What to scan.
    #[command(flatten)]
    pub scan: FleetScanArgs,

    /// Address to listen on, e.g. 127.0.0.1:9787 (port 0: any free port,
    /// printed on start).
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// Rescan this often; scrapes are answered from the last scan (each
    /// scan lists the whole repository: about a request per thousand
    /// objects).
    #[arg(long, value_name = "DURATION", default_value = "30m",
          value_parser = crate::ops::fleet::parse_duration)]
    pub refresh: jiff::SignedDuration,
}

/// `fleet report`.
#[derive(Debug, Args)]
pub struct FleetReportArgs {
    /// What to scan.
    #[command(flatten)]
    pub scan: FleetScanArgs,

    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,

    /// Days the charts cover.
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub days: u32,
}

/// The shells `completions` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `audit-log …`.
#[derive(Debug, Subcommand)]
pub enum AuditLogCommand {
    /// Check the hash chain; names the first edited, removed, inserted or
    /// reordered line (exit 5).
    Verify {
        /// The trail to check [default: STATE-DIR/audit.jsonl].
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
    },
}

/// `key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write the master key for safekeeping: to FILE (created 0600, never
    /// overwritten), or to standard output redirected to a file (made 0600)
    /// or a pipe (`| gpg -c`); never onto a terminal.
    Export {
        /// The file to create [default: standard output].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Put a backed-up master key back where the configuration keeps it
    /// (refused when it is not the key the repository was sealed with, and
    /// when another key is in place).
    Import {
        /// The export (or a copy of the key file); `-` reads standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The least-privilege IAM policy (JSON) for a role.
    Iam {
        /// backup: write-only (cannot read or decrypt past backups);
        /// restore: read and decrypt this host's snapshots; admin: everything,
        /// including audit, harden and key rotation; auditor: the fleet
        /// commands (list, read the plain audit segments, no key).
        #[arg(long, value_enum)]
        role: PolicyRole,
    },
}

/// The roles `policy iam` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyRole {
    /// Runs backups; may not read them back.
    Backup,
    /// Restores and verifies this host's snapshots.
    Restore,
    /// Manages the repository and bucket.
    Admin,
    /// Runs the fleet commands: lists, reads audit trails, decrypts nothing.
    Auditor,
}

/// `backup [now] [JOB…]`, or `backup stdin JOB NAME`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    /// `backup stdin`.
    #[command(subcommand)]
    pub command: Option<BackupCommand>,

    /// `backup [now] [JOB…]`.
    #[command(flatten)]
    pub now: BackupNowArgs,
}

/// The subcommands of `backup`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up standard input (a pipe: `pg_dumpall | vaultline backup stdin
    /// db all.sql`) as the file /vaultline-streams/NAME of a new snapshot of
    /// JOB holding that file alone; the job's runs go on from their own
    /// last snapshot.
    Stdin(BackupStdinArgs),
}

/// `backup stdin`.
#[derive(Debug, Args)]
pub struct BackupStdinArgs {
    /// The job whose repository, key and settings the snapshot uses.
    #[arg(value_name = "JOB")]
    pub job: String,

    /// The file's name below /vaultline-streams/: a relative path such as
    /// `all.sql` or `postgres/app.dump`.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// If the job is already running, exit at once (code 6) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// `backup [now]`.
#[derive(Debug, Args)]
pub struct BackupNowArgs {
    /// Jobs to run, by name [default: every job in the configuration]. A
    /// leading `now` is ignored (`backup now`), unless a job is called so.
    #[arg(value_name = "JOB")]
    pub jobs: Vec<String>,

    /// If the job is already running, exit at once (code 6) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,

    /// Archive everything, not only what changed since the last snapshot
    /// (starts a new chain of incremental snapshots).
    #[arg(long)]
    pub full: bool,

    /// List what would be archived and what is left out, and why; read no
    /// file content and write nothing (needs no key, no repository).
    #[arg(long)]
    pub dry_run: bool,
}

/// `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// A snapshot id, a unique prefix of one, or `latest`.
    #[arg(value_name = "SNAPSHOT|latest")]
    pub snapshot: String,

    /// List this path and what is directly in it [default: the whole
    /// snapshot].
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// With PATH: everything below it, not only what is directly in it.
    #[arg(short, long)]
    pub recursive: bool,

    /// Long format: type and mode, owner, size, modification time.
    #[arg(short, long)]
    pub long: bool,

    /// The job the snapshot belongs to (needed for `latest` when there are
    /// several).
    #[arg(long)]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,
}

/// `find`.
#[derive(Debug, Args)]
pub struct FindArgs {
    /// Patterns (docs/patterns.md): without `/` a name anywhere (`*.conf`),
    /// with `/` a path from the root (`/etc/ssh/**`). An entry matching any
    /// of them is listed.
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,

    /// Only this job's snapshots.
    #[arg(long)]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,

    /// Only this snapshot (an id, a unique prefix of one, or `latest`).
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
}

/// `snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only this job's snapshots.
    #[arg(value_name = "JOB")]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A snapshot id, a unique prefix of one, or `latest`.
    #[arg(value_name = "SNAPSHOT|latest")]
    pub snapshot: String,

    /// Restore only these paths (a file, or a directory with all it
    /// contains), e.g. /etc/hosts: patterns anchored at the root
    /// (docs/patterns.md); combined with --include, either may match.
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,

    /// Directory to restore into (created if missing). Paths inside the
    /// snapshot are placed below it, e.g. /etc/hosts as DIR/etc/hosts.
    #[arg(long, value_name = "DIR", required_unless_present = "to_stdout")]
    pub target: Option<PathBuf>,

    /// Write the content of one file of the snapshot to standard output
    /// (a pipe or a file, not a terminal), e.g. `--to-stdout
    /// /vaultline-streams/postgres/app.dump | pg_restore -d app`. Every byte
    /// is authenticated before it is written; a failure midway exits 5
    /// after what was written so far, which a pipe cannot take back.
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "target", "paths", "include", "exclude", "overwrite", "keep_privileges", "dry_run"
    ])]
    pub to_stdout: Option<String>,

    /// The job the snapshot belongs to (needed when there are several).
    #[arg(long)]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,

    /// Restore only entries matching these patterns, in the language of a
    /// job's `exclude` (docs/patterns.md): without `/` a name anywhere
    /// (`*.conf`, `ssh_config`), with `/` a path from the root
    /// (`/etc/ssh/**`); a matching directory brings everything below it.
    /// Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,

    /// Leave out entries matching these patterns (and everything below a
    /// matching directory), as --include reads them. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// When archives are in GLACIER or DEEP_ARCHIVE: request their restore
    /// (thaw) and exit with code 7 instead of waiting for it; rerun the same
    /// command later to continue.
    #[arg(long)]
    pub request_only: bool,

    /// Replace existing files in the target (never follows or replaces a
    /// directory with a file), and set the owner, mode and times of
    /// directories that exist already.
    #[arg(long)]
    pub overwrite: bool,

    /// Restore setuid/setgid bits and file capabilities (security.capability),
    /// which are otherwise dropped (and reported) unless root restores onto /.
    #[arg(long)]
    pub keep_privileges: bool,

    /// Say what would be restored (entries, bytes, what would be fetched)
    /// and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `forget`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["dry_run", "apply"])))]
pub struct ForgetArgs {
    /// Only this job [default: every job in the configuration].
    #[arg(value_name = "JOB")]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,

    /// Print what would be kept and removed, and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove what the plan says.
    #[arg(long)]
    pub apply: bool,
}

/// `rewrap`.
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The KMS key to wrap every data key under: key id, alias or ARN.
    #[arg(long, value_name = "KEY")]
    pub to_key: String,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A snapshot id, a unique prefix of one, or `latest` [default: the
    /// latest of each job].
    #[arg(value_name = "SNAPSHOT", conflicts_with = "all")]
    pub snapshot: Option<String>,

    /// Verify every snapshot.
    #[arg(long)]
    pub all: bool,

    /// The job [needed for a snapshot id when there are several jobs].
    #[arg(long)]
    pub job: Option<String>,

    /// Snapshots made by this host [default: agent.host from the configuration].
    #[arg(long)]
    pub host: Option<String>,
}
